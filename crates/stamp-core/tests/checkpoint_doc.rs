//! Keeps the examples of `docs/formats/checkpoint.md` true: stamp must reproduce the documented
//! Ed25519 checkpoint byte for byte from the documented key and log, and verify both examples.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use stamp_core::checkpoint::{self, Checkpoint};
use stamp_core::key::{SignatureAlgorithm, Signer};
use stamp_core::merkle::{leaf_hash, Frontier};
use stamp_testkit::MemSigner;

fn doc() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/formats/checkpoint.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Contents of the fenced `text` blocks, each line with its newline.
fn text_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line) {
            (None, "```text") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(b), l) => {
                b.push_str(l);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

fn field<'a>(block: &'a str, name: &str) -> &'a str {
    block
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in the example"))
        .trim()
}

#[test]
fn documented_examples_are_what_stamp_produces_and_verifies() {
    let doc = doc();
    let blocks = text_blocks(&doc);
    let key = blocks
        .iter()
        .find(|b| b.starts_with("key name:"))
        .expect("key block");
    let name = field(key, "key name:");
    let seed = hex::decode(field(key, "seed:")).unwrap();
    let signer = MemSigner::ed25519_from_seed(&seed).with_key_ref("doc");
    assert_eq!(hex::encode(signer.public_key()), field(key, "public key:"));
    let alg = SignatureAlgorithm::Ed25519;
    assert_eq!(
        format!(
            "{:08x}",
            checkpoint::key_id(name, alg, signer.public_key()).unwrap()
        ),
        field(key, "key ID:")
    );
    assert_eq!(
        checkpoint::verifier_key(name, alg, signer.public_key()).unwrap(),
        field(key, "verifier key:")
    );

    // The documented log: 1000 entries, entry i the 8-byte big-endian i.
    let mut tree = Frontier::new();
    for i in 0u64..1000 {
        tree.append(leaf_hash(&i.to_be_bytes())).unwrap();
    }
    assert!(
        doc.contains(&hex::encode(leaf_hash(&0u64.to_be_bytes()))),
        "leaf 0 hash"
    );
    assert!(doc.contains(&hex::encode(tree.root())), "root hash");
    let cp = Checkpoint {
        origin: name.to_owned(),
        size: 1000,
        root: tree.root(),
        extensions: vec![],
    };
    let note = checkpoint::sign(&cp, name, &signer).unwrap();
    let documented = blocks
        .iter()
        .find(|b| b.starts_with(&format!("{name}\n")))
        .expect("example note");
    assert_eq!(&note, documented);
    let v = checkpoint::verify(documented.as_bytes(), name, alg, signer.public_key()).unwrap();
    assert_eq!(v.checkpoint(), &cp);

    // The Rekor example, with the verifier key quoted in the text.
    let rekor = blocks
        .iter()
        .find(|b| b.starts_with("Rekor\n"))
        .expect("Rekor example");
    let vkey_start = doc.find("`rekor.sigstore.dev+").unwrap() + 1;
    let vkey = &doc[vkey_start..vkey_start + doc[vkey_start..].find('`').unwrap()];
    let material = B64.decode(vkey.splitn(3, '+').nth(2).unwrap()).unwrap();
    let point = &material[material.len() - 65..];
    let v = checkpoint::verify(
        rekor.as_bytes(),
        "rekor.sigstore.dev",
        SignatureAlgorithm::EcdsaP256Sha256,
        point,
    )
    .unwrap();
    assert_eq!(v.size(), 798034);
    assert_eq!(
        checkpoint::verifier_key("rekor.sigstore.dev", SignatureAlgorithm::EcdsaP256Sha256, point).unwrap(),
        vkey
    );
}
