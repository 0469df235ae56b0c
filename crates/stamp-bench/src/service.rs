//! stamp's site service over the network: `stamp site serve` (the real binary, started by
//! bench/run) provisioning the same CSRs as the engine and cfssl, over mutual TLS and HTTP/1.1
//! keep-alive, with the JSON API or EST.
//!
//! Every client is a thread with one connection, opened (TCP, TLS handshake with its station's
//! certificate, a first `GET /api/v1/status`) before the clock starts, as a station on a line keeps
//! its connection. Requests are built from the pre-generated CSRs before the clock starts too, so
//! the client's work while timed is TLS records and a small HTTP parser. Clients share the station
//! identities given, round robin: 64 clients with 8 stations are 8 stations with 8 programming
//! sockets each, every socket its own connection with its station's certificate.

use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use anyhow::{bail, Context};
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;
use serde_json::json;
use stamp_bench::{loadavg, process_cpu_seconds, quantile_ms, CsrReader, ProcStat};
use stamp_station::client::StationIdentity;

use crate::http1::{contains, Conn};

/// How devices enroll.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// `POST /api/v1/provision` with `{"entitlement", "csr": base64 DER}`.
    Json,
    /// `POST /.well-known/est/<entitlement>/simpleenroll`, base64 PKCS#10.
    Est,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::Est => "est",
        }
    }
}

/// What to run.
pub struct Options {
    /// The service's address, host:port.
    pub addr: String,
    /// The name to check the service's certificate for.
    pub server_name: String,
    /// Station directories (`stamp site add-station -o DIR`), shared by the clients round robin.
    pub stations: Vec<PathBuf>,
    /// CSR file.
    pub csrs: PathBuf,
    /// Concurrent clients, one connection each.
    pub clients: usize,
    /// Requests in all (at most the CSRs in the file).
    pub count: usize,
    /// JSON API or EST.
    pub protocol: Protocol,
    /// The entitlement (EST label).
    pub entitlement: String,
    /// The service's process, for its CPU time and memory.
    pub server_pid: Option<u32>,
}

type TlsConn = Conn<StreamOwned<ClientConnection, TcpStream>>;

fn connect(addr: &str, name: &ServerName<'static>, cfg: &Arc<ClientConfig>) -> anyhow::Result<TlsConn> {
    let mut tcp = TcpStream::connect(addr).with_context(|| format!("cannot connect to {addr}"))?;
    tcp.set_nodelay(true)?;
    let mut tls = ClientConnection::new(cfg.clone(), name.clone())?;
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).context("TLS handshake")?;
    }
    Ok(Conn::new(StreamOwned::new(tls, tcp)))
}

fn build_requests(o: &Options, ders: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let host = &o.addr;
    let ent = &o.entitlement;
    ders.iter()
        .map(|der| {
            let (path, content_type, body) = match o.protocol {
                Protocol::Json => {
                    let b64 = stamp_core::pkcs7::base64_lines(der).replace("\r\n", "");
                    (
                        "/api/v1/provision".to_owned(),
                        "application/json",
                        json!({ "entitlement": ent, "csr": b64 }).to_string(),
                    )
                }
                Protocol::Est => (
                    format!("/.well-known/est/{ent}/simpleenroll"),
                    "application/pkcs10",
                    stamp_core::pkcs7::base64_lines(der),
                ),
            };
            format!(
                "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        })
        .collect()
}

fn ok_reply(protocol: Protocol, status: u16, body: &[u8]) -> bool {
    status == 200
        && match protocol {
            Protocol::Json => contains(body, b"\"certificate\":\"-----BEGIN CERTIFICATE"),
            Protocol::Est => body.starts_with(b"MII"),
        }
}

/// Runs the requests and prints the JSON result.
pub fn run(o: &Options) -> anyhow::Result<()> {
    if o.stations.is_empty() {
        bail!("give at least one --station DIR");
    }
    let name = ServerName::try_from(o.server_name.clone()).context("--server-name")?;
    let configs: Vec<Arc<ClientConfig>> = o
        .stations
        .iter()
        .map(|dir| {
            let id = StationIdentity::load(dir)?;
            Ok(stamp_station::client_config(
                &id.root,
                Some((&id.chain, &id.key_pkcs8)),
            )?)
        })
        .collect::<anyhow::Result<_>>()?;
    let ders = CsrReader::read_all(&o.csrs, o.count)?;
    let requests = build_requests(o, &ders);
    let status_request = format!("GET /api/v1/status HTTP/1.1\r\nHost: {}\r\n\r\n", o.addr).into_bytes();
    let clients = o.clients.max(1);
    let next = AtomicUsize::new(0);
    let latencies: Mutex<Vec<u32>> = Mutex::new(Vec::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let fail = |e: String| {
        failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(e);
    };
    // Every client connects, then all start together with the clock.
    let ready = Barrier::new(clients + 1);
    let connect_started = Instant::now();
    let mut measured = None;
    std::thread::scope(|s| {
        for c in 0..clients {
            let (cfg, name, ready, next) = (&configs[c % configs.len()], &name, &ready, &next);
            let (requests, status_request, latencies, fail) = (&requests, &status_request, &latencies, &fail);
            s.spawn(move || {
                let opened = connect(&o.addr, name, cfg).and_then(|mut conn| {
                    let (status, body, _) = conn.send(status_request)?;
                    if status != 200 {
                        bail!(
                            "GET /api/v1/status: HTTP {status}: {}",
                            String::from_utf8_lossy(&body[..body.len().min(300)])
                        );
                    }
                    Ok(conn)
                });
                ready.wait();
                let mut conn = match opened {
                    Ok(c) => c,
                    Err(e) => return fail(format!("{e:#}")),
                };
                let mut mine = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(req) = requests.get(i) else { break };
                    let t0 = Instant::now();
                    match conn.send(req) {
                        Ok((status, body, keep)) if ok_reply(o.protocol, status, &body) => {
                            mine.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
                            if !keep {
                                match connect(&o.addr, name, cfg) {
                                    Ok(c) => conn = c,
                                    Err(e) => return fail(format!("{e:#}")),
                                }
                            }
                        }
                        Ok((status, body, _)) => {
                            return fail(format!(
                                "HTTP {status}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(300)])
                            ))
                        }
                        Err(e) => return fail(format!("{e:#}")),
                    }
                }
                latencies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .extend(mine);
            });
        }
        ready.wait();
        let connect_seconds = connect_started.elapsed().as_secs_f64();
        let load_before = loadavg();
        let server = o.server_pid.and_then(ProcStat::read);
        let cpu = process_cpu_seconds();
        measured = Some((connect_seconds, load_before, server, cpu, Instant::now()));
    });
    let Some((connect_seconds, load_before, server_before, cpu, started)) = measured else {
        bail!("the clients did not start");
    };
    let seconds = started.elapsed().as_secs_f64();
    let client_cpu = process_cpu_seconds() - cpu;
    let server_after = o.server_pid.and_then(ProcStat::read);
    let failures = failures
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(f) = failures.first() {
        bail!("{} client(s) failed; first: {f}", failures.len());
    }
    let mut lat = latencies
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    lat.sort_unstable();
    let n = lat.len() as f64;
    let server_cpu = match (&server_before, &server_after) {
        (Some(b), Some(a)) => Some((a.cpu_seconds - b.cpu_seconds) * 1e6 / n.max(1.0)),
        _ => None,
    };
    println!(
        "{}",
        json!({
            "protocol": o.protocol.name(),
            "clients": clients,
            "stations": o.stations.len().min(clients),
            "issued": lat.len(),
            "seconds": seconds,
            "per_second": n / seconds.max(1e-9),
            "p50_ms": quantile_ms(&lat, 0.50),
            "p99_ms": quantile_ms(&lat, 0.99),
            "connect_seconds": connect_seconds,
            "server_cpu_us_per_device": server_cpu,
            "client_cpu_us_per_device": client_cpu * 1e6 / n.max(1.0),
            "server_peak_rss_kib": server_after.as_ref().map(|s| s.peak_rss_kib),
            "server_rss_kib": server_after.as_ref().map(|s| s.rss_kib),
            "server_threads": server_after.as_ref().map(|s| s.threads),
            "load_before": load_before,
            "load_after": loadavg(),
        })
    );
    Ok(())
}
