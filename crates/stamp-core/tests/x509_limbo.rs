//! Path-validation conformance (issue #7 item 5): runs the C2SP x509-limbo suite (copied under
//! `tests/data/x509-limbo`, Apache-2.0) through the verifier's own path validation,
//! [`stamp_core::registry::validate_path`] (rustls-webpki), and compares with the expected results.
//!
//! Every divergence must be listed, with its reason, in `tests/data/x509-limbo/exceptions.txt`;
//! the test fails on an unlisted divergence and on a listed id that no longer diverges.
//!
//! What is run: CLIENT cases with clientAuth, SERVER cases with serverAuth (or the case's EKU),
//! trusted certificates as anchors, untrusted intermediates, the validation time (now when the
//! case has none). For SERVER cases the expected peer name (DNS or IP) is then checked with
//! rustls-webpki's `verify_is_valid_for_subject_name`, as a TLS client would; stamp's verifier
//! itself does no name checking. CLIENT cases' RFC 822 peer names are not matched (webpki has no
//! e-mail name matching); those cases test name constraints in the chain, which path validation
//! enforces. Skipped: cases with CRLs, a maximum chain depth, a key-usage or signature-algorithm
//! requirement, which `validate_path` cannot express.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use rustls_pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use stamp_core::registry::{validate_path, PathUsage};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

#[derive(Deserialize)]
struct Limbo {
    version: u32,
    testcases: Vec<Case>,
}

#[derive(Deserialize)]
struct PeerName {
    kind: String,
    value: String,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    validation_kind: String,
    trusted_certs: Vec<String>,
    untrusted_intermediates: Vec<String>,
    peer_certificate: String,
    validation_time: Option<String>,
    #[serde(default)]
    signature_algorithms: Vec<String>,
    #[serde(default)]
    key_usage: Vec<String>,
    #[serde(default)]
    extended_key_usage: Vec<String>,
    expected_result: String,
    expected_peer_name: Option<PeerName>,
    max_chain_depth: Option<u64>,
    #[serde(default)]
    crls: Vec<String>,
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/x509-limbo")
}

fn der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).expect("PEM certificate").into_contents()
}

/// Why a case cannot be run, or None.
fn skip_reason(c: &Case) -> Option<&'static str> {
    if !c.crls.is_empty() {
        return Some("CRLs (revocation is the registry's job, not path validation's)");
    }
    if c.max_chain_depth.is_some() {
        return Some("max chain depth (not configurable in rustls-webpki)");
    }
    if !c.key_usage.is_empty() {
        return Some("key-usage requirement (not expressible in validate_path)");
    }
    if !c.signature_algorithms.is_empty() {
        return Some("signature-algorithm restriction (not expressible in validate_path)");
    }
    if c.validation_kind != "CLIENT" && c.validation_kind != "SERVER" {
        return Some("validation kind other than CLIENT or SERVER");
    }
    let ekus_ok = c
        .extended_key_usage
        .iter()
        .all(|e| e == "clientAuth" || e == "serverAuth");
    if !ekus_ok || c.extended_key_usage.len() > 1 {
        return Some("extended-key-usage requirement other than a single clientAuth or serverAuth");
    }
    if let Some(n) = &c.expected_peer_name {
        if n.kind != "DNS" && n.kind != "IP" {
            return Some("peer name kind other than DNS or IP");
        }
    }
    None
}

/// Runs one case; true when stamp accepts.
fn accepts(c: &Case) -> bool {
    let anchors: Vec<Vec<u8>> = c.trusted_certs.iter().map(|p| der(p)).collect();
    let inter: Vec<Vec<u8>> = c.untrusted_intermediates.iter().map(|p| der(p)).collect();
    let leaf = der(&c.peer_certificate);
    let now = match &c.validation_time {
        Some(t) => OffsetDateTime::parse(t, &Rfc3339).expect("validation_time"),
        None => OffsetDateTime::now_utc(),
    };
    let usage = match c.extended_key_usage.first().map(String::as_str) {
        Some("clientAuth") => PathUsage::ClientAuth,
        Some(_) => PathUsage::ServerAuth,
        None if c.validation_kind == "CLIENT" => PathUsage::ClientAuth,
        None => PathUsage::ServerAuth,
    };
    let anchor_refs: Vec<&[u8]> = anchors.iter().map(Vec::as_slice).collect();
    let inter_refs: Vec<&[u8]> = inter.iter().map(Vec::as_slice).collect();
    if validate_path(&leaf, &inter_refs, &anchor_refs, usage, now).is_err() {
        return false;
    }
    // Name check for SERVER cases, as a TLS client would do on top of path validation.
    let Some(name) = c
        .expected_peer_name
        .as_ref()
        .filter(|_| c.validation_kind == "SERVER")
    else {
        return true;
    };
    let server_name = if name.kind == "IP" {
        match name.value.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => return false,
        }
    } else {
        match ServerName::try_from(name.value.as_str()) {
            Ok(n) => n,
            Err(_) => return false,
        }
    };
    let leaf_der = CertificateDer::from(leaf.as_slice());
    let Ok(ee) = webpki::EndEntityCert::try_from(&leaf_der) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&server_name).is_ok()
}

/// `id reason` per line; `#` starts a comment line.
fn read_exceptions() -> BTreeMap<String, String> {
    let path = data_dir().join("exceptions.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        assert!(!reason.trim().is_empty(), "exceptions.txt: {id} has no reason");
        assert!(
            out.insert(id.to_string(), reason.trim().to_string()).is_none(),
            "exceptions.txt: {id} listed twice"
        );
    }
    out
}

#[test]
fn x509_limbo_conformance() {
    let path = data_dir().join("limbo.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "x509-limbo test data missing at {} ({e}); it is committed with the repository (copy of ../shared/testdata/x509-limbo/limbo.json)",
            path.display()
        )
    });
    let limbo: Limbo = serde_json::from_str(&text).expect("limbo.json");
    assert_eq!(limbo.version, 1, "limbo.json schema version");
    let exceptions = read_exceptions();

    let mut pass = 0usize;
    let mut listed = 0usize;
    let mut skipped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut unlisted = Vec::new();
    let mut stale = Vec::new();
    let mut seen = BTreeSet::new();
    for c in &limbo.testcases {
        seen.insert(c.id.as_str());
        if let Some(why) = skip_reason(c) {
            skipped.entry(why).or_default().push(&c.id);
            continue;
        }
        let expected = match c.expected_result.as_str() {
            "SUCCESS" => true,
            "FAILURE" => false,
            other => panic!("{}: expected_result {other}", c.id),
        };
        let got = accepts(c);
        let diverges = got != expected;
        match (diverges, exceptions.contains_key(&c.id)) {
            (false, false) => pass += 1,
            (true, true) => listed += 1,
            (true, false) => unlisted.push(format!(
                "{} (expected {}, stamp {})",
                c.id,
                c.expected_result,
                if got { "accepts" } else { "rejects" }
            )),
            (false, true) => stale.push(c.id.clone()),
        }
    }
    let unknown: Vec<&String> = exceptions
        .keys()
        .filter(|id| !seen.contains(id.as_str()))
        .collect();
    let nskip: usize = skipped.values().map(Vec::len).sum();
    eprintln!(
        "x509-limbo: {} cases; pass {pass}, divergences listed {listed}, skipped {nskip}",
        limbo.testcases.len()
    );
    for (why, ids) in &skipped {
        eprintln!("  skipped {} for {why}: {}", ids.len(), ids.join(", "));
    }
    assert!(
        unlisted.is_empty(),
        "{} divergences not in exceptions.txt:\n{}",
        unlisted.len(),
        unlisted.join("\n")
    );
    assert!(
        stale.is_empty(),
        "listed in exceptions.txt but no longer diverging (remove them):\n{}",
        stale.join("\n")
    );
    assert!(
        unknown.is_empty(),
        "exceptions.txt lists ids that are not in limbo.json: {unknown:?}"
    );
}
