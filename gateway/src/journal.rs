//! An append-only file of length-prefixed, checksummed records: the on-disk form of the ledger's
//! entries and checkpoints, of the record catalog and of the audit trail.
//!
//! Frame (little-endian): `len: u32 | record (len bytes) | first 8 bytes of SHA-256(record)`.
//!
//! On open the file is scanned front to back ([`scan`], which never modifies anything). An
//! append is one write of whole frames and nothing is acknowledged before `sync`, so a crash can
//! leave exactly one thing after the last intact frame: a *crash tail*, the unsynced prefix of
//! an append. The scan calls the bytes after the last intact frame a crash tail only when they
//! are
//!
//! - fewer than a frame header, or all zeros (a file system may extend a file with zeros whose
//!   data never reached the disk), or
//! - one incomplete frame: its length runs past the end of the file (or beyond the largest
//!   record), and no intact frame can be found anywhere in those bytes, neither by reading that
//!   length as damaged ([`holds_an_intact_frame`]) nor at any later offset,
//!
//! and at most [`MAX_TORN_TAIL`] bytes long. Everything else is *damage*: a complete frame that
//! fails its checksum (also the last one), or a length that points past the end while intact
//! frames follow. Damage is never cut: `open` refuses, naming the file and offset, and `verify`
//! reports it.
//!
//! A crash tail is cut only where nothing acknowledged can lie in it; the journal alone cannot
//! know that for every file, so callers that can check against other files do so first
//! ([`Journal::recover`] scans without cutting, [`Recovered::open`] cuts): the ledger refuses
//! to cut leaves a signed checkpoint covers, and the store refuses to cut catalog records that
//! a ledger leaf needs.

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
    /// A crash tail after `valid_end`: the unsynced prefix of an append (see the module doc).
    TornTail {
        valid_end: u64,
        file_len: u64,
    },
    /// Damage at `offset`: not something a crash leaves.
    Corrupt {
        offset: u64,
    },
}

/// The most a crash can leave behind: one group commit's appends are far smaller.
pub const MAX_TORN_TAIL: u64 = 16 * 1024 * 1024;

/// Reads every intact record, calling `on_record(offset, record)`, and says how the file ends.
/// Never writes.
pub fn scan(path: &Path, on_record: impl FnMut(u64, &[u8])) -> Result<ScanEnd, JournalError> {
    scan_from(path, 0, on_record)
}

/// [`scan`] from `start`, the offset of a frame (or the end of the file): what a start reads
/// when everything before `start` is known to be intact.
pub fn scan_from(path: &Path, start: u64, mut on_record: impl FnMut(u64, &[u8])) -> Result<ScanEnd, JournalError> {
    let io = |source| JournalError::Io { path: path.to_path_buf(), source };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(ScanEnd::Clean),
        Err(error) => return Err(io(error)),
    };
    let file_len = file.metadata().map_err(io)?.len();
    if start > file_len {
        return Ok(ScanEnd::Corrupt { offset: file_len });
    }
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(start)).map_err(io)?;
    let mut offset = start;
    while offset < file_len {
        if file_len - offset < 4 {
            return end_after_intact_frames(&file, offset, file_len).map_err(io);
        }
        let mut len_bytes = [0u8; 4];
        reader.read_exact(&mut len_bytes).map_err(io)?;
        let len = u32::from_le_bytes(len_bytes);
        let frame_end = offset + FRAME_OVERHEAD + len as u64;
        if len > MAX_RECORD_LEN || frame_end > file_len {
            return end_after_intact_frames(&file, offset, file_len).map_err(io);
        }
        let mut record = vec![0u8; len as usize];
        let mut stored_checksum = [0u8; 8];
        reader.read_exact(&mut record).map_err(io)?;
        reader.read_exact(&mut stored_checksum).map_err(io)?;
        if stored_checksum != checksum(&record) {
            return end_after_intact_frames(&file, offset, file_len).map_err(io);
        }
        on_record(offset, &record);
        offset = frame_end;
    }
    Ok(ScanEnd::Clean)
}

/// The intact record at `offset` of the file at `path`, and where its frame ends.
pub fn read_record(path: &Path, offset: u64) -> Result<(Vec<u8>, u64), JournalError> {
    let io = |source| JournalError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    let record = read_frame(&file, offset).map_err(io)?.ok_or_else(|| JournalError::Checksum { path: path.to_path_buf(), offset })?;
    let end = offset + FRAME_OVERHEAD + record.len() as u64;
    Ok((record, end))
}

/// The record of the frame at `offset`, `None` if the frame is not intact.
fn read_frame(file: &File, offset: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut len_bytes = [0u8; 4];
    file.read_exact_at(&mut len_bytes, offset)?;
    let len = u32::from_le_bytes(len_bytes);
    if len > MAX_RECORD_LEN {
        return Ok(None);
    }
    let mut frame = vec![0u8; len as usize + 8];
    file.read_exact_at(&mut frame, offset + 4)?;
    let (record, stored_checksum) = frame.split_at(len as usize);
    if stored_checksum != checksum(record) {
        return Ok(None);
    }
    frame.truncate(len as usize);
    Ok(Some(frame))
}

/// Classifies the bytes from `offset` (the first one not part of an intact frame) to the end.
fn end_after_intact_frames(file: &File, offset: u64, file_len: u64) -> std::io::Result<ScanEnd> {
    if file_len - offset > MAX_TORN_TAIL {
        return Ok(ScanEnd::Corrupt { offset });
    }
    let mut tail = vec![0u8; (file_len - offset) as usize];
    file.read_exact_at(&mut tail, offset)?;
    Ok(if is_crash_tail(&tail, FRAME_OVERHEAD, MAX_RECORD_LEN, journal_frame_is_intact) {
        ScanEnd::TornTail { valid_end: offset, file_len }
    } else {
        ScanEnd::Corrupt { offset }
    })
}

/// Whether `frame` (from its length field) holds an intact journal frame if its record is
/// `len` bytes long.
fn journal_frame_is_intact(frame: &[u8], len: u32) -> bool {
    let len = len as usize;
    frame.len() >= 12 + len && frame[4 + len..12 + len] == checksum(&frame[4..4 + len])
}

/// Whether `tail`, the bytes after the last intact frame of a file of frames `len: u32 LE | …`
/// (`overhead` bytes besides a `len`-byte body, at most `max_len`), can be what a crash during
/// an append left (see the module doc). `intact(frame, len)` checks a frame that starts at the
/// start of `frame`, read with body length `len`. Shared by the journal and the pack file.
pub(crate) fn is_crash_tail(tail: &[u8], overhead: u64, max_len: u32, intact: impl Fn(&[u8], u32) -> bool) -> bool {
    let zeros_from = tail.len() - tail.iter().rev().take_while(|byte| **byte == 0).count();
    if tail.len() < 4 || zeros_from == 0 {
        return true;
    }
    let declared = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes"));
    let frame_len = overhead + declared as u64;
    if declared <= max_len && frame_len <= tail.len() as u64 {
        // A complete frame failing its check is damage, unless its last bytes and everything
        // after them are zeros: the end of an append whose data never reached the disk (a bit
        // flip cannot zero eight bytes of a checksum or of an AEAD tag).
        return tail.len() - zeros_from >= 8 && zeros_from as u64 <= frame_len - 8;
    }
    !holds_an_intact_frame(tail, overhead, max_len, intact)
}

/// Whether an intact frame lies anywhere in `tail`: at its start with a length other than the
/// one written there (a damaged length field: every single-bit change, and the length that ends
/// the frame at the end of the file), or at any later offset. A crash tail holds none: it is a
/// prefix of one append, and it begins with a frame that is incomplete.
pub(crate) fn holds_an_intact_frame(tail: &[u8], overhead: u64, max_len: u32, intact: impl Fn(&[u8], u32) -> bool) -> bool {
    let fits = |start: usize, len: u32| len <= max_len && start as u64 + overhead + len as u64 <= tail.len() as u64;
    if tail.len() >= 4 {
        let declared = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes"));
        let to_the_end = (tail.len() as u64).checked_sub(overhead).and_then(|len| u32::try_from(len).ok());
        let other_lengths = to_the_end.into_iter().chain((0..32).map(|bit| declared ^ (1 << bit)));
        if other_lengths.into_iter().any(|len| fits(0, len) && intact(tail, len)) {
            return true;
        }
    }
    (1..tail.len().saturating_sub(3)).any(|start| {
        let len = u32::from_le_bytes(tail[start..start + 4].try_into().expect("4 bytes"));
        fits(start, len) && intact(&tail[start..], len)
    })
}

/// A journal that has been scanned and found free of damage, not yet opened for appends:
/// nothing has been cut yet, so a caller can check the other files first.
pub struct Recovered {
    path: PathBuf,
    crash_tail: Option<(u64, u64)>,
}

impl Recovered {
    /// Where the crash tail begins, if there is one.
    pub fn crash_tail(&self) -> Option<u64> {
        self.crash_tail.map(|(valid_end, _)| valid_end)
    }

    /// Opens the journal for appends, cutting off the crash tail.
    pub fn open(self) -> Result<Journal, JournalError> {
        let path = self.path.as_path();
        let io = |source| JournalError::Io { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        if let Some(parent) = path.parent() {
            File::open(parent).and_then(|directory| directory.sync_all()).map_err(io)?;
        }
        let file_len = file.metadata().map_err(io)?.len();
        let end = match self.crash_tail {
            Some((valid_end, scanned_len)) => {
                if scanned_len != file_len {
                    let message = format!("changed from {scanned_len} to {file_len} bytes while being opened");
                    return Err(io(std::io::Error::other(message)));
                }
                tracing::warn!(journal = %path.display(), valid_end, file_len, "cutting off an incomplete last frame left by a crash");
                file.set_len(valid_end).map_err(io)?;
                file.sync_all().map_err(io)?;
                valid_end
            }
            None => file_len,
        };
        Ok(Journal { path: path.to_path_buf(), reader: File::open(path).map_err(io)?, writer: Mutex::new(JournalWriter { file, end }) })
    }
}

impl Journal {
    /// Scans the journal ([`scan`]) and refuses damage, without changing anything.
    pub fn recover(path: &Path, on_record: impl FnMut(u64, &[u8])) -> Result<Recovered, JournalError> {
        Journal::recover_from(path, 0, on_record)
    }

    /// [`Journal::recover`] reading only from `start` (everything before it is known intact).
    pub fn recover_from(path: &Path, start: u64, on_record: impl FnMut(u64, &[u8])) -> Result<Recovered, JournalError> {
        let crash_tail = match scan_from(path, start, on_record)? {
            ScanEnd::Clean => None,
            ScanEnd::TornTail { valid_end, file_len } => Some((valid_end, file_len)),
            ScanEnd::Corrupt { offset } => return Err(JournalError::Corrupt { path: path.to_path_buf(), offset }),
        };
        Ok(Recovered { path: path.to_path_buf(), crash_tail })
    }

    /// Opens (creating if absent) the journal after [`scan`]ning it, cutting off a crash tail.
    /// Only for journals whose crash tail no other file can need.
    pub fn open(path: &Path, on_record: impl FnMut(u64, &[u8])) -> Result<Journal, JournalError> {
        Journal::recover(path, on_record)?.open()
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
        read_frame(&self.reader, offset)
            .map_err(|error| self.io_error(error))?
            .ok_or_else(|| JournalError::Checksum { path: self.path.clone(), offset })
    }

    /// The offset just past the last record appended.
    pub fn end(&self) -> u64 {
        self.writer.lock().expect("journal writer lock").end
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
    /// Three records, synced; returns the journal's path and the records' offsets.
    fn three_records(name: &str) -> (PathBuf, Vec<u64>) {
        let path = std::env::temp_dir().join(format!("fg-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let (journal, _) = reopen(&path);
        let offsets = journal.append(&[b"first record".as_slice(), b"second record", b"third record"]).unwrap();
        journal.sync().unwrap();
        (path, offsets)
    }

    fn flip_bit(path: &Path, offset: u64, bit: u8) {
        let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).unwrap();
        file.write_all_at(&[byte[0] ^ (1 << bit)], offset).unwrap();
    }

    #[test]
    fn a_flipped_bit_in_the_last_frame_is_damage_not_a_crash_tail() {
        let (path, offsets) = three_records("last-frame");
        let length = std::fs::metadata(&path).unwrap().len();
        for offset in [offsets[2] + 4, length - 1] {
            flip_bit(&path, offset, 0);
            assert_eq!(scan(&path, |_, _| {}).unwrap(), ScanEnd::Corrupt { offset: offsets[2] }, "flipped at {offset}");
            let error = Journal::open(&path, |_, _| {}).err().expect("refused");
            assert!(error.to_string().contains(&format!("damaged at offset {}", offsets[2])), "{error}");
            assert_eq!(std::fs::metadata(&path).unwrap().len(), length, "nothing was cut");
            flip_bit(&path, offset, 0);
        }
        assert_eq!(reopen(&path).1.len(), 3);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_length_pointing_past_the_end_is_damage_wherever_intact_frames_follow_or_it_is_complete() {
        let (path, offsets) = three_records("length");
        let length = std::fs::metadata(&path).unwrap().len();
        // The middle frame's length: intact frames follow. The last frame's length: the frame
        // is whole if read with the length changed back.
        for frame in [offsets[1], offsets[2]] {
            for bit in [3, 20, 31] {
                flip_bit(&path, frame + (bit / 8) as u64, bit % 8);
                assert_eq!(scan(&path, |_, _| {}).unwrap(), ScanEnd::Corrupt { offset: frame }, "bit {bit} of the length at {frame}");
                assert!(Journal::open(&path, |_, _| {}).is_err());
                assert_eq!(std::fs::metadata(&path).unwrap().len(), length, "nothing was cut");
                flip_bit(&path, frame + (bit / 8) as u64, bit % 8);
            }
        }
        // Two bits at once in the last frame's length: found by the length that ends at the end.
        flip_bit(&path, offsets[2] + 1, 1);
        flip_bit(&path, offsets[2] + 2, 5);
        assert_eq!(scan(&path, |_, _| {}).unwrap(), ScanEnd::Corrupt { offset: offsets[2] });
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_incomplete_last_frame_and_a_zeroed_append_are_crash_tails() {
        let (path, offsets) = three_records("incomplete");
        let length = std::fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        for cut in [length - 1, offsets[2] + 9, offsets[2] + 2] {
            file.set_len(cut).unwrap();
            assert_eq!(scan(&path, |_, _| {}).unwrap(), ScanEnd::TornTail { valid_end: offsets[2], file_len: cut }, "cut at {cut}");
        }
        // The whole append was sized but only its start reached the disk.
        file.set_len(offsets[2]).unwrap();
        let frame = [&12u32.to_le_bytes()[..], b"third ", &[0u8; 14]].concat();
        file.write_all_at(&frame, offsets[2]).unwrap();
        assert_eq!(scan(&path, |_, _| {}).unwrap(), ScanEnd::TornTail { valid_end: offsets[2], file_len: length });
        assert_eq!(reopen(&path).1.len(), 2);
        std::fs::remove_file(&path).unwrap();
    }
}
