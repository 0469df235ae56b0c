use super::*;
use std::cell::Cell;
use std::collections::HashMap;

fn leaves(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

#[test]
fn hashes_match_rfc_6962_test_vectors() {
    // From the RFC 6962 reference tests (transparency-dev/merkle rfc6962_test.go).
    assert_eq!(
        hex::encode(empty_root()),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex::encode(leaf_hash(b"")),
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    );
    assert_eq!(
        hex::encode(leaf_hash(b"L123456")),
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    );
    assert_eq!(
        hex::encode(node_hash(b"N123", b"N456")),
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    );
}

/// The eight-leaf tree of RFC 6962's reference tests: leaves and the roots at each size.
fn rfc_tree() -> (Vec<Hash>, Vec<&'static str>) {
    let data: [&[u8]; 8] = [
        b"",
        &[0x00],
        &[0x10],
        &[0x20, 0x21],
        &[0x30, 0x31],
        &[0x40, 0x41, 0x42, 0x43],
        &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
        &[
            0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f,
        ],
    ];
    let roots = vec![
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    (data.iter().map(|d| leaf_hash(d)).collect(), roots)
}

#[test]
fn roots_match_rfc_reference_tree() {
    let (l, roots) = rfc_tree();
    let mut f = Frontier::new();
    for (i, want) in roots.iter().enumerate() {
        assert_eq!(hex::encode(root_from_leaves(&l[..=i])), *want, "size {}", i + 1);
        f.append(l[i]).unwrap();
        assert_eq!(hex::encode(f.root()), *want, "frontier size {}", i + 1);
        assert_eq!(hex::encode(tree_root(&l, i as u64 + 1).unwrap()), *want);
    }
}

#[test]
fn proofs_match_rfc_reference_proofs() {
    let (l, _) = rfc_tree();
    let hx = |v: Vec<Hash>| v.iter().map(hex::encode).collect::<Vec<_>>();
    assert_eq!(
        hx(inclusion_proof(&l, 5, 8).unwrap()),
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ]
    );
    assert_eq!(
        hx(consistency_proof(&l, 6, 7).unwrap()),
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ]
    );
    assert_eq!(
        hx(consistency_proof(&l, 2, 5).unwrap()),
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ]
    );
    assert!(consistency_proof(&l, 8, 8).unwrap().is_empty());
}

#[test]
fn frontier_matches_reference_for_all_sizes_up_to_300() {
    let l = leaves(300);
    let mut f = Frontier::new();
    assert_eq!(f.root(), empty_root());
    for (i, leaf) in l.iter().enumerate() {
        f.append(*leaf).unwrap();
        let size = i + 1;
        assert_eq!(f.size(), size as u64);
        assert_eq!(f.root(), root_from_leaves(&l[..size]), "size {size}");
        let restored = Frontier::from_bytes(&f.to_bytes()).unwrap();
        assert_eq!(restored, f);
        assert_eq!(Frontier::from_source(&l, size as u64).unwrap(), f);
    }
}

#[test]
fn frontier_subtrees_and_completed_nodes_are_the_real_subtree_roots() {
    let l = leaves(77);
    let mut f = Frontier::new();
    let mut reported = Vec::new();
    for leaf in &l {
        f.append_with(*leaf, |st, h| reported.push((st, *h))).unwrap();
    }
    let check = |st: Subtree, h: &Hash| {
        let begin = st.first_leaf() as usize;
        let end = begin + (1usize << st.level);
        assert_eq!(*h, root_from_leaves(&l[begin..end]), "{st:?}");
    };
    // 77 leaves complete 38 + 19 + 9 + 4 + 2 + 1 = 73 subtrees of level >= 1.
    assert_eq!(reported.len(), 73);
    for (st, h) in &reported {
        check(*st, h);
    }
    let sts: Vec<_> = f.subtrees().map(|(st, h)| (st, *h)).collect();
    assert_eq!(
        sts.iter().map(|(st, _)| (st.level, st.index)).collect::<Vec<_>>(),
        [(6, 0), (3, 8), (2, 18), (0, 76)]
    );
    for (st, h) in &sts {
        check(*st, h);
    }
}

#[test]
fn frontier_from_bytes_rejects_wrong_lengths() {
    assert_eq!(Frontier::from_bytes(&[0; 7]), Err(FrontierError::Truncated));
    assert_eq!(Frontier::from_bytes(&0u64.to_be_bytes()), Ok(Frontier::new()));
    let mut f = Frontier::new();
    for leaf in leaves(5) {
        f.append(leaf).unwrap();
    }
    let bytes = f.to_bytes();
    assert_eq!(bytes.len(), 8 + 64);
    assert!(matches!(
        Frontier::from_bytes(&bytes[..bytes.len() - 1]),
        Err(FrontierError::WrongLength {
            size: 5,
            want: 72,
            got: 71
        })
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Frontier::from_bytes(&longer).is_err());
    // A size whose popcount asks for an absurd length is refused without allocating.
    assert!(Frontier::from_bytes(&u64::MAX.to_be_bytes()).is_err());
}

#[test]
fn full_tree_refuses_to_grow() {
    // A frontier of size 2^64 - 1 (64 subtrees); contents are irrelevant to the size check.
    let mut bytes = u64::MAX.to_be_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(7u8, 64 * HASH_LEN));
    let mut f = Frontier::from_bytes(&bytes).unwrap();
    assert_eq!(f.append([0; 32]), Err(TreeFull));
    assert_eq!(f.size(), u64::MAX);
}

/// Bits to flip in a 32-byte hash: all 256 for trees of up to 16 leaves; for larger trees one
/// per byte, at a position that moves with the byte (so a comparison or hash that ignored any
/// byte would be caught), which keeps the debug-build test time to seconds.
fn bits_to_flip(size: u64) -> Vec<usize> {
    if size <= 16 {
        (0..256).collect()
    } else {
        (0..32).map(|byte| byte * 8 + byte % 8).collect()
    }
}

fn flip(h: &Hash, bit: usize) -> Hash {
    let mut out = *h;
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

#[test]
fn generated_proofs_verify_and_single_bit_changes_fail_for_sizes_up_to_64() {
    let l = leaves(64);
    for size in 1..=64u64 {
        let root = root_from_leaves(&l[..size as usize]);
        for index in 0..size {
            let proof = inclusion_proof(&l, index, size).unwrap();
            let leaf = l[index as usize];
            verify_inclusion(&leaf, index, size, &proof, &root).unwrap();
            for bit in bits_to_flip(size) {
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i] = flip(&bad[i], bit);
                    assert!(verify_inclusion(&leaf, index, size, &bad, &root).is_err());
                }
                let bad_leaf = flip(&leaf, bit);
                assert!(verify_inclusion(&bad_leaf, index, size, &proof, &root).is_err());
                let bad_root = flip(&root, bit);
                assert!(verify_inclusion(&leaf, index, size, &proof, &bad_root).is_err());
            }
            // Another index or size with the same proof must not verify (unless it is the
            // same position in an identical tree shape, which cannot happen for another index).
            for other in 0..size {
                if other != index {
                    assert!(verify_inclusion(&leaf, other, size, &proof, &root).is_err());
                }
            }
        }
    }
}

#[test]
fn consistency_proofs_verify_for_all_pairs_up_to_64_and_single_bit_changes_fail() {
    let l = leaves(64);
    let roots: Vec<Hash> = (0..=64).map(|n| root_from_leaves(&l[..n])).collect();
    for size2 in 1..=64u64 {
        for size1 in 1..=size2 {
            let (r1, r2) = (roots[size1 as usize], roots[size2 as usize]);
            let proof = consistency_proof(&l, size1, size2).unwrap();
            assert_eq!(
                proof.len(),
                if size1 == size2 {
                    0
                } else {
                    consistency_len(size1, size2)
                }
            );
            verify_consistency(size1, size2, &proof, &r1, &r2).unwrap();
            for bit in bits_to_flip(size2) {
                for i in 0..proof.len() {
                    let mut bad = proof.clone();
                    bad[i] = flip(&bad[i], bit);
                    assert!(
                        verify_consistency(size1, size2, &bad, &r1, &r2).is_err(),
                        "{size1}->{size2} proof[{i}] bit {bit}"
                    );
                }
                let b1 = flip(&r1, bit);
                assert!(verify_consistency(size1, size2, &proof, &b1, &r2).is_err());
                let b2 = flip(&r2, bit);
                assert!(verify_consistency(size1, size2, &proof, &r1, &b2).is_err());
            }
            // The proof is bound to its sizes.
            for other in 1..=64u64 {
                if other != size1 && other <= size2 {
                    let r = roots[other as usize];
                    assert!(verify_consistency(other, size2, &proof, &r, &r2).is_err());
                }
            }
            // Roots of other trees are refused.
            if size1 != size2 {
                assert!(verify_consistency(size1, size2, &proof, &r2, &r1).is_err());
            }
        }
    }
}

/// A hash source with a full subtree cache that counts lookups.
struct Counting {
    leaves: Vec<Hash>,
    cache: HashMap<Subtree, Hash>,
    lookups: Cell<u64>,
}

impl HashSource for Counting {
    type Error = LeafOutOfRange;
    fn leaf_hash(&self, index: u64) -> Result<Hash, LeafOutOfRange> {
        self.lookups.set(self.lookups.get() + 1);
        self.leaves.leaf_hash(index)
    }
    fn subtree_hash(&self, st: Subtree) -> Result<Option<Hash>, LeafOutOfRange> {
        self.lookups.set(self.lookups.get() + 1);
        Ok(self.cache.get(&st).copied())
    }
}

#[test]
fn proofs_from_a_full_cache_take_logarithmic_lookups() {
    let n = 10_000u64;
    let mut src = Counting {
        leaves: Vec::new(),
        cache: HashMap::new(),
        lookups: Cell::new(0),
    };
    let mut f = Frontier::new();
    for i in 0..n {
        let leaf = leaf_hash(&i.to_be_bytes());
        src.leaves.push(leaf);
        f.append_with(leaf, |st, h| {
            src.cache.insert(st, *h);
        })
        .unwrap();
    }
    let root = f.root();
    // log2(10000) < 14: each proof hash is one lookup, the one ragged node at most 14 more.
    for (index, size) in [(0, n), (n - 1, n), (4321, n), (5000, 9999), (8191, 8193)] {
        src.lookups.set(0);
        let proof = inclusion_proof(&src, index, size).unwrap();
        assert!(
            src.lookups.get() <= 2 * 14 + 2,
            "{index}/{size}: {}",
            src.lookups.get()
        );
        let r = if size == n {
            root
        } else {
            root_from_leaves(&src.leaves[..size as usize])
        };
        verify_inclusion(&src.leaves[index as usize], index, size, &proof, &r).unwrap();
    }
    for (size1, size2) in [(1, n), (4321, n), (8192, n), (9999, n), (3, 7777)] {
        src.lookups.set(0);
        let proof = consistency_proof(&src, size1, size2).unwrap();
        assert!(
            src.lookups.get() <= 2 * 14 + 2,
            "{size1}->{size2}: {}",
            src.lookups.get()
        );
        let r1 = root_from_leaves(&src.leaves[..size1 as usize]);
        let r2 = root_from_leaves(&src.leaves[..size2 as usize]);
        verify_consistency(size1, size2, &proof, &r1, &r2).unwrap();
    }
    src.lookups.set(0);
    assert_eq!(tree_root(&src, n).unwrap(), root);
    assert!(src.lookups.get() <= 14);
    src.lookups.set(0);
    assert_eq!(Frontier::from_source(&src, n).unwrap(), f);
    assert!(src.lookups.get() <= 14);
}

#[test]
fn generation_refuses_bad_arguments_and_reports_source_errors() {
    let l = leaves(4);
    assert_eq!(
        inclusion_proof(&l, 4, 4),
        Err(GenerateError::IndexOutOfRange { index: 4, size: 4 })
    );
    assert_eq!(
        consistency_proof(&l, 0, 3),
        Err(GenerateError::BadSizes { size1: 0, size2: 3 })
    );
    assert_eq!(
        consistency_proof(&l, 4, 3),
        Err(GenerateError::BadSizes { size1: 4, size2: 3 })
    );
    assert_eq!(
        inclusion_proof(&l, 0, 5),
        Err(GenerateError::Source(LeafOutOfRange(4)))
    );
}

#[test]
fn verification_errors_are_specific() {
    let l = leaves(8);
    let root = root_from_leaves(&l);
    let proof = inclusion_proof(&l, 3, 8).unwrap();
    assert_eq!(
        verify_inclusion(&l[3], 8, 8, &proof, &root),
        Err(ProofError::IndexOutOfRange { index: 8, size: 8 })
    );
    assert_eq!(
        verify_inclusion(&l[3][..31], 3, 8, &proof, &root),
        Err(ProofError::BadHashLength {
            what: HashRole::Leaf,
            len: 31
        })
    );
    assert_eq!(
        verify_inclusion(&l[3], 3, 8, &proof[..2], &root),
        Err(ProofError::WrongProofLength { got: 2, want: 3 })
    );
    let mut short = proof.iter().map(|h| h.to_vec()).collect::<Vec<_>>();
    short[1].pop();
    assert_eq!(
        verify_inclusion(&l[3], 3, 8, &short, &root),
        Err(ProofError::BadHashLength {
            what: HashRole::Proof(1),
            len: 31
        })
    );
    assert_eq!(
        verify_inclusion(&l[2], 3, 8, &proof, &root),
        Err(ProofError::RootMismatch)
    );
    let huge = vec![[0u8; 32]; 65];
    assert_eq!(
        verify_inclusion(&l[3], 3, 8, &huge, &root),
        Err(ProofError::ProofTooLong { len: 65, max: 64 })
    );
    let huge = vec![[0u8; 32]; 66];
    assert_eq!(
        verify_consistency(3, 8, &huge, &root, &root),
        Err(ProofError::ProofTooLong { len: 66, max: 65 })
    );
    let r3 = root_from_leaves(&l[..3]);
    let c = consistency_proof(&l, 3, 8).unwrap();
    assert_eq!(
        verify_consistency(3, 8, &c, &root, &root),
        Err(ProofError::FirstRootMismatch)
    );
    assert_eq!(
        verify_consistency(3, 8, &c, &r3, &r3),
        Err(ProofError::SecondRootMismatch)
    );
    assert_eq!(
        verify_consistency(8, 3, &c, &r3, &root),
        Err(ProofError::SizeDecreased { size1: 8, size2: 3 })
    );
    assert_eq!(
        verify_consistency(0, 3, &c, &r3, &root),
        Err(ProofError::FromEmptyTree)
    );
    let r4 = root_from_leaves(&l[..4]);
    let c4 = consistency_proof(&l, 4, 8).unwrap();
    assert_eq!(
        verify_consistency(4, 8, &c4, &r4[..5], &root),
        Err(ProofError::BadHashLength {
            what: HashRole::FirstRoot,
            len: 5
        })
    );
    assert_eq!(
        verify_consistency(8, 8, &c4, &root, &root),
        Err(ProofError::WrongProofLength { got: 1, want: 0 })
    );
}

#[test]
fn largest_sizes_do_not_overflow() {
    // Proof lengths at the top of the u64 range; the maximum consistency proof has 65 hashes.
    assert_eq!(consistency_len(3, u64::MAX), MAX_CONSISTENCY_PROOF_LEN);
    // The last leaf of the largest tree has a sibling for each of the 63 other subtrees.
    let (i, b) = decompose(u64::MAX - 1, u64::MAX);
    assert_eq!(i + b, 63);
    let (i, b) = decompose(0, u64::MAX);
    assert_eq!(i + b, 64);
    // Random proofs of the right length are refused, not panicked on.
    let p = vec![[1u8; 32]; 64];
    assert_eq!(
        verify_inclusion(&[2; 32], 0, u64::MAX, &p, &[3; 32]),
        Err(ProofError::RootMismatch)
    );
    let p = vec![[1u8; 32]; 65];
    assert!(verify_consistency(3, u64::MAX, &p, &[3; 32], &[4; 32]).is_err());
    let p = vec![[1u8; 32]; consistency_len(1 << 63, u64::MAX)];
    assert!(verify_consistency(1 << 63, u64::MAX, &p, &[3; 32], &[4; 32]).is_err());
}

#[test]
fn verification_never_panics_on_arbitrary_sizes() {
    // A deterministic sweep over awkward sizes and proof lengths.
    let sizes = [
        0u64,
        1,
        2,
        3,
        4,
        5,
        7,
        8,
        9,
        63,
        64,
        65,
        1 << 32,
        (1 << 63) - 1,
        1 << 63,
        u64::MAX,
    ];
    for &a in &sizes {
        for &b in &sizes {
            for len in [0usize, 1, 2, 31, 32, 33, 63, 64, 65, 66] {
                let p = vec![[9u8; 32]; len];
                let _ = verify_inclusion(&[1; 32], a, b, &p, &[2; 32]);
                let _ = verify_consistency(a, b, &p, &[1; 32], &[2; 32]);
                let _ = verify_consistency(a, b, &p, &[1; 3], &[2; 3]);
            }
        }
    }
}
