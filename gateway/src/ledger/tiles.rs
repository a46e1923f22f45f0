//! The log's Merkle hashes and leaf offsets on disk, so that neither a start nor a proof rehashes
//! the log, and memory does not grow with it.
//!
//! `<log>/hashes/<L>`: level `L` holds, for every complete run of 256^L leaves, the root of that
//! perfect subtree, in leaf order (32 bytes each): level 0 the leaf hashes, level 1 the roots of
//! 256 leaves, and so on. These are the hashes of C2SP tlog-tiles (tile height 8): full tile `N`
//! of level `L` is bytes `[N·8192, (N+1)·8192)` of file `L`, the right edge is a partial tile.
//! `<log>/entries.idx`: the journal offset of every leaf (8 bytes LE each).
//!
//! Both are derived from `entries.log` and written after it, without their own fsync: they are
//! synced before every signed checkpoint ([`LogIndex::sync`]), which is what makes them
//! trustworthy at the next open. A start takes them up to the newest checkpoint's size only if
//! the root they give equals the checkpoint's signed root (a Merkle root binds every leaf hash
//! below it), cuts whatever follows and re-reads that tail of `entries.log`; without a usable
//! index (an older data directory, a lost file) it rebuilds it from the whole log once.
//!
//! A perfect subtree of height `h` is read from level `h / 8` (one hash, or `2^(h mod 8)`
//! hashes folded), so a root, an inclusion proof or a consistency proof costs O(log n) reads of
//! at most 4 KiB each.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::merkle::{self, Hash};

const TILE_HEIGHT: u32 = 8;
const TILE_WIDTH: u64 = 1 << TILE_HEIGHT;

pub struct LogIndex {
    directory: PathBuf,
    offsets: File,
    levels: Vec<File>,
    /// Leaves indexed.
    size: u64,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> std::io::Error + '_ {
    move |error| std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

fn open_file(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io_at(path))
}

/// Entries of level `level` for a tree of `size` leaves.
fn level_len(size: u64, level: usize) -> u64 {
    size >> (TILE_HEIGHT as usize * level)
}

impl LogIndex {
    /// Opens the index files under `directory` (creating them empty) and takes the longest
    /// prefix they all hold. Changes nothing on disk.
    pub fn open(directory: &Path) -> std::io::Result<LogIndex> {
        std::fs::create_dir_all(directory.join("hashes")).map_err(io_at(directory))?;
        let offsets = open_file(&directory.join("entries.idx"))?;
        let mut index = LogIndex { directory: directory.to_path_buf(), offsets, levels: Vec::new(), size: 0 };
        let mut size = index.offsets.metadata()?.len() / 8;
        let mut level = 0;
        while level == 0 || (1u64 << (TILE_HEIGHT as usize * level)) <= size {
            let file = open_file(&index.level_path(level))?;
            let entries = file.metadata()?.len() / 32;
            index.levels.push(file);
            // Level `level` must hold one hash per complete run of 256^level leaves.
            size = if level == 0 { size.min(entries) } else { size.min(((entries + 1) << (TILE_HEIGHT as usize * level)) - 1) };
            level += 1;
        }
        index.size = size;
        Ok(index)
    }

    fn level_path(&self, level: usize) -> PathBuf {
        self.directory.join("hashes").join(level.to_string())
    }

    /// Leaves indexed.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn level_file(&mut self, level: usize) -> std::io::Result<&File> {
        while self.levels.len() <= level {
            let path = self.level_path(self.levels.len());
            self.levels.push(open_file(&path)?);
        }
        Ok(&self.levels[level])
    }

    fn read_hashes(&self, level: usize, first: u64, count: u64) -> std::io::Result<Vec<Hash>> {
        let file = self.levels.get(level).ok_or_else(|| std::io::Error::other(format!("no hash level {level}")))?;
        let mut bytes = vec![0u8; (count * 32) as usize];
        file.read_exact_at(&mut bytes, first * 32)?;
        Ok(bytes.chunks_exact(32).map(|chunk| chunk.try_into().expect("32 bytes")).collect())
    }

    /// The root of the perfect subtree of height `height` whose first leaf is `index · 2^height`.
    /// It must lie within the indexed leaves.
    pub fn perfect(&self, height: u32, index: u64) -> std::io::Result<Hash> {
        let level = (height / TILE_HEIGHT) as usize;
        let rest = height % TILE_HEIGHT;
        let mut hashes = self.read_hashes(level, index << rest, 1 << rest)?;
        while hashes.len() > 1 {
            hashes = hashes.chunks_exact(2).map(|pair| merkle::node_hash(&pair[0], &pair[1])).collect();
        }
        Ok(hashes[0])
    }

    /// `MTH` of leaves `[start, end)`, where `start` is a multiple of the largest power of two
    /// below `end - start` (every range RFC 9162's proofs ask for is).
    fn range_root(&self, start: u64, end: u64) -> std::io::Result<Hash> {
        let width = end - start;
        if width == 0 {
            return Ok(merkle::empty_root());
        }
        if width.is_power_of_two() {
            let height = width.trailing_zeros();
            return self.perfect(height, start >> height);
        }
        let split = 1u64 << (63 - (width - 1).leading_zeros());
        Ok(merkle::node_hash(&self.range_root(start, start + split)?, &self.range_root(start + split, end)?))
    }

    /// `MTH` of the first `size` leaves.
    pub fn root(&self, size: u64) -> std::io::Result<Hash> {
        self.range_root(0, size)
    }

    /// The perfect-subtree roots of the first `size` leaves, largest first (a compact range).
    pub fn frontier(&self, size: u64) -> std::io::Result<merkle::CompactRange> {
        let mut hashes = Vec::new();
        let mut start = 0;
        for height in (0..64).rev() {
            if size & (1 << height) != 0 {
                hashes.push(self.perfect(height, start >> height)?);
                start += 1 << height;
            }
        }
        merkle::CompactRange::from_parts(size, hashes).map_err(std::io::Error::other)
    }

    /// RFC 9162 inclusion proof of `leaf_index` in the tree of the first `tree_size` leaves.
    pub fn inclusion_proof(&self, leaf_index: u64, tree_size: u64) -> Result<Vec<Hash>, IndexError> {
        if tree_size > self.size {
            return Err(IndexError::Proof(merkle::ProofError::TreeSizeExceedsLeaves { tree_size, leaf_count: self.size }));
        }
        if leaf_index >= tree_size {
            return Err(IndexError::Proof(merkle::ProofError::LeafIndexOutOfRange { leaf_index, tree_size }));
        }
        let (mut start, mut end, mut proof) = (0u64, tree_size, Vec::new());
        while end - start > 1 {
            let split = 1u64 << (63 - (end - start - 1).leading_zeros());
            if leaf_index < start + split {
                proof.push(self.range_root(start + split, end)?);
                end = start + split;
            } else {
                proof.push(self.range_root(start, start + split)?);
                start += split;
            }
        }
        proof.reverse();
        Ok(proof)
    }

    /// RFC 9162 consistency proof between the first `old_size` and `new_size` leaves.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, IndexError> {
        if new_size > self.size {
            return Err(IndexError::Proof(merkle::ProofError::TreeSizeExceedsLeaves { tree_size: new_size, leaf_count: self.size }));
        }
        if old_size > new_size {
            return Err(IndexError::Proof(merkle::ProofError::OldSizeExceedsNewSize { old_size, new_size }));
        }
        if old_size == 0 {
            return Err(IndexError::Proof(merkle::ProofError::EmptyOldTree));
        }
        let (mut start, mut end, mut m, mut known, mut proof) = (0u64, new_size, old_size, true, Vec::new());
        while m != end - start {
            let split = 1u64 << (63 - (end - start - 1).leading_zeros());
            if m <= split {
                proof.push(self.range_root(start + split, end)?);
                end = start + split;
            } else {
                proof.push(self.range_root(start, start + split)?);
                start += split;
                m -= split;
                known = false;
            }
        }
        if !known {
            proof.push(self.range_root(start, end)?);
        }
        proof.reverse();
        Ok(proof)
    }

    /// The journal offset of a leaf.
    pub fn offset(&self, leaf_index: u64) -> std::io::Result<u64> {
        let mut bytes = [0u8; 8];
        self.offsets.read_exact_at(&mut bytes, leaf_index * 8)?;
        Ok(u64::from_le_bytes(bytes))
    }

    /// Appends leaves (their hashes and journal offsets), and every subtree root they complete.
    /// Not durable before [`LogIndex::sync`].
    pub fn append(&mut self, leaves: &[(u64, Hash)]) -> std::io::Result<()> {
        if leaves.is_empty() {
            return Ok(());
        }
        let first = self.size;
        let offsets: Vec<u8> = leaves.iter().flat_map(|(offset, _)| offset.to_le_bytes()).collect();
        self.offsets.write_all_at(&offsets, first * 8)?;
        let hashes: Vec<u8> = leaves.iter().flat_map(|(_, hash)| *hash).collect();
        self.level_file(0)?.write_all_at(&hashes, first * 32)?;
        self.size += leaves.len() as u64;
        // Every level-(L+1) entry completed by this append: the root of its 256 level-L hashes.
        let mut level = 0;
        loop {
            let (before, after) = (level_len(first, level + 1), level_len(self.size, level + 1));
            if before == after {
                break;
            }
            let mut roots = Vec::with_capacity(((after - before) * 32) as usize);
            for parent in before..after {
                let mut hashes = self.read_hashes(level, parent * TILE_WIDTH, TILE_WIDTH)?;
                while hashes.len() > 1 {
                    hashes = hashes.chunks_exact(2).map(|pair| merkle::node_hash(&pair[0], &pair[1])).collect();
                }
                roots.extend_from_slice(&hashes[0]);
            }
            self.level_file(level + 1)?.write_all_at(&roots, before * 32)?;
            level += 1;
        }
        Ok(())
    }

    /// Cuts the index back to `size` leaves.
    pub fn truncate(&mut self, size: u64) -> std::io::Result<()> {
        self.offsets.set_len(size * 8)?;
        for (level, file) in self.levels.iter().enumerate() {
            file.set_len(level_len(size, level) * 32)?;
        }
        self.size = self.size.min(size);
        Ok(())
    }

    /// Makes everything appended durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.offsets.sync_data()?;
        for file in &self.levels {
            file.sync_data()?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("log index I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("merkle: {0}")]
    Proof(#[from] merkle::ProofError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let directory = std::env::temp_dir().join(format!("fg-log-index-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        directory
    }

    fn leaf(n: u64) -> Hash {
        merkle::leaf_hash(&n.to_le_bytes())
    }

    /// Roots, compact ranges, inclusion and consistency proofs from the index equal the
    /// reference functions over all leaf hashes in memory, across tile boundaries.
    #[test]
    fn the_index_answers_as_the_reference_merkle_functions_do() {
        let directory = scratch("oracle");
        let mut index = LogIndex::open(&directory).unwrap();
        let leaves: Vec<Hash> = (0..70_000).map(leaf).collect();
        // Appends of uneven sizes, crossing 256- and 65,536-leaf boundaries.
        let mut appended = 0;
        for (step, chunk) in [1usize, 255, 1, 300, 511, 65_000, 3_932].iter().enumerate() {
            let batch: Vec<(u64, Hash)> = (appended..appended + chunk).map(|n| (n as u64 * 10 + step as u64, leaves[n])).collect();
            index.append(&batch).unwrap();
            appended += chunk;
        }
        assert_eq!(index.size(), 70_000);
        for size in [1u64, 2, 3, 255, 256, 257, 511, 512, 65_535, 65_536, 65_537, 70_000] {
            let prefix = &leaves[..size as usize];
            assert_eq!(index.root(size).unwrap(), merkle::root_from_leaf_hashes(prefix), "root of {size}");
            assert_eq!(index.frontier(size).unwrap().root(), merkle::root_from_leaf_hashes(prefix));
            for leaf_index in [0, size / 3, size - 1] {
                assert_eq!(index.inclusion_proof(leaf_index, size).unwrap(), merkle::inclusion_proof(&leaves, leaf_index, size).unwrap());
            }
            for old in [1, size / 2 + 1, size] {
                assert_eq!(index.consistency_proof(old, size).unwrap(), merkle::consistency_proof(&leaves, old, size).unwrap());
            }
        }
        assert_eq!(index.offset(300).unwrap(), 300 * 10 + 3);

        // Reopened: the same answers; cut back: the same as a shorter log.
        index.sync().unwrap();
        drop(index);
        let mut index = LogIndex::open(&directory).unwrap();
        assert_eq!(index.size(), 70_000);
        assert_eq!(index.root(70_000).unwrap(), merkle::root_from_leaf_hashes(&leaves));
        index.truncate(65_600).unwrap();
        let reopened = LogIndex::open(&directory).unwrap();
        assert_eq!(reopened.size(), 65_600);
        assert_eq!(reopened.root(65_600).unwrap(), merkle::root_from_leaf_hashes(&leaves[..65_600]));
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_shorter_hash_file_limits_what_is_usable() {
        let directory = scratch("short");
        let mut index = LogIndex::open(&directory).unwrap();
        index.append(&(0..600u64).map(|n| (n, leaf(n))).collect::<Vec<_>>()).unwrap();
        drop(index);
        // Level 0 lost its last 100 hashes (never synced): only 500 leaves are usable.
        let level0 = directory.join("hashes").join("0");
        OpenOptions::new().write(true).open(&level0).unwrap().set_len(500 * 32).unwrap();
        assert_eq!(LogIndex::open(&directory).unwrap().size(), 500);
        // Level 1 lost its entries: no run of 256 leaves is complete, so 255 leaves are usable.
        let level1 = directory.join("hashes").join("1");
        OpenOptions::new().write(true).open(&level1).unwrap().set_len(0).unwrap();
        assert_eq!(LogIndex::open(&directory).unwrap().size(), 255);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
