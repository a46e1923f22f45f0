//! The embedded blockstore: one append-only pack file, `<data>/blocks/blocks.pack`.
//!
//! Record format (little-endian), one per block:
//!
//! ```text
//! record_len: u32 (= 2 + cid_len + data_len) | cid_len: u16 | cid (binary CID) | data
//! ```
//!
//! There is no separate checksum: the CID is one. On open the file is scanned, every record is
//! checked against its CID, and the index (CID → offset) is rebuilt in memory. A record that is
//! cut short or does not match its CID can only be the unsynced tail of a crash (blocks are
//! synced before any ledger entry names them), so the file is truncated there.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use super::unixfs::block_matches;
use super::{BlobError, BlobStore, Block, Cid};

const MAX_RECORD_LEN: u32 = 4 * 1024 * 1024;

pub struct EmbeddedBlockstore {
    reader: File,
    writer: Mutex<PackWriter>,
    index: RwLock<HashMap<Cid, BlockLocation>>,
}

struct PackWriter {
    file: File,
    end: u64,
}

#[derive(Clone, Copy)]
struct BlockLocation {
    data_offset: u64,
    data_len: u32,
}

/// What opening found in the pack file.
#[derive(Debug, Default)]
pub struct PackScan {
    /// Records whose bytes do not match their CID, with more data after them: damage, not a crash.
    pub damaged_offsets: Vec<u64>,
    /// Bytes after the last whole record (a crash tail).
    pub torn_tail_bytes: u64,
}

/// A crash tail is at most one group commit; a longer unreadable tail is damage.
const MAX_TORN_TAIL: u64 = 1024 * 1024 * 1024;

impl EmbeddedBlockstore {
    /// Opens the pack file, cutting off a crash tail. Damaged records are skipped (reads of those
    /// blocks fail their integrity check) and logged; `verify` names them.
    pub fn open(directory: &Path) -> Result<Self, BlobError> {
        let (store, scan) = Self::open_with(directory, true)?;
        for offset in &scan.damaged_offsets {
            tracing::error!(offset, "blockstore: a block does not match its CID (damaged); run verify");
        }
        Ok(store)
    }

    /// Opens without changing anything on disk (for `verify`).
    pub fn open_read_only(directory: &Path) -> Result<(Self, PackScan), BlobError> {
        Self::open_with(directory, false)
    }

    fn open_with(directory: &Path, writable: bool) -> Result<(Self, PackScan), BlobError> {
        let path = directory.join("blocks.pack");
        if writable {
            std::fs::create_dir_all(directory)?;
        }
        let file = OpenOptions::new().read(true).write(writable).create(writable).truncate(false).open(&path)?;
        if writable {
            File::open(directory)?.sync_all()?;
        }
        let (index, valid_end, damaged_offsets) = scan(&file)?;
        let file_len = file.metadata()?.len();
        let scan = PackScan { damaged_offsets, torn_tail_bytes: file_len - valid_end };
        if writable && valid_end < file_len {
            if scan.torn_tail_bytes > MAX_TORN_TAIL {
                return Err(BlobError::Corrupt(format!(
                    "{}: {} unreadable bytes after offset {valid_end}",
                    path.display(),
                    scan.torn_tail_bytes
                )));
            }
            tracing::warn!(valid_end, "blockstore: cutting off an unsynced tail left by a crash");
            file.set_len(valid_end)?;
            file.sync_all()?;
        }
        let store = EmbeddedBlockstore {
            reader: File::open(&path)?,
            writer: Mutex::new(PackWriter { file, end: valid_end }),
            index: RwLock::new(index),
        };
        Ok((store, scan))
    }
}

type ScanResult = (HashMap<Cid, BlockLocation>, u64, Vec<u64>);

fn scan(file: &File) -> Result<ScanResult, BlobError> {
    let file_len = file.metadata()?.len();
    let mut index = HashMap::new();
    let mut damaged = Vec::new();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut offset = 0u64;
    loop {
        let mut header = [0u8; 6];
        if reader.read_exact(&mut header).is_err() {
            return Ok((index, offset, damaged));
        }
        let record_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let cid_len = u16::from_le_bytes(header[4..].try_into().expect("2 bytes")) as u32;
        let record_end = offset + 4 + record_len as u64;
        if record_len > MAX_RECORD_LEN || cid_len < 2 || cid_len + 2 > record_len || record_end > file_len {
            return Ok((index, offset, damaged));
        }
        let mut body = vec![0u8; (record_len - 2) as usize];
        reader.read_exact(&mut body)?;
        let (cid_bytes, data) = body.split_at(cid_len as usize);
        match Cid::from_bytes(cid_bytes) {
            Ok(cid) if block_matches(&cid, data) => {
                let data_offset = offset + 6 + cid_len as u64;
                index.insert(cid, BlockLocation { data_offset, data_len: data.len() as u32 });
            }
            _ if record_end == file_len => return Ok((index, offset, damaged)),
            _ => damaged.push(offset),
        }
        offset = record_end;
    }
}

impl BlobStore for EmbeddedBlockstore {
    fn put_blocks(&self, blocks: &[Block]) -> Result<(), BlobError> {
        let mut writer = self.writer.lock().map_err(|_| BlobError::Corrupt("writer lock poisoned".into()))?;
        let mut buffer = Vec::new();
        let mut new_locations = Vec::with_capacity(blocks.len());
        for block in blocks {
            if self.index.read().expect("index lock").contains_key(&block.cid) {
                continue;
            }
            let cid_bytes = block.cid.to_bytes();
            let record_len = 2 + cid_bytes.len() + block.data.len();
            let data_offset = writer.end + buffer.len() as u64 + 6 + cid_bytes.len() as u64;
            buffer.extend_from_slice(&(record_len as u32).to_le_bytes());
            buffer.extend_from_slice(&(cid_bytes.len() as u16).to_le_bytes());
            buffer.extend_from_slice(&cid_bytes);
            buffer.extend_from_slice(&block.data);
            new_locations.push((block.cid, BlockLocation { data_offset, data_len: block.data.len() as u32 }));
        }
        if buffer.is_empty() {
            return Ok(());
        }
        let end = writer.end;
        writer.file.write_all_at(&buffer, end)?;
        writer.end += buffer.len() as u64;
        let mut index = self.index.write().expect("index lock");
        index.extend(new_locations);
        Ok(())
    }

    fn get_block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(location) = self.index.read().expect("index lock").get(cid).copied() else {
            return Ok(None);
        };
        let mut data = vec![0u8; location.data_len as usize];
        self.reader.read_exact_at(&mut data, location.data_offset)?;
        Ok(Some(data))
    }

    fn sync(&self) -> Result<(), BlobError> {
        let writer = self.writer.lock().map_err(|_| BlobError::Corrupt("writer lock poisoned".into()))?;
        writer.file.sync_data()?;
        Ok(())
    }

    fn cids(&self) -> Result<Vec<Cid>, BlobError> {
        Ok(self.index.read().expect("index lock").keys().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::file_blocks;

    fn temporary_directory(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("fg-blob-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        path
    }

    #[test]
    fn satisfies_the_blob_store_contract() {
        let directory = temporary_directory("contract");
        check_blob_store_contract_here(&directory);
        // And again after reopening: the index is rebuilt from the pack file.
        let store = EmbeddedBlockstore::open(&directory).unwrap();
        let (root, _) = file_blocks(b"sealed bytes");
        assert_eq!(crate::blob::read_file(&store, &root).unwrap(), b"sealed bytes");
        drop(store);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    fn check_blob_store_contract_here(directory: &Path) {
        let store = EmbeddedBlockstore::open(directory).unwrap();
        crate::blob::check_blob_store_contract(&store);
    }

    #[test]
    fn a_torn_tail_is_truncated_on_open() {
        let directory = temporary_directory("torn");
        let (kept_root, kept_blocks) = file_blocks(b"kept");
        let (_, lost_blocks) = file_blocks(b"lost in the crash");
        {
            let store = EmbeddedBlockstore::open(&directory).unwrap();
            store.put_blocks(&kept_blocks).unwrap();
            store.put_blocks(&lost_blocks).unwrap();
            store.sync().unwrap();
        }
        let path = directory.join("blocks.pack");
        let length = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(length - 3).unwrap();
        let store = EmbeddedBlockstore::open(&directory).unwrap();
        assert_eq!(store.cids().unwrap(), vec![kept_root]);
        // Appending after the truncation works and survives another reopen.
        store.put_blocks(&lost_blocks).unwrap();
        store.sync().unwrap();
        drop(store);
        assert_eq!(EmbeddedBlockstore::open(&directory).unwrap().cids().unwrap().len(), 2);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
