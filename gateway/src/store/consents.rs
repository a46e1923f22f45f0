//! The current version of every patient-privacy Consent, compiled and grouped by patient: what
//! the consent decision reads on every request. Read from the store on demand (the Consents in
//! the patient's compartment, through [`ConsentSource`]) and kept in a bounded cache, which
//! follows the commit event stream: before a Consent write is acknowledged, the cached Consents
//! of the patient it is about, and of the patient it was about, are dropped, so a grant, change
//! or revocation applies to the very next request (including the next page of a search that
//! began before it).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use serde_json::Value;

use super::StoreError;
use crate::consent::ConsentPolicy;

/// Patients whose Consents are cached, and Consent ids remembered for them.
const CACHED_PATIENTS: usize = 65_536;
const REMEMBERED_CONSENTS: usize = 65_536;

/// Where the Consents come from: the store.
pub trait ConsentSource: Send + Sync {
    /// The current, not deleted versions of the Consents in the patient's compartment (and
    /// perhaps Consents that moved to another patient since: the directory checks).
    fn consents_in_compartment(&self, patient: &str) -> Result<Vec<Vec<u8>>, StoreError>;
}

pub struct ConsentDirectory {
    source: OnceLock<Weak<dyn ConsentSource>>,
    by_patient: quick_cache::sync::Cache<String, Arc<[ConsentPolicy]>>,
    /// Consent id → its patient, for the Consents of cached patients (cleared, with the cache,
    /// when it grows past [`REMEMBERED_CONSENTS`]). Held while the cache changes.
    patient_of: Mutex<HashMap<String, String>>,
    /// Bumped by every Consent change (under `patient_of`): a reader keeps what it read only if
    /// no change came between its read and its insert.
    generation: AtomicU64,
}

impl Default for ConsentDirectory {
    fn default() -> Self {
        ConsentDirectory {
            source: OnceLock::new(),
            by_patient: quick_cache::sync::Cache::new(CACHED_PATIENTS),
            patient_of: Mutex::default(),
            generation: AtomicU64::new(0),
        }
    }
}

fn compile(content: Option<&[u8]>) -> Option<ConsentPolicy> {
    content.and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok()).and_then(|consent| {
        ConsentPolicy::compile(&consent)
            .inspect_err(|reason| tracing::debug!(reason = reason.as_str(), "a Consent version takes part in no decision"))
            .ok()
    })
}

impl ConsentDirectory {
    /// Reads Consents from `source` from now on (the store, once it is open).
    pub fn read_from(&self, source: Weak<dyn ConsentSource>) {
        let _ = self.source.set(source);
    }

    /// The patient's current Consents (every status; the decision looks at `active` ones). A
    /// Consent that does not compile (not patient-privacy, no local patient) takes part in no
    /// decision.
    pub fn of_patient(&self, patient: &str) -> Result<Arc<[ConsentPolicy]>, StoreError> {
        if let Some(policies) = self.by_patient.get(patient) {
            return Ok(policies);
        }
        let read_at = self.generation.load(Ordering::SeqCst);
        let Some(source) = self.source.get().and_then(Weak::upgrade) else {
            return Ok(Arc::from([]));
        };
        let policies: Arc<[ConsentPolicy]> = source
            .consents_in_compartment(patient)?
            .iter()
            .filter_map(|body| compile(Some(body)))
            .filter(|policy| policy.patient() == patient)
            .collect();
        let mut patient_of = self.patient_of.lock().expect("consent directory lock");
        if self.generation.load(Ordering::SeqCst) == read_at {
            if patient_of.len() + policies.len() > REMEMBERED_CONSENTS {
                patient_of.clear();
                self.by_patient.clear();
            }
            patient_of.extend(policies.iter().map(|policy| (policy.id().to_string(), patient.to_string())));
            self.by_patient.insert(patient.to_string(), policies.clone());
        }
        Ok(policies)
    }

    /// A new current version of `Consent/id` (`content` `None`: deleted or erased): the cached
    /// Consents of the patient it was and is about are dropped.
    pub fn changed(&self, id: &str, content: Option<&[u8]>) {
        let now_about = compile(content).map(|policy| policy.patient().to_string());
        let mut patient_of = self.patient_of.lock().expect("consent directory lock");
        if let Some(was_about) = patient_of.remove(id) {
            self.by_patient.remove(&was_about);
        }
        if let Some(patient) = now_about {
            self.by_patient.remove(&patient);
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

/// The directory follows the commit event stream: a Consent's new version, or its erasure.
impl crate::store::events::Subscriber for ConsentDirectory {
    fn on_commit(&self, event: &crate::store::events::CommitEvent<'_>) {
        use crate::store::events::CommitEvent;
        match event {
            CommitEvent::Committed { versions, .. } => {
                for version in versions.iter().filter(|version| version.key.resource_type == "Consent") {
                    self.changed(&version.key.id, version.body);
                }
            }
            CommitEvent::PatientErased { erasure, .. } => {
                for key in erasure.resources.iter().filter(|key| key.resource_type == "Consent") {
                    self.changed(&key.id, None);
                }
            }
            CommitEvent::CheckpointSigned { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn consent(id: &str, patient: &str, status: &str) -> Vec<u8> {
        json!({
            "resourceType": "Consent", "id": id, "status": status,
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": format!("Patient/{patient}")},
            "provision": {"type": "permit"},
        })
        .to_string()
        .into_bytes()
    }

    /// Consents by id, as the store would hold them; answers by the patient each is about now.
    #[derive(Default)]
    struct Stored(Mutex<HashMap<String, Vec<u8>>>);

    impl ConsentSource for Stored {
        fn consents_in_compartment(&self, patient: &str) -> Result<Vec<Vec<u8>>, StoreError> {
            let reference = format!("Patient/{patient}");
            let stored = self.0.lock().unwrap();
            Ok(stored
                .values()
                .filter(|body| serde_json::from_slice::<Value>(body).unwrap()["patient"]["reference"] == reference.as_str())
                .cloned()
                .collect())
        }
    }

    /// Writes a version into the store, then tells the directory, as the commit thread does.
    fn write(stored: &Stored, directory: &ConsentDirectory, id: &str, body: Option<Vec<u8>>) {
        match &body {
            Some(body) => stored.0.lock().unwrap().insert(id.to_string(), body.clone()),
            None => stored.0.lock().unwrap().remove(id),
        };
        directory.changed(id, body.as_deref());
    }

    #[test]
    fn every_change_is_seen_by_the_next_read_even_when_the_patients_consents_were_cached() {
        let stored: Arc<Stored> = Arc::default();
        let directory = ConsentDirectory::default();
        let source: Arc<dyn ConsentSource> = stored.clone();
        directory.read_from(Arc::downgrade(&source));
        assert!(directory.of_patient("A").unwrap().is_empty(), "no Consent: nothing, and that is cached too");
        write(&stored, &directory, "c1", Some(consent("c1", "A", "active")));
        write(&stored, &directory, "c2", Some(consent("c2", "A", "active")));
        assert_eq!(directory.of_patient("A").unwrap().len(), 2);
        write(&stored, &directory, "c1", Some(consent("c1", "A", "inactive")));
        let policies = directory.of_patient("A").unwrap();
        assert_eq!(policies.len(), 2);
        assert_eq!(policies.iter().find(|policy| policy.id() == "c1").unwrap().status(), "inactive");
        // A new version about another patient moves the Consent, with both patients cached.
        assert!(directory.of_patient("B").unwrap().is_empty());
        write(&stored, &directory, "c2", Some(consent("c2", "B", "active")));
        assert_eq!(directory.of_patient("A").unwrap().len(), 1);
        assert_eq!(directory.of_patient("B").unwrap().len(), 1);
        // A version that no longer compiles still leaves its former patient.
        write(
            &stored,
            &directory,
            "c2",
            Some(br#"{"resourceType":"Consent","id":"c2","status":"active","patient":{"reference":"Patient/B"}}"#.to_vec()),
        );
        assert!(directory.of_patient("B").unwrap().is_empty());
        write(&stored, &directory, "c1", None);
        assert!(directory.of_patient("A").unwrap().is_empty());
    }

    /// A store in which a commit deleting `Consent/c1` lands while the first read is under way.
    struct Racing {
        stored: Stored,
        directory: Arc<ConsentDirectory>,
        raced: std::sync::atomic::AtomicBool,
    }

    impl ConsentSource for Racing {
        fn consents_in_compartment(&self, patient: &str) -> Result<Vec<Vec<u8>>, StoreError> {
            let read = self.stored.consents_in_compartment(patient);
            if !self.raced.swap(true, Ordering::SeqCst) {
                write(&self.stored, &self.directory, "c1", None);
            }
            read
        }
    }

    #[test]
    fn a_read_that_began_before_a_change_does_not_cache_what_it_read() {
        let directory: Arc<ConsentDirectory> = Arc::default();
        let racing = Arc::new(Racing { stored: Stored::default(), directory: directory.clone(), raced: Default::default() });
        racing.stored.0.lock().unwrap().insert("c1".into(), consent("c1", "A", "active"));
        let source: Arc<dyn ConsentSource> = racing.clone();
        directory.read_from(Arc::downgrade(&source));
        assert_eq!(directory.of_patient("A").unwrap().len(), 1, "the read in flight sees the store as it began");
        assert!(directory.of_patient("A").unwrap().is_empty(), "the next read sees the deletion");
    }
}
