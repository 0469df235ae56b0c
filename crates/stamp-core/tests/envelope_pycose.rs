//! Cross-check of the sealed-envelope format with an independent COSE implementation (pycose).
//!
//! stamp seals and pycose verifies and decrypts; pycose seals and stamp verifies and decrypts; and
//! pycose refuses what stamp must refuse (another recipient ID, another external_aad). This test
//! needs a Python with pycose installed (`stamp_testkit::python3`: the workspace's `.venv`);
//! without them it FAILS (it never skips). `scripts/test` (the README's test command) creates the
//! virtual environment and installs them from `tests/requirements.txt`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use aws_lc_rs::rand::SystemRandom;
use stamp_core::envelope::{self, EnvelopeError, Recipient};
use stamp_core::key::{KeyAgreement, KeyAgreementAlgorithm, SignatureAlgorithm, Signer};
use stamp_core::profile::{self_signed_root, Serial, Validity};
use stamp_testkit::{MemKeyAgreement, MemSigner};

const HELP: &str = "this test needs python3 with pycose 1.1.0 and cbor2 5.x: run `scripts/test` (the \
    README's test command, which installs tests/requirements.txt into .venv), or \
    `python3 -m venv .venv && .venv/bin/pip install -r tests/requirements.txt` at the workspace root \
    and then `cargo test -p stamp-core`";
const CT: &str = "application/vnd.stamp.entitlement+cbor";
const SITE: &[u8] = b"shenzhen-1";
const KID: &[u8] = b"\x01\x02kid";
const MAX: usize = 1 << 20;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/pycose/open_envelope.py")
}

/// Fails (never skips) when python3 or pycose is missing.
fn require_pycose() {
    let out = Command::new(stamp_testkit::python3())
        .args([
            "-c",
            "import pycose, cbor2, cryptography\n\
             from importlib.metadata import version\n\
             v = version('cbor2')\n\
             assert v.startswith('5.'), f'cbor2 {v} is installed; pycose 1.1.0 needs cbor2 5.x'",
        ])
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {HELP}"));
    assert!(
        out.status.success(),
        "python3 cannot use pycose ({}): {HELP}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn python(args: &[&str]) -> Output {
    Command::new(stamp_testkit::python3())
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): {HELP}"))
}

fn pem(label: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(label, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A self-signed certificate for `signer`'s key.
fn cert(signer: &MemSigner, serial: u8) -> Vec<u8> {
    let validity = Validity::starting(
        time::macros::datetime!(2026-01-01 0:00 UTC),
        time::Duration::days(365),
    );
    self_signed_root(signer, "Test OEM", validity, Serial::from_random([serial; 16])).unwrap()
}

fn cose_name(signer: &MemSigner) -> &'static str {
    match signer.algorithm() {
        SignatureAlgorithm::EcdsaP256Sha256 => "ES256",
        SignatureAlgorithm::EcdsaP384Sha384 => "ES384",
        SignatureAlgorithm::Ed25519 => "EdDSA",
        other => panic!("no COSE name for {other:?}"),
    }
}

const SIGS: [SignatureAlgorithm; 3] = [
    SignatureAlgorithm::EcdsaP256Sha256,
    SignatureAlgorithm::EcdsaP384Sha384,
    SignatureAlgorithm::Ed25519,
];
const KAS: [KeyAgreementAlgorithm; 2] = [KeyAgreementAlgorithm::EcdhP256, KeyAgreementAlgorithm::EcdhP384];

/// A plaintext with every byte value, so text/binary mix-ups show.
fn plaintext(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

#[test]
fn pycose_opens_what_stamp_seals() {
    require_pycose();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let other = MemSigner::new(SignatureAlgorithm::EcdsaP256Sha256);
    for (i, (sig, ka)) in SIGS
        .iter()
        .flat_map(|s| KAS.iter().map(move |k| (*s, *k)))
        .enumerate()
    {
        let signer = MemSigner::new(sig);
        let recipient = MemKeyAgreement::new(ka);
        // Alternate one-certificate chains (x5chain as a bstr) and two (an array), and an empty and
        // a non-empty external_aad.
        let mut chain = vec![cert(&signer, 1)];
        if i % 2 == 1 {
            chain.push(cert(&other, 2));
        }
        let aad: &[u8] = if i % 3 == 0 { b"" } else { b"audit-bundle-v1" };
        let plain = plaintext(300 + i);
        let env = envelope::seal(
            CT,
            &plain,
            &signer,
            &chain,
            &Recipient {
                alg: ka,
                public_key: recipient.public_key(),
                key_id: KID,
                recipient_id: SITE,
            },
            aad,
            &SystemRandom::new(),
        )
        .unwrap();
        let env_path = write(d, "envelope.cose", &env);
        let signer_path = write(d, "signer.pem", pem("PUBLIC KEY", &signer.spki_der()));
        let rcpt_path = write(d, "recipient.pem", pem("PRIVATE KEY", &recipient.pkcs8()));
        let open = |recipient_id: &[u8], aad: &[u8]| {
            python(&[
                "open",
                "--envelope",
                &env_path,
                "--signer-key",
                &signer_path,
                "--recipient-key",
                &rcpt_path,
                "--recipient-id",
                &hex::encode(recipient_id),
                "--external-aad",
                &hex::encode(aad),
            ])
        };
        let case = format!("{} signer, {} recipient", sig.name(), ka.name());

        let out = open(SITE, aad);
        assert!(
            out.status.success(),
            "pycose refused stamp's envelope ({case}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, plain, "pycose decrypted something else ({case})");

        // pycose, too, refuses the envelope for another recipient ID or another external_aad.
        let out = open(b"shenzhen-2", aad);
        assert!(
            !out.status.success(),
            "pycose opened a re-addressed envelope ({case})"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("decryption failed"),
            "{case}"
        );
        let out = open(SITE, b"something else");
        assert!(
            !out.status.success(),
            "pycose accepted another external_aad ({case})"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("signature does not verify"),
            "{case}"
        );
    }
}

#[test]
fn stamp_opens_what_pycose_seals() {
    require_pycose();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let other = MemSigner::new(SignatureAlgorithm::EcdsaP384Sha384);
    for (i, (sig, ka)) in SIGS
        .iter()
        .flat_map(|s| KAS.iter().map(move |k| (*s, *k)))
        .enumerate()
    {
        let signer = MemSigner::new(sig);
        let recipient = MemKeyAgreement::new(ka);
        let mut chain = vec![write(d, "leaf.der", cert(&signer, 3))];
        if i % 2 == 0 {
            chain.push(write(d, "ca.der", cert(&other, 4)));
        }
        let aad: &[u8] = if i % 3 == 1 { b"" } else { b"entitlement-v1" };
        let plain = plaintext(100 + i);
        let out_path = d.join("from-pycose.cose");
        let mut args = vec![
            "seal".to_owned(),
            "--plaintext".into(),
            write(d, "plain.bin", &plain),
            "--alg".into(),
            cose_name(&signer).into(),
            "--signer-key".into(),
            write(d, "signer-key.pem", pem("PRIVATE KEY", signer.pkcs8())),
            "--content-type".into(),
            CT.into(),
            "--recipient-key".into(),
            write(d, "recipient.pem", pem("PUBLIC KEY", &recipient.spki_der())),
            "--key-id".into(),
            hex::encode(KID),
            "--recipient-id".into(),
            hex::encode(SITE),
            "--external-aad".into(),
            hex::encode(aad),
            "--out".into(),
            out_path.to_str().unwrap().into(),
            "--chain".into(),
        ];
        args.extend(chain.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = python(&args);
        let case = format!("{} signer, {} recipient", sig.name(), ka.name());
        assert!(
            out.status.success(),
            "pycose could not seal ({case}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bytes = std::fs::read(&out_path).unwrap();

        let parsed = envelope::parse(&bytes, MAX)
            .unwrap_or_else(|e| panic!("stamp refused pycose's envelope ({case}): {e}"));
        assert_eq!(parsed.content_type(), CT);
        assert_eq!(parsed.key_id(), KID);
        assert_eq!(parsed.chain().len(), chain.len());
        let verified = parsed.verify(sig, signer.public_key(), aad).unwrap();
        let opened = verified.open(&recipient, SITE).unwrap();
        assert_eq!(opened.as_slice(), plain.as_slice(), "{case}");

        let wrong_id = envelope::parse(&bytes, MAX)
            .unwrap()
            .verify(sig, signer.public_key(), aad)
            .unwrap()
            .open(&recipient, b"shenzhen-2");
        assert!(matches!(wrong_id, Err(EnvelopeError::NotAddressedToUs)), "{case}");
    }
}
