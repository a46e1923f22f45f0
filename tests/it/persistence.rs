//! Durability and integrity: restarts, kill -9 under load, tampering caught by read and verify.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{FHIR_JSON, Gateway, entries, expect_outcome, json_body};

fn observation(value: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","status":"final","code":{{"text":"heart rate"}},"valueQuantity":{{"value":{value},"unit":"/min"}}}}"#
    )
}

#[tokio::test]
async fn everything_reads_back_after_a_restart_and_verify_passes() {
    let mut gateway = Gateway::start_with(&["--checkpoint-interval-ms", "50"]).await;
    let mut stored = HashMap::new();
    for index in 0..20 {
        let response = gateway
            .http
            .post(gateway.url("Observation"))
            .header("content-type", FHIR_JSON)
            .body(observation(&format!("{index}.50")))
            .send()
            .await
            .unwrap();
        let body = json_body(response).await;
        stored.insert(body["id"].as_str().unwrap().to_string(), body);
    }
    let (first_id, first) = stored.iter().next().map(|(id, body)| (id.clone(), body.clone())).unwrap();
    let updated = json_body(gateway.put(&format!("Observation/{first_id}"), &first).await).await;
    gateway.restart().await;

    for (id, body) in &stored {
        let read = json_body(gateway.get(&format!("Observation/{id}")).await).await;
        if *id == first_id {
            assert_eq!(read, updated);
            assert_eq!(json_body(gateway.get(&format!("Observation/{id}/_history/1")).await).await, *body);
        } else {
            assert_eq!(read, *body);
        }
    }
    let checkpoint = gateway.http.get(format!("{}/ledger/checkpoint", gateway.root())).send().await.unwrap().text().await.unwrap();
    let size: u64 = checkpoint.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(size, 21, "the shutdown checkpoint covers every entry:\n{checkpoint}");
    gateway.stop();
    let (clean, report) = gateway.verify();
    assert!(clean, "{report}");
    assert!(report.contains("ledger entries:     21"), "{report}");
    assert!(report.contains("sealed blobs:       21 checked"), "{report}");
}

#[tokio::test]
async fn kill_9_under_concurrent_writes_loses_no_acknowledged_write() {
    let mut gateway = Gateway::start().await;
    let acknowledged: Arc<std::sync::Mutex<Vec<(String, Value)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..16 {
        let http = gateway.http.clone();
        let url = gateway.url("Observation");
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            for sequence in 0..100_000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let body = observation(&format!("{writer}.{sequence}0"));
                let Ok(response) = http.post(&url).header("content-type", FHIR_JSON).body(body).send().await else {
                    break;
                };
                if response.status() != 201 {
                    break;
                }
                let Ok(text) = response.text().await else {
                    break;
                };
                let body: Value = serde_json::from_str(&text).unwrap();
                acknowledged.lock().unwrap().push((body["id"].as_str().unwrap().to_string(), body));
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gateway.kill9();
    stop.store(true, Ordering::SeqCst);
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    assert!(acknowledged.len() > 50, "the load ran: {} writes acknowledged", acknowledged.len());

    gateway.start_again_after_kill().await;
    for (id, body) in &acknowledged {
        let response = gateway.get(&format!("Observation/{id}")).await;
        assert_eq!(response.status(), 200, "acknowledged {id} lost");
        assert_eq!(json_body(response).await, *body);
    }
    // Exactly once: the type history holds every acknowledged id once (and nothing half-written).
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut url = gateway.url("Observation/_history?_count=500");
    for _ in 0..10_000 {
        let page = json_body(gateway.http.get(&url).send().await.unwrap()).await;
        for entry in entries(&page) {
            let resource = &entry["resource"];
            assert_eq!(resource["resourceType"], "Observation");
            *counts.entry(resource["id"].as_str().unwrap().to_string()).or_default() += 1;
        }
        match page["link"].as_array().unwrap().iter().find(|link| link["relation"] == "next") {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    for (id, _) in &acknowledged {
        assert_eq!(counts.get(id), Some(&1), "{id}");
    }
    // Search too: the index (derived state) caught up at start, so a crash between a write and
    // its index update lost no acknowledged resource from search.
    let total = json_body(gateway.get("Observation?_summary=count").await).await["total"].as_u64().unwrap();
    assert_eq!(total as usize, counts.len());
    for (id, _) in acknowledged.iter().step_by((acknowledged.len() / 20).max(1)) {
        let found = json_body(gateway.get(&format!("Observation?_id={id}")).await).await;
        assert_eq!(found["total"], 1, "{id} not found by search after the crash");
    }
    gateway.stop();
    let (clean, report) = gateway.verify();
    assert!(clean, "{report}");
}

fn flip_byte(path: &std::path::Path, offset: u64) {
    let mut file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(offset)).unwrap();
    file.write_all(&[byte[0] ^ 0x01]).unwrap();
    file.sync_all().unwrap();
}

#[tokio::test]
async fn a_flipped_blob_byte_is_caught_by_read_and_verify() {
    let mut gateway = Gateway::start().await;
    let first = json_body(gateway.post("Patient", &json!({"resourceType": "Patient", "gender": "other"})).await).await;
    let second = json_body(gateway.post("Patient", &json!({"resourceType": "Patient", "gender": "male"})).await).await;
    // While running. Offset 60 lies inside the first block's data (header 6 bytes + 36-byte CID).
    flip_byte(&gateway.data.path().join("blocks/blocks.pack"), 60);
    let text = expect_outcome(gateway.get(&format!("Patient/{}", first["id"].as_str().unwrap())).await, 500).await;
    assert!(text.contains("integrity"), "{text}");
    assert!(!text.contains("other"), "no content leaks in the error");
    assert_eq!(gateway.get(&format!("Patient/{}", second["id"].as_str().unwrap())).await.status(), 200);
    gateway.stop();
    let (clean, report) = gateway.verify();
    assert!(!clean, "{report}");
    assert!(report.contains("does not match its CID"), "{report}");
    // The pack index covers the record, so a start does not read it: reads keep refusing it.
    gateway.try_start_again().await.expect("the start reads only the pack past its index");
    expect_outcome(gateway.get(&format!("Patient/{}", first["id"].as_str().unwrap())).await, 500).await;
    gateway.stop();
    // A start that must scan the pack (no index) finds that the record is not a crash tail, and
    // refuses, naming it.
    std::fs::remove_file(gateway.data.path().join("blocks/index.redb")).unwrap();
    let stderr = gateway.try_start_again().await.expect_err("refused");
    assert!(stderr.contains("blocks.pack is damaged at offset 0"), "{stderr}");
}

#[tokio::test]
async fn an_edited_ledger_is_caught_by_read_and_verify() {
    let mut gateway = Gateway::start().await;
    let created = json_body(gateway.post("Patient", &json!({"resourceType": "Patient", "gender": "female"})).await).await;
    let id = created["id"].as_str().unwrap().to_string();
    gateway.post("Patient", &json!({"resourceType": "Patient", "gender": "male"})).await;
    let entries = gateway.data.path().join("ledger/entries.log");
    // While running: edit the first entry in place ("versionId":1 -> 0).
    let bytes = std::fs::read(&entries).unwrap();
    let position = bytes.windows(13).position(|window| window == b"\"versionId\":1").unwrap() as u64 + 12;
    flip_byte(&entries, position);
    let text = expect_outcome(gateway.get(&format!("Patient/{id}")).await, 500).await;
    assert!(text.contains("integrity"), "{text}");
    gateway.stop();
    let (clean, report) = gateway.verify();
    assert!(!clean, "{report}");
    assert!(report.contains("ledger/entries.log: damaged record at offset 0"), "{report}");
    // A start does not read the entries a checkpoint covers again (issue 18): it starts, the
    // edited entry's version stays unserved, the other is served, nothing was cut.
    let damaged = std::fs::read(&entries).unwrap();
    gateway.try_start_again().await.expect("the start takes the checkpointed entries from the index");
    let text = expect_outcome(gateway.get(&format!("Patient/{id}")).await, 500).await;
    assert!(text.contains("integrity"), "{text}");
    gateway.stop();
    assert_eq!(std::fs::read(&entries).unwrap(), damaged, "nothing was cut");
}

/// An editor who also fixes the journal checksum is still caught: the entry's signature and the
/// signed checkpoint's Merkle root no longer match.
#[tokio::test]
async fn a_consistently_forged_ledger_entry_is_caught_by_verify() {
    use sha2::{Digest, Sha256};
    let mut gateway = Gateway::start().await;
    gateway.post("Patient", &json!({"resourceType": "Patient", "gender": "female"})).await;
    gateway.stop();
    let entries = gateway.data.path().join("ledger/entries.log");
    let mut bytes = std::fs::read(&entries).unwrap();
    let length = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
    let record = &mut bytes[4..4 + length];
    // Change the first hex digit of the (pseudonymous) principal.
    let marker = b"\"principal\":\"";
    let position = record.windows(marker.len()).position(|window| window == marker).unwrap() + marker.len();
    record[position] = if record[position] == b'0' { b'1' } else { b'0' };
    let checksum = Sha256::digest(&bytes[4..4 + length]);
    bytes[4 + length..4 + length + 8].copy_from_slice(&checksum[..8]);
    std::fs::write(&entries, &bytes).unwrap();
    let (clean, report) = gateway.verify();
    assert!(!clean, "{report}");
    assert!(report.contains("ledger entry 0: ledger entry signature does not verify"), "{report}");
    assert!(report.contains("root hash does not match"), "{report}");
}

#[tokio::test]
async fn sigterm_right_after_a_bundle_load_stops_promptly_and_search_catches_up() {
    let mut gateway = Gateway::start().await;
    const BUNDLES: usize = 4;
    const ENTRIES: usize = 500;
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "batch",
        "entry": (0..ENTRIES).map(|index| json!({
            "resource": serde_json::from_str::<Value>(&observation(&format!("{index}.5"))).unwrap(),
            "request": {"method": "POST", "url": "Observation"}
        })).collect::<Vec<_>>()
    });
    let loads = (0..BUNDLES).map(|_| {
        let (http, url, body) = (gateway.http.clone(), gateway.base(), bundle.to_string());
        tokio::spawn(async move {
            let response = http.post(url).header("content-type", FHIR_JSON).body(body).send().await.unwrap();
            assert_eq!(response.status(), 200);
        })
    });
    for load in loads.collect::<Vec<_>>() {
        load.await.unwrap();
    }
    // The search index may still be behind the 2,000 acknowledged writes: shutdown must not
    // wait for it (the next start catches up from the last index commit).
    let took = gateway.stop();
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
    gateway.restart().await;
    let count = json_body(gateway.get("Observation?_summary=count").await).await;
    assert_eq!(count["total"], BUNDLES * ENTRIES, "{count}");
    let high = json_body(gateway.get("Observation?value-quantity=gt499&_summary=count").await).await;
    assert_eq!(high["total"], BUNDLES, "one 499.5 per Bundle: {high}");
}

#[tokio::test]
async fn search_after_kill_9_finds_updated_and_deleted_resources_as_they_are_now() {
    let mut gateway = Gateway::start().await;
    let patient = |family: &str| json!({"resourceType": "Patient", "name": [{"family": family}]});
    let mut ids = Vec::new();
    for index in 0..6 {
        let created = json_body(gateway.post("Patient", &patient(&format!("Before{index}"))).await).await;
        ids.push(created["id"].as_str().unwrap().to_string());
    }
    // A search publishes the index: the first versions are in it before they change.
    assert_eq!(json_body(gateway.get("Patient?family=before&_summary=count").await).await["total"], 6);
    for id in &ids[..3] {
        assert_eq!(
            gateway
                .put(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id, "name": [{"family": "After"}]}))
                .await
                .status(),
            200
        );
    }
    for id in &ids[3..5] {
        assert_eq!(gateway.http.delete(gateway.url(&format!("Patient/{id}"))).send().await.unwrap().status(), 204);
    }
    // Killed before the indexer publishes (it does so every second when nobody searches): the
    // next start re-indexes these resources and must drop the documents of their old versions.
    gateway.start_again_after_kill().await;
    assert_eq!(json_body(gateway.get("Patient?family=before&_summary=count").await).await["total"], 1);
    assert_eq!(json_body(gateway.get("Patient?family=after&_summary=count").await).await["total"], 3);
    assert_eq!(json_body(gateway.get("Patient?_summary=count").await).await["total"], 4);
    let found = json_body(gateway.get("Patient?family=after").await).await;
    assert_eq!(entries(&found).len(), 3, "each resource once: {found}");
}

/// A data directory written before the ledger kept its index of offsets and hashes (or one that
/// lost it) opens: the index is rebuilt from the log once, and everything reads back.
#[tokio::test]
async fn a_ledger_without_its_index_is_indexed_again_at_the_start() {
    let mut gateway = Gateway::start().await;
    let mut written = Vec::new();
    for family in ["Index", "Rebuilt", "Again"] {
        written.push(json_body(gateway.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": family}]})).await).await);
    }
    gateway.stop();
    for log in ["ledger", "audit"] {
        let directory = gateway.data.path().join(log);
        std::fs::remove_file(directory.join("entries.idx")).unwrap();
        std::fs::remove_dir_all(directory.join("hashes")).unwrap();
    }
    gateway.restart().await;
    for body in &written {
        assert_eq!(json_body(gateway.get(&format!("Patient/{}", body["id"].as_str().unwrap())).await).await, *body);
    }
    gateway.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "After"}]})).await;
    gateway.stop();
    assert!(gateway.data.path().join("ledger/entries.idx").exists());
    let (clean, report) = gateway.verify();
    assert!(clean, "{report}");
}

/// A data directory of the previous format has no catalog store: the first start fills it from
/// the catalog journal, and everything the catalog answers (reads, versions, history, deletions,
/// identifier conditions, search) is as before.
#[tokio::test]
async fn a_data_directory_without_its_catalog_store_is_filled_from_the_journal_at_the_start() {
    let mut gateway = Gateway::start_with(&["--cache-mb", "1"]).await;
    let patient = json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "M-1"}], "name": [{"family": "Kept"}]});
    let created = json_body(gateway.post("Patient", &patient).await).await;
    let id = created["id"].as_str().unwrap().to_string();
    let mut changed = created.clone();
    changed["name"][0]["family"] = json!("Changed");
    assert_eq!(gateway.put(&format!("Patient/{id}"), &changed).await.status(), 200);
    let gone = json_body(gateway.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "Gone"}]})).await).await;
    let gone_id = gone["id"].as_str().unwrap();
    let deleted = gateway.http.delete(gateway.url(&format!("Patient/{gone_id}"))).send().await.unwrap();
    assert!(deleted.status().is_success());
    gateway.stop();
    std::fs::remove_file(gateway.data.path().join("records/catalog.redb")).unwrap();

    gateway.restart().await;
    let current = json_body(gateway.get(&format!("Patient/{id}")).await).await;
    assert_eq!(current["name"][0]["family"], "Changed");
    assert_eq!(current["meta"]["versionId"], "2");
    assert_eq!(json_body(gateway.get(&format!("Patient/{id}/_history/1")).await).await, created);
    assert_eq!(json_body(gateway.get(&format!("Patient/{id}/_history")).await).await["entry"].as_array().unwrap().len(), 2);
    assert_eq!(gateway.get(&format!("Patient/{gone_id}")).await.status(), 410);
    let type_history = json_body(gateway.get("Patient/_history").await).await;
    assert_eq!(type_history["entry"].as_array().unwrap().len(), 4, "{type_history}");
    let conditional = gateway
        .http
        .post(gateway.url("Patient"))
        .header("content-type", "application/fhir+json")
        .header("If-None-Exist", "identifier=urn:mrn|M-1")
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(conditional.status(), 200, "the identifier condition finds the existing Patient");
    assert_eq!(json_body(gateway.get("Patient?family=Changed").await).await["total"], 1);
    gateway.stop();
    assert!(gateway.data.path().join("records/catalog.redb").exists());
    let (clean, report) = gateway.verify();
    assert!(clean, "{report}");
}
