//! Reconciliation streams: a 49,152-entry bundle is reconciled by the real binary, with its
//! signature checks on every core, in the same peak memory (VmHWM, sampled from /proc while it
//! runs) as an 8,192-entry one.
//!
//! SQLite's page cache is set to 2 MiB here (`--cache-mib 2`). It is the one part of
//! reconciliation's memory that grows with the bundle, up to its size (64 MiB by default: it
//! fills as the registry grows, and these bundles are too small to fill it); everything else
//! must not grow at all, and that is what the comparison checks. `bench/run` measures the default
//! at 1M entries.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::audit_builder::*;
use crate::common::*;
use stamp_core::audit::{self, Event};

/// Peak resident memory (VmHWM, KiB) of a running process, while it still runs.
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Runs `stamp hq reconcile --json` on `bundle`, sampling its peak memory until it exits.
fn reconcile_measured(pass: &Path, hq: &Path, bundle: &Path) -> (serde_json::Value, u64, Duration) {
    let started = Instant::now();
    let mut child = stamp(pass)
        .arg("--json")
        .hq("reconcile")
        .args(&["--cache-mib", "2"])
        .dir(hq)
        .arg(bundle)
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    // stdout is small (one report): read it after exit. Sample every 10 ms meanwhile.
    loop {
        if let Some(k) = vm_hwm(pid) {
            peak = peak.max(k);
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "reconcile failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (serde_json::from_slice(&out.stdout).unwrap(), peak, elapsed)
}

/// Writes a first bundle of `devices` genuine devices (after the log's entries so far, plus the
/// export entry) straight to a file.
fn write_bundle(log: &mut SiteLog, grant: &stamp_core::entitlement::Grant, devices: u64, path: &Path) {
    // Certificates are the costly part (every device has its own key and serial): made on every
    // core, then logged in order.
    let first = grant.serial_ranges[0].first;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let per = devices.div_ceil(threads);
    // Entry i is logged at t0 + i * step: its certificate is dated so.
    let (t0, step) = (log.time_ms, log.step_ms);
    let records: Vec<Vec<audit::DeviceRecord>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let log = &*log;
                scope.spawn(move || {
                    (t * per..((t + 1) * per).min(devices))
                        .map(|i| {
                            let spki = device_spki();
                            let at = t0 + i as i64 * step;
                            let cert = log.certificate_at(grant, first + i, &spki, None, at);
                            SiteLog::record(&grant.entitlement_id, first + i, cert, &spki, None)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in records.into_iter().flatten() {
        log.push(Event::DeviceIssued(r));
    }
    let b = log.export();
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    audit::write_frame(
        &mut f,
        &log.seal_part(audit::HEADER_CONTENT_TYPE, &b.header.to_cbor()),
    )
    .unwrap();
    for c in &b.chunks {
        audit::write_frame(&mut f, &log.seal_part(audit::CHUNK_CONTENT_TYPE, &c.to_cbor())).unwrap();
    }
    f.flush().unwrap();
}

#[test]
// Both sizes fill whole 4096-entry chunks (memory is bounded per chunk, so a smaller baseline
// would not be comparable); `bench/run` measures 1M entries in release.
fn a_bundle_six_times_larger_reconciles_in_the_same_memory() {
    let c = ceremony(true);
    let pkg = c.tmp.path().join("grant.cose");
    stamp(&c.pass)
        .hq("entitle")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--product", "thermo-2"])
        .args(&["--quota", "200000", "-o", s(&pkg)])
        .json();
    stamp(&c.pass).site("import").dir(&c.site).arg(&pkg).json();
    let grant = stamp_site::SiteStore::open(&c.site.join("stamp-site.db"))
        .unwrap()
        .grant("plant-7.1")
        .unwrap()
        .unwrap()
        .0
        .grant;
    let keys = SiteKeys::open(&c.site, &c.pass, "plant-7");

    // Two HQs in the same state: one gets an 8k-entry bundle, the other a 48k-entry one.
    let hq_small: PathBuf = c.tmp.path().join("hq-small");
    copy_dir(&c.hq, &hq_small);
    let mut runs = Vec::new();
    for (hq, devices) in [(hq_small.clone(), 8_192u64), (c.hq.clone(), 49_152)] {
        let mut log = SiteLog::new(keys.clone());
        log.step_ms = 1;
        log.applied(&pkg, 1, "plant-7.1", "grant");
        let bundle = c.tmp.path().join(format!("bundle-{devices}.cbor"));
        let t = Instant::now();
        write_bundle(&mut log, &grant, devices, &bundle);
        let built = t.elapsed();
        drop(log);
        // To time a release build by hand: STAMP_RECONCILE_KEEP=DIR keeps the bundles, the HQ
        // directories as they were before reconciling, and the passphrase file.
        if let Some(keep) = std::env::var_os("STAMP_RECONCILE_KEEP").map(PathBuf::from) {
            copy_dir(&hq, &keep.join(format!("hq-{devices}")));
            std::fs::copy(&bundle, keep.join(format!("bundle-{devices}.cbor"))).unwrap();
            std::fs::copy(&c.pass, keep.join("pass")).unwrap();
        }
        let (report, peak_kib, took) = reconcile_measured(&c.pass, &hq, &bundle);
        assert_eq!(report["ok"], true, "{report:#}");
        assert_eq!(report["devices_recorded"], devices);
        assert_eq!(report["entries"], devices + 2);
        eprintln!(
            "{devices} devices: bundle {} MiB built in {built:.1?}; reconciled in {took:.1?}, peak RSS {} MiB",
            std::fs::metadata(&bundle).unwrap().len() >> 20,
            peak_kib >> 10
        );
        std::fs::remove_file(&bundle).unwrap();
        runs.push(peak_kib);
    }
    let (small, large) = (runs[0], runs[1]);
    assert!(
        large < small + 8 * 1024,
        "peak memory grew with the entries: {small} KiB for 8k entries, {large} KiB for 48k"
    );
    // The registry has them all.
    let d = stamp(&c.pass)
        .hq("devices")
        .dir(&c.hq)
        .args(&["--site", "plant-7"])
        .json();
    assert_eq!(d["count"], 49_152);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::set_permissions(to, std::fs::metadata(from).unwrap().permissions()).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
