//! Search through HTTP on the Synthea data (loaded with `import`, so the index is built by the
//! start-up catch-up) and on the official examples. Every expected result is computed here from
//! the input files, independently of the gateway's index and matcher.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::harness::{self, FHIR_JSON, Gateway, binary, corpora, entries, expect_outcome, json_body};

/// Lower case without the accents Synthea names use (independent of the gateway's folding).
fn fold(text: &str) -> String {
    text.chars()
        .map(|character| match character {
            'á' | 'à' | 'â' | 'ä' | 'ã' | 'Á' => 'a',
            'é' | 'è' | 'ê' | 'ë' | 'É' => 'e',
            'í' | 'ì' | 'î' | 'ï' | 'Í' => 'i',
            'ó' | 'ò' | 'ô' | 'ö' | 'õ' | 'Ó' => 'o',
            'ú' | 'ù' | 'û' | 'ü' | 'Ú' => 'u',
            'ñ' | 'Ñ' => 'n',
            'ç' | 'Ç' => 'c',
            other => other.to_ascii_lowercase(),
        })
        .collect()
}

struct Corpus {
    patients: Vec<Value>,
    /// Observations by the Synthea id of their patient.
    observations: BTreeMap<String, Vec<Value>>,
}

fn synthea_corpus() -> Corpus {
    let mut patients = Vec::new();
    let mut observations: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for entry in std::fs::read_dir(corpora().join("synthea/r4-transaction-bundles")).unwrap() {
        let path = entry.unwrap().path();
        let bundle: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut patient = None;
        for entry in entries(&bundle) {
            if entry["resource"]["resourceType"] == "Patient" {
                patient = Some((entry["fullUrl"].as_str().unwrap().to_string(), synthea_id(&entry["resource"])));
                patients.push(entry["resource"].clone());
            }
        }
        for entry in entries(&bundle) {
            if entry["resource"]["resourceType"] == "Observation" {
                let (url, id) = patient.as_ref().expect("a patient bundle");
                assert_eq!(entry["resource"]["subject"]["reference"].as_str(), Some(url.as_str()));
                observations.entry(id.clone()).or_default().push(entry["resource"].clone());
            }
        }
    }
    Corpus { patients, observations }
}

async fn all_pages(gateway: &Gateway, first: String) -> (Vec<Value>, Option<u64>) {
    let mut url = first;
    let mut entries = Vec::new();
    let mut total = None;
    for _ in 0..1000 {
        let page = json_body(gateway.http.get(&url).send().await.unwrap()).await;
        assert_eq!(page["type"], "searchset", "{page}");
        total = page["total"].as_u64();
        entries.extend(harness::entries(&page).iter().filter(|entry| entry["search"]["mode"] == "match").cloned());
        match page["link"].as_array().unwrap().iter().find(|link| link["relation"] == "next") {
            Some(next) => url = next["url"].as_str().unwrap().to_string(),
            None => break,
        }
    }
    (entries, total)
}

fn synthea_id(patient: &Value) -> String {
    patient["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|identifier| identifier["system"] == "https://github.com/synthetichealth/synthea")
        .and_then(|identifier| identifier["value"].as_str())
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn search_semantics_on_synthea_data() {
    let corpus = synthea_corpus();
    let mut gateway = Gateway::start().await;
    gateway.stop();
    let output = std::process::Command::new(binary())
        .arg("import")
        .arg("--data-dir")
        .arg(gateway.data.path())
        .arg(corpora().join("synthea/r4-transaction-bundles"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    // `import` already indexed; drop the index to prove the start-up rebuild works too.
    std::fs::remove_dir_all(gateway.data.path().join("index")).unwrap();
    gateway.restart().await;

    // gender (token, no system).
    let expected = corpus.patients.iter().filter(|patient| patient["gender"] == "female").count();
    let (entries, total) = all_pages(&gateway, gateway.url("Patient?gender=female&_count=7")).await;
    assert_eq!(entries.len(), expected);
    assert_eq!(total, Some(expected as u64));
    let ids: BTreeSet<_> = entries.iter().map(|entry| entry["resource"]["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), expected, "paging returned no duplicates");

    // family: default prefix match, case and accent insensitive; :exact; :contains.
    let sample = &corpus.patients[0];
    let family = sample["name"][0]["family"].as_str().unwrap();
    let prefix = fold(&family[..3]).to_uppercase();
    let expected: BTreeSet<String> = corpus
        .patients
        .iter()
        .filter(|patient| {
            patient["name"].as_array().unwrap().iter().any(|name| fold(name["family"].as_str().unwrap_or("")).starts_with(&fold(&prefix)))
        })
        .map(synthea_id)
        .collect();
    let (entries, _) = all_pages(&gateway, gateway.url(&format!("Patient?family={prefix}"))).await;
    let found: BTreeSet<String> = entries.iter().map(|entry| synthea_id(&entry["resource"])).collect();
    assert_eq!(found, expected, "family={prefix}");
    let (entries, _) = all_pages(&gateway, gateway.url(&format!("Patient?family:exact={}", fold(family)))).await;
    assert!(entries.is_empty() || fold(family) == family, ":exact is case-sensitive");
    let (entries, _) = all_pages(&gateway, gateway.url(&format!("Patient?family:exact={family}"))).await;
    assert!(entries.iter().any(|entry| synthea_id(&entry["resource"]) == synthea_id(sample)));
    let middle = &fold(family)[1..4];
    let expected_contains = corpus
        .patients
        .iter()
        .filter(|patient| {
            patient["name"].as_array().unwrap().iter().any(|name| fold(name["family"].as_str().unwrap_or("")).contains(middle))
        })
        .count();
    let (entries, _) = all_pages(&gateway, gateway.url(&format!("Patient?family:contains={middle}"))).await;
    assert_eq!(entries.len(), expected_contains, "family:contains={middle}");

    // Parameters the index serves with another parameter's terms (phonetic = name's paths;
    // given and address-city are parts of name and address) answer exactly like their own.
    let parts = |patient: &Value, element: &str, part: &str| -> Vec<String> {
        let elements = patient[element].as_array().cloned().unwrap_or_default();
        elements
            .iter()
            .flat_map(|element| match &element[part] {
                Value::Array(items) => items.iter().filter_map(Value::as_str).map(str::to_string).collect::<Vec<_>>(),
                Value::String(text) => vec![text.clone()],
                _ => Vec::new(),
            })
            .collect()
    };
    let given = parts(sample, "name", "given").remove(0);
    let city = parts(sample, "address", "city").remove(0);
    let select = |wanted: &dyn Fn(&Value) -> bool| -> BTreeSet<String> {
        corpus.patients.iter().filter(|patient| wanted(patient)).map(synthea_id).collect()
    };
    let (name_start, given_middle, city_middle) = (fold(&family[..3]), fold(&given)[1..4].to_string(), fold(&city)[1..4].to_string());
    let checks = [
        (
            format!("phonetic={}", &family[..3]),
            select(&|patient| {
                ["family", "given"].iter().any(|part| parts(patient, "name", part).iter().any(|name| fold(name).starts_with(&name_start)))
            }),
        ),
        (
            format!("given:contains={given_middle}"),
            select(&|patient| parts(patient, "name", "given").iter().any(|name| fold(name).contains(&given_middle))),
        ),
        (
            format!("address-city:contains={city_middle}"),
            select(&|patient| parts(patient, "address", "city").iter().any(|name| fold(name).contains(&city_middle))),
        ),
        (format!("address-city:exact={city}"), select(&|patient| parts(patient, "address", "city").contains(&city))),
    ];
    for (query, expected) in checks {
        assert!(!expected.is_empty(), "{query} selects the sample at least");
        let (entries, _) = all_pages(&gateway, gateway.url(&format!("Patient?{}", query.replace(' ', "%20")))).await;
        let found: BTreeSet<String> = entries.iter().map(|entry| synthea_id(&entry["resource"])).collect();
        assert_eq!(found, expected, "{query}");
    }

    // birthdate with prefixes and partial dates (strings compare like dates for full dates).
    for (query, keep) in [
        ("ge1970-01-01", Box::new(|date: &str| date >= "1970-01-01") as Box<dyn Fn(&str) -> bool>),
        ("lt1960", Box::new(|date: &str| date < "1960")),
        ("eq1980", Box::new(|date: &str| date.starts_with("1980"))),
        ("ne1980", Box::new(|date: &str| !date.starts_with("1980"))),
        ("sa2000-12-31", Box::new(|date: &str| date > "2000-12-31")),
        ("eb1950-01", Box::new(|date: &str| date < "1950-01")),
    ] {
        let expected = corpus.patients.iter().filter(|patient| keep(patient["birthDate"].as_str().unwrap())).count();
        let (entries, _) = all_pages(&gateway, gateway.url(&format!("Patient?birthdate={query}"))).await;
        assert_eq!(entries.len(), expected, "birthdate={query}");
    }

    // _sort by birthdate, both directions.
    let mut dates: Vec<&str> = corpus.patients.iter().map(|patient| patient["birthDate"].as_str().unwrap()).collect();
    dates.sort();
    let (entries, _) = all_pages(&gateway, gateway.url("Patient?_sort=birthdate")).await;
    let sorted: Vec<&str> = entries.iter().map(|entry| entry["resource"]["birthDate"].as_str().unwrap()).collect();
    assert_eq!(sorted, dates);
    let (entries, _) = all_pages(&gateway, gateway.url("Patient?_sort=-birthdate")).await;
    let sorted: Vec<&str> = entries.iter().map(|entry| entry["resource"]["birthDate"].as_str().unwrap()).collect();
    dates.reverse();
    assert_eq!(sorted, dates);

    // identifier system|value finds exactly that patient; the gateway id maps to Synthea's.
    let wanted = synthea_id(sample);
    let (entries, _) =
        all_pages(&gateway, gateway.url(&format!("Patient?identifier=https://github.com/synthetichealth/synthea|{wanted}"))).await;
    assert_eq!(entries.len(), 1);
    let patient_id = entries[0]["resource"]["id"].as_str().unwrap().to_string();

    // Observation by patient and code, by date, by value-quantity; compartment search agrees.
    let observations = &corpus.observations[&wanted];
    let code = observations[0]["code"]["coding"][0]["code"].as_str().unwrap();
    let expected = observations.iter().filter(|observation| observation["code"]["coding"][0]["code"] == code).count();
    let (entries, total) =
        all_pages(&gateway, gateway.url(&format!("Observation?patient={patient_id}&code=http://loinc.org|{code}"))).await;
    assert_eq!((entries.len(), total), (expected, Some(expected as u64)));
    let (entries, _) = all_pages(&gateway, gateway.url(&format!("Patient/{patient_id}/Observation?code={code}"))).await;
    assert_eq!(entries.len(), expected, "compartment search");
    let expected_all = observations.len();
    let (entries, _) = all_pages(&gateway, gateway.url(&format!("Observation?subject=Patient/{patient_id}&_count=13"))).await;
    assert_eq!(entries.len(), expected_all);
    let expected_recent = observations.iter().filter(|observation| observation["effectiveDateTime"].as_str().unwrap() >= "2015").count();
    let (entries, _) = all_pages(&gateway, gateway.url(&format!("Observation?patient={patient_id}&date=ge2015-01-01"))).await;
    assert_eq!(entries.len(), expected_recent);
    if let Some(with_value) = observations.iter().find(|observation| observation["valueQuantity"]["value"].is_number()) {
        let value: f64 = with_value["valueQuantity"]["value"].to_string().parse().unwrap();
        let code = with_value["code"]["coding"][0]["code"].as_str().unwrap();
        let expected = observations
            .iter()
            .filter(|observation| observation["code"]["coding"][0]["code"] == code)
            .filter(|observation| observation["valueQuantity"]["value"].to_string().parse::<f64>().is_ok_and(|other| other > value))
            .count();
        let (entries, _) =
            all_pages(&gateway, gateway.url(&format!("Observation?patient={patient_id}&code={code}&value-quantity=gt{value}"))).await;
        assert_eq!(entries.len(), expected, "value-quantity=gt{value}");
    }
    // code:text: a prefix of a coding's display or of the CodeableConcept's text.
    let display = observations[0]["code"]["coding"][0]["display"].as_str().unwrap();
    let wanted = fold(&display[..display.len().min(6)]);
    let expected = observations
        .iter()
        .filter(|observation| {
            let code = &observation["code"];
            let mut texts: Vec<&str> = code["coding"].as_array().unwrap().iter().filter_map(|coding| coding["display"].as_str()).collect();
            texts.extend(code["text"].as_str());
            texts.iter().any(|text| fold(text).starts_with(&wanted))
        })
        .count();
    let (entries, _) =
        all_pages(&gateway, gateway.url(&format!("Observation?patient={patient_id}&code:text={}", wanted.replace(' ', "%20")))).await;
    assert_eq!(entries.len(), expected, "code:text={wanted}");

    // _summary=count, _elements, _revinclude.
    let count = json_body(gateway.get("Patient?_summary=count").await).await;
    assert_eq!(count["total"].as_u64(), Some(corpus.patients.len() as u64));
    assert!(harness::entries(&count).is_empty());
    let elements = json_body(gateway.get(&format!("Patient?_id={patient_id}&_elements=gender")).await).await;
    let resource = &elements["entry"][0]["resource"];
    assert!(resource.get("gender").is_some() && resource.get("name").is_none(), "{resource}");
    let with_observations =
        json_body(gateway.get(&format!("Patient?_id={patient_id}&_revinclude=Observation:subject&_count=1")).await).await;
    let included = harness::entries(&with_observations).iter().filter(|entry| entry["search"]["mode"] == "include").count();
    assert_eq!(included, expected_all);

    // $everything holds the patient and every Observation of the patient.
    let (entries, _) =
        all_pages(&gateway, gateway.url(&format!("Patient/{patient_id}/$everything?_type=Patient,Observation&_count=40"))).await;
    assert_eq!(entries.len(), expected_all + 1);
}

#[tokio::test]
async fn search_sees_writes_at_once_and_refuses_what_it_cannot_do() {
    let gateway = Gateway::start().await;
    let created = json_body(
        gateway.post("Patient", &json!({ "resourceType": "Patient", "name": [{ "family": "Ødegård" }], "gender": "other" })).await,
    )
    .await;
    let id = created["id"].as_str().unwrap();
    // Read-your-writes: the index catches up before answering.
    let found = json_body(gateway.get("Patient?family=odeg").await).await;
    assert_eq!(found["total"], 1, "accent-insensitive prefix: {found}");
    let mut updated = created.clone();
    updated["name"][0]["family"] = json!("Berg");
    gateway.put(&format!("Patient/{id}"), &updated).await;
    assert_eq!(json_body(gateway.get("Patient?family=odeg").await).await["total"], 0);
    assert_eq!(json_body(gateway.get("Patient?family=berg").await).await["total"], 1);
    gateway.http.delete(gateway.url(&format!("Patient/{id}"))).send().await.unwrap();
    assert_eq!(json_body(gateway.get("Patient?family=berg").await).await["total"], 0);

    // Unknown parameters: 400, or ignored and reported with handling=lenient.
    expect_outcome(gateway.get("Patient?shoe-size=9").await, 400).await;
    let lenient = gateway.http.get(gateway.url("Patient?shoe-size=9")).header("prefer", "handling=lenient").send().await.unwrap();
    let bundle = json_body(lenient).await;
    let outcome = entries(&bundle).iter().find(|entry| entry["search"]["mode"] == "outcome").unwrap();
    assert!(outcome["resource"].to_string().contains("shoe-size"));
    expect_outcome(gateway.get("Patient?birthdate=not-a-date").await, 400).await;
    // A chain through nothing: no match (chains are tested in `chained_and_reverse_chained_parameters`).
    assert_eq!(json_body(gateway.get("Observation?subject:Patient.name=x").await).await["total"], 0);
    expect_outcome(gateway.get("Observation?subject:Patient.shoe-size=9").await, 400).await;
    // POST _search with a form body.
    let posted = gateway
        .http
        .post(gateway.url("Patient/_search"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("gender=other")
        .send()
        .await
        .unwrap();
    assert_eq!(json_body(posted).await["total"], 0);
    let wrong = gateway.http.post(gateway.url("Patient/_search")).header("content-type", FHIR_JSON).body("{}").send().await.unwrap();
    expect_outcome(wrong, 415).await;
}

#[tokio::test]
async fn official_observation_examples_by_code_value_and_composite() {
    let gateway = Gateway::start().await;
    let mut observations = Vec::new();
    for entry in std::fs::read_dir(corpora().join("fhir-r4-examples/Observation")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let response = gateway
            .http
            .post(gateway.url("Observation"))
            .header("content-type", FHIR_JSON)
            .header("prefer", "handling=lenient")
            .body(text.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        observations.push(serde_json::from_str::<Value>(&text).unwrap());
    }
    let has_code = |observation: &Value, system: &str, code: &str| {
        observation["code"]["coding"]
            .as_array()
            .is_some_and(|codings| codings.iter().any(|coding| coding["system"] == system && coding["code"] == code))
    };
    // Systolic blood pressure above 100 in a component (composite, same component).
    let expected = observations
        .iter()
        .filter(|observation| {
            observation["component"].as_array().is_some_and(|components| {
                components.iter().any(|component| {
                    has_code(component, "http://loinc.org", "8480-6")
                        && component["valueQuantity"]["value"].to_string().parse::<f64>().is_ok_and(|value| value > 100.0)
                })
            })
        })
        .count();
    assert!(expected > 0);
    let found = json_body(gateway.get("Observation?component-code-value-quantity=http://loinc.org|8480-6$gt100").await).await;
    assert_eq!(found["total"].as_u64(), Some(expected as u64));
    // Composites on the resource itself (the index serves them with `code` and `value-quantity`
    // terms; the matcher checks they belong together) and their :missing.
    let with_quantity = |observation: &Value| observation["valueQuantity"]["value"].is_number() && observation["code"]["coding"].is_array();
    let sample = observations.iter().find(|observation| with_quantity(observation)).unwrap();
    let (system, code) = (sample["code"]["coding"][0]["system"].as_str().unwrap(), sample["code"]["coding"][0]["code"].as_str().unwrap());
    let value: f64 = sample["valueQuantity"]["value"].to_string().parse().unwrap();
    let expected = observations
        .iter()
        .filter(|observation| {
            has_code(observation, system, code)
                && observation["valueQuantity"]["value"].to_string().parse::<f64>().is_ok_and(|other| other >= value)
        })
        .count();
    let found = json_body(gateway.get(&format!("Observation?code-value-quantity={system}|{code}$ge{value}")).await).await;
    assert_eq!(found["total"].as_u64(), Some(expected as u64), "code-value-quantity");
    let with_both = observations.iter().filter(|observation| with_quantity(observation)).count();
    let found = json_body(gateway.get("Observation?code-value-quantity:missing=false").await).await;
    assert_eq!(found["total"].as_u64(), Some(with_both as u64), "code-value-quantity:missing=false");
    let found = json_body(gateway.get("Observation?code-value-quantity:missing=true").await).await;
    assert_eq!(found["total"].as_u64(), Some((observations.len() - with_both) as u64), "code-value-quantity:missing=true");
    // status token and :not / :missing.
    let finals = observations.iter().filter(|observation| observation["status"] == "final").count();
    assert_eq!(json_body(gateway.get("Observation?status=final").await).await["total"].as_u64(), Some(finals as u64));
    assert_eq!(
        json_body(gateway.get("Observation?status:not=final").await).await["total"].as_u64(),
        Some((observations.len() - finals) as u64)
    );
    let without_subject = observations.iter().filter(|observation| observation.get("subject").is_none()).count();
    assert_eq!(json_body(gateway.get("Observation?subject:missing=true").await).await["total"].as_u64(), Some(without_subject as u64));
}

/// Found by schemathesis in CI: `_offset` near `usize::MAX` overflowed `offset + count`.
#[tokio::test]
async fn a_huge_offset_is_an_empty_page_not_a_crash() {
    let gateway = Gateway::start().await;
    gateway.post("Patient", &json!({ "resourceType": "Patient", "gender": "male" })).await;
    let page = json_body(gateway.get("Patient?_offset=18446744073709551615").await).await;
    assert_eq!(page["total"], 1);
    assert!(entries(&page).is_empty());
    expect_outcome(gateway.get("Patient?_offset=-1").await, 400).await;
    // `_count=0` counts; a `next` link would be a page that never advances.
    let counted = json_body(gateway.get("Patient?_count=0").await).await;
    assert_eq!(counted["total"], 1);
    let relations: Vec<&str> = counted["link"].as_array().unwrap().iter().map(|link| link["relation"].as_str().unwrap()).collect();
    assert_eq!(relations, ["self"], "{counted}");
}

#[tokio::test]
async fn chained_and_reverse_chained_parameters() {
    let gateway = Gateway::start().await;
    let organization =
        json_body(gateway.post("Organization", &json!({"resourceType": "Organization", "name": "Northwind Clinic"})).await).await;
    let org_id = organization["id"].as_str().unwrap().to_string();
    let mut patients = Vec::new();
    for (family, managed) in [("Quintero", true), ("Quinn", false), ("Ortiz", true)] {
        let mut patient = json!({"resourceType": "Patient", "name": [{"family": family}]});
        if managed {
            patient["managingOrganization"] = json!({"reference": format!("Organization/{org_id}")});
        }
        patients.push(json_body(gateway.post("Patient", &patient).await).await["id"].as_str().unwrap().to_string());
    }
    for (patient, code) in [(&patients[0], "718-7"), (&patients[1], "2345-7"), (&patients[2], "2345-7")] {
        let observation = json!({
            "resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": format!("Patient/{patient}")},
        });
        assert_eq!(gateway.post("Observation", &observation).await.status(), 201);
    }
    let subjects = |bundle: &Value| -> Vec<String> {
        let mut subjects: Vec<String> =
            entries(bundle).iter().map(|entry| entry["resource"]["subject"]["reference"].as_str().unwrap().to_string()).collect();
        subjects.sort();
        subjects
    };
    let ids = |bundle: &Value| -> Vec<String> {
        let mut ids: Vec<String> = entries(bundle).iter().map(|entry| entry["resource"]["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        ids
    };
    let sorted = |mut list: Vec<String>| {
        list.sort();
        list
    };
    // Forward: Observations whose subject's family starts with "quin" (two patients).
    let quin = json_body(gateway.get("Observation?subject:Patient.family=quin").await).await;
    assert_eq!(subjects(&quin), sorted(vec![format!("Patient/{}", patients[0]), format!("Patient/{}", patients[1])]), "{quin}");
    assert_eq!(quin["total"], 2);
    // Two links: patient → managing organization → name; combined with a plain filter.
    let northwind = json_body(gateway.get("Observation?patient.organization.name=northwind&code=2345-7").await).await;
    assert_eq!(subjects(&northwind), vec![format!("Patient/{}", patients[2])], "{northwind}");
    // Reverse: Patients with a haemoglobin Observation; Organizations of patients with one.
    let with_hb = json_body(gateway.get("Patient?_has:Observation:patient:code=718-7").await).await;
    assert_eq!(ids(&with_hb), vec![patients[0].clone()], "{with_hb}");
    let glucose = json_body(gateway.get("Patient?_has:Observation:subject:code=2345-7&family=quinn").await).await;
    assert_eq!(ids(&glucose), vec![patients[1].clone()], "{glucose}");
    let nested = json_body(gateway.get("Organization?_has:Patient:organization:_has:Observation:patient:code=718-7").await).await;
    assert_eq!(ids(&nested), vec![org_id.clone()], "{nested}");
    // Nothing linked: no match, and `_total` says so.
    assert_eq!(json_body(gateway.get("Patient?_has:Observation:patient:code=0000-0").await).await["total"], 0);
}

#[tokio::test]
async fn total_none_pages_like_a_counted_search_without_a_total() {
    let gateway = Gateway::start().await;
    for given in ["A", "B", "C", "D", "E"] {
        let patient = json!({"resourceType": "Patient", "name": [{"family": "Pager", "given": [given]}]});
        assert_eq!(gateway.post("Patient", &patient).await.status(), 201);
    }
    let ids = |bundle: &Value| -> Vec<String> {
        entries(bundle).iter().map(|entry| entry["resource"]["id"].as_str().unwrap().to_string()).collect()
    };
    let counted = json_body(gateway.get("Patient?family=pager&_count=50").await).await;
    assert_eq!(counted["total"], 5);
    let mut seen = Vec::new();
    let mut url = gateway.url("Patient?family=pager&_total=none&_count=2");
    for _ in 0..5 {
        let page = json_body(gateway.http.get(&url).send().await.unwrap()).await;
        assert!(page.get("total").is_none(), "{page}");
        seen.extend(ids(&page));
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|link| link["relation"] == "next")
            .map(|link| link["url"].as_str().unwrap().to_string());
        match next {
            Some(next) => url = next,
            None => break,
        }
    }
    assert_eq!(seen, ids(&counted), "the same resources in the same (ledger) order");
}

#[tokio::test]
async fn chains_have_at_most_three_links_as_documented() {
    let gateway = Gateway::start().await;
    let parent = json_body(gateway.post("Organization", &json!({"resourceType": "Organization", "name": "Parent"})).await).await;
    let child = json!({"resourceType": "Organization", "name": "Child", "partOf": {"reference": format!("Organization/{}", parent["id"].as_str().unwrap())}});
    let child = json_body(gateway.post("Organization", &child).await).await;
    let patient = json!({"resourceType": "Patient", "managingOrganization": {"reference": format!("Organization/{}", child["id"].as_str().unwrap())}});
    let patient = json_body(gateway.post("Patient", &patient).await).await;
    let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": format!("Patient/{}", patient["id"].as_str().unwrap())}});
    assert_eq!(gateway.post("Observation", &observation).await.status(), 201);
    let three = json_body(gateway.get("Observation?subject:Patient.organization.partof.name=parent").await).await;
    assert_eq!(three["total"], 1, "three links: {three}");
    for lenient in [false, true] {
        let mut request = gateway.http.get(gateway.url("Observation?subject:Patient.organization.partof.partof.name=parent"));
        if lenient {
            request = request.header("prefer", "handling=lenient");
        }
        let text = expect_outcome(request.send().await.unwrap(), 400).await;
        assert!(text.contains("at most 3 links"), "four links, lenient {lenient}: {text}");
    }
}

#[tokio::test]
async fn a_system_search_returns_its_includes_and_bounds_them_per_page() {
    let gateway = Gateway::start().await;
    let patient = json_body(gateway.post("Patient", &json!({"resourceType": "Patient", "gender": "other"})).await).await;
    let reference = format!("Patient/{}", patient["id"].as_str().unwrap());
    let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": reference}});
    assert_eq!(gateway.post("Observation", &observation).await.status(), 201);
    let found = json_body(gateway.get("?_type=Observation,Condition&_include=Observation:subject").await).await;
    let modes: Vec<(&str, &str)> = entries(&found)
        .iter()
        .map(|entry| (entry["resource"]["resourceType"].as_str().unwrap(), entry["search"]["mode"].as_str().unwrap()))
        .collect();
    assert_eq!(modes, [("Observation", "match"), ("Patient", "include")], "{found}");
    // More revincludes than a page carries: the first 1,000 and an OperationOutcome saying so.
    let many: Vec<Value> =
        (0..1_001).map(|_| json!({"resource": observation.clone(), "request": {"method": "POST", "url": "Observation"}})).collect();
    let response = gateway.post("", &json!({"resourceType": "Bundle", "type": "batch", "entry": many})).await;
    assert_eq!(response.status(), 200);
    let page =
        json_body(gateway.get(&format!("Patient?_id={}&_revinclude=Observation:subject", patient["id"].as_str().unwrap())).await).await;
    let included = entries(&page).iter().filter(|entry| entry["search"]["mode"] == "include").count();
    let outcome = entries(&page).iter().find(|entry| entry["search"]["mode"] == "outcome").expect("an OperationOutcome entry");
    assert_eq!(included, 1_000);
    assert_eq!(outcome["resource"]["issue"][0]["code"], "too-costly", "{outcome}");
}
