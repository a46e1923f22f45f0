//! Damage in the data directory (bits flipped, files cut) is never taken for a crash tail: the
//! gateway either refuses to start, naming the file and offset, or serves every acknowledged
//! write (a write whose ledger entry a checkpoint covers and that was damaged is answered 500,
//! never with other content: a start does not read those entries again, issue 18); `verify`
//! names the damage; nothing acknowledged is deleted (restoring the bytes brings everything
//! back). Issue 17, section C.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::harness::{Gateway, json_body};

const PACK: &str = "blocks/blocks.pack";
const CATALOG: &str = "records/catalog.log";
const CATALOG_STORE: &str = "records/catalog.redb";
const PACK_INDEX: &str = "blocks/index.redb";
const PATIENT_KEY_INDEX: &str = "keys/patients.index.redb";
const ENTRIES: &str = "ledger/entries.log";
const CHECKPOINTS: &str = "ledger/checkpoints.log";

/// Frame overheads besides the length-prefixed body: journals `len | record | checksum(8)`,
/// the pack `len | cid_len | cid | block`.
const JOURNAL_OVERHEAD: usize = 12;
const PACK_OVERHEAD: usize = 4;

/// Every file of a data directory (but its lock), by path relative to it.
struct Snapshot(BTreeMap<PathBuf, Vec<u8>>);

fn files_under(root: &Path, directory: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(root, &path, files);
        } else if path.file_name().is_some_and(|name| name != "LOCK") {
            files.push(path.strip_prefix(root).unwrap().to_path_buf());
        }
    }
}

impl Snapshot {
    fn take(root: &Path) -> Snapshot {
        let mut files = Vec::new();
        files_under(root, root, &mut files);
        Snapshot(files.into_iter().map(|file| (file.clone(), std::fs::read(root.join(&file)).unwrap())).collect())
    }

    fn restore(&self, root: &Path) {
        let mut files = Vec::new();
        files_under(root, root, &mut files);
        for file in files.iter().filter(|file| !self.0.contains_key(*file)) {
            std::fs::remove_file(root.join(file)).unwrap();
        }
        for (file, bytes) in &self.0 {
            std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
            std::fs::write(root.join(file), bytes).unwrap();
        }
    }

    fn bytes(&self, file: &str) -> &[u8] {
        &self.0[Path::new(file)]
    }

    /// The files that differ from the snapshot now, but for derived state (the ledger's index
    /// of offsets and hashes, which a start may rebuild before it refuses, the catalog store,
    /// which a start after a crash repairs first, and the indexes of the pack and of the patient
    /// keys, which a start extends).
    fn changed(&self, root: &Path) -> Vec<PathBuf> {
        let derived = |file: &Path| {
            file.ends_with("entries.idx")
                || file.components().any(|part| part.as_os_str() == "hashes")
                || file == Path::new(CATALOG_STORE)
                || file == Path::new(PACK_INDEX)
                || file == Path::new(PATIENT_KEY_INDEX)
        };
        self.0
            .iter()
            .filter(|(file, _)| !derived(file))
            .filter(|(file, bytes)| std::fs::read(root.join(file)).ok().as_ref() != Some(*bytes))
            .map(|(file, _)| file.clone())
            .collect()
    }
}

/// The offsets of the frames of a file of length-prefixed frames.
fn frame_offsets(bytes: &[u8], overhead: usize) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut offset = 0;
    while offset + 4 <= bytes.len() {
        offsets.push(offset);
        offset += overhead + u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
    }
    offsets
}

fn overhead_of(file: &str) -> usize {
    if file == PACK { PACK_OVERHEAD } else { JOURNAL_OVERHEAD }
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    Truncate(usize),
    Flip { offset: usize, bit: u8 },
}

impl Damage {
    fn apply(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Damage::Truncate(length) => bytes[..length].to_vec(),
            Damage::Flip { offset, bit } => {
                let mut damaged = bytes.to_vec();
                damaged[offset] ^= 1 << bit;
                damaged
            }
        }
    }
}

/// Truncations (start, middle, tail) and flips (length fields and payloads of the first, a
/// middle and the last frame; the last byte) for one file.
fn damages(bytes: &[u8], overhead: usize) -> Vec<Damage> {
    let frames = frame_offsets(bytes, overhead);
    let (first, middle, last) = (frames[0], frames[frames.len() / 2], *frames.last().unwrap());
    let mut damages = vec![Damage::Truncate(1), Damage::Truncate(bytes.len() / 2), Damage::Truncate(bytes.len() - 1)];
    for (frame, bits) in [(first, [3, 20]), (middle, [0, 23]), (last, [1, 14])] {
        damages.extend(bits.iter().map(|bit| Damage::Flip { offset: frame + (bit / 8) as usize, bit: bit % 8 }));
    }
    for offset in [first + 9, middle + 10, last + 11, bytes.len() - 1] {
        damages.push(Damage::Flip { offset, bit: 2 });
    }
    damages
}

async fn write_patients(gateway: &Gateway, first: usize, count: usize) -> Vec<(String, Value)> {
    let mut written = Vec::new();
    for index in first..first + count {
        let response = gateway.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": format!("Damage{index}")}]})).await;
        assert_eq!(response.status(), 201);
        let body = json_body(response).await;
        written.push((body["id"].as_str().unwrap().to_string(), body));
    }
    written
}

async fn assert_serves(gateway: &Gateway, written: &[(String, Value)], case: &str) {
    for (id, body) in written {
        let response = gateway.get(&format!("Patient/{id}")).await;
        assert_eq!(response.status(), 200, "{case}: acknowledged Patient/{id} is not served");
        assert_eq!(json_body(response).await, *body, "{case}");
    }
}

/// Applies one damage to `file`, then checks a start, `verify` and that nothing was cut. (Some
/// damage harms no acknowledged write, e.g. a cut that removes exactly the newest checkpoint:
/// then the gateway serves everything, and `verify` need not object.)
async fn check(gateway: &mut Gateway, snapshot: &Snapshot, written: &[(String, Value)], file: &str, damage: Damage) {
    let root = gateway.data.path().to_path_buf();
    let case = format!("{file} {damage:?}");
    let damaged = damage.apply(snapshot.bytes(file));
    std::fs::write(root.join(file), &damaged).unwrap();
    let (clean, report) = gateway.verify();
    match gateway.try_start_again().await {
        Err(stderr) => {
            // Refused: acknowledged data is damaged, and verify must say where.
            assert!(!clean && report.contains(file), "{case}: verify does not name the damage:\n{report}");
            let name = Path::new(file).file_name().unwrap().to_str().unwrap();
            assert!(stderr.contains(name) && stderr.contains("offset"), "{case}: the refusal names no file and offset:\n{stderr}");
            assert_eq!(std::fs::read(root.join(file)).unwrap(), damaged, "{case}: the refused start changed the damaged file");
            assert_eq!(snapshot.changed(&root), vec![PathBuf::from(file)], "{case}: the refused start changed other files: {stderr}");
        }
        Ok(()) if clean => {
            assert_serves(gateway, written, &case).await;
            gateway.stop();
        }
        Ok(()) => {
            // Damage a start does not look for (inside what a checkpoint covers): each write is
            // served as written or refused as an integrity failure, and verify named the file.
            assert!(
                report.contains(file),
                "{case}: verify does not name the damage:
{report}"
            );
            for (id, body) in written {
                let response = gateway.get(&format!("Patient/{id}")).await;
                match response.status().as_u16() {
                    200 => assert_eq!(json_body(response).await, *body, "{case}"),
                    500 => assert!(response.text().await.unwrap().contains("integrity"), "{case}"),
                    status => panic!("{case}: Patient/{id} answered {status}"),
                }
            }
            gateway.stop();
        }
    }
    snapshot.restore(&root);
}

#[tokio::test]
async fn damage_anywhere_is_refused_by_name_or_harmless_and_never_cuts_acknowledged_writes() {
    // A clean stop: the shutdown checkpoint covers every entry.
    let mut gateway = Gateway::start().await;
    let written = write_patients(&gateway, 0, 6).await;
    gateway.stop();
    let snapshot = Snapshot::take(gateway.data.path());
    for file in [PACK, CATALOG, ENTRIES, CHECKPOINTS] {
        for damage in damages(snapshot.bytes(file), overhead_of(file)) {
            check(&mut gateway, &snapshot, &written, file, damage).await;
        }
    }

    // The search index: derived state, rebuilt when damaged.
    let index = gateway.data.path().join("index");
    let mut segment_files: Vec<PathBuf> = std::fs::read_dir(&index)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| ["idx", "term", "store", "fast"].contains(&extension.to_str().unwrap())))
        .collect();
    segment_files.sort();
    assert!(!segment_files.is_empty(), "the index has segments");
    for path in &segment_files {
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x04;
        std::fs::write(path, &bytes).unwrap();
    }
    gateway.try_start_again().await.expect("a damaged index is no reason to refuse");
    assert_serves(&gateway, &written, "index").await;
    let count = json_body(gateway.get("Patient?_summary=count").await).await;
    assert_eq!(count["total"], written.len(), "{count}");
    let found = json_body(gateway.get("Patient?family=Damage3").await).await;
    assert_eq!(found["total"], 1, "{found}");
    gateway.stop();
    snapshot.restore(gateway.data.path());

    // After a kill -9: the last entries are covered by no checkpoint.
    let mut gateway = Gateway::start_with(&["--checkpoint-interval-ms", "600000"]).await;
    let mut written = write_patients(&gateway, 0, 3).await;
    gateway.restart().await;
    written.extend(write_patients(&gateway, 3, 3).await);
    gateway.kill9();
    let snapshot = Snapshot::take(gateway.data.path());
    for (file, from_end) in [(ENTRIES, [1, 20]), (CHECKPOINTS, [1, 30]), (CATALOG, [1, 40]), (PACK, [1, 50])] {
        let bytes = snapshot.bytes(file);
        let last = *frame_offsets(bytes, overhead_of(file)).last().unwrap();
        let mut cases = vec![Damage::Flip { offset: last, bit: 2 }, Damage::Flip { offset: last + 1, bit: 6 }];
        cases.extend(from_end.map(|back| Damage::Flip { offset: bytes.len() - back, bit: 5 }));
        if file == CATALOG || file == PACK {
            // Synced before the ledger: a cut there loses what an entry needs. (A cut inside
            // the ledger's own last frame looks exactly like a crash: see ARCHITECTURE.md.)
            cases.push(Damage::Truncate(bytes.len() - 1));
        }
        for damage in cases {
            check(&mut gateway, &snapshot, &written, file, damage).await;
        }
    }
    gateway.try_start_again().await.expect("the restored directory opens");
    assert_serves(&gateway, &written, "restored").await;
    gateway.stop();
    let (clean, report) = gateway.verify();
    assert!(clean, "{report}");
}

/// Writes `count` Patients, stops the gateway and returns them with a snapshot of the files.
async fn stopped_with(count: usize, extra: &[&str]) -> (Gateway, Vec<(String, Value)>, Snapshot) {
    let mut gateway = Gateway::start_with(extra).await;
    let written = write_patients(&gateway, 0, count).await;
    gateway.stop();
    let snapshot = Snapshot::take(gateway.data.path());
    (gateway, written, snapshot)
}

/// Damage at `offset` of `file`: `verify` fails naming `reported`, the start is refused naming
/// the file and offset, the file is as damaged, and restoring it brings everything back.
async fn assert_named_refused_then_restored(
    gateway: &mut Gateway,
    snapshot: &Snapshot,
    written: &[(String, Value)],
    file: &str,
    offset: usize,
    reported: &str,
) {
    let (clean, report) = gateway.verify();
    assert!(!clean, "{report}");
    assert!(report.contains(reported), "expected {reported:?} in:\n{report}");
    let needle = format!("{} is damaged at offset {offset}", file.rsplit('/').next().unwrap());
    let damaged = std::fs::read(gateway.data.path().join(file)).unwrap();
    let stderr = gateway.try_start_again().await.expect_err("the start is refused");
    assert!(stderr.contains(&needle), "expected {needle:?} in:\n{stderr}");
    assert_eq!(std::fs::read(gateway.data.path().join(file)).unwrap(), damaged, "nothing was cut");
    snapshot.restore(gateway.data.path());
    gateway.try_start_again().await.expect("the restored directory opens");
    assert_serves(gateway, written, "restored").await;
    gateway.stop();
}

/// Flips bit `bit` of byte `byte` of the 11th frame's length in `file` (of `resources`
/// written, frames with `overhead` bytes besides the record) and removes the `derived` index
/// that covers it, then: `verify` and the refused start both name the frame's offset, and
/// nothing is cut.
async fn a_flipped_length_is_named(resources: usize, file: &str, overhead: usize, byte: usize, bit: u8, derived: &str) {
    let (mut gateway, written, snapshot) = stopped_with(resources, &[]).await;
    let frame = frame_offsets(snapshot.bytes(file), overhead)[10];
    std::fs::write(gateway.data.path().join(file), Damage::Flip { offset: frame + byte, bit }.apply(snapshot.bytes(file))).unwrap();
    std::fs::remove_file(gateway.data.path().join(derived)).unwrap();
    let reported = format!("{file}: damaged record at offset {frame}");
    assert_named_refused_then_restored(&mut gateway, &snapshot, &written, file, frame, &reported).await;
}

#[tokio::test]
async fn a_flipped_length_in_the_pack_is_named_not_truncated() {
    a_flipped_length_is_named(40, PACK, PACK_OVERHEAD, 1, 5, PACK_INDEX).await;
}

#[tokio::test]
async fn a_flipped_length_in_the_catalog_is_named_by_verify_and_refused_when_the_store_must_be_filled_from_it() {
    let (mut gateway, written, snapshot) = stopped_with(20, &[]).await;
    let frame = frame_offsets(snapshot.bytes(CATALOG), JOURNAL_OVERHEAD)[10];
    let damaged = Damage::Flip { offset: frame + 2, bit: 0 }.apply(snapshot.bytes(CATALOG));
    std::fs::write(gateway.data.path().join(CATALOG), &damaged).unwrap();
    // The catalog store holds the record: a start does not read that part of the journal.
    let (clean, report) = gateway.verify();
    assert!(!clean && report.contains(&format!("{CATALOG}: damaged record at offset {frame}")), "{report}");
    gateway.try_start_again().await.expect("the store opens from its catalog store");
    assert_serves(&gateway, &written, "served from the catalog store").await;
    gateway.stop();
    snapshot.restore(gateway.data.path());
    // Without the store, the start must fill it from the journal, and refuses.
    std::fs::write(gateway.data.path().join(CATALOG), &damaged).unwrap();
    std::fs::remove_file(gateway.data.path().join(CATALOG_STORE)).unwrap();
    let reported = format!("{CATALOG}: damaged record at offset {frame}");
    assert_named_refused_then_restored(&mut gateway, &snapshot, &written, CATALOG, frame, &reported).await;
}

#[tokio::test]
async fn a_catalog_without_its_last_frame_is_named_by_verify_and_refused() {
    let (mut gateway, written, snapshot) = stopped_with(5, &[]).await;
    let last = *frame_offsets(snapshot.bytes(CATALOG), JOURNAL_OVERHEAD).last().unwrap();
    std::fs::write(gateway.data.path().join(CATALOG), &snapshot.bytes(CATALOG)[..last]).unwrap();
    let reported = format!("records/catalog.log is damaged at offset {last}: ledger entries 4..5");
    assert_named_refused_then_restored(&mut gateway, &snapshot, &written, CATALOG, last, &reported).await;
}

#[tokio::test]
async fn a_flipped_bit_in_the_last_ledger_frame_after_kill_9_is_damage_not_a_crash_tail() {
    let mut gateway = Gateway::start_with(&["--checkpoint-interval-ms", "600000"]).await;
    let written = write_patients(&gateway, 0, 10).await;
    gateway.kill9();
    let snapshot = Snapshot::take(gateway.data.path());
    let last = *frame_offsets(snapshot.bytes(ENTRIES), JOURNAL_OVERHEAD).last().unwrap();
    std::fs::write(gateway.data.path().join(ENTRIES), Damage::Flip { offset: last + 30, bit: 1 }.apply(snapshot.bytes(ENTRIES))).unwrap();
    let reported = format!("ledger/entries.log: damaged record at offset {last}");
    assert_named_refused_then_restored(&mut gateway, &snapshot, &written, ENTRIES, last, &reported).await;
}

#[tokio::test]
async fn a_flipped_byte_in_the_newest_checkpoint_refuses_to_start() {
    let (mut gateway, written, snapshot) = stopped_with(3, &[]).await;
    let bytes = snapshot.bytes(CHECKPOINTS);
    let last = *frame_offsets(bytes, JOURNAL_OVERHEAD).last().unwrap();
    std::fs::write(gateway.data.path().join(CHECKPOINTS), Damage::Flip { offset: bytes.len() - 20, bit: 0 }.apply(bytes)).unwrap();
    let reported = format!("ledger/checkpoints.log: damaged record at offset {last}");
    assert_named_refused_then_restored(&mut gateway, &snapshot, &written, CHECKPOINTS, last, &reported).await;
}

/// Rewrites record `index` of a journal, fixing its frame (length and checksum) as a forger would.
fn forge_journal_record(path: &Path, index: usize, edit: impl Fn(&str) -> String) {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).unwrap();
    let mut forged = Vec::new();
    for (position, offset) in frame_offsets(&bytes, JOURNAL_OVERHEAD).into_iter().enumerate() {
        let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        let mut record = bytes[offset + 4..offset + 4 + length].to_vec();
        if position == index {
            record = edit(std::str::from_utf8(&record).unwrap()).into_bytes();
        }
        forged.extend_from_slice(&(record.len() as u32).to_le_bytes());
        forged.extend_from_slice(&record);
        forged.extend_from_slice(&Sha256::digest(&record)[..8]);
    }
    std::fs::write(path, forged).unwrap();
}

#[tokio::test]
async fn a_rewritten_author_in_the_catalog_is_caught_by_read_and_verify() {
    let (mut gateway, written, _) = stopped_with(2, &[]).await;
    let catalog = gateway.data.path().join(CATALOG);
    assert!(String::from_utf8_lossy(&std::fs::read(&catalog).unwrap()).contains("\"author\":\"Organization/local\""));
    forge_journal_record(&catalog, 0, |record| record.replace("\"author\":\"Organization/local\"", "\"author\":\"Organization/evil\""));
    // The forged journal is what the catalog store is filled from.
    std::fs::remove_file(gateway.data.path().join(CATALOG_STORE)).unwrap();
    let (clean, report) = gateway.verify();
    assert!(!clean, "{report}");
    assert!(report.contains("names an author that ledger entry 0 does not"), "{report}");
    gateway.try_start_again().await.expect("the store opens (the forgery is caught on read)");
    let response = gateway.get(&format!("Patient/{}", written[0].0)).await;
    assert_eq!(response.status(), 500);
    assert!(response.text().await.unwrap().contains("integrity"));
    assert_serves(&gateway, &written[1..], "the other record").await;
}

#[tokio::test]
async fn a_damaged_index_segment_is_rebuilt_at_start() {
    let (mut gateway, written, _) = stopped_with(4, &[]).await;
    let index = gateway.data.path().join("index");
    for entry in std::fs::read_dir(&index).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "idx" || extension == "term") {
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[0] ^= 0x01;
            std::fs::write(&path, &bytes).unwrap();
        }
    }
    gateway.try_start_again().await.expect("a damaged index is rebuilt, not a reason to refuse");
    let found = json_body(gateway.get("Patient?family=Damage2").await).await;
    assert_eq!(found["total"], 1, "{found}");
    assert_eq!(json_body(gateway.get("Patient?_summary=count").await).await["total"], written.len());
}
