//! The command line: key rotation, compaction, the data directory lock, the TOML configuration file.

use std::process::Command;

use serde_json::json;

use crate::harness::{Gateway, binary, expect_outcome, json_body};

fn kek_files(gateway: &Gateway) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(gateway.data.path().join("keys"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("kek-"))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn keys_rotate_rewraps_without_touching_blobs() {
    let mut gateway = Gateway::start().await;
    let created = json_body(gateway.post("Patient", &json!({"resourceType": "Patient", "gender": "female"})).await).await;
    let id = created["id"].as_str().unwrap().to_string();
    let organization = json_body(gateway.post("Organization", &json!({"resourceType": "Organization", "name": "North"})).await).await;

    // Refused while the gateway holds the data directory.
    let refused = Command::new(binary()).args(["keys", "rotate", "--data-dir"]).arg(gateway.data.path()).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use"), "{}", String::from_utf8_lossy(&refused.stderr));

    gateway.stop();
    let pack = gateway.data.path().join("blocks/blocks.pack");
    let blocks_before = std::fs::read(&pack).unwrap();
    let ledger_before = std::fs::read(gateway.data.path().join("ledger/entries.log")).unwrap();
    let patient_keys_before = std::fs::read(gateway.data.path().join("keys/patients.keys")).unwrap();
    assert_eq!(kek_files(&gateway), ["kek-00000001.key"]);
    let rotated = Command::new(binary()).args(["keys", "rotate", "--data-dir"]).arg(gateway.data.path()).output().unwrap();
    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    let said = String::from_utf8_lossy(&rotated.stdout);
    assert!(said.contains("1 patient keys and 1 other data keys re-wrapped"), "{said}");
    assert_ne!(
        std::fs::read(gateway.data.path().join("keys/patients.keys")).unwrap(),
        patient_keys_before,
        "the patient key is re-wrapped"
    );
    assert_eq!(kek_files(&gateway), ["kek-00000002.key"], "the old KEK is retired");
    assert_eq!(std::fs::read(&pack).unwrap(), blocks_before, "no blob changed");
    assert_eq!(std::fs::read(gateway.data.path().join("ledger/entries.log")).unwrap(), ledger_before);

    let (clean, report) = gateway.verify();
    assert!(clean, "{report}");
    gateway.restart().await;
    assert_eq!(json_body(gateway.get(&format!("Patient/{id}")).await).await, created);
    let organization_id = organization["id"].as_str().unwrap();
    assert_eq!(json_body(gateway.get(&format!("Organization/{organization_id}")).await).await, organization);
}

#[tokio::test]
async fn key_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let gateway = Gateway::start().await;
    for entry in std::fs::read_dir(gateway.data.path().join("keys")).unwrap() {
        let mode = entry.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[tokio::test]
async fn a_toml_file_configures_the_gateway() {
    let config_directory = crate::harness::TempDir::new("config");
    let config = config_directory.path().join("gateway.toml");
    std::fs::write(&config, "max_body_bytes = 300\nlog_format = \"json\"\n[ledger]\ncheckpoint_every_entries = 1\n").unwrap();
    let config_argument = config.to_str().unwrap().to_string();
    let gateway = Gateway::start_with(&["--config", &config_argument]).await;
    let big = json!({ "resourceType": "Basic", "code": { "text": "x".repeat(400) } });
    assert!(expect_outcome(gateway.post("Basic", &big).await, 413).await.contains("300 bytes"));
    assert_eq!(gateway.post("Basic", &json!({ "resourceType": "Basic", "code": { "text": "ok" } })).await.status(), 201);
    // The checkpoint is signed right after the group commit that crossed the threshold.
    let mut checkpoint = String::new();
    for _ in 0..100 {
        checkpoint = gateway.http.get(format!("{}/ledger/checkpoint", gateway.root())).send().await.unwrap().text().await.unwrap();
        if checkpoint.lines().nth(1) == Some("1") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(checkpoint.lines().nth(1), Some("1"), "checkpoint after every entry:\n{checkpoint}");

    std::fs::write(&config, "listen = \"127.0.0.1:1\"\nno_such_key = 1\n").unwrap();
    let output = Command::new(binary()).args(["serve", "--config"]).arg(&config).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no_such_key"));
}

#[tokio::test]
async fn reindex_rebuilds_the_search_index() {
    let mut gateway = Gateway::start().await;
    gateway.post("Patient", &json!({"resourceType": "Patient", "gender": "female", "name": [{"family": "Reindex"}]})).await;
    gateway.stop();
    let output = Command::new(binary()).args(["reindex", "--data-dir"]).arg(gateway.data.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "reindexed 1 resources");
    gateway.restart().await;
    assert_eq!(json_body(gateway.get("Patient?family=reindex").await).await["total"], 1);
}

#[tokio::test]
async fn compact_shrinks_the_derived_stores_of_a_stopped_gateway_and_everything_reads_back() {
    let mut gateway = Gateway::start().await;
    let mut ids = Vec::new();
    for index in 0..40 {
        let created = gateway.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": format!("Compact{index}")}]})).await;
        ids.push(json_body(created).await["id"].as_str().unwrap().to_string());
    }
    let data = gateway.data.path().to_path_buf();
    let compact = || Command::new(binary()).args(["compact", "--data-dir"]).arg(&data).output().unwrap();
    let refused = compact();
    assert!(!refused.status.success(), "a running gateway's directory is not compacted");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("in use"), "{}", String::from_utf8_lossy(&refused.stderr));
    gateway.stop();
    let output = compact();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    for store in ["catalog.redb", "blocks/index.redb", "patients.index.redb"] {
        assert!(stdout.contains(store), "{store} in {stdout}");
    }
    gateway.restart().await;
    for id in &ids {
        assert_eq!(gateway.get(&format!("Patient/{id}")).await.status(), 200);
    }
    let updated = gateway
        .put(&format!("Patient/{}", ids[0]), &json!({"resourceType": "Patient", "id": ids[0], "name": [{"family": "Compacted"}]}))
        .await;
    assert_eq!(updated.status(), 200);
    assert_eq!(json_body(gateway.get(&format!("Patient/{}/_history", ids[0])).await).await["entry"].as_array().unwrap().len(), 2);
    gateway.stop();
    let (clean, report) = gateway.verify();
    assert!(clean, "{report}");
}
