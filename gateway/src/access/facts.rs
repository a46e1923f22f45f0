//! What a decision needs to know about one resource, read from the resource itself. Pure.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::consent::{Code, ResourceFacts};
use crate::search::{IndexValue, SearchParamTable, extract_param};
use crate::store::StoredVersion;
use crate::store::catalog::ResourceKey;

/// The patients whose compartment holds `resource` (ids, without `Patient/`). A Patient is in its
/// own compartment only (its `link`s name other people's records, not owners of this one). For
/// other types the R4 CompartmentDefinition's `patient`/`subject` parameters name the patient the
/// record is about; only if they name none do the other compartment parameters (`performer`,
/// `member`, …) count. Empty: the resource is no patient's data.
pub fn compartment_patients(resource: &Value) -> Vec<String> {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    if resource_type == "Patient" {
        return resource.get("id").and_then(Value::as_str).map(|id| vec![id.to_string()]).unwrap_or_default();
    }
    if resource_type == "AuditEvent" {
        // The patient whose data was accessed (entity type 1), not a patient who was the agent.
        return audit_event_patients(resource);
    }
    let table = SearchParamTable::r4();
    let compartment = table.patient_compartment_params(resource_type);
    // Types outside the R4 Patient compartment that still name a patient (Task.for, Device.patient…).
    let fallback: Vec<String> =
        ["patient", "subject"].iter().filter(|name| table.param(resource_type, name).is_some()).map(|name| name.to_string()).collect();
    let params = if compartment.is_empty() { fallback.as_slice() } else { compartment };
    let primary = |name: &String| name == "patient" || name == "subject";
    let mut patients = patients_in(table, resource, resource_type, params.iter().filter(|name| primary(name)));
    if patients.is_empty() {
        patients = patients_in(table, resource, resource_type, params.iter().filter(|name| !primary(name)));
    }
    patients
}

/// Whether resources of this type may hold a patient's data: the type is in the R4 Patient
/// compartment, has a `patient` or `subject` parameter, or is a container whose content cannot
/// be attributed (Binary, Bundle); AuditEvents only when they name a patient. Such a resource whose patient cannot be determined (a
/// contained or identifier-only subject) is judged as an unknown patient's: nobody's Consent can
/// grant it, a `patient/` scope does not reach it.
pub fn holds_patient_data(resource_type: &str) -> bool {
    if resource_type == "AuditEvent" {
        // Written by the gateway alone, naming the patient whose data was accessed; one that
        // names none (a failed login, a search of no one's data) is nobody's data.
        return false;
    }
    let table = SearchParamTable::r4();
    matches!(resource_type, "Patient" | "Binary" | "Bundle")
        || !table.patient_compartment_params(resource_type).is_empty()
        || table.param(resource_type, "patient").is_some()
        || table.param(resource_type, "subject").is_some_and(|param| param.targets.iter().any(|target| target == "Patient"))
}

fn audit_event_patients(event: &Value) -> Vec<String> {
    let mut patients: Vec<String> = Vec::new();
    for entity in event.get("entity").and_then(Value::as_array).into_iter().flatten() {
        if entity.pointer("/type/code").and_then(Value::as_str) == Some("1")
            && let Some(id) =
                entity.pointer("/what/reference").and_then(Value::as_str).and_then(|reference| reference.strip_prefix("Patient/"))
            && !patients.iter().any(|known| known == id)
        {
            patients.push(id.to_string());
        }
    }
    patients
}

fn patients_in<'a>(
    table: &SearchParamTable,
    resource: &Value,
    resource_type: &str,
    params: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    let mut patients: Vec<String> = Vec::new();
    for name in params {
        let Some(param) = table.param(resource_type, name) else { continue };
        for entry in extract_param(table, resource, param) {
            if let IndexValue::Reference { target } = entry.value
                && let Some(id) = target.strip_prefix("Patient/")
                && !id.contains('/')
                && !patients.iter().any(|known| known == id)
            {
                patients.push(id.to_string());
            }
        }
    }
    patients
}

/// The facts of `resource` for a decision about `patient` (one of its compartment patients).
/// `author` is the organisation that wrote the version.
pub fn resource_facts(resource: &Value, patient: Option<&str>, author: Option<&str>) -> ResourceFacts {
    let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default();
    let id = resource.get("id").and_then(Value::as_str).unwrap_or_default();
    let table = SearchParamTable::r4();
    let tokens = |name: &str| -> Vec<Code> {
        let Some(param) = table.param(resource_type, name) else { return Vec::new() };
        extract_param(table, resource, param)
            .into_iter()
            .filter_map(|entry| match entry.value {
                IndexValue::Token { system, code } => Some(Code { system, code }),
                _ => None,
            })
            .collect()
    };
    let data_time = table.param(resource_type, "date").and_then(|param| {
        extract_param(table, resource, param).into_iter().fold(None, |range: Option<(i64, i64)>, entry| match entry.value {
            IndexValue::Date { start_ms, end_ms } => {
                Some(range.map_or((start_ms, end_ms), |(start, end)| (start.min(start_ms), end.max(end_ms))))
            }
            _ => range,
        })
    });
    let security_labels = resource
        .pointer("/meta/security")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|coding| {
            let code = coding.get("code").and_then(Value::as_str)?;
            Some(Code { system: coding.get("system").and_then(Value::as_str).map(str::to_string), code: code.to_string() })
        })
        .collect();
    ResourceFacts {
        resource_type: resource_type.to_string(),
        reference: format!("{resource_type}/{id}"),
        patient: patient.map(str::to_string),
        categories: tokens("category"),
        codes: tokens("code"),
        security_labels,
        author_organization: author.map(str::to_string),
        data_time,
    }
}

/// What decisions need of one version, computed once: its type, its compartment patients and,
/// per patient, the facts the consent decision reads.
#[derive(Debug)]
pub struct VersionFacts {
    pub resource_type: String,
    pub patients: Vec<String>,
    /// One per patient, in the order of `patients`.
    pub per_patient: Vec<ResourceFacts>,
    /// Patient data whose patient cannot be determined: its facts, for an unknown patient.
    pub unknown_patient: Option<ResourceFacts>,
}

/// The patient id standing for "cannot be determined": no Patient has it (ids have no `?`).
pub const UNKNOWN_PATIENT: &str = "?";

impl VersionFacts {
    pub fn of(resource: &Value, author: Option<&str>) -> VersionFacts {
        let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_string();
        let patients = compartment_patients(resource);
        let per_patient = patients.iter().map(|patient| resource_facts(resource, Some(patient), author)).collect();
        let unknown_patient =
            (patients.is_empty() && holds_patient_data(&resource_type)).then(|| resource_facts(resource, Some(UNKNOWN_PATIENT), author));
        VersionFacts { resource_type, patients, per_patient, unknown_patient }
    }
}

/// Facts of recently judged versions (a version never changes, so neither do its facts):
/// repeated reads skip parsing and extraction. Two generations of at most
/// [`FACTS_CACHE_GENERATION`] entries: when the current one is full it becomes the previous one,
/// and the old previous one is dropped outside the lock (no request waits for that).
#[derive(Default)]
pub struct FactsCache {
    generations: RwLock<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<String, Arc<VersionFacts>>,
    previous: HashMap<String, Arc<VersionFacts>>,
}

const FACTS_CACHE_GENERATION: usize = 100_000;

impl FactsCache {
    fn key(key: &ResourceKey, version_id: u64) -> String {
        format!("{}/{}/{version_id}", key.resource_type, key.id)
    }

    /// Forgets everything.
    pub fn clear(&self) {
        let dropped = std::mem::take(&mut *self.generations.write().expect("facts cache lock"));
        drop(dropped);
    }

    /// The facts of one version, if known.
    pub fn get(&self, key: &ResourceKey, version_id: u64) -> Option<Arc<VersionFacts>> {
        self.find(&Self::key(key, version_id))
    }

    fn find(&self, key: &str) -> Option<Arc<VersionFacts>> {
        let generations = self.generations.read().expect("facts cache lock");
        generations.current.get(key).or_else(|| generations.previous.get(key)).map(Arc::clone)
    }

    /// The facts of `version`, computed by `compute` on a miss.
    pub fn get_or_insert(&self, version: &StoredVersion, compute: impl FnOnce() -> Option<VersionFacts>) -> Option<Arc<VersionFacts>> {
        let key = Self::key(&version.key, version.version_id);
        if let Some(found) = self.find(&key) {
            return Some(found);
        }
        let computed = Arc::new(compute()?);
        let retired = {
            let mut generations = self.generations.write().expect("facts cache lock");
            let retired = if generations.current.len() >= FACTS_CACHE_GENERATION {
                let current = std::mem::take(&mut generations.current);
                Some(std::mem::replace(&mut generations.previous, current))
            } else {
                None
            };
            generations.current.insert(key, Arc::clone(&computed));
            retired
        };
        drop(retired);
        Some(computed)
    }
}

/// The cache follows the commit event stream: after an erasure no fact of an erased version may
/// stay (new versions are new keys, so nothing else needs forgetting).
impl crate::store::events::Subscriber for FactsCache {
    fn on_commit(&self, event: &crate::store::events::CommitEvent<'_>) {
        if let crate::store::events::CommitEvent::PatientErased { .. } = event {
            self.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_compartment_is_the_patient_the_record_is_about() {
        assert_eq!(
            compartment_patients(&json!({"resourceType": "Patient", "id": "A", "link": [{"other": {"reference": "Patient/B"}}]})),
            ["A"]
        );
        let observation = json!({
            "resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/A"}, "performer": [{"reference": "Patient/B"}],
        });
        assert_eq!(compartment_patients(&observation), ["A"], "performer counts only without a subject");
        let performed = json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Group/g"}, "performer": [{"reference": "Patient/B"}]});
        assert_eq!(compartment_patients(&performed), ["B"]);
        assert!(compartment_patients(&json!({"resourceType": "Practitioner", "id": "p"})).is_empty());
        let group = json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true,
            "member": [{"entity": {"reference": "Patient/A"}}, {"entity": {"reference": "Patient/B"}}]});
        assert_eq!(compartment_patients(&group), ["A", "B"]);
    }

    #[test]
    fn facts_carry_category_code_labels_and_time() {
        let observation = json!({
            "resourceType": "Observation", "id": "o1", "status": "final",
            "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
            "subject": {"reference": "Patient/A"},
            "effectiveDateTime": "2024-03-01",
        });
        let facts = resource_facts(&observation, Some("A"), Some("Organization/h1"));
        assert_eq!(facts.reference, "Observation/o1");
        assert_eq!(facts.patient.as_deref(), Some("A"));
        assert!(facts.categories.contains(&Code::new("http://terminology.hl7.org/CodeSystem/observation-category", "laboratory")));
        assert!(facts.codes.contains(&Code::new("http://loinc.org", "2345-7")));
        assert_eq!(facts.security_labels, [Code::new("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R")]);
        assert_eq!(facts.author_organization.as_deref(), Some("Organization/h1"));
        let (start, end) = facts.data_time.unwrap();
        assert!(start < end && start == 1_709_251_200_000, "{start} {end}");
    }
}
