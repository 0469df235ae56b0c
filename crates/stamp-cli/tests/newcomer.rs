//! The newcomer's path (issue #15): the README's walkthrough runs as pasted (it is
//! `docs/walkthrough.sh`, run here from a fresh directory), no command replaces an existing
//! file without --force, HQ writes credentials and packages again from its records, `site issue` fails before it logs anything, usage errors are usage errors (exit 2, JSON
//! with `--json`), and each flag means one thing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{ceremony, s, snapshot, stamp, stamp_bare, write_csr_dir};

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

#[test]
fn the_walkthrough_runs_from_a_fresh_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("walk");
    let out = Command::new("sh")
        .arg(repo_file("docs/walkthrough.sh"))
        .arg(&work)
        .env("STAMP", assert_cmd::cargo::cargo_bin("stamp"))
        .env_remove("STAMP_PASSPHRASE_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sh runs docs/walkthrough.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "docs/walkthrough.sh failed ({:?}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // Every step ran: 100 devices over the service, 3 CSRs offline, both bundles clean, the
    // genuine device admitted and the stolen one refused.
    assert!(stdout.contains("Provisioned 100 of 100 devices"), "{stdout}");
    assert!(stdout.contains("Issued 3 of 3 devices"), "{stdout}");
    assert_eq!(
        stdout
            .matches("OK: every entry kept the site's entitlements.")
            .count(),
        2,
        "{stdout}"
    );
    assert!(stdout.contains("GENUINE (registered)"), "{stdout}");
    assert!(stdout.contains("REFUSED [revoked]"), "{stdout}");
    assert!(stdout.contains("Walkthrough done"), "{stdout}");
    // The service was stopped before the offline steps (they would fail on its engine lock),
    // and it logged that it stopped.
    let log = std::fs::read_to_string(work.join("serve.log")).unwrap();
    assert!(log.contains("site service stopped"), "{log}");
    // HQ and the site agree on the quota: 1000 granted + 500 amended, 103 issued.
    let status = stamp(&work.join("pass"))
        .site("status")
        .dir(work.join("site"))
        .json();
    let text = status.to_string();
    assert!(text.contains("1500"), "{text}");
    let hq = stamp(&work.join("pass"))
        .hq("entitlements")
        .dir(work.join("hq"))
        .json();
    assert!(hq.to_string().contains("1500"), "{hq}");
}

/// The README shows the walkthrough verbatim, between its marker and the end of the code block.
#[test]
fn the_readme_shows_the_walkthrough_verbatim() {
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    let script = std::fs::read_to_string(repo_file("docs/walkthrough.sh")).unwrap();
    let marker = "<!-- docs/walkthrough.sh, verbatim (a test checks it) -->\n```sh\n";
    let start = readme.find(marker).expect("README has the walkthrough marker") + marker.len();
    let len = readme[start..].find("\n```\n").expect("the code block ends") + 1;
    assert_eq!(
        &readme[start..start + len],
        script,
        "README.md's walkthrough differs from docs/walkthrough.sh: paste the script again"
    );
}

#[test]
fn every_command_refuses_to_replace_an_output() {
    let c = ceremony(true);
    c.entitle("e", &["--quota", "5"]);
    let t = c.tmp.path();
    let taken = t.join("taken");
    std::fs::write(&taken, b"keep me").unwrap();
    // Output directories that already hold files.
    let station = t.join("station");
    std::fs::create_dir(&station).unwrap();
    std::fs::write(station.join("station.key"), b"keep me").unwrap();
    let csrs = t.join("csrs");
    write_csr_dir(&csrs, 1, false);
    let certs = t.join("certs");
    std::fs::create_dir(&certs).unwrap();
    let first_csr = std::fs::read_dir(&csrs).unwrap().next().unwrap().unwrap().path();
    let stem = first_csr.file_stem().unwrap().to_str().unwrap().to_owned();
    std::fs::write(certs.join(format!("{stem}.crt.pem")), b"keep me").unwrap();
    let full = t.join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("something"), b"keep me").unwrap();
    let (_, request) = c.init_site("plant-9", "plant-9");

    let before = (snapshot(&c.hq), snapshot(&c.site));
    let o = s(&taken);
    let hq = |sub: &str| c.stamp().hq(sub).dir(&c.hq);
    let site = |sub: &str| c.stamp().site(sub).dir(&c.site);
    let runs = vec![
        hq("entitle").args(&[
            "--site",
            "plant-7",
            "--product",
            "thermo-2",
            "--quota",
            "5",
            "-o",
            o,
        ]),
        hq("amend").args(&["--entitlement", "plant-7.1", "--add-quota", "1", "-o", o]),
        hq("enroll-site").args(&[s(&request), "--fingerprint", "0000", "-o", o]),
        hq("revoke-device").args(&["--entitlement", "plant-7.1", "--reason", "x", "--site-update", o]),
        hq("export").args(&["--format", "registry", "-o", o]),
        hq("export-package").args(&["--site", "plant-7", "--sequence", "1", "-o", o]),
        hq("export-credentials").args(&["--site", "plant-7", "-o", o]),
        hq("crl").args(&["-o", o]),
        hq("cloud-verification-cert").args(&["--code", "abc", "-o", o]),
        hq("firmware-key-digest").args(&["--key", "fw", "-o", o]),
        hq("sign-firmware").args(&[
            "--key",
            "fw",
            "--format",
            "mcuboot",
            "--version",
            "1.0.0",
            "-o",
            o,
            o,
        ]),
        c.stamp()
            .site("init")
            .dir(t.join("new-site"))
            .args(&["--site-id", "plant-8", "-o", o]),
        site("export-audit").args(&["-o", o]),
        site("crl").args(&["-o", o]),
        site("cloud-verification-cert").args(&["--code", "abc", "-o", o]),
        site("add-station").args(&["--name", "line-9", "-o", s(&station)]),
        site("issue").args(&["--entitlement", "plant-7.1", "--csr", s(&csrs), "-o", s(&certs)]),
        site("hand-out").args(&["--entitlement", "plant-7.1", "-o", s(&full)]),
        site("serve").args(&["--listen", "127.0.0.1:0", "--write-cert", o]),
        c.stamp().device("simulate").args(&[
            "--server",
            "https://127.0.0.1:1",
            "--station-dir",
            s(&station),
            "--count",
            "1",
            "-o",
            s(&full),
        ]),
        c.stamp().cloud("gateway").args(&[
            "--registry",
            o,
            "--trust-registry-root",
            "--listen",
            "127.0.0.1:0",
            "--write-server-cert",
            o,
        ]),
    ];
    for cmd in runs {
        let v = cmd.fails_with("output-exists");
        assert!(v["error"].as_str().unwrap().contains("--force"), "{v}");
    }
    assert_eq!(std::fs::read(&taken).unwrap(), b"keep me");
    assert_eq!(std::fs::read(station.join("station.key")).unwrap(), b"keep me");
    assert_eq!(
        std::fs::read(certs.join(format!("{stem}.crt.pem"))).unwrap(),
        b"keep me"
    );
    assert_eq!(std::fs::read_dir(&full).unwrap().count(), 1);
    assert!(!t.join("new-site").exists());
    // Nothing was done: no package sealed, no registry sequence or CRL number spent, no log entry.
    assert!(
        before == (snapshot(&c.hq), snapshot(&c.site)),
        "a refused command changed state"
    );

    // --force replaces it.
    let v = hq("crl").args(&["-o", o, "--force"]).json();
    assert_eq!(v["number"], 1, "{v}");
    assert!(std::fs::read_to_string(&taken)
        .unwrap()
        .contains("BEGIN X509 CRL"));
}

#[test]
fn hq_writes_credentials_and_packages_again_from_its_records() {
    let c = ceremony(true);
    let (pkg, _) = c.entitle("e", &["--quota", "5"]);
    let t = c.tmp.path();
    let creds = t.join("credentials-again.json");
    // No passphrase is needed: the file holds certificates only.
    let v = stamp_bare()
        .hq("export-credentials")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "-o", s(&creds)])
        .json();
    assert_eq!(v["site_id"], "plant-7");
    assert_eq!(v["request_fingerprint"], c.site_init["request_fingerprint"]);
    assert_eq!(
        std::fs::read(&creds).unwrap(),
        std::fs::read(&c.credentials).unwrap()
    );
    let again = t.join("e-again.cose");
    c.stamp()
        .hq("export-package")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--sequence", "1", "-o", s(&again)])
        .json();
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&pkg).unwrap());
    // A site HQ never enrolled is refused by its code.
    stamp_bare()
        .hq("export-credentials")
        .dir(&c.hq)
        .args(&["--site", "nosuch", "-o", s(&t.join("x.json"))])
        .fails_with("unknown-site");
}

#[test]
fn site_issue_fails_before_it_logs_anything() {
    let c = ceremony(true);
    c.entitle("e", &["--quota", "5"]);
    let t = c.tmp.path();
    let csrs = t.join("csrs");
    write_csr_dir(&csrs, 3, false);
    let out = t.join("certs");
    let before = snapshot(&c.site);
    // A typo in the entitlement: one refusal, not one per CSR in the permanent log.
    let v = c
        .stamp()
        .site("issue")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.l", "--csr", s(&csrs), "-o", s(&out)])
        .fails_with("unknown-entitlement");
    assert!(v["error"].as_str().unwrap().contains("site status"), "{v}");
    // A CSR directory that does not exist, and one that cannot be read.
    c.stamp()
        .site("issue")
        .dir(&c.site)
        .args(&[
            "--entitlement",
            "plant-7.1",
            "--csr",
            s(&t.join("nosuch")),
            "-o",
            s(&out),
        ])
        .fails("does not exist");
    // A directory with no CSR file in it.
    let empty = t.join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), b"no CSRs here").unwrap();
    c.stamp()
        .site("issue")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.1", "--csr", s(&empty), "-o", s(&out)])
        .fails("no CSR files");
    assert!(
        before == snapshot(&c.site),
        "a refused run changed the site (its log)"
    );
    assert!(!out.exists(), "a failed run left an output directory");
}

#[test]
fn site_issue_names_each_refused_file() {
    let c = ceremony(true);
    c.entitle("e", &["--quota", "1"]);
    let t = c.tmp.path();
    let csrs = t.join("csrs");
    write_csr_dir(&csrs, 2, false);
    std::fs::write(csrs.join("zz-garbage.csr"), b"not a CSR").unwrap();
    let out = t.join("certs");
    let (rc, v) = c
        .stamp()
        .site("issue")
        .dir(&c.site)
        .args(&[
            "--entitlement",
            "plant-7.1",
            "--csr",
            s(&csrs),
            "-o",
            s(&out),
            "--jobs",
            "1",
        ])
        .code_json();
    assert_eq!(rc, Some(1), "{v}");
    assert_eq!(v["issued"], 1, "{v}");
    let refused = v["refused_files"].as_array().unwrap();
    assert_eq!(refused.len(), 2, "{v}");
    let reasons: Vec<(&str, &str)> = refused
        .iter()
        .map(|r| (r["csr"].as_str().unwrap(), r["reason"].as_str().unwrap()))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|(f, r)| f.ends_with("zz-garbage.csr") && *r == "malformed-csr"),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|(_, r)| *r == "quota-exhausted"),
        "{reasons:?}"
    );
    // The text summary names them too.
    let more = t.join("more");
    std::fs::create_dir(&more).unwrap();
    std::fs::write(more.join("bad.csr"), b"not a CSR either").unwrap();
    let o = c
        .stamp()
        .site("issue")
        .dir(&c.site)
        .args(&[
            "--entitlement",
            "plant-7.1",
            "--csr",
            s(&more),
            "-o",
            s(&t.join("none")),
        ])
        .output();
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{text}");
    assert!(text.contains("bad.csr: malformed-csr"), "{text}");
    // Nothing issued: the directory this run would have made is not left behind.
    assert!(!t.join("none").exists());
}

#[test]
fn usage_errors_exit_2_and_are_json_with_json() {
    let c = ceremony(false);
    // Found by the parser: a missing flag.
    let (rc, v) = c.stamp().hq("entitle").dir(&c.hq).code_json();
    assert_eq!(rc, Some(2), "{v}");
    assert_eq!(v["code"], "usage", "{v}");
    assert!(v["error"].as_str().unwrap().contains("--site"), "{v}");
    assert!(
        v["usage"].as_str().unwrap().starts_with("stamp hq entitle"),
        "{v}"
    );
    // Found after parsing: a malformed value.
    let (rc, v) = c
        .stamp()
        .hq("revoke-device")
        .dir(&c.hq)
        .args(&["--cert-sha256", "zz", "--reason", "lost"])
        .code_json();
    assert_eq!((rc, v["code"].as_str()), (Some(2), Some("usage")), "{v}");
    let (rc, v) = stamp_bare()
        .cloud("verify")
        .args(&["--registry", "r.cose", "--root-fingerprint", "nothex", "cert.pem"])
        .code_json();
    assert_eq!((rc, v["code"].as_str()), (Some(2), Some("usage")), "{v}");
    // Without --json, clap's own text on stderr, still 2.
    let o = c.stamp().hq("entitle").dir(&c.hq).output();
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    // --help is not an error.
    let o = stamp_bare().arg("--json").args(&["hq", "--help"]).output();
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn hq_keys_offers_only_what_hq_generates() {
    let o = stamp_bare().args(&["hq", "entitle", "--help"]).output();
    let help = String::from_utf8_lossy(&o.stdout);
    // The flag's own paragraph, up to the next flag.
    let at = help.find("--hq-keys <TYPE>").expect("--hq-keys is offered");
    let paragraph = &help[at..at + help[at..].find("\n      --").unwrap()];
    assert!(paragraph.contains("p256, p384 or"), "{paragraph}");
    assert!(!paragraph.contains("rsa"), "{paragraph}");
    let c = ceremony(true);
    let (rc, v) = c
        .stamp()
        .hq("entitle")
        .dir(&c.hq)
        .args(&[
            "--site",
            "plant-7",
            "--product",
            "p",
            "--quota",
            "1",
            "--hq-keys",
            "rsa2048",
        ])
        .args(&["-o", s(&c.tmp.path().join("k.cose"))])
        .code_json();
    assert_eq!((rc, v["code"].as_str()), (Some(2), Some("usage")), "{v}");
}

#[test]
fn unknown_names_are_refused_up_front() {
    let c = ceremony(true);
    c.entitle("e", &["--quota", "5"]);
    // The service does not start with a default entitlement the site never imported.
    let v = c
        .stamp()
        .site("serve")
        .dir(&c.site)
        .args(&["--listen", "127.0.0.1:0", "--default-entitlement", "nope.1"])
        .fails_with("unknown-entitlement");
    assert!(v["error"].as_str().unwrap().contains("nope.1"), "{v}");
    // Nor does a hand-out under an entitlement the site does not have, and it makes no directory.
    let out = c.tmp.path().join("keys");
    c.stamp()
        .site("hand-out")
        .dir(&c.site)
        .args(&["--entitlement", "nope.1", "-o", s(&out)])
        .fails_with("unknown-entitlement");
    assert!(!out.exists());
    // HQ's device list of a site it never enrolled is an error, not "no devices".
    stamp_bare()
        .hq("devices")
        .dir(&c.hq)
        .args(&["--site", "nosuch"])
        .fails_with("unknown-site");
    // An enrolled site with no devices yet is an empty list.
    let v = stamp_bare()
        .hq("devices")
        .dir(&c.hq)
        .args(&["--site", "plant-7"])
        .json();
    assert_eq!(v["count"], 0);
}

#[test]
fn revoke_device_hints_are_commands_to_paste() {
    let c = ceremony(true);
    c.entitle("e", &["--quota", "5"]);
    let update = c.tmp.path().join("revoke.cose");
    let o = c
        .stamp()
        .hq("revoke-device")
        .dir(&c.hq)
        .args(&[
            "--entitlement",
            "plant-7.1",
            "--reason",
            "recall",
            "--site-update",
            s(&update),
        ])
        .output();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    let hq = s(&c.hq);
    assert!(
        text.contains(&format!("stamp hq export --dir {hq} --format registry -o ")),
        "{text}"
    );
    assert!(
        text.contains(&format!("stamp site import --dir SITE_DIR {}", s(&update))),
        "{text}"
    );
}

#[test]
fn each_flag_means_one_thing() {
    // --server is the site service's URL (device simulate); the gateway is --gateway HOST:PORT.
    let o = stamp_bare()
        .device("connect")
        .args(&[
            "--stamp",
            "d",
            "--server",
            "localhost:8883",
            "--ca-file",
            "ca.pem",
        ])
        .output();
    assert_eq!(o.status.code(), Some(2));
    let help = String::from_utf8_lossy(
        &stamp_bare()
            .args(&["device", "connect", "--help"])
            .output()
            .stdout,
    )
    .into_owned();
    assert!(help.contains("--gateway <HOST:PORT>"), "{help}");
    // --station is a station's name (site issue, site hand-out, hq entitle); the simulator's
    // station directory is --station-dir.
    let o = stamp_bare()
        .device("simulate")
        .args(&["--server", "https://127.0.0.1:1", "--station", "st", "-o", "d"])
        .output();
    assert_eq!(o.status.code(), Some(2));
    // --key is a firmware key's name; key and CA files are --key-file and --ca-file, the
    // simulator's key type --key-type.
    for (cmd, flag) in [
        (["device", "simulate"], "--station-dir <DIR>"),
        (["site", "issue"], "--station <NAME>"),
        (["site", "hand-out"], "--station <NAME>"),
        (["device", "simulate"], "--key-type <TYPE>"),
        (["device", "connect"], "--key-file <FILE>"),
        (["device", "connect"], "--ca-file <FILE>"),
        (["device", "verify-firmware"], "--key-file <PUBKEY.pem>"),
        (["hq", "sign-firmware"], "--key <NAME>"),
        (["hq", "firmware-key-digest"], "--key <NAME>"),
    ] {
        let help =
            String::from_utf8_lossy(&stamp_bare().args(&cmd).arg("--help").output().stdout).into_owned();
        assert!(help.contains(flag), "stamp {cmd:?} --help: {help}");
    }
}

#[test]
fn demo_says_where_its_passphrase_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let o = stamp_bare()
        .arg("demo")
        .dir(&dir)
        .args(&["--devices", "2"])
        .output();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{text}");
    let pass = dir.join("passphrase");
    assert!(
        text.contains(&format!("export STAMP_PASSPHRASE_FILE={}", s(&pass))),
        "{text}"
    );
    // ... and the command it suggests works with it.
    let v = stamp(&pass).site("status").dir(dir.join("site")).json();
    assert!(v.to_string().contains("active"), "{v}");
}
