//! Entitlements through the real binary: HQ seals, the site verifies and applies; every bad
//! package is refused with a specific error and leaves the site exactly as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::*;
use aws_lc_rs::rand::SystemRandom;
use stamp_core::entitlement::{
    Action, DeviceKeyType, DeviceProfile, Entitlement, Grant, Product, SerialRange, VERSION,
};
use stamp_core::envelope::{self, Recipient};
use stamp_core::key::{KeyAgreementAlgorithm, Signer};
use stamp_core::SiteId;
use stamp_keys::soft::SoftKeyStore;
use stamp_keys::{KeyRef, KeyStore, Passphrase};

const CT: &str = "application/vnd.stamp.entitlement+cbor";

fn pem_der(path: &Path) -> Vec<u8> {
    ::pem::parse(std::fs::read(path).unwrap())
        .unwrap()
        .into_contents()
}

fn signer(dir: &Path, pass: &Path, key: &str) -> Box<dyn Signer> {
    let store = SoftKeyStore::new(dir, Passphrase::from_file(pass).unwrap());
    store
        .open_signer(&KeyRef::parse(&format!("file:keys/{key}.key")).unwrap())
        .unwrap()
}

fn ka_public(site: &Path) -> Vec<u8> {
    let der = pem_der(&site.join("certs/site-identity-key-agreement.pem"));
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    cert.public_key().subject_public_key.data.to_vec()
}

fn entitle(c: &Ceremony, site: &str, quota: &str, out: &Path) -> serde_json::Value {
    stamp(&c.pass)
        .hq("entitle")
        .dir(&c.hq)
        .args(&["--site", site, "--product", "thermo-2", "--quota", quota])
        .args(&["--rate", "60/minute", "--rate", "20000/day"])
        .args(&["--device-data", "cloud_endpoint=mqtts://iot.example:8883"])
        .args(&["-o", s(out)])
        .json()
}

fn import(c: &Ceremony, site: &Path, pkg: &Path) -> serde_json::Value {
    stamp(&c.pass).site("import").dir(site).arg(pkg).json()
}

/// Importing must fail with `needle` and leave the site directory byte-for-byte unchanged.
fn import_fails(c: &Ceremony, site: &Path, pkg: &Path, needle: &str) {
    let before = snapshot(site);
    stamp(&c.pass).site("import").dir(site).arg(pkg).fails(needle);
    assert_eq!(
        snapshot(site),
        before,
        "site state changed after a refused package ({needle})"
    );
}

fn write(c: &Ceremony, name: &str, bytes: &[u8]) -> PathBuf {
    let p = c.tmp.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn grant(site: &str, seq: u64, not_after: i64) -> Entitlement {
    Entitlement {
        version: VERSION,
        site_id: SiteId::new(site).unwrap(),
        sequence: seq,
        issued_at: 0,
        action: Action::Grant(Grant {
            entitlement_id: format!("{site}.{seq}"),
            product: Product {
                oem_id: "acme".into(),
                product_id: "p".into(),
                name: "P".into(),
            },
            quota: 10,
            rate_limits: BTreeMap::new(),
            not_before: 0,
            not_after,
            serial_ranges: vec![SerialRange {
                first: 900_001,
                last: 900_010,
            }],
            device_profile: DeviceProfile {
                validity_days: 365,
                key_types: vec![DeviceKeyType::P256],
                organization: "Acme Sensors".into(),
            },
            stations: vec![],
            device_data: BTreeMap::new(),
            device_keys: vec![],
            firmware: vec![],
            renewal_limit: Default::default(),
        }),
    }
}

/// Seals arbitrary plaintext the way HQ does, with any signer, chain and recipient.
fn seal(
    plaintext: &[u8],
    signer: &dyn Signer,
    chain: Vec<Vec<u8>>,
    kid: &str,
    to: &[u8],
    rid: &str,
) -> Vec<u8> {
    envelope::seal(
        CT,
        plaintext,
        signer,
        &chain,
        &Recipient {
            alg: KeyAgreementAlgorithm::EcdhP256,
            public_key: to,
            key_id: kid.as_bytes(),
            recipient_id: rid.as_bytes(),
        },
        &[],
        &SystemRandom::new(),
    )
    .unwrap()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[test]
fn entitle_import_amend_and_status() {
    let c = ceremony(true);
    let other = c.second_site("plant-9");
    let p1 = c.tmp.path().join("p1.cose");
    let r1 = entitle(&c, "plant-7", "1000", &p1);
    assert_eq!(r1["sequence"], 1);
    assert_eq!(r1["entitlement"]["serial_ranges"][0]["first"], 1);
    assert_eq!(r1["entitlement"]["serial_ranges"][0]["last"], 1000);
    // Another site's range never overlaps.
    let q1 = c.tmp.path().join("q1.cose");
    let rq = entitle(&c, "plant-9", "50", &q1);
    assert_eq!(rq["entitlement"]["serial_ranges"][0]["first"], 1001);
    assert_eq!(rq["sequence"], 1, "sequences are per site");

    let applied = import(&c, &c.site, &p1);
    assert_eq!(applied["action"], "grant");
    import(&c, &other, &q1);
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    let e = &st["entitlements"][0];
    assert_eq!(e["entitlement_id"], "plant-7.1");
    assert_eq!(e["status"], "active");
    assert_eq!(e["quota"], 1000);
    assert_eq!(e["remaining"], 1000);
    assert_eq!(e["rate_limits"]["minute"], 60);
    assert_eq!(e["rate_limits"]["day"], 20000);
    assert_eq!(e["device_data"]["cloud_endpoint"], "mqtts://iot.example:8883");
    assert_eq!(e["in_window"], true);
    assert_eq!(st["last_sequence"], 1);

    // Top up, then shorten the window, then suspend: each a new package, applied in order.
    let p2 = c.tmp.path().join("p2.cose");
    let r2 = stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1", "--add-quota", "500"])
        .args(&["-o", s(&p2)])
        .json();
    assert_eq!(r2["entitlement"]["quota"], 1500);
    assert_eq!(
        r2["entitlement"]["serial_ranges"][1]["first"], 1051,
        "after plant-9's range"
    );
    let p3 = c.tmp.path().join("p3.cose");
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1", "--not-after", "2030-01-01"])
        .args(&["-o", s(&p3)])
        .json();
    let p4 = c.tmp.path().join("p4.cose");
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1"])
        .arg("--suspend")
        .args(&["-o", s(&p4)])
        .json();
    // Out of order: sequence 3 before 2 is fine only in order; applying 3 then 2 refuses 2.
    import(&c, &c.site, &p2);
    import(&c, &c.site, &p3);
    import(&c, &c.site, &p4);
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    let e = &st["entitlements"][0];
    assert_eq!(e["status"], "suspended");
    assert_eq!(e["quota"], 1500);
    assert_eq!(e["not_after"], "2030-01-01T00:00:00Z");
    assert_eq!(st["last_sequence"], 4);

    // Revoked is final, at HQ too.
    let p5 = c.tmp.path().join("p5.cose");
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1"])
        .arg("--revoke")
        .args(&["-o", s(&p5)])
        .json();
    import(&c, &c.site, &p5);
    let hq_before = snapshot(&c.hq);
    let p6 = c.tmp.path().join("p6.cose");
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1"])
        .arg("--resume")
        .args(&["-o", s(&p6)])
        .fails("is revoked");
    assert_eq!(snapshot(&c.hq), hq_before);
    assert!(!p6.exists());

    let list = stamp(&c.pass).hq("entitlements").dir(&c.hq).json();
    assert_eq!(list["entitlements"].as_array().unwrap().len(), 2);
    assert_eq!(list["entitlements"][0]["status"], "revoked");
}

#[test]
fn hq_refuses_bad_entitlement_requests_without_changing_anything() {
    let c = ceremony(true);
    let out = c.tmp.path().join("x.cose");
    let before = snapshot(&c.hq);
    let base = [
        "hq",
        "entitle",
        "--dir",
        s(&c.hq),
        "--product",
        "p",
        "-o",
        s(&out),
    ];
    let run = |extra: &[&str], needle: &str| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        stamp(&c.pass).args(&args).fails(needle);
        assert_eq!(snapshot(&c.hq), before);
        assert!(!out.exists());
    };
    run(
        &["--site", "nowhere", "--quota", "5"],
        "site nowhere is not enrolled",
    );
    run(&["--site", "plant-7", "--quota", "0"], "quota must be at least 1");
    run(
        &["--site", "plant-7", "--quota", "5", "--not-after", "2001-01-01"],
        "window ends before it starts",
    );
    run(
        &[
            "--site",
            "plant-7",
            "--quota",
            "5",
            "--not-before",
            "2001-01-01",
            "--not-after",
            "2002-01-01",
        ],
        "expired",
    );
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "nope.1"])
        .arg("--suspend")
        .args(&["-o", s(&out)])
        .fails_with("unknown-entitlement");
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "nope.1", "-o", s(&out)])
        .usage_fails("nothing to change");
    assert_eq!(snapshot(&c.hq), before);
}

#[test]
fn pycose_verifies_and_decrypts_a_real_package() {
    let c = ceremony(true);
    let pkg = c.tmp.path().join("e.cose");
    entitle(&c, "plant-7", "25", &pkg);
    // The site's key-agreement key, decrypted by openssl for pycose.
    let key_pem = c.tmp.path().join("site-ka.pem");
    let out = openssl(&[
        "pkey",
        "-in",
        s(&c.site.join("keys/site-identity-key-agreement.key")),
        "-passin",
        &format!("file:{}", s(&c.pass)),
        "-out",
        s(&key_pem),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let signer_pub = c.tmp.path().join("hq-pub.pem");
    let out = openssl(&[
        "x509",
        "-in",
        s(&c.hq.join("certs/hq-authority-signing.pem")),
        "-pubkey",
        "-noout",
        "-out",
        s(&signer_pub),
    ]);
    assert!(out.status.success());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/pycose/open_envelope.py");
    let run = |rid: &str| {
        std::process::Command::new(stamp_testkit::python3())
            .arg(&script)
            .args([
                "open",
                "--envelope",
                s(&pkg),
                "--signer-key",
                s(&signer_pub),
                "--recipient-key",
                s(&key_pem),
            ])
            .args(["--recipient-id", &hex::encode(rid)])
            .output()
            .unwrap_or_else(|e| panic!("python3 is required ({e}); run scripts/test, which installs it"))
    };
    let out = run("plant-7");
    assert!(
        out.status.success(),
        "pycose refused stamp's package (run scripts/test to install pycose): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e = Entitlement::from_cbor(&out.stdout).unwrap();
    assert_eq!(e.site_id.as_str(), "plant-7");
    let Action::Grant(g) = e.action else {
        panic!("not a grant")
    };
    assert_eq!(g.quota, 25);
    assert_eq!(g.product.product_id, "thermo-2");
    // Bound to the site: pycose cannot open it as another site.
    assert!(!run("plant-9").status.success());
}

#[test]
fn bad_packages_are_refused_and_change_nothing() {
    let c = ceremony(true);
    let other = c.second_site("plant-9");
    let p1 = c.tmp.path().join("p1.cose");
    let p2 = c.tmp.path().join("p2.cose");
    entitle(&c, "plant-7", "100", &p1);
    entitle(&c, "plant-7", "100", &p2);
    let bytes = std::fs::read(&p2).unwrap();
    // Importing `bytes` as `name` must fail with `needle` and change nothing at the site.
    let refuse =
        |name: &str, bytes: &[u8], needle: &str| import_fails(&c, &c.site, &write(&c, name, bytes), needle);

    // A flipped bit anywhere: header, ciphertext, tag, signature.
    let n = bytes.len();
    for i in [
        0,
        1,
        5,
        20,
        n / 4,
        n / 3,
        n / 2,
        2 * n / 3,
        n - 90,
        n - 70,
        n - 40,
        n - 2,
        n - 1,
    ] {
        let mut m = bytes.clone();
        m[i] ^= 0x04;
        let f = write(&c, "flipped.cose", &m);
        import_fails(&c, &c.site, &f, "refused");
    }
    // Truncated, trailing bytes, oversized, empty, a file of another kind.
    refuse("t.cose", &bytes[..n - 1], "entitlement package refused");
    let mut t = bytes.clone();
    t.push(0);
    refuse("t.cose", &t, "bytes follow the envelope");
    let big = vec![0u8; stamp_site::entitlements::MAX_PACKAGE + 1];
    refuse("big.cose", &big, "larger than");
    refuse("e.cose", b"", "entitlement package refused");
    import_fails(&c, &c.site, &c.credentials, "entitlement package refused");

    // An algorithm changed in the signed header (ES256 -> -6): refused, no downgrade.
    let pos = bytes.windows(3).position(|w| w == [0x01, 0x26, 0x03]).unwrap();
    let mut m = bytes.clone();
    m[pos + 1] = 0x25;
    refuse("alg.cose", &m, "unsupported");

    // Encrypted but unsigned: the inner COSE_Encrypt alone.
    let outer: ciborium::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
    let ciborium::Value::Tag(18, arr) = &outer else {
        panic!("not a COSE_Sign1")
    };
    let ciborium::Value::Array(items) = arr.as_ref() else {
        panic!()
    };
    let ciborium::Value::Bytes(inner) = &items[2] else {
        panic!()
    };
    refuse("unsigned.cose", inner, "entitlement package refused");

    // Spliced: package 1's signature and headers around package 2's content.
    let o1: ciborium::Value = ciborium::from_reader(std::fs::read(&p1).unwrap().as_slice()).unwrap();
    let ciborium::Value::Tag(18, a1) = o1 else {
        panic!()
    };
    let ciborium::Value::Array(mut i1) = *a1 else {
        panic!()
    };
    i1[2] = items[2].clone();
    let mut spliced = Vec::new();
    ciborium::into_writer(
        &ciborium::Value::Tag(18, Box::new(ciborium::Value::Array(i1))),
        &mut spliced,
    )
    .unwrap();
    refuse("spliced.cose", &spliced, "signature does not verify");

    // Addressed to another site.
    let q = c.tmp.path().join("q.cose");
    entitle(&c, "plant-9", "10", &q);
    import_fails(&c, &c.site, &q, "addressed to site plant-9");

    // Sealed to another site's key, but labelled for this one.
    let hq_key = signer(&c.hq, &c.pass, "hq-authority-signing");
    let hq_cert = pem_der(&c.hq.join("certs/hq-authority-signing.pem"));
    // A payload sealed as HQ seals it for plant-7: HQ's key and certificate, plant-7's key.
    let hq_sealed = |payload: &[u8]| {
        seal(
            payload,
            hq_key.as_ref(),
            vec![hq_cert.clone()],
            "plant-7",
            &ka_public(&c.site),
            "plant-7",
        )
    };
    let g = grant("plant-7", 7, now() + 86_400).to_cbor();
    let wrong_key = seal(
        &g,
        hq_key.as_ref(),
        vec![hq_cert.clone()],
        "plant-7",
        &ka_public(&other),
        "plant-7",
    );
    refuse("wk.cose", &wrong_key, "not addressed to this recipient");
    // Sealed for another recipient ID with this site's key.
    let wrong_id = seal(
        &g,
        hq_key.as_ref(),
        vec![hq_cert.clone()],
        "plant-7",
        &ka_public(&c.site),
        "plant-9",
    );
    refuse("wid.cose", &wrong_id, "not addressed to this recipient");

    // Signed by the site's own identity key: right root, wrong role.
    let site_key = signer(&c.site, &c.pass, "site-identity-signing");
    let site_cert = pem_der(&c.site.join("certs/site-identity-signing.pem"));
    let forged = seal(
        &g,
        site_key.as_ref(),
        vec![site_cert],
        "plant-7",
        &ka_public(&c.site),
        "plant-7",
    );
    refuse(
        "forged.cose",
        &forged,
        "does not match the hq-authority-signing profile",
    );
    // Signed by another OEM's HQ authority: does not chain to this site's root.
    let rogue = c.tmp.path().join("rogue-hq");
    stamp(&c.pass)
        .hq("init")
        .dir(&rogue)
        .args(&["--org", "Acme Sensors"])
        .json();
    let rogue_key = signer(&rogue, &c.pass, "hq-authority-signing");
    let rogue_cert = pem_der(&rogue.join("certs/hq-authority-signing.pem"));
    let rogue_pkg = seal(
        &g,
        rogue_key.as_ref(),
        vec![rogue_cert],
        "plant-7",
        &ka_public(&c.site),
        "plant-7",
    );
    refuse("rogue.cose", &rogue_pkg, "does not chain to the OEM root");

    // Genuine HQ signature, bad payloads: expired, unknown version, another site inside.
    let expired = grant("plant-7", 8, now() - 10).to_cbor();
    let sealed = hq_sealed(&expired);
    // (sequence 8 while nothing is applied: a gap, refused before its window is looked at)
    refuse(
        "exp.cose",
        &sealed,
        "packages 1 to 7 are missing: import them first, in order",
    );
    let mut v2 = grant("plant-7", 9, now() + 86_400);
    v2.version = 2;
    let sealed = hq_sealed(&v2.to_cbor());
    refuse("v2.cose", &sealed, "unsupported entitlement version 2");
    let inner_other = grant("plant-9", 10, now() + 86_400).to_cbor();
    let sealed = hq_sealed(&inner_other);
    refuse("io.cose", &sealed, "entitlement is for site plant-9");
    let sealed = hq_sealed(b"not cbor");
    refuse("junk.cose", &sealed, "malformed entitlement payload");

    // Sequence: 2 before 1 is a gap; 1 then 2 apply; then 1 (older) and 2 again (replay) are refused.
    import_fails(&c, &c.site, &p2, "package 1 is missing: import it first");
    import(&c, &c.site, &p1);
    import(&c, &c.site, &p2);
    import_fails(&c, &c.site, &p1, "sequence 1 is not above the last applied (2)");
    import_fails(&c, &c.site, &p2, "sequence 2 is not above the last applied (2)");
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    assert_eq!(st["entitlements"].as_array().unwrap().len(), 2);
    assert_eq!(st["entitlements"][1]["entitlement_id"], "plant-7.2");

    // A genuine grant whose window is already over, in its turn (3): applied, so that it leaves
    // no gap, and it admits nothing.
    let expired = grant("plant-7", 3, now() - 10).to_cbor();
    let sealed = hq_sealed(&expired);
    let r = import(&c, &c.site, &write(&c, "exp3.cose", &sealed));
    assert_eq!(r["sequence"], 3);
    assert_eq!(r["entitlement"]["in_window"], false);
}

/// The attacker is the site's owner: HQ suspends a grant (package 2) and then grants another run
/// (package 3); the site keeps the suspension file away and imports 3. Refused, naming package
/// 2, the site unchanged (a site that never imports 2 gets nothing new from HQ, and HQ reports
/// 2 as `package-not-applied`: tests/reconcile.rs); the honest path (2, then 3) applies both.
#[test]
fn a_site_cannot_skip_a_suspension_and_apply_the_next_package() {
    let c = ceremony(true);
    let p1 = c.tmp.path().join("p1.cose");
    entitle(&c, "plant-7", "100", &p1);
    let p2 = c.tmp.path().join("p2.cose");
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1"])
        .arg("--suspend")
        .args(&["-o", s(&p2)])
        .json();
    let p3 = c.tmp.path().join("p3.cose");
    entitle(&c, "plant-7", "50", &p3);
    let p4 = c.tmp.path().join("p4.cose");
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1"])
        .arg("--revoke")
        .args(&["-o", s(&p4)])
        .json();
    import(&c, &c.site, &p1);
    // Skipping the suspension, and skipping both it and the next grant to reach a revocation's
    // successor: each refused with the missing sequences named.
    import_fails(&c, &c.site, &p3, "package 2 is missing: import it first");
    import_fails(&c, &c.site, &p4, "packages 2 to 3 are missing");
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    assert_eq!(st["last_sequence"], 1);
    assert_eq!(st["entitlements"].as_array().unwrap().len(), 1);

    // The honest path: in order, every package applies.
    import(&c, &c.site, &p2);
    let r = import(&c, &c.site, &p3);
    assert_eq!(r["entitlement"]["entitlement_id"], "plant-7.3");
    import(&c, &c.site, &p4);
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    assert_eq!(st["last_sequence"], 4);
    assert_eq!(st["entitlements"][0]["status"], "revoked");
    assert_eq!(st["entitlements"][1]["status"], "active");
}

/// A lost package is never a dead end: HQ re-exports it, byte-identical, by site and sequence or
/// by entitlement and sequence; it refuses to overwrite a file unless told, and names what it
/// cannot find. The site then applies it and goes on.
#[test]
fn hq_re_exports_a_sealed_package_byte_identical() {
    let c = ceremony(true);
    let p1 = c.tmp.path().join("p1.cose");
    entitle(&c, "plant-7", "10", &p1);
    let p2 = c.tmp.path().join("p2.cose");
    stamp(&c.pass)
        .hq("amend")
        .dir(&c.hq)
        .args(&["--entitlement", "plant-7.1"])
        .arg("--suspend")
        .args(&["-o", s(&p2)])
        .json();
    let p3 = c.tmp.path().join("p3.cose");
    entitle(&c, "plant-7", "10", &p3);
    let original = std::fs::read(&p2).unwrap();
    std::fs::remove_file(&p2).unwrap();
    import(&c, &c.site, &p1);
    import_fails(&c, &c.site, &p3, "package 2 is missing: import it first");

    let again = c.tmp.path().join("again.cose");
    let r = stamp(&c.pass)
        .hq("export-package")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--sequence", "2", "-o", s(&again)])
        .json();
    assert_eq!(r["sequence"], 2);
    assert_eq!(r["entitlement_id"], "plant-7.1");
    assert_eq!(r["action"], "amend");
    assert_eq!(std::fs::read(&again).unwrap(), original, "byte-identical");
    let sha = stamp_core::fingerprint::sha256(&original);
    assert_eq!(r["sha256"], hex::encode(sha));

    // By entitlement: refuses to overwrite, then overwrites with --force.
    let by_id = [
        "hq",
        "export-package",
        "--dir",
        s(&c.hq),
        "--entitlement",
        "plant-7.1",
        "--sequence",
        "2",
        "-o",
        s(&again),
    ];
    stamp(&c.pass)
        .args(&by_id)
        .fails("already exists; choose another path, or give --force");
    std::fs::write(&again, b"something else").unwrap();
    let mut forced = by_id.to_vec();
    forced.push("--force");
    stamp(&c.pass).args(&forced).json();
    assert_eq!(std::fs::read(&again).unwrap(), original);
    // Unknown sequence, another grant's package, an unknown site, no selector.
    let x = c.tmp.path().join("x.cose");
    let base = |sel: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["hq", "export-package", "--dir", s(&c.hq), "-o", s(&x)]
            .iter()
            .map(|a| a.to_string())
            .collect();
        v.extend(sel.iter().map(|a| a.to_string()));
        v
    };
    for (sel, needle) in [
        (
            &["--site", "plant-7", "--sequence", "9"][..],
            "HQ never sealed a package with sequence 9 for site plant-7",
        ),
        (
            &["--entitlement", "plant-7.1", "--sequence", "3"][..],
            "package 3 of site plant-7 is the grant of plant-7.3, not a package of plant-7.1",
        ),
        (
            &["--entitlement", "nope", "--sequence", "1"][..],
            "no entitlement nope",
        ),
        (
            &["--site", "plant-0", "--sequence", "1"][..],
            "site plant-0 is not enrolled",
        ),
    ] {
        let args = base(sel);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        stamp(&c.pass).args(&args).fails(needle);
        assert!(!x.exists(), "{sel:?}");
    }
    let args = base(&["--sequence", "1"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = stamp(&c.pass).args(&args).output();
    assert_eq!(out.status.code(), Some(2), "no selector: a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--site"));
    assert!(!x.exists());

    // The site applies the re-exported package, then the next one; a second copy is a replay.
    import(&c, &c.site, &again);
    import(&c, &c.site, &p3);
    import_fails(
        &c,
        &c.site,
        &again,
        "sequence 2 is not above the last applied (3)",
    );
    let st = stamp(&c.pass).site("status").dir(&c.site).json();
    assert_eq!(st["entitlements"][0]["status"], "suspended");
}
