//! The enrollment ceremony through the real binary, checked with openssl.

use std::path::PathBuf;

use crate::common::*;
use x509_parser::prelude::*;

fn all_cert_paths(c: &Ceremony) -> Vec<(String, PathBuf)> {
    let install = c.install.as_ref().unwrap();
    install["certs"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), PathBuf::from(v.as_str().unwrap())))
        .collect()
}

#[test]
fn full_ceremony_and_openssl_verifies_every_certificate() {
    let c = ceremony(true);
    // JSON output names the PEM files written.
    for key in [
        "root_cert",
        "hq_authority_signing_cert",
        "hq_authority_key_agreement_cert",
    ] {
        assert!(PathBuf::from(c.hq_init[key].as_str().unwrap()).is_file(), "{key}");
    }
    for key in [
        "site_identity_signing_cert",
        "site_identity_key_agreement_cert",
        "site_issuing_ca_cert",
        "credentials",
    ] {
        assert!(PathBuf::from(c.enroll[key].as_str().unwrap()).is_file(), "{key}");
    }
    assert_eq!(
        c.enroll["request_fingerprint"],
        c.site_init["request_fingerprint"]
    );
    let certs = all_cert_paths(&c);
    assert_eq!(certs.len(), 6);
    let root = c.root_cert();
    for (name, path) in &certs {
        let out = openssl(&["verify", "-x509_strict", "-CAfile", s(&root), s(path)]);
        assert!(
            out.status.success(),
            "openssl verify {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));
    }
    // The root fingerprint printed is what openssl computes.
    let out = openssl(&["x509", "-in", s(&root), "-noout", "-fingerprint", "-sha256"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.trim().ends_with(&c.root_fingerprint()),
        "{text} vs {}",
        c.root_fingerprint()
    );
    // openssl reads the encrypted keys with the passphrase, and not without it.
    for key in [
        "hq/keys/oem-root.key",
        "site/keys/site-issuing-ca.key",
        "site/keys/site-identity-key-agreement.key",
    ] {
        let path = c.tmp.path().join(key);
        let ok = openssl(&[
            "pkey",
            "-in",
            s(&path),
            "-passin",
            &format!("file:{}", s(&c.pass)),
            "-noout",
        ]);
        assert!(
            ok.status.success(),
            "openssl pkey {key}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let bad = openssl(&[
            "pkey",
            "-in",
            s(&path),
            "-passin",
            "pass:wrong passphrase",
            "-noout",
        ]);
        assert!(
            !bad.status.success(),
            "{key} must not open with a wrong passphrase"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"));
    }
    // The site's issuing CA key matches its certificate (openssl compares the public keys).
    let key_pub = openssl(&[
        "pkey",
        "-in",
        s(&c.site.join("keys/site-issuing-ca.key")),
        "-passin",
        &format!("file:{}", s(&c.pass)),
        "-pubout",
    ]);
    let cert_pub = openssl(&[
        "x509",
        "-in",
        s(&c.site.join("certs/site-issuing-ca.pem")),
        "-noout",
        "-pubkey",
    ]);
    assert_eq!(key_pub.stdout, cert_pub.stdout);
    // HQ lists the site.
    let sites = stamp(&c.pass).hq("sites").dir(&c.hq).json();
    assert_eq!(sites["sites"][0]["site_id"], "plant-7");
}

/// Checks each profile independently of stamp's own profile checker.
#[test]
fn every_certificate_has_its_profile() {
    let c = ceremony(true);
    let certs: Vec<(String, Vec<u8>)> = all_cert_paths(&c)
        .into_iter()
        .map(|(n, p)| {
            (
                n,
                ::pem::parse(std::fs::read(p).unwrap()).unwrap().into_contents(),
            )
        })
        .collect();
    let root_der = &certs.iter().find(|(n, _)| n == "oem-root").unwrap().1;
    let (_, root) = X509Certificate::from_der(root_der).unwrap();
    let root_ski = root.extensions().iter().find_map(|e| match e.parsed_extension() {
        ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
        _ => None,
    });
    let hq_eku = "2.25.236905634903685235512473382056477109304.1.1";
    let site_eku = "2.25.236905634903685235512473382056477109304.1.2";
    let mut serials = std::collections::HashSet::new();
    for (name, der) in &certs {
        let (rest, cert) = X509Certificate::from_der(der).unwrap();
        assert!(rest.is_empty());
        // (ca, path_len, digitalSignature, keyAgreement, keyCertSign, cRLSign, eku)
        let want: (bool, Option<u32>, bool, bool, bool, bool, Option<&str>) = match name.as_str() {
            "oem-root" => (true, Some(1), false, false, true, true, None),
            "site-issuing-ca" => (true, Some(0), false, false, true, true, None),
            "hq-authority-signing" => (false, None, true, false, false, false, Some(hq_eku)),
            "hq-authority-key-agreement" => (false, None, false, true, false, false, Some(hq_eku)),
            "site-identity-signing" => (false, None, true, false, false, false, Some(site_eku)),
            "site-identity-key-agreement" => (false, None, false, true, false, false, Some(site_eku)),
            other => panic!("unexpected certificate {other}"),
        };
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical, "{name}: basic constraints critical");
        assert_eq!(bc.value.ca, want.0, "{name}: CA flag");
        assert_eq!(bc.value.path_len_constraint, want.1, "{name}: pathLen");
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical, "{name}: key usage critical");
        assert_eq!(
            (
                ku.value.digital_signature(),
                ku.value.key_agreement(),
                ku.value.key_cert_sign(),
                ku.value.crl_sign()
            ),
            (want.2, want.3, want.4, want.5),
            "{name}: key usage"
        );
        assert!(
            !ku.value.key_encipherment() && !ku.value.non_repudiation(),
            "{name}"
        );
        let eku = cert.extended_key_usage().unwrap();
        match want.6 {
            None => assert!(eku.is_none(), "{name}: no EKU on CAs"),
            Some(oid) => {
                let eku = eku.unwrap().value;
                let got: Vec<String> = eku.other.iter().map(|o| o.to_id_string()).collect();
                // x509-parser prints arcs over 64 bits in hex, so read the OID through openssl.
                assert_eq!(got.len(), 1, "{name}");
                assert!(!eku.any && !eku.server_auth && !eku.client_auth, "{name}");
                let pem_path = all_cert_paths(&c).into_iter().find(|(n, _)| n == name).unwrap().1;
                let out = openssl(&["x509", "-in", s(&pem_path), "-noout", "-ext", "extendedKeyUsage"]);
                assert!(
                    String::from_utf8_lossy(&out.stdout).contains(oid),
                    "{name}: EKU {oid}"
                );
            }
        }
        let ski = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
        assert!(ski.is_some(), "{name}: subject key identifier");
        if name != "oem-root" {
            let aki = cert.extensions().iter().find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(k) => k.key_identifier.as_ref().map(|k| k.0.to_vec()),
                _ => None,
            });
            assert_eq!(aki, root_ski, "{name}: AKI is the root's SKI");
            assert!(
                cert.validity().not_after <= root.validity().not_after,
                "{name}: inside the root's validity"
            );
            assert!(cert.validity().not_before >= root.validity().not_before, "{name}");
        }
        // Serial: positive, at most 20 octets, at least 64 bits, unique.
        let serial = cert.raw_serial();
        assert!(
            serial.len() <= 20 && serial.len() >= 9,
            "{name}: serial length {}",
            serial.len()
        );
        assert!(serial[0] & 0x80 == 0, "{name}: serial positive");
        assert!(serials.insert(serial.to_vec()), "{name}: serial unique");
        assert_eq!(cert.version(), X509Version::V3);
    }
    // Site certificates name the site; HQ's name HQ.
    let (_, ca) =
        X509Certificate::from_der(&certs.iter().find(|(n, _)| n == "site-issuing-ca").unwrap().1).unwrap();
    assert_eq!(
        ca.subject().to_string(),
        "O=Acme Sensors, OU=site plant-7, CN=site issuing CA"
    );
}

#[test]
fn demo_runs_the_ceremony() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let v = stamp_bare()
        .arg("demo")
        .dir(&dir)
        .args(&["--devices", "20"])
        .json();
    let root = v["root_cert"].as_str().unwrap();
    let ca = v["site_issuing_ca_cert"].as_str().unwrap();
    let out = openssl(&["verify", "-x509_strict", "-CAfile", root, ca]);
    assert!(out.status.success());
    // The cloud steps include HQ granting more devices and a site owner hiding a serial from
    // its log before the registry export; the line steps a renewal clone.
    assert_eq!(v["steps"].as_array().unwrap().len(), 24);
    assert_eq!(v["quota"], 20);
    assert!(std::path::Path::new(v["entitlement"].as_str().unwrap()).is_file());
}
