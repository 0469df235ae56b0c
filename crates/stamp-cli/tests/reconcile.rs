//! Reconciliation through the real binary: bundles built exactly as docs/formats/audit.md says
//! (test support in common/audit_builder.rs, with a real site's keys and real entitlements), then
//! `stamp hq reconcile`. Every tampered bundle is rejected with a specific error and leaves HQ
//! unchanged (except equivocation evidence); every policy breach is reported with its entries.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::audit_builder::*;
use crate::common::*;
use serde_bytes::ByteBuf;
use stamp_core::audit::{self, Event, RefusalReason, CHUNK_CONTENT_TYPE};
use stamp_core::entitlement::Grant;
use stamp_core::SiteId;

/// Everything made once through the real binary and shared (read-only) by every test: HQ, site
/// plant-7 and site plant-9, and these packages, all imported at their sites:
///
/// | site    | seq | package                                              |
/// |---------|-----|------------------------------------------------------|
/// | plant-7 | 1   | grant plant-7.1, quota 20                            |
/// | plant-7 | 2   | grant plant-7.2, quota 5, at most 2 a minute         |
/// | plant-7 | 3   | grant plant-7.3, quota 5, window in 2099             |
/// | plant-7 | 4   | grant plant-7.4, quota 5                             |
/// | plant-7 | 5   | amend plant-7.4: suspend                             |
/// | plant-7 | 6   | grant plant-7.6, 2 HQ-generated Ed25519 keys (handed out by the real site) |
/// | plant-9 | 1   | grant plant-9.1, quota 10                            |
struct Base {
    pass: PathBuf,
    hq: PathBuf,
    site: SiteKeys,
    other: SiteKeys,
    packages: HashMap<(String, u64), PathBuf>,
    grants: HashMap<String, Grant>,
    /// plant-7.6's keys as the real site handed them out: (key index, device serial, certificate).
    hq_keys: Vec<(u64, u64, Vec<u8>)>,
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

fn build_base() -> Base {
    let c = ceremony(true);
    let other_dir = c.second_site("plant-9");
    let mut packages = HashMap::new();
    let mut package = |site: &str, seq: u64, site_dir: &Path, args: &[&str]| {
        let out = c.tmp.path().join(format!("{site}-{seq}.cose"));
        let r = stamp(&c.pass)
            .arg("hq")
            .args(args)
            .dir(&c.hq)
            .args(&["-o", s(&out)])
            .json();
        assert_eq!(r["sequence"], seq);
        stamp(&c.pass).site("import").dir(site_dir).arg(&out).json();
        packages.insert((site.to_owned(), seq), out);
    };
    let entitle = ["entitle", "--site", "plant-7", "--product", "thermo-2"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut v = entitle.to_vec();
        v.extend_from_slice(extra);
        v
    };
    package("plant-7", 1, &c.site, &with(&["--quota", "20"]));
    package(
        "plant-7",
        2,
        &c.site,
        &with(&["--quota", "5", "--rate", "2/minute"]),
    );
    package(
        "plant-7",
        3,
        &c.site,
        &with(&[
            "--quota",
            "5",
            "--not-before",
            "2099-01-01",
            "--not-after",
            "2100-01-01",
        ]),
    );
    package("plant-7", 4, &c.site, &with(&["--quota", "5"]));
    package(
        "plant-7",
        5,
        &c.site,
        &["amend", "--entitlement", "plant-7.4", "--suspend"],
    );
    package(
        "plant-7",
        6,
        &c.site,
        &[
            "entitle",
            "--site",
            "plant-7",
            "--product",
            "lock-1",
            "--quota",
            "2",
            "--hq-keys",
            "ed25519",
            "--key-types",
            "ed25519",
        ],
    );
    let handout = c.tmp.path().join("handout");
    let h = stamp(&c.pass)
        .site("hand-out")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.6", "--count", "2"])
        .args(&["-o", s(&handout)])
        .json();
    let hq_keys: Vec<(u64, u64, Vec<u8>)> = h["handed_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key_index"].as_u64().unwrap(),
                k["device_serial"].as_u64().unwrap(),
                pem_der(Path::new(k["certificate"].as_str().unwrap())),
            )
        })
        .collect();
    assert_eq!(hq_keys.len(), 2);
    package(
        "plant-9",
        1,
        &other_dir,
        &[
            "entitle",
            "--site",
            "plant-9",
            "--product",
            "thermo-2",
            "--quota",
            "10",
        ],
    );

    // Keep what the tests need under the target directory; the ceremony's temp dir goes away.
    let dir = tempfile::Builder::new()
        .prefix("reconcile-base")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    for name in ["hq", "site", "plant-9"] {
        copy_dir(&c.tmp.path().join(name), &dir.join(name));
    }
    let pass = dir.join("pass");
    std::fs::copy(&c.pass, &pass).unwrap();
    let packages = packages
        .into_iter()
        .map(|(k, p)| {
            let to = dir.join(p.file_name().unwrap());
            std::fs::copy(&p, &to).unwrap();
            (k, to)
        })
        .collect();
    let mut grants = HashMap::new();
    for (site, ids) in [
        (
            "site",
            &["plant-7.1", "plant-7.2", "plant-7.3", "plant-7.4", "plant-7.6"][..],
        ),
        ("plant-9", &["plant-9.1"][..]),
    ] {
        let store = stamp_site::SiteStore::open(&dir.join(site).join("stamp-site.db")).unwrap();
        for id in ids {
            let (state, _) = store.grant(id).unwrap().unwrap();
            grants.insert(id.to_string(), state.grant);
        }
    }
    Base {
        site: SiteKeys::open(&dir.join("site"), &pass, "plant-7"),
        other: SiteKeys::open(&dir.join("plant-9"), &pass, "plant-9"),
        hq: dir.join("hq"),
        pass,
        packages,
        grants,
        hq_keys,
    }
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(build_base)
}

/// plant-7's packages in the base, by sequence: what each grants or amends.
const PLANT_7: [(&str, &str); 6] = [
    ("plant-7.1", "grant"),
    ("plant-7.2", "grant"),
    ("plant-7.3", "grant"),
    ("plant-7.4", "grant"),
    ("plant-7.4", "amend"),
    ("plant-7.6", "grant"),
];

/// One test's own copy of HQ.
struct T {
    b: &'static Base,
    tmp: tempfile::TempDir,
    hq: PathBuf,
}

impl T {
    fn new() -> T {
        let b = base();
        let tmp = tempfile::tempdir().unwrap();
        let hq = tmp.path().join("hq");
        copy_dir(&b.hq, &hq);
        T { b, tmp, hq }
    }

    fn grant(&self, id: &str) -> Grant {
        self.b.grants[id].clone()
    }

    /// plant-7's log, with grant `id` applied from package `seq`, after the packages before it
    /// (a site applies them strictly in sequence).
    fn log_with(&self, seq: u64, id: &str) -> SiteLog {
        assert_eq!(PLANT_7[seq as usize - 1], (id, "grant"), "package {seq}");
        let mut log = SiteLog::new(self.b.site.clone());
        for (i, (pid, action)) in PLANT_7.iter().enumerate().take(seq as usize) {
            self.apply(&mut log, i as u64 + 1, pid, action);
        }
        log
    }

    fn apply(&self, log: &mut SiteLog, seq: u64, id: &str, action: &str) {
        let site = log.keys.site_id.to_string();
        let pkg = &self.b.packages[&(site, seq)];
        log.applied(pkg, seq, id, action);
    }

    fn write(&self, bytes: &[u8]) -> PathBuf {
        let p = self.tmp.path().join(format!("bundle-{}.cbor", rand_name()));
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Reconciles `bundle` on HQ directory `hq`, with `--threads N` if given.
    fn reconcile(&self, hq: &Path, bundle: &Path, json: bool, threads: Option<&str>) -> std::process::Output {
        let mut args = vec![];
        if json {
            args.push("--json");
        }
        args.extend_from_slice(&["hq", "reconcile", "--dir", s(hq)]);
        if let Some(n) = threads {
            args.extend_from_slice(&["--threads", n]);
        }
        args.push(s(bundle));
        stamp(&self.b.pass).args(&args).output()
    }

    /// Reconciles with `--package-grace GRACE`; must be accepted with violations.
    fn violations_with_grace(&self, bytes: &[u8], grace: &str) -> serde_json::Value {
        let p = self.write(bytes);
        let out = stamp(&self.b.pass)
            .arg("--json")
            .hq("reconcile")
            .dir(&self.hq)
            .args(&["--package-grace", grace, s(&p)])
            .output();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("stdout {} stderr {}", lossy(&out.stdout), lossy(&out.stderr)));
        assert_eq!(out.status.code(), Some(1), "{v:#}");
        assert_eq!(v["ok"], false, "{v:#}");
        v
    }

    /// Reconciles, and checks that the same bundle on a copy of HQ as it was gives the same
    /// output without the signature pre-check threads (`--threads 0`: every entry handled whole,
    /// one after another): the same report, or the same first failure.
    fn run(&self, bytes: &[u8], json: bool) -> std::process::Output {
        let p = self.write(bytes);
        let serial = self.tmp.path().join(format!("hq-serial-{}", rand_name()));
        copy_dir(&self.hq, &serial);
        let out = self.reconcile(&self.hq, &p, json, None);
        let one_by_one = self.reconcile(&serial, &p, json, Some("0"));
        assert_eq!(
            (lossy(&out.stdout), lossy(&out.stderr), out.status.code()),
            (
                lossy(&one_by_one.stdout),
                lossy(&one_by_one.stderr),
                one_by_one.status.code()
            ),
            "reconciliation with and without pre-check threads differ"
        );
        out
    }

    /// Reconciles; must be clean (exit 0).
    fn ok(&self, bytes: &[u8]) -> serde_json::Value {
        let out = self.run(bytes, true);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("stdout {} stderr {}", lossy(&out.stdout), lossy(&out.stderr)));
        assert!(out.status.success(), "not clean: {v:#}\n{}", lossy(&out.stderr));
        assert_eq!(v["ok"], true);
        v
    }

    /// Reconciles; must be accepted with violations (exit 1, the report on stdout).
    fn violations(&self, bytes: &[u8]) -> serde_json::Value {
        let out = self.run(bytes, true);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|_| panic!("stdout {} stderr {}", lossy(&out.stdout), lossy(&out.stderr)));
        assert_eq!(out.status.code(), Some(1), "{v:#}");
        assert_eq!(v["ok"], false, "{v:#}");
        v
    }

    /// Reconciles; must be rejected with the stable code `code`, with HQ unchanged.
    fn rejected(&self, bytes: &[u8], code: &str) {
        let before = snapshot(&self.hq);
        let p = self.write(bytes);
        stamp(&self.b.pass)
            .hq("reconcile")
            .dir(&self.hq)
            .arg(&p)
            .fails_with(code);
        assert_eq!(
            snapshot(&self.hq),
            before,
            "HQ state changed after a rejected bundle ({code})"
        );
        // The same first failure without pre-check threads, and with more threads than cores.
        let threaded = self.reconcile(&self.hq, &p, false, None);
        for n in ["0", "5"] {
            let other = self.reconcile(&self.hq, &p, false, Some(n));
            assert_eq!(
                (lossy(&other.stderr), other.status.code()),
                (lossy(&threaded.stderr), threaded.status.code()),
                "--threads {n} rejects differently"
            );
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn rand_name() -> String {
    use aws_lc_rs::rand::SecureRandom;
    let mut b = [0u8; 8];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut b).unwrap();
    hex::encode(b)
}

fn first_serial(g: &Grant) -> u64 {
    g.serial_ranges[0].first
}

/// A violation of `kind` in the report, with its entries.
fn violation<'a>(report: &'a serde_json::Value, kind: &str) -> &'a serde_json::Value {
    report["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} violation in {report:#}"))
}

fn entries(v: &serde_json::Value) -> Vec<u64> {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_u64().unwrap())
        .collect()
}

/// A log with grant plant-7.1 and `n` genuine devices, in chunks of 3.
fn log_with_devices(t: &T, n: u64) -> (SiteLog, Grant) {
    let g = t.grant("plant-7.1");
    let mut log = t.log_with(1, "plant-7.1");
    log.chunk_size = 3;
    for i in 0..n {
        log.device(&g, first_serial(&g) + i);
    }
    (log, g)
}

// --- accepted bundles --------------------------------------------------------------------------

#[test]
fn clean_bundle_is_accepted_and_its_devices_recorded() {
    let t = T::new();
    let (mut log, g) = log_with_devices(&t, 5);
    log.refused(Some("plant-7.1"), RefusalReason::KeyTypeNotAllowed);
    log.refused(None, RefusalReason::UnknownEntitlement);
    log.refused(Some("plant-7.1"), RefusalReason::KeyTypeNotAllowed);
    let b = log.export();
    let r = t.ok(&log.seal(&b));
    assert_eq!(r["site_id"], "plant-7");
    assert_eq!(r["bundle_id"], hex::encode(&b.header.bundle_id));
    assert_eq!(r["entries"], 10);
    assert_eq!(r["devices_issued"], 5);
    assert_eq!(r["devices_recorded"], 5);
    assert_eq!(r["entitlements_applied"], 1);
    assert_eq!(r["refusals_by_reason"]["key-type-not-allowed"], 2);
    assert_eq!(r["refusals_by_reason"]["unknown-entitlement"], 1);
    assert_eq!(r["checkpoint"]["size"], 10);
    assert_eq!(r["previous"], serde_json::Value::Null);
    assert_eq!(r["violations"], serde_json::json!([]));

    // The registry lists the genuine devices.
    let d = stamp(&t.b.pass)
        .hq("devices")
        .dir(&t.hq)
        .args(&["--site", "plant-7"])
        .json();
    assert_eq!(d["count"], 5);
    let serials: Vec<u64> = d["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["device_serial"].as_u64().unwrap())
        .collect();
    assert_eq!(serials, (0..5).map(|i| first_serial(&g) + i).collect::<Vec<_>>());
    assert_eq!(d["devices"][0]["entitlement_id"], "plant-7.1");
    assert_eq!(d["devices"][0]["log_index"], 1);
    let none = stamp(&t.b.pass)
        .hq("devices")
        .dir(&t.hq)
        .args(&["--site", "plant-9"])
        .json();
    assert_eq!(none["count"], 0);
    // Certificates in PEM, which openssl reads.
    let out = stamp(&t.b.pass)
        .hq("devices")
        .dir(&t.hq)
        .arg("--certificates")
        .output();
    assert!(out.status.success());
    let text = lossy(&out.stdout);
    assert_eq!(text.matches("BEGIN CERTIFICATE").count(), 5, "{text}");
}

#[test]
fn text_report_and_help_explain_the_outcome() {
    let t = T::new();
    let (mut log, _) = log_with_devices(&t, 2);
    let b = log.export();
    let out = t.run(&log.seal(&b), false);
    assert!(out.status.success());
    let text = lossy(&out.stdout);
    assert!(text.contains("from site plant-7"), "{text}");
    assert!(
        text.contains("OK: every entry kept the site's entitlements"),
        "{text}"
    );

    let help = stamp(&t.b.pass).hq("reconcile").arg("--help").output();
    let help = lossy(&help.stdout);
    for needle in ["REJECTS", "equivocation", "accepted", "Exit status"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[test]
fn second_bundle_extends_the_first() {
    let t = T::new();
    let (mut log, g) = log_with_devices(&t, 4);
    let b1 = log.export();
    t.ok(&log.seal(&b1));
    for i in 4..9 {
        log.device(&g, first_serial(&g) + i);
    }
    let b2 = log.export();
    assert!(!b2.header.consistency_proof.is_empty());
    let r = t.ok(&log.seal(&b2));
    assert_eq!(r["previous"]["size"], 6);
    assert_eq!(r["first_index"], 6);
    assert_eq!(r["checkpoint"]["size"], 12);
    assert_eq!(r["devices_recorded"], 5);
    assert_eq!(r["entitlements_applied"], 0);
    let d = stamp(&t.b.pass).hq("devices").dir(&t.hq).json();
    assert_eq!(d["count"], 9);
}

// --- rejected bundles: HQ unchanged ------------------------------------------------------------

/// A plant-7 log with HQ holding its first bundle, and the next bundle's parts.
fn second_bundle(t: &T) -> (SiteLog, audit_builder::Bundle) {
    let (mut log, g) = log_with_devices(t, 2);
    let b1 = log.export();
    t.ok(&log.seal(&b1));
    for i in 2..9 {
        log.device(&g, first_serial(&g) + i);
    }
    let b2 = log.export();
    assert!(b2.chunks.len() >= 3);
    (log, b2)
}

#[test]
fn truncated_bundles_are_rejected() {
    let t = T::new();
    let (log, b) = second_bundle(&t);
    let bytes = log.seal(&b);
    t.rejected(&bytes[..bytes.len() - 100], "framing");
    let frames = log.frames(&b);
    t.rejected(&file(&frames[..frames.len() - 1]), "truncated");
    t.rejected(&[], "empty");
    // The complete bundle still reconciles.
    t.ok(&bytes);
}

#[test]
fn reordered_entries_are_rejected() {
    let t = T::new();
    let (log, b) = second_bundle(&t);
    let mut swapped = b.clone();
    swapped.chunks[1].entries.swap(0, 1);
    t.rejected(&log.seal(&swapped), "entry-index");
    // Reordered chunks too.
    let mut frames = log.frames(&b);
    frames.swap(1, 2);
    t.rejected(&file(&frames), "chunk-out-of-order");
    t.ok(&log.seal(&b));
}

#[test]
fn an_altered_entry_is_rejected() {
    let t = T::new();
    let (log, mut b) = second_bundle(&t);
    let mut e = b.entry(1, 1);
    let Event::DeviceIssued(d) = &mut e.event else {
        panic!("{e:?}")
    };
    d.device_serial += 1000;
    b.set_entry(1, 1, &e);
    t.rejected(&log.seal(&b), "root-mismatch");
}

#[test]
fn a_deleted_entry_is_rejected() {
    let t = T::new();
    let (log, b) = second_bundle(&t);
    // Simply removed: the next entry is out of place.
    let mut cut = b.clone();
    cut.chunks[1].entries.remove(1);
    t.rejected(&log.seal(&cut), "entry-index");
    // Removed and the later entries renumbered (and chunks re-cut): fewer entries than signed.
    let mut all: Vec<audit::Entry> = Vec::new();
    for (c, ch) in b.chunks.iter().enumerate() {
        for i in 0..ch.entries.len() {
            all.push(b.entry(c, i));
        }
    }
    all.remove(3);
    for (k, e) in all.iter_mut().enumerate() {
        e.index = b.header.first_index + k as u64;
    }
    let mut renum = b.clone();
    for (c, ch) in renum.chunks.iter_mut().enumerate() {
        ch.first_index = b.header.first_index + 3 * c as u64;
        ch.entries = all
            .iter()
            .skip(3 * c)
            .take(3)
            .map(|e| ByteBuf::from(e.to_cbor()))
            .collect();
    }
    renum.chunks.retain(|c| !c.entries.is_empty());
    t.rejected(&log.seal(&renum), "too-few-entries");
}

#[test]
fn a_duplicated_entry_is_rejected() {
    let t = T::new();
    let (log, mut b) = second_bundle(&t);
    let dup = b.chunks[0].entries[1].clone();
    b.chunks[0].entries.insert(1, dup);
    t.rejected(&log.seal(&b), "entry-index");
}

#[test]
fn a_chunk_spliced_from_another_sites_bundle_is_rejected() {
    let t = T::new();
    let (log, b) = second_bundle(&t);
    let g9 = t.grant("plant-9.1");
    let mut other = SiteLog::new(t.b.other.clone());
    t.apply(&mut other, 1, "plant-9.1", "grant");
    other.chunk_size = 3;
    for i in 0..8 {
        other.device(&g9, first_serial(&g9) + i);
    }
    let ob = other.export();
    let mut frames = log.frames(&b);
    frames[2] = other.frames(&ob)[2].clone();
    t.rejected(&file(&frames), "signer-changed");
    // The other site's whole bundle under this site's header is no better.
    let mut mixed = vec![frames[0].clone()];
    mixed.extend_from_slice(&other.frames(&ob)[1..]);
    t.rejected(&file(&mixed), "signer-changed");
}

#[test]
fn a_chunk_from_another_bundle_of_the_same_site_is_rejected() {
    let t = T::new();
    let (log, b) = second_bundle(&t);
    // The same entries exported again under another bundle ID.
    let mut again = b.clone();
    again.header.bundle_id = ByteBuf::from(vec![0xee; 16]);
    for c in &mut again.chunks {
        c.bundle_id = again.header.bundle_id.clone();
    }
    let mut frames = log.frames(&b);
    frames[3] = log.frames(&again)[3].clone();
    t.rejected(&file(&frames), "foreign-chunk");
    // And the genuine bundle still goes through afterwards.
    t.ok(&log.seal(&b));
}

#[test]
fn a_replayed_bundle_is_rejected() {
    let t = T::new();
    let (mut log, _) = log_with_devices(&t, 3);
    let b = log.export();
    let bytes = log.seal(&b);
    t.ok(&bytes);
    t.rejected(&bytes, "replayed");
    // Re-sealed (new envelopes, same content): still a replay.
    t.rejected(&log.seal(&b), "replayed");
    // Scripts read the stable code: in the JSON error, and in parentheses in the text.
    let p = t.write(&bytes);
    let (code, v) = stamp(&t.b.pass).hq("reconcile").dir(&t.hq).arg(s(&p)).code_json();
    assert_eq!(
        (code, &v["code"]),
        (Some(1), &serde_json::json!("replayed")),
        "{v}"
    );
    let out = stamp(&t.b.pass).hq("reconcile").dir(&t.hq).arg(s(&p)).output();
    let text = lossy(&out.stderr);
    assert!(text.lines().next().unwrap().ends_with("(replayed)"), "{text}");
    let (_, v) = stamp(&t.b.pass)
        .hq("devices")
        .dir(t.tmp.path().join("nowhere"))
        .code_json();
    assert_eq!(v["code"], "not-hq-dir", "{v}");
}

#[test]
fn a_bundle_older_than_the_last_seen_is_rejected() {
    let t = T::new();
    let g = t.grant("plant-7.1");
    let (mut log, _) = log_with_devices(&t, 2);
    let b1 = log.export();
    t.ok(&log.seal(&b1));
    let mut fork = log.clone();
    for i in 2..8 {
        log.device(&g, first_serial(&g) + i);
    }
    let b2 = log.export();
    fork.device(&g, first_serial(&g) + 2);
    let short = fork.export();
    t.ok(&log.seal(&b2));
    t.rejected(&fork.seal(&short), "older");
}

#[test]
fn a_bundle_that_skips_one_is_rejected() {
    let t = T::new();
    let g = t.grant("plant-7.1");
    let (mut log, _) = log_with_devices(&t, 2);
    let b1 = log.export();
    t.ok(&log.seal(&b1));
    log.device(&g, first_serial(&g) + 2);
    let _lost = log.export();
    log.device(&g, first_serial(&g) + 3);
    let b3 = log.export();
    t.rejected(&log.seal(&b3), "previous-mismatch");
}

#[test]
fn a_bad_consistency_proof_is_rejected() {
    let t = T::new();
    let (log, b) = second_bundle(&t);
    let mut flipped = b.clone();
    let mut p = flipped.header.consistency_proof[0].to_vec();
    p[0] ^= 1;
    flipped.header.consistency_proof[0] = ByteBuf::from(p);
    t.rejected(&log.seal(&flipped), "bad-consistency-proof");
    let mut short = b.clone();
    short.header.consistency_proof.pop();
    t.rejected(&log.seal(&short), "bad-consistency-proof");
    let mut none = b.clone();
    none.header.previous = None;
    none.header.consistency_proof.clear();
    t.rejected(&log.seal(&none), "header-inconsistent");
    t.ok(&log.seal(&b));
}

#[test]
fn equivocation_is_rejected_and_both_checkpoints_kept() {
    let t = T::new();
    let (mut log, _) = log_with_devices(&t, 3);
    let b1 = log.export();
    t.ok(&log.seal(&b1));
    // Another log of the same size, also signed by the site: a fork.
    let g = t.grant("plant-7.1");
    let mut fork = t.log_with(1, "plant-7.1");
    for i in 0..3 {
        fork.device(&g, first_serial(&g) + 10 + i);
    }
    let fb = fork.export();
    assert_eq!(fb.header.entry_count, b1.header.entry_count);
    let before = snapshot(&t.hq);
    let p = t.write(&fork.seal(&fb));
    stamp(&t.b.pass)
        .hq("reconcile")
        .dir(&t.hq)
        .arg(&p)
        .fails("EQUIVOCATION: site plant-7 signed two different roots for log size 5");
    assert_ne!(snapshot(&t.hq), before, "the evidence is recorded");
    let store = stamp_hq::HqStore::open(&t.hq.join(stamp_hq::DB_FILE)).unwrap();
    let ev = store.equivocations(&SiteId::new("plant-7").unwrap()).unwrap();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].size, 5);
    assert_eq!(ev[0].accepted_note, b1.header.checkpoint);
    assert_eq!(ev[0].conflicting_note, fb.header.checkpoint);
    assert_ne!(ev[0].accepted_root, ev[0].conflicting_root);
    drop(store);

    // A bundle that continues from the forked tree, with a valid proof from it: equivocation too.
    fork.device(&g, first_serial(&g) + 13);
    let fb2 = fork.export();
    let p2 = t.write(&fork.seal(&fb2));
    stamp(&t.b.pass)
        .hq("reconcile")
        .dir(&t.hq)
        .arg(&p2)
        .fails("EQUIVOCATION");
    let store = stamp_hq::HqStore::open(&t.hq.join(stamp_hq::DB_FILE)).unwrap();
    assert_eq!(
        store
            .equivocations(&SiteId::new("plant-7").unwrap())
            .unwrap()
            .len(),
        2
    );
    drop(store);

    // HQ's copy of the log did not move: the genuine log continues.
    log.device(&g, first_serial(&g) + 3);
    let b2 = log.export();
    t.ok(&log.seal(&b2));
}

#[test]
fn a_wrong_signer_is_rejected() {
    let t = T::new();
    let (mut log, _) = log_with_devices(&t, 2);
    let b = log.export();
    let k = &t.b.site;
    // Signed with the site's issuing CA key and certificate: not a site identity certificate.
    let issuing = std::slice::from_ref(&k.issuing_cert);
    let frames = log.frames_with(&b, k.issuing.as_ref(), issuing, &k.hq_ka_public);
    t.rejected(&file(&frames), "unknown-signer");
    // A signature that does not verify.
    let mut env = log.frames(&b);
    let sig_at = env[0].len() - 10;
    env[0][sig_at] ^= 1;
    t.rejected(&file(&env), "bad-envelope");
    // Another site's identity signing plant-7's bundle (recipient ID plant-7).
    let o = &t.b.other;
    let frames = log.frames_with(
        &b,
        o.identity.as_ref(),
        std::slice::from_ref(&o.identity_cert),
        &k.hq_ka_public,
    );
    t.rejected(&file(&frames), "not-for-hq");
}

#[test]
fn a_bundle_not_encrypted_to_hq_is_rejected() {
    let t = T::new();
    let (mut log, _) = log_with_devices(&t, 2);
    let b = log.export();
    let k = &t.b.site;
    let seal = |ct: &str, pt: &[u8]| {
        log.seal_part_with(
            ct,
            pt,
            k.identity.as_ref(),
            std::slice::from_ref(&k.identity_cert),
            &k.site_ka_public,
        )
    };
    let identity = std::slice::from_ref(&k.identity_cert);
    let frames = log.frames_with(&b, k.identity.as_ref(), identity, &k.site_ka_public);
    t.rejected(&file(&frames), "not-for-hq");
    // Only one chunk not for HQ.
    let mut frames = log.frames(&b);
    frames[1] = seal(CHUNK_CONTENT_TYPE, &b.chunks[0].to_cbor());
    t.rejected(&file(&frames), "not-for-hq");
}

#[test]
fn a_header_naming_another_site_or_misplaced_parts_are_rejected() {
    let t = T::new();
    let (mut log, _) = log_with_devices(&t, 2);
    let b = log.export();
    let mut other = b.clone();
    other.header.site_id = SiteId::new("plant-9").unwrap();
    t.rejected(&log.seal(&other), "wrong-site");
    // A chunk where the header belongs.
    let mut frames = log.frames(&b);
    frames[0] = log.seal_part(CHUNK_CONTENT_TYPE, &b.chunks[0].to_cbor());
    t.rejected(&file(&frames), "wrong-content-type");
    // Something after the last chunk.
    let mut frames = log.frames(&b);
    frames.push(frames[1].clone());
    t.rejected(&file(&frames), "trailing-frames");
    // A log whose last entry is not the bundle's own export-made entry.
    let mut log2 = t.log_with(1, "plant-7.1");
    log2.device(&t.grant("plant-7.1"), 1);
    log2.export_entry = false;
    let b2 = log2.export();
    t.rejected(&log2.seal(&b2), "no-export-entry");
    t.ok(&log.seal(&b));
}

// --- policy violations: accepted, reported, exit 1 ---------------------------------------------

#[test]
fn over_quota_is_reported() {
    let t = T::new();
    let g = t.grant("plant-7.2"); // quota 5, 2 a minute
    let mut log = t.log_with(2, "plant-7.2");
    log.step_ms = 31_000; // never 3 in a minute
    let mut idx = vec![];
    for i in 0..7 {
        idx.push(log.device(&g, first_serial(&g) + i % 5));
    }
    // Serials 0..5 then 0, 1 again: the last two are also reuses.
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "over-quota");
    assert_eq!(entries(v), idx[5..].to_vec());
    assert_eq!(v["entitlement_id"], "plant-7.2");
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("2 device(s) issued beyond plant-7.2's quota of 5"),
        "{v}"
    );
    assert_eq!(r["devices_recorded"], 5);
    assert!(
        r["violations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|v| v["kind"] != "rate-exceeded"),
        "{r:#}"
    );
}

#[test]
fn rate_exceeded_is_reported_within_and_across_bundles() {
    let t = T::new();
    let g = t.grant("plant-7.2"); // 2 a minute
    let mut log = t.log_with(2, "plant-7.2");
    log.step_ms = 10_000;
    let a = log.device(&g, first_serial(&g));
    let _b = log.device(&g, first_serial(&g) + 1);
    let b1 = log.export();
    t.ok(&log.seal(&b1));
    // 30 s after the first: a third device within one minute, in the next bundle.
    let c = log.device(&g, first_serial(&g) + 2);
    let b2 = log.export();
    let r = t.violations(&log.seal(&b2));
    let v = violation(&r, "rate-exceeded");
    assert_eq!(entries(v), vec![c]);
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("per-minute limit of 2 exceeded"), "{detail}");
    assert!(detail.contains("no more than 2 in any minute"), "{detail}");
    assert_eq!(r["devices_recorded"], 0);
    let _ = a;
    // Two minutes later the rate is fine again.
    log.wait_ms(120_000);
    log.device(&g, first_serial(&g) + 3);
    let b3 = log.export();
    t.ok(&log.seal(&b3));
}

#[test]
fn outside_the_window_is_reported() {
    let t = T::new();
    let g = t.grant("plant-7.3"); // 2099
    let mut log = t.log_with(3, "plant-7.3");
    let i = log.device(&g, first_serial(&g));
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "outside-window");
    assert_eq!(entries(v), vec![i]);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("2099-01-01T00:00:00Z to 2100-01-01T00:00:00Z"),
        "{v}"
    );
    assert_eq!(r["devices_recorded"], 0);
    assert_eq!(r["violations"].as_array().unwrap().len(), 1, "{r:#}");
}

#[test]
fn issuing_while_suspended_is_reported_from_the_amendment_on() {
    let t = T::new();
    let g = t.grant("plant-7.4");
    let mut log = t.log_with(4, "plant-7.4");
    log.device(&g, first_serial(&g));
    t.apply(&mut log, 5, "plant-7.4", "amend");
    let i = log.device(&g, first_serial(&g) + 1);
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    assert_eq!(r["entitlements_applied"], 5, "packages 1 to 5, in sequence");
    let v = violation(&r, "issued-while-suspended");
    assert_eq!(entries(v), vec![i]);
    assert_eq!(r["devices_recorded"], 1);
}

#[test]
fn serial_outside_range_is_reported() {
    let t = T::new();
    let g = t.grant("plant-7.1");
    let mut log = t.log_with(1, "plant-7.1");
    let last = g.serial_ranges[0].last;
    log.device(&g, last);
    let i = log.device(&g, last + 1);
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "serial-outside-range");
    assert_eq!(entries(v), vec![i]);
    assert_eq!(r["devices_recorded"], 1);
}

#[test]
fn a_reused_serial_is_reported_within_and_across_bundles() {
    let t = T::new();
    let g = t.grant("plant-7.1");
    let mut log = t.log_with(1, "plant-7.1");
    let first = log.device(&g, first_serial(&g));
    let again = log.device(&g, first_serial(&g));
    let b1 = log.export();
    let r = t.violations(&log.seal(&b1));
    let v = violation(&r, "serial-reused");
    assert_eq!(entries(v), vec![first, again]);
    assert_eq!(r["devices_recorded"], 1);
    let later = log.device(&g, first_serial(&g));
    let b2 = log.export();
    let r = t.violations(&log.seal(&b2));
    let v = violation(&r, "serial-reused");
    assert_eq!(entries(v), vec![first, later]);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("first at entry {first}")),
        "{v}"
    );
}

#[test]
fn a_key_certified_twice_is_reported() {
    let t = T::new();
    let g = t.grant("plant-7.1");
    let mut log = t.log_with(1, "plant-7.1");
    let key = device_spki();
    let first = log.device_with_key(&g, first_serial(&g), &key);
    let again = log.device_with_key(&g, first_serial(&g) + 1, &key);
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "key-reused");
    assert_eq!(entries(v), vec![first, again]);
    assert_eq!(r["violations"].as_array().unwrap().len(), 1, "{r:#}");
}

/// SubjectPublicKeyInfo of a certificate.
fn cert_spki(der: &[u8]) -> Vec<u8> {
    let (_, c) = x509_parser::parse_x509_certificate(der).unwrap();
    c.public_key().raw.to_vec()
}

/// A key-handed-out entry for one of plant-7.6's real hand-outs, naming HQ key `index`.
fn hand_out(t: &T, log: &mut SiteLog, which: usize, index: u64) -> u64 {
    let (_, serial, real) = t.b.hq_keys[which].clone();
    let spki = cert_spki(&real);
    // Certified again at this log's time: a certificate's notBefore is its entry's time.
    let cert = log.certificate(&t.grant("plant-7.6"), serial, &spki, None);
    log.push(Event::KeyHandedOut(SiteLog::record(
        "plant-7.6",
        serial,
        cert,
        &spki,
        Some(index),
    )))
}

#[test]
fn an_hq_generated_key_handed_out_twice_is_reported() {
    let t = T::new();
    let mut log = t.log_with(6, "plant-7.6");
    let k0 = t.b.hq_keys[0].0;
    let first = hand_out(&t, &mut log, 0, k0);
    let second = hand_out(&t, &mut log, 1, t.b.hq_keys[1].0);
    let again = hand_out(&t, &mut log, 0, k0);
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "hq-key-reused");
    assert_eq!(entries(v), vec![first, again]);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("HQ-generated key {k0} of plant-7.6")),
        "{v}"
    );
    assert_eq!(
        r["devices_recorded"], 2,
        "the first hand-out of each key is genuine ({second}): {r:#}"
    );
}

#[test]
fn hand_outs_must_name_keys_hq_generated_for_the_grant() {
    let t = T::new();
    let g = t.grant("plant-7.6");
    let mut log = t.log_with(6, "plant-7.6");
    // Key 0's certificate claimed as HQ key 1; an index HQ never made.
    let swapped = hand_out(&t, &mut log, 0, t.b.hq_keys[1].0);
    let beyond = hand_out(&t, &mut log, 1, 99);
    // A device's own key under a grant whose devices get HQ-generated keys.
    let own = log.device(&g, first_serial(&g));
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let unknown: Vec<u64> = r["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "unknown-hq-key")
        .flat_map(entries)
        .collect();
    assert_eq!(unknown, vec![swapped, beyond], "{r:#}");
    assert_eq!(entries(violation(&r, "own-key-under-hq-keys")), vec![own]);
    assert_eq!(r["devices_recorded"], 0);
}

#[test]
fn a_certificate_from_another_ca_is_reported() {
    let t = T::new();
    let g = t.grant("plant-7.1");
    let mut log = t.log_with(1, "plant-7.1");
    let spki = device_spki();
    let o = &t.b.other;
    let cert = log.certificate(
        &g,
        first_serial(&g),
        &spki,
        Some((o.issuing.as_ref(), &o.issuing_cert)),
    );
    let i = log.push(Event::DeviceIssued(SiteLog::record(
        "plant-7.1",
        first_serial(&g),
        cert,
        &spki,
        None,
    )));
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "wrong-issuer");
    assert_eq!(entries(v), vec![i]);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("not issued by site plant-7's issuing CA"),
        "{v}"
    );
    assert_eq!(r["devices_recorded"], 0);
}

#[test]
fn a_certificate_that_does_not_match_the_profile_is_reported() {
    let t = T::new();
    let g = t.grant("plant-7.1");
    let mut log = t.log_with(1, "plant-7.1");
    let spki = device_spki();
    let mut wrong = g.clone();
    wrong.product.product_id = "counterfeit".into();
    let cert = log.certificate(&wrong, first_serial(&g), &spki, None);
    let i = log.push(Event::DeviceIssued(SiteLog::record(
        "plant-7.1",
        first_serial(&g),
        cert,
        &spki,
        None,
    )));
    // An entry whose hashes disagree with its certificate.
    let spki2 = device_spki();
    let cert2 = log.certificate(&g, first_serial(&g) + 1, &spki2, None);
    let mut rec = SiteLog::record("plant-7.1", first_serial(&g) + 1, cert2, &spki2, None);
    rec.public_key_sha256 = ByteBuf::from(vec![9; 32]);
    let j = log.push(Event::DeviceIssued(rec));
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "profile-mismatch");
    assert_eq!(entries(v), vec![i]);
    assert!(v["detail"].as_str().unwrap().contains("product ID"), "{v}");
    assert_eq!(entries(violation(&r, "certificate-mismatch")), vec![j]);
    assert_eq!(r["devices_recorded"], 0);
}

#[test]
fn unknown_entitlements_and_packages_are_reported() {
    let t = T::new();
    let g = t.grant("plant-7.1");
    let mut log = t.log_with(1, "plant-7.1");
    // A device under a grant the log never applied (HQ made it, for this site).
    let i = log.device(&t.grant("plant-7.3"), first_serial(&t.grant("plant-7.3")));
    // A package HQ never made.
    let j = log.push(Event::EntitlementApplied {
        entitlement_id: "plant-7.1".into(),
        sequence: 42,
        action: "amend".into(),
        package_sha256: ByteBuf::from(vec![0; 32]),
    });
    // Package 1 again: out of order.
    let pkg = t.b.packages[&("plant-7".to_owned(), 1)].clone();
    let k = log.applied(&pkg, 1, "plant-7.1", "grant");
    log.device(&g, first_serial(&g));
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "unknown-entitlement");
    assert_eq!(entries(v), vec![i]);
    assert!(
        v["detail"]
            .as_str()
            .unwrap()
            .contains("the site's log never applied"),
        "{v}"
    );
    assert_eq!(entries(violation(&r, "unknown-package")), vec![j]);
    assert_eq!(entries(violation(&r, "package-out-of-order")), vec![k]);
    assert_eq!(r["devices_recorded"], 1);
}

/// The attacker is the site's owner, rewriting its log consistently (entries, Merkle tree,
/// checkpoint, all signed with the site's keys): it leaves out package 5 (the suspension of
/// plant-7.4) and applies package 6 after 4, so that HQ would track plant-7.4 as still active.
/// HQ reports the skip, naming package 5, at the entry that applied 6; skipping two is named as a
/// range. The devices of grants the skip does not concern are still recorded.
#[test]
fn a_log_that_skips_a_package_is_reported() {
    let t = T::new();
    let g4 = t.grant("plant-7.4");
    let mut log = t.log_with(4, "plant-7.4");
    let k = log.applied(&t.b.packages[&("plant-7".to_owned(), 6)], 6, "plant-7.6", "grant");
    // Under the grant HQ suspended: HQ's view lacks the suspension, the skip is what tells.
    log.device(&g4, first_serial(&g4));
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "package-skipped");
    assert_eq!(entries(v), vec![k]);
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("package 6 applied while package 5 HQ sealed for this site never was"),
        "{v}"
    );
    assert_eq!(r["violations"].as_array().unwrap().len(), 1, "{r:#}");

    // Two skipped: 1, then 4.
    let t = T::new();
    let mut log = SiteLog::new(t.b.site.clone());
    t.apply(&mut log, 1, "plant-7.1", "grant");
    let k = log.applied(&t.b.packages[&("plant-7".to_owned(), 4)], 4, "plant-7.4", "grant");
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "package-skipped");
    assert_eq!(entries(v), vec![k]);
    assert!(v["detail"].as_str().unwrap().contains("packages 2 to 3"), "{v}");

    // The honest log, every package in sequence, is clean.
    let t = T::new();
    let g1 = t.grant("plant-7.1");
    let mut log = t.log_with(6, "plant-7.6");
    log.device(&g1, first_serial(&g1));
    let b = log.export();
    let r = t.ok(&log.seal(&b));
    assert_eq!(r["entitlements_applied"], 6);
}

/// A site that keeps HQ's packages away (never imports them) and exports a log that is correct
/// in itself: HQ reports every package it sealed that the log has not applied past the grace
/// period, with no entry behind it; within the grace (the default, 7 days), the same log is clean.
#[test]
fn packages_not_applied_past_the_grace_are_reported() {
    let (mut log, _) = log_with_devices(&T::new(), 2);
    let b = log.export();
    let bytes = log.seal(&b);
    // Within the default grace: clean.
    T::new().ok(&bytes);
    // The base's packages were sealed well over a second ago: with no grace, 2 to 6 are late.
    let t = T::new();
    let r = t.violations_with_grace(&bytes, "0s");
    let late: Vec<&serde_json::Value> = r["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["kind"] == "package-not-applied")
        .collect();
    assert_eq!(late.len(), 5, "{r:#}");
    assert_eq!(r["violations"].as_array().unwrap().len(), 5, "{r:#}");
    for (v, (seq, (id, action))) in late.iter().zip(PLANT_7.iter().enumerate().skip(1)) {
        assert_eq!(v["entitlement_id"], *id);
        assert_eq!(v["entry_count"], 0);
        assert!(entries(v).is_empty());
        let d = v["detail"].as_str().unwrap();
        assert!(
            d.starts_with(&format!(
                "package {} ({action} of {id}), sealed by HQ at ",
                seq + 1
            )),
            "{d}"
        );
        assert!(d.contains("grace 0 seconds; the log's last package is 1"), "{d}");
        assert!(d.contains("stamp hq export-package"), "{d}");
    }
    // A bad grace is a usage error.
    let p = t.write(&bytes);
    let out = stamp(&t.b.pass)
        .hq("reconcile")
        .dir(&t.hq)
        .args(&["--package-grace", "7 days", s(&p)])
        .output();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        lossy(&out.stderr).contains("is not a duration"),
        "{}",
        lossy(&out.stderr)
    );
}

#[test]
fn violations_do_not_stop_the_log_and_the_report_is_bounded() {
    let t = T::new();
    let g = t.grant("plant-7.1");
    let mut log = t.log_with(1, "plant-7.1");
    log.chunk_size = 50;
    let spki = device_spki();
    let cert = log.certificate(&g, first_serial(&g), &spki, None);
    let rec = SiteLog::record("plant-7.1", first_serial(&g), cert, &spki, None);
    // The same certificate 150 times: one serial-reused and one key-reused violation each,
    // grouped, entries listed up to the cap.
    for _ in 0..150 {
        log.push(Event::DeviceIssued(rec.clone()));
    }
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "serial-reused");
    assert_eq!(v["entry_count"], 149);
    assert_eq!(v["entries"].as_array().unwrap().len(), 100);
    assert_eq!(r["devices_recorded"], 1);
    // Text output lists them.
    let mut log2 = log.clone();
    log2.push(Event::DeviceIssued(rec));
    let b2 = log2.export();
    let out = t.run(&log2.seal(&b2), false);
    assert_eq!(out.status.code(), Some(1));
    let text = lossy(&out.stdout);
    assert!(text.contains("VIOLATIONS:"), "{text}");
    assert!(text.contains("serial-reused [plant-7.1]"), "{text}");
}

// --- end to end with the real site -------------------------------------------------------------

/// HQ entitles, the site issues under quota and refuses beyond it, hands out HQ-generated keys,
/// exports; HQ reconciles to a clean report; again after a top-up, from where it left off.
#[test]
fn the_real_sites_exports_reconcile_clean() {
    let c = ceremony(true);
    let hq = s(&c.hq);
    let site = s(&c.site);
    let tmp = c.tmp.path();
    let entitle = |args: &[&str], name: &str| {
        let pkg = tmp.join(name);
        stamp(&c.pass)
            .arg("hq")
            .args(args)
            .dir(hq)
            .args(&["-o", s(&pkg)])
            .json();
        stamp(&c.pass).site("import").dir(site).arg(&pkg).json();
    };
    entitle(
        &[
            "entitle",
            "--site",
            "plant-7",
            "--product",
            "thermo-2",
            "--quota",
            "3",
            "--rate",
            "100/minute",
        ],
        "a.cose",
    );
    entitle(
        &[
            "entitle",
            "--site",
            "plant-7",
            "--product",
            "lock-1",
            "--quota",
            "2",
            "--hq-keys",
            "ed25519",
            "--key-types",
            "ed25519",
            "--secret",
            "flash-key:32",
        ],
        "b.cose",
    );
    let csrs = tmp.join("csrs");
    write_csr_dir(&csrs, 4, false);
    let issue = |dir: &Path, out: &str| {
        stamp(&c.pass)
            .arg("--json")
            .site("issue")
            .dir(site)
            .args(&["--entitlement", "plant-7.1", "--csr", s(dir)])
            .args(&["-o", s(&tmp.join(out))])
            .output()
    };
    let o = issue(&csrs, "out1");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["issued"], 3, "{v}");
    let o = stamp(&c.pass)
        .arg("--json")
        .site("hand-out")
        .dir(site)
        .args(&["--entitlement", "plant-7.2", "--count", "2"])
        .args(&["-o", s(&tmp.join("keys"))])
        .output();
    assert!(o.status.success(), "{}", lossy(&o.stdout));

    let b1 = tmp.join("b1.bundle");
    stamp(&c.pass)
        .site("export-audit")
        .dir(site)
        .args(&["-o", s(&b1)])
        .json();
    let r = stamp(&c.pass).hq("reconcile").dir(hq).arg(&b1).json();
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["devices_issued"], 5);
    assert_eq!(r["devices_recorded"], 5);
    assert_eq!(r["entitlements_applied"], 2);
    assert_eq!(r["refusals_by_reason"]["quota-exhausted"], 1, "{r:#}");

    // Top up, issue two more, export again: the second bundle extends the first.
    entitle(
        &["amend", "--entitlement", "plant-7.1", "--add-quota", "2"],
        "c.cose",
    );
    let more = tmp.join("more");
    write_csr_dir(&more, 2, false);
    let o = issue(&more, "out2");
    assert!(o.status.success(), "{}", lossy(&o.stdout));
    let b2 = tmp.join("b2.bundle");
    stamp(&c.pass)
        .site("export-audit")
        .dir(site)
        .args(&["-o", s(&b2)])
        .json();
    let r2 = stamp(&c.pass).hq("reconcile").dir(hq).arg(&b2).json();
    assert_eq!(r2["ok"], true, "{r2:#}");
    assert_eq!(r2["previous"]["size"], r["checkpoint"]["size"]);
    assert_eq!(r2["devices_recorded"], 2);
    assert_eq!(r2["entitlements_applied"], 1);
    let d = stamp(&c.pass).hq("devices").dir(hq).json();
    assert_eq!(d["count"], 7);
    // Replaying the first is refused.
    stamp(&c.pass)
        .hq("reconcile")
        .dir(hq)
        .arg(&b1)
        .fails_with("replayed");
}

// --- renewals ----------------------------------------------------------------------------------

/// A device key that can sign (a renewal's proof of possession needs one): its SPKI and the key.
fn signing_device_key() -> (Vec<u8>, rcgen::KeyPair) {
    let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (rcgen::PublicKeyData::subject_public_key_info(&k), k)
}

/// The device's proof of possession for a renewal from `current` (its certificate) to `new_spki`.
fn proof(key: &rcgen::KeyPair, current: &[u8], new_spki: &[u8]) -> Vec<u8> {
    use rcgen::SigningKey as _;
    let msg = stamp_core::device::renewal_message(
        &stamp_core::fingerprint::sha256(current),
        &stamp_core::fingerprint::sha256(new_spki),
    );
    key.sign(&msg).unwrap()
}

/// A renewal entry of `serial` to `spki` with `proof`.
fn renewal(log: &mut SiteLog, g: &Grant, serial: u64, spki: &[u8], proof: Option<Vec<u8>>) -> (u64, Vec<u8>) {
    let cert = log.certificate(g, serial, spki, None);
    let mut r = SiteLog::record(&g.entitlement_id, serial, cert.clone(), spki, None);
    r.possession_proof = proof.map(ByteBuf::from);
    (log.push(Event::DeviceRenewed(r)), cert)
}

#[test]
fn renewals_need_the_devices_key_obey_the_limit_and_supersede() {
    let t = T::new();
    let g = t.grant("plant-7.1");
    let mut log = t.log_with(1, "plant-7.1");
    let serial = first_serial(&g);
    let (k1_spki, k1) = signing_device_key();
    let first = log.certificate(&g, serial, &k1_spki, None);
    log.push(Event::DeviceIssued(SiteLog::record(
        "plant-7.1",
        serial,
        first.clone(),
        &k1_spki,
        None,
    )));
    // The device itself moves to a new key: accepted; it supersedes the first certificate.
    let (k2_spki, _k2) = signing_device_key();
    let (_, second) = renewal(&mut log, &g, serial, &k2_spki, Some(proof(&k1, &first, &k2_spki)));
    // The same key again: no proof needed (the request's own signature is the proof).
    let (_, again) = renewal(&mut log, &g, serial, &k2_spki, None);
    // A station (or the site) renews the device to a key of its own, without the device: refused,
    // and it is the third renewal today (the default limit is 2 a day).
    let (stolen, _) = renewal(&mut log, &g, serial, &device_spki(), None);
    // A proof by another key than the device's: refused too.
    let (k9_spki, k9) = signing_device_key();
    let (forged, _) = renewal(&mut log, &g, serial, &k9_spki, Some(proof(&k9, &again, &k9_spki)));
    // A renewal of a serial HQ never registered.
    let (unknown, _) = renewal(&mut log, &g, serial + 1, &device_spki(), None);
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    assert_eq!(
        entries(violation(&r, "possession-not-proven")),
        vec![stolen, forged]
    );
    assert_eq!(entries(violation(&r, "renewal-limit")), vec![stolen, forged]);
    assert_eq!(entries(violation(&r, "renewal-of-unknown-device")), vec![unknown]);
    assert_eq!(r["devices_recorded"], 3, "{r:#}");
    // HQ's registry: the serial's live certificate is the device's renewal; the first one is
    // superseded, and none of the refused ones is there.
    let d = stamp(&t.b.pass)
        .hq("devices")
        .dir(&t.hq)
        .args(&["--site", "plant-7"])
        .json();
    let listed: Vec<(u64, String, bool)> = d["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["device_serial"].as_u64().unwrap(),
                x["certificate_sha256"].as_str().unwrap().to_owned(),
                x["superseded"].as_bool().unwrap(),
            )
        })
        .collect();
    let hash = |c: &[u8]| hex::encode(stamp_core::fingerprint::sha256(c));
    assert_eq!(
        listed,
        vec![
            (serial, hash(&first), true),
            (serial, hash(&second), true),
            (serial, hash(&again), false)
        ],
        "{d:#}"
    );
}

#[test]
fn a_site_clock_behind_hq_or_ahead_and_backdated_certificates_are_reported() {
    let t = T::new();
    let g = t.grant("plant-7.1");
    // The whole log rewritten with the clock a day slow: the package is applied before HQ made it.
    let mut log = SiteLog::new(t.b.site.clone());
    log.time_ms -= 86_400_000;
    t.apply(&mut log, 1, "plant-7.1", "grant");
    log.device(&g, first_serial(&g));
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    assert_eq!(entries(violation(&r, "time-before-package")), vec![0]);

    // A clock an hour ahead of HQ's.
    let t = T::new();
    let mut log = SiteLog::new(t.b.site.clone());
    log.time_ms += 3_600_000;
    t.apply(&mut log, 1, "plant-7.1", "grant");
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    assert!(!entries(violation(&r, "time-in-future")).is_empty(), "{r:#}");

    // A certificate dated a minute before its entry (a counterfeit minted earlier, logged later).
    let t = T::new();
    let mut log = t.log_with(1, "plant-7.1");
    let spki = device_spki();
    log.wait_ms(-60_000);
    let cert = log.certificate(&g, first_serial(&g), &spki, None);
    log.wait_ms(60_000);
    let i = log.push(Event::DeviceIssued(SiteLog::record(
        "plant-7.1",
        first_serial(&g),
        cert,
        &spki,
        None,
    )));
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    assert_eq!(entries(violation(&r, "not-before-mismatch")), vec![i]);
    assert_eq!(r["devices_recorded"], 0);
}

#[test]
fn one_site_cannot_burn_another_sites_serials_or_keys() {
    let t = T::new();
    let g7 = t.grant("plant-7.1");
    let g9 = t.grant("plant-9.1");
    let victim_serial = first_serial(&g7);
    let victim_key = device_spki();
    // Site plant-9, compromised, logs first: a certificate with plant-7's serial (outside its own
    // range) and plant-7's device key; then one of its own serials with that key again.
    let mut bad = SiteLog::new(t.b.other.clone());
    t.apply(&mut bad, 1, "plant-9.1", "grant");
    let taken = bad.device_with_key(&g9, victim_serial, &victim_key);
    let own = bad.device_with_key(&g9, first_serial(&g9), &victim_key);
    let b = bad.export();
    let r = t.violations(&bad.seal(&b));
    assert_eq!(entries(violation(&r, "serial-outside-range")), vec![taken]);
    // Its in-range device is otherwise clean: it is genuine (plant-9 counts it), and takes the key.
    assert_eq!(r["devices_recorded"], 1, "{r:#}");
    assert!(!entries(&r["violations"][0]).contains(&own), "{r:#}");
    // Then the honest site: its device keeps its serial, and its key stays its own device's.
    let mut log = t.log_with(1, "plant-7.1");
    let honest = log.device_with_key(&g7, victim_serial, &victim_key);
    let b = log.export();
    let r = t.violations(&log.seal(&b));
    let v = violation(&r, "key-reused");
    assert_eq!(entries(v), vec![honest]);
    assert!(v["detail"].as_str().unwrap().contains("by site plant-9"), "{v}");
    assert_eq!(
        r["violations"].as_array().unwrap().len(),
        1,
        "only reported: {r:#}"
    );
    assert_eq!(r["devices_recorded"], 1, "the honest device stays genuine: {r:#}");
}
