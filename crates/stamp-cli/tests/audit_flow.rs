//! Issue #4 end to end through the real binary with real bundles: HQ entitles, the site issues
//! under quota and refuses beyond it, exports; HQ reconciles to a clean report; a later export
//! extends the first; tampered or replayed real bundles are rejected and HQ is left unchanged.

use std::path::Path;

use crate::common::*;

fn issue(c: &Ceremony, name: &str, n: usize) -> serde_json::Value {
    let dir = write_csr_dir(&c.tmp.path().join(name), n, false);
    let out = c.tmp.path().join(format!("{name}-out"));
    let o = stamp(&c.pass)
        .arg("--json")
        .site("issue")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.1", "--csr", s(&dir)])
        .args(&["-o", s(&out)])
        .output();
    serde_json::from_slice(&o.stdout).unwrap()
}

fn reconcile(c: &Ceremony, bundle: &Path) -> (Option<i32>, serde_json::Value) {
    let o = stamp(&c.pass)
        .arg("--json")
        .hq("reconcile")
        .dir(&c.hq)
        .arg(bundle)
        .output();
    (
        o.status.code(),
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null),
    )
}

#[test]
fn issue_export_reconcile_extend_and_refuse_tampering() {
    let c = ceremony(true);
    let pkg = c.tmp.path().join("e.cose");
    stamp(&c.pass)
        .hq("entitle")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--product", "thermo-2"])
        .args(&["--quota", "12", "-o", s(&pkg)])
        .json();
    stamp(&c.pass).site("import").dir(&c.site).arg(&pkg).json();
    let v = issue(&c, "a", 15);
    assert_eq!(v["issued"], 12);
    assert_eq!(v["refused"]["quota-exhausted"], 3);

    let b1 = c.tmp.path().join("b1.bundle");
    let e1 = stamp(&c.pass)
        .site("export-audit")
        .dir(&c.site)
        .args(&["-o", s(&b1)])
        .json();
    assert_eq!(e1["previous_size"], 0);
    let (code, r1) = reconcile(&c, &b1);
    assert_eq!(code, Some(0), "{r1}");
    assert_eq!(r1["ok"], true);
    assert_eq!(r1["devices_recorded"], 12, "{r1}");
    assert_eq!(r1["violations"].as_array().unwrap().len(), 0);

    // A top-up, more devices, a second export that extends the first.
    let pkg2 = c.tmp.path().join("e2.cose");
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1", "--add-quota", "4"])
        .args(&["-o", s(&pkg2)])
        .json();
    stamp(&c.pass).site("import").dir(&c.site).arg(&pkg2).json();
    let v = issue(&c, "b", 4);
    assert_eq!(v["issued"], 4);
    let b2 = c.tmp.path().join("b2.bundle");
    let e2 = stamp(&c.pass)
        .site("export-audit")
        .dir(&c.site)
        .args(&["-o", s(&b2)])
        .json();
    assert_eq!(e2["previous_size"], e1["size"]);

    // Tampered copies of the real bundle are rejected, HQ unchanged: a flipped byte at several
    // places, a truncation, trailing garbage.
    let bytes = std::fs::read(&b2).unwrap();
    let n = bytes.len();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for i in [3, n / 5, n / 2, n - 20] {
        let mut m = bytes.clone();
        m[i] ^= 0x10;
        cases.push((format!("flip@{i}"), m));
    }
    cases.push(("truncated".into(), bytes[..n - 100].to_vec()));
    let mut t = bytes.clone();
    t.extend_from_slice(&[0x41, 0x00]);
    cases.push(("trailing".into(), t));
    for (name, data) in cases {
        let before = snapshot(&c.hq);
        let p = c.tmp.path().join("tampered.bundle");
        std::fs::write(&p, data).unwrap();
        let (code, r) = reconcile(&c, &p);
        assert_eq!(code, Some(1), "{name}: {r}");
        assert_eq!(snapshot(&c.hq), before, "{name}: HQ state changed");
    }
    // Out of order: the second bundle before... the first was already accepted, so the second now
    // extends it; a replay of the first is refused.
    let (code, r2) = reconcile(&c, &b2);
    assert_eq!(code, Some(0), "{r2}");
    assert_eq!(r2["devices_recorded"], 4, "{r2}");
    let before = snapshot(&c.hq);
    let (code, _) = reconcile(&c, &b1);
    assert_eq!(code, Some(1), "a replayed bundle is refused");
    assert_eq!(snapshot(&c.hq), before);
    // HQ's registry has every genuine device.
    let devices = stamp(&c.pass).hq("devices").dir(&c.hq).json();
    let text = devices.to_string();
    assert_eq!(
        devices["devices"]
            .as_array()
            .map(Vec::len)
            .unwrap_or_else(|| text.matches("device_serial").count()),
        16,
        "{text}"
    );
}

/// `stamp` under a shifted clock (libfaketime, installed by scripts/test), `offset` like "+2h".
fn stamp_at(c: &Ceremony, offset: &str, args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new("faketime")
        .args(["-f", offset])
        .arg(assert_cmd::cargo::cargo_bin("stamp"))
        .arg("--passphrase-file")
        .arg(&c.pass)
        .args(args)
        .env_remove("STAMP_PASSPHRASE_FILE")
        .output()
        .unwrap_or_else(|e| panic!("faketime is required ({e}); run scripts/test, which installs it"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn a_site_clock_ahead_of_hq_is_reported_and_one_set_back_cannot_move_the_log_back() {
    // Ahead: a site whose clock runs two hours fast dates its entries after the bundle reaches HQ.
    let c = ceremony(true);
    c.entitle("e", &["--quota", "5"]);
    let dir = write_csr_dir(&c.tmp.path().join("ahead"), 3, false);
    let out = c.tmp.path().join("ahead-out");
    stamp_at(
        &c,
        "+2h",
        &[
            "--json",
            "site",
            "issue",
            "--dir",
            s(&c.site),
            "--entitlement",
            "plant-7.1",
            "--csr",
            s(&dir),
            "-o",
            s(&out),
        ],
    );
    let bundle = c.tmp.path().join("ahead.bundle");
    stamp(&c.pass)
        .site("export-audit")
        .dir(&c.site)
        .args(&["-o", s(&bundle)])
        .json();
    let (code, r) = reconcile(&c, &bundle);
    assert_eq!(code, Some(1), "{r:#}");
    let v = r["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["kind"] == "time-in-future")
        .unwrap_or_else(|| panic!("{r:#}"));
    assert!(v["entry_count"].as_u64().unwrap() >= 3, "{v}");

    // Set back two days after the package was applied: the engine never dates an entry before the
    // last one, so the log cannot go back into an earlier window or rate interval, and every
    // certificate's notBefore is its entry's time. HQ reconciles it clean.
    let c = ceremony(true);
    c.entitle("e", &["--quota", "5"]);
    let dir = write_csr_dir(&c.tmp.path().join("behind"), 3, false);
    let out = c.tmp.path().join("behind-out");
    let o = stamp_at(
        &c,
        "-2d",
        &[
            "--json",
            "site",
            "issue",
            "--dir",
            s(&c.site),
            "--entitlement",
            "plant-7.1",
            "--csr",
            s(&dir),
            "-o",
            s(&out),
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["issued"], 3, "{v:#}");
    let bundle = c.tmp.path().join("behind.bundle");
    stamp(&c.pass)
        .site("export-audit")
        .dir(&c.site)
        .args(&["-o", s(&bundle)])
        .json();
    let (code, r) = reconcile(&c, &bundle);
    assert_eq!((code, &r["ok"]), (Some(0), &serde_json::json!(true)), "{r:#}");
}
