//! Erasing a patient (issue #18, part 2): `POST Patient/[id]/$purge` by a caller holding the
//! purge scope destroys the patient's key, the index entries and the sealed blocks of every
//! version in the patient's compartment; afterwards nothing of it is readable, searchable or
//! on disk, `verify` reports the versions as erased, and a copy of the data taken before the
//! purge stays unreadable once restored.

use std::path::{Path, PathBuf};

use reqwest::Method;
use serde_json::{Value, json};

use crate::consent::{Caller, assert_outcome, emr};
use crate::harness::{Gateway, TempDir, entries};

const PURGE_SCOPE: &str = "system/Patient.$purge";
const MRN: &str = "urn:test:mrn";
/// What must be nowhere after the purge: the patient's name, identifier and an observation value.
const ERASED_DATA: [&str; 4] = ["Quixotefield", "Zebulon", "MRN-7Q3X9Z", "4242.77"];

fn patient(id: &str, family: &str, given: &str, mrn: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family, "given": [given]}],
           "identifier": [{"system": MRN, "value": mrn}], "birthDate": "1961-07-14"})
}

fn observation(id: &str, patient: &str, value: &str) -> Value {
    let value: Value = serde_json::from_str(value).unwrap();
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]},
           "subject": {"reference": format!("Patient/{patient}")},
           "valueQuantity": {"value": value, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"}})
}

/// Patient `erase-me` (two versions, an Observation, a Condition) and patient `keep-me` (an
/// Observation), written by the EMR.
async fn seed(emr: &Caller) {
    emr.expect_write(Method::PUT, "Patient/erase-me", &patient("erase-me", "Quixotefield", "Zebulon", "MRN-7Q3X9Z"), 201).await;
    let mut renamed = patient("erase-me", "Quixotefield", "Zebulon", "MRN-7Q3X9Z");
    renamed["gender"] = json!("male");
    emr.expect_write(Method::PUT, "Patient/erase-me", &renamed, 200).await;
    emr.expect_write(Method::PUT, "Observation/erase-hb", &observation("erase-hb", "erase-me", "4242.77"), 201).await;
    let condition = json!({"resourceType": "Condition", "id": "erase-cond", "subject": {"reference": "Patient/erase-me"},
                           "code": {"text": "Quixotefield syndrome"}});
    emr.expect_write(Method::PUT, "Condition/erase-cond", &condition, 201).await;
    emr.expect_write(Method::PUT, "Patient/keep-me", &patient("keep-me", "Keeper", "Kim", "MRN-KEEP1"), 201).await;
    emr.expect_write(Method::PUT, "Observation/keep-hb", &observation("keep-hb", "keep-me", "13.1"), 201).await;
}

fn purger(gateway: &Gateway) -> Caller {
    Caller::new(gateway, &["--scope", &format!("system/*.cruds {PURGE_SCOPE}")])
}

/// Every file under `directory`, recursively.
fn files(directory: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() { found.extend(files(&path)) } else { found.push(path) }
    }
    found
}

/// Copies `from` into `to`, leaving out the `except` subdirectory.
fn copy_tree(from: &Path, to: &Path, except: Option<&str>) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if Some(name.as_str()) == except || name == "LOCK" {
            continue;
        }
        if path.is_dir() { copy_tree(&path, &to.join(&name), None) } else { std::fs::copy(&path, to.join(&name)).map(|_| ()).unwrap() }
    }
}

fn replace_tree(target: &Path, source: &Path, except: Option<&str>) {
    for entry in std::fs::read_dir(target).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if Some(name.as_str()) == except || name == "LOCK" {
            continue;
        }
        if path.is_dir() { std::fs::remove_dir_all(&path).unwrap() } else { std::fs::remove_file(&path).unwrap() }
    }
    copy_tree(source, target, except);
}

async fn assert_erased(emr: &Caller) {
    for path in
        ["Patient/erase-me", "Patient/erase-me/_history/1", "Patient/erase-me/_history", "Observation/erase-hb", "Condition/erase-cond"]
    {
        let answer = emr.get(path).await;
        assert_outcome(path, &answer, 410, "deleted");
        assert!(answer.text.contains("erased"), "{path}: {}", answer.text);
    }
    for search in [
        "Patient?identifier=MRN-7Q3X9Z",
        "Patient?family=Quixotefield",
        "Observation?subject=Patient/erase-me",
        "Observation?value-quantity=4242.77",
        "Observation?code=718-7",
        "Condition?_id=erase-cond",
        "Patient/erase-me/Observation",
        "Observation/_history",
        "Patient/_history",
    ] {
        let answer = emr.get(search).await;
        if answer.status == 410 {
            continue;
        }
        assert_eq!(answer.status, 200, "{search}: {}", answer.text);
        let ids: Vec<String> =
            entries(&answer.json()).iter().filter_map(|entry| entry["resource"]["id"].as_str().map(str::to_string)).collect();
        assert!(ids.iter().all(|id| id.starts_with("keep")), "{search} still finds {ids:?}");
    }
}

#[tokio::test]
async fn a_purge_erases_the_patients_compartment_and_nothing_else() {
    let mut gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let found = emr.get("Observation?value-quantity=4242.77").await;
    assert_eq!(entries(&found.json()).len(), 1, "the control: the value is searchable before");

    // Not with resource scopes, however broad; not on another type.
    assert_outcome("no purge scope", &emr.post("Patient/erase-me/$purge", &json!({})).await, 403, "forbidden");
    let purger = purger(&gateway);
    assert_outcome("not a Patient", &purger.post("Observation/erase-hb/$purge", &json!({})).await, 404, "not-found");
    assert_outcome("unknown patient", &purger.post("Patient/nobody/$purge", &json!({})).await, 404, "not-found");

    let done = purger.post("Patient/erase-me/$purge", &json!({})).await;
    assert_eq!(done.status, 200, "{}", done.text);
    assert!(done.text.contains("4 version(s) of 3 resource(s)"), "{}", done.text);
    assert_erased(&emr).await;
    assert_outcome("again", &purger.post("Patient/erase-me/$purge", &json!({})).await, 410, "deleted");

    // The id is never used again, and nothing more is filed under the erased patient.
    assert_outcome("PUT", &emr.put("Patient/erase-me", &patient("erase-me", "New", "Body", "MRN-NEW")).await, 410, "deleted");
    assert_outcome("DELETE", &emr.delete("Observation/erase-hb").await, 410, "deleted");
    let late =
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "late"}, "subject": {"reference": "Patient/erase-me"}});
    assert_outcome("a late result", &emr.post("Observation", &late).await, 410, "deleted");

    // The other patient is untouched.
    assert_eq!(emr.read("Observation/keep-hb").await["valueQuantity"]["value"], json!(13.1));
    assert_eq!(entries(&emr.get("Patient?identifier=MRN-KEEP1").await.json()).len(), 1);

    gateway.stop();
    // The purge is in the audit trail, naming the patient's reference (no content).
    let trail = std::fs::read(gateway.data.path().join("audit/entries.log")).unwrap();
    let trail = String::from_utf8_lossy(&trail);
    assert!(trail.lines().any(|line| line.contains("Patient/erase-me") && line.contains("\"D\"")), "no purge in the audit trail");

    let (clean, report) = gateway.verify();
    assert!(clean, "{report}");
    assert!(report.contains("erased versions:    4 (by 1 erasure(s))"), "{report}");
    for file in files(gateway.data.path()) {
        let bytes = std::fs::read(&file).unwrap();
        for text in ERASED_DATA {
            assert!(!bytes.windows(text.len()).any(|window| window == text.as_bytes()), "{} holds {text}", file.display());
        }
    }
    gateway.restart().await;
    assert_erased(&crate::consent::emr(&gateway)).await;
}

/// The backup rule (docs/ERASURE.md): the key store is kept apart from the data. A copy of the
/// data taken before the purge, restored after it beside the current key store, stays unreadable;
/// only with the old key store (the control) does it read again.
#[tokio::test]
async fn data_restored_from_before_a_purge_stays_unreadable_with_the_current_keys() {
    let mut gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    gateway.stop();
    let before = TempDir::new("before-purge");
    copy_tree(gateway.data.path(), before.path(), None);
    gateway.restart().await;
    assert_eq!(purger(&gateway).post("Patient/erase-me/$purge", &json!({})).await.status, 200);
    gateway.stop();

    // Everything but keys/ back as it was before the purge.
    replace_tree(gateway.data.path(), before.path(), Some("keys"));
    gateway.restart().await;
    let emr = crate::consent::emr(&gateway);
    for path in ["Patient/erase-me", "Observation/erase-hb", "Condition/erase-cond"] {
        let answer = emr.get(path).await;
        assert!(answer.status == 500 || answer.status == 410, "{path} is readable again: {} {}", answer.status, answer.text);
        assert!(!answer.text.contains("Quixotefield"), "{}", answer.text);
    }
    assert_eq!(emr.read("Observation/keep-hb").await["valueQuantity"]["value"], json!(13.1), "other patients read as before");
    gateway.stop();

    // The control: with the key store of before the purge too, the copy reads again.
    replace_tree(gateway.data.path(), before.path(), None);
    gateway.restart().await;
    let emr = crate::consent::emr(&gateway);
    assert_eq!(emr.read("Patient/erase-me").await["name"][0]["family"], "Quixotefield");
}

/// A crash after the erasure was recorded but before its key, index entries and blocks were
/// gone (simulated by putting those back as they were): the next start finishes it.
#[tokio::test]
async fn an_erasure_cut_short_by_a_crash_is_finished_at_the_next_start() {
    let mut gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    gateway.stop();
    let before = TempDir::new("before-purge-crash");
    copy_tree(gateway.data.path(), before.path(), None);
    gateway.restart().await;
    assert_eq!(purger(&gateway).post("Patient/erase-me/$purge", &json!({})).await.status, 200);
    gateway.kill9();

    // The catalog and the ledger hold the erasure; the key, the index and the pack do not know.
    for part in ["blocks", "index", "keys"] {
        let target = gateway.data.path().join(part);
        std::fs::remove_dir_all(&target).unwrap();
        copy_tree(&before.path().join(part), &target, None);
    }
    let (clean, report) = gateway.verify();
    assert!(!clean && report.contains("erased, but its sealed blob is still stored"), "{report}");

    gateway.restart().await;
    let emr = crate::consent::emr(&gateway);
    assert_erased(&emr).await;
    gateway.stop();
    let (clean, report) = gateway.verify();
    assert!(clean, "{report}");
    let pack = std::fs::read(gateway.data.path().join("blocks/blocks.pack")).unwrap();
    let pack_before = std::fs::read(before.path().join("blocks/blocks.pack")).unwrap();
    assert_eq!(pack.len(), pack_before.len(), "records keep their place");
    assert_ne!(pack, pack_before, "the erased blocks were overwritten");
}
