//! Patient consent on every path, through HTTP (issue #4, tests 1–15). Two patients, A (`pat-a`)
//! and B (`pat-b`), are created by the EMR (a `system/*.cruds` token of Organization/local, purpose
//! TREAT, which reads what it wrote); every other caller gets its own token from the development
//! issuer. A denied read must look exactly like a resource that does not exist, so most checks
//! compare the answer about a hidden resource with the answer about an unknown one, and every
//! "hidden" check has a control showing that the same request does return the data to a caller
//! who may see it.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{FHIR_JSON, Gateway, corpora};

const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const MRN: &str = "urn:test:mrn";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The Observations [`seed`] writes for each patient.
const B_OBSERVATIONS: [&str; 4] = ["obs-b-vital", "obs-b-vital2", "obs-b-lab", "obs-b-lab2"];
const A_OBSERVATIONS: [&str; 3] = ["obs-a-vital", "obs-a-lab", "obs-a-panel"];
/// Text that only B's records contain (identifier, name, birth date, codes A has not).
const B_DATA: [&str; 5] = ["B-1", "Bravo", "1980-02-02", "Hemoglobin", "Body temperature"];
/// What the ids of B's records contain (A's records may *refer* to B's by id).
const B_IDS: [&str; 2] = ["pat-b", "obs-b"];

/// What the gateway answered.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) text: String,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.text))
    }

    /// The body with the parts that legitimately differ between two requests removed: the
    /// Bundle's `meta.lastUpdated` (the time of the answer) and the `url`s of its links (they
    /// repeat the query).
    fn normalized(&self) -> (u16, Value) {
        let mut body = self.json();
        if let Some(meta) = body.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("lastUpdated");
        }
        if let Some(links) = body.get_mut("link").and_then(Value::as_array_mut) {
            for link in links {
                link.as_object_mut().unwrap().remove("url");
            }
        }
        (self.status, body)
    }
}

/// A client with its own token (the harness's default client sends the EMR's).
pub(crate) struct Caller {
    http: reqwest::Client,
    base: String,
    authorization: String,
}

impl Caller {
    pub(crate) fn new(gateway: &Gateway, flags: &[&str]) -> Caller {
        let token = gateway.token(flags);
        Caller { http: reqwest::Client::new(), base: gateway.base(), authorization: format!("Bearer {token}") }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") { path.to_string() } else { format!("{}/{}", self.base, path.trim_start_matches('/')) }
    }

    pub(crate) async fn send(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Answer {
        let mut request = self.http.request(method, self.url(path)).header("authorization", &self.authorization);
        if let Some(body) = body {
            request = request.header("content-type", FHIR_JSON).body(body.to_string());
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        Answer { status, text: response.text().await.expect("body") }
    }

    pub(crate) async fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub(crate) async fn put(&self, path: &str, body: &Value) -> Answer {
        self.send(reqwest::Method::PUT, path, Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str) -> Answer {
        self.send(reqwest::Method::DELETE, path, None).await
    }

    /// A GET that must succeed: its JSON body.
    pub(crate) async fn read(&self, path: &str) -> Value {
        let answer = self.get(path).await;
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.text);
        answer.json()
    }

    /// A write that must answer `status`: its JSON body.
    pub(crate) async fn expect_write(&self, method: reqwest::Method, path: &str, body: &Value, status: u16) -> Value {
        let answer = self.send(method.clone(), path, Some(body)).await;
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.text);
        answer.json()
    }
}

/// The EMR: what `gateway.http` sends, as a [`Caller`].
pub(crate) fn emr(gateway: &Gateway) -> Caller {
    Caller::new(gateway, &["--scope", "system/*.cruds"])
}

/// Patient `id`'s own app (no organisation).
pub(crate) fn patient_app(gateway: &Gateway, id: &str, scope: &str) -> Caller {
    Caller::new(gateway, &["--scope", scope, "--patient", id, "--fhir-user", &format!("Patient/{id}"), "--organization", ""])
}

/// Practitioner `id` of no organisation (so only Consents, never the author-organisation
/// default, let them read), with `user/*.rs` and purpose TREAT unless `extra` says otherwise.
pub(crate) fn practitioner(gateway: &Gateway, id: &str, extra: &[&str]) -> Caller {
    let user = format!("Practitioner/{id}");
    let mut flags = vec!["--scope", "user/*.rs", "--fhir-user", &user, "--organization", ""];
    flags.extend_from_slice(extra);
    Caller::new(gateway, &flags)
}

fn patient_resource(id: &str, mrn: &str, family: &str, given: &str, gender: &str, birth_date: &str) -> Value {
    json!({
        "resourceType": "Patient", "id": id,
        "identifier": [{ "system": MRN, "value": mrn }],
        "name": [{ "family": family, "given": [given] }],
        "gender": gender, "birthDate": birth_date,
    })
}

/// A valid R4 Observation: `category` vital-signs or laboratory, a LOINC code, a quantity.
#[allow(clippy::too_many_arguments)]
fn observation(
    id: &str,
    patient: &str,
    category: &str,
    loinc: &str,
    display: &str,
    value: f64,
    unit: &str,
    derived_from: &[&str],
) -> Value {
    let mut observation = json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "identifier": [{ "system": "urn:test:observation", "value": id }],
        "category": [{ "coding": [{ "system": CATEGORY, "code": category }] }],
        "code": { "coding": [{ "system": LOINC, "code": loinc, "display": display }] },
        "subject": { "reference": format!("Patient/{patient}") },
        "effectiveDateTime": "2026-03-01T10:00:00Z",
        "valueQuantity": { "value": value, "unit": unit, "system": UCUM, "code": unit },
    });
    if !derived_from.is_empty() {
        observation["derivedFrom"] = derived_from.iter().map(|id| json!({ "reference": format!("Observation/{id}") })).collect();
    }
    observation
}

/// Patients A and B and their Observations, written by the EMR with client-chosen ids:
/// - A: `obs-a-vital` (heart rate), `obs-a-lab` (glucose, derived from B's `obs-b-lab2`) and
///   `obs-a-panel` (laboratory; has members `obs-a-lab`, `obs-a-vital` and B's `obs-b-lab`,
///   derived from B's `obs-b-vital`);
/// - B: `obs-b-vital` (heart rate), `obs-b-vital2` (temperature, derived from `obs-b-lab`),
///   `obs-b-lab` (glucose), `obs-b-lab2` (haemoglobin, derived from `obs-b-vital` and A's
///   `obs-a-vital`).
pub(crate) async fn seed(emr: &Caller) {
    let resources = [
        patient_resource("pat-a", "A-1", "Alpha", "Ann", "female", "1970-01-01"),
        patient_resource("pat-b", "B-1", "Bravo", "Bob", "male", "1980-02-02"),
        observation("obs-b-vital", "pat-b", "vital-signs", "8867-4", "Heart rate", 88.0, "/min", &[]),
        observation("obs-b-lab", "pat-b", "laboratory", "2345-7", "Glucose", 140.0, "mg/dL", &[]),
        observation("obs-b-vital2", "pat-b", "vital-signs", "8310-5", "Body temperature", 37.2, "Cel", &["obs-b-lab"]),
        observation("obs-b-lab2", "pat-b", "laboratory", "718-7", "Hemoglobin", 13.5, "g/dL", &["obs-b-vital", "obs-a-vital"]),
        observation("obs-a-vital", "pat-a", "vital-signs", "8867-4", "Heart rate", 72.0, "/min", &[]),
        observation("obs-a-lab", "pat-a", "laboratory", "2345-7", "Glucose", 95.0, "mg/dL", &["obs-b-lab2"]),
        json!({
            "resourceType": "Observation", "id": "obs-a-panel", "status": "final",
            "category": [{ "coding": [{ "system": CATEGORY, "code": "laboratory" }] }],
            "code": { "coding": [{ "system": LOINC, "code": "24323-8", "display": "Comprehensive metabolic panel" }] },
            "subject": { "reference": "Patient/pat-a" },
            "effectiveDateTime": "2026-03-01T10:00:00Z",
            "hasMember": [
                { "reference": "Observation/obs-a-lab" },
                { "reference": "Observation/obs-a-vital" },
                { "reference": "Observation/obs-b-lab" },
            ],
            "derivedFrom": [{ "reference": "Observation/obs-b-vital" }],
        }),
    ];
    for resource in resources {
        let path = format!("{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
        emr.expect_write(reqwest::Method::PUT, &path, &resource, 201).await;
    }
}

/// A patient-privacy Consent of `patient` with this root provision.
pub(crate) fn consent(id: &str, patient: &str, provision: Value) -> Value {
    json!({
        "resourceType": "Consent", "id": id, "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
        "category": [{ "coding": [{ "system": LOINC, "code": "59284-0" }] }],
        "patient": { "reference": format!("Patient/{patient}") },
        "dateTime": "2026-01-01",
        "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN" }] },
        "provision": provision,
    })
}

/// An actor who receives the information (role IRCP).
pub(crate) fn recipient(reference: &str) -> Value {
    json!({ "role": { "coding": [{ "system": PARTICIPATION, "code": "IRCP" }] }, "reference": { "reference": reference } })
}

/// B's Consent for Practitioner/p1: B's demographics and vital signs, nothing else (a deny for
/// p1 with two permits as exceptions: the resource type Patient, and the category vital-signs).
fn vital_signs_only(id: &str) -> Value {
    consent(
        id,
        "pat-b",
        json!({
            "type": "deny",
            "actor": [recipient("Practitioner/p1")],
            "provision": [
                { "type": "permit", "class": [{ "system": "http://hl7.org/fhir/resource-types", "code": "Patient" }] },
                { "type": "permit", "code": [{ "coding": [{ "system": CATEGORY, "code": "vital-signs" }] }] },
            ],
        }),
    )
}

/// `Type/id` of the entries of a Bundle with this `search.mode` (`None`: every entry with a
/// resource).
fn ids(bundle: &Value, mode: Option<&str>) -> BTreeSet<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| mode.is_none_or(|mode| entry["search"]["mode"] == mode))
        .filter_map(|entry| {
            let resource = entry.get("resource")?;
            Some(format!("{}/{}", resource["resourceType"].as_str()?, resource["id"].as_str()?))
        })
        .collect()
}

fn set(references: &[&str]) -> BTreeSet<String> {
    references.iter().map(|reference| reference.to_string()).collect()
}

fn observations(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|id| format!("Observation/{id}")).collect()
}

fn next_link(bundle: &Value) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|link| link["relation"] == "next").and_then(|link| link["url"].as_str()).map(str::to_string)
}

/// Every page of a search, following `next` links.
async fn pages(caller: &Caller, first: &str) -> Vec<Value> {
    let mut pages = vec![caller.read(first).await];
    while let Some(next) = next_link(pages.last().unwrap()) {
        assert!(pages.len() < 50, "more pages than there are resources");
        pages.push(caller.read(&next).await);
    }
    pages
}

/// Asserts that nothing of B's is in `answer`: no entry is one of B's records (or the deletion
/// of one), and no text only B's records contain appears (links aside: they repeat the query).
fn assert_no_b_data(context: &str, answer: &Answer) {
    let mut body = answer.json();
    if let Some(object) = body.as_object_mut() {
        object.remove("link");
    }
    let text = body.to_string();
    for needle in B_DATA.iter().filter(|needle| !context.contains(**needle)) {
        assert!(!text.contains(needle), "{context}: B's data ({needle}) in {}", answer.text);
    }
    if body["resourceType"] != "Bundle" {
        for needle in B_IDS.iter().filter(|needle| !context.contains(**needle)) {
            assert!(!text.contains(needle), "{context}: B's id ({needle}) in {}", answer.text);
        }
    }
    for entry in body["entry"].as_array().into_iter().flatten() {
        let names = [&entry["fullUrl"], &entry["resource"]["id"], &entry["request"]["url"], &entry["response"]["location"]];
        for name in names.into_iter().filter_map(Value::as_str) {
            assert!(!B_IDS.iter().any(|id| name.contains(id)), "{context}: B's record {name} in {}", answer.text);
        }
    }
}

/// Asserts that `hidden` is answered exactly like `unknown`: same status (404), same bytes.
async fn assert_same_as_unknown(caller: &Caller, hidden: &str, unknown: &str) {
    let hidden_answer = caller.get(hidden).await;
    let unknown_answer = caller.get(unknown).await;
    assert_eq!(unknown_answer.status, 404, "GET {unknown}: {}", unknown_answer.text);
    assert_eq!(hidden_answer.status, 404, "GET {hidden} must look like an unknown id: {}", hidden_answer.text);
    assert_eq!(hidden_answer.text, unknown_answer.text, "GET {hidden} and GET {unknown} must be byte-identical");
}

/// An OperationOutcome with this status and issue code.
pub(crate) fn assert_outcome(context: &str, answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.status, status, "{context}: {}", answer.text);
    let body = answer.json();
    assert_eq!(body["resourceType"], "OperationOutcome", "{context}: {body}");
    assert_eq!(body["issue"][0]["code"], code, "{context}: {body}");
}

/// A FHIR instant `offset` seconds from now, at second precision.
fn instant_from_now(offset: i64) -> String {
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
    (now + time::Duration::seconds(offset)).format(&time::format_description::well_known::Rfc3339).unwrap()
}

// 1 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_patient_reading_another_patients_records_gets_the_unknown_id_answer() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let a = patient_app(&gateway, "pat-a", "patient/*.rs");

    // Control: A reads A's own records; the EMR reads B's.
    assert_eq!(a.read("Patient/pat-a").await["id"], "pat-a");
    assert_eq!(a.read("Observation/obs-a-lab").await["id"], "obs-a-lab");
    assert_eq!(emr.read("Patient/pat-b").await["id"], "pat-b");
    assert_eq!(emr.read("Observation/obs-b-lab").await["id"], "obs-b-lab");

    assert_same_as_unknown(&a, "Patient/pat-b", "Patient/no-such-patient").await;
    for id in B_OBSERVATIONS {
        assert_same_as_unknown(&a, &format!("Observation/{id}"), "Observation/no-such-observation").await;
    }
    // The same through vread and instance history.
    assert_same_as_unknown(&a, "Observation/obs-b-vital/_history/1", "Observation/no-such-observation/_history/1").await;
    assert_same_as_unknown(&a, "Observation/obs-b-vital/_history", "Observation/no-such-observation/_history").await;
}

// 2 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_search_without_a_patient_parameter_returns_only_the_patients_own_compartment() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let a = patient_app(&gateway, "pat-a", "patient/*.rs");

    // Control: the EMR sees all seven.
    let everything = emr.read("Observation").await;
    assert_eq!(everything["total"], 7, "{everything}");

    let mine = a.read("Observation").await;
    assert_eq!(ids(&mine, Some("match")), observations(&A_OBSERVATIONS), "{mine}");
    assert_eq!(mine["total"], 3, "the total counts only what A may see: {mine}");
    let laboratory = a.read("Observation?category=laboratory").await;
    assert_eq!(ids(&laboratory, Some("match")), observations(&["obs-a-lab", "obs-a-panel"]), "{laboratory}");
    let heart_rates = a.read("Observation?code=http://loinc.org|8867-4").await;
    assert_eq!(ids(&heart_rates, Some("match")), observations(&["obs-a-vital"]), "{heart_rates}");
    let patients = a.read("Patient").await;
    assert_eq!(ids(&patients, Some("match")), set(&["Patient/pat-a"]), "{patients}");
    assert_eq!(patients["total"], 1, "{patients}");
    // Across types, and paged one by one: three pages of one, nothing of B's.
    let system = a.read("?_type=Patient,Observation").await;
    assert_eq!(system["total"], 4, "{system}");
    let paged = pages(&a, "Observation?_count=1").await;
    assert_eq!(paged.len(), 3, "one page per visible result");
    for page in &paged {
        assert_eq!(page["total"], 3, "{page}");
        assert_eq!(ids(page, Some("match")).len(), 1, "{page}");
        assert!(ids(page, None).iter().all(|reference| reference.contains("-a-")), "{page}");
    }
}

// 3 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn searching_another_patients_records_answers_like_a_search_for_an_unknown_patient() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let a = patient_app(&gateway, "pat-a", "patient/*.rs");

    for (query, control_total) in [
        ("Observation?patient={}&code=8867-4", 1),
        ("Observation?patient={}&code=http://loinc.org|2345-7", 1),
        ("Observation?subject=Patient/{}", 4),
        ("Observation?patient={}&_summary=count", 4),
        ("Observation?patient={}&category=laboratory&_total=accurate&_count=1", 2),
        ("Patient?_id={}", 1),
        ("Patient?_id={}&_revinclude=Observation:subject", 1),
    ] {
        let about_b = query.replace("{}", "pat-b");
        let about_nobody = query.replace("{}", "unknown-patient");
        // Control: the EMR finds B's records with this very query.
        assert_eq!(emr.read(&about_b).await["total"], control_total, "EMR: {about_b}");

        let hidden = a.get(&about_b).await;
        let unknown = a.get(&about_nobody).await;
        assert_eq!(hidden.status, 200, "{about_b}: {}", hidden.text);
        assert_eq!(hidden.json()["total"], 0, "{about_b}: {}", hidden.text);
        assert!(hidden.json().get("entry").is_none(), "{about_b}: {}", hidden.text);
        assert_eq!(hidden.normalized(), unknown.normalized(), "{about_b} must answer like {about_nobody}");
    }
    // The compartment forms answer 404 for both, byte for byte.
    assert_same_as_unknown(&a, "Patient/pat-b/Observation?code=8867-4", "Patient/unknown-patient/Observation?code=8867-4").await;
    assert_same_as_unknown(&a, "Patient/pat-b/$everything", "Patient/unknown-patient/$everything").await;
}

// 4 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn reverse_chained_and_chained_parameters_leak_nothing() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let a = patient_app(&gateway, "pat-a", "patient/*.rs");

    // Each query about B's data and the same query matching nobody.
    for (about_b, about_nobody) in [
        ("Patient?_has:Observation:patient:code=718-7", "Patient?_has:Observation:patient:code=0000-0"),
        ("Patient?_has:Observation:subject:_id=obs-b-lab", "Patient?_has:Observation:subject:_id=no-such-observation"),
        ("Observation?subject:Patient.name=Bravo", "Observation?subject:Patient.name=Nobody"),
        ("Observation?patient.name=Bravo", "Observation?patient.name=Nobody"),
        ("Observation?subject:Patient.identifier=urn:test:mrn|B-1", "Observation?subject:Patient.identifier=urn:test:mrn|X-9"),
        ("Observation?code=2345-7&subject:Patient.birthdate=1980-02-02", "Observation?code=2345-7&subject:Patient.birthdate=1900-01-01"),
    ] {
        // Control: the EMR finds B's data through the same chain.
        let found = emr.read(about_b).await;
        assert!(found["total"].as_u64().is_some_and(|total| total > 0), "EMR: {about_b}: {found}");
        let hidden = a.get(about_b).await;
        let unknown = a.get(about_nobody).await;
        if hidden.status == 200 {
            assert!(ids(&hidden.json(), None).iter().all(|reference| reference.contains("-a")), "{about_b}: {}", hidden.text);
        }
        assert_no_b_data(about_b, &hidden);
        assert_eq!(hidden.normalized(), unknown.normalized(), "{about_b} must answer like {about_nobody}");
    }
}

// 5 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn includes_revincludes_and_iterate_return_nothing_outside_what_the_caller_may_see() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let a = patient_app(&gateway, "pat-a", "patient/*.rs");

    for (query, emr_includes, a_includes) in [
        ("Patient?_id=pat-a&_revinclude=Observation:subject", observations(&A_OBSERVATIONS), observations(&A_OBSERVATIONS)),
        (
            "Observation?_id=obs-a-panel&_include=Observation:has-member",
            observations(&["obs-a-lab", "obs-a-vital", "obs-b-lab"]),
            observations(&["obs-a-lab", "obs-a-vital"]),
        ),
        ("Observation?_id=obs-a-panel&_include=Observation:derived-from", observations(&["obs-b-vital"]), BTreeSet::new()),
        (
            "Observation?_id=obs-a-panel&_include=Observation:has-member&_include:iterate=Observation:derived-from",
            observations(&["obs-a-lab", "obs-a-vital", "obs-b-lab", "obs-b-vital", "obs-b-lab2"]),
            observations(&["obs-a-lab", "obs-a-vital"]),
        ),
        ("Observation?_id=obs-a-vital&_revinclude=Observation:derived-from", observations(&["obs-b-lab2"]), BTreeSet::new()),
        (
            "Observation?_id=obs-a-vital&_revinclude:iterate=Observation:derived-from",
            observations(&["obs-b-lab2", "obs-a-lab"]),
            BTreeSet::new(),
        ),
        (
            "Observation?_id=obs-a-panel&_include=*",
            set(&["Patient/pat-a", "Observation/obs-a-lab", "Observation/obs-a-vital", "Observation/obs-b-lab", "Observation/obs-b-vital"]),
            set(&["Patient/pat-a", "Observation/obs-a-lab", "Observation/obs-a-vital"]),
        ),
        (
            "Observation?_id=obs-a-lab&_include:iterate=*",
            set(&["Patient/pat-a", "Patient/pat-b", "Observation/obs-b-lab2", "Observation/obs-b-vital", "Observation/obs-a-vital"]),
            // obs-a-vital is reached only through B's obs-b-lab2, which A may not see.
            set(&["Patient/pat-a"]),
        ),
    ] {
        let control = emr.read(query).await;
        assert_eq!(ids(&control, Some("include")), emr_includes, "EMR: {query}: {control}");
        let answer = a.get(query).await;
        assert_eq!(answer.status, 200, "{query}: {}", answer.text);
        let bundle = answer.json();
        assert_eq!(ids(&bundle, Some("include")), a_includes, "{query}: {bundle}");
        assert_eq!(ids(&bundle, Some("match")), ids(&control, Some("match")), "A may see the matches themselves: {query}");
        assert_no_b_data(query, &answer);
    }
}

// 6 and 7 ------------------------------------------------------------------------------------

#[tokio::test]
async fn a_vital_signs_only_consent_hides_laboratory_results_everywhere_and_its_revocation_applies_at_once() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let b = patient_app(&gateway, "pat-b", "patient/*.cruds");
    let p1 = practitioner(&gateway, "p1", &[]);

    // Before any Consent, p1 sees nothing of B's.
    assert_same_as_unknown(&p1, "Observation/obs-b-vital", "Observation/no-such-observation").await;
    assert_eq!(p1.read("Observation?patient=pat-b").await["total"], 0);

    // B grants p1 vital signs (and demographics).
    b.expect_write(reqwest::Method::PUT, "Consent/consent-b", &vital_signs_only("consent-b"), 201).await;
    let vitals = observations(&["obs-b-vital", "obs-b-vital2"]);

    // Read.
    assert_eq!(p1.read("Patient/pat-b").await["id"], "pat-b");
    for id in ["obs-b-vital", "obs-b-vital2"] {
        assert_eq!(p1.read(&format!("Observation/{id}")).await["id"], id);
    }
    for id in ["obs-b-lab", "obs-b-lab2"] {
        assert_same_as_unknown(&p1, &format!("Observation/{id}"), "Observation/no-such-observation").await;
        assert_same_as_unknown(&p1, &format!("Observation/{id}/_history/1"), "Observation/no-such-observation/_history/1").await;
    }
    // A's records and B's Consent stay hidden from p1.
    assert_same_as_unknown(&p1, "Observation/obs-a-vital", "Observation/no-such-observation").await;
    assert_same_as_unknown(&p1, "Consent/consent-b", "Consent/no-such-consent").await;

    // Search.
    let search = p1.read("Observation?patient=pat-b").await;
    assert_eq!(ids(&search, Some("match")), vitals, "{search}");
    assert_eq!(search["total"], 2, "{search}");
    let all = p1.read("Observation").await;
    assert_eq!(ids(&all, Some("match")), vitals, "{all}");
    let laboratory = p1.read("Observation?patient=pat-b&category=laboratory").await;
    assert_eq!(laboratory["total"], 0, "{laboratory}");
    // (Controls are B's own reads: B's Consent names an individual, p1, in a deny, and a backend
    // client such as the EMR cannot be shown not to be p1, so it withholds B's data from the
    // EMR too; docs/CONSENT.md, "When the gateway cannot tell: deny".)
    assert_eq!(b.read("Observation?patient=pat-b&category=laboratory").await["total"], 2, "control");
    let compartment = p1.read("Patient/pat-b/Observation").await;
    assert_eq!(ids(&compartment, Some("match")), vitals, "{compartment}");
    assert_eq!(compartment["total"], 2, "{compartment}");

    // _include, _revinclude, :iterate (controls: B gets the laboratory results).
    for (query, b_includes, p1_includes) in [
        ("Observation?_id=obs-b-vital2&_include=Observation:derived-from", observations(&["obs-b-lab"]), BTreeSet::new()),
        ("Observation?_id=obs-b-vital&_revinclude=Observation:derived-from", observations(&["obs-b-lab2"]), BTreeSet::new()),
        ("Patient?_id=pat-b&_revinclude=Observation:subject", observations(&B_OBSERVATIONS), vitals.clone()),
        ("Observation?_id=obs-b-vital&_revinclude:iterate=Observation:derived-from", observations(&["obs-b-lab2"]), BTreeSet::new()),
        (
            "Patient?_id=pat-b&_revinclude=Observation:subject&_include:iterate=Observation:derived-from",
            observations(&B_OBSERVATIONS),
            vitals.clone(),
        ),
        ("Observation?_id=obs-b-vital2&_include=*", set(&["Patient/pat-b", "Observation/obs-b-lab"]), set(&["Patient/pat-b"])),
    ] {
        assert_eq!(ids(&b.read(query).await, Some("include")), b_includes, "B: {query}");
        let bundle = p1.read(query).await;
        assert_eq!(ids(&bundle, Some("include")), p1_includes, "{query}: {bundle}");
    }

    // $everything, whole and paged: the patient and the two vital signs.
    let visible: BTreeSet<String> = vitals.iter().cloned().chain(["Patient/pat-b".to_string()]).collect();
    let everything = p1.read("Patient/pat-b/$everything").await;
    assert_eq!(ids(&everything, None), visible, "{everything}");
    assert_eq!(everything["total"], 3, "{everything}");
    assert!(ids(&b.read("Patient/pat-b/$everything").await, None).contains("Observation/obs-b-lab"), "control");
    for first in ["Patient/pat-b/$everything?_count=1", "Observation?patient=pat-b&_count=1", "Observation?_count=1"] {
        let paged = pages(&p1, first).await;
        let expected = if first.starts_with("Patient") { &visible } else { &vitals };
        assert_eq!(paged.len(), expected.len(), "{first}: one page per visible result");
        let mut seen = BTreeSet::new();
        for page in &paged {
            assert_eq!(page["total"], expected.len(), "{first}: {page}");
            let on_page = ids(page, None);
            assert_eq!(on_page.len(), 1, "{first}: {page}");
            seen.extend(on_page);
        }
        assert_eq!(&seen, expected, "{first}");
    }

    // 7: a `next` link taken before the revocation, then the revocation.
    let first_page = p1.read("Observation?patient=pat-b&_count=1").await;
    assert_eq!(ids(&first_page, Some("match")).len(), 1);
    let next = next_link(&first_page).expect("a second page while the Consent is active");
    let everything_next = next_link(&p1.read("Patient/pat-b/$everything?_count=1").await).expect("a second page of $everything");
    let mut revoked = vital_signs_only("consent-b");
    revoked["status"] = json!("inactive");
    b.expect_write(reqwest::Method::PUT, "Consent/consent-b", &revoked, 200).await;

    // The same (unexpired) token, the very next request.
    assert_same_as_unknown(&p1, "Observation/obs-b-vital", "Observation/no-such-observation").await;
    assert_same_as_unknown(&p1, "Patient/pat-b", "Patient/no-such-patient").await;
    for link in [next, everything_next] {
        let answer = p1.get(&link).await;
        assert!(answer.status == 200 || answer.status == 404, "{link}: {}", answer.text);
        if answer.status == 200 {
            assert!(answer.json().get("entry").is_none(), "{link}: {}", answer.text);
            assert_eq!(answer.json()["total"], 0, "{link}: {}", answer.text);
        }
        assert_no_b_data(&link, &answer);
    }
    let search = p1.read("Observation?patient=pat-b").await;
    assert_eq!(search["total"], 0, "{search}");
    assert_eq!(p1.read("Observation").await["total"], 0);
    // B still reads their own records (right of access), and the EMR the ones it wrote.
    assert_eq!(b.read("Observation?patient=pat-b").await["total"], 4);
    assert_eq!(b.read("Consent/consent-b").await["status"], "inactive");
}

// 8 ------------------------------------------------------------------------------------------

/// Asserts p1 sees no version of `obs-b-vital` (two versions) through read, vread, instance and
/// type history.
async fn assert_history_hidden(p1: &Caller, when: &str) {
    assert_same_as_unknown(p1, "Observation/obs-b-vital", "Observation/no-such-observation").await;
    for version in [1, 2] {
        assert_same_as_unknown(
            p1,
            &format!("Observation/obs-b-vital/_history/{version}"),
            &format!("Observation/no-such-observation/_history/{version}"),
        )
        .await;
    }
    assert_same_as_unknown(p1, "Observation/obs-b-vital/_history", "Observation/no-such-observation/_history").await;
    for query in ["Observation/_history", "Patient/_history", "Observation/_history?_count=1"] {
        let answer = p1.get(query).await;
        assert_eq!(answer.status, 200, "{when}: {query}: {}", answer.text);
        assert!(answer.json().get("entry").is_none(), "{when}: {query}: {}", answer.text);
        assert!(next_link(&answer.json()).is_none(), "{when}: {query}: {}", answer.text);
        assert_no_b_data(&format!("{when}: {query}"), &answer);
    }
}

#[tokio::test]
async fn vread_and_history_show_nothing_after_a_revocation_or_a_deletion() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let b = patient_app(&gateway, "pat-b", "patient/*.cruds");
    let p1 = practitioner(&gateway, "p1", &[]);
    let everything_for_p1 = consent("consent-p1", "pat-b", json!({ "type": "permit", "actor": [recipient("Practitioner/p1")] }));

    // A second version of obs-b-vital.
    let mut changed = emr.read("Observation/obs-b-vital").await;
    changed["valueQuantity"]["value"] = json!(91);
    emr.expect_write(reqwest::Method::PUT, "Observation/obs-b-vital", &changed, 200).await;

    // Control: with the Consent, p1 sees both versions everywhere.
    b.expect_write(reqwest::Method::PUT, "Consent/consent-p1", &everything_for_p1, 201).await;
    let assert_history_visible = async |when: &str| {
        assert_eq!(p1.read("Observation/obs-b-vital/_history/1").await["valueQuantity"]["value"].as_f64(), Some(88.0), "{when}");
        assert_eq!(p1.read("Observation/obs-b-vital/_history/2").await["valueQuantity"]["value"].as_f64(), Some(91.0), "{when}");
        assert_eq!(p1.read("Observation/obs-b-vital/_history").await["entry"].as_array().unwrap().len(), 2, "{when}");
        let type_history = p1.read("Observation/_history").await;
        assert_eq!(type_history["entry"].as_array().unwrap().len(), 5, "{when}: four creates and one update: {type_history}");
    };
    assert_history_visible("consent active").await;

    // Revoked (status inactive).
    let mut inactive = everything_for_p1.clone();
    inactive["status"] = json!("inactive");
    b.expect_write(reqwest::Method::PUT, "Consent/consent-p1", &inactive, 200).await;
    assert_history_hidden(&p1, "after the revocation").await;

    // Active again, then deleted.
    b.expect_write(reqwest::Method::PUT, "Consent/consent-p1", &everything_for_p1, 200).await;
    assert_history_visible("consent active again").await;
    let deleted = b.delete("Consent/consent-p1").await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_history_hidden(&p1, "after the Consent's deletion").await;

    // A record deleted while hidden: its deletion reveals nothing either.
    let revived = b.put("Consent/consent-p1", &everything_for_p1).await;
    assert!(revived.status == 200 || revived.status == 201, "{}", revived.text);
    assert_eq!(p1.read("Observation/obs-b-lab").await["id"], "obs-b-lab", "control");
    assert_eq!(emr.delete("Observation/obs-b-lab").await.status, 204);
    assert_eq!(p1.get("Observation/obs-b-lab").await.status, 410, "control: a consented deletion is 410 Gone");
    let deletion = p1.read("Observation/obs-b-lab/_history").await;
    assert_eq!(deletion["entry"][0]["request"]["method"], "DELETE", "control: {deletion}");
    assert!(p1.read("Observation/_history").await.to_string().contains("obs-b-lab"), "control");
    let deleted = b.delete("Consent/consent-p1").await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_same_as_unknown(&p1, "Observation/obs-b-lab", "Observation/no-such-observation").await;
    assert_same_as_unknown(&p1, "Observation/obs-b-lab/_history/2", "Observation/no-such-observation/_history/2").await;
    assert_same_as_unknown(&p1, "Observation/obs-b-lab/_history", "Observation/no-such-observation/_history").await;
    assert_history_hidden(&p1, "after the record's and the Consent's deletion").await;
}

// 9 ------------------------------------------------------------------------------------------

#[tokio::test]
async fn consents_out_of_their_period_or_for_another_purpose_do_not_permit() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let b = patient_app(&gateway, "pat-b", "patient/*.cruds");

    // One Consent per practitioner, so each decides alone.
    let grants = [
        ("ended", json!({ "start": instant_from_now(-3600), "end": instant_from_now(-1) }), None),
        ("future", json!({ "start": instant_from_now(3600) }), None),
        ("current", json!({ "start": instant_from_now(-3600), "end": instant_from_now(3600) }), None),
        ("research", Value::Null, Some("HRESCH")),
    ];
    for (name, period, purpose) in &grants {
        let mut provision = json!({ "type": "permit", "actor": [recipient(&format!("Practitioner/{name}"))] });
        if !period.is_null() {
            provision["period"] = period.clone();
        }
        if let Some(purpose) = purpose {
            provision["purpose"] = json!([{ "system": ACT_REASON, "code": purpose }]);
        }
        b.expect_write(
            reqwest::Method::PUT,
            &format!("Consent/consent-{name}"),
            &consent(&format!("consent-{name}"), "pat-b", provision),
            201,
        )
        .await;
    }

    let permitted = async |caller: &Caller, context: &str| {
        assert_eq!(caller.read("Observation/obs-b-lab").await["id"], "obs-b-lab", "{context}");
        assert_eq!(caller.read("Observation?patient=pat-b").await["total"], 4, "{context}");
    };
    let denied = async |caller: &Caller, context: &str| {
        assert_same_as_unknown(caller, "Observation/obs-b-lab", "Observation/no-such-observation").await;
        assert_eq!(caller.read("Observation?patient=pat-b").await["total"], 0, "{context}");
    };
    permitted(&practitioner(&gateway, "current", &[]), "period covering now").await;
    denied(&practitioner(&gateway, "ended", &[]), "period ended a second ago").await;
    denied(&practitioner(&gateway, "future", &[]), "period starting in an hour").await;
    denied(&practitioner(&gateway, "research", &[]), "Consent for research, token for treatment").await;
    denied(&practitioner(&gateway, "research", &["--purpose", ""]), "Consent for research, no purpose stated").await;
    permitted(&practitioner(&gateway, "research", &["--purpose", "HRESCH"]), "Consent and token for research").await;
    // Nobody else gains anything from these Consents.
    denied(&practitioner(&gateway, "someone-else", &["--purpose", "HRESCH"]), "a practitioner no Consent names").await;
}

// 10 -----------------------------------------------------------------------------------------

#[tokio::test]
async fn break_the_glass_needs_a_configured_emergency_role_and_a_reason() {
    let gateway = Gateway::start_with(&["--emergency-roles", "EMERGENCY"]).await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let emergency = |extra: &[&str]| {
        let mut flags = vec!["--purpose", "ETREAT"];
        flags.extend_from_slice(extra);
        practitioner(&gateway, "er-1", &flags)
    };

    let granted = emergency(&["--role", "EMERGENCY", "--reason", "unconscious patient"]);
    assert_eq!(granted.read("Observation/obs-b-lab").await["id"], "obs-b-lab");
    assert_eq!(granted.read("Patient/pat-b").await["id"], "pat-b");
    let search = granted.read("Observation?patient=pat-b").await;
    assert_eq!(ids(&search, Some("match")), observations(&B_OBSERVATIONS), "{search}");

    for (case, caller) in [
        ("no emergency role", emergency(&["--reason", "unconscious patient"])),
        ("a role that is not an emergency role", emergency(&["--role", "NURSE", "--reason", "unconscious patient"])),
        ("no reason", emergency(&["--role", "EMERGENCY"])),
        ("a blank reason", emergency(&["--role", "EMERGENCY", "--reason", "  "])),
        ("the role, but purpose TREAT", practitioner(&gateway, "er-1", &["--role", "EMERGENCY", "--reason", "unconscious patient"])),
    ] {
        assert_same_as_unknown(&caller, "Observation/obs-b-lab", "Observation/no-such-observation").await;
        let search = caller.read("Observation?patient=pat-b").await;
        assert_eq!(search["total"], 0, "{case}: {search}");
    }
    // BTG is a purpose of use too.
    let btg = practitioner(&gateway, "er-1", &["--purpose", "BTG", "--role", "EMERGENCY", "--reason", "cardiac arrest"]);
    assert_eq!(btg.read("Observation/obs-b-vital").await["id"], "obs-b-vital");

    // A gateway that configures no emergency role lets nobody break the glass.
    let unconfigured = Gateway::start().await;
    seed(&self::emr(&unconfigured)).await;
    let attempt = practitioner(&unconfigured, "er-1", &["--purpose", "ETREAT", "--role", "EMERGENCY", "--reason", "unconscious patient"]);
    assert_same_as_unknown(&attempt, "Observation/obs-b-lab", "Observation/no-such-observation").await;
}

// 11 -----------------------------------------------------------------------------------------

#[tokio::test]
async fn scopes_limit_interactions_types_and_categories() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let new_observation = observation("ignored", "pat-a", "vital-signs", "8867-4", "Heart rate", 70.0, "/min", &[]);

    // `.rs` cannot create (and nothing is stored); `.cruds` can (control).
    let read_search = patient_app(&gateway, "pat-a", "patient/*.rs");
    let refused = read_search.post("Observation", &new_observation).await;
    assert_outcome("create with .rs", &refused, 403, "forbidden");
    let mut with_id = new_observation.clone();
    with_id["id"] = json!("obs-a-new");
    let refused = read_search.put("Observation/obs-a-new", &with_id).await;
    assert_outcome("update-as-create with .rs", &refused, 403, "forbidden");
    assert_eq!(read_search.read("Observation").await["total"], 3, "nothing stored");
    assert_same_as_unknown(&read_search, "Observation/obs-a-new", "Observation/no-such-observation").await;
    let writer = patient_app(&gateway, "pat-a", "patient/*.cruds");
    writer.expect_write(reqwest::Method::POST, "Observation", &new_observation, 201).await;

    // `.r` reads but cannot search.
    let read_only = patient_app(&gateway, "pat-a", "patient/Observation.r");
    assert_eq!(read_only.read("Observation/obs-a-vital").await["id"], "obs-a-vital");
    assert_outcome("search with .r", &read_only.get("Observation?patient=pat-a").await, 403, "forbidden");
    assert_outcome("search with .r", &read_only.get("Observation").await, 403, "forbidden");
    assert_outcome("type history with .r", &read_only.get("Observation/_history").await, 403, "forbidden");
    // ... and only the type it names.
    assert_outcome("another type", &read_only.get("Patient/pat-a").await, 403, "forbidden");

    // A scope restricted to vital signs: the patient's own laboratory results are out of reach.
    let vital_signs = patient_app(&gateway, "pat-a", &format!("patient/Observation.rs?category={CATEGORY}|vital-signs"));
    assert_eq!(vital_signs.read("Observation/obs-a-vital").await["id"], "obs-a-vital");
    assert_same_as_unknown(&vital_signs, "Observation/obs-a-lab", "Observation/no-such-observation").await;
    assert_same_as_unknown(&vital_signs, "Observation/obs-a-panel", "Observation/no-such-observation").await;
    let search = vital_signs.read("Observation").await;
    let mine = read_search.read("Observation?category=vital-signs").await;
    assert_eq!(mine["total"], 2, "control: A has two vital signs now");
    assert_eq!(ids(&search, Some("match")), ids(&mine, Some("match")), "{search}");
    assert_eq!(search["total"], 2, "{search}");
    assert_eq!(read_search.read("Observation?category=laboratory").await["total"], 2, "control");
    let laboratory = vital_signs.read("Observation?category=laboratory").await;
    assert_eq!(laboratory["total"], 0, "{laboratory}");
    // The laboratory panel that has obs-a-vital as a member is not included either.
    let panel = "Observation?_id=obs-a-vital&_revinclude=Observation:has-member";
    assert_eq!(ids(&read_search.read(panel).await, Some("include")), observations(&["obs-a-panel"]), "control");
    let included = vital_signs.read(panel).await;
    assert_eq!(ids(&included, None), observations(&["obs-a-vital"]), "{included}");

    // `patient/` scopes reach only the compartment of the token's patient, even where a Consent
    // permits more: p1, whom B's Consent lets read everything, in an app launched for patient A.
    let b = patient_app(&gateway, "pat-b", "patient/*.cruds");
    let for_p1 = consent("consent-p1", "pat-b", json!({ "type": "permit", "actor": [recipient("Practitioner/p1")] }));
    b.expect_write(reqwest::Method::PUT, "Consent/consent-p1", &for_p1, 201).await;
    assert_eq!(practitioner(&gateway, "p1", &[]).read("Observation/obs-b-lab").await["id"], "obs-b-lab", "control: user/ scopes");
    let in_a_context =
        Caller::new(&gateway, &["--scope", "patient/*.rs", "--patient", "pat-a", "--fhir-user", "Practitioner/p1", "--organization", ""]);
    assert_same_as_unknown(&in_a_context, "Observation/obs-b-lab", "Observation/no-such-observation").await;
    assert_same_as_unknown(&in_a_context, "Patient/pat-b", "Patient/no-such-patient").await;
    assert_eq!(in_a_context.read("Observation?patient=pat-b").await["total"], 0);
    assert_eq!(in_a_context.read("Observation").await["total"], 0, "and A has granted p1 nothing");
}

// 12 -----------------------------------------------------------------------------------------

#[tokio::test]
async fn a_patient_cannot_write_into_another_patients_compartment() {
    let gateway = Gateway::start_with(&["--checkpoint-interval-ms", "50"]).await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let a = patient_app(&gateway, "pat-a", "patient/*.cruds");
    let b = patient_app(&gateway, "pat-b", "patient/*.rs");
    let tree_before = tree_size(&gateway, Some(9)).await;

    // Creating another Patient (a new compartment that is not A's).
    let other = json!({ "resourceType": "Patient", "name": [{ "family": "Someone-Else" }] });
    assert_outcome("create a Patient", &a.post("Patient", &other).await, 403, "forbidden");
    // Creating an Observation for B.
    let for_b = observation("ignored", "pat-b", "vital-signs", "8867-4", "Heart rate", 200.0, "/min", &[]);
    assert_outcome("create for B", &a.post("Observation", &for_b).await, 403, "forbidden");
    let mut with_id = for_b.clone();
    with_id["id"] = json!("obs-forged");
    assert_outcome("create for B with a client id", &a.put("Observation/obs-forged", &with_id).await, 403, "forbidden");

    // Moving A's Observation into B's compartment.
    let mut moved = emr.read("Observation/obs-a-vital").await;
    moved["subject"] = json!({ "reference": "Patient/pat-b" });
    assert_outcome("update moving subject", &a.put("Observation/obs-a-vital", &moved).await, 403, "forbidden");
    let kept = emr.read("Observation/obs-a-vital").await;
    assert_eq!(kept["subject"]["reference"], "Patient/pat-a");
    assert_eq!(kept["meta"]["versionId"], "1");

    // Transactions whose Observation's subject is a urn:uuid: a new Patient, or (conditional
    // create) B's existing record.
    for (case, if_none_exist) in [("a new Patient", None), ("B's Patient found by identifier", Some(format!("identifier={MRN}|B-1")))] {
        let mut patient_entry = json!({
            "fullUrl": "urn:uuid:0c1a6a2e-8c55-4c52-9d46-2b4f5f0d6a11",
            "resource": patient_resource("ignored", "NEW-1", "Newman", "Ned", "male", "1990-01-01"),
            "request": { "method": "POST", "url": "Patient" },
        });
        patient_entry["resource"].as_object_mut().unwrap().remove("id");
        if let Some(condition) = &if_none_exist {
            patient_entry["request"]["ifNoneExist"] = json!(condition);
        }
        let mut tampered = observation("ignored", "pat-a", "laboratory", "1558-6", "Fasting glucose", 99.0, "mg/dL", &[]);
        tampered.as_object_mut().unwrap().remove("id");
        tampered["identifier"][0]["value"] = json!("tampered");
        tampered["subject"]["reference"] = json!("urn:uuid:0c1a6a2e-8c55-4c52-9d46-2b4f5f0d6a11");
        let bundle = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                patient_entry,
                { "fullUrl": "urn:uuid:7d3c2b1a-0000-4000-8000-000000000001", "resource": tampered,
                  "request": { "method": "POST", "url": "Observation" } },
            ],
        });
        let answer = a.post("", &bundle).await;
        assert!((400..500).contains(&answer.status), "{case}: {}", answer.text);
        assert_eq!(answer.json()["resourceType"], "OperationOutcome", "{case}: {}", answer.text);
        // (What A's app writes is authored by no organisation: only the patients see it.)
        assert_eq!(a.read("Observation").await["total"], 3, "{case}: nothing stored in A's compartment");
        assert_eq!(b.read("Observation").await["total"], 4, "{case}: nothing stored in B's compartment");
        assert_eq!(b.read("Observation?code=1558-6").await["total"], 0, "{case}: nothing stored in B's compartment");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tree_size(&gateway, None).await, tree_before, "no ledger entry for refused writes");

    // Control: the same token writes in A's own compartment.
    let own = observation("ignored", "pat-a", "vital-signs", "8867-4", "Heart rate", 75.0, "/min", &[]);
    a.expect_write(reqwest::Method::POST, "Observation", &own, 201).await;
    assert_eq!(a.read("Observation").await["total"], 4);
    let mut updated = emr.read("Observation/obs-a-vital").await;
    updated["valueQuantity"]["value"] = json!(73);
    a.expect_write(reqwest::Method::PUT, "Observation/obs-a-vital", &updated, 200).await;
}

// 13 -----------------------------------------------------------------------------------------

/// The tree size of the latest signed checkpoint; with `expected`, waits until it is that.
async fn tree_size(gateway: &Gateway, expected: Option<u64>) -> u64 {
    let mut size = 0;
    for _ in 0..200 {
        let checkpoint = gateway.http.get(format!("{}/ledger/checkpoint", gateway.root())).send().await.unwrap().text().await.unwrap();
        size = checkpoint.lines().nth(1).and_then(|line| line.parse().ok()).unwrap_or_else(|| panic!("a checkpoint: {checkpoint}"));
        if expected.is_none_or(|expected| expected == size) {
            return size;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the checkpoint's tree size stayed {size}, expected {expected:?}");
}

#[tokio::test]
async fn a_transaction_with_one_refused_entry_stores_nothing() {
    let gateway = Gateway::start_with(&["--checkpoint-interval-ms", "50"]).await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let before = tree_size(&gateway, Some(9)).await;

    let transaction = |suffix: &str| {
        json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                { "fullUrl": "urn:uuid:3f1d8b2e-1111-4a4a-9b9b-000000000001",
                  "resource": { "resourceType": "Patient", "identifier": [{ "system": MRN, "value": format!("T13-{suffix}") }],
                                "name": [{ "family": "Transaction" }] },
                  "request": { "method": "POST", "url": "Patient" } },
                { "fullUrl": "urn:uuid:3f1d8b2e-1111-4a4a-9b9b-000000000002",
                  "resource": { "resourceType": "Observation", "status": "final",
                                "identifier": [{ "system": "urn:test:observation", "value": format!("T13-{suffix}") }],
                                "category": [{ "coding": [{ "system": CATEGORY, "code": "vital-signs" }] }],
                                "code": { "coding": [{ "system": LOINC, "code": "8867-4" }] },
                                "subject": { "reference": "urn:uuid:3f1d8b2e-1111-4a4a-9b9b-000000000001" },
                                "effectiveDateTime": "2026-03-02T10:00:00Z",
                                "valueQuantity": { "value": 60, "unit": "/min", "system": UCUM, "code": "/min" } },
                  "request": { "method": "POST", "url": "Observation" } },
            ],
        })
    };
    let stored = async |suffix: &str| -> (u64, u64) {
        let patients = emr.read(&format!("Patient?identifier={MRN}|T13-{suffix}")).await["total"].as_u64().unwrap();
        let observations = emr.read(&format!("Observation?identifier=urn:test:observation|T13-{suffix}")).await["total"].as_u64().unwrap();
        (patients, observations)
    };

    // The EMR with Patient scopes only: the Observation entry is refused, so the Patient is not
    // stored either.
    let patients_only = Caller::new(&gateway, &["--scope", "system/Patient.cruds"]);
    let refused = patients_only.post("", &transaction("refused")).await;
    assert_outcome("transaction", &refused, 403, "forbidden");
    // Whatever else the scope reaches: a refused AuditEvent entry.
    let mut with_audit = transaction("audit");
    with_audit["entry"][1] = json!({
        "resource": { "resourceType": "AuditEvent",
                      "type": { "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110" },
                      "recorded": "2026-03-02T10:00:00Z",
                      "agent": [{ "who": { "display": "forger" }, "requestor": true }],
                      "source": { "observer": { "display": "forger" } } },
        "request": { "method": "POST", "url": "AuditEvent" },
    });
    assert_outcome("transaction with an AuditEvent", &emr.post("", &with_audit).await, 403, "forbidden");

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored("refused").await, (0, 0), "nothing stored");
    assert_eq!(stored("audit").await, (0, 0), "nothing stored");
    assert_eq!(tree_size(&gateway, None).await, before, "nothing anchored on the ledger");

    // Control: with every scope the same transaction stores both, and the ledger grows by two.
    let accepted = emr.post("", &transaction("accepted")).await;
    assert_eq!(accepted.status, 200, "{}", accepted.text);
    assert_eq!(stored("accepted").await, (1, 1));
    assert_eq!(tree_size(&gateway, Some(before + 2)).await, before + 2);
}

// 14 -----------------------------------------------------------------------------------------

#[tokio::test]
async fn apps_cannot_write_audit_events_or_another_patients_consent() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;

    let audit_event = json!({
        "resourceType": "AuditEvent", "id": "forged",
        "type": { "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110" },
        "recorded": "2026-03-02T10:00:00Z",
        "outcome": "0",
        "agent": [{ "who": { "reference": "Practitioner/p1" }, "requestor": true }],
        "source": { "observer": { "display": "an app" } },
    });
    let writers = [
        emr,
        Caller::new(&gateway, &["--scope", "system/AuditEvent.cruds"]),
        Caller::new(&gateway, &["--scope", "user/*.cruds", "--fhir-user", "Practitioner/p1"]),
        patient_app(&gateway, "pat-a", "patient/*.cruds"),
    ];
    for caller in writers {
        assert_outcome("POST AuditEvent", &caller.post("AuditEvent", &audit_event).await, 403, "forbidden");
        assert_outcome("PUT AuditEvent", &caller.put("AuditEvent/forged", &audit_event).await, 403, "forbidden");
    }
    let emr = self::emr(&gateway);
    assert_eq!(emr.get("AuditEvent/forged").await.status, 404, "no AuditEvent was stored");
    // The trail holds only the gateway's own events: none names the forger's observer.
    let trail = patient_app(&gateway, "pat-a", "patient/*.rs").read("AuditEvent?patient=pat-a&_count=500").await;
    assert!(!trail.to_string().contains("an app"), "{trail}");

    // Patient A: B's Consent no, A's own Consent yes.
    let a = patient_app(&gateway, "pat-a", "patient/*.cruds");
    let b = patient_app(&gateway, "pat-b", "patient/*.cruds");
    let for_a = consent("ignored", "pat-a", json!({ "type": "permit", "actor": [recipient("Practitioner/p1")] }));
    let for_b = consent("ignored", "pat-b", json!({ "type": "permit", "actor": [recipient("Practitioner/mallory")] }));
    assert_outcome("A posting B's Consent", &a.post("Consent", &for_b).await, 403, "forbidden");
    let mut with_id = for_b.clone();
    with_id["id"] = json!("forged");
    assert_outcome("A putting B's Consent", &a.put("Consent/forged", &with_id).await, 403, "forbidden");
    let mallory = practitioner(&gateway, "mallory", &[]);
    assert_same_as_unknown(&mallory, "Observation/obs-b-lab", "Observation/no-such-observation").await;
    let created = a.expect_write(reqwest::Method::POST, "Consent", &for_a, 201).await;
    assert_eq!(created["patient"]["reference"], "Patient/pat-a");
    assert_eq!(practitioner(&gateway, "p1", &[]).read("Observation/obs-a-lab").await["id"], "obs-a-lab", "A's Consent applies");

    // B's own Consent cannot be changed, moved or deleted by A, who cannot see it: refused as an
    // unknown id would be.
    let mut b_consent = consent("consent-b", "pat-b", json!({ "type": "permit", "actor": [recipient("Practitioner/p2")] }));
    b.expect_write(reqwest::Method::PUT, "Consent/consent-b", &b_consent, 201).await;
    b_consent["status"] = json!("inactive");
    assert_outcome("A revoking B's Consent", &a.put("Consent/consent-b", &b_consent).await, 404, "not-found");
    b_consent["status"] = json!("active");
    b_consent["patient"]["reference"] = json!("Patient/pat-a");
    assert_outcome("A taking over B's Consent", &a.put("Consent/consent-b", &b_consent).await, 404, "not-found");
    assert_outcome("A deleting B's Consent", &a.delete("Consent/consent-b").await, 404, "not-found");
    let kept = b.read("Consent/consent-b").await;
    assert_eq!((kept["status"].as_str(), kept["meta"]["versionId"].as_str()), (Some("active"), Some("1")));
    assert_eq!(practitioner(&gateway, "p2", &[]).read("Observation/obs-b-lab").await["id"], "obs-b-lab", "B's Consent still applies");
}

// 15 -----------------------------------------------------------------------------------------

#[tokio::test]
async fn the_official_consent_examples_are_accepted_and_decide_as_documented() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    let directory = corpora().join("fhir-r4-examples/Consent");
    let mut files: Vec<_> = std::fs::read_dir(&directory).unwrap().map(|entry| entry.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 12, "{}", directory.display());

    // (name, server id, patient id)
    let mut stored: Vec<(String, String, String)> = Vec::new();
    for file in &files {
        let example: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        let created = emr.expect_write(reqwest::Method::POST, "Consent", &example, 201).await;
        let name = example["id"].as_str().unwrap().trim_start_matches("consent-example-").to_string();
        let patient = example["patient"]["reference"].as_str().unwrap().trim_start_matches("Patient/").to_string();
        stored.push((name, created["id"].as_str().unwrap().to_string(), patient));
    }

    // Every patient reads all of their own Consents (right of access).
    for (name, id, patient) in &stored {
        let own = patient_app(&gateway, patient, "patient/*.cruds");
        assert_eq!(own.read(&format!("Consent/{id}")).await["id"].as_str(), Some(id.as_str()), "{name}");
    }

    // The EMR wrote them all and reads for treatment, but while "notThis" (a deny for data
    // related to a Task, which cannot be resolved) and "notThem" (a deny for Practitioner/f204,
    // and a backend client cannot be shown not to be f204) are active, all of Patient/f001's
    // data is withheld from it, these Consents included (docs/CONSENT.md, "When the gateway
    // cannot tell: deny"). The three Consents of other patients stay readable.
    let readable_by_emr = |name: &str, f001_withheld: bool| !f001_withheld || ["pkb", "signature", "smartonfhir"].contains(&name);
    let check_emr = async |f001_withheld: bool, deleted: &[&str]| {
        let mut expected_total = 0;
        for (name, id, _) in stored.iter().filter(|(name, _, _)| !deleted.contains(&name.as_str())) {
            if readable_by_emr(name, f001_withheld) {
                expected_total += 1;
                assert_eq!(emr.read(&format!("Consent/{id}")).await["id"].as_str(), Some(id.as_str()), "{name}");
            } else {
                assert_same_as_unknown(&emr, &format!("Consent/{id}"), "Consent/no-such-consent").await;
            }
        }
        let search = emr.read("Consent?_count=100").await;
        assert_eq!(search["total"], expected_total, "{search}");
    };
    check_emr(true, &[]).await;

    // Patient f001 deletes them one by one: each alone withholds f001's data; without both the
    // EMR reads every remaining Consent again (the others do not apply to it: custodian or
    // recipient Organization/f001, purpose ETREAT, or a period long past).
    let f001 = patient_app(&gateway, "f001", "patient/*.cruds");
    let delete = async |name: &str| {
        let id = &stored.iter().find(|(candidate, _, _)| candidate == name).unwrap().1;
        assert_eq!(f001.delete(&format!("Consent/{id}")).await.status, 204, "{name}");
    };
    delete("notThis").await;
    check_emr(true, &["notThis"]).await;
    delete("notThem").await;
    check_emr(false, &["notThis", "notThem"]).await;
}

// Bugs found while writing these tests ------------------------------------------------------

/// A transaction or batch whose only entry is a conditional create of a Patient.
fn conditional_create(kind: &str, identifier: &str) -> Value {
    json!({
        "resourceType": "Bundle", "type": kind,
        "entry": [{
            "fullUrl": "urn:uuid:0c1a6a2e-8c55-4c52-9d46-2b4f5f0d6a11",
            "resource": { "resourceType": "Patient", "name": [{ "family": "Probe" }] },
            "request": { "method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={MRN}|{identifier}") },
        }],
    })
}

#[tokio::test]
async fn a_conditional_create_in_a_bundle_does_not_reveal_a_hidden_match() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    // Control: the EMR, who may read B's record, gets it back as the match.
    let control = emr.post("", &conditional_create("transaction", "B-1")).await;
    assert_eq!(control.status, 200, "{}", control.text);
    assert_eq!(control.json()["entry"][0]["resource"]["id"], "pat-b", "{}", control.text);

    for scope in ["patient/*.rs", "patient/*.cruds"] {
        let a = patient_app(&gateway, "pat-a", scope);
        for kind in ["transaction", "batch"] {
            let context = format!("{kind} with {scope}");
            let hidden = a.post("", &conditional_create(kind, "B-1")).await;
            let unknown = a.post("", &conditional_create(kind, "no-such-identifier")).await;
            assert_no_b_data(&context, &hidden);
            assert_eq!(hidden.normalized(), unknown.normalized(), "{context}: a hidden match must answer like no match");
        }
    }
}

#[tokio::test]
async fn a_conditional_reference_does_not_resolve_to_a_hidden_resource() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let a = patient_app(&gateway, "pat-a", "patient/*.cruds");
    let referring = |identifier: &str| {
        let mut panel = observation("ignored", "pat-a", "laboratory", "24323-8", "Metabolic panel", 1.0, "1", &[]);
        panel.as_object_mut().unwrap().remove("id");
        panel["identifier"][0]["value"] = json!(format!("panel-{identifier}"));
        panel["hasMember"] = json!([{ "reference": format!("Observation?identifier=urn:test:observation|{identifier}") }]);
        json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [{ "fullUrl": "urn:uuid:0c1a6a2e-8c55-4c52-9d46-2b4f5f0d6a12", "resource": panel,
                        "request": { "method": "POST", "url": "Observation" } }],
        })
    };
    // Control: a reference to A's own Observation resolves.
    let own = a.post("", &referring("obs-a-vital")).await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(own.json()["entry"][0]["resource"]["hasMember"][0]["reference"], "Observation/obs-a-vital", "{}", own.text);

    let hidden = a.post("", &referring("obs-b-lab2")).await;
    let unknown = a.post("", &referring("no-such-observation")).await;
    assert_eq!(unknown.status, 412, "{}", unknown.text);
    // The answer only echoes the caller's own query: the same words as for an unknown identifier.
    assert_eq!(hidden.text.replace("obs-b-lab2", "no-such-observation"), unknown.text, "a hidden match must answer like no match");
    assert_eq!(hidden.status, unknown.status, "a hidden match must answer like no match: {}", hidden.text);
    assert_eq!(hidden.json()["issue"][0]["code"], unknown.json()["issue"][0]["code"], "{}", hidden.text);
    let stored = a.read("Observation?identifier=urn:test:observation|panel-obs-b-lab2").await;
    assert_eq!(stored["total"], 0, "A's record must not learn B's id: {stored}");
}

#[tokio::test]
async fn a_bundle_get_of_a_hidden_deleted_resource_answers_like_an_unknown_id() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    assert_eq!(emr.delete("Observation/obs-b-lab").await.status, 204);
    let a = patient_app(&gateway, "pat-a", "patient/*.rs");
    let get = |kind: &str, url: &str| json!({ "resourceType": "Bundle", "type": kind, "entry": [{ "request": { "method": "GET", "url": url } }] });
    // Controls: outside a Bundle the same read is 404 like an unknown id; the EMR gets 410.
    assert_same_as_unknown(&a, "Observation/obs-b-lab", "Observation/no-such-observation").await;
    let control = emr.post("", &get("batch", "Observation/obs-b-lab")).await;
    assert_eq!(control.json()["entry"][0]["response"]["status"], "410 Gone", "{}", control.text);

    for kind in ["batch", "transaction"] {
        for (hidden, unknown) in [
            ("Observation/obs-b-lab", "Observation/no-such-observation"),
            ("Observation/obs-b-lab/_history/2", "Observation/no-such-observation/_history/2"),
        ] {
            let hidden_answer = a.post("", &get(kind, hidden)).await;
            let unknown_answer = a.post("", &get(kind, unknown)).await;
            assert_eq!(unknown_answer.json()["entry"][0]["response"]["status"], "404 Not Found", "{}", unknown_answer.text);
            assert_eq!(hidden_answer.normalized(), unknown_answer.normalized(), "{kind} GET {hidden} must answer like GET {unknown}");
        }
    }
}

#[tokio::test]
async fn denied_reads_can_be_configured_to_answer_forbidden() {
    let gateway = Gateway::start_with(&["--denied-reads", "forbidden"]).await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let a = patient_app(&gateway, "pat-a", "patient/*.rs");
    let refused = a.get("Observation/obs-b-vital").await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(refused.json()["issue"][0]["code"], "forbidden");
    assert!(!refused.text.contains("pat-b") && !refused.text.contains("8867-4"), "names no content: {}", refused.text);
    assert_eq!(a.get("Observation/no-such-observation").await.status, 404, "an unknown id is still not found");
    assert_eq!(a.get("Observation/obs-a-vital").await.status, 200);
    // Searches still leave hidden resources out rather than failing.
    let own = a.read("Observation").await;
    assert!(!own.to_string().contains("pat-b"), "{own}");
}

/// The leaves of the ledger (journal records: u32 length, bytes, 8-byte checksum).
fn ledger_entries(gateway: &Gateway) -> Vec<Value> {
    let bytes = std::fs::read(gateway.data.path().join("ledger/entries.log")).unwrap();
    let mut entries = Vec::new();
    let mut offset = 0;
    while offset + 4 <= bytes.len() {
        let length = u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
        entries.push(serde_json::from_slice(&bytes[offset + 4..offset + 4 + length]).unwrap());
        offset += 4 + length + 8;
    }
    entries
}

#[tokio::test]
async fn every_consent_grant_change_and_revocation_is_a_ledger_entry_without_phi() {
    let mut gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let b = patient_app(&gateway, "pat-b", "patient/*.cruds");
    let mut grant = consent(
        "consent-ledger",
        "pat-b",
        json!({ "type": "permit", "actor": [{
        "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP" }] },
        "reference": { "reference": "Practitioner/p-ledger" } }] }),
    );
    b.expect_write(reqwest::Method::PUT, "Consent/consent-ledger", &grant, 201).await;
    grant["provision"]["period"] = json!({ "end": "2099-01-01" });
    b.expect_write(reqwest::Method::PUT, "Consent/consent-ledger", &grant, 200).await;
    grant["status"] = json!("inactive");
    b.expect_write(reqwest::Method::PUT, "Consent/consent-ledger", &grant, 200).await;
    assert_eq!(b.delete("Consent/consent-ledger").await.status, 204);
    gateway.stop();

    let consents: Vec<Value> = ledger_entries(&gateway).into_iter().filter(|entry| entry["resourceType"] == "Consent").collect();
    let kinds: Vec<(&str, u64)> =
        consents.iter().map(|entry| (entry["kind"].as_str().unwrap(), entry["versionId"].as_u64().unwrap())).collect();
    assert_eq!(kinds, [("create", 1), ("update", 2), ("update", 3), ("delete", 4)], "{consents:#?}");
    // One pseudonym for the Consent, a keyed content hash per version, nothing readable.
    assert!(consents.iter().all(|entry| entry["pseudonym"] == consents[0]["pseudonym"]));
    assert!(consents[..3].iter().all(|entry| entry["contentHash"].as_str().is_some_and(|hash| hash.len() == 64)));
    let text = serde_json::to_string(&consents).unwrap();
    for secret in ["consent-ledger", "pat-b", "p-ledger", "inactive", "permit"] {
        assert!(!text.contains(secret), "the ledger names {secret}: {text}");
    }
}

#[tokio::test]
async fn patient_data_outside_the_compartment_definition_or_without_a_readable_patient_is_not_anyones() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    // A Task for B (Task is not in the R4 Patient compartment, but names B in `for`).
    let task = json!({ "resourceType": "Task", "id": "task-b", "status": "requested", "intent": "order",
                       "for": { "reference": "Patient/pat-b" } });
    emr.expect_write(reqwest::Method::PUT, "Task/task-b", &task, 201).await;
    // An Observation whose subject is contained: its patient cannot be determined.
    let contained = json!({ "resourceType": "Observation", "id": "obs-contained", "status": "final",
        "contained": [{ "resourceType": "Patient", "id": "p", "name": [{ "family": "Hidden" }] }],
        "code": { "coding": [{ "system": LOINC, "code": "8867-4" }] }, "subject": { "reference": "#p" } });
    emr.expect_write(reqwest::Method::PUT, "Observation/obs-contained", &contained, 201).await;

    let a = patient_app(&gateway, "pat-a", "patient/*.rs");
    assert_same_as_unknown(&a, "Task/task-b", "Task/no-such-task").await;
    assert_same_as_unknown(&a, "Observation/obs-contained", "Observation/no-such-observation").await;
    assert_eq!(a.read("Task").await["total"], 0);
    assert!(!a.read("Observation?_count=100").await.to_string().contains("obs-contained"));
    // A practitioner of another organisation: no Consent can name an unknown patient.
    let other = Caller::new(&gateway, &["--scope", "user/*.rs", "--fhir-user", "Practitioner/p9", "--organization", "Organization/other"]);
    assert_eq!(other.get("Observation/obs-contained").await.status, 404);
    // B reads the Task about them; the EMR that wrote both reads both for treatment.
    assert_eq!(patient_app(&gateway, "pat-b", "patient/*.rs").get("Task/task-b").await.status, 200);
    assert_eq!(emr.get("Task/task-b").await.status, 200);
    assert_eq!(emr.get("Observation/obs-contained").await.status, 200);
    // A patient app cannot write such data either.
    let writer = patient_app(&gateway, "pat-a", "patient/*.cruds");
    let mut mine = contained.clone();
    mine["id"] = json!("obs-contained-2");
    assert_outcome("contained subject", &writer.put("Observation/obs-contained-2", &mine).await, 403, "forbidden");
}

#[tokio::test]
async fn history_of_a_hidden_resource_is_refused_with_any_parameters_and_head_is_audited() {
    let gateway = Gateway::start().await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let a = patient_app(&gateway, "pat-a", "patient/*.rs");
    for query in ["", "?_count=0", "?_since=2000-01-01T00:00:00Z"] {
        assert_same_as_unknown(
            &a,
            &format!("Observation/obs-b-lab/_history{query}"),
            &format!("Observation/no-such-observation/_history{query}"),
        )
        .await;
    }
    // HEAD runs the read: it is audited like GET.
    let token = gateway.token(&["--scope", "patient/*.rs", "--patient", "pat-a", "--fhir-user", "Patient/pat-a"]);
    let head = reqwest::Client::new().head(gateway.url("Observation/obs-a-vital")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(head.status(), 200);
    let trail = a.read("AuditEvent?patient=pat-a&_count=500").await;
    let reads = trail["entry"].as_array().unwrap().iter().filter(|entry| {
        entry["resource"]["subtype"][0]["code"] == "read" && entry["resource"].to_string().contains("Observation/obs-a-vital")
    });
    assert_eq!(reads.count(), 1, "{trail}");
}

#[tokio::test]
async fn practitioners_record_consents_only_with_a_consent_recorder_role() {
    let gateway = Gateway::start_with(&["--consent-recorder-roles", "consent-desk"]).await;
    let emr = emr(&gateway);
    seed(&emr).await;
    let grant_self = consent("consent-self-granted", "pat-b", json!({ "type": "permit", "actor": [recipient("Practitioner/p1")] }));
    let practitioner =
        Caller::new(&gateway, &["--scope", "user/*.cruds", "--fhir-user", "Practitioner/p1", "--organization", "Organization/other"]);
    assert_outcome("self-granted Consent", &practitioner.put("Consent/consent-self-granted", &grant_self).await, 403, "forbidden");
    assert_eq!(practitioner.get("Observation/obs-b-vital").await.status, 404, "the refused Consent grants nothing");
    let desk = Caller::new(
        &gateway,
        &["--scope", "user/*.cruds", "--fhir-user", "Practitioner/clerk", "--organization", "Organization/other", "--role", "consent-desk"],
    );
    desk.expect_write(reqwest::Method::PUT, "Consent/consent-self-granted", &grant_self, 201).await;
    assert_eq!(practitioner.get("Observation/obs-b-vital").await.status, 200, "recorded on the patient's behalf");
}
