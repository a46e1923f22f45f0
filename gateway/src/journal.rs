//! An append-only file of length-prefixed, checksummed records: the on-disk form of the ledger's
//! entries and checkpoints and of the record catalog.
//!
//! Frame (little-endian): `len: u32 | record (len bytes) | first 8 bytes of SHA-256(record)`.
//!
//! On open the file is scanned front to back ([`scan`], which never modifies anything). What can
//! follow the last intact frame after a crash is a *torn tail*: a frame running past the end of
//! the file, a last frame failing its checksum, or zeros. Appends only ever tear there, and
//! nothing in a torn tail was acknowledged (acknowledgement waits for `sync`), so `open` cuts it
//! off, up to [`MAX_TORN_TAIL`] bytes. Anything else (a bad frame followed by more data, or a
//! longer tail) is corruption: `open` refuses, naming the file and offset, and `verify` reports
//! it. Acknowledged records are never dropped silently.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

const MAX_RECORD_LEN: u32 = 64 * 1024 * 1024;
const FRAME_OVERHEAD: u64 = 4 + 8;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("journal {path}: record at offset {offset} fails its checksum")]
    Checksum { path: PathBuf, offset: u64 },
    #[error("journal {path} is damaged at offset {offset} (not a crash tail); run `fhir-gateway verify`")]
    Corrupt { path: PathBuf, offset: u64 },
}

pub struct Journal {
    path: PathBuf,
    reader: File,
    writer: Mutex<JournalWriter>,
}

struct JournalWriter {
    file: File,
    end: u64,
}

fn checksum(record: &[u8]) -> [u8; 8] {
    Sha256::digest(record)[..8].try_into().expect("8 bytes")
}

/// How a scan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanEnd {
    Clean,
    /// Bytes after `valid_end` that a crash during an append can leave.
    TornTail {
        valid_end: u64,
        file_len: u64,
    },
    /// A damaged frame with more data after it: not a crash, a corruption (or an edit).
    Corrupt {
        offset: u64,
    },
}

/// The most a crash can leave behind: one group commit's appends are far smaller.
pub const MAX_TORN_TAIL: u64 = 16 * 1024 * 1024;

/// Reads every intact record, calling `on_record(offset, record)`, and says how the file ends.
/// Never writes.
pub fn scan(path: &Path, mut on_record: impl FnMut(u64, &[u8])) -> Result<ScanEnd, JournalError> {
    let io = |source| JournalError::Io { path: path.to_path_buf(), source };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(ScanEnd::Clean),
        Err(error) => return Err(io(error)),
    };
    let file_len = file.metadata().map_err(io)?.len();
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let mut offset = 0u64;
    let torn = |offset: u64| -> Result<ScanEnd, JournalError> { Ok(ScanEnd::TornTail { valid_end: offset, file_len }) };
    while offset < file_len {
        let mut len_bytes = [0u8; 4];
        if reader.read_exact(&mut len_bytes).is_err() {
            return torn(offset);
        }
        let len = u32::from_le_bytes(len_bytes);
        let frame_end = offset + FRAME_OVERHEAD + len as u64;
        if len > MAX_RECORD_LEN || frame_end > file_len {
            return torn(offset);
        }
        let mut record = vec![0u8; len as usize];
        let mut stored_checksum = [0u8; 8];
        reader.read_exact(&mut record).map_err(io)?;
        reader.read_exact(&mut stored_checksum).map_err(io)?;
        if stored_checksum != checksum(&record) {
            if frame_end == file_len || rest_is_zeros(&file, offset, file_len).map_err(io)? {
                return torn(offset);
            }
            return Ok(ScanEnd::Corrupt { offset });
        }
        on_record(offset, &record);
        offset = frame_end;
    }
    Ok(ScanEnd::Clean)
}

/// A file system may extend a file with zeros whose data never reached the disk.
fn rest_is_zeros(file: &File, offset: u64, file_len: u64) -> std::io::Result<bool> {
    if file_len - offset > MAX_TORN_TAIL {
        return Ok(false);
    }
    let mut rest = vec![0u8; (file_len - offset) as usize];
    file.read_exact_at(&mut rest, offset)?;
    Ok(rest.iter().all(|byte| *byte == 0))
}

impl Journal {
    /// Opens (creating if absent) the journal after [`scan`]ning it, cutting off a torn tail.
    pub fn open(path: &Path, on_record: impl FnMut(u64, &[u8])) -> Result<Journal, JournalError> {
        let io = |source| JournalError::Io { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let end = match scan(path, on_record)? {
            ScanEnd::Clean => None,
            ScanEnd::TornTail { valid_end, file_len } if file_len - valid_end <= MAX_TORN_TAIL => Some(valid_end),
            ScanEnd::TornTail { valid_end: offset, .. } | ScanEnd::Corrupt { offset } => {
                return Err(JournalError::Corrupt { path: path.to_path_buf(), offset });
            }
        };
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        if let Some(parent) = path.parent() {
            File::open(parent).and_then(|directory| directory.sync_all()).map_err(io)?;
        }
        let file_len = file.metadata().map_err(io)?.len();
        let end = match end {
            Some(valid_end) => {
                tracing::warn!(journal = %path.display(), valid_end, file_len, "cutting off a torn tail left by a crash");
                file.set_len(valid_end).map_err(io)?;
                file.sync_all().map_err(io)?;
                valid_end
            }
            None => file_len,
        };
        Ok(Journal { path: path.to_path_buf(), reader: File::open(path).map_err(io)?, writer: Mutex::new(JournalWriter { file, end }) })
    }

    fn io_error(&self, source: std::io::Error) -> JournalError {
        JournalError::Io { path: self.path.clone(), source }
    }

    /// Appends records (not yet durable) and returns their offsets.
    pub fn append<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Vec<u64>, JournalError> {
        let mut writer = self.writer.lock().expect("journal writer lock");
        let mut buffer = Vec::new();
        let mut offsets = Vec::with_capacity(records.len());
        for record in records {
            let record = record.as_ref();
            if record.len() > MAX_RECORD_LEN as usize {
                let message = format!("a record of {} bytes is longer than the {MAX_RECORD_LEN} a frame holds", record.len());
                return Err(self.io_error(std::io::Error::new(std::io::ErrorKind::InvalidInput, message)));
            }
            offsets.push(writer.end + buffer.len() as u64);
            buffer.extend_from_slice(&(record.len() as u32).to_le_bytes());
            buffer.extend_from_slice(record);
            buffer.extend_from_slice(&checksum(record));
        }
        let end = writer.end;
        writer.file.write_all_at(&buffer, end).map_err(|error| self.io_error(error))?;
        writer.end += buffer.len() as u64;
        Ok(offsets)
    }

    /// Makes every appended record durable.
    pub fn sync(&self) -> Result<(), JournalError> {
        let writer = self.writer.lock().expect("journal writer lock");
        writer.file.sync_data().map_err(|error| self.io_error(error))
    }

    /// Cuts the journal back to `offset` (a record boundary), durably.
    pub fn truncate(&self, offset: u64) -> Result<(), JournalError> {
        let mut writer = self.writer.lock().expect("journal writer lock");
        writer.file.set_len(offset).map_err(|error| self.io_error(error))?;
        writer.file.sync_all().map_err(|error| self.io_error(error))?;
        writer.end = offset;
        Ok(())
    }

    /// Reads the record at `offset`, checking its checksum.
    pub fn read_at(&self, offset: u64) -> Result<Vec<u8>, JournalError> {
        let mut len_bytes = [0u8; 4];
        self.reader.read_exact_at(&mut len_bytes, offset).map_err(|error| self.io_error(error))?;
        let len = u32::from_le_bytes(len_bytes);
        if len > MAX_RECORD_LEN {
            return Err(JournalError::Checksum { path: self.path.clone(), offset });
        }
        let mut frame = vec![0u8; len as usize + 8];
        self.reader.read_exact_at(&mut frame, offset + 4).map_err(|error| self.io_error(error))?;
        let (record, stored_checksum) = frame.split_at(len as usize);
        if stored_checksum != checksum(record) {
            return Err(JournalError::Checksum { path: self.path.clone(), offset });
        }
        frame.truncate(len as usize);
        Ok(frame)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reopen(path: &Path) -> (Journal, Vec<Vec<u8>>) {
        let mut records = Vec::new();
        let journal = Journal::open(path, |_, record| records.push(record.to_vec())).unwrap();
        (journal, records)
    }

    #[test]
    fn a_zero_filled_tail_is_a_torn_tail() {
        let path = std::env::temp_dir().join(format!("fg-journal-zeros-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (journal, _) = reopen(&path);
        journal.append(&[b"kept"]).unwrap();
        journal.sync().unwrap();
        drop(journal);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(std::fs::metadata(&path).unwrap().len() + 4096).unwrap();
        let (journal, records) = reopen(&path);
        assert_eq!(records, vec![b"kept".to_vec()]);
        journal.append(&[b"next"]).unwrap();
        journal.sync().unwrap();
        assert_eq!(reopen(&path).1, vec![b"kept".to_vec(), b"next".to_vec()]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn records_survive_reopen_and_torn_tails_are_cut() {
        let path = std::env::temp_dir().join(format!("fg-journal-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (journal, records) = reopen(&path);
        assert!(records.is_empty());
        let offsets = journal.append(&[b"one".as_slice(), b"two", b""]).unwrap();
        journal.sync().unwrap();
        assert_eq!(journal.read_at(offsets[1]).unwrap(), b"two");
        drop(journal);

        // A crash mid-append: a partial frame at the end.
        let file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all_at(&[9, 0, 0, 0, b'p', b'a'], std::fs::metadata(&path).unwrap().len()).unwrap();
        let (journal, records) = reopen(&path);
        assert_eq!(records, vec![b"one".to_vec(), b"two".to_vec(), Vec::new()]);

        // A flipped byte inside a record is caught by read_at and ends the scan there.
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(b"X", offsets[1] + 4).unwrap();
        assert!(matches!(journal.read_at(offsets[1]), Err(JournalError::Checksum { .. })));
        drop(journal);
        let mut records = Vec::new();
        assert_eq!(scan(&path, |_, record| records.push(record.to_vec())).unwrap(), ScanEnd::Corrupt { offset: offsets[1] });
        assert_eq!(records, vec![b"one".to_vec()]);
        assert!(matches!(Journal::open(&path, |_, _| {}), Err(JournalError::Corrupt { .. })));
        std::fs::remove_file(&path).unwrap();
    }
}
