//! The embedded blockstore: one append-only pack file, `<data>/blocks/blocks.pack`.
//!
//! Record format (little-endian), one per block:
//!
//! ```text
//! record_len: u32 (= 2 + cid_len + data_len) | cid_len: u16 | cid (binary CID) | data
//! ```
//!
//! There is no separate checksum: the CID is one. A removed block (`Patient/$purge`) keeps its
//! `record_len`; everything after it is overwritten with zeros (`cid_len` 0), so the bytes are
//! gone while the records after it stay where they are. The index (CID → offset) is kept on disk
//! ([`super::pack_index`]); on open the pack is scanned past the offset the index covers (all of
//! it when there is no index), every record checked against its CID and added. The rule is the
//! journal's (`crate::journal`, with [`crate::journal::is_crash_tail`]): only an incomplete last
//! record, past the last intact one, with no intact record in or after it, is a crash tail; a
//! whole record that does not match its CID, or a length that points past the end while intact
//! records follow, is damage and the store refuses to open, naming the offset. Blocks are
//! synced before any ledger entry names them, so even a crash tail is cut only if every blob an
//! acknowledged write needs lies before it ([`EmbeddedBlockstore::open`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use super::pack_index::{self, BlockLocation, PackIndex};
use super::unixfs::block_matches;
use super::{BlobError, BlobStore, Block, Cid};

const MAX_RECORD_LEN: u32 = 4 * 1024 * 1024;

pub struct EmbeddedBlockstore {
    reader: File,
    writer: Mutex<PackWriter>,
    index: Locations,
}

struct PackWriter {
    file: File,
    end: u64,
}

/// Where each block is: on disk for a running store, in memory for `verify` (which must not
/// change the data directory).
enum Locations {
    Disk(PackIndex),
    Memory(RwLock<HashMap<Cid, BlockLocation>>),
}

impl Locations {
    fn get(&self, cid: &Cid) -> Result<Option<BlockLocation>, BlobError> {
        match self {
            Locations::Disk(index) => Ok(index.get(cid)?),
            Locations::Memory(index) => Ok(index.read().expect("index lock").get(cid).copied()),
        }
    }
}

/// Blocks found by a scan are indexed in chunks of this many (a first scan of a large pack).
const SCAN_CHUNK: usize = 100_000;

/// What opening found in the pack file.
#[derive(Debug, Default)]
pub struct PackScan {
    /// Records that do not match their CID, and a length that points past the end while intact
    /// records follow (the scan stops there): damage, never a crash.
    pub damaged_offsets: Vec<u64>,
    /// Where a crash tail (the unsynced part of an append) begins, if there is one.
    pub crash_tail: Option<u64>,
    pub file_len: u64,
}

/// The longest unreadable end of the pack that is examined as a possible crash tail; a longer
/// one is damage (a group commit appends far less).
const MAX_TORN_TAIL: u64 = 64 * 1024 * 1024;

impl EmbeddedBlockstore {
    /// Opens the pack file for a store whose acknowledged writes name `acknowledged_roots`.
    /// Refuses damage, and a pack that lacks any of those blobs (naming the file and where its
    /// readable part ends); only then cuts off a crash tail.
    pub fn open(directory: &Path, acknowledged_roots: &[Cid]) -> Result<Self, BlobError> {
        let path = directory.join("blocks.pack");
        std::fs::create_dir_all(directory)?;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        File::open(directory)?.sync_all()?;
        let index = pack_index::open(&directory.join("index.redb"))?;
        let covered = index.covered();
        let file_len = file.metadata()?.len();
        if covered > file_len {
            let what = format!("its index covers {covered} bytes; the pack was cut");
            return Err(BlobError::Damaged { path, offset: file_len, what });
        }
        // Indexed in chunks (the marker moves only at the end), so a first scan of a large pack
        // holds one chunk in memory.
        let mut found: Vec<(Cid, BlockLocation)> = Vec::new();
        let mut chunk_error = None;
        let scan = scan(&file, covered, |cid, location| {
            found.push((cid, location));
            if found.len() >= SCAN_CHUNK && chunk_error.is_none() {
                chunk_error = index.put_scanned(&std::mem::take(&mut found), None).err();
            }
        })?;
        if let Some(error) = chunk_error {
            return Err(error.into());
        }
        if let Some(offset) = scan.damaged_offsets.first() {
            let what = format!("{} damaged record(s); a block does not match its CID or its length is wrong", scan.damaged_offsets.len());
            return Err(BlobError::Damaged { path, offset: *offset, what });
        }
        let tail: HashMap<Cid, BlockLocation> = found.iter().copied().collect();
        let mut missing = Vec::new();
        for cid in acknowledged_roots {
            if !tail.contains_key(cid) && index.get(cid)?.is_none() {
                missing.push(*cid);
            }
        }
        if let Some(first) = missing.first() {
            let readable_end = scan.crash_tail.unwrap_or(scan.file_len);
            let what = format!(
                "{} blob(s) of acknowledged writes are missing, the first {first}; the readable part ends here, the file is {} bytes",
                missing.len(),
                scan.file_len
            );
            return Err(BlobError::Damaged { path, offset: readable_end, what });
        }
        let valid_end = scan.crash_tail.unwrap_or(scan.file_len);
        index.put_scanned(&found, Some(valid_end))?;
        if scan.crash_tail.is_some() {
            tracing::warn!(valid_end, file_len = scan.file_len, "blockstore: cutting off an incomplete last record left by a crash");
            file.set_len(valid_end)?;
            file.sync_all()?;
        }
        let writer = Mutex::new(PackWriter { file, end: valid_end });
        Ok(EmbeddedBlockstore { reader: File::open(&path)?, writer, index: Locations::Disk(index) })
    }

    /// Whether a block with this CID was found intact.
    pub fn holds(&self, cid: &Cid) -> bool {
        self.index.get(cid).is_ok_and(|location| location.is_some())
    }

    /// Opens without changing anything on disk (for `verify`): scans the whole pack into an
    /// index in memory.
    pub fn open_read_only(directory: &Path) -> Result<(Self, PackScan), BlobError> {
        let path = directory.join("blocks.pack");
        let file = File::open(&path)?;
        let mut index = HashMap::new();
        let scan = scan(&file, 0, |cid, location| {
            index.insert(cid, location);
        })?;
        let end = scan.file_len;
        let store = EmbeddedBlockstore {
            reader: File::open(&path)?,
            writer: Mutex::new(PackWriter { file, end }),
            index: Locations::Memory(RwLock::new(index)),
        };
        Ok((store, scan))
    }
}

/// Whether the body of a record (after `record_len`) is that of a removed block: all zeros.
fn is_removed(body: &[u8]) -> bool {
    body.len() >= 2 && body.iter().all(|byte| *byte == 0)
}

/// Whether `frame` (from its length field) is an intact pack record if `record_len` is its length.
fn record_is_intact(frame: &[u8], record_len: u32) -> bool {
    let record_len = record_len as usize;
    if frame.len() < 4 + record_len || record_len < 2 {
        return false;
    }
    if is_removed(&frame[4..4 + record_len]) {
        return true;
    }
    if record_len < 4 {
        return false;
    }
    let cid_len = u16::from_le_bytes([frame[4], frame[5]]) as usize;
    if cid_len < 2 || cid_len + 2 > record_len {
        return false;
    }
    Cid::from_bytes(&frame[6..6 + cid_len]).is_ok_and(|cid| block_matches(&cid, &frame[6 + cid_len..4 + record_len]))
}

/// Whether an intact record starts at `offset`, or the file ends there.
fn starts_a_record(file: &File, offset: u64, file_len: u64) -> std::io::Result<bool> {
    let mut header = [0u8; 4];
    if offset == file_len {
        return Ok(true);
    }
    if file_len - offset < 4 {
        return Ok(false);
    }
    file.read_exact_at(&mut header, offset)?;
    let record_len = u32::from_le_bytes(header);
    if record_len > MAX_RECORD_LEN || offset + 4 + record_len as u64 > file_len {
        return Ok(false);
    }
    let mut frame = vec![0u8; 4 + record_len as usize];
    file.read_exact_at(&mut frame, offset)?;
    Ok(record_is_intact(&frame, record_len))
}

/// Whether the bytes from `offset` to the end can be a crash tail (see the module doc).
fn is_crash_tail_at(file: &File, offset: u64, file_len: u64) -> std::io::Result<bool> {
    if file_len - offset > MAX_TORN_TAIL {
        return Ok(false);
    }
    let mut tail = vec![0u8; (file_len - offset) as usize];
    file.read_exact_at(&mut tail, offset)?;
    Ok(crate::journal::is_crash_tail(&tail, 4, MAX_RECORD_LEN, record_is_intact))
}

/// Reads the pack from `start` (a record boundary), calling `on_block` for every intact block.
fn scan(file: &File, start: u64, mut on_block: impl FnMut(Cid, BlockLocation)) -> Result<PackScan, BlobError> {
    let file_len = file.metadata()?.len();
    let mut found = PackScan { file_len, ..PackScan::default() };
    let mut reader = BufReader::with_capacity(1 << 20, file);
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(start))?;
    let mut offset = start;
    while offset < file_len {
        let mut header = [0u8; 6];
        if file_len - offset < 6 {
            return unreadable_from(file, offset, found);
        }
        reader.read_exact(&mut header)?;
        let record_len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let cid_len = u16::from_le_bytes(header[4..].try_into().expect("2 bytes")) as u32;
        let record_end = offset + 4 + record_len as u64;
        if record_len > MAX_RECORD_LEN || cid_len == 1 || cid_len + 2 > record_len || record_end > file_len {
            return unreadable_from(file, offset, found);
        }
        let mut body = vec![0u8; (record_len - 2) as usize];
        reader.read_exact(&mut body)?;
        let (cid_bytes, data) = body.split_at(cid_len as usize);
        match Cid::from_bytes(cid_bytes) {
            _ if cid_len == 0 && body.iter().all(|byte| *byte == 0) => {}
            Ok(cid) if block_matches(&cid, data) => {
                let data_offset = offset + 6 + cid_len as u64;
                on_block(cid, BlockLocation { data_offset, data_len: data.len() as u32 });
            }
            _ if is_crash_tail_at(file, offset, file_len)? => {
                found.crash_tail = Some(offset);
                return Ok(found);
            }
            _ => {
                found.damaged_offsets.push(offset);
                // Its length may be the damaged part: read on only if a whole record follows.
                if !starts_a_record(file, record_end, file_len)? {
                    return Ok(found);
                }
            }
        }
        offset = record_end;
    }
    Ok(found)
}

/// The scan's end at a record whose header cannot be read as a whole record.
fn unreadable_from(file: &File, offset: u64, mut found: PackScan) -> Result<PackScan, BlobError> {
    if is_crash_tail_at(file, offset, found.file_len)? {
        found.crash_tail = Some(offset);
    } else {
        found.damaged_offsets.push(offset);
    }
    Ok(found)
}

impl BlobStore for EmbeddedBlockstore {
    fn put_blocks(&self, blocks: &[Block]) -> Result<(), BlobError> {
        let Locations::Disk(index) = &self.index else {
            return Err(BlobError::Corrupt("the pack was opened read-only".into()));
        };
        let mut writer = self.writer.lock().map_err(|_| BlobError::Corrupt("writer lock poisoned".into()))?;
        let mut buffer = Vec::new();
        let mut new_locations: Vec<(Cid, BlockLocation)> = Vec::with_capacity(blocks.len());
        for block in blocks {
            if new_locations.iter().any(|(cid, _)| *cid == block.cid) || index.get(&block.cid)?.is_some() {
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
        index.put_pending(new_locations);
        Ok(())
    }

    fn get_block(&self, cid: &Cid) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(location) = self.index.get(cid)? else {
            return Ok(None);
        };
        let mut data = vec![0u8; location.data_len as usize];
        self.reader.read_exact_at(&mut data, location.data_offset)?;
        Ok(Some(data))
    }

    fn sync(&self) -> Result<(), BlobError> {
        let writer = self.writer.lock().map_err(|_| BlobError::Corrupt("writer lock poisoned".into()))?;
        writer.file.sync_data()?;
        if let Locations::Disk(index) = &self.index {
            index.synced_to(writer.end);
        }
        Ok(())
    }

    fn cids(&self) -> Result<Vec<Cid>, BlobError> {
        match &self.index {
            Locations::Disk(index) => Ok(index.keys()?),
            Locations::Memory(index) => Ok(index.read().expect("index lock").keys().copied().collect()),
        }
    }

    fn remove_blocks(&self, cids: &[Cid]) -> Result<(), BlobError> {
        let Locations::Disk(index) = &self.index else {
            return Err(BlobError::Corrupt("the pack was opened read-only".into()));
        };
        // Zeroed first, then forgotten: a crash in between leaves the index naming zeros, which
        // the erasure finds unfinished and removes again.
        let writer = self.writer.lock().map_err(|_| BlobError::Corrupt("writer lock poisoned".into()))?;
        for cid in cids {
            let Some(location) = index.get(cid)? else { continue };
            let cid_len = cid.to_bytes().len() as u64;
            // Everything after `record_len`: `cid_len`, the CID and the data.
            let zeros = vec![0u8; 2 + cid_len as usize + location.data_len as usize];
            writer.file.write_all_at(&zeros, location.data_offset - cid_len - 2)?;
        }
        writer.file.sync_data()?;
        index.remove(cids)?;
        Ok(())
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
        let store = EmbeddedBlockstore::open(&directory, &[]).unwrap();
        let (root, _) = file_blocks(b"sealed bytes");
        assert_eq!(crate::blob::read_file(&store, &root).unwrap(), b"sealed bytes");
        drop(store);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn removed_blocks_leave_no_bytes_and_stay_removed_after_reopening() {
        let directory = temporary_directory("removed");
        let removed: Vec<u8> = b"erased patient record ".iter().copied().cycle().take(400_000).collect();
        let (kept_root, kept_blocks) = file_blocks(b"another patient");
        let (removed_root, removed_blocks) = file_blocks(&removed);
        {
            let store = EmbeddedBlockstore::open(&directory, &[]).unwrap();
            store.put_blocks(&removed_blocks).unwrap();
            store.put_blocks(&kept_blocks).unwrap();
            store.sync().unwrap();
            store.remove_blocks(&crate::blob::dag_cids(&store, &removed_root).unwrap()).unwrap();
        }
        let pack = std::fs::read(directory.join("blocks.pack")).unwrap();
        assert!(!pack.windows(14).any(|window| window == b"erased patient"), "the removed bytes are gone");
        for block in &removed_blocks {
            let cid = block.cid.to_bytes();
            assert!(!pack.windows(cid.len()).any(|window| window == cid.as_slice()));
        }
        let store = EmbeddedBlockstore::open(&directory, &[kept_root]).unwrap();
        assert_eq!(store.cids().unwrap(), vec![kept_root]);
        assert_eq!(crate::blob::read_file(&store, &kept_root).unwrap(), b"another patient");
        // Appends go on after the removed records.
        let (later_root, later_blocks) = file_blocks(b"later");
        store.put_blocks(&later_blocks).unwrap();
        store.sync().unwrap();
        drop(store);
        assert_eq!(EmbeddedBlockstore::open(&directory, &[kept_root, later_root]).unwrap().cids().unwrap().len(), 2);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    fn check_blob_store_contract_here(directory: &Path) {
        let store = EmbeddedBlockstore::open(directory, &[]).unwrap();
        crate::blob::check_blob_store_contract(&store);
    }

    /// A pack holding the blob `kept` and then `last`, synced, with its last 3 bytes cut off:
    /// the roots of both, the blocks of `last`, and the pack's length after the cut.
    fn two_blobs_with_the_last_cut(directory: &Path, last: &[u8]) -> (Cid, Cid, Vec<Block>, u64) {
        let (kept_root, kept_blocks) = file_blocks(b"kept");
        let (last_root, last_blocks) = file_blocks(last);
        {
            let store = EmbeddedBlockstore::open(directory, &[]).unwrap();
            store.put_blocks(&kept_blocks).unwrap();
            store.put_blocks(&last_blocks).unwrap();
            store.sync().unwrap();
        }
        let path = directory.join("blocks.pack");
        let length = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(length - 3).unwrap();
        // As a crash before the index covered the last blob leaves it (it covers only synced bytes).
        std::fs::remove_file(directory.join("index.redb")).unwrap();
        (kept_root, last_root, last_blocks, length - 3)
    }

    #[test]
    fn a_torn_tail_is_truncated_on_open() {
        let directory = temporary_directory("torn");
        let (kept_root, _, lost_blocks, _) = two_blobs_with_the_last_cut(&directory, b"lost in the crash");
        let store = EmbeddedBlockstore::open(&directory, &[]).unwrap();
        assert_eq!(store.cids().unwrap(), vec![kept_root]);
        // Appending after the truncation works and survives another reopen.
        store.put_blocks(&lost_blocks).unwrap();
        store.sync().unwrap();
        drop(store);
        assert_eq!(EmbeddedBlockstore::open(&directory, &[]).unwrap().cids().unwrap().len(), 2);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_crash_tail_holding_an_acknowledged_blob_is_not_cut() {
        let directory = temporary_directory("acknowledged-tail");
        let (kept_root, last_root, _, cut_length) = two_blobs_with_the_last_cut(&directory, b"acknowledged, then cut by someone");
        let error = EmbeddedBlockstore::open(&directory, &[kept_root, last_root]).err().expect("refused");
        assert!(matches!(error, BlobError::Damaged { .. }), "{error}");
        assert!(error.to_string().contains("blocks.pack is damaged at offset"), "{error}");
        assert_eq!(std::fs::metadata(directory.join("blocks.pack")).unwrap().len(), cut_length, "nothing was cut");
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn a_flipped_length_in_the_pack_is_named_not_truncated() {
        let directory = temporary_directory("flipped-length");
        let contents: Vec<Vec<u8>> = (0..5).map(|index| format!("sealed blob number {index}").into_bytes()).collect();
        {
            let store = EmbeddedBlockstore::open(&directory, &[]).unwrap();
            for content in &contents {
                store.put_blocks(&file_blocks(content).1).unwrap();
            }
            store.sync().unwrap();
        }
        let path = directory.join("blocks.pack");
        let original = std::fs::read(&path).unwrap();
        let record_len = u32::from_le_bytes(original[..4].try_into().unwrap()) as usize;
        let second = 4 + record_len;
        for (offset, bit) in [(second, 6), (second + 2, 0), (second + 3, 7)] {
            std::fs::write(&path, &original).unwrap();
            drop(EmbeddedBlockstore::open(&directory, &[]).unwrap());
            let mut damaged = original.clone();
            damaged[offset] ^= 1 << bit;
            std::fs::write(&path, &damaged).unwrap();
            // The index covers the record: an open does not read its length (nor does a read,
            // which still finds the block intact); `verify`'s scan names it (below).
            let store = EmbeddedBlockstore::open(&directory, &[]).unwrap();
            let cid = file_blocks(&contents[1]).0;
            assert!(crate::blob::unixfs::block_matches(&cid, &store.get_block(&cid).unwrap().unwrap()));
            drop(store);
            // Without the index, the open must scan the record, and refuses.
            std::fs::remove_file(directory.join("index.redb")).unwrap();
            let error = EmbeddedBlockstore::open(&directory, &[]).err().expect("refused");
            assert!(error.to_string().contains(&format!("damaged at offset {second}")), "{error}");
            assert_eq!(std::fs::read(&path).unwrap(), damaged, "nothing was cut");
            let (_, scan) = EmbeddedBlockstore::open_read_only(&directory).unwrap();
            assert_eq!(scan.damaged_offsets, vec![second as u64]);
        }
        std::fs::write(&path, &original).unwrap();
        assert_eq!(EmbeddedBlockstore::open(&directory, &[]).unwrap().cids().unwrap().len(), 5);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
