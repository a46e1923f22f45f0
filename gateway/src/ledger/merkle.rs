//! Merkle tree math for an append-only transparency log, as specified by
//! [RFC 9162] (Certificate Transparency v2), §2.1, using SHA-256 as in
//! [RFC 6962] §2.1.
//!
//! * Leaf and node hashing: RFC 9162 §2.1.1 (`MTH`, with the `0x00` leaf and
//!   `0x01` interior-node domain-separation prefixes).
//! * Inclusion proofs: generation `PATH` (§2.1.3.1) and verification
//!   (§2.1.3.2).
//! * Consistency proofs: generation `PROOF`/`SUBPROOF` (§2.1.4.1) and
//!   verification (§2.1.4.2).
//! * [`CompactRange`]: the O(log n) "right edge" of the tree, so a log can
//!   append leaves and compute its current root without keeping every leaf in
//!   memory.
//!
//! Everything here is pure computation: no I/O, no allocation beyond the
//! returned vectors, and no panics on any input (all size and index checks
//! return [`ProofError`]).
//!
//! Naming convention: a `leaf_index` is a zero-based position of a leaf, a
//! `tree_size` (also `old_size`/`new_size`) is a number of leaves. A leaf
//! index is valid for a tree iff `leaf_index < tree_size`.
//!
//! [RFC 9162]: https://www.rfc-editor.org/rfc/rfc9162.html
//! [RFC 6962]: https://www.rfc-editor.org/rfc/rfc6962.html

use sha2::{Digest, Sha256};
use std::fmt;

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Domain-separation prefix for leaf hashes (RFC 9162 §2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Domain-separation prefix for interior node hashes (RFC 9162 §2.1.1).
const NODE_PREFIX: u8 = 0x01;

/// Hash of a leaf: `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([LEAF_PREFIX]);
    hasher.update(leaf);
    hasher.finalize().into()
}

/// Hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([NODE_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// Root of the empty tree: `SHA-256("")` (RFC 9162 §2.1.1).
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Why a proof could not be generated or did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProofError {
    /// `leaf_index >= tree_size`.
    LeafIndexOutOfRange { leaf_index: u64, tree_size: u64 },
    /// A proof was requested for a tree larger than the leaves supplied.
    TreeSizeExceedsLeaves { tree_size: u64, leaf_count: u64 },
    /// A consistency proof with `old_size > new_size`.
    OldSizeExceedsNewSize { old_size: u64, new_size: u64 },
    /// A consistency proof from the empty tree (`old_size == 0`); such a
    /// proof is meaningless (every tree extends the empty tree), so callers
    /// must not ask for or rely on one.
    EmptyOldTree,
    /// The proof has fewer hashes than the sizes require.
    ProofTooShort,
    /// The proof has more hashes than the sizes require.
    ProofTooLong,
    /// The root computed from the proof is not the expected (new) root.
    RootMismatch,
    /// The old root computed from a consistency proof is not the expected one.
    OldRootMismatch,
    /// A [`CompactRange`] cannot grow past `u64::MAX` leaves.
    TreeFull,
    /// A [`CompactRange`] was restored with a hash count that does not match
    /// its size (it must hold `tree_size.count_ones()` hashes).
    MalformedCompactRange { tree_size: u64, hash_count: u64 },
}

impl fmt::Display for ProofError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LeafIndexOutOfRange { leaf_index, tree_size } => {
                write!(f, "leaf index {leaf_index} is not below tree size {tree_size}")
            }
            Self::TreeSizeExceedsLeaves { tree_size, leaf_count } => {
                write!(f, "tree size {tree_size} exceeds the {leaf_count} leaves available")
            }
            Self::OldSizeExceedsNewSize { old_size, new_size } => {
                write!(f, "old tree size {old_size} exceeds new tree size {new_size}")
            }
            Self::EmptyOldTree => f.write_str("consistency proof from the empty tree is meaningless"),
            Self::ProofTooShort => f.write_str("proof is too short"),
            Self::ProofTooLong => f.write_str("proof is too long"),
            Self::RootMismatch => f.write_str("computed root does not match the expected root"),
            Self::OldRootMismatch => f.write_str("computed old root does not match the expected old root"),
            Self::TreeFull => f.write_str("tree cannot hold more than u64::MAX leaves"),
            Self::MalformedCompactRange { tree_size, hash_count } => {
                write!(f, "compact range for tree size {tree_size} cannot have {hash_count} hashes")
            }
        }
    }
}

impl std::error::Error for ProofError {}

/// The largest power of two strictly smaller than `n`; requires `n >= 2`
/// (the split point `k` of RFC 9162 §2.1.1).
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// `MTH(D[n])` from RFC 9162 §2.1.1, over leaf hashes. `O(n)` hashing.
///
/// This is the reference definition, independent of [`CompactRange`]; a
/// verifier holding every leaf can use it to recompute a published root.
pub fn root_from_leaf_hashes(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [leaf] => *leaf,
        _ => {
            let (left, right) = leaves.split_at(split_point(leaves.len()));
            node_hash(&root_from_leaf_hashes(left), &root_from_leaf_hashes(right))
        }
    }
}

/// Returns the first `tree_size` leaves, or an error if there are fewer.
fn prefix(leaves: &[Hash], tree_size: u64) -> Result<&[Hash], ProofError> {
    usize::try_from(tree_size)
        .ok()
        .and_then(|n| leaves.get(..n))
        .ok_or(ProofError::TreeSizeExceedsLeaves { tree_size, leaf_count: leaves.len() as u64 })
}

/// Inclusion proof (audit path) for the leaf at `leaf_index` in the tree made
/// of the first `tree_size` of `leaves`: `PATH(m, D[n])`, RFC 9162 §2.1.3.1.
///
/// The proof is ordered from the leaf's sibling up to the root's child.
pub fn inclusion_proof(leaves: &[Hash], leaf_index: u64, tree_size: u64) -> Result<Vec<Hash>, ProofError> {
    let tree = prefix(leaves, tree_size)?;
    if leaf_index >= tree_size {
        return Err(ProofError::LeafIndexOutOfRange { leaf_index, tree_size });
    }
    // leaf_index < tree_size <= leaves.len(), so it fits in usize.
    let mut index = leaf_index as usize;
    let mut subtree = tree;
    // PATH is defined recursively with siblings appended after the recursive
    // part; walk from the root down and reverse at the end.
    let mut proof = Vec::new();
    while subtree.len() > 1 {
        let k = split_point(subtree.len());
        let (left, right) = subtree.split_at(k);
        if index < k {
            proof.push(root_from_leaf_hashes(right));
            subtree = left;
        } else {
            proof.push(root_from_leaf_hashes(left));
            subtree = right;
            index -= k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies that `leaf_hash` is the leaf at `leaf_index` in the tree of size
/// `tree_size` whose root is `root`, using the algorithm of RFC 9162 §2.1.3.2.
pub fn verify_inclusion(leaf_hash: &Hash, leaf_index: u64, tree_size: u64, proof: &[Hash], root: &Hash) -> Result<(), ProofError> {
    // Step 1.
    if leaf_index >= tree_size {
        return Err(ProofError::LeafIndexOutOfRange { leaf_index, tree_size });
    }
    // Steps 2-3.
    let mut fnode = leaf_index;
    let mut snode = tree_size - 1;
    let mut r = *leaf_hash;
    // Step 4.
    for p in proof {
        if snode == 0 {
            return Err(ProofError::ProofTooLong);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    if snode != 0 {
        return Err(ProofError::ProofTooShort);
    }
    if r != *root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// Consistency proof between the trees made of the first `old_size` and the
/// first `new_size` of `leaves`: `PROOF(m, D[n])`, RFC 9162 §2.1.4.1.
///
/// Requires `0 < old_size <= new_size <= leaves.len()`. When
/// `old_size == new_size` the proof is empty.
pub fn consistency_proof(leaves: &[Hash], old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProofError> {
    let tree = prefix(leaves, new_size)?;
    if old_size > new_size {
        return Err(ProofError::OldSizeExceedsNewSize { old_size, new_size });
    }
    if old_size == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    // old_size <= new_size <= leaves.len(), so it fits in usize.
    let mut m = old_size as usize;
    let mut subtree = tree;
    // `b` of SUBPROOF: true while `subtree` is the left edge of the whole
    // tree, whose hash at size m the verifier already knows.
    let mut known = true;
    let mut proof = Vec::new();
    // As for PATH, siblings are emitted root-first and reversed at the end.
    while m != subtree.len() {
        let k = split_point(subtree.len());
        let (left, right) = subtree.split_at(k);
        if m <= k {
            proof.push(root_from_leaf_hashes(right));
            subtree = left;
        } else {
            proof.push(root_from_leaf_hashes(left));
            subtree = right;
            m -= k;
            known = false;
        }
    }
    if !known {
        proof.push(root_from_leaf_hashes(subtree));
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies that the tree of size `old_size` with root `old_root` is a prefix
/// of the tree of size `new_size` with root `new_root`, using the algorithm
/// of RFC 9162 §2.1.4.2.
///
/// `old_size == new_size` verifies iff the proof is empty and the roots are
/// equal. `old_size == 0` is rejected with [`ProofError::EmptyOldTree`], as
/// in transparency-dev/merkle: a client without a previous tree has nothing
/// to check.
pub fn verify_consistency(old_size: u64, new_size: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::OldSizeExceedsNewSize { old_size, new_size });
    }
    if old_size == 0 {
        return Err(ProofError::EmptyOldTree);
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::ProofTooLong);
        }
        if old_root != new_root {
            return Err(ProofError::RootMismatch);
        }
        return Ok(());
    }
    // Step 1.
    let Some((first, rest)) = proof.split_first() else {
        return Err(ProofError::ProofTooShort);
    };
    // Step 2: if old_size is a power of two the old root is itself the first
    // element of the path; iterate over (old_root, proof...) instead.
    let (seed, path) = if old_size.is_power_of_two() { (old_root, proof) } else { (first, rest) };
    // Step 3.
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    // Step 4.
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    let mut fr = *seed;
    let mut sr = *seed;
    // Step 6.
    for c in path {
        if snode == 0 {
            return Err(ProofError::ProofTooLong);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 7.
    if snode != 0 {
        return Err(ProofError::ProofTooShort);
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch);
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// The right edge of a Merkle tree: the roots of the perfect subtrees that
/// make up a tree of `tree_size` leaves, left (largest) to right (smallest),
/// one per set bit of `tree_size`.
///
/// Appending a leaf and computing the root are both `O(log n)`. Persist it
/// with [`CompactRange::tree_size`] and [`CompactRange::hashes`], restore it
/// with [`CompactRange::from_parts`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CompactRange {
    tree_size: u64,
    hashes: Vec<Hash>,
}

impl CompactRange {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Restores a range saved from [`Self::tree_size`] and [`Self::hashes`].
    ///
    /// Only the shape is checked (`hashes.len() == tree_size.count_ones()`);
    /// the hashes themselves must come from trusted storage.
    pub fn from_parts(tree_size: u64, hashes: Vec<Hash>) -> Result<Self, ProofError> {
        if hashes.len() as u64 != u64::from(tree_size.count_ones()) {
            return Err(ProofError::MalformedCompactRange { tree_size, hash_count: hashes.len() as u64 });
        }
        Ok(Self { tree_size, hashes })
    }

    /// Number of leaves appended so far.
    pub fn tree_size(&self) -> u64 {
        self.tree_size
    }

    /// The perfect-subtree roots, largest (leftmost) first.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Splits into `(tree_size, hashes)` for storage.
    pub fn into_parts(self) -> (u64, Vec<Hash>) {
        (self.tree_size, self.hashes)
    }

    /// Appends a leaf hash (see [`leaf_hash`]) and returns its leaf index.
    pub fn append(&mut self, leaf_hash: Hash) -> Result<u64, ProofError> {
        let leaf_index = self.tree_size;
        let new_size = leaf_index.checked_add(1).ok_or(ProofError::TreeFull)?;
        // Each trailing one bit of the old size is a perfect subtree of the
        // same height as the one being carried; merge them like binary
        // addition.
        let mut carry = leaf_hash;
        for _ in 0..leaf_index.trailing_ones() {
            match self.hashes.pop() {
                Some(left) => carry = node_hash(&left, &carry),
                // Unreachable: from_parts guarantees one hash per set bit.
                None => {
                    return Err(ProofError::MalformedCompactRange { tree_size: self.tree_size, hash_count: 0 });
                }
            }
        }
        self.hashes.push(carry);
        self.tree_size = new_size;
        Ok(leaf_index)
    }

    /// `MTH` of the current tree (RFC 9162 §2.1.1): the subtree roots folded
    /// right to left.
    pub fn root(&self) -> Hash {
        let mut iter = self.hashes.iter().rev();
        match iter.next() {
            None => empty_root(),
            Some(last) => iter.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hex: &str) -> Hash {
        let bytes = decode_hex(hex);
        bytes.try_into().expect("32-byte hex literal")
    }

    fn decode_hex(hex: &str) -> Vec<u8> {
        assert!(hex.len().is_multiple_of(2), "odd hex length");
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex literal")).collect()
    }

    // ---------------------------------------------------------------------
    // Known-answer vectors.
    //
    // Leaves, node hashes and roots: transparency-dev/merkle,
    // testonly/constants.go @ 77f1b57d7aa25fcd2e51273166b6b2b0e74923b1
    // (LeafInputs, NodeHashes, RootHashes, CompactTrees, EmptyRootHash).
    // Proofs: transparency-dev/merkle, cmd/proofgen/main.go
    // @ 4ebbb84639c9bc87f76f352779e6b23852e48e31 (inclusionProofs,
    // consistencyProofs); there `leafIdx` is 1-based, converted to 0-based
    // here. These are the RFC 6962 vectors originally published in Google's
    // certificate-transparency merkle_tree_test.cc.
    // ---------------------------------------------------------------------

    const LEAF_INPUTS: [&str; 8] = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"];

    /// NodeHashes()[0]: the leaf hashes.
    const LEAF_HASHES: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ];

    /// NodeHashes()[1..]: interior nodes, by level then position.
    const LEVEL1: [&str; 4] = [
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    ];
    const LEVEL2: [&str; 2] = [
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ];

    /// RootHashes(): roots for tree sizes 0..=8.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    /// (leaf_index (0-based), tree_size, proof).
    const INCLUSION_PROOFS: [(u64, u64, &[&str]); 5] = [
        (0, 1, &[]),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];

    /// (old_size, new_size, proof).
    const CONSISTENCY_PROOFS: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn kat_leaf_hashes() -> Vec<Hash> {
        LEAF_INPUTS.iter().map(|l| leaf_hash(&decode_hex(l))).collect()
    }

    fn hashes(hex: &[&str]) -> Vec<Hash> {
        hex.iter().map(|x| h(x)).collect()
    }

    #[test]
    fn kat_empty_root() {
        assert_eq!(empty_root(), h(ROOTS[0]));
        assert_eq!(root_from_leaf_hashes(&[]), h(ROOTS[0]));
        assert_eq!(CompactRange::new().root(), h(ROOTS[0]));
    }

    #[test]
    fn kat_leaf_and_node_hashes() {
        let leaves = kat_leaf_hashes();
        assert_eq!(leaves, hashes(&LEAF_HASHES));
        let level1: Vec<Hash> = leaves.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
        assert_eq!(level1, hashes(&LEVEL1));
        let level2: Vec<Hash> = level1.chunks(2).map(|p| node_hash(&p[0], &p[1])).collect();
        assert_eq!(level2, hashes(&LEVEL2));
        assert_eq!(node_hash(&level2[0], &level2[1]), h(ROOTS[8]));
    }

    #[test]
    fn kat_roots_all_sizes() {
        let leaves = kat_leaf_hashes();
        let mut range = CompactRange::new();
        for (size, root) in ROOTS.iter().enumerate() {
            assert_eq!(root_from_leaf_hashes(&leaves[..size]), h(root), "size {size}");
            assert_eq!(range.root(), h(root), "compact range at size {size}");
            if size < leaves.len() {
                assert_eq!(range.append(leaves[size]), Ok(size as u64));
            }
        }
    }

    #[test]
    fn kat_compact_range_shapes() {
        // CompactTrees() in constants.go: the right-edge hashes per size.
        let l = hashes(&LEAF_HASHES);
        let n1 = hashes(&LEVEL1);
        let n2 = hashes(&LEVEL2);
        let root8 = h(ROOTS[8]);
        let expected: [Vec<Hash>; 9] = [
            vec![],
            vec![l[0]],
            vec![n1[0]],
            vec![n1[0], l[2]],
            vec![n2[0]],
            vec![n2[0], l[4]],
            vec![n2[0], n1[2]],
            vec![n2[0], n1[2], l[6]],
            vec![root8],
        ];
        let mut range = CompactRange::new();
        for (size, want) in expected.iter().enumerate() {
            assert_eq!(range.hashes(), want.as_slice(), "size {size}");
            if size < 8 {
                range.append(l[size]).expect("append");
            }
        }
    }

    #[test]
    fn kat_inclusion_proofs() {
        let leaves = kat_leaf_hashes();
        for (leaf_index, tree_size, proof) in INCLUSION_PROOFS {
            let want = hashes(proof);
            let got = inclusion_proof(&leaves, leaf_index, tree_size).expect("proof");
            assert_eq!(got, want, "index {leaf_index} size {tree_size}");
            let root = h(ROOTS[tree_size as usize]);
            verify_inclusion(&leaves[leaf_index as usize], leaf_index, tree_size, &want, &root).expect("verify");
        }
    }

    #[test]
    fn kat_consistency_proofs() {
        let leaves = kat_leaf_hashes();
        for (old_size, new_size, proof) in CONSISTENCY_PROOFS {
            let want = hashes(proof);
            let got = consistency_proof(&leaves, old_size, new_size).expect("proof");
            assert_eq!(got, want, "{old_size} -> {new_size}");
            let old_root = h(ROOTS[old_size as usize]);
            let new_root = h(ROOTS[new_size as usize]);
            verify_consistency(old_size, new_size, &old_root, &new_root, &want).expect("verify");
        }
    }

    // Edge cases mirroring transparency-dev/merkle testdata/consistency/additional
    // and testdata/inclusion/additional @ 4ebbb84639c9bc87f76f352779e6b23852e48e31.
    #[test]
    fn consistency_edge_cases() {
        let e = empty_root();
        let r1 = h(ROOTS[1]);
        let r2 = h(ROOTS[2]);
        // Sizes equal: empty proof and equal roots only.
        assert_eq!(verify_consistency(1, 1, &r1, &r1, &[]), Ok(()));
        assert_eq!(verify_consistency(1, 1, &r1, &r2, &[]), Err(ProofError::RootMismatch));
        assert_eq!(verify_consistency(1, 1, &r1, &r1, &[r1]), Err(ProofError::ProofTooLong));
        // Anything from the empty tree is rejected.
        assert_eq!(verify_consistency(0, 0, &e, &e, &[]), Err(ProofError::EmptyOldTree));
        assert_eq!(verify_consistency(0, 0, &e, &e, &[e]), Err(ProofError::EmptyOldTree));
        assert_eq!(verify_consistency(0, 1, &e, &r1, &[]), Err(ProofError::EmptyOldTree));
        assert_eq!(verify_consistency(0, 1, &e, &e, &[e]), Err(ProofError::EmptyOldTree));
        // Shrinking trees.
        assert_eq!(verify_consistency(2, 1, &r2, &r1, &[]), Err(ProofError::OldSizeExceedsNewSize { old_size: 2, new_size: 1 }));
        assert!(verify_consistency(1, 0, &r1, &e, &[]).is_err());
        // Growing tree with an empty proof.
        assert_eq!(verify_consistency(1, 2, &r1, &r2, &[]), Err(ProofError::ProofTooShort));

        let leaves = kat_leaf_hashes();
        assert_eq!(consistency_proof(&leaves, 0, 3), Err(ProofError::EmptyOldTree));
        assert_eq!(consistency_proof(&leaves, 0, 0), Err(ProofError::EmptyOldTree));
        assert_eq!(consistency_proof(&leaves, 8, 8), Ok(vec![]));
        assert_eq!(consistency_proof(&leaves, 4, 3), Err(ProofError::OldSizeExceedsNewSize { old_size: 4, new_size: 3 }));
        assert_eq!(consistency_proof(&leaves, 1, 9), Err(ProofError::TreeSizeExceedsLeaves { tree_size: 9, leaf_count: 8 }));
        assert!(consistency_proof(&leaves, 1, u64::MAX).is_err());
    }

    #[test]
    fn inclusion_edge_cases() {
        let leaves = kat_leaf_hashes();
        let e = empty_root();
        let r1 = h(ROOTS[1]);
        for (leaf_index, tree_size) in [(0, 0), (1, 0), (1, 1), (2, 1), (u64::MAX, 1), (8, 8)] {
            assert_eq!(
                verify_inclusion(&leaves[0], leaf_index, tree_size, &[], &r1),
                Err(ProofError::LeafIndexOutOfRange { leaf_index, tree_size })
            );
        }
        assert_eq!(verify_inclusion(&leaves[0], 0, 1, &[], &e), Err(ProofError::RootMismatch));
        assert_eq!(verify_inclusion(&leaves[0], 0, 1, &[r1], &r1), Err(ProofError::ProofTooLong));
        assert_eq!(verify_inclusion(&leaves[0], 0, 2, &[], &r1), Err(ProofError::ProofTooShort));

        assert_eq!(inclusion_proof(&leaves, 0, 0), Err(ProofError::LeafIndexOutOfRange { leaf_index: 0, tree_size: 0 }));
        assert_eq!(inclusion_proof(&leaves, 8, 8), Err(ProofError::LeafIndexOutOfRange { leaf_index: 8, tree_size: 8 }));
        assert_eq!(inclusion_proof(&leaves, 0, 9), Err(ProofError::TreeSizeExceedsLeaves { tree_size: 9, leaf_count: 8 }));
        assert!(inclusion_proof(&leaves, u64::MAX - 1, u64::MAX).is_err());
        assert!(inclusion_proof(&[], 0, 0).is_err());
    }

    #[test]
    fn huge_sizes_do_not_panic() {
        let x = h(ROOTS[8]);
        let long = vec![x; 70];
        for proof_len in [0, 1, 63, 64, 65, 70] {
            let proof = &long[..proof_len];
            for (leaf_index, tree_size) in [(u64::MAX - 1, u64::MAX), (0, u64::MAX), (1 << 63, u64::MAX), (0, 1 << 63)] {
                assert!(verify_inclusion(&x, leaf_index, tree_size, proof, &x).is_err());
            }
            for (old_size, new_size) in
                [(1, u64::MAX), (u64::MAX - 1, u64::MAX), (u64::MAX, u64::MAX), (1 << 63, u64::MAX), ((1 << 63) - 1, 1 << 63)]
            {
                let result = verify_consistency(old_size, new_size, &x, &x, proof);
                if old_size == new_size && proof_len == 0 {
                    assert_eq!(result, Ok(()));
                } else {
                    assert!(result.is_err());
                }
            }
        }
    }

    // ---------------------------------------------------------------------
    // Property tests over generated trees.
    // ---------------------------------------------------------------------

    const MAX_PROOF_TREE: u64 = 70;

    /// Deterministic distinct leaves: leaf i is the 8-byte big-endian i.
    fn generated_leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// Roots of every prefix 0..=n, via the compact range.
    fn prefix_roots(leaves: &[Hash]) -> Vec<Hash> {
        let mut range = CompactRange::new();
        let mut roots = vec![range.root()];
        for leaf in leaves {
            range.append(*leaf).expect("append");
            roots.push(range.root());
        }
        roots
    }

    fn flip_bit(hash: &Hash, bit: usize) -> Hash {
        let mut out = *hash;
        out[bit / 8 % 32] ^= 1 << (bit % 8);
        out
    }

    /// Expected proof length for an inclusion proof, computed independently
    /// of PATH: one sibling per level below the split, plus one per set bit
    /// of the index above it.
    fn expected_inclusion_len(leaf_index: u64, tree_size: u64) -> usize {
        let inner = 64 - (leaf_index ^ (tree_size - 1)).leading_zeros();
        (inner + (leaf_index >> inner).count_ones()) as usize
    }

    #[test]
    fn compact_range_matches_reference_root_up_to_300() {
        let leaves = generated_leaves(300);
        let mut range = CompactRange::new();
        for size in 0..=300usize {
            assert_eq!(range.tree_size(), size as u64);
            assert_eq!(range.hashes().len(), (size as u64).count_ones() as usize);
            assert_eq!(range.root(), root_from_leaf_hashes(&leaves[..size]), "size {size}");
            // Persist/restore round trip.
            let (tree_size, saved) = range.clone().into_parts();
            let restored = CompactRange::from_parts(tree_size, saved).expect("restore");
            assert_eq!(restored, range);
            if size < 300 {
                range.append(leaves[size]).expect("append");
            }
        }
    }

    #[test]
    fn compact_range_rejects_bad_shapes() {
        let x = empty_root();
        assert!(CompactRange::from_parts(0, vec![x]).is_err());
        assert!(CompactRange::from_parts(3, vec![x]).is_err());
        assert!(CompactRange::from_parts(4, vec![x, x]).is_err());
        assert!(CompactRange::from_parts(4, vec![x]).is_ok());
        let mut full = CompactRange::from_parts(u64::MAX, vec![x; 64]).expect("shape ok");
        assert_eq!(full.append(x), Err(ProofError::TreeFull));
        assert_eq!(full.tree_size(), u64::MAX);
        let mut almost = CompactRange::from_parts(u64::MAX - 1, vec![x; 63]).expect("shape ok");
        assert_eq!(almost.append(x), Ok(u64::MAX - 1));
        assert_eq!(almost.hashes().len(), 64);
    }

    #[test]
    fn inclusion_proofs_verify_and_tampering_fails() {
        let leaves = generated_leaves(MAX_PROOF_TREE + 1);
        let roots = prefix_roots(&leaves);
        for tree_size in 1..=MAX_PROOF_TREE {
            let root = roots[tree_size as usize];
            for leaf_index in 0..tree_size {
                let leaf = leaves[leaf_index as usize];
                let proof = inclusion_proof(&leaves, leaf_index, tree_size).expect("proof");
                assert_eq!(proof.len(), expected_inclusion_len(leaf_index, tree_size));
                assert_eq!(verify_inclusion(&leaf, leaf_index, tree_size, &proof, &root), Ok(()));

                let ctx = format!("index {leaf_index} size {tree_size}");
                let seed = (leaf_index * 31 + tree_size * 7) as usize;
                // Flip one bit of the leaf, at a few positions.
                for bit in [0, 255, seed % 256] {
                    let bad = flip_bit(&leaf, bit);
                    assert!(verify_inclusion(&bad, leaf_index, tree_size, &proof, &root).is_err(), "{ctx}");
                }
                // Flip one bit in each proof element.
                for i in 0..proof.len() {
                    for bit in [0, (seed + i * 13) % 256] {
                        let mut bad = proof.clone();
                        bad[i] = flip_bit(&bad[i], bit);
                        assert!(verify_inclusion(&leaf, leaf_index, tree_size, &bad, &root).is_err(), "{ctx}");
                    }
                }
                // Wrong root.
                assert!(verify_inclusion(&leaf, leaf_index, tree_size, &proof, &flip_bit(&root, seed)).is_err());
                // Truncated, extended, prefixed proofs.
                if let Some((_, short)) = proof.split_last() {
                    assert!(verify_inclusion(&leaf, leaf_index, tree_size, short, &root).is_err(), "{ctx}");
                }
                let mut long = proof.clone();
                long.push(root);
                assert!(verify_inclusion(&leaf, leaf_index, tree_size, &long, &root).is_err(), "{ctx}");
                let mut prefixed = vec![leaf];
                prefixed.extend_from_slice(&proof);
                assert!(verify_inclusion(&leaf, leaf_index, tree_size, &prefixed, &root).is_err(), "{ctx}");
                // Same proof claimed for a neighbouring index or size.
                for other_index in [leaf_index.wrapping_sub(1), leaf_index + 1] {
                    assert!(verify_inclusion(&leaf, other_index, tree_size, &proof, &root).is_err(), "{ctx}");
                }
                for other_size in [tree_size - 1, tree_size + 1] {
                    let other_root = roots[other_size as usize];
                    assert!(verify_inclusion(&leaf, leaf_index, other_size, &proof, &other_root).is_err(), "{ctx}");
                }
            }
        }
    }

    #[test]
    fn consistency_proofs_verify_and_tampering_fails() {
        let leaves = generated_leaves(MAX_PROOF_TREE + 1);
        let roots = prefix_roots(&leaves);
        for new_size in 1..=MAX_PROOF_TREE {
            let new_root = roots[new_size as usize];
            for old_size in 1..=new_size {
                let old_root = roots[old_size as usize];
                let proof = consistency_proof(&leaves, old_size, new_size).expect("proof");
                assert_eq!(verify_consistency(old_size, new_size, &old_root, &new_root, &proof), Ok(()));

                let ctx = format!("{old_size} -> {new_size}");
                let seed = (old_size * 17 + new_size * 5) as usize;
                for i in 0..proof.len() {
                    for bit in [0, (seed + i * 11) % 256] {
                        let mut bad = proof.clone();
                        bad[i] = flip_bit(&bad[i], bit);
                        assert!(verify_consistency(old_size, new_size, &old_root, &new_root, &bad).is_err(), "{ctx}");
                    }
                }
                assert!(verify_consistency(old_size, new_size, &flip_bit(&old_root, seed), &new_root, &proof).is_err(), "{ctx}");
                assert!(verify_consistency(old_size, new_size, &old_root, &flip_bit(&new_root, seed), &proof).is_err(), "{ctx}");
                if old_size != new_size {
                    assert!(verify_consistency(old_size, new_size, &new_root, &old_root, &proof).is_err(), "{ctx}");
                }
                if let Some((_, short)) = proof.split_last() {
                    assert!(verify_consistency(old_size, new_size, &old_root, &new_root, short).is_err(), "{ctx}");
                }
                let mut long = proof.clone();
                long.push(new_root);
                assert!(verify_consistency(old_size, new_size, &old_root, &new_root, &long).is_err(), "{ctx}");
                let mut prefixed = vec![old_root];
                prefixed.extend_from_slice(&proof);
                assert!(verify_consistency(old_size, new_size, &old_root, &new_root, &prefixed).is_err(), "{ctx}");
                // The proof must not verify for other sizes (with their true roots).
                for (m, n) in [(old_size - 1, new_size), (old_size + 1, new_size), (old_size, new_size - 1), (old_size, new_size + 1)] {
                    if (m, n) == (old_size, new_size) || m == 0 || m > n {
                        continue;
                    }
                    let (m_root, n_root) = (roots[m as usize], roots[n as usize]);
                    assert!(verify_consistency(m, n, &m_root, &n_root, &proof).is_err(), "{ctx} as {m} -> {n}");
                }
            }
        }
    }
}
