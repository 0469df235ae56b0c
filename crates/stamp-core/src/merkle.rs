//! Merkle tree mathematics for the site's append-only audit log: RFC 6962 / RFC 9162 hashing with
//! SHA-256, a compact incremental tree state ([`Frontier`]), proof generation from a narrow storage
//! interface ([`HashSource`]) and proof verification. No I/O.
//!
//! # Hashing (RFC 9162 section 2.1.1)
//!
//! * empty tree: `MTH({}) = SHA-256()` (the hash of the empty string);
//! * leaf: `SHA-256(0x00 || data)`;
//! * interior node: `SHA-256(0x01 || left || right)`;
//! * a tree of `n > 1` leaves is split at `k`, the largest power of two smaller than `n`: the left
//!   child covers leaves `[0, k)` (always a perfect subtree), the right child leaves `[k, n)`.
//!
//! # Subtrees
//!
//! A [`Subtree`] `(level, index)` is the perfect subtree covering leaves
//! `[index * 2^level, (index + 1) * 2^level)`. Every left child in the tree is such a subtree, so a
//! storage layer that remembers their hashes (the [`Frontier`] reports each one as it is completed)
//! can serve any proof with O(log n) lookups.
//!
//! # Verification
//!
//! Verification follows the algorithms of RFC 9162 sections 2.1.3.2 and 2.1.4.2 and never panics.
//! Hashes to verify are taken as byte slices, because they come from outside: a leaf hash or proof
//! element that is not 32 bytes long is rejected ([`ProofError::BadHashLength`]); roots are compared
//! byte for byte (a root of the wrong length can never equal a computed one).

use std::fmt;

use aws_lc_rs::digest::{Context, SHA256};

/// Length of a hash in bytes.
pub const HASH_LEN: usize = 32;

/// A SHA-256 hash: a leaf hash, a subtree hash or a tree root.
pub type Hash = [u8; HASH_LEN];

/// Longest possible inclusion proof: a tree has at most 2^64 - 1 leaves, hence at most 64 levels.
pub const MAX_INCLUSION_PROOF_LEN: usize = 64;

/// Longest possible consistency proof: the 64 hashes of an inclusion proof for leaf `size1 - 1`,
/// plus the hash of the subtree it starts from when `size1` is not a power of two (RFC 9162 section
/// 2.1.4.1; e.g. sizes 3 and 2^64 - 1 need 65 hashes).
pub const MAX_CONSISTENCY_PROOF_LEN: usize = 65;

/// Root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[]);
    finish(ctx)
}

/// Leaf hash of an entry: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(data);
    finish(ctx)
}

/// Interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &[u8], right: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

fn finish(ctx: Context) -> Hash {
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// Root of the tree with the given leaf hashes, straight from the recursive definition (RFC 9162
/// section 2.1.1). O(n) time; the reference the other code is tested against.
pub fn root_from_leaves(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            // k < n, and n is a usize.
            #[allow(clippy::cast_possible_truncation)]
            let k = split_point(n as u64) as usize;
            node_hash(&root_from_leaves(&leaves[..k]), &root_from_leaves(&leaves[k..]))
        }
    }
}

/// The largest power of two strictly smaller than `n` (for `n >= 2`).
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    // n >= 2, so n - 1 >= 1 and the shift is at most 63.
    1u64 << (63 - (n - 1).leading_zeros())
}

/// A perfect subtree: `2^level` leaves starting at leaf `index * 2^level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subtree {
    /// Height above the leaves (0 is a single leaf).
    pub level: u8,
    /// Position among the subtrees of the same level, from the left.
    pub index: u64,
}

impl Subtree {
    /// First leaf covered, `index * 2^level` (meaningful for subtrees inside a tree, whose
    /// leaves all have `u64` indexes).
    pub fn first_leaf(&self) -> u64 {
        self.index.checked_shl(u32::from(self.level)).unwrap_or(0)
    }
}

/// Serves leaf hashes, and optionally cached subtree hashes, of an append-only log.
///
/// Proof generation calls [`HashSource::subtree_hash`] for every perfect subtree it needs and
/// falls back to hashing the subtree's two halves when it returns `None`, down to the leaves.
/// With every subtree hash cached (what [`Frontier::append_with`] reports, about one per leaf), an
/// inclusion or consistency proof costs O(log n) lookups; with none, proving needs O(n) leaf
/// lookups (the sibling of the top level alone covers half the tree). Caching only levels that are
/// multiples of `L` bounds the cost at O(2^L log n).
pub trait HashSource {
    /// What can go wrong while reading (an I/O error, a missing row).
    type Error;

    /// Hash of leaf `index`.
    fn leaf_hash(&self, index: u64) -> Result<Hash, Self::Error>;

    /// Hash of a perfect subtree with `level >= 1`, if cached. Never called for a subtree that
    /// reaches beyond the tree size being proved.
    fn subtree_hash(&self, subtree: Subtree) -> Result<Option<Hash>, Self::Error> {
        let _ = subtree;
        Ok(None)
    }
}

/// A leaf index past the end of an in-memory slice of leaf hashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no leaf {0} in the slice")]
pub struct LeafOutOfRange(pub u64);

impl HashSource for [Hash] {
    type Error = LeafOutOfRange;

    fn leaf_hash(&self, index: u64) -> Result<Hash, LeafOutOfRange> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.get(i))
            .copied()
            .ok_or(LeafOutOfRange(index))
    }
}

impl HashSource for Vec<Hash> {
    type Error = LeafOutOfRange;

    fn leaf_hash(&self, index: u64) -> Result<Hash, LeafOutOfRange> {
        self.as_slice().leaf_hash(index)
    }
}

/// Why a proof could not be generated.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError<E> {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// A consistency proof needs `0 < size1 <= size2`.
    #[error("no consistency proof from size {size1} to size {size2}")]
    BadSizes {
        /// The older tree size.
        size1: u64,
        /// The newer tree size.
        size2: u64,
    },
    /// The hash source failed.
    #[error("reading the log's hashes")]
    Source(#[source] E),
}

/// `MTH(D[begin:end])`, for a range whose left part in every split is a perfect subtree (true of
/// every range the proof algorithms ask for). Recursion depth is at most 64.
fn range_hash<S: HashSource + ?Sized>(src: &S, begin: u64, end: u64) -> Result<Hash, S::Error> {
    let n = end - begin;
    if n == 1 {
        return src.leaf_hash(begin);
    }
    if n.is_power_of_two() && begin.is_multiple_of(n) {
        // At most 64.
        #[allow(clippy::cast_possible_truncation)]
        let level = n.trailing_zeros() as u8;
        if let Some(h) = src.subtree_hash(Subtree {
            level,
            index: begin >> level,
        })? {
            return Ok(h);
        }
    }
    let k = split_point(n);
    let left = range_hash(src, begin, begin + k)?;
    let right = range_hash(src, begin + k, end)?;
    Ok(node_hash(&left, &right))
}

/// Root of the tree made of the first `size` leaves of `src`. O(log n) lookups with a full subtree
/// cache, O(n) without.
pub fn tree_root<S: HashSource + ?Sized>(src: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(src, 0, size)
}

/// Inclusion proof for leaf `index` in the tree of the first `size` leaves (RFC 9162 section
/// 2.1.3.1), ordered from the leaf up. At most 64 hashes; at most one of them is not a perfect
/// subtree, so the cost is O(log n) lookups with a full subtree cache.
pub fn inclusion_proof<S: HashSource + ?Sized>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, GenerateError<S::Error>> {
    if index >= size {
        return Err(GenerateError::IndexOutOfRange { index, size });
    }
    // Walk down from the root, collecting siblings top-down, then reverse.
    let mut path = Vec::new();
    let (mut begin, mut end) = (0u64, size);
    while end - begin > 1 {
        let k = split_point(end - begin);
        if index - begin < k {
            path.push(range_hash(src, begin + k, end).map_err(GenerateError::Source)?);
            end = begin + k;
        } else {
            path.push(range_hash(src, begin, begin + k).map_err(GenerateError::Source)?);
            begin += k;
        }
    }
    path.reverse();
    Ok(path)
}

/// Consistency proof from the tree of the first `size1` leaves to that of the first `size2`
/// (RFC 9162 section 2.1.4.1), for `0 < size1 <= size2`; empty when the sizes are equal. At most
/// 65 hashes, at most one of them not a perfect subtree: O(log n) lookups with a full cache.
pub fn consistency_proof<S: HashSource + ?Sized>(
    src: &S,
    size1: u64,
    size2: u64,
) -> Result<Vec<Hash>, GenerateError<S::Error>> {
    if size1 == 0 || size1 > size2 {
        return Err(GenerateError::BadSizes { size1, size2 });
    }
    // SUBPROOF(m, D[begin:end], b), unrolled; siblings are collected top-down, then reversed.
    let mut path = Vec::new();
    let (mut begin, mut end, mut m) = (0u64, size2, size1);
    let mut whole_old_tree = true; // b in the RFC
    loop {
        let n = end - begin;
        if m == n {
            if !whole_old_tree {
                path.push(range_hash(src, begin, end).map_err(GenerateError::Source)?);
            }
            break;
        }
        let k = split_point(n);
        if m <= k {
            path.push(range_hash(src, begin + k, end).map_err(GenerateError::Source)?);
            end = begin + k;
        } else {
            path.push(range_hash(src, begin, begin + k).map_err(GenerateError::Source)?);
            begin += k;
            m -= k;
            whole_old_tree = false;
        }
    }
    path.reverse();
    Ok(path)
}

/// Why a proof did not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// Inclusion: the leaf index is not below the tree size.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange {
        /// The leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// Consistency: the second tree is smaller than the first.
    #[error("tree size went backwards from {size1} to {size2}")]
    SizeDecreased {
        /// The older size.
        size1: u64,
        /// The newer size.
        size2: u64,
    },
    /// Consistency from the empty tree proves nothing and is refused.
    #[error("a consistency proof from the empty tree is meaningless")]
    FromEmptyTree,
    /// The proof has more hashes than any valid proof can have.
    #[error("proof has {len} hashes, more than the maximum {max}")]
    ProofTooLong {
        /// Hashes in the proof.
        len: usize,
        /// The maximum for this kind of proof.
        max: usize,
    },
    /// The proof does not have the number of hashes the sizes call for.
    #[error("proof has {got} hashes, the sizes call for {want}")]
    WrongProofLength {
        /// Hashes in the proof.
        got: usize,
        /// Hashes expected.
        want: usize,
    },
    /// A hash is not 32 bytes long.
    #[error("{what} is {len} bytes long, not 32")]
    BadHashLength {
        /// Which hash (`leaf hash`, `proof hash 3`, `first root`).
        what: HashRole,
        /// Its length.
        len: usize,
    },
    /// The root computed from the proof is not the root given.
    #[error("the proof leads to a different root")]
    RootMismatch,
    /// Consistency: the proof does not lead to the first root.
    #[error("the proof does not lead to the first root")]
    FirstRootMismatch,
    /// Consistency: the proof does not lead to the second root.
    #[error("the proof does not lead to the second root")]
    SecondRootMismatch,
}

/// Which input hash a [`ProofError::BadHashLength`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashRole {
    /// The leaf hash of an inclusion proof.
    Leaf,
    /// The first (older) root of a consistency proof.
    FirstRoot,
    /// The hash at this position in the proof.
    Proof(usize),
}

impl fmt::Display for HashRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashRole::Leaf => f.write_str("leaf hash"),
            HashRole::FirstRoot => f.write_str("first root"),
            HashRole::Proof(i) => write!(f, "proof hash {i}"),
        }
    }
}

/// Number of proof hashes below and above the point where the paths to leaves `index` and
/// `size - 1` meet (`size > index`).
fn decompose(index: u64, size: u64) -> (usize, usize) {
    let inner = (64 - (index ^ (size - 1)).leading_zeros()) as usize;
    // inner is at most 64.
    #[allow(clippy::cast_possible_truncation)]
    let border = index.checked_shr(inner as u32).unwrap_or(0).count_ones() as usize;
    (inner, border)
}

fn check_len(what: HashRole, h: &[u8]) -> Result<(), ProofError> {
    if h.len() != HASH_LEN {
        return Err(ProofError::BadHashLength { what, len: h.len() });
    }
    Ok(())
}

fn check_proof_hashes<P: AsRef<[u8]>>(proof: &[P]) -> Result<(), ProofError> {
    for (i, p) in proof.iter().enumerate() {
        check_len(HashRole::Proof(i), p.as_ref())?;
    }
    Ok(())
}

/// Checks that `proof` proves leaf `index`, with hash `leaf_hash`, is in the tree of `size` leaves
/// whose root is `root` (RFC 9162 section 2.1.3.2). At most 64 hashes are computed.
pub fn verify_inclusion<P: AsRef<[u8]>>(
    leaf_hash: &[u8],
    index: u64,
    size: u64,
    proof: &[P],
    root: &[u8],
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    if proof.len() > MAX_INCLUSION_PROOF_LEN {
        return Err(ProofError::ProofTooLong {
            len: proof.len(),
            max: MAX_INCLUSION_PROOF_LEN,
        });
    }
    check_len(HashRole::Leaf, leaf_hash)?;
    let (inner, border) = decompose(index, size);
    if proof.len() != inner + border {
        return Err(ProofError::WrongProofLength {
            got: proof.len(),
            want: inner + border,
        });
    }
    check_proof_hashes(proof)?;

    // RFC 9162 section 2.1.3.2, step by step.
    let mut fn_ = index;
    let mut sn = size - 1;
    let mut r: Hash = [0; HASH_LEN];
    r.copy_from_slice(leaf_hash);
    for p in proof {
        let p = p.as_ref();
        if sn == 0 {
            return Err(ProofError::WrongProofLength {
                got: proof.len(),
                want: inner + border,
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongProofLength {
            got: proof.len(),
            want: inner + border,
        });
    }
    if r.as_slice() != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Expected length of a consistency proof for `0 < size1 < size2`.
fn consistency_len(size1: u64, size2: u64) -> usize {
    let (inner, border) = decompose(size1 - 1, size2);
    let shift = size1.trailing_zeros() as usize;
    // size1 < size2 puts the meeting point above level `shift`, so inner > shift.
    let inner = inner.saturating_sub(shift);
    let seed = usize::from(!size1.is_power_of_two());
    seed + inner + border
}

/// Checks that `proof` proves the tree of `size2` leaves with root `root2` extends the tree of
/// `size1` leaves with root `root1` (RFC 9162 section 2.1.4.2). The RFC requires
/// `0 < size1 < size2`; in addition, equal sizes are accepted with an empty proof and equal roots.
/// A proof from the empty tree is refused ([`ProofError::FromEmptyTree`]): it would prove nothing.
/// At most 130 hashes are computed.
pub fn verify_consistency<P: AsRef<[u8]>>(
    size1: u64,
    size2: u64,
    proof: &[P],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), ProofError> {
    if size2 < size1 {
        return Err(ProofError::SizeDecreased { size1, size2 });
    }
    if size1 == 0 {
        return Err(ProofError::FromEmptyTree);
    }
    if proof.len() > MAX_CONSISTENCY_PROOF_LEN {
        return Err(ProofError::ProofTooLong {
            len: proof.len(),
            max: MAX_CONSISTENCY_PROOF_LEN,
        });
    }
    if size1 == size2 {
        if !proof.is_empty() {
            return Err(ProofError::WrongProofLength {
                got: proof.len(),
                want: 0,
            });
        }
        if root1 != root2 {
            return Err(ProofError::SecondRootMismatch);
        }
        return Ok(());
    }
    let want = consistency_len(size1, size2);
    if proof.len() != want {
        return Err(ProofError::WrongProofLength {
            got: proof.len(),
            want,
        });
    }
    check_proof_hashes(proof)?;

    // RFC 9162 section 2.1.4.2, step by step. Step 1 (empty path) is covered by the length check:
    // size1 < size2 always calls for at least one hash. Step 2: a power-of-two size1 puts root1
    // in front of the path.
    let first_is_root1 = size1.is_power_of_two();
    if first_is_root1 {
        check_len(HashRole::FirstRoot, root1)?;
    }
    let mut path = proof.iter().map(|p| p.as_ref());
    let first: &[u8] = if first_is_root1 {
        root1
    } else {
        match path.next() {
            Some(p) => p,
            None => return Err(ProofError::WrongProofLength { got: 0, want }),
        }
    };
    // Step 3.
    let mut fn_ = size1 - 1;
    let mut sn = size2 - 1;
    // Step 4.
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 5.
    let mut fr: Hash = [0; HASH_LEN];
    fr.copy_from_slice(first);
    let mut sr = fr;
    // Step 6.
    for c in path {
        if sn == 0 {
            return Err(ProofError::WrongProofLength {
                got: proof.len(),
                want,
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    // Step 7.
    if sn != 0 {
        return Err(ProofError::WrongProofLength {
            got: proof.len(),
            want,
        });
    }
    if fr.as_slice() != root1 {
        return Err(ProofError::FirstRootMismatch);
    }
    if sr.as_slice() != root2 {
        return Err(ProofError::SecondRootMismatch);
    }
    Ok(())
}

/// The tree has 2^64 - 1 leaves and cannot grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the tree is full")]
pub struct TreeFull;

/// Why a serialized [`Frontier`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrontierError {
    /// The encoding is shorter than its 8-byte size.
    #[error("frontier encoding is too short")]
    Truncated,
    /// The encoding's length does not match the number of subtrees its size calls for.
    #[error("frontier of size {size} needs {want} bytes, got {got}")]
    WrongLength {
        /// The encoded tree size.
        size: u64,
        /// Bytes expected.
        want: usize,
        /// Bytes given.
        got: usize,
    },
}

/// The compact state of an append-only Merkle tree: its size and the roots of the perfect
/// subtrees its leaves decompose into (one per set bit of the size, largest first), at most 64
/// hashes. Enough to append and to compute the root, without the leaves.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    /// Roots of the perfect subtrees, leftmost (largest) first.
    subtrees: Vec<Hash>,
}

impl fmt::Debug for Frontier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frontier")
            .field("size", &self.size)
            .field("root", &hex::encode(self.root()))
            .finish()
    }
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Root hash of the tree: the subtree roots folded from the right. At most 63 hashes.
    pub fn root(&self) -> Hash {
        let mut it = self.subtrees.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// The perfect subtrees the leaves decompose into, leftmost (largest) first, with their
    /// roots.
    pub fn subtrees(&self) -> impl Iterator<Item = (Subtree, &Hash)> + '_ {
        let mut start = 0u64;
        let levels = (0..64u8).rev().filter(move |l| (self.size >> l) & 1 == 1);
        levels.zip(self.subtrees.iter()).map(move |(level, h)| {
            let st = Subtree {
                level,
                index: start >> level,
            };
            start += 1u64 << level;
            (st, h)
        })
    }

    /// Appends a leaf hash.
    pub fn append(&mut self, leaf: Hash) -> Result<(), TreeFull> {
        self.append_with(leaf, |_, _| {})
    }

    /// Appends a leaf hash and calls `completed` for every perfect subtree of level >= 1 this
    /// completes (amortized one per leaf, at most 63), from the bottom up, so that storage can
    /// cache them for [`HashSource::subtree_hash`]. O(log n) hashes worst case, amortized O(1).
    pub fn append_with(
        &mut self,
        leaf: Hash,
        mut completed: impl FnMut(Subtree, &Hash),
    ) -> Result<(), TreeFull> {
        let index = self.size;
        let new_size = index.checked_add(1).ok_or(TreeFull)?;
        let mut h = leaf;
        // Each trailing one bit of the old size is a subtree that merges with the new one.
        let merges = index.trailing_ones();
        for level in 0..merges {
            let Some(left) = self.subtrees.pop() else {
                break; // unreachable: one subtree per set bit
            };
            h = node_hash(&left, &h);
            let level = level + 1;
            completed(
                Subtree {
                    // At most 64: one level per bit of a u64 index.
                    #[allow(clippy::cast_possible_truncation)]
                    level: level as u8,
                    index: index >> level,
                },
                &h,
            );
        }
        self.subtrees.push(h);
        self.size = new_size;
        Ok(())
    }

    /// Rebuilds the frontier of the first `size` leaves of `src`: O(log n) lookups with a full
    /// subtree cache.
    pub fn from_source<S: HashSource + ?Sized>(src: &S, size: u64) -> Result<Self, S::Error> {
        let mut subtrees = Vec::with_capacity(size.count_ones() as usize);
        let mut start = 0u64;
        for level in (0..64u32).rev() {
            if (size >> level) & 1 == 1 {
                let n = 1u64 << level;
                subtrees.push(range_hash(src, start, start + n)?);
                start += n;
            }
        }
        Ok(Frontier { size, subtrees })
    }

    /// Serialized form: the size as 8 bytes big-endian, then the subtree roots, largest first
    /// (`8 + 32 * popcount(size)` bytes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + HASH_LEN * self.subtrees.len());
        out.extend_from_slice(&self.size.to_be_bytes());
        for h in &self.subtrees {
            out.extend_from_slice(h);
        }
        out
    }

    /// Restores a frontier from [`Frontier::to_bytes`], checking its length.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FrontierError> {
        let (size_bytes, rest) = bytes.split_first_chunk::<8>().ok_or(FrontierError::Truncated)?;
        let size = u64::from_be_bytes(*size_bytes);
        let want = 8 + HASH_LEN * size.count_ones() as usize;
        if bytes.len() != want {
            return Err(FrontierError::WrongLength {
                size,
                want,
                got: bytes.len(),
            });
        }
        let subtrees = rest
            .chunks_exact(HASH_LEN)
            .map(|c| {
                let mut h = [0u8; HASH_LEN];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(Frontier { size, subtrees })
    }
}

#[cfg(test)]
mod tests;
