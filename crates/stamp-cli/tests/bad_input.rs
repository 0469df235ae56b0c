//! Every bad input to the ceremony: a specific error, exit code 1, and state left exactly as it was.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::*;

/// Enrolling `request` must fail with `needle` and change nothing at HQ, leaving no credentials.
fn enroll_fails(c: &Ceremony, request: &Path, needle: &str) {
    let before = snapshot(&c.hq);
    let out = c.tmp.path().join("refused-credentials.json");
    stamp(&c.pass)
        .hq("enroll-site")
        .dir(&c.hq)
        .arg(request)
        .args(&["-o", s(&out)])
        .arg("--yes")
        .fails(needle);
    assert_eq!(
        snapshot(&c.hq),
        before,
        "HQ state changed after a refused enrollment"
    );
    assert!(!out.exists(), "a refused enrollment left a credentials file");
}

/// Installing `creds` at `site` must fail with `needle` and change nothing at the site.
fn install_fails(c: &Ceremony, site: &Path, creds: &Path, extra: &[&str], needle: &str) {
    let before = snapshot(site);
    let mut args = vec!["site", "install", "--dir", s(site), s(creds)];
    if extra.is_empty() {
        args.extend([
            "--root-fingerprint",
            &*Box::leak(c.root_fingerprint().into_boxed_str()),
        ]);
    } else {
        args.extend_from_slice(extra);
    }
    stamp(&c.pass).args(&args).fails(needle);
    assert_eq!(
        snapshot(site),
        before,
        "site state changed after refused credentials"
    );
}

fn edit_json(path: &Path, out: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(out, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Flips one bit inside the base64 body of a PEM field, `from_end` bytes before the end of the DER.
fn flip_in_pem(pem_text: &str, from_end: usize) -> String {
    let block = ::pem::parse(pem_text).unwrap();
    let mut der = block.contents().to_vec();
    let i = der.len() - from_end;
    der[i] ^= 0x01;
    ::pem::encode(&::pem::Pem::new(block.tag(), der))
}

#[test]
fn tampered_request_is_refused() {
    let c = ceremony(false);
    // A fresh site to make requests from (the first is enrolled already).
    let (_, req2) = c.init_site("plant-8", "site2");
    let bad = c.tmp.path().join("bad.json");

    // Re-addressed to another site ID: the binding signature breaks.
    edit_json(&req2, &bad, |v| v["site_id"] = "plant-9".into());
    enroll_fails(&c, &bad, "binding signature does not verify");
    // Issuing CA CSR swapped for another site's: binding breaks.
    let req1: serde_json::Value = serde_json::from_slice(&std::fs::read(&c.request).unwrap()).unwrap();
    edit_json(&req2, &bad, |v| {
        v["issuing_ca_csr"] = req1["issuing_ca_csr"].clone()
    });
    enroll_fails(&c, &bad, "binding signature does not verify");
    // A CSR whose signature does not verify.
    edit_json(&req2, &bad, |v| {
        let csr = v["identity_signing_csr"].as_str().unwrap().to_owned();
        v["identity_signing_csr"] = flip_in_pem(&csr, 3).into();
    });
    enroll_fails(&c, &bad, "signature does not verify");
    // A key-agreement key replaced.
    edit_json(&req2, &bad, |v| {
        v["identity_key_agreement_public_key"] = req1["identity_key_agreement_public_key"].clone()
    });
    enroll_fails(&c, &bad, "binding signature does not verify");
    // A binding signature that is not base64.
    edit_json(&req2, &bad, |v| v["binding_signature"] = "***".into());
    enroll_fails(&c, &bad, "binding signature does not verify");
    // Not PEM at all.
    edit_json(&req2, &bad, |v| v["issuing_ca_csr"] = "hello".into());
    enroll_fails(&c, &bad, "issuing_ca_csr: not a valid PEM block");
    // An extra field.
    edit_json(&req2, &bad, |v| v["quota"] = 1_000_000.into());
    enroll_fails(&c, &bad, "unknown field `quota`");
    // An unknown version (no downgrade or guessing).
    edit_json(&req2, &bad, |v| v["version"] = 2.into());
    enroll_fails(&c, &bad, "unsupported stamp.site-request version 2");
    // Truncated.
    let bytes = std::fs::read(&req2).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    enroll_fails(&c, &bad, "not a stamp file");
    // Trailing bytes.
    let mut t = bytes.clone();
    t.extend_from_slice(b"{}");
    std::fs::write(&bad, &t).unwrap();
    enroll_fails(&c, &bad, "trailing bytes after the JSON object");
    // Oversized.
    std::fs::write(&bad, vec![b' '; 300 * 1024]).unwrap();
    enroll_fails(&c, &bad, "larger than");
    // The untouched request still enrolls afterwards.
    let creds2 = c.tmp.path().join("creds2.json");
    stamp(&c.pass)
        .hq("enroll-site")
        .dir(&c.hq)
        .arg(&req2)
        .args(&["-o", s(&creds2)])
        .arg("--yes")
        .json();
}

#[test]
fn a_site_id_is_enrolled_once() {
    let c = ceremony(false);
    enroll_fails(&c, &c.request, "site plant-7 is already enrolled");
    // Same site ID, new keys: still refused.
    let (_, req) = c.init_site("plant-7", "site-again");
    enroll_fails(&c, &req, "site plant-7 is already enrolled");
}

#[test]
fn fingerprint_must_match_and_be_confirmed() {
    let c = ceremony(false);
    let (_, req2) = c.init_site("plant-8", "site2");
    let before = snapshot(&c.hq);
    let out = c.tmp.path().join("c2.json");
    stamp(&c.pass)
        .hq("enroll-site")
        .dir(&c.hq)
        .arg(&req2)
        .args(&["-o", s(&out), "--fingerprint", "0000-0000-0000-0000-0000"])
        .fails_with("fingerprint-mismatch");
    // No terminal to confirm on and neither --fingerprint nor --yes.
    stamp(&c.pass)
        .hq("enroll-site")
        .dir(&c.hq)
        .arg(&req2)
        .args(&["-o", s(&out)])
        .fails("--fingerprint");
    assert_eq!(snapshot(&c.hq), before);
    assert!(!out.exists());
}

#[test]
fn wrong_passphrase_and_readable_key_files_are_refused() {
    let c = ceremony(false);
    let (_, req2) = c.init_site("plant-8", "site2");
    let wrong = secret_file(c.tmp.path(), "wrong", "not the passphrase");
    let before = snapshot(&c.hq);
    let out = c.tmp.path().join("c2.json");
    stamp(&wrong)
        .hq("enroll-site")
        .dir(&c.hq)
        .arg(&req2)
        .args(&["-o", s(&out)])
        .arg("--yes")
        .fails("wrong passphrase");
    assert_eq!(snapshot(&c.hq), before);
    assert!(!out.exists());

    let key = c.hq.join("keys/oem-root.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = snapshot(&c.hq);
    stamp(&c.pass)
        .hq("enroll-site")
        .dir(&c.hq)
        .arg(&req2)
        .args(&["-o", s(&out)])
        .arg("--yes")
        .fails("readable by group or others");
    assert_eq!(snapshot(&c.hq), before);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A passphrase file others can read is refused too.
    let loose = secret_file(c.tmp.path(), "loose", "demo passphrase 1");
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    stamp(&loose)
        .hq("enroll-site")
        .dir(&c.hq)
        .arg(&req2)
        .args(&["-o", s(&out)])
        .arg("--yes")
        .fails("passphrase file");
    // A new key store needs a passphrase of at least 8 characters.
    let short = secret_file(c.tmp.path(), "short", "abc");
    stamp(&short)
        .hq("init")
        .dir(c.tmp.path().join("hq2"))
        .args(&["--org", "X"])
        .fails("too short");
    assert!(!c.tmp.path().join("hq2").exists());
}

#[test]
fn files_of_the_wrong_kind_are_refused() {
    let c = ceremony(false);
    let out = c.tmp.path().join("x.json");
    enroll_fails(
        &c,
        &c.credentials,
        "this is a stamp.site-credentials file, expected a stamp.site-request file",
    );
    enroll_fails(&c, &c.root_cert(), "not a stamp file");
    let junk = c.tmp.path().join("junk.bin");
    std::fs::write(&junk, [0u8, 159, 146, 150]).unwrap();
    enroll_fails(&c, &junk, "not a stamp file");
    install_fails(
        &c,
        &c.site,
        &c.request,
        &[],
        "this is a stamp.site-request file, expected a stamp.site-credentials file",
    );
    // A missing file.
    stamp(&c.pass)
        .hq("enroll-site")
        .dir(&c.hq)
        .arg("/nonexistent")
        .args(&["-o", s(&out)])
        .arg("--yes")
        .fails("cannot open /nonexistent");
    // Not an HQ / site directory.
    stamp(&c.pass)
        .hq("enroll-site")
        .dir(&c.site)
        .arg(&c.request)
        .args(&["-o", s(&out)])
        .arg("--yes")
        .fails_with("not-hq-dir");
    install_fails(&c, &c.hq, &c.credentials, &[], "is not a stamp site directory");
    // Directories that exist are never overwritten.
    let before = snapshot(&c.hq);
    stamp(&c.pass)
        .hq("init")
        .dir(&c.hq)
        .args(&["--org", "Other"])
        .fails("not empty");
    assert_eq!(snapshot(&c.hq), before);
    stamp(&c.pass)
        .site("init")
        .dir(&c.site)
        .args(&["--site-id", "plant-7", "-o", s(&out)])
        .fails("not empty");
    // A bad site ID is a usage error (exit code 2), caught before anything is created.
    let out3 = stamp(&c.pass)
        .site("init")
        .dir(c.tmp.path().join("s3"))
        .args(&["--site-id", "Bad ID", "-o", s(&out)])
        .output();
    assert_eq!(out3.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out3.stderr).contains("invalid site ID"));
    assert!(!c.tmp.path().join("s3").exists());
}

#[test]
fn tampered_credentials_are_refused() {
    let c = ceremony(false);
    let bad = c.tmp.path().join("bad-creds.json");
    // A flipped bit in the issuing CA certificate's signature.
    edit_json(&c.credentials, &bad, |v| {
        let pem_text = v["site_issuing_ca"].as_str().unwrap().to_owned();
        v["site_issuing_ca"] = flip_in_pem(&pem_text, 5).into();
    });
    install_fails(&c, &c.site, &bad, &[], "signature does not verify");
    // A flipped bit inside the signed part (the subject key).
    edit_json(&c.credentials, &bad, |v| {
        let pem_text = v["site_identity_signing"].as_str().unwrap().to_owned();
        v["site_identity_signing"] = flip_in_pem(&pem_text, 120).into();
    });
    install_fails(&c, &c.site, &bad, &[], "certificate");
    // Certificates moved between roles.
    edit_json(&c.credentials, &bad, |v| {
        v["hq_authority_signing"] = v["site_identity_signing"].clone()
    });
    install_fails(
        &c,
        &c.site,
        &bad,
        &[],
        "does not match the hq-authority-signing profile",
    );
    // Another root: a second HQ signs nothing here, its root pinned wrongly.
    let other_hq = c.tmp.path().join("hq-other");
    let other = stamp(&c.pass)
        .hq("init")
        .dir(&other_hq)
        .args(&["--org", "Acme Sensors"])
        .json();
    let other_root = std::fs::read_to_string(other["root_cert"].as_str().unwrap()).unwrap();
    edit_json(&c.credentials, &bad, |v| {
        v["oem_root"] = other_root.clone().into()
    });
    install_fails(&c, &c.site, &bad, &[], "does not match the pinned");
    // Same organisation name, so the names chain; the signatures do not.
    install_fails(&c, &c.site, &bad, &["--yes"], "signature does not verify");
    // The right file with the wrong pin.
    let other_fp = other["root_fingerprint"].as_str().unwrap().to_owned();
    install_fails(
        &c,
        &c.site,
        &c.credentials,
        &["--root-fingerprint", &other_fp],
        "does not match the pinned",
    );
    // A malformed pin: a usage error (exit 2), nothing stored.
    let before = snapshot(&c.site);
    stamp(&c.pass)
        .site("install")
        .dir(&c.site)
        .arg(&c.credentials)
        .args(&["--root-fingerprint", "12:34"])
        .usage_fails("64 hex digits");
    assert_eq!(snapshot(&c.site), before);
    // No pin, no terminal, no --yes: refused, nothing stored.
    install_fails(&c, &c.site, &c.credentials, &["--json"], "--root-fingerprint");
    // Truncated, trailing bytes, extra fields, wrong version.
    let bytes = std::fs::read(&c.credentials).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() - 40]).unwrap();
    install_fails(&c, &c.site, &bad, &[], "not a stamp file");
    let mut t = bytes.clone();
    t.extend_from_slice(b"garbage");
    std::fs::write(&bad, &t).unwrap();
    install_fails(&c, &c.site, &bad, &[], "trailing bytes after the JSON object");
    edit_json(&c.credentials, &bad, |v| v["version"] = 0.into());
    install_fails(
        &c,
        &c.site,
        &bad,
        &[],
        "unsupported stamp.site-credentials version 0",
    );
    // After all that, the genuine credentials install.
    let fp = c.root_fingerprint();
    stamp(&c.pass)
        .site("install")
        .dir(&c.site)
        .arg(&c.credentials)
        .args(&["--root-fingerprint", &fp])
        .json();
    // ...once.
    install_fails(
        &c,
        &c.site,
        &c.credentials,
        &[],
        "already has credentials installed",
    );
}

#[test]
fn credentials_for_other_keys_or_sites_are_refused() {
    let c = ceremony(false);
    // Same site ID, different keys (a re-initialised or impostor site).
    let (twin, _) = c.init_site("plant-7", "twin");
    install_fails(&c, &twin, &c.credentials, &[], "is not for this site's key");
    // Another site's credentials.
    let (other, _) = c.init_site("plant-9", "other");
    install_fails(
        &c,
        &other,
        &c.credentials,
        &[],
        "credentials are for site plant-7, this is site plant-9",
    );
    // Relabelled to the other site: the certificates still name plant-7.
    let bad = c.tmp.path().join("relabelled.json");
    edit_json(&c.credentials, &bad, |v| v["site_id"] = "plant-9".into());
    install_fails(&c, &other, &bad, &[], "names the wrong holder");
}

#[test]
fn json_errors_are_machine_readable() {
    let c = ceremony(false);
    let out = stamp(&c.pass)
        .arg("--json")
        .hq("enroll-site")
        .dir(&c.hq)
        .arg(&c.request)
        .args(&["-o", s(&c.tmp.path().join("again.json"))])
        .arg("--yes")
        .output();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["error"].as_str().unwrap().contains("already enrolled"));
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let c = ceremony(true);
    for json in [false, true] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut args = vec!["hq", "sites", "--dir", s(&c.hq)];
        if json {
            args.insert(0, "--json");
        }
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_stamp"))
            .args(&args)
            .env("STAMP_PASSPHRASE_FILE", &c.pass)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains("panicked"), "json {json}: {stderr}");
        assert_ne!(
            o.status.code(),
            Some(0),
            "json {json}: a failed write is not success"
        );
        assert_ne!(o.status.code(), Some(101), "json {json}: {stderr}");
    }
}
