//! The current version of every patient-privacy Consent, compiled and grouped by patient: what
//! the consent decision reads on every request. Derived state like the catalog: rebuilt at open
//! from the current Consent versions, and updated from the commit event stream before a Consent
//! write is acknowledged, so a grant, change or revocation applies to the very next request (including
//! the next page of a search that began before it).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::consent::ConsentPolicy;

#[derive(Default)]
pub struct ConsentDirectory {
    inner: RwLock<Directory>,
}

#[derive(Default)]
struct Directory {
    /// Patient id → that patient's current Consents.
    by_patient: HashMap<String, Arc<[ConsentPolicy]>>,
    /// Consent id → the patient its current version is about.
    patient_of: HashMap<String, String>,
}

impl ConsentDirectory {
    /// The patient's current Consents (every status; the decision looks at `active` ones).
    pub fn of_patient(&self, patient: &str) -> Arc<[ConsentPolicy]> {
        self.inner.read().expect("consent directory lock").by_patient.get(patient).cloned().unwrap_or_else(|| Arc::from([]))
    }

    /// Records a new current version of `Consent/id`: `content` `None` for a deletion. A Consent
    /// that does not compile (not patient-privacy, no local patient) takes part in no decision.
    pub fn apply(&self, id: &str, content: Option<&[u8]>) {
        let policy = content.and_then(|bytes| serde_json::from_slice::<Value>(bytes).ok()).and_then(|consent| {
            ConsentPolicy::compile(&consent)
                .inspect_err(|reason| tracing::debug!(reason = reason.as_str(), "a Consent version takes part in no decision"))
                .ok()
        });
        let mut directory = self.inner.write().expect("consent directory lock");
        if let Some(patient) = directory.patient_of.remove(id) {
            directory.replace(&patient, |policies| policies.retain(|policy| policy.id() != id));
        }
        if let Some(policy) = policy {
            let patient = policy.patient().to_string();
            directory.patient_of.insert(id.to_string(), patient.clone());
            directory.replace(&patient, |policies| policies.push(policy));
        }
    }
}

/// The directory follows the commit event stream: a Consent's new version, or its erasure.
impl crate::store::events::Subscriber for ConsentDirectory {
    fn on_commit(&self, event: &crate::store::events::CommitEvent<'_>) {
        use crate::store::events::CommitEvent;
        match event {
            CommitEvent::Committed { versions, .. } => {
                for version in versions.iter().filter(|version| version.key.resource_type == "Consent") {
                    self.apply(&version.key.id, version.body);
                }
            }
            CommitEvent::PatientErased { erasure, .. } => {
                for key in erasure.resources.iter().filter(|key| key.resource_type == "Consent") {
                    self.apply(&key.id, None);
                }
            }
            CommitEvent::CheckpointSigned { .. } => {}
        }
    }
}

impl Directory {
    fn replace(&mut self, patient: &str, change: impl FnOnce(&mut Vec<ConsentPolicy>)) {
        let mut policies: Vec<ConsentPolicy> = self.by_patient.get(patient).map(|policies| policies.to_vec()).unwrap_or_default();
        change(&mut policies);
        if policies.is_empty() {
            self.by_patient.remove(patient);
        } else {
            self.by_patient.insert(patient.to_string(), Arc::from(policies));
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

    #[test]
    fn new_versions_replace_old_ones_and_deletions_remove_them() {
        let directory = ConsentDirectory::default();
        directory.apply("c1", Some(&consent("c1", "A", "active")));
        directory.apply("c2", Some(&consent("c2", "A", "active")));
        assert_eq!(directory.of_patient("A").len(), 2);
        directory.apply("c1", Some(&consent("c1", "A", "inactive")));
        let policies = directory.of_patient("A");
        assert_eq!(policies.len(), 2);
        assert_eq!(policies.iter().find(|policy| policy.id() == "c1").unwrap().status(), "inactive");
        // A new version about another patient moves the Consent.
        directory.apply("c2", Some(&consent("c2", "B", "active")));
        assert_eq!(directory.of_patient("A").len(), 1);
        assert_eq!(directory.of_patient("B").len(), 1);
        directory.apply("c2", None);
        assert!(directory.of_patient("B").is_empty());
        // Not patient-privacy: takes part in nothing.
        directory.apply("c3", Some(br#"{"resourceType":"Consent","id":"c3","status":"active","patient":{"reference":"Patient/A"}}"#));
        assert_eq!(directory.of_patient("A").len(), 1);
    }
}
