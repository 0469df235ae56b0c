//! Fault injection (issue #14) through the real binary: `stamp site issue` and `stamp site serve`
//! run under `strace`, which injects one fault per run (an I/O error, or SIGKILL, at the N-th
//! `fsync`, `fdatasync`, `write`, `pwrite64`, `rename` or `openat` of a thread), or a simulated
//! power loss (SIGKILL at the N-th `fsync` of the database files or of any file, then every
//! write to the database files not yet synced is dropped). Then the site is restarted and
//! checked: the log verifies, every certificate a client received is in it, no quota was
//! exceeded, no serial or key was issued twice, the devices table agrees with the log, and HQ
//! reconciles the next export clean. `hq reconcile` is killed at spread syscalls and at random
//! times too: HQ's state is then either unchanged or fully applied.
//!
//! `cargo test` runs a sample of points (under a minute); `STAMP_FAULTS=full` runs the whole
//! matrix and prints its table (`scripts/faults`). The figures are in docs/reliability.md.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine as _;
use stamp_core::audit::{Entry, Event};
use stamp_station::client::{Endpoint, StationIdentity};

/// The grant's quota: the faulted `site issue` gets as many CSRs; the restart gets those and 4
/// more, so it reaches the quota and is refused beyond it.
const QUOTA: usize = 20;
/// The syscalls faults are injected into.
const SYSCALLS: [&str; 6] = ["fsync", "fdatasync", "write", "pwrite64", "rename", "openat"];
/// Longest a faulted run may take before it counts as hung.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn full() -> bool {
    std::env::var("STAMP_FAULTS").is_ok_and(|v| v == "full")
}

fn strace_cmd() -> Command {
    let ok = Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "strace is required by the fault-injection tests; run scripts/test, which installs it"
    );
    Command::new("strace")
}

/// `cmd` (a `stamp` command) run under `strace OPTS`, with the same environment.
fn under_strace(cmd: &Command, opts: &[String]) -> Command {
    let mut s = strace_cmd();
    s.args(opts).arg("--").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => s.env(k, v),
            None => s.env_remove(k),
        };
    }
    s
}

/// What a run ended with: an exit code, a signal, or a hang (then it was killed).
fn run_bounded(mut cmd: Command, dir: &Path, name: &str) -> String {
    let out = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).unwrap();
    let mut child = cmd.stdin(Stdio::null()).stdout(out).stderr(err).spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return exit_text(st);
        }
        if start.elapsed() > RUN_LIMIT {
            kill_tree(child.id());
            let _ = child.wait();
            return "hung".into();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exit_text(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => "?".into(),
    }
}

/// The pids of `pid`'s children (the tracee under strace).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGKILL to `pid`'s descendants, then to it.
fn kill_tree(pid: u32) {
    for c in children(pid) {
        kill_tree(c);
    }
    let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

// ---- the template state every point starts from ------------------------------------------------

/// HQ and site plant-7 with grant plant-7.1 (quota 20) imported and station line-1 added; the
/// CSRs the faulted run issues and those the restart issues.
struct Template {
    c: Ceremony,
    /// QUOTA device CSRs for the faulted `site issue`.
    csrs: PathBuf,
    /// The same and 4 more, for the restart.
    all: PathBuf,
    /// Station line-1's files.
    station: PathBuf,
}

fn template() -> Template {
    let c = ceremony(true);
    c.entitle("e", &["--quota", &QUOTA.to_string()]);
    let all = write_csr_dir(&c.tmp.path().join("all"), QUOTA + 4, false);
    let csrs = c.tmp.path().join("csrs");
    std::fs::create_dir_all(&csrs).unwrap();
    for i in 0..QUOTA {
        let name = format!("d{i:04}.der");
        std::fs::copy(all.join(&name), csrs.join(&name)).unwrap();
    }
    let station = c.tmp.path().join("st1");
    stamp(&c.pass)
        .site("add-station")
        .dir(&c.site)
        .args(&["--name", "line-1", "-o", s(&station)])
        .json();
    Template {
        c,
        csrs,
        all,
        station,
    }
}

/// One point's copy of HQ and the site.
struct Work {
    dir: PathBuf,
    hq: PathBuf,
    site: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

impl Template {
    fn work(&self, root: &Path, name: &str) -> Work {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (hq, site) = (dir.join("hq"), dir.join("site"));
        copy_dir(&self.c.hq, &hq);
        copy_dir(&self.c.site, &site);
        Work { dir, hq, site }
    }

    fn issue_cmd(&self, w: &Work, csrs: &Path, out: &Path) -> Command {
        stamp(&self.c.pass)
            .arg("--json")
            .site("issue")
            .dir(&w.site)
            .args(&["--entitlement", "plant-7.1", "--jobs", "2"])
            .args(&["--csr", s(csrs), "-o", s(out)])
            .command()
    }

    fn serve_cmd(&self, w: &Work) -> Command {
        stamp(&self.c.pass)
            .env("STAMP_LOG", "warn")
            .arg("--json")
            .site("serve")
            .dir(&w.site)
            .args(&["--listen", "127.0.0.1:0", "--ops-listen", "off"])
            .command()
    }
}

// ---- what a site's state must satisfy after a fault and a restart ------------------------------

/// A certificate a client received: its serial (when known) and SHA-256.
#[derive(Clone, Debug)]
struct Acked {
    serial: Option<u64>,
    sha256: Vec<u8>,
}

/// Every certificate `site issue` wrote to `out` (what a station picking up files received).
fn acked_files(out: &Path) -> Vec<Acked> {
    let Ok(rd) = std::fs::read_dir(out) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in rd {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".crt.pem") {
            continue;
        }
        let pem = std::fs::read_to_string(&p).unwrap();
        let der = stamp_core::cert::from_pem(&pem, "CERTIFICATE").unwrap();
        v.push(Acked {
            serial: None,
            sha256: stamp_core::fingerprint::sha256(&der).to_vec(),
        });
    }
    v
}

fn log_records(site: &Path) -> Result<Vec<stamp_core::audit::DeviceRecord>, String> {
    let db = rusqlite::Connection::open(site.join("stamp-site.db")).map_err(|e| e.to_string())?;
    let mut stmt = db
        .prepare("SELECT entry FROM log_entries ORDER BY idx")
        .map_err(|e| e.to_string())?;
    let rows: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for b in rows {
        match Entry::from_cbor(&b).map_err(|e| e.to_string())?.event {
            Event::DeviceIssued(r) | Event::KeyHandedOut(r) => out.push(r),
            _ => {}
        }
    }
    Ok(out)
}

fn devices_table(site: &Path) -> Result<BTreeMap<u64, Vec<u8>>, String> {
    let db = rusqlite::Connection::open(site.join("stamp-site.db")).map_err(|e| e.to_string())?;
    let mut stmt = db
        .prepare("SELECT device_serial, cert_sha256 FROM devices")
        .map_err(|e| e.to_string())?;
    let rows = stmt
        .query_map([], |r| {
            Ok((stamp_store::from_sql(r.get(0)?), r.get::<_, Vec<u8>>(1)?))
        })
        .map_err(|e| e.to_string())?
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string());
    rows
}

/// The checks after a restart; returns the number of devices issued.
fn check_site(t: &Template, w: &Work, acked: &[Acked]) -> Result<usize, String> {
    let (code, v) = stamp(&t.c.pass).site("verify-log").dir(&w.site).code_json();
    if code != Some(0) || v["ok"] != true {
        return Err(format!("verify-log: {code:?} {v}"));
    }
    let recs = log_records(&w.site)?;
    if recs.len() > QUOTA {
        return Err(format!("over-issue: {} devices, quota {QUOTA}", recs.len()));
    }
    let serials: BTreeSet<u64> = recs.iter().map(|r| r.device_serial).collect();
    let keys: BTreeSet<&[u8]> = recs.iter().map(|r| r.public_key_sha256.as_slice()).collect();
    if serials.len() != recs.len() || keys.len() != recs.len() {
        return Err("a serial or a key was issued twice".into());
    }
    let by_sha: HashMap<&[u8], u64> = recs
        .iter()
        .map(|r| (r.certificate_sha256.as_slice(), r.device_serial))
        .collect();
    for a in acked {
        match by_sha.get(a.sha256.as_slice()) {
            Some(s) if a.serial.is_none_or(|x| x == *s) => {}
            _ => return Err(format!("acknowledged certificate {a:?} is not in the log")),
        }
    }
    let table = devices_table(&w.site)?;
    let in_log: BTreeMap<u64, Vec<u8>> = recs
        .iter()
        .map(|r| (r.device_serial, r.certificate_sha256.to_vec()))
        .collect();
    if table != in_log {
        return Err("the devices table and the log disagree".into());
    }
    let bundle = w.dir.join("export.bundle");
    let (code, v) = stamp(&t.c.pass)
        .site("export-audit")
        .dir(&w.site)
        .args(&["-o", s(&bundle)])
        .code_json();
    if code != Some(0) {
        return Err(format!("export-audit: {code:?} {v}"));
    }
    let (code, r) = stamp(&t.c.pass)
        .hq("reconcile")
        .dir(&w.hq)
        .arg(&bundle)
        .code_json();
    let clean = code == Some(0)
        && r["ok"] == true
        && r["violations"].as_array().is_some_and(Vec::is_empty)
        && r["devices_recorded"].as_u64() == Some(recs.len() as u64);
    if !clean {
        return Err(format!("reconcile at HQ: {code:?} {r}"));
    }
    Ok(recs.len())
}

// ---- counting syscalls in a clean run ------------------------------------------------------------

/// The most calls of each syscall any one thread of `cmd` made (strace counts per thread).
fn count_syscalls(cmd: &Command, log: &Path, names: &[&str]) -> BTreeMap<String, u32> {
    let opts = vec![
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        log.display().to_string(),
        "-e".into(),
        format!("trace={}", names.join(",")),
    ];
    let o = under_strace(cmd, &opts).output().unwrap();
    assert!(
        o.status.success(),
        "the clean traced run failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    per_thread_max(&std::fs::read_to_string(log).unwrap(), names)
}

fn per_thread_max(text: &str, names: &[&str]) -> BTreeMap<String, u32> {
    let mut per: HashMap<(String, String), u32> = HashMap::new();
    for line in text.lines() {
        let mut it = line.splitn(2, ' ');
        let (Some(pid), Some(rest)) = (it.next(), it.next()) else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(name) = names.iter().find(|n| rest.starts_with(&format!("{n}("))) {
            *per.entry((pid.to_owned(), (*name).to_owned())).or_default() += 1;
        }
    }
    let mut max = BTreeMap::new();
    for ((_, name), n) in per {
        let m = max.entry(name).or_insert(0);
        *m = (*m).max(n);
    }
    max
}

/// `k` points spread over 1..=max (the first and the last included).
fn spread(max: u32, k: u32) -> Vec<u32> {
    if max == 0 {
        return Vec::new();
    }
    let k = k.min(max).max(1);
    let mut v: Vec<u32> = (0..k)
        .map(|i| 1 + if k == 1 { 0 } else { i * (max - 1) / (k - 1) })
        .collect();
    v.dedup();
    v
}

// ---- fault points ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Issue,
    Serve,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    /// The syscall fails with EIO.
    Eio,
    /// The process is killed on entering the syscall.
    Kill,
    /// Killed on entering the N-th sync of the database files; they lose every write not
    /// synced before.
    PowerLossDb,
    /// The same at the N-th `fsync` of any file (the output files' syncs included, which come
    /// after an answer), so a commit not synced before its answer would be lost.
    PowerLoss,
}

impl Fault {
    fn is_power_loss(self) -> bool {
        matches!(self, Fault::PowerLossDb | Fault::PowerLoss)
    }
}

#[derive(Clone, Debug)]
struct Point {
    target: Target,
    syscall: &'static str,
    n: u32,
    fault: Fault,
}

/// One point's result, a row of the matrix.
#[derive(Debug)]
struct Row {
    point: Point,
    /// How the faulted run ended.
    ended: String,
    /// Whether the fault was injected (the run reached the N-th call).
    fired: bool,
    /// Certificates clients received from the faulted run.
    acked: usize,
    /// Bytes of the database files a simulated power loss dropped.
    lost_bytes: usize,
    /// Devices in the log after the restart.
    issued: usize,
    failure: Option<String>,
}

/// strace's `-P` options selecting the site's database files.
fn db_paths(site: &Path) -> Vec<String> {
    ["stamp-site.db", "stamp-site.db-wal"]
        .iter()
        .flat_map(|n| ["-P".to_owned(), site.join(n).display().to_string()])
        .collect()
}

/// strace's `-P` options selecting the service's files: its database and its log (stderr).
/// The service's faults are confined to them: an error injected into any `write` would also hit
/// the eventfd the tokio runtime wakes its I/O driver with, which cannot fail with EIO in fact
/// (tokio then panics, "failed to wake I/O driver", and the process aborts).
fn serve_paths(w: &Work) -> Vec<String> {
    let mut v = db_paths(&w.site);
    v.extend(["-P".to_owned(), w.dir.join("serve.err").display().to_string()]);
    v
}

/// The strace options of a point; a power loss records every write in `trace_log` (at a
/// database sync: traces, and kills at the syncs of, only the database files).
fn inject_opts(p: &Point, w: &Work, trace_log: Option<&Path>) -> Vec<String> {
    let how = match p.fault {
        Fault::Eio => "error=EIO",
        Fault::Kill | Fault::PowerLossDb | Fault::PowerLoss => "signal=SIGKILL",
    };
    let mut o: Vec<String> = vec!["-f".into(), "-qq".into()];
    match trace_log {
        Some(log) => {
            o.extend([
                "-o".into(),
                log.display().to_string(),
                "-y".into(),
                "-xx".into(),
                "-s".into(),
                "1048576".into(),
                "-e".into(),
                "trace=pwrite64,write,ftruncate,fsync,fdatasync,unlink,unlinkat,rename".into(),
            ]);
            if p.fault == Fault::PowerLossDb {
                o.extend(db_paths(&w.site));
            }
        }
        None => o.extend([
            "-o".into(),
            w.dir.join("inject.log").display().to_string(),
            "-e".into(),
            format!("trace={}", p.syscall),
        ]),
    }
    o.extend(["-e".into(), format!("inject={}:{how}:when={}", p.syscall, p.n)]);
    o
}

fn run_point(t: &Template, root: &Path, idx: usize, p: &Point) -> Row {
    let w = t.work(root, &format!("p{idx:03}"));
    let trace = w.dir.join("trace.log");
    let trace_log = p.fault.is_power_loss().then_some(trace.as_path());
    let before_db = snapshot_db(&w.site);
    let inject_log = trace_log.map_or_else(|| w.dir.join("inject.log"), Path::to_owned);
    let (ended, mut acked) = match p.target {
        Target::Issue => {
            let out = w.dir.join("out1");
            let cmd = under_strace(&t.issue_cmd(&w, &t.csrs, &out), &inject_opts(p, &w, trace_log));
            let ended = run_bounded(cmd, &w.dir, "fault");
            (ended, acked_files(&out))
        }
        Target::Serve => serve_under_load(t, &w, &inject_opts(p, &w, trace_log)),
    };
    // Whether the fault happened: strace marks an injected error, and the kill shows.
    let fired = std::fs::read_to_string(&inject_log)
        .is_ok_and(|l| l.contains("(INJECTED)") || l.contains("+++ killed by SIGKILL +++"));
    // An I/O error is answered with an error, never a crash (a panic aborts: SIGABRT); no run
    // hangs.
    let mut failure = ((p.fault == Fault::Eio && ended.starts_with("signal")) || ended == "hung")
        .then(|| format!("the faulted run crashed or hung ({ended})"));
    let mut lost_bytes = 0;
    if failure.is_none() && p.fault.is_power_loss() {
        match drop_unsynced(&w.site, &before_db, &trace) {
            Ok(n) => lost_bytes = n,
            Err(e) => failure = Some(format!("power-loss replay: {e}")),
        }
    }
    if failure.is_some() {
        return Row {
            point: p.clone(),
            ended,
            fired,
            acked: acked.len(),
            lost_bytes,
            issued: 0,
            failure,
        };
    }
    // Restart: the same CSRs (those already issued are refused as duplicates) and 4 more.
    let out2 = w.dir.join("out2");
    let restarted = run_bounded(t.issue_cmd(&w, &t.all, &out2), &w.dir, "restart");
    let received = acked.len();
    acked.extend(acked_files(&out2));
    let mut issued = 0;
    match check_site(t, &w, &acked) {
        Ok(n) if n == QUOTA => issued = n,
        Ok(n) => {
            issued = n;
            failure = Some(format!(
                "after the restart ({restarted}) {n} devices, not the quota {QUOTA}"
            ));
        }
        Err(e) => failure = Some(format!("restart {restarted}: {e}")),
    }
    if failure.is_none() {
        let _ = std::fs::remove_dir_all(&w.dir);
    }
    Row {
        point: p.clone(),
        ended,
        fired,
        acked: received,
        lost_bytes,
        issued,
        failure,
    }
}

// ---- site serve under load ---------------------------------------------------------------------

/// Starts `site serve` under strace, provisions from 4 connections until the service fails or 24
/// devices were asked for, then stops it (SIGTERM, SIGKILL after 10 s); returns how it ended and
/// every certificate the stations received.
fn serve_under_load(t: &Template, w: &Work, opts: &[String]) -> (String, Vec<Acked>) {
    let mut child = under_strace(&t.serve_cmd(w), opts)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(w.dir.join("serve.err")).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .ok()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok())
        .and_then(|v| v["url"].as_str().map(str::to_owned));
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    if let Some(url) = url {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let ep = Endpoint::for_station(&url, &StationIdentity::load(&t.station).unwrap()).unwrap();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let (ep, acked) = (ep.clone(), acked.clone());
                tasks.push(tokio::spawn(async move {
                    let Ok(Ok(mut conn)) = tokio::time::timeout(Duration::from_secs(10), ep.connect()).await
                    else {
                        return;
                    };
                    for _ in 0..6 {
                        let csr = csr_der_with(&rcgen::PKCS_ECDSA_P256_SHA256, |_| {});
                        let body = serde_json::json!({
                            "entitlement": "plant-7.1",
                            "csr": base64::engine::general_purpose::STANDARD.encode(&csr),
                        });
                        let r = tokio::time::timeout(
                            Duration::from_secs(10),
                            conn.post_json("/api/v1/provision", &body),
                        )
                        .await;
                        let Ok(Ok(r)) = r else { return };
                        if r.status != 200 {
                            continue;
                        }
                        let Ok(v) = r.json() else { return };
                        let (Some(pem), Some(serial)) =
                            (v["certificate"].as_str(), v["device_serial"].as_u64())
                        else {
                            return;
                        };
                        let Ok(der) = stamp_core::cert::from_pem(pem, "CERTIFICATE") else {
                            return;
                        };
                        acked.lock().unwrap().push(Acked {
                            serial: Some(serial),
                            sha256: stamp_core::fingerprint::sha256(&der).to_vec(),
                        });
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        });
    }
    for pid in children(child.id()) {
        signal(pid, "-TERM");
    }
    let start = Instant::now();
    let ended = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break exit_text(st);
        }
        if start.elapsed() > Duration::from_secs(10) {
            kill_tree(child.id());
            let _ = child.wait();
            break "hung".into();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let acked = acked.lock().unwrap().clone();
    (ended, acked)
}

// ---- simulated power loss ----------------------------------------------------------------------

/// The site's database files before the faulted run.
fn snapshot_db(site: &Path) -> HashMap<PathBuf, Vec<u8>> {
    ["stamp-site.db", "stamp-site.db-wal"]
        .iter()
        .map(|n| {
            let p = site.join(n);
            let bytes = std::fs::read(&p).unwrap_or_default();
            (p, bytes)
        })
        .collect()
}

/// One file's replayed contents: all its writes, and those a completed sync made durable.
#[derive(Default)]
struct Image {
    current: Vec<u8>,
    durable: Vec<u8>,
}

/// Replays the strace log of the faulted run over the database files' earlier contents and writes
/// back only what the last completed `fsync`/`fdatasync` of each file made durable (the writes
/// after it are lost, as in a power cut); removes the `-shm` index (memory, rebuilt on open).
/// Checks first that replaying every write gives the files as they are on disk.
/// Returns how many bytes of the files the cut changed.
fn drop_unsynced(site: &Path, before: &HashMap<PathBuf, Vec<u8>>, trace: &Path) -> Result<usize, String> {
    let text = std::fs::read_to_string(trace).map_err(|e| e.to_string())?;
    let mut images: HashMap<PathBuf, Image> = before
        .iter()
        .map(|(p, b)| {
            (
                p.clone(),
                Image {
                    current: b.clone(),
                    durable: b.clone(),
                },
            )
        })
        .collect();
    let (calls, unfinished) = joined_calls(&text);
    for call in &calls {
        let Some((name, args, ret)) = split_call(call) else {
            continue;
        };
        let path = if name.starts_with("unlink") {
            quoted_path(args)
        } else {
            fd_path(args)
        };
        let Some(img) = path.and_then(|p| images.get_mut(&p)) else {
            continue;
        };
        match name {
            "pwrite64" if ret >= 0 => {
                let (data, off) = pwrite_args(args).ok_or_else(|| format!("unparsed: {call}"))?;
                let len = usize::try_from(ret).unwrap();
                pwrite(&mut img.current, &data[..len], off);
            }
            "ftruncate" if ret == 0 => {
                let len: usize = args
                    .rsplit(", ")
                    .next()
                    .and_then(|l| l.trim().parse().ok())
                    .ok_or_else(|| format!("unparsed: {call}"))?;
                img.current.resize(len, 0);
            }
            "fsync" | "fdatasync" if ret == 0 => {
                img.durable = img.current.clone();
            }
            "write" if ret > 0 => return Err(format!("write(2) to a database file: {call}")),
            // SQLite removes the WAL when the last connection closes (after a checkpoint it
            // synced); a removal is taken as durable (metadata is not modelled).
            "unlink" | "unlinkat" if ret == 0 => {
                img.current.clear();
                img.durable.clear();
            }
            _ => {}
        }
    }
    let mut lost = 0;
    for (path, img) in &mut images {
        let on_disk = std::fs::read(path).unwrap_or_default();
        if on_disk != img.current {
            // A write the kill interrupted may have been done.
            for call in &unfinished {
                let Some((name, args)) = call.split_once('(') else {
                    continue;
                };
                if name == "pwrite64" && fd_path(args).as_ref() == Some(path) {
                    let (data, off) = pwrite_args(args).ok_or_else(|| format!("unparsed: {call}"))?;
                    pwrite(&mut img.current, &data, off);
                }
            }
        }
        if on_disk != img.current {
            return Err(format!("replay of {} does not match the file", path.display()));
        }
        lost += img.current.len().abs_diff(img.durable.len())
            + img
                .current
                .iter()
                .zip(&img.durable)
                .filter(|(a, b)| a != b)
                .count();
        std::fs::write(path, &img.durable).map_err(|e| e.to_string())?;
    }
    let _ = std::fs::remove_file(site.join("stamp-site.db-shm"));
    Ok(lost)
}

fn pwrite(file: &mut Vec<u8>, data: &[u8], off: usize) {
    let end = off + data.len();
    if file.len() < end {
        file.resize(end, 0);
    }
    file[off..end].copy_from_slice(data);
}

/// The trace's calls, each on one line: `<unfinished ...>` halves of a thread joined with their
/// `<... resumed>` rest; then the calls a kill left unfinished (they may or may not have been
/// done), without a result.
fn joined_calls(text: &str) -> (Vec<String>, Vec<String>) {
    let mut open: HashMap<&str, String> = HashMap::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            open.insert(pid, head.to_owned());
        } else if rest.starts_with("<... ") {
            let tail = rest.split_once(" resumed>").map_or("", |(_, t)| t);
            if let Some(head) = open.remove(pid) {
                out.push(format!("{head}{tail}"));
            }
        } else {
            out.push(rest.to_owned());
        }
    }
    (out, open.into_values().collect())
}

/// `name(args) = ret` → (name, args, ret); a call without a result (killed in it) is skipped.
fn split_call(call: &str) -> Option<(&str, &str, i64)> {
    let (name, rest) = call.split_once('(')?;
    let (args, ret) = rest.rsplit_once(" = ")?;
    let args = args.trim_end().strip_suffix(')')?;
    let ret = ret.split_whitespace().next()?.parse().ok()?;
    Some((name, args, ret))
}

/// The path strace -y shows for the first argument: `5</dir/stamp-site.db-wal>` (hex-escaped).
fn fd_path(args: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let start = args.find('<')? + 1;
    let end = start + args[start..].find('>')?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(unhex(
        &args[start..end],
    )?)))
}

/// The first string argument as a path: `unlink("\\x2f...")`.
fn quoted_path(args: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let q1 = args.find('"')? + 1;
    let q2 = q1 + args[q1..].find('"')?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(unhex(&args[q1..q2])?)))
}

/// strace -xx's `\xHH\xHH...` → bytes.
fn unhex(text: &str) -> Option<Vec<u8>> {
    let mut data = Vec::with_capacity(text.len() / 4);
    for chunk in text.as_bytes().chunks(4) {
        if chunk.len() != 4 || &chunk[..2] != b"\\x" {
            return None;
        }
        data.push(u8::from_str_radix(std::str::from_utf8(&chunk[2..]).ok()?, 16).ok()?);
    }
    Some(data)
}

/// `FD<path>, "\x..", LEN, OFFSET` → (data, offset).
fn pwrite_args(args: &str) -> Option<(Vec<u8>, usize)> {
    let q1 = args.find('"')? + 1;
    let q2 = q1 + args[q1..].find('"')?;
    let data = unhex(&args[q1..q2])?;
    let off = args[q2..].rsplit(", ").next()?.trim().parse().ok()?;
    Some((data, off))
}

// ---- the matrix ----------------------------------------------------------------------------------

/// The points: for each target and syscall, `k` spread over the clean run's per-thread count,
/// alternating EIO and SIGKILL; and `power` power losses at spread syncs of `site issue`.
fn points(t: &Template, root: &Path, k: u32, serve_k: u32, power: u32) -> Vec<Point> {
    let w = t.work(root, "count");
    let counts = count_syscalls(
        &t.issue_cmd(&w, &t.csrs, &w.dir.join("out")),
        &w.dir.join("count.log"),
        &SYSCALLS,
    );
    eprintln!("site issue, most calls of one thread: {counts:?}");
    let mut v = Vec::new();
    for sc in SYSCALLS {
        for (i, n) in spread(counts.get(sc).copied().unwrap_or(0), k)
            .into_iter()
            .enumerate()
        {
            let fault = if i % 2 == 0 { Fault::Eio } else { Fault::Kill };
            v.push(Point {
                target: Target::Issue,
                syscall: sc,
                n,
                fault,
            });
        }
    }
    let _ = std::fs::remove_dir_all(&w.dir);
    // SQLite syncs with fsync here (no fdatasync is seen), so the power cuts come at the fsyncs
    // of the database files (the WAL's commits, the database's checkpoints).
    let w = t.work(root, "count-db");
    let log = w.dir.join("count.log");
    let mut opts = vec![
        "-f".into(),
        "-qq".into(),
        "-o".into(),
        log.display().to_string(),
        "-e".into(),
        "trace=fsync,fdatasync".into(),
    ];
    opts.extend(db_paths(&w.site));
    let o = under_strace(&t.issue_cmd(&w, &t.csrs, &w.dir.join("out")), &opts)
        .output()
        .unwrap();
    assert!(o.status.success(), "the clean traced run failed");
    let db_syncs = per_thread_max(&std::fs::read_to_string(&log).unwrap(), &["fsync"]);
    eprintln!("site issue, syncs of the database files: {db_syncs:?}");
    for n in spread(db_syncs.get("fsync").copied().unwrap_or(0), power) {
        v.push(Point {
            target: Target::Issue,
            syscall: "fsync",
            n,
            fault: Fault::PowerLossDb,
        });
    }
    for n in spread(counts.get("fsync").copied().unwrap_or(0) * 3 / 4, power) {
        v.push(Point {
            target: Target::Issue,
            syscall: "fsync",
            n,
            fault: Fault::PowerLoss,
        });
    }
    let _ = std::fs::remove_dir_all(&w.dir);
    if serve_k > 0 {
        let w = t.work(root, "count-serve");
        let log = w.dir.join("count.log");
        let mut opts = vec![
            "-f".into(),
            "-qq".into(),
            "-o".into(),
            log.display().to_string(),
            "-e".into(),
            format!("trace={}", SYSCALLS.join(",")),
        ];
        opts.extend(serve_paths(&w));
        let (ended, acked) = serve_under_load(t, &w, &opts);
        assert!(
            acked.len() >= QUOTA,
            "clean serve run: {ended}, {} acked",
            acked.len()
        );
        let counts = per_thread_max(&std::fs::read_to_string(&log).unwrap(), &SYSCALLS);
        eprintln!("site serve, most calls of one thread on its database and log: {counts:?}");
        for sc in SYSCALLS {
            for (i, n) in spread(counts.get(sc).copied().unwrap_or(0), serve_k)
                .into_iter()
                .enumerate()
            {
                let fault = if i % 2 == 0 { Fault::Kill } else { Fault::Eio };
                v.push(Point {
                    target: Target::Serve,
                    syscall: sc,
                    n,
                    fault,
                });
            }
        }
        let _ = std::fs::remove_dir_all(&w.dir);
    }
    v
}

fn print_matrix(rows: &[Row]) {
    let mut groups: BTreeMap<(Target, &str, Fault), [usize; 5]> = BTreeMap::new();
    for r in rows {
        let g = groups
            .entry((r.point.target, r.point.syscall, r.point.fault))
            .or_default();
        g[0] += 1;
        g[1] += usize::from(r.fired);
        g[2] += usize::from(r.ended != "exit 0");
        g[3] += r.acked;
        g[4] += usize::from(r.failure.is_none());
    }
    eprintln!("| command | syscall | fault | points | injected | run failed or was killed | certificates received before the restart | survived |");
    eprintln!("|---|---|---|---|---|---|---|---|");
    for ((target, sc, fault), [n, fired, broke, acked, ok]) in &groups {
        let target = match target {
            Target::Issue => "site issue",
            Target::Serve => "site serve",
        };
        eprintln!("| {target} | {sc} | {fault:?} | {n} | {fired} | {broke} | {acked} | {ok} |");
    }
    let ok = rows.iter().filter(|r| r.failure.is_none()).count();
    let fired = rows.iter().filter(|r| r.fired).count();
    let acked: usize = rows.iter().map(|r| r.acked).sum();
    let lost = rows
        .iter()
        .filter(|r| r.failure.as_ref().is_some_and(|f| f.contains("not in the log")))
        .count();
    eprintln!(
        "total: {} points, {fired} injected, {ok} survived; {acked} certificates received before a restart, missing from the log after it at {lost} points",
        rows.len()
    );
    for r in rows {
        eprintln!(
            "  {:?} {}#{} {:?}: {}{}, {} received, {} unsynced bytes dropped, {} issued{}",
            r.point.target,
            r.point.syscall,
            r.point.n,
            r.point.fault,
            if r.fired { "injected, " } else { "not reached, " },
            r.ended,
            r.acked,
            r.lost_bytes,
            r.issued,
            r.failure
                .as_ref()
                .map(|f| format!(" FAILED: {f}"))
                .unwrap_or_default()
        );
    }
}

#[test]
fn faults_in_issue_and_serve_lose_nothing_acknowledged_and_never_over_issue() {
    let t = template();
    let root = tempfile::tempdir().unwrap();
    let pts = if full() {
        points(&t, root.path(), 18, 6, 12)
    } else {
        let mut v = points(&t, root.path(), 2, 2, 2);
        // A sample of the service's points: an error at its last sync and at its last database
        // write.
        v.retain(|p| p.target == Target::Issue || (p.n > 1 && matches!(p.syscall, "fsync" | "pwrite64")));
        v
    };
    let rows: Vec<Row> = pts
        .iter()
        .enumerate()
        .map(|(i, p)| run_point(&t, root.path(), i, p))
        .collect();
    print_matrix(&rows);
    let failed: Vec<&Row> = rows.iter().filter(|r| r.failure.is_some()).collect();
    if !failed.is_empty() {
        eprintln!("failed points' directories kept in {}", root.keep().display());
    }
    assert!(
        failed.is_empty(),
        "{} of {} fault points failed",
        failed.len(),
        rows.len()
    );
    // The faults did hit, and the matrix has power losses (the site synced its database).
    let fired = rows.iter().filter(|r| r.fired).count();
    assert!(
        fired * 2 >= rows.len(),
        "only {fired} of {} faults were injected",
        rows.len()
    );
    assert!(
        rows.iter()
            .any(|r| r.point.fault == Fault::PowerLossDb && r.fired),
        "no power loss: the site never synced its database files"
    );
}

// ---- hq reconcile killed -----------------------------------------------------------------------

/// Every table of HQ's database, rows in order, without the `*_at` columns (the wall-clock time
/// a row was written; `*_ms` times come from the log and stay).
fn hq_state(hq: &Path) -> BTreeMap<String, Vec<String>> {
    let db = rusqlite::Connection::open(hq.join("stamp-hq.db")).unwrap();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut stmt = db.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let cols: Vec<bool> = stmt.column_names().iter().map(|c| !c.ends_with("_at")).collect();
        let mut rows: Vec<String> = stmt
            .query_map([], |r| {
                let mut row = Vec::new();
                for (i, keep) in cols.iter().enumerate() {
                    if *keep {
                        row.push(format!("{:?}", r.get_ref(i)?));
                    }
                }
                Ok(row.join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.sort();
        out.insert(t, rows);
    }
    out
}

#[test]
fn hq_reconcile_killed_anywhere_leaves_hq_unchanged_or_fully_applied() {
    let t = template();
    let root = tempfile::tempdir().unwrap();
    // The site issues its quota and exports: the bundle every run reconciles.
    let base = t.work(root.path(), "base");
    let o = t
        .issue_cmd(&base, &t.csrs, &base.dir.join("out"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let bundle = base.dir.join("b.bundle");
    stamp(&t.c.pass)
        .site("export-audit")
        .dir(&base.site)
        .args(&["-o", s(&bundle)])
        .json();
    let before = hq_state(&base.hq);
    let reconcile = |hq: &Path| {
        stamp(&t.c.pass)
            .arg("--json")
            .hq("reconcile")
            .dir(hq)
            .arg(&bundle)
            .command()
    };
    // The reference: a clean run (and a second clean run gives the same state: the comparison
    // is deterministic).
    let copy = |name: &str| {
        let d = root.path().join(name);
        copy_dir(&base.hq, &d);
        d
    };
    let reference = copy("ref");
    assert!(reconcile(&reference).output().unwrap().status.success());
    let applied = hq_state(&reference);
    assert_ne!(applied, before);
    let again = copy("ref2");
    assert!(reconcile(&again).output().unwrap().status.success());
    assert_eq!(hq_state(&again), applied);

    // After a kill: HQ is unchanged or fully applied, and the rerun ends in the applied state.
    let (mut unchanged, mut whole) = (0, 0);
    let mut settle = |hq: &Path, label: String| {
        let _ = std::fs::remove_file(hq.join("stamp-hq.db-shm"));
        let state = hq_state(hq);
        let rerun = stamp(&t.c.pass).hq("reconcile").dir(hq).arg(&bundle).output();
        if state == before {
            unchanged += 1;
            assert!(rerun.status.success(), "{label}: the rerun fails");
        } else {
            assert!(state == applied, "{label}: HQ's state is half applied");
            whole += 1;
            assert_eq!(rerun.status.code(), Some(1), "{label}: a replay is refused");
            assert!(
                String::from_utf8_lossy(&rerun.stderr).contains("replayed"),
                "{label}"
            );
        }
        assert_eq!(hq_state(hq), applied, "{label}: after the rerun");
        eprintln!(
            "hq reconcile {label}: {}",
            if state == before { "unchanged" } else { "applied" }
        );
        std::fs::remove_dir_all(hq).unwrap();
    };
    // Kills at spread syscalls (strace).
    let names = ["fsync", "pwrite64", "openat", "write"];
    let count_dir = copy("count");
    let counts = count_syscalls(&reconcile(&count_dir), &root.path().join("count.log"), &names);
    eprintln!("hq reconcile, most calls of one thread: {counts:?}");
    let k = if full() { 10 } else { 2 };
    for sc in names {
        for n in spread(counts.get(sc).copied().unwrap_or(0), k) {
            let hq = copy(&format!("{sc}-{n}"));
            let opts: Vec<String> = vec![
                "-f".into(),
                "-qq".into(),
                "-o".into(),
                "/dev/null".into(),
                "-e".into(),
                format!("trace={sc}"),
                "-e".into(),
                format!("inject={sc}:signal=SIGKILL:when={n}"),
            ];
            let ended = run_bounded(under_strace(&reconcile(&hq), &opts), root.path(), "reconcile");
            settle(&hq, format!("kill at {sc}#{n} ({ended})"));
        }
    }
    // Kills at random times within a clean run's duration (STAMP_FAULTS_SEED repeats a run).
    let timed = copy("timed");
    let started = Instant::now();
    assert!(reconcile(&timed).output().unwrap().status.success());
    let clean = started.elapsed();
    std::fs::remove_dir_all(&timed).unwrap();
    let mut seed: u64 = std::env::var("STAMP_FAULTS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1;
    eprintln!("hq reconcile: a clean run takes {clean:?}; timed kills with STAMP_FAULTS_SEED={seed}");
    for i in 0..(if full() { 10 } else { 2 }) {
        // xorshift64
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = clean.mul_f64((seed % 1000) as f64 / 1000.0);
        let hq = copy(&format!("timed-{i}"));
        let mut child = reconcile(&hq)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        let ended = exit_text(child.wait().unwrap());
        settle(&hq, format!("kill after {delay:?} ({ended})"));
    }
    eprintln!(
        "hq reconcile killed: {} points, {unchanged} unchanged, {whole} fully applied, 0 half",
        unchanged + whole
    );
    assert!(unchanged > 0, "no kill came before the commit");
}
