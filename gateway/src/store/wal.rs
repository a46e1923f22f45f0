//! The write-ahead log, `<data>/records/wal.log`: the commit point of every group.
//!
//! A group's sealed blocks, catalog records and ledger leaves go to their own files
//! (`blocks/blocks.pack`, `records/catalog.log`, `ledger/entries.log`) without a sync, and once
//! more to this log, which is synced: one fdatasync per group instead of three (each costs
//! the VM two or three I/O requests, which on this kind of machine cost CPU, not just time).
//!
//! Now and then (every second under load, past [`RESTART_BYTES`], on close and on open) the
//! commit thread syncs the three files and restarts the log with a [`Base`]: their lengths, below
//! which everything is durable. A group written after it lives in the three files' unsynced
//! tails, which a power loss can leave with holes, and in this log, which it cannot: this log is
//! only ever appended to and synced, so a crash leaves at most a torn tail ([`crate::journal`]).
//!
//! On open, before anything reads the three files, [`Recovery::cut_files`] cuts each back to its
//! `Base` length, and [`Recovery::replay`] appends again what the log's complete groups hold.
//! A group torn by the crash was never acknowledged and is dropped whole. A log without a `Base`
//! (a new data directory, or one from before this log existed) changes nothing.
//!
//! Record layout (little-endian; lengths `u32` unless said otherwise), one journal record each:
//!
//! ```text
//! Base:   0x01 | pack_len u64 (u64::MAX: the blob store keeps no local file) | catalog_len u64 | entries_len u64
//! Blocks: 0x02 | count | (cid_len | cid | data_len | data)*
//! Group:  0x03 | count | (catalog record)* | count | (ledger leaf)*      -- after its Blocks records
//! ```

use std::fs::OpenOptions;
use std::path::Path;

use super::{DataLayout, OpenError};
use crate::blob::{BlobStore, Block, Cid};
use crate::journal::{self, Journal, JournalError};

/// Past this size the commit thread restarts the log at the end of the group.
pub(crate) const RESTART_BYTES: u64 = 32 * 1024 * 1024;
/// Blocks per `Blocks` record at most this many bytes (a transaction's blocks can pass a
/// journal record's limit).
const BLOCKS_RECORD_BYTES: usize = 8 * 1024 * 1024;

const BASE: u8 = 1;
/// A `Base` record in its journal frame (length, kind and three `u64`s, checksum).
const BASE_FRAME_LEN: u64 = 4 + 1 + 3 * 8 + 8;
const BLOCKS: u8 = 2;
const GROUP: u8 = 3;

/// The lengths of the three files when they were last synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Base {
    /// `None`: the blob store keeps no local pack file (its puts are durable by other means).
    pub pack: Option<u64>,
    pub catalog: u64,
    pub entries: u64,
}

pub(crate) struct WriteAheadLog {
    journal: Journal,
}

/// What the log held at open: the base and the complete groups written after it.
#[derive(Default)]
pub(crate) struct Recovery {
    base: Option<Base>,
    blocks: Vec<Block>,
    catalog: Vec<Vec<u8>>,
    leaves: Vec<Vec<u8>>,
    groups: usize,
}

impl WriteAheadLog {
    /// Opens the log (cutting a torn tail) and reads what recovery needs from it.
    pub(crate) fn open(path: &Path) -> Result<(WriteAheadLog, Recovery), OpenError> {
        let mut records: Vec<Vec<u8>> = Vec::new();
        let journal = Journal::open(path, |_, record| records.push(record.to_vec()))?;
        let recovery = Recovery::read(&records).map_err(|reason| OpenError::WriteAheadLog(format!("{}: {reason}", path.display())))?;
        Ok((WriteAheadLog { journal }, recovery))
    }

    /// Appends one group and syncs: the group is durable when this returns.
    pub(crate) fn append_group(&self, blocks: &[Block], catalog: &[Vec<u8>], leaves: &[&[u8]]) -> Result<(), JournalError> {
        let mut records = Vec::new();
        for chunk in chunks_by_size(blocks, BLOCKS_RECORD_BYTES) {
            let mut record = vec![BLOCKS];
            put_len(&mut record, chunk.len());
            for block in chunk {
                put_bytes(&mut record, &block.cid.to_bytes());
                put_bytes(&mut record, &block.data);
            }
            records.push(record);
        }
        let mut group = vec![GROUP];
        put_len(&mut group, catalog.len());
        for record in catalog {
            put_bytes(&mut group, record);
        }
        put_len(&mut group, leaves.len());
        for leaf in leaves {
            put_bytes(&mut group, leaf);
        }
        records.push(group);
        self.journal.append(&records)?;
        self.journal.sync()
    }

    /// Starts the log again from `base` (the three files are synced up to it).
    pub(crate) fn restart(&self, base: Base) -> Result<(), JournalError> {
        let mut record = vec![BASE];
        record.extend_from_slice(&base.pack.unwrap_or(u64::MAX).to_le_bytes());
        record.extend_from_slice(&base.catalog.to_le_bytes());
        record.extend_from_slice(&base.entries.to_le_bytes());
        // Truncated first: a crash in between leaves an empty log, which changes nothing (the
        // files are synced); never a base followed by groups it does not precede.
        self.journal.truncate(0)?;
        self.journal.append(&[record])?;
        self.journal.sync()
    }

    /// The log's length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.journal.end()
    }

    /// Whether a group was appended since the last restart.
    pub(crate) fn holds_groups(&self) -> bool {
        self.len() > BASE_FRAME_LEN
    }
}

/// Consecutive runs of blocks of at most `limit` bytes of data each (a larger block alone).
fn chunks_by_size(blocks: &[Block], limit: usize) -> Vec<&[Block]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (position, block) in blocks.iter().enumerate() {
        if position > start && bytes + block.data.len() > limit {
            chunks.push(&blocks[start..position]);
            (start, bytes) = (position, 0);
        }
        bytes += block.data.len();
    }
    if start < blocks.len() {
        chunks.push(&blocks[start..]);
    }
    chunks
}

fn put_len(buffer: &mut Vec<u8>, len: usize) {
    buffer.extend_from_slice(&(len as u32).to_le_bytes());
}

fn put_bytes(buffer: &mut Vec<u8>, bytes: &[u8]) {
    put_len(buffer, bytes.len());
    buffer.extend_from_slice(bytes);
}

/// Reads a record front to back; every read is bounds-checked.
struct Reader<'r> {
    rest: &'r [u8],
}

impl<'r> Reader<'r> {
    fn take(&mut self, len: usize) -> Result<&'r [u8], String> {
        if self.rest.len() < len {
            return Err("a record ends early".into());
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<usize, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize)
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Result<&'r [u8], String> {
        let len = self.u32()?;
        self.take(len)
    }

    fn finish(&self) -> Result<(), String> {
        if self.rest.is_empty() { Ok(()) } else { Err("a record has trailing bytes".into()) }
    }
}

impl Recovery {
    fn read(records: &[Vec<u8>]) -> Result<Recovery, String> {
        let mut recovery = Recovery::default();
        // Blocks of the group being read: kept only once its Group record is complete.
        let mut pending_blocks = Vec::new();
        for (position, record) in records.iter().enumerate() {
            let Some((kind, body)) = record.split_first() else {
                return Err(format!("record {position} is empty"));
            };
            let mut reader = Reader { rest: body };
            match *kind {
                BASE if position == 0 => {
                    let pack = reader.u64()?;
                    recovery.base = Some(Base { pack: (pack != u64::MAX).then_some(pack), catalog: reader.u64()?, entries: reader.u64()? });
                }
                BLOCKS if recovery.base.is_some() => {
                    for _ in 0..reader.u32()? {
                        let cid = Cid::from_bytes(reader.bytes()?).map_err(|error| format!("record {position}: {error}"))?;
                        pending_blocks.push(Block { cid, data: reader.bytes()?.to_vec() });
                    }
                }
                GROUP if recovery.base.is_some() => {
                    for _ in 0..reader.u32()? {
                        recovery.catalog.push(reader.bytes()?.to_vec());
                    }
                    for _ in 0..reader.u32()? {
                        recovery.leaves.push(reader.bytes()?.to_vec());
                    }
                    recovery.blocks.append(&mut pending_blocks);
                    recovery.groups += 1;
                }
                other => return Err(format!("record {position} of kind {other} is out of place")),
            }
            reader.finish().map_err(|reason| format!("record {position}: {reason}"))?;
        }
        Ok(recovery)
    }

    /// Cuts the three files back to their base lengths (before anything opens them): past them
    /// lies only what the log's groups hold again, or what was never acknowledged.
    pub(crate) fn cut_files(&self, layout: &DataLayout) -> Result<(), OpenError> {
        let Some(base) = self.base else { return Ok(()) };
        let mut files = vec![(layout.catalog(), base.catalog), (layout.ledger().join("entries.log"), base.entries)];
        if let Some(pack) = base.pack {
            files.push((layout.blocks().join("blocks.pack"), pack));
        }
        for (path, length) in files {
            let io = |source| OpenError::Journal(JournalError::Io { path: path.clone(), source });
            let file = match OpenOptions::new().write(true).open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound && length == 0 => continue,
                Err(error) => return Err(io(error)),
            };
            let file_len = file.metadata().map_err(io)?.len();
            if file_len < length {
                return Err(OpenError::WriteAheadLog(format!(
                    "{} is {file_len} bytes, shorter than the {length} bytes synced before; run verify",
                    path.display()
                )));
            }
            if file_len > length {
                file.set_len(length).map_err(io)?;
                file.sync_all().map_err(io)?;
            }
        }
        Ok(())
    }

    /// Appends the log's groups to the three files again and syncs them (after
    /// [`Self::cut_files`], before the catalog and the ledger are opened).
    pub(crate) fn replay(self, layout: &DataLayout, blobs: &dyn BlobStore) -> Result<(), OpenError> {
        if self.groups == 0 {
            return Ok(());
        }
        tracing::warn!(groups = self.groups, versions = self.leaves.len(), "replaying the write-ahead log after a crash");
        blobs.put_blocks(&self.blocks)?;
        blobs.sync()?;
        for (path, records) in [(layout.catalog(), &self.catalog), (layout.ledger().join("entries.log"), &self.leaves)] {
            let journal = Journal::open(&path, |_, _| {})?;
            journal.append(records)?;
            journal.sync()?;
        }
        Ok(())
    }
}

/// Whether the files are exactly as a clean close left them (no groups since the last restart,
/// nothing past the base lengths), and if so removes the log, so that an offline tool may
/// rewrite a file (`keys rotate`). A data directory without a log is clean.
pub(crate) fn remove_if_clean(layout: &DataLayout) -> Result<bool, String> {
    let path = layout.write_ahead_log();
    let mut records = Vec::new();
    let end = journal::scan(&path, |_, record| records.push(record.to_vec())).map_err(|error| error.to_string())?;
    let recovery = Recovery::read(&records)?;
    if end != journal::ScanEnd::Clean || recovery.groups > 0 {
        return Ok(false);
    }
    if let Some(base) = recovery.base {
        let length = |path: std::path::PathBuf| std::fs::metadata(path).map_or(0, |metadata| metadata.len());
        let pack_clean = base.pack.is_none_or(|pack| length(layout.blocks().join("blocks.pack")) == pack);
        if !pack_clean || length(layout.catalog()) != base.catalog || length(layout.ledger().join("entries.log")) != base.entries {
            return Ok(false);
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(error) => return Err(error.to_string()),
    }
    if let Some(directory) = path.parent() {
        std::fs::File::open(directory).and_then(|directory| directory.sync_all()).map_err(|error| error.to_string())?;
    }
    Ok(true)
}

/// How many groups `<data>/records/wal.log` holds that a start would replay (for `verify`, which
/// changes nothing).
pub(crate) fn unreplayed_groups(layout: &DataLayout) -> Result<usize, String> {
    let mut records = Vec::new();
    journal::scan(&layout.write_ahead_log(), |_, record| records.push(record.to_vec())).map_err(|error| error.to_string())?;
    Ok(Recovery::read(&records)?.groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::file_blocks;

    fn temporary_directory(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("fg-wal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    #[test]
    fn groups_after_the_base_are_read_back_and_a_torn_group_is_dropped() {
        let directory = temporary_directory("read");
        let path = directory.join("wal.log");
        let (_, blocks) = file_blocks(&vec![7u8; 300_000]);
        let base = Base { pack: Some(10), catalog: 20, entries: 30 };
        {
            let (log, recovery) = WriteAheadLog::open(&path).unwrap();
            assert_eq!((recovery.base, recovery.groups), (None, 0));
            log.restart(base).unwrap();
            log.append_group(&blocks, &[b"record".to_vec()], &[b"leaf".as_slice()]).unwrap();
            log.append_group(&[], &[b"second".to_vec()], &[b"leaf 2".as_slice()]).unwrap();
        }
        let (log, recovery) = WriteAheadLog::open(&path).unwrap();
        assert_eq!((recovery.base, recovery.groups), (Some(base), 2));
        assert_eq!(recovery.blocks, blocks);
        assert_eq!(recovery.catalog, vec![b"record".to_vec(), b"second".to_vec()]);
        assert_eq!(recovery.leaves, vec![b"leaf".to_vec(), b"leaf 2".to_vec()]);

        // A crash while a group is written: its blocks are there, its Group record is torn.
        let length = log.len();
        log.append_group(&blocks, &[b"torn".to_vec()], &[b"torn leaf".as_slice()]).unwrap();
        drop(log);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(std::fs::metadata(&path).unwrap().len() - 3).unwrap();
        let (log, recovery) = WriteAheadLog::open(&path).unwrap();
        assert_eq!(recovery.groups, 2);
        assert_eq!(recovery.blocks, blocks, "the torn group's blocks are not replayed");
        assert!(log.len() > length, "its Blocks record is intact and stays");

        // A restart leaves only the base.
        assert!(log.holds_groups());
        log.restart(Base { pack: None, catalog: 1, entries: 2 }).unwrap();
        assert!(!log.holds_groups());
        let (_, recovery) = WriteAheadLog::open(&path).unwrap();
        assert_eq!((recovery.base, recovery.groups), (Some(Base { pack: None, catalog: 1, entries: 2 }), 0));
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn blocks_are_split_into_records_of_bounded_size() {
        let content: Vec<u8> = (0..5 * 262_144u32).map(|i| (i / 1000) as u8).collect();
        let (_, blocks) = file_blocks(&content);
        assert_eq!(blocks.iter().filter(|block| block.data.len() == 262_144).count(), 5);
        let chunks = chunks_by_size(&blocks, 2 * 262_144);
        assert!(chunks.iter().all(|chunk| chunk.iter().map(|block| block.data.len()).sum::<usize>() <= 2 * 262_144));
        assert_eq!(chunks.concat(), blocks);
        assert_eq!(chunks_by_size(&blocks, 1).len(), blocks.len(), "a block larger than the limit goes alone");
        assert!(chunks_by_size(&[], 1).is_empty());
    }

    #[test]
    fn a_record_out_of_place_is_refused() {
        assert!(Recovery::read(&[vec![GROUP, 0, 0, 0, 0, 0, 0, 0, 0]]).is_err(), "a group without a base");
        assert!(Recovery::read(&[vec![BASE, 1]]).is_err(), "a short base");
        assert!(Recovery::read(&[vec![9]]).is_err(), "an unknown kind");
    }
}
