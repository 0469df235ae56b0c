//! Shared helpers for tests that run the real `stamp` binary.
#![allow(
    dead_code,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;

/// Runs stamp with the given passphrase file and arguments.
pub fn stamp(pass: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::cargo_bin("stamp").unwrap();
    cmd.env_remove("STAMP_PASSPHRASE_FILE")
        .arg("--passphrase-file")
        .arg(pass)
        .args(args);
    cmd.write_stdin(Vec::new());
    cmd.output().unwrap()
}

/// Runs stamp, asserts success, parses its JSON output.
pub fn stamp_json(pass: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = stamp(pass, &all);
    assert!(
        out.status.success(),
        "stamp {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs stamp, asserts failure with exit code 1 and that the error (stderr, or stdout with
/// `--json`) contains `needle`.
pub fn stamp_fails(pass: &Path, args: &[&str], needle: &str) {
    let out = stamp(pass, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "stamp {args:?} should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(1), "error exit code");
    assert!(
        stderr.contains(needle),
        "stamp {args:?}: expected error containing {needle:?}, got:\n{stderr}"
    );
}

/// Writes a 0600 passphrase file.
pub fn passphrase_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .unwrap();
    writeln!(f, "{text}").unwrap();
    p
}

/// Every file under `dir` with its contents, skipping SQLite's transient -wal/-shm files, so two
/// snapshots are equal exactly when the state did not change.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(base: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let name = p.to_string_lossy().into_owned();
            if p.is_dir() {
                walk(base, &p, out);
            } else if !name.ends_with("-wal") && !name.ends_with("-shm") {
                out.insert(
                    p.strip_prefix(base).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// A finished ceremony in a temp directory: HQ, one enrolled and installed site.
pub struct Ceremony {
    pub tmp: tempfile::TempDir,
    pub pass: PathBuf,
    pub hq: PathBuf,
    pub site: PathBuf,
    pub request: PathBuf,
    pub credentials: PathBuf,
    pub hq_init: serde_json::Value,
    pub site_init: serde_json::Value,
    pub enroll: serde_json::Value,
    pub install: Option<serde_json::Value>,
}

impl Ceremony {
    pub fn root_fingerprint(&self) -> String {
        self.hq_init["root_fingerprint"].as_str().unwrap().to_owned()
    }
    pub fn root_cert(&self) -> PathBuf {
        PathBuf::from(self.hq_init["root_cert"].as_str().unwrap())
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// HQ init, site init, enroll; install too when `install`.
pub fn ceremony(install: bool) -> Ceremony {
    let tmp = tempfile::tempdir().unwrap();
    let pass = passphrase_file(tmp.path(), "pass", "demo passphrase 1");
    let hq = tmp.path().join("hq");
    let site = tmp.path().join("site");
    let request = tmp.path().join("request.json");
    let credentials = tmp.path().join("credentials.json");
    let hq_init = stamp_json(&pass, &["hq", "init", "--dir", s(&hq), "--org", "Acme Sensors"]);
    let site_init = stamp_json(
        &pass,
        &[
            "site",
            "init",
            "--dir",
            s(&site),
            "--site-id",
            "plant-7",
            "-o",
            s(&request),
        ],
    );
    let fp = site_init["request_fingerprint"].as_str().unwrap().to_owned();
    let enroll = stamp_json(
        &pass,
        &[
            "hq",
            "enroll-site",
            "--dir",
            s(&hq),
            s(&request),
            "-o",
            s(&credentials),
            "--fingerprint",
            &fp,
        ],
    );
    let mut c = Ceremony {
        tmp,
        pass,
        hq,
        site,
        request,
        credentials,
        hq_init,
        site_init,
        enroll,
        install: None,
    };
    if install {
        let root = c.root_fingerprint();
        c.install = Some(stamp_json(
            &c.pass,
            &[
                "site",
                "install",
                "--dir",
                s(&c.site),
                s(&c.credentials),
                "--root-fingerprint",
                &root,
            ],
        ));
    }
    c
}

/// Runs openssl; panics with a clear message when it is missing.
pub fn openssl(args: &[&str]) -> Output {
    std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is required by this test ({e}); run the README's test command, which installs it")
        })
}
