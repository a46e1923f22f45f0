//! The audit trail: an AuditEvent for every FHIR interaction, allowed or denied, kept as the
//! leaves of a second tamper-evident log (`<data>/audit/`: RFC 9162 Merkle tree, checkpoints
//! signed with the ledger key under the origin `<ledger origin>/audit`). Append-only: nothing in
//! the API writes, changes or deletes an AuditEvent; they are read as `AuditEvent/[id]` (the id
//! is the leaf index) and `AuditEvent?patient=[id]`.
//!
//! Durability is grouped: one writer thread appends whatever requests have submitted and syncs
//! once for all of them. While no request waits for a sync, it syncs at most once per
//! [`GROUP_WINDOW`] (sleeping out the window rather than waking for each submission), so an
//! event is durable within about that plus a sync of its submission. [`Durability::BeforeResponse`] makes each request wait for that
//! (a disclosure is never unrecorded, even across a crash; each read then costs a sync's
//! latency); [`Durability::Grouped`] (the default) answers without waiting, so a crash can lose
//! the events of the last few milliseconds. Either way, once the trail cannot be written every
//! audited request fails with `503`: nothing is disclosed unrecorded for longer than that.

mod by_patient;
pub mod event;
pub mod login;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use serde_json::Value;
use tokio::sync::oneshot;

pub use event::{AuditRecord, Outcome, audit_event};

use crate::ledger::{LedgerError, LedgerLog};
use by_patient::PatientIndex;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Log(#[from] LedgerError),
    #[error(transparent)]
    Index(#[from] by_patient::IndexError),
    #[error("leaf {leaf_index} of the audit trail is not an audit record")]
    Malformed { leaf_index: u64 },
}

/// How often the writer signs a checkpoint while new events arrive.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Most events appended by one sync.
const MAX_GROUP: usize = 4096;
/// While no request waits for it, at most one sync per this interval (a sync per request would
/// cost more CPU in the file system than the request itself).
const GROUP_WINDOW: Duration = Duration::from_millis(5);
/// The observer named in every AuditEvent.
const GATEWAY: &str = "fhir-gateway";

struct Submission {
    /// (patient, leaf bytes)
    leaves: Vec<(Option<String>, Vec<u8>)>,
    /// Told once the leaves are synced (only when the request waits for that).
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// When a request's AuditEvents must be durable (`--audit-durability`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Durability {
    /// Before the response is sent.
    BeforeResponse,
    /// Within the writer's next group (milliseconds), not awaited by the response.
    Grouped,
}

pub struct AuditTrail {
    log: Arc<LedgerLog>,
    durability: Durability,
    /// Set by the writer after a storage failure: later requests are refused.
    failed: Arc<std::sync::atomic::AtomicBool>,
    /// Submissions sent to the writer, and those it has written (read-your-audit).
    submitted: AtomicU64,
    written: Arc<AtomicU64>,
    /// Patient id → leaf indexes of the events about them, on disk.
    by_patient: Arc<PatientIndex>,
    sender: Mutex<Option<mpsc::Sender<Submission>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditTrail {
    /// Opens (or creates) the trail in `directory`, checking its newest checkpoint.
    /// Only the leaves its index by patient does not cover yet are read (all of them once, for
    /// a trail written before the index existed).
    pub fn open(directory: &Path, signing_key: SigningKey, origin: &str, durability: Durability) -> Result<AuditTrail, AuditError> {
        let log = Arc::new(LedgerLog::open(directory, signing_key, origin)?);
        let by_patient = PatientIndex::open(&directory.join("by-patient.redb"))?;
        let tree_size = log.tree_size();
        let mut leaf_index = by_patient.covered()?.min(tree_size);
        while leaf_index < tree_size {
            let end = (leaf_index + 10_000).min(tree_size);
            let mut events = Vec::new();
            for index in leaf_index..end {
                let leaf = log.read_leaf(index)?;
                let record: AuditRecord = serde_json::from_slice(&leaf).map_err(|_| AuditError::Malformed { leaf_index: index })?;
                events.extend(record.patient.map(|patient| (patient, index)));
            }
            by_patient.add(events.iter().map(|(patient, index)| (patient.as_str(), *index)), end, end == tree_size)?;
            leaf_index = end;
        }
        let by_patient = Arc::new(by_patient);
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (sender, receiver) = mpsc::channel();
        let writer = {
            let log = Arc::clone(&log);
            let by_patient = Arc::clone(&by_patient);
            let failed = Arc::clone(&failed);
            let written = Arc::clone(&written);
            std::thread::Builder::new()
                .name("audit-writer".into())
                .spawn(move || write_loop(&log, &by_patient, &failed, &written, &receiver))
                .expect("the audit writer thread starts")
        };
        Ok(AuditTrail {
            log,
            durability,
            failed,
            submitted: AtomicU64::new(0),
            written,
            by_patient,
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Records `records`: resolves once they are synced ([`Durability::BeforeResponse`]) or
    /// submitted to the writer ([`Durability::Grouped`]). `Err` if the trail cannot take them.
    pub async fn record(&self, records: &[AuditRecord]) -> Result<(), String> {
        if self.is_failed() {
            return Err("the audit trail stopped after a storage failure".into());
        }
        let leaves = records.iter().map(|record| (record.patient.clone(), serde_json::to_vec(record).expect("JSON serialises"))).collect();
        let (done, answer) = match self.durability {
            Durability::BeforeResponse => {
                let (done, answer) = oneshot::channel();
                (Some(done), Some(answer))
            }
            Durability::Grouped => (None, None),
        };
        {
            let sender = self.sender.lock().expect("audit sender lock");
            let sender = sender.as_ref().ok_or("the audit trail is closed")?;
            sender.send(Submission { leaves, done }).map_err(|_| "the audit trail is closed".to_string())?;
        }
        self.submitted.fetch_add(1, Ordering::SeqCst);
        match answer {
            Some(answer) => answer.await.map_err(|_| "the audit writer stopped".to_string())?,
            None => Ok(()),
        }
    }

    /// Waits (at most 2 s) until every event submitted before the call is written, so a search
    /// of the trail sees the accesses that were answered before it.
    pub async fn caught_up(&self) {
        let target = self.submitted.load(Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.written.load(Ordering::SeqCst) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Whether the trail stopped after a storage failure (then nothing audited may run).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// `AuditEvent/[id]`.
    pub fn event(&self, id: &str) -> Option<Value> {
        let leaf_index: u64 = id.parse().ok()?;
        self.event_at(leaf_index)
    }

    fn event_at(&self, leaf_index: u64) -> Option<Value> {
        let leaf = self.log.read_leaf(leaf_index).ok()?;
        let record: AuditRecord = serde_json::from_slice(&leaf).ok()?;
        Some(audit_event(&leaf_index.to_string(), &record, GATEWAY))
    }

    /// The events about `patient`, newest first.
    pub fn events_of_patient(&self, patient: &str) -> Result<impl Iterator<Item = Value> + '_, AuditError> {
        let indexes = self.by_patient.events_of(patient)?;
        Ok(indexes.into_iter().filter_map(|leaf_index| self.event_at(leaf_index)))
    }

    pub fn tree_size(&self) -> u64 {
        self.log.tree_size()
    }

    /// The newest signed checkpoint of the trail.
    pub fn checkpoint(&self) -> Result<String, LedgerError> {
        self.log.checkpoint()
    }

    /// Stops the writer after what was submitted and signs a final checkpoint.
    pub fn close(&self) {
        self.sender.lock().expect("audit sender lock").take();
        if let Some(writer) = self.writer.lock().expect("audit writer lock").take() {
            let _ = writer.join();
        }
    }
}

impl Drop for AuditTrail {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(
    log: &LedgerLog,
    by_patient: &PatientIndex,
    failed: &std::sync::atomic::AtomicBool,
    written: &AtomicU64,
    receiver: &mpsc::Receiver<Submission>,
) {
    let mut last_checkpoint = Instant::now();
    let mut last_sync = Instant::now();
    let mut index_ok = true;
    loop {
        let first = match receiver.recv_timeout(CHECKPOINT_INTERVAL) {
            Ok(submission) => submission,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                checkpoint(log, &mut last_checkpoint);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut group = vec![first];
        let mut leaves = group[0].leaves.len();
        let mut take_waiting = |group: &mut Vec<Submission>| {
            while leaves < MAX_GROUP
                && let Ok(submission) = receiver.try_recv()
            {
                leaves += submission.leaves.len();
                group.push(submission);
            }
        };
        take_waiting(&mut group);
        // Nobody waits for this group (grouped durability): sleep out the window, then take
        // what arrived meanwhile. One wake-up per sync, not one per request, each of which
        // also preempted a request's task (docs/BENCHMARKS.md, session 9).
        if group.iter().all(|submission| submission.done.is_none()) {
            if let Some(left) = (last_sync + GROUP_WINDOW).checked_duration_since(Instant::now()) {
                std::thread::sleep(left);
            }
            take_waiting(&mut group);
        }
        last_sync = Instant::now();
        if failed.load(std::sync::atomic::Ordering::SeqCst) {
            for submission in group {
                tell(submission.done, Err("the audit trail stopped after a storage failure".into()));
            }
            continue;
        }
        let bytes: Vec<&[u8]> = group.iter().flat_map(|submission| submission.leaves.iter().map(|(_, leaf)| leaf.as_slice())).collect();
        match log.append_durably(&bytes) {
            Ok(first_index) => {
                let patients = group.iter().flat_map(|submission| submission.leaves.iter().map(|(patient, _)| patient));
                let events = patients.enumerate().filter_map(|(offset, patient)| Some((patient.as_deref()?, first_index + offset as u64)));
                // After a failure the index stays where it was: the next start indexes the rest
                // of the trail from there.
                if index_ok && let Err(error) = by_patient.add(events, first_index + bytes.len() as u64, false) {
                    tracing::error!(%error, "the audit index by patient could not be written; it catches up at the next start");
                    index_ok = false;
                }
                written.fetch_add(group.len() as u64, Ordering::SeqCst);
                for submission in group {
                    tell(submission.done, Ok(()));
                }
            }
            Err(error) => {
                tracing::error!(%error, "audit trail write failed; refusing further audited requests");
                failed.store(true, std::sync::atomic::Ordering::SeqCst);
                for submission in group {
                    tell(submission.done, Err("the audit trail could not be written".into()));
                }
            }
        }
        if last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
            checkpoint(log, &mut last_checkpoint);
        }
    }
    checkpoint(log, &mut last_checkpoint);
    if index_ok && let Err(error) = by_patient.add([], log.tree_size(), true) {
        tracing::error!(%error, "the audit index by patient could not be made durable; it catches up at the next start");
    }
}

/// Answers a waiting request, if one waits.
fn tell(done: Option<oneshot::Sender<Result<(), String>>>, result: Result<(), String>) {
    if let Some(done) = done {
        let _ = done.send(result);
    }
}

fn checkpoint(log: &LedgerLog, last_checkpoint: &mut Instant) {
    if let Err(error) = log.checkpoint() {
        tracing::error!(%error, "audit checkpoint failed");
    }
    *last_checkpoint = Instant::now();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(patient: Option<&str>) -> AuditRecord {
        AuditRecord {
            interaction: "read".into(),
            action: "R".into(),
            recorded: "2026-11-21T10:00:00.000Z".into(),
            outcome: Outcome::Success,
            outcome_description: "own compartment".into(),
            who: patient.map(|patient| format!("Patient/{patient}")),
            client_id: None,
            organization: None,
            purpose_of_use: Vec::new(),
            patient: patient.map(str::to_string),
            resources: vec!["Observation/o1".into()],
            consent: None,
            query: None,
            emergency: false,
        }
    }

    #[tokio::test]
    async fn events_are_durable_indexed_by_patient_and_checkpointed() {
        let directory = std::env::temp_dir().join(format!("fg-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        let key = SigningKey::from_bytes(&[7; 32]);
        let trail = Arc::new(AuditTrail::open(&directory, key.clone(), "test/audit", Durability::BeforeResponse).unwrap());
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..20 {
            let trail = Arc::clone(&trail);
            tasks.spawn(async move { trail.record(&[record(Some(if n % 2 == 0 { "a" } else { "b" }))]).await });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
        trail.record(&[record(None)]).await.unwrap();
        assert_eq!(trail.tree_size(), 21);
        assert_eq!(trail.events_of_patient("a").unwrap().count(), 10);
        let newest = trail.events_of_patient("b").unwrap().next().unwrap();
        let b_leaves: Vec<u64> =
            trail.events_of_patient("b").unwrap().map(|event| event["id"].as_str().unwrap().parse().unwrap()).collect();
        assert!(b_leaves.windows(2).all(|pair| pair[0] > pair[1]), "newest first: {b_leaves:?}");
        assert_eq!(newest["entity"][0]["what"]["reference"], "Patient/b");
        assert_eq!(trail.event(newest["id"].as_str().unwrap()).unwrap(), newest);
        trail.close();
        drop(trail);
        // Reopened: the final checkpoint covers everything, the index on disk covers every leaf.
        let reopened = AuditTrail::open(&directory, key.clone(), "test/audit", Durability::Grouped).unwrap();
        assert_eq!(reopened.by_patient.covered().unwrap(), 21);
        assert_eq!(reopened.events_of_patient("b").unwrap().count(), 10);
        assert!(reopened.checkpoint().unwrap().contains("\n21\n"));
        reopened.close();
        drop(reopened);
        // Without its index (a trail written before it existed), it is rebuilt from the leaves.
        std::fs::remove_file(directory.join("by-patient.redb")).unwrap();
        let rebuilt = AuditTrail::open(&directory, key, "test/audit", Durability::Grouped).unwrap();
        let rebuilt_leaves: Vec<u64> =
            rebuilt.events_of_patient("b").unwrap().map(|event| event["id"].as_str().unwrap().parse().unwrap()).collect();
        assert_eq!(rebuilt_leaves, b_leaves);
        rebuilt.close();
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
