//! `stamp-bench`: the measuring side of `bench/run` (see BENCHMARKS.md).
//!
//! Each subcommand measures one thing and prints one JSON object on stdout; `report` turns the
//! collected objects into the table of BENCHMARKS.md.

mod cfssl;
mod http1;
mod report;
mod service;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use clap::{Parser, Subcommand};
use serde_json::json;
use stamp_bench::{
    loadavg, peak_rss_kib, process_cpu_seconds, quantile_ms, CsrReader, CsrWriter, Fixture, MemSigner,
};
use stamp_core::key::Signer;
use stamp_core::profile::Serial;
use stamp_core::{csr, fingerprint};
use stamp_keys::{KeyConfig, PassphraseSource, Pkcs11Config, StoreTarget};
use stamp_site::engine::{Engine, IssueError};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

#[derive(Parser)]
#[command(
    name = "stamp-bench",
    about = "stamp's benchmarks (run them all with bench/run)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate P-256 device keys and their CSRs into a CSR file (not timed).
    GenCsrs {
        /// How many.
        #[arg(long)]
        count: u64,
        /// The CSR file to write.
        #[arg(long)]
        out: PathBuf,
        /// Threads.
        #[arg(long, default_value = "2")]
        threads: usize,
    },
    /// The bound: verify a P-256 CSR signature and sign a P-256 certificate, in process; raw
    /// aws-lc-rs, then through stamp's own code (csr::verify + device::DeviceIssuer::issue, as
    /// the engine calls them).
    Bound {
        /// CSR file (its first 20,000 CSRs are used, round robin).
        #[arg(long)]
        csrs: PathBuf,
        /// Threads (all cores).
        #[arg(long, default_value = "2")]
        threads: usize,
        /// Seconds per measurement.
        #[arg(long, default_value = "5")]
        seconds: f64,
    },
    /// The site engine in process: issue a device for every CSR of the file, with `threads`
    /// workers calling Engine::issue concurrently; audit log durable.
    Engine {
        /// Site directory (installed, with the entitlement imported).
        #[arg(long)]
        site: PathBuf,
        /// Entitlement to issue under.
        #[arg(long)]
        entitlement: String,
        /// CSR file.
        #[arg(long)]
        csrs: PathBuf,
        /// Worker threads.
        #[arg(long, default_value = "2")]
        threads: usize,
        /// Station name.
        #[arg(long, default_value = "line-1")]
        station: String,
        /// Passphrase file of the site's software keys (default: $STAMP_PASSPHRASE_FILE).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Use only the first N CSRs of the file.
        #[arg(long)]
        count: Option<u64>,
    },
    /// A peer: `cfssl serve` signing the CSRs over HTTP/1.1 (keep-alive), `clients` at once.
    Cfssl {
        /// cfssl's address, host:port.
        #[arg(long, default_value = "127.0.0.1:8888")]
        addr: String,
        /// CSR file.
        #[arg(long)]
        csrs: PathBuf,
        /// Concurrent clients, each with its own connection.
        #[arg(long, default_value = "8")]
        clients: usize,
        /// Requests in all (at most the CSRs in the file).
        #[arg(long, default_value = "20000")]
        count: usize,
        /// cfssl's process ID: its CPU time and peak RSS are reported.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// stamp's site service (`stamp site serve`, already running): provision a device for every
    /// CSR over mutual TLS and HTTP/1.1 keep-alive, `clients` at once, one connection each.
    Service {
        /// The service's address, host:port.
        #[arg(long)]
        addr: String,
        /// The name the service's certificate is checked for.
        #[arg(long, default_value = "127.0.0.1")]
        server_name: String,
        /// A station directory (`stamp site add-station -o DIR`); repeat for more stations, which
        /// the clients share round robin.
        #[arg(long = "station", required = true)]
        stations: Vec<PathBuf>,
        /// CSR file.
        #[arg(long)]
        csrs: PathBuf,
        /// Concurrent clients, each with its own connection.
        #[arg(long, default_value = "8")]
        clients: usize,
        /// Requests in all (at most the CSRs in the file).
        #[arg(long, default_value = "20000")]
        count: usize,
        /// JSON API or EST.
        #[arg(long, value_enum, default_value = "json")]
        protocol: service::Protocol,
        /// The entitlement (the EST label).
        #[arg(long)]
        entitlement: String,
        /// The service's process ID: its CPU time and peak RSS are reported.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Print the table from a directory of results that bench/run collected.
    Report {
        /// The results directory.
        dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::GenCsrs { count, out, threads } => gen_csrs(count, &out, threads),
        Command::Bound {
            csrs,
            threads,
            seconds,
        } => bound(&csrs, threads, seconds),
        Command::Engine {
            site,
            entitlement,
            csrs,
            threads,
            station,
            passphrase_file,
            count,
        } => engine(
            &site,
            &entitlement,
            &csrs,
            threads,
            &station,
            passphrase_file,
            count.unwrap_or(u64::MAX),
        ),
        Command::Cfssl {
            addr,
            csrs,
            clients,
            count,
            server_pid,
        } => cfssl::run(&addr, &csrs, clients, count, server_pid),
        Command::Service {
            addr,
            server_name,
            stations,
            csrs,
            clients,
            count,
            protocol,
            entitlement,
            server_pid,
        } => service::run(&service::Options {
            addr,
            server_name,
            stations,
            csrs,
            clients,
            count,
            protocol,
            entitlement,
            server_pid,
        }),
        Command::Report { dir } => report::print(&dir),
    }
}

fn gen_csrs(count: u64, out: &std::path::Path, threads: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    let writer = Mutex::new(CsrWriter::create(out)?);
    let next = AtomicU64::new(0);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                // In batches, to keep the writer's lock out of the way.
                loop {
                    let first = next.fetch_add(256, Ordering::Relaxed);
                    if first >= count {
                        break;
                    }
                    let batch: anyhow::Result<Vec<Vec<u8>>> = (first..(first + 256).min(count))
                        .map(stamp_bench::new_device_csr)
                        .collect();
                    let result = batch.and_then(|b| {
                        let mut w = writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        b.iter().try_for_each(|c| w.push(c))
                    });
                    if let Err(e) = result {
                        failed
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    if let Some(e) = failed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(e);
    }
    writer
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .finish()?;
    println!(
        "{}",
        json!({ "csrs": count, "file": out, "seconds": started.elapsed().as_secs_f64() })
    );
    Ok(())
}

/// Runs `op(thread, n)` on `threads` threads for `seconds`; operations per second and CPU
/// microseconds per operation.
fn rate<F>(threads: usize, seconds: f64, op: F) -> anyhow::Result<(f64, f64)>
where
    F: Fn(usize, u64) -> anyhow::Result<()> + Sync,
{
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let cpu = process_cpu_seconds();
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (op, stop, count, failed) = (&op, &stop, &count, &failed);
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = op(t, n) {
                        failed
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert(e);
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu;
    if let Some(e) = failed
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        return Err(e);
    }
    let n = count.load(Ordering::Relaxed) as f64;
    Ok((n / elapsed, cpu * 1e6 / n.max(1.0)))
}

/// A CSR's parts for the raw bound: public key, signed bytes, signature.
struct RawCsr {
    public_key: Vec<u8>,
    signed: Vec<u8>,
    signature: Vec<u8>,
}

fn bound(csrs: &std::path::Path, threads: usize, seconds: f64) -> anyhow::Result<()> {
    let ders = CsrReader::read_all(csrs, 20_000)?;
    let raw: Vec<RawCsr> = ders
        .iter()
        .map(|der| {
            let (_, c) = X509CertificationRequest::from_der(der).map_err(|_| anyhow::anyhow!("bad CSR"))?;
            Ok(RawCsr {
                public_key: c
                    .certification_request_info
                    .subject_pki
                    .subject_public_key
                    .data
                    .to_vec(),
                signed: c.certification_request_info.raw.to_vec(),
                signature: c.signature_value.data.to_vec(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let now = time::OffsetDateTime::now_utc();
    let fx = Fixture::new(now)?;
    let prepared = fx.device_issuer()?;
    let issuer_key = MemSigner::generate_p256()?;
    let rng = SystemRandom::new();
    // A to-be-signed device certificate is about 300 bytes.
    let tbs_len = 300;

    let raw_op = |t: usize, n: u64| -> anyhow::Result<()> {
        let c = &raw[(n as usize * threads + t) % raw.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &c.public_key)
            .verify(&c.signed, &c.signature)
            .map_err(|_| anyhow::anyhow!("CSR signature does not verify"))?;
        let mut msg = vec![t as u8; tbs_len];
        msg[..8].copy_from_slice(&n.to_le_bytes());
        issuer_key.sign(&msg)?;
        Ok(())
    };
    let stamp_op = |t: usize, n: u64| -> anyhow::Result<()> {
        let der = &ders[(n as usize * threads + t) % ders.len()];
        let c = csr::verify(der)?;
        let _spki_sha256 = fingerprint::sha256(c.spki_der());
        let mut serial = [0u8; 16];
        rng.fill(&mut serial)
            .map_err(|_| anyhow::anyhow!("random generator failed"))?;
        prepared.issue(
            &fx.grant,
            1_000_000 + n,
            c.spki_der(),
            now,
            Serial::from_random(serial),
        )?;
        Ok(())
    };
    let load_before = loadavg();
    let (raw_1, raw_1_cpu) = rate(1, seconds, raw_op)?;
    let (raw_n, raw_n_cpu) = rate(threads, seconds, raw_op)?;
    let (stamp_1, stamp_1_cpu) = rate(1, seconds, stamp_op)?;
    let (stamp_n, stamp_n_cpu) = rate(threads, seconds, stamp_op)?;
    println!(
        "{}",
        json!({
            "threads": threads,
            "seconds": seconds,
            "raw_1": raw_1, "raw_n": raw_n,
            "stamp_1": stamp_1, "stamp_n": stamp_n,
            "raw_1_cpu_us": raw_1_cpu, "raw_n_cpu_us": raw_n_cpu,
            "stamp_1_cpu_us": stamp_1_cpu, "stamp_n_cpu_us": stamp_n_cpu,
            "load_before": load_before, "load_after": loadavg(),
        })
    );
    Ok(())
}

fn engine(
    site_dir: &std::path::Path,
    entitlement: &str,
    csrs: &std::path::Path,
    threads: usize,
    station: &str,
    passphrase_file: Option<PathBuf>,
    count: u64,
) -> anyhow::Result<()> {
    let keys = KeyConfig {
        new_keys: StoreTarget::File,
        passphrase: PassphraseSource::Obtain {
            file: passphrase_file,
            creating: false,
        },
        pkcs11: Pkcs11Config::default(),
    };
    let site = stamp_site::Site::open(site_dir, keys)?;
    let engine = Engine::start(&site)?;
    // The CSRs are read as the workers go (a 1M-device run does not hold them all in memory);
    // taking one is a memcpy under a lock, small next to an issuance.
    let reader = Mutex::new((CsrReader::open(csrs)?, 0u64));
    let issued = AtomicU64::new(0);
    let refused: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let fatal: Mutex<Option<String>> = Mutex::new(None);
    let latencies: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let progress = Arc::new(AtomicU64::new(0));
    let load_before = loadavg();
    let cpu = process_cpu_seconds();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut mine = Vec::new();
                loop {
                    let next = {
                        let mut r = reader.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        if r.1 >= count {
                            Ok(None)
                        } else {
                            r.1 += 1;
                            r.0.next_csr()
                        }
                    };
                    let der = match next {
                        Ok(Some(d)) => d,
                        Ok(None) => break,
                        Err(e) => {
                            fatal
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .get_or_insert(e.to_string());
                            break;
                        }
                    };
                    let t0 = Instant::now();
                    let r = engine.issue(entitlement, &der, station, time::OffsetDateTime::now_utc());
                    mine.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                    match r {
                        Ok(_) => {
                            issued.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(IssueError::Refused(reason)) => {
                            *refused
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .entry(reason.code().to_owned())
                                .or_insert(0) += 1;
                        }
                        Err(e) => {
                            fatal
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .get_or_insert(e.to_string());
                            break;
                        }
                    }
                    let done = progress.fetch_add(1, Ordering::Relaxed) + 1;
                    if done.is_multiple_of(100_000) {
                        eprintln!(
                            "  {done} requests, {:.0}/s",
                            done as f64 / started.elapsed().as_secs_f64()
                        );
                    }
                }
                latencies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(mine);
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    engine.shutdown();
    let cpu = process_cpu_seconds() - cpu;
    drop(engine);
    if let Some(e) = fatal
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        bail!("issuance stopped: {e}");
    }
    let mut lat = latencies
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    lat.sort_unstable();
    let issued = issued.load(Ordering::Relaxed);
    let refused = refused
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    println!(
        "{}",
        json!({
            "threads": threads,
            "issued": issued,
            "refused": refused,
            "seconds": seconds,
            "per_second": issued as f64 / seconds.max(1e-9),
            "cpu_us_per_device": cpu * 1e6 / (issued as f64).max(1.0),
            "p50_ms": quantile_ms(&lat, 0.50),
            "p99_ms": quantile_ms(&lat, 0.99),
            "peak_rss_kib": peak_rss_kib(),
            "load_before": load_before,
            "load_after": loadavg(),
        })
    );
    if !refused.is_empty() {
        bail!("requests were refused: {refused:?}");
    }
    Ok(())
}
