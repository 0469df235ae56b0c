//! pkilint's RFC 5280 linter (`lint_pkix_cert`, PyPI `pkilint`) on one certificate of every
//! profile stamp issues, each made through the real binary: OEM root, HQ authority (signing and
//! key agreement), site identity (signing and key agreement), site issuing CA, device, station
//! and site service. No finding of severity ERROR or FATAL is allowed except those in [`ALLOWED`],
//! each documented in docs/formats/certificates.md ("Linting").
//!
//! Needs pkilint: the Python of `STAMP_TEST_PYTHON`, else the workspace's `.venv` if there is
//! one, else `python3` (`stamp_testkit::python3`), must import it. Without it this test FAILS (it never skips): `scripts/test`
//! installs tests/requirements.txt, or run `python3 -m venv .venv && .venv/bin/pip install -r
//! tests/requirements.txt` at the workspace root.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;

/// Findings of severity ERROR or FATAL that are expected, as (profile file, pkilint code, why).
const ALLOWED: &[(&str, &str, &str)] = &[
    // pkilint decodes OID arcs of at most 32 bits; stamp's role EKUs live under the
    // registration-free UUID arc 2.25 (X.667), whose second arc is 128 bits. Valid DER and
    // RFC 5280; kept (docs/formats/certificates.md, "Role OIDs").
    (
        "hq-authority-signing.pem",
        "itu.invalid_asn1_syntax",
        "UUID arc of the role EKU",
    ),
    (
        "hq-authority-key-agreement.pem",
        "itu.invalid_asn1_syntax",
        "UUID arc of the role EKU",
    ),
    (
        "site-identity-signing.pem",
        "itu.invalid_asn1_syntax",
        "UUID arc of the role EKU",
    ),
    (
        "site-identity-key-agreement.pem",
        "itu.invalid_asn1_syntax",
        "UUID arc of the role EKU",
    ),
    (
        "station.pem",
        "itu.invalid_asn1_syntax",
        "UUID arc of the role EKU",
    ),
];

const HELP: &str = "this test needs pkilint (PyPI): run scripts/test, or at the workspace root \
    `python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt`, or point \
    STAMP_TEST_PYTHON at a Python that has it";

/// pkilint's findings of severity ERROR and above for `cert`: (code, message).
fn lint(cert: &Path) -> Vec<(String, String)> {
    let out = Command::new(stamp_testkit::python3())
        .args(["-c", "import sys; from pkilint.bin.lint_pkix_cert import main; sys.argv[0] = 'lint_pkix_cert'; sys.exit(main())"])
        .args(["lint", "-f", "JSON", "-s", "ERROR"])
        .arg(cert)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): {HELP}", stamp_testkit::python3().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "pkilint did not run on {} (exit {:?}): {}\n{HELP}",
            cert.display(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let mut found = Vec::new();
    for r in v["results"].as_array().unwrap() {
        for f in r["finding_descriptions"].as_array().unwrap() {
            found.push((
                f["code"].as_str().unwrap().to_owned(),
                format!(
                    "{} ({}) at {}: {}",
                    f["code"].as_str().unwrap(),
                    f["severity"].as_str().unwrap(),
                    r["node_path"].as_str().unwrap_or(""),
                    f["message"].as_str().unwrap_or("")
                ),
            ));
        }
    }
    found
}

/// The site service's certificate, as `stamp site serve --write-cert` writes it.
fn service_cert(c: &Ceremony, out: &Path) {
    let mut child = stamp(&c.pass)
        .env("STAMP_LOG", "warn")
        .arg("--json")
        .site("serve")
        .dir(&c.site)
        .args(&[
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "off",
            "--write-cert",
            s(out),
        ])
        .command()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("listening"), "serve did not start: {line:?}");
}

/// Every profile stamp issues, as PEM files in `dir`.
fn every_profile(c: &Ceremony) -> Vec<PathBuf> {
    let mut certs: Vec<PathBuf> = ["oem-root", "hq-authority-signing", "hq-authority-key-agreement"]
        .iter()
        .map(|n| c.hq.join("certs").join(format!("{n}.pem")))
        .collect();
    certs.extend(
        [
            "site-identity-signing",
            "site-identity-key-agreement",
            "site-issuing-ca",
        ]
        .iter()
        .map(|n| c.site.join("certs").join(format!("{n}.pem"))),
    );
    // A station.
    let st = c.tmp.path().join("station");
    stamp(&c.pass)
        .site("add-station")
        .dir(&c.site)
        .args(&["--name", "line-1", "-o", s(&st)])
        .json();
    let station = c.tmp.path().join("station.pem");
    let pem = std::fs::read_to_string(st.join("station.crt")).unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}",
            std::fs::read_dir(&st).map(|d| d.map(|e| e.unwrap().path()).collect::<Vec<_>>())
        )
    });
    let end = pem.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    std::fs::write(&station, &pem[..end.min(pem.len())]).unwrap();
    certs.push(station);
    // A device, under a grant.
    let pkg = c.tmp.path().join("e.cose");
    stamp(&c.pass)
        .hq("entitle")
        .dir(&c.hq)
        .args(&["--site", "plant-7", "--product", "thermo-2", "--quota", "5"])
        .args(&["-o", s(&pkg)])
        .json();
    stamp(&c.pass).site("import").dir(&c.site).arg(&pkg).json();
    let csrs = c.tmp.path().join("csrs");
    std::fs::create_dir_all(&csrs).unwrap();
    std::fs::write(
        csrs.join("dev0.der"),
        csr_der_with(&rcgen::PKCS_ECDSA_P256_SHA256, |_| {}),
    )
    .unwrap();
    let issued = c.tmp.path().join("issued");
    stamp(&c.pass)
        .site("issue")
        .dir(&c.site)
        .args(&["--entitlement", "plant-7.1", "--csr", s(&csrs)])
        .args(&["-o", s(&issued)])
        .json();
    let device = std::fs::read_dir(&issued)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| std::fs::read_to_string(p).is_ok_and(|t| t.contains("BEGIN CERTIFICATE")))
        .unwrap_or_else(|| panic!("no device certificate in {}", issued.display()));
    let dev = c.tmp.path().join("device.pem");
    let pem = std::fs::read_to_string(&device).unwrap();
    // The first certificate of the file (a chain file starts with the device's).
    let end = pem.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    std::fs::write(&dev, &pem[..end.min(pem.len())]).unwrap();
    certs.push(dev);
    // The site service.
    let svc = c.tmp.path().join("site-service.pem");
    service_cert(c, &svc);
    certs.push(svc);
    certs
}

/// The linter really runs and reports what this test is about: a service certificate naming
/// `localhost` as a dNSName (what stamp issued before) is an error.
#[test]
fn pkilint_reports_localhost_as_a_dns_name() {
    let tmp = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let p = tmp.path().join("localhost.pem");
    std::fs::write(&p, cert.pem()).unwrap();
    let codes: Vec<String> = lint(&p).into_iter().map(|(c, _)| c).collect();
    assert!(
        codes.iter().any(|c| c == "pkix.invalid_domain_name_syntax"),
        "{codes:?}"
    );
}

#[test]
fn pkilint_finds_no_errors_in_any_profile() {
    let c = ceremony(true);
    let certs = every_profile(&c);
    assert_eq!(certs.len(), 9);
    let mut unexpected = Vec::new();
    let mut seen = Vec::new();
    for cert in &certs {
        assert!(cert.is_file(), "{}", cert.display());
        let name = cert.file_name().unwrap().to_str().unwrap();
        for (code, text) in lint(cert) {
            match ALLOWED.iter().position(|(f, c, _)| *f == name && *c == code) {
                Some(i) => seen.push(i),
                None => unexpected.push(format!("{name}: {text}")),
            }
        }
    }
    // An allowance nothing needs any more is removed (and its documentation with it).
    for (i, (f, c, why)) in ALLOWED.iter().enumerate() {
        assert!(
            seen.contains(&i),
            "{f}: {c} ({why}) is allowed but pkilint no longer reports it"
        );
    }
    assert!(
        unexpected.is_empty(),
        "pkilint errors not documented in docs/formats/certificates.md:\n{}",
        unexpected.join("\n")
    );
}
