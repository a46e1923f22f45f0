//! Where each block of the pack file is (CID → offset and length), on disk:
//! `<data>/blocks/index.redb` ([redb]), derived from the pack and rebuilt from it when missing.
//!
//! A [`FlushedIndex`]: the commit thread puts a block's location as it appends it, a background
//! thread moves it into the B-tree store once the pack is synced past it, and a start scans only
//! the pack past the offset the store covers.

use std::path::Path;

use crate::flushed_index::{FlushedIndex, IndexCaches, IndexError, IndexKey, IndexValue};

use super::{BlobError, Cid};

/// The store's page cache, and the locations kept in memory (about 80 bytes each).
const CACHES: IndexCaches = IndexCaches { page_bytes: 16 << 20, entries: 65_536 };

/// binary CID → data offset (u64 LE) | data length (u32 LE); positioned at the data offset.
pub(super) type PackIndex = FlushedIndex<Cid, BlockLocation>;

pub(super) fn open(path: &Path) -> Result<PackIndex, BlobError> {
    Ok(PackIndex::open(path, "locations", "pack-index", CACHES)?)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct BlockLocation {
    pub data_offset: u64,
    pub data_len: u32,
}

impl IndexValue for BlockLocation {
    fn encode(&self) -> Vec<u8> {
        [self.data_offset.to_le_bytes().as_slice(), &self.data_len.to_le_bytes()].concat()
    }

    fn decode(bytes: &[u8]) -> Option<BlockLocation> {
        let bytes: [u8; 12] = bytes.try_into().ok()?;
        Some(BlockLocation {
            data_offset: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            data_len: u32::from_le_bytes(bytes[8..].try_into().ok()?),
        })
    }

    fn position(&self) -> u64 {
        self.data_offset
    }
}

impl IndexKey for Cid {
    fn encode(&self) -> Vec<u8> {
        self.to_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Cid> {
        Cid::from_bytes(bytes).ok()
    }
}

impl From<IndexError> for BlobError {
    fn from(error: IndexError) -> Self {
        BlobError::Corrupt(format!("pack index: {error}"))
    }
}
