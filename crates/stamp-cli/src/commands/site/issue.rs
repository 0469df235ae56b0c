//! `stamp site issue`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;
use stamp_site::engine::{Engine, IssueError};

use crate::output::emit;
use crate::Globals;

/// Largest CSR file read (PEM or DER).
const MAX_CSR_FILE: usize = 32 * 1024;
/// Most CSR files in one run.
const MAX_FILES: usize = 1_000_000;

/// Issue device certificates offline from CSR files (PKCS#10, PEM or DER), for stations that hand
/// over requests in files. Every request is checked against the entitlement (key type, quota, rate,
/// window, duplicate keys), recorded durably in the site's audit log, and only then written out:
/// for each CSR `NAME.csr`, `OUT_DIR/NAME.crt.pem` (certificate), `NAME.chain.pem` (issuing CA and
/// root) and `NAME.stamp.json` (serial, entitlement, device data). Refused requests are logged too;
/// the summary names each refused file with its reason. Before anything is logged, the run is
/// refused as a whole if the entitlement is not one the site imported (`unknown-entitlement`), a
/// CSR file or directory cannot be read, or an output file exists (`output-exists`, unless
/// --force); a run that issues nothing leaves no output directory it created.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Site directory.
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The entitlement to issue under (see `stamp site status`).
    #[arg(long, value_name = "ID")]
    entitlement: String,
    /// A CSR file, or a directory of them (*.csr, *.pem, *.der).
    #[arg(long, value_name = "FILE_OR_DIR")]
    csr: PathBuf,
    /// Directory to write certificates and stamps to (created if missing).
    #[arg(short = 'o', long = "out", value_name = "OUT_DIR")]
    out: PathBuf,
    /// Replace certificate, chain and stamp files in OUT_DIR that exist (without --force, an
    /// existing one is refused before anything is done: `output-exists`).
    #[arg(long)]
    force: bool,
    /// Station name recorded in the audit log.
    #[arg(long, value_name = "NAME", default_value = "batch")]
    station: String,
    /// Parallel workers (default: one per core).
    #[arg(long, value_name = "N")]
    jobs: Option<usize>,
}

#[derive(Serialize)]
struct Issued {
    csr: PathBuf,
    device_serial: u64,
    certificate: PathBuf,
    stamp: PathBuf,
}

#[derive(Serialize)]
struct Refused {
    csr: PathBuf,
    reason: String,
}

#[derive(Serialize)]
struct Report {
    ok: bool,
    entitlement: String,
    requested: usize,
    issued: usize,
    refused: BTreeMap<String, usize>,
    refused_files: Vec<Refused>,
    failed: usize,
    seconds: f64,
    per_second: f64,
    devices: Vec<Issued>,
}

/// The CSR files of `path` (a file or a directory), each checked readable and within the size
/// limit, so a run fails before it logs anything.
fn csr_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let files = list_csr_files(path)?;
    for f in &files {
        let len = std::fs::File::open(f)
            .and_then(|h| h.metadata())
            .with_context(|| format!("cannot read the CSR file {}", f.display()))?
            .len();
        if len > MAX_CSR_FILE as u64 {
            bail!(
                "{} is larger than {MAX_CSR_FILE} bytes; it is not a CSR",
                f.display()
            );
        }
    }
    Ok(files)
}

fn list_csr_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    if !path.exists() {
        bail!(
            "{} does not exist; give a CSR file or a directory of them",
            path.display()
        );
    }
    let mut files = Vec::new();
    for e in std::fs::read_dir(path).with_context(|| format!("cannot read {}", path.display()))? {
        let p = e?.path();
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or_default();
        if p.is_file() && matches!(ext, "csr" | "pem" | "der" | "req") {
            files.push(p);
            if files.len() > MAX_FILES {
                bail!("more than {MAX_FILES} CSR files in {}", path.display());
            }
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("no CSR files (*.csr, *.pem, *.der, *.req) in {}", path.display());
    }
    Ok(files)
}

/// PEM (`CERTIFICATE REQUEST` or `NEW CERTIFICATE REQUEST`) or raw DER.
fn csr_der(bytes: &[u8]) -> Vec<u8> {
    match pem::parse(bytes) {
        Ok(p) if matches!(p.tag(), "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST") => p.into_contents(),
        _ => bytes.to_vec(),
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "device".into())
}

/// Runs `stamp site issue`.
pub fn run(a: Args, g: &Globals) -> anyhow::Result<()> {
    let files = csr_files(&a.csr)?;
    let mut names = std::collections::BTreeSet::new();
    for f in &files {
        let name = stem(f);
        if !names.insert(name.clone()) {
            return Err(crate::output::CliError::usage(format!(
                "two CSR files are named {name} (the certificates of both would be {}): rename one",
                a.out.join(format!("{name}.crt.pem")).display()
            )));
        }
        for ext in ["crt.pem", "chain.pem", "stamp.json"] {
            crate::commands::check_output(&a.out.join(format!("{name}.{ext}")), a.force)?;
        }
    }
    let pass = crate::commands::keys(g);
    let site = stamp_site::Site::open(&a.dir, pass)?;
    super::require_entitlement(&site, &a.entitlement, &a.dir)?;
    let created_out = !a.out.exists();
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let engine = Engine::start(&site)?;
    let chain_pem: String = engine
        .chain()
        .iter()
        .map(|c| stamp_core::cert::to_pem(c))
        .collect();
    let jobs = a
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .max(1);
    let bar = if g.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(files.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} devices {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Result<Issued, Refused>>> = Mutex::new(Vec::new());
    let fatal: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(file) = files.get(i) else { break };
                let outcome = (|| -> anyhow::Result<Result<Issued, String>> {
                    let bytes = crate::commands::read_bounded(file, MAX_CSR_FILE)?;
                    match engine.issue(
                        &a.entitlement,
                        &csr_der(&bytes),
                        &a.station,
                        crate::commands::now(),
                    ) {
                        Ok(stamp) => {
                            let name = stem(file);
                            let cert = a.out.join(format!("{name}.crt.pem"));
                            let stamp_path = a.out.join(format!("{name}.stamp.json"));
                            let write = crate::commands::write_output;
                            let pem = stamp_core::cert::to_pem(&stamp.certificate);
                            write(&cert, pem.as_bytes(), 0o644, a.force)?;
                            let chain = a.out.join(format!("{name}.chain.pem"));
                            write(&chain, chain_pem.as_bytes(), 0o644, a.force)?;
                            let json = serde_json::to_vec_pretty(&stamp)?;
                            write(&stamp_path, &json, 0o644, a.force)?;
                            Ok(Ok(Issued {
                                csr: file.clone(),
                                device_serial: stamp.device_serial,
                                certificate: cert,
                                stamp: stamp_path,
                            }))
                        }
                        Err(IssueError::Refused(r)) => Ok(Err(r.code().to_owned())),
                        Err(e) => Err(e.into()),
                    }
                })();
                bar.inc(1);
                match outcome {
                    Ok(r) => results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(r.map_err(|reason| Refused {
                            csr: file.clone(),
                            reason,
                        })),
                    Err(e) => {
                        let e = e.context(format!("while issuing for {}", file.display()));
                        fatal
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert(e);
                        break;
                    }
                }
            });
        }
    });
    engine.shutdown();
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut refused = BTreeMap::new();
    let mut refused_files = Vec::new();
    let mut devices = Vec::new();
    for r in results {
        match r {
            Ok(d) => devices.push(d),
            Err(r) => {
                *refused.entry(r.reason.clone()).or_insert(0) += 1;
                refused_files.push(r);
            }
        }
    }
    devices.sort_by_key(|d| d.device_serial);
    refused_files.sort_by(|x, y| x.csr.cmp(&y.csr));
    // Nothing issued: leave no empty directory behind (only one this run made, and only empty).
    let out_removed = devices.is_empty() && created_out && std::fs::remove_dir(&a.out).is_ok();
    let failed = files.len() - devices.len() - refused.values().sum::<usize>();
    let fatal = fatal
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let report = Report {
        ok: fatal.is_none() && devices.len() == files.len(),
        entitlement: a.entitlement,
        requested: files.len(),
        issued: devices.len(),
        refused,
        refused_files,
        failed,
        seconds: crate::output::round(seconds, 3),
        per_second: crate::output::round(devices.len() as f64 / seconds.max(1e-9), 1),
        devices,
    };
    emit(g.json, &report, || {
        outln!(
            "Issued {} of {} devices under {} in {:.2} s ({:.0}/s)",
            report.issued,
            report.requested,
            report.entitlement,
            report.seconds,
            report.per_second
        )?;
        for (code, n) in &report.refused {
            outln!("  refused ({code}): {n}")?;
        }
        for r in &report.refused_files {
            outln!("    {}: {}", r.csr.display(), r.reason)?;
        }
        if report.failed > 0 {
            outln!("  not processed: {}", report.failed)?;
        }
        if !out_removed {
            outln!("Certificates and stamps in {}", a.out.display())?;
        }
        Ok(())
    })?;
    if let Some(e) = fatal {
        return Err(e.context("issuance stopped"));
    }
    if report.issued < report.requested {
        return Err(crate::output::AlreadyReported(format!(
            "{} of {} requests were not issued (see the summary)",
            report.requested - report.issued,
            report.requested
        ))
        .into());
    }
    Ok(())
}
