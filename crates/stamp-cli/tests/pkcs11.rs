//! Every role key in a PKCS#11 token (SoftHSM2, set up by the test), through the real binary:
//! the enrollment ceremony and an entitlement work, openssl accepts the certificates, the keys are
//! sensitive and non-extractable in the token, no passphrase is ever needed, and each failure is a
//! clear error that leaves nothing behind.

use std::path::{Path, PathBuf};
use std::process::{Command as StdCommand, Output};

use crate::common::{s, secret_file, stamp_bare, Stamp};
use assert_cmd::Command;

const USER_PIN: &str = "1234";
const SO_PIN: &str = "12345678";
const HOW: &str = "SoftHSM2 is required by the PKCS#11 tests; run scripts/test, which installs it \
                   (apt-get install softhsm2 opensc)";

fn module() -> PathBuf {
    let m = std::env::var_os("TEST_PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    assert!(m.exists(), "PKCS#11 module {} not found. {HOW}", m.display());
    m
}

/// A SoftHSM2 of its own: token directory, configuration and PIN file in a temp directory.
struct Hsm {
    tmp: tempfile::TempDir,
    conf: PathBuf,
    pin: PathBuf,
}

impl Hsm {
    fn new(tokens: &[&str], mechanisms: Option<&str>) -> Hsm {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("softhsm");
        std::fs::create_dir_all(dir.join("tokens")).unwrap();
        let conf = dir.join("softhsm2.conf");
        let mut text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        );
        if let Some(m) = mechanisms {
            text.push_str(&format!("slots.mechanisms = {m}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        for label in tokens {
            let out = StdCommand::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &conf)
                .args(["--init-token", "--free", "--label", label])
                .args(["--so-pin", SO_PIN, "--pin", USER_PIN])
                .output()
                .unwrap_or_else(|e| panic!("cannot run softhsm2-util ({e}). {HOW}"));
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let pin = secret_file(tmp.path(), "pin", USER_PIN);
        Hsm { tmp, conf, pin }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    /// `stamp` with this SoftHSM2, the module from the environment variable, the PIN file `pin`,
    /// and no passphrase anywhere (no file, no variable, no terminal).
    fn cmd_with_pin(&self, pin: &Path) -> Stamp {
        stamp_bare()
            .env_remove("STAMP_PKCS11_PIN_FILE")
            .env("SOFTHSM2_CONF", &self.conf)
            .env("STAMP_PKCS11_MODULE", module())
            .arg("--pkcs11-pin-file")
            .arg(pin)
    }

    /// `stamp` with this SoftHSM2 and its PIN file.
    fn cmd(&self) -> Stamp {
        self.cmd_with_pin(&self.pin)
    }

    /// pkcs11-tool's listing of a token's objects (an independent reader of the token).
    fn objects(&self, token: &str) -> String {
        let out = StdCommand::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", &self.conf)
            .arg("--module")
            .arg(module())
            .args([
                "--token-label",
                token,
                "--login",
                "--pin",
                USER_PIN,
                "--list-objects",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run pkcs11-tool ({e}). {HOW}"));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn fails(out: &Output, needle: &str) {
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "expected failure, got:\n{text}");
    assert!(text.contains(needle), "expected {needle:?} in:\n{text}");
}

/// The private-key blocks of a pkcs11-tool listing, by label.
fn private_keys(listing: &str) -> Vec<(String, String)> {
    listing
        .split("Private Key Object")
        .skip(1)
        .map(|block| {
            let label = block
                .lines()
                .find_map(|l| l.trim().strip_prefix("label:"))
                .unwrap_or_default()
                .trim()
                .to_owned();
            (label, block.to_owned())
        })
        .collect()
}

#[test]
fn ceremony_and_entitlement_with_every_role_key_in_a_token() {
    let hsm = Hsm::new(&["stamp-hq", "stamp-site"], None);
    let (hq, site) = (hsm.path("hq"), hsm.path("site"));
    let (request, credentials, package) = (
        hsm.path("request.json"),
        hsm.path("credentials.json"),
        hsm.path("entitlement.cbor"),
    );
    let hq_init = hsm
        .cmd()
        .hq("init")
        .dir(&hq)
        .args(&["--org", "Acme Sensors"])
        .args(&["--key-store", "pkcs11:token=stamp-hq"])
        .json();
    let site_init = hsm
        .cmd()
        .site("init")
        .dir(&site)
        .args(&["--site-id", "plant-7", "-o", s(&request)])
        .args(&["--key-store", "pkcs11:token=stamp-site"])
        .json();
    let fp = site_init["request_fingerprint"].as_str().unwrap();
    hsm.cmd()
        .hq("enroll-site")
        .dir(&hq)
        .arg(&request)
        .args(&["-o", s(&credentials), "--fingerprint", fp])
        .json();
    let install = hsm
        .cmd()
        .site("install")
        .dir(&site)
        .arg(&credentials)
        .args(&[
            "--root-fingerprint",
            hq_init["root_fingerprint"].as_str().unwrap(),
        ])
        .json();

    // openssl accepts every certificate, signed by keys that never left the tokens.
    let root = PathBuf::from(hq_init["root_cert"].as_str().unwrap());
    let certs = install["certs"].as_object().unwrap();
    assert_eq!(certs.len(), 6);
    for (name, path) in certs {
        let out = crate::common::openssl(&[
            "verify",
            "-x509_strict",
            "-CAfile",
            s(&root),
            path.as_str().unwrap(),
        ]);
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(": OK"),
            "openssl verify {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // No key file anywhere; the keys are in the tokens, sensitive and never extractable.
    for dir in [&hq, &site] {
        let keys = dir.join("keys");
        assert!(
            !keys.exists() || std::fs::read_dir(&keys).unwrap().next().is_none(),
            "{} holds key files",
            keys.display()
        );
    }
    for (token, labels) in [
        (
            "stamp-hq",
            &["oem-root", "hq-authority-signing", "hq-authority-key-agreement"][..],
        ),
        (
            "stamp-site",
            &[
                "site-identity-signing",
                "site-identity-key-agreement",
                "site-issuing-ca",
            ][..],
        ),
    ] {
        let keys = private_keys(&hsm.objects(token));
        let mut found: Vec<&str> = keys.iter().map(|(l, _)| l.as_str()).collect();
        found.sort();
        let mut want = labels.to_vec();
        want.sort();
        assert_eq!(found, want, "private keys in {token}");
        for (label, block) in &keys {
            for flag in ["sensitive", "always sensitive", "never extractable", "local"] {
                assert!(block.contains(flag), "{token}/{label} is not {flag}:\n{block}");
            }
        }
    }

    // An entitlement: sealed with HQ's signing key in its token, opened with the site's
    // key-agreement key in its token (ECDH inside the token).
    hsm.cmd()
        .hq("entitle")
        .dir(&hq)
        .args(&["--site", "plant-7", "--product", "thermostat-2"])
        .args(&["--quota", "1000", "-o", s(&package)])
        .json();
    let imported = hsm.cmd().site("import").dir(&site).arg(&package).json();
    assert!(imported.to_string().contains("thermostat-2"), "{imported}");

    // Devices issued with the issuing CA key in the token; the audit bundle signed with the site
    // identity key in its token and opened at HQ with HQ's key-agreement key in its token.
    let csrs = hsm.path("csrs");
    std::fs::create_dir_all(&csrs).unwrap();
    for i in 0..3 {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        std::fs::write(csrs.join(format!("d{i}.der")), csr.der()).unwrap();
    }
    let out = hsm.path("devices");
    let issued = hsm
        .cmd()
        .site("issue")
        .dir(&site)
        .args(&["--entitlement", "plant-7.1", "--csr", s(&csrs)])
        .args(&["-o", s(&out)])
        .json();
    assert_eq!(issued["issued"], 3);
    let ca = install["certs"]["site-issuing-ca"].as_str().unwrap();
    for d in issued["devices"].as_array().unwrap() {
        let cert = d["certificate"].as_str().unwrap();
        let v = crate::common::openssl(&[
            "verify",
            "-x509_strict",
            "-CAfile",
            s(&root),
            "-untrusted",
            ca,
            cert,
        ]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }
    let bundle = hsm.path("audit.bundle");
    hsm.cmd()
        .site("export-audit")
        .dir(&site)
        .args(&["-o", s(&bundle)])
        .json();
    let report = hsm.cmd().hq("reconcile").dir(&hq).arg(&bundle).json();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["devices_recorded"], 3, "{report}");
}

#[test]
fn demo_runs_with_its_keys_in_a_token() {
    let hsm = Hsm::new(&["demo"], None);
    let dir = hsm.path("demo");
    let report = hsm
        .cmd()
        .arg("demo")
        .args(&["--dir", s(&dir), "--key-store", "pkcs11:token=demo"])
        .json();
    let root = report["root_cert"].as_str().unwrap();
    let ca = report["site_issuing_ca_cert"].as_str().unwrap();
    let out = crate::common::openssl(&["verify", "-x509_strict", "-CAfile", root, ca]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(private_keys(&hsm.objects("demo")).len(), 6);
}

#[test]
fn token_errors_are_clear_and_leave_nothing_behind() {
    let hsm = Hsm::new(&["errors"], None);
    let init = |dir: &str, store: &str| {
        vec![
            "hq".to_owned(),
            "init".into(),
            "--dir".into(),
            s(&hsm.path(dir)).to_owned(),
            "--org".into(),
            "Acme".into(),
            "--key-store".into(),
            store.to_owned(),
        ]
    };
    let run = |args: &[String]| {
        hsm.cmd()
            .args(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
    };

    // Wrong PIN.
    let wrong = secret_file(hsm.tmp.path(), "wrong-pin", "9999");
    let args = init("hq1", "pkcs11:token=errors");
    let out = hsm
        .cmd_with_pin(&wrong)
        .args(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .output();
    fails(&out, "wrong PIN for PKCS#11 token \"errors\"");
    assert!(!hsm.path("hq1").exists());

    // A PIN file others can read.
    let loose = secret_file(hsm.tmp.path(), "loose-pin", USER_PIN);
    std::fs::set_permissions(&loose, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = hsm
        .cmd_with_pin(&loose)
        .args(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .output();
    fails(&out, "is readable by group or others");

    // No such token.
    fails(
        &run(&init("hq2", "pkcs11:token=nope")),
        "token \"nope\" not found",
    );

    // No such module; no module at all.
    let mut with_module = vec!["--pkcs11-module".to_owned(), "/nonexistent/module.so".into()];
    with_module.extend(init("hq3", "pkcs11:token=errors"));
    fails(
        &run(&with_module),
        "PKCS#11 module /nonexistent/module.so not found",
    );
    let mut cmd = Command::cargo_bin("stamp").unwrap();
    let out = cmd
        .env_remove("STAMP_PKCS11_MODULE")
        .env_remove("STAMP_PASSPHRASE_FILE")
        .arg("--pkcs11-pin-file")
        .arg(&hsm.pin)
        .args(init("hq4", "pkcs11:token=errors"))
        .write_stdin(Vec::new())
        .output()
        .unwrap();
    fails(&out, "no PKCS#11 module configured");

    // A URI carrying a PIN is refused outright.
    let out = run(&init("hq5", "pkcs11:token=errors?pin-value=1234"));
    assert_eq!(out.status.code(), Some(2), "usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pin-value"));

    // Nothing was created in the token by any of these.
    assert!(private_keys(&hsm.objects("errors")).is_empty());

    // Keys in the token, then the same command again: the labels exist, nothing is replaced.
    let ok = run(&init("hq6", "pkcs11:token=errors"));
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    fails(
        &run(&init("hq7", "pkcs11:token=errors")),
        "already holds an object labelled \"oem-root\"",
    );
    assert_eq!(private_keys(&hsm.objects("errors")).len(), 3);
    assert!(!hsm.path("hq7").exists());
}

#[test]
fn a_token_without_ecdh_is_reported_and_the_keys_made_before_are_removed() {
    // SoftHSM2 configured to offer ECDSA only: the root and authority signing keys can be made,
    // the authority key-agreement key cannot.
    let hsm = Hsm::new(&["ecdsa-only"], Some("CKM_ECDSA,CKM_EC_KEY_PAIR_GEN"));
    let out = hsm
        .cmd()
        .hq("init")
        .dir(hsm.path("hq"))
        .args(&["--org", "Acme", "--key-store", "pkcs11:token=ecdsa-only"])
        .output();
    fails(&out, "does not support CKM_ECDH1_DERIVE");
    assert!(!hsm.path("hq").exists());
    assert!(
        private_keys(&hsm.objects("ecdsa-only")).is_empty(),
        "the keys made before the failure were destroyed"
    );
}
