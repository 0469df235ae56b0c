//! Cross-checks stamp's signed checkpoints with an independent verifier written in Python from the
//! C2SP specifications (`tests/signed_note/verify_note.py` at the repository root, on the
//! `cryptography` package). The test fails, never skips, when python3 or `cryptography` is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use stamp_core::checkpoint::{self, Checkpoint};
use stamp_core::key::{SignatureAlgorithm, Signer};
use stamp_core::merkle::{leaf_hash, Frontier};
use stamp_testkit::MemSigner;

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/signed_note/verify_note.py")
}

/// Runs the Python verifier; returns its exit code and standard output.
fn python(args: &[&str], note: &[u8]) -> (i32, String) {
    let mut child = Command::new(stamp_testkit::python3())
        .arg(script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("this test needs python3 with the `cryptography` package: {e}"));
    child.stdin.take().unwrap().write_all(note).unwrap();
    let out = child.wait_with_output().unwrap();
    let code = out.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        code, 3,
        "this test needs the Python `cryptography` package: {stderr}"
    );
    assert!(code == 0 || code == 1, "verify_note.py failed ({code}): {stderr}");
    (code, String::from_utf8(out.stdout).unwrap())
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

/// The Python verifier must itself agree with published notes, or agreeing with it proves nothing.
#[test]
fn python_verifier_accepts_published_notes_and_rejects_altered_ones() {
    // Real ECDSA P-256 (type 0x02) checkpoints of Sigstore's Rekor and the Pixel 6 log, with their
    // verifier keys (from transparency-dev/formats note/note_verifier_test.go).
    let rekor_vkey = "rekor.sigstore.dev+c0d23d6a+AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABNhtmPtrWm3U1eQXBogSMdGvXwBcK5AW5i0hrZLOC96l+smGNM7nwZ4QvFK/4sueRoVj//QP22Ni4Qt9DPfkWLc=";
    let rekor_note = "Rekor\n798034\nf+7CoKgXKE/tNys9TTXcr/ad6U/K3xvznmzew9y6SP0=\n\n\u{2014} rekor.sigstore.dev wNI9ajBEAiARInWIWyCdyG27CO6LPnPekyw20qO0YJfoaPaowGp/XgIgc+qEHS3+GKVClgqq20uDLet7MCoTURUCRdxwWBHHufk=\n";
    let (code, out) = python(&["--vkey", rekor_vkey], rekor_note.as_bytes());
    assert_eq!(code, 0);
    let v = json(&out);
    assert_eq!(
        (v["origin"].as_str(), v["size"].as_u64()),
        (Some("Rekor"), Some(798034))
    );
    let (code, _) = python(
        &["--vkey", rekor_vkey],
        rekor_note.replace("798034", "798035").as_bytes(),
    );
    assert_eq!(code, 1);

    let pixel_vkey = "pixel6_transparency_log+91c16e30+AjBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABN+4x0Jk1yTwvLFI9A4NDdGZcX0aiWVdWM5XJVy0M4VWD3AvyW5Q6Hs9A0mcDkpUoYgn+KKPNzFC0H3nN3q6JQ8=";
    let pixel_note = "DEFAULT\n10\nbsWRucJU5xJPHb5eBdOm6+DM+VelCZBuvtI3sHERJ9Y=\n\n\u{2014} pixel6_transparency_log kcFuMDBFAiEAhqMAP8P6qf6QxtUJhzMhbN+MbZ9dwfUHzGQJmffJHtoCIGD0cNe47dHWBoPwYdgBCepB06/+g5O1FmYjXl06owL4\n";
    assert_eq!(python(&["--vkey", pixel_vkey], pixel_note.as_bytes()).0, 0);
    assert_eq!(python(&["--vkey", rekor_vkey], pixel_note.as_bytes()).0, 1);

    // Ed25519 (type 0x01): the example of Go's golang.org/x/mod/sumdb/note.
    let peter_vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    let peter_note = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n\n\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    assert_eq!(
        python(&["--vkey", peter_vkey, "--text-only"], peter_note.as_bytes()).0,
        0
    );
    let altered = peter_note.replace("cryptography", "cryptographY");
    assert_eq!(
        python(&["--vkey", peter_vkey, "--text-only"], altered.as_bytes()).0,
        1
    );
}

#[test]
fn python_verifies_stamp_checkpoints_signed_with_ecdsa_p256_and_ed25519() {
    let mut tree = Frontier::new();
    for i in 0u64..1000 {
        tree.append(leaf_hash(&i.to_be_bytes())).unwrap();
    }
    let cp = Checkpoint {
        origin: "factory-7.example.com/stamp/audit".into(),
        size: tree.size(),
        root: tree.root(),
        extensions: vec!["stamp extension line".into()],
    };
    let name = "factory-7.example.com/stamp/audit";
    for alg in [SignatureAlgorithm::EcdsaP256Sha256, SignatureAlgorithm::Ed25519] {
        let signer = MemSigner::new(alg).with_key_ref("test");
        let note = checkpoint::sign(&cp, name, &signer).unwrap();
        let vkey = checkpoint::verifier_key(name, alg, signer.public_key()).unwrap();
        let key_hex = hex::encode(signer.public_key());
        let args = ["--vkey", vkey.as_str(), "--public-key", key_hex.as_str()];

        let (code, out) = python(&args, note.as_bytes());
        assert_eq!(code, 0, "{} note refused by Python: {note}", alg.name());
        let v = json(&out);
        assert_eq!(v["origin"], cp.origin);
        assert_eq!(v["size"].as_u64(), Some(1000));
        assert_eq!(v["root_hex"], hex::encode(cp.root));
        assert_eq!(v["extensions"], serde_json::json!(["stamp extension line"]));
        let id = checkpoint::key_id(name, alg, signer.public_key()).unwrap();
        assert_eq!(v["key_id"], format!("{id:08x}"));

        // An altered checkpoint, and one signed by another key under the same name, are refused.
        let altered = note.replacen("\n1000\n", "\n1001\n", 1);
        assert_ne!(altered, note);
        assert_eq!(python(&args, altered.as_bytes()).0, 1, "{}", alg.name());
        let other = checkpoint::sign(&cp, name, &MemSigner::new(alg).with_key_ref("test")).unwrap();
        assert_eq!(python(&args, other.as_bytes()).0, 1, "{}", alg.name());
    }
}
