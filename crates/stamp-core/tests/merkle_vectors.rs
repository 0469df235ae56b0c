//! Runs every inclusion and consistency vector of transparency-dev/merkle (copied under
//! `tests/data/merkle`, Apache-2.0) through stamp's verifier, and checks that stamp generates the
//! same proofs for the vectors that are valid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use stamp_core::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, root_from_leaves, verify_consistency, verify_inclusion,
    Hash,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Inclusion {
    leaf_idx: u64,
    tree_size: u64,
    root: String,
    leaf_hash: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Consistency {
    size1: u64,
    size2: u64,
    root1: String,
    root2: String,
    proof: Option<Vec<String>>,
    desc: String,
    want_err: bool,
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/merkle")
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

fn b64(s: &str) -> Vec<u8> {
    STANDARD.decode(s).unwrap()
}

fn proof(p: &Option<Vec<String>>) -> Vec<Vec<u8>> {
    p.iter().flatten().map(|s| b64(s)).collect()
}

/// The eight leaves the vectors' trees are made of (RFC 6962 reference tests).
fn reference_leaves() -> Vec<Hash> {
    let data: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    data.iter().map(|d| leaf_hash(d)).collect()
}

/// If `root` is the root of the first `size` reference leaves, those leaves.
fn reference_tree(size: u64, root: &[u8]) -> Option<Vec<Hash>> {
    let leaves = reference_leaves();
    let n = usize::try_from(size).ok().filter(|n| *n <= leaves.len())?;
    (root_from_leaves(&leaves[..n]).as_slice() == root).then(|| leaves[..n].to_vec())
}

#[test]
fn every_vector_gives_the_expected_outcome() {
    let mut files = Vec::new();
    json_files(&data_dir(), &mut files);
    files.sort();

    let (mut inclusion, mut consistency, mut valid, mut compared) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let rel = path.strip_prefix(data_dir()).unwrap().display().to_string();
        let (want_err, result, desc) = if rel.starts_with("inclusion/") {
            inclusion += 1;
            let v: Inclusion = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
            let p = proof(&v.proof);
            let (leaf, root) = (b64(&v.leaf_hash), b64(&v.root));
            let result = verify_inclusion(&leaf, v.leaf_idx, v.tree_size, &p, &root);
            if !v.want_err {
                if let Some(tree) = reference_tree(v.tree_size, &root) {
                    let ours = inclusion_proof(&tree, v.leaf_idx, v.tree_size).unwrap();
                    assert_eq!(ours.iter().map(|h| h.to_vec()).collect::<Vec<_>>(), p, "{rel}");
                    compared += 1;
                }
            }
            (v.want_err, result, v.desc)
        } else if rel.starts_with("consistency/") {
            consistency += 1;
            let v: Consistency = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
            let p = proof(&v.proof);
            let (root1, root2) = (b64(&v.root1), b64(&v.root2));
            let result = verify_consistency(v.size1, v.size2, &p, &root1, &root2);
            if !v.want_err {
                if let Some(tree) = reference_tree(v.size2, &root2) {
                    let ours = consistency_proof(&tree, v.size1, v.size2).unwrap();
                    assert_eq!(ours.iter().map(|h| h.to_vec()).collect::<Vec<_>>(), p, "{rel}");
                    compared += 1;
                }
            }
            (v.want_err, result, v.desc)
        } else {
            panic!("unexpected vector file {rel}");
        };
        if !want_err {
            valid += 1;
        }
        if result.is_err() != want_err {
            failures.push(format!("{rel} ({desc}): wantErr {want_err}, got {result:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} vectors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Every file in the copied set was run: 98 inclusion and 98 consistency vectors.
    assert_eq!((inclusion, consistency), (98, 98), "vector files found");
    assert_eq!(valid, 12, "vectors expected to verify");
    assert_eq!(compared, 10, "valid vectors whose proof stamp regenerated");
}
