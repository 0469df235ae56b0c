//! Device issuance at the site through the real binary: policy, CSR handling, concurrency and a
//! crash in the middle of issuing.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::common::*;

fn p256() -> Vec<u8> {
    csr_der_with(&rcgen::PKCS_ECDSA_P256_SHA256, |_| {})
}

/// Ceremony, then an entitlement with `extra` options imported at the site.
fn entitled(extra: &[&str]) -> Ceremony {
    let c = ceremony(true);
    c.entitle("e", extra);
    c
}

/// Runs `site issue` on `csrs`; returns the JSON report (success or not).
fn issue(c: &Ceremony, name: &str, csrs: &[Vec<u8>], extra: &[&str]) -> serde_json::Value {
    let dir = c.tmp.path().join(format!("{name}-csrs"));
    write_csrs(&dir, csrs);
    let out = c.tmp.path().join(format!("{name}-out"));
    let o = stamp(&c.pass)
        .arg("--json")
        .site("issue")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.1", "--csr", s(&dir), "-o", s(&out)])
        .args(extra)
        .output();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("no JSON: {}", String::from_utf8_lossy(&o.stderr)));
    assert_eq!(
        o.status.success(),
        v["issued"] == v["requested"],
        "exit code says whether all were issued"
    );
    v
}

fn log_reasons(site: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open(site.join("stamp-site.db")).unwrap();
    let mut stmt = db.prepare("SELECT entry FROM log_entries ORDER BY idx").unwrap();
    let rows: Vec<Vec<u8>> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    rows.iter()
        .filter_map(|b| match stamp_core::audit::Entry::from_cbor(b).unwrap().event {
            stamp_core::audit::Event::RequestRefused { reason, .. } => Some(reason.code().to_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn issues_within_quota_and_openssl_verifies_every_device() {
    let c = entitled(&["--quota", "6", "--key-types", "p256,ed25519,rsa2048"]);
    let csrs = vec![
        p256(),
        csr_der_with(&rcgen::PKCS_ED25519, |_| {}),
        csr_der_with(&rcgen::PKCS_RSA_SHA256, |_| {}),
        // Asks to be a CA with keyCertSign, extra SANs and an unknown critical extension: ignored.
        csr_der_with(&rcgen::PKCS_ECDSA_P256_SHA256, |p| {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
            p.subject_alt_names = vec![rcgen::SanType::DnsName("evil.example".try_into().unwrap())];
            let mut ext = rcgen::CustomExtension::from_oid_content(&[1, 2, 3, 4, 5], vec![0x05, 0x00]);
            ext.set_criticality(true);
            p.custom_extensions = vec![ext];
        }),
        p256(),
        p256(),
        p256(),
        p256(),
    ];
    let v = issue(&c, "a", &csrs, &[]);
    assert_eq!(v["issued"], 6);
    assert_eq!(v["refused"]["quota-exhausted"], 2);
    let root = c.root_cert();
    let ca = c.site.join("certs/site-issuing-ca.pem");
    let mut serials = HashSet::new();
    for d in v["devices"].as_array().unwrap() {
        let cert = PathBuf::from(d["certificate"].as_str().unwrap());
        let out = openssl(&[
            "verify",
            "-x509_strict",
            "-purpose",
            "sslclient",
            "-CAfile",
            s(&root),
            "-untrusted",
            s(&ca),
            s(&cert),
        ]);
        assert!(
            out.status.success(),
            "{}: {}",
            cert.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&openssl(&["x509", "-in", s(&cert), "-noout", "-text"]).stdout)
            .into_owned();
        assert!(text.contains("CA:FALSE"), "{text}");
        assert!(
            !text.contains("evil.example")
                && !text.contains("Certificate Sign")
                && !text.contains("1.2.3.4.5")
        );
        assert!(text.contains("TLS Web Client Authentication"));
        let serial = d["device_serial"].as_u64().unwrap();
        assert!((1..=6).contains(&serial), "serial {serial} inside the range");
        assert!(serials.insert(serial), "serial {serial} unique");
        assert!(
            text.contains(&format!("serialNumber = {serial}"))
                || text.contains(&format!("serialNumber={serial}")),
            "{text}"
        );
    }
    // The stamp names the device data.
    let device_stamp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v["devices"][0]["stamp"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(device_stamp["entitlement_id"], "plant-7.1");
    // Status counts, refusals are logged, the log verifies.
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    assert_eq!(st["entitlements"][0]["issued"], 6);
    assert_eq!(st["entitlements"][0]["remaining"], 0);
    assert_eq!(log_reasons(&c.site), vec!["quota-exhausted", "quota-exhausted"]);
    let log = stamp(&c.pass).site("verify-log").dir(&c.site).json();
    assert_eq!(log["size"], 1 + 6 + 2, "entitlement applied, 6 issued, 2 refused");
}

#[test]
fn bad_requests_are_refused_with_their_reason_and_logged() {
    let c = entitled(&["--quota", "100", "--key-types", "p256"]);
    let good = p256();
    let mut bad_sig = p256();
    let n = bad_sig.len();
    bad_sig[n - 3] ^= 0x01;
    let rsa1024 = {
        let dir = c.tmp.path();
        let k = dir.join("rsa1024.key");
        let r = dir.join("rsa1024.der");
        let o = openssl(&[
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            s(&k),
            "-subj",
            "/CN=x",
            "-outform",
            "DER",
            "-out",
            s(&r),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(&r).unwrap()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("sig", bad_sig, "bad-csr-signature"),
        ("garbage", b"not a csr".to_vec(), "malformed-csr"),
        (
            "p384",
            csr_der_with(&rcgen::PKCS_ECDSA_P384_SHA384, |_| {}),
            "key-type-not-allowed",
        ),
        ("weak", rsa1024, "weak-key"),
    ];
    for (name, der, reason) in &cases {
        let v = issue(&c, name, std::slice::from_ref(der), &[]);
        assert_eq!(v["issued"], 0, "{name}");
        assert_eq!(v["refused"][*reason], 1, "{name}: {v}");
    }
    // A key certified before.
    let v = issue(&c, "first", std::slice::from_ref(&good), &[]);
    assert_eq!(v["issued"], 1);
    let v = issue(&c, "again", &[good], &[]);
    assert_eq!(v["refused"]["duplicate-key"], 1);
    // An entitlement the site does not have: refused as a whole, before anything is logged (a
    // typo must not write one refusal per CSR into the permanent log).
    let dir = c.tmp.path().join("x-csrs");
    write_csrs(&dir, &[p256()]);
    let (code, v) = stamp(&c.pass)
        .site("issue")
        .dir(&c.site)
        .args(&["--entitlement", "nope.9", "--csr", s(&dir)])
        .args(&["-o", s(&c.tmp.path().join("x"))])
        .code_json();
    assert_eq!(
        (code, v["code"].as_str()),
        (Some(1), Some("unknown-entitlement")),
        "{v}"
    );
    assert_eq!(
        log_reasons(&c.site),
        vec![
            "bad-csr-signature",
            "malformed-csr",
            "key-type-not-allowed",
            "weak-key",
            "duplicate-key"
        ]
    );
}

#[test]
fn rate_window_and_suspension_are_enforced() {
    let c = entitled(&["--quota", "100", "--rate", "3/minute"]);
    let csrs: Vec<Vec<u8>> = (0..5).map(|_| p256()).collect();
    let v = issue(&c, "rate", &csrs, &["--jobs", "1"]);
    assert_eq!(v["issued"], 3);
    assert_eq!(v["refused"]["rate-exceeded"], 2);
    // Suspended.
    let pkg = c.tmp.path().join("s.cose");
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1"])
        .arg("--suspend")
        .args(&["-o", s(&pkg)])
        .json();
    stamp(&c.pass).site("import").dir(&c.site).arg(&pkg).json();
    let v = issue(&c, "susp", &[p256()], &[]);
    assert_eq!(v["refused"]["suspended"], 1);
    // Outside the window: a grant that starts tomorrow.
    let later = (time::OffsetDateTime::now_utc() + time::Duration::days(1))
        .date()
        .to_string();
    let pkg = c.tmp.path().join("w.cose");
    stamp(&c.pass)
        .hq("entitle")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--product", "p", "--quota", "5"])
        .args(&["--not-before", &later, "-o", s(&pkg)])
        .json();
    stamp(&c.pass).site("import").dir(&c.site).arg(&pkg).json();
    let dir = c.tmp.path().join("w-csrs");
    write_csrs(&dir, &[p256()]);
    let o = stamp(&c.pass)
        .arg("--json")
        .site("issue")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.3", "--csr", s(&dir)])
        .args(&["-o", s(&c.tmp.path().join("w-out"))])
        .output();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["refused"]["outside-window"], 1, "{v}");
}

#[test]
fn concurrent_requests_never_over_issue() {
    let c = entitled(&["--quota", "25"]);
    let csrs: Vec<Vec<u8>> = (0..120).map(|_| p256()).collect();
    let v = issue(&c, "race", &csrs, &["--jobs", "16"]);
    assert_eq!(v["issued"], 25);
    assert_eq!(v["refused"]["quota-exhausted"], 95);
    let serials: HashSet<u64> = v["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_serial"].as_u64().unwrap())
        .collect();
    assert_eq!(serials, (1..=25).collect::<HashSet<u64>>());
    stamp(&c.pass).site("verify-log").dir(&c.site).json();
}

#[test]
fn a_site_killed_mid_issuance_loses_nothing_it_returned() {
    let c = entitled(&["--quota", "1500"]);
    let csrs: Vec<Vec<u8>> = (0..2000).map(|_| p256()).collect();
    let dir = c.tmp.path().join("kill-csrs");
    write_csrs(&dir, &csrs);
    let out = c.tmp.path().join("kill-out");
    let mut child = stamp(&c.pass)
        .site("issue")
        .dir(&c.site)
        .args(&[
            "--entitlement",
            "plant-7.1",
            "--csr",
            s(&dir),
            "-o",
            s(&out),
            "--jobs",
            "4",
        ])
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once some certificates are out.
    let start = std::time::Instant::now();
    loop {
        let n = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
        if n >= 300 || start.elapsed() > std::time::Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The log verifies; every certificate written out is in it; the quota holds.
    let log = stamp(&c.pass).site("verify-log").dir(&c.site).json();
    let db = rusqlite::Connection::open(c.site.join("stamp-site.db")).unwrap();
    let logged: HashSet<Vec<u8>> = {
        let mut stmt = db.prepare("SELECT cert_sha256 FROM devices").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let mut returned = 0;
    for e in std::fs::read_dir(&out).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".crt.pem") {
            let der = ::pem::parse(std::fs::read(&p).unwrap()).unwrap().into_contents();
            assert!(
                logged.contains(stamp_core::fingerprint::sha256(&der).as_slice()),
                "{} not in the log",
                p.display()
            );
            returned += 1;
        }
    }
    assert!(
        returned >= 1 && returned <= logged.len(),
        "returned {returned}, logged {}",
        logged.len()
    );
    assert!(
        logged.len() < 1500,
        "the kill must land mid-run for this test to mean anything"
    );
    assert!(logged.len() <= 1500);
    assert!(log["size"].as_u64().unwrap() > logged.len() as u64);
    // And the site carries on where it stopped.
    let v = issue(&c, "after", &[p256()], &[]);
    assert_eq!(v["issued"], 1);
    let serial = v["devices"][0]["device_serial"].as_u64().unwrap();
    assert_eq!(
        serial,
        logged.len() as u64 + 1,
        "the next serial follows the last logged one"
    );
}

#[test]
fn hq_generated_keys_are_handed_out_once_and_never_stored_in_clear() {
    let c = ceremony(true);
    let pkg = c.tmp.path().join("k.cose");
    let r = stamp(&c.pass)
        .hq("entitle")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--product", "lock-1", "--quota", "3"])
        .args(&["--hq-keys", "ed25519", "--key-types", "ed25519"])
        .args(&["--secret", "flash-key:32", "-o", s(&pkg)])
        .json();
    assert_eq!(r["entitlement"]["quota"], 3);
    stamp(&c.pass).site("import").dir(&c.site).arg(&pkg).json();
    let out = c.tmp.path().join("keys");
    let o = stamp(&c.pass)
        .arg("--json")
        .site("hand-out")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.1", "--count", "4", "-o", s(&out)])
        .output();
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["handed_out"].as_array().unwrap().len(), 3);
    assert_eq!(v["refused"], "no-keys-left");
    let hq_db = std::fs::read(c.hq.join("stamp-hq.db")).unwrap();
    let site_db = std::fs::read(c.site.join("stamp-site.db")).unwrap();
    let mut indexes = HashSet::new();
    for h in v["handed_out"].as_array().unwrap() {
        let key = PathBuf::from(h["key"].as_str().unwrap());
        let cert = PathBuf::from(h["certificate"].as_str().unwrap());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // The certificate is for exactly the handed-out key.
        let a = openssl(&["pkey", "-in", s(&key), "-pubout"]).stdout;
        let b = openssl(&["x509", "-in", s(&cert), "-noout", "-pubkey"]).stdout;
        assert!(!a.is_empty());
        assert_eq!(a, b);
        assert!(indexes.insert(h["key_index"].as_u64().unwrap()), "each key once");
        let stamp: serde_json::Value =
            serde_json::from_slice(&std::fs::read(h["stamp"].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(stamp["secrets"]["flash-key"].as_str().unwrap().len(), 64);
        // Neither database holds the private key or the secret in clear.
        let der = ::pem::parse(std::fs::read(&key).unwrap())
            .unwrap()
            .into_contents();
        let seed = &der[der.len() - 32..];
        assert!(
            !hq_db.windows(32).any(|w| w == seed),
            "HQ database holds a device private key"
        );
        assert!(
            !site_db.windows(32).any(|w| w == seed),
            "site database holds a device private key"
        );
        let secret = hex::decode(stamp["secrets"]["flash-key"].as_str().unwrap()).unwrap();
        assert!(!hq_db.windows(32).any(|w| w == secret.as_slice()));
        assert!(!site_db.windows(32).any(|w| w == secret.as_slice()));
    }
    // Devices of this grant cannot bring their own keys.
    let v = issue(&c, "own", &[csr_der_with(&rcgen::PKCS_ED25519, |_| {})], &[]);
    assert_eq!(v["refused"]["hq-keys-only"], 1);
    // HQ refuses to top up a key grant.
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1", "--add-quota", "5"])
        .args(&["-o", s(&c.tmp.path().join("x.cose"))])
        .fails("cannot be topped up");
}

#[test]
fn an_entitlement_names_the_firmware_the_site_may_program() {
    let c = ceremony(true);
    let image = c.tmp.path().join("app.bin");
    std::fs::write(&image, vec![0x5au8; 4096]).unwrap();
    stamp(&c.pass)
        .hq("add-firmware-key")
        .dir(&c.hq)
        .args(&["--name", "main", "--algorithm", "ecdsa-p256"])
        .json();
    let signed = c.tmp.path().join("app.signed.bin");
    stamp(&c.pass)
        .hq("sign-firmware")
        .dir(&c.hq)
        .args(&["--key", "main", "--format", "mcuboot"])
        .args(&["--version", "1.4.2", s(&image), "-o", s(&signed)])
        .json();
    let pkg = c.tmp.path().join("e.cose");
    // An unknown release is refused at HQ.
    stamp(&c.pass)
        .hq("entitle")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--product", "p", "--quota", "2"])
        .args(&["--firmware", "9.9.9", "-o", s(&pkg)])
        .fails_with("unknown-firmware");
    stamp(&c.pass)
        .hq("entitle")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--product", "p", "--quota", "2"])
        .args(&["--firmware", "1.4.2@mcuboot", "-o", s(&pkg)])
        .json();
    stamp(&c.pass).site("import").dir(&c.site).arg(&pkg).json();
    let digest = hex::encode(stamp_core::fingerprint::sha256(&std::fs::read(&signed).unwrap()));
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    let fw = &st["entitlements"][0]["firmware"][0];
    assert_eq!(fw["version"], "1.4.2+0");
    assert_eq!(fw["format"], "mcuboot");
    assert_eq!(fw["sha256"], digest.as_str());
    let v = issue(&c, "fw", &[p256()], &[]);
    let stamp: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v["devices"][0]["stamp"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(stamp["firmware"][0]["sha256"], digest.as_str());
}
