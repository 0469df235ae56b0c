//! Replays every committed seed (`fuzz/corpus/<target>/`) and every past finding
//! (`fuzz/regressions/<target>/`) through its target, so `cargo test` guards against regressions
//! without running the fuzzer. A target with no seeds fails the test: it cannot pass vacuously.

#![allow(clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    v.sort();
    v
}

fn replay(kind: &str, require: bool) -> usize {
    let mut total = 0;
    for (target, run) in stamp_fuzz::TARGETS {
        let dir = fuzz_dir().join(kind).join(target);
        let inputs = files(&dir);
        assert!(
            !require || !inputs.is_empty(),
            "{} has no inputs (run `cargo run -p stamp-fuzz --bin make-seeds`)",
            dir.display()
        );
        for f in &inputs {
            let data = std::fs::read(f).expect("input file");
            // A panic names the file: the target's own message says what broke.
            eprintln!("replaying {}", f.display());
            run(&data);
        }
        total += inputs.len();
    }
    total
}

#[test]
fn every_seed_runs_clean() {
    assert!(replay("corpus", true) >= stamp_fuzz::TARGETS.len());
}

#[test]
fn every_past_finding_runs_clean() {
    replay("regressions", false);
}

#[test]
fn every_target_has_a_fuzz_target_file() {
    for (target, _) in stamp_fuzz::TARGETS {
        let f = fuzz_dir().join("fuzz_targets").join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            text.contains(&format!("stamp_fuzz::{target}(")),
            "{} does not call stamp_fuzz::{target}",
            f.display()
        );
    }
}

/// The seeds that are signed or sealed with the fixture's keys verify, so the fuzzer starts past
/// the signature checks.
#[test]
fn signed_seeds_verify_with_the_fixture() {
    use stamp_core::key::{SignatureAlgorithm, Signer};
    let fx = stamp_fuzz::fixture::get();
    let seed = |t: &str, n: &str| std::fs::read(fuzz_dir().join("corpus").join(t).join(n)).expect("seed");
    for name in ["grant", "amend"] {
        let env = stamp_core::envelope::parse(&seed("envelope", name), 1 << 20).expect("envelope");
        env.verify(SignatureAlgorithm::Ed25519, fx.hq_signing.public_key(), &[])
            .expect("envelope signature")
            .open(&fx.site_key_agreement, stamp_fuzz::fixture::SITE.as_bytes())
            .expect("envelope opens");
    }
    stamp_core::checkpoint::verify(
        &seed("checkpoint", "signed"),
        stamp_fuzz::fixture::CHECKPOINT_KEY,
        SignatureAlgorithm::Ed25519,
        fx.site_identity.public_key(),
    )
    .expect("checkpoint");
    stamp_core::registry::verify(&seed("registry", "signed"), None, 0, stamp_fuzz::fixture::NOW)
        .expect("registry");
    let key = stamp_core::firmware::FirmwareKey::from_signer(&fx.hq_signing).expect("key");
    stamp_core::firmware::mcuboot::verify(&seed("mcuboot", "ed25519"), &key, None).expect("mcuboot");
    let key = stamp_core::firmware::FirmwareKey::from_signer(&fx.site_issuing).expect("key");
    stamp_core::firmware::esp32::verify(&seed("esp32", "p256"), &key, None).expect("esp32");
    stamp_core::ceremony::SiteRequest::parse(&seed("site_request", "request.json"))
        .expect("request")
        .verify()
        .expect("request verifies");
}

/// The service target reaches the engine: requests are answered as a station's, a new key's
/// provisioning with a device certificate (the target's site is real, not a stub).
#[test]
fn the_service_target_reaches_the_engine() {
    let key = stamp_testkit::MemSigner::new(stamp_core::key::SignatureAlgorithm::EcdsaP256Sha256);
    let csr = stamp_core::csr::create(&key, "device").expect("csr");
    let body = format!(
        "{{\"csr\":{:?}}}",
        stamp_core::ceremony::pem("CERTIFICATE REQUEST", &csr)
    );
    let request = format!(
        "POST /api/v1/provision HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let first = text(stamp_fuzz::service_answer(request.as_bytes()));
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    assert!(first.contains("BEGIN CERTIFICATE"), "{first}");
    // The same key again: refused by the engine as a duplicate, with its stable code.
    let again = text(stamp_fuzz::service_answer(request.as_bytes()));
    assert!(
        again.starts_with("HTTP/1.1 409") && again.contains("duplicate-key"),
        "{again}"
    );
    let seed = std::fs::read(fuzz_dir().join("corpus/service/gets")).expect("seed");
    let gets = text(stamp_fuzz::service_answer(&seed));
    assert_eq!(gets.matches("HTTP/1.1 200 OK").count(), 5, "{gets}");
}
