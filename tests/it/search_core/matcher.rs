//! The pure matcher: for each query form, one resource that matches and one that does not.

use super::common::{NOW_MS, example, parse_ok, table};
use fhir_gateway::search::matcher::NoLookup;
use fhir_gateway::search::{MatchContext, ResourceSet, matches, matches_with};
use serde_json::{Value, json};

fn is_match(query: &str, resource: &Value) -> bool {
    let resource_type = resource["resourceType"].as_str().expect("resourceType");
    let parsed = parse_ok(resource_type, query);
    matches_with(table(), &parsed, resource, &MatchContext { now_ms: NOW_MS, lookup: &NoLookup })
}

/// `query` matches `yes` and does not match `no`.
fn check(query: &str, yes: &Value, no: &Value) {
    assert!(is_match(query, yes), "{query} should match {yes}");
    assert!(!is_match(query, no), "{query} should not match {no}");
}

fn observation_on(effective: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "effectiveDateTime": effective})
}

#[test]
fn date_prefixes_on_partial_dates() {
    // For every precision: (search value, a date inside it, one before, one after).
    let cases = [
        ("2013", "2013-06-01", "2012-12-31", "2014-01-01"),
        ("2013-01", "2013-01-20", "2012-12-31", "2013-02-01"),
        ("2013-01-14", "2013-01-14T12:00:00Z", "2013-01-13", "2013-01-15"),
        ("2013-01-14T10:00:00+01:00", "2013-01-14T09:00:00Z", "2013-01-14T08:59:59Z", "2013-01-14T09:00:01Z"),
    ];
    for (search, inside, before, after) in cases {
        let [inside, before, after] = [inside, before, after].map(observation_on);
        // (prefix, matching target, non-matching target)
        for (prefix, yes, no) in [
            ("", &inside, &after),
            ("eq", &inside, &before),
            ("ne", &after, &inside),
            ("lt", &before, &inside),
            ("gt", &after, &inside),
            ("le", &inside, &after),
            ("le", &before, &after),
            ("ge", &inside, &before),
            ("ge", &after, &before),
            ("sa", &after, &inside),
            ("eb", &before, &after),
            ("ap", &inside, &observation_on("1990-01-01")),
        ] {
            check(&format!("date={prefix}{search}"), yes, no);
        }
    }
}

#[test]
fn date_ranges_of_resources() {
    let period = |start: Option<&str>, end: Option<&str>| json!({"resourceType": "Encounter", "period": {"start": start, "end": end}});
    let january = period(Some("2013-01-01"), Some("2013-01-31"));
    let open_ended = period(Some("2012-06-01"), None);
    // eq needs the whole period inside the search range
    check("date=2013-01", &january, &open_ended);
    // a period straddling the search value: lt and gt both hold, eq does not
    let straddle = period(Some("2012-12-15"), Some("2013-02-15"));
    assert!(is_match("date=lt2013-01", &straddle) && is_match("date=gt2013-01", &straddle));
    assert!(!is_match("date=2013-01", &straddle));
    // open end: starts before, never ends before
    check("date=lt2013", &open_ended, &january);
    check("date=gt2020", &open_ended, &january);
    check("date=eb2013", &period(Some("2012-01-01"), Some("2012-12-31")), &open_ended);
    // a birth date (whole day) against a search instant inside that day: not eq, but ap
    let patient = json!({"resourceType": "Patient", "birthDate": "1974-12-25"});
    assert!(!is_match("birthdate=1974-12-25T12:00:00Z", &patient));
    assert!(is_match("birthdate=ap1974-12-25T12:00:00Z", &patient));
    check("birthdate=1974", &patient, &json!({"resourceType": "Patient", "birthDate": "1975-01-01"}));
    check("birthdate:missing=true", &json!({"resourceType": "Patient"}), &patient);
}

#[test]
fn tokens() {
    let weight = example("Observation", "example");
    let pressure = example("Observation", "blood-pressure");
    check("code=http://loinc.org|29463-7", &weight, &pressure);
    check("code=29463-7", &weight, &pressure);
    check("code=http://snomed.info/sct|", &weight, &pressure);
    let local = json!({"resourceType": "Observation", "code": {"coding": [{"code": "x1"}]}});
    let with_system = json!({"resourceType": "Observation", "code": {"coding": [{"system": "urn:s", "code": "x1"}]}});
    check("code=|x1", &local, &with_system);
    check("code=urn:s|x1", &with_system, &local);
    check("code=http://loinc.org|8480-6,http://loinc.org|29463-7", &weight, &json!({"resourceType": "Observation"}));
    let amended = json!({"resourceType": "Observation", "status": "amended"});
    check("status:not=final", &amended, &weight);
    check("status:not=final,preliminary", &json!({"resourceType": "Observation"}), &weight);
    check("category:missing=true", &amended, &weight);
    check("category:missing=false", &weight, &amended);
    check("code:text=body wei", &weight, &pressure);
    check("code:text=blood pressure systolic", &pressure, &weight);
    // identifiers, contact points, booleans, ids
    let patient = example("Patient", "example");
    let other = example("Patient", "pat2");
    check("identifier=urn:oid:1.2.36.146.595.217.0.1|12345", &patient, &other);
    check("identifier=12345", &patient, &other);
    check("phone=(03) 5555 6473", &patient, &other);
    check("telecom=phone|(03) 3410 5613", &patient, &other);
    check("active=true", &patient, &json!({"resourceType": "Patient", "active": false}));
    check("gender=male", &patient, &json!({"resourceType": "Patient", "gender": "female"}));
    check("_id=example", &patient, &other);
}

#[test]
fn strings() {
    let chalmers = example("Patient", "example");
    let other = example("Patient", "pat2");
    check("family=chal", &chalmers, &other);
    check("family=CHALMERS", &chalmers, &other);
    check("name=jim", &chalmers, &other);
    check("family:exact=Chalmers", &chalmers, &json!({"resourceType": "Patient", "name": [{"family": "chalmers"}]}));
    check("family:contains=ALM", &chalmers, &other);
    check("address-postalcode=39", &chalmers, &other);
    check("address=pleasantv", &chalmers, &other);
    // default string search is starts-with, per part
    check("address:contains=erewhon", &chalmers, &other);
    assert!(!is_match("address=erewhon", &chalmers));
    let dvorak = json!({"resourceType": "Patient", "name": [{"family": "Dvořák"}]});
    check("family=dvorak", &dvorak, &chalmers);
    check("family=DVOŘ", &dvorak, &chalmers);
    check("family:exact=Dvořák", &dvorak, &json!({"resourceType": "Patient", "name": [{"family": "Dvorak"}]}));
    // escaped comma: one value "smith, jr", not "smith" OR ""
    let smith_jr = json!({"resourceType": "Patient", "name": [{"family": "Smith, Jr"}]});
    let smith = json!({"resourceType": "Patient", "name": [{"family": "Smith"}]});
    check(r"family=smith\, j", &smith_jr, &smith);
    assert!(is_match("family=smith, j", &smith), "unescaped comma is OR");
    check("family=smith&given=peter", &json!({"resourceType": "Patient", "name": [{"family": "Smith", "given": ["Peter"]}]}), &smith);
}

#[test]
fn quantities_and_numbers() {
    let quantity = |value: Value, code: &str| {
        json!({"resourceType": "Observation", "valueQuantity": {
            "value": value, "unit": code, "system": "http://unitsofmeasure.org", "code": code}})
    };
    let mg = quantity(json!(5.4), "mg");
    let mg_more = quantity(json!(5.5), "mg");
    let kg = quantity(json!(5.4), "kg");
    check("value-quantity=5.4|http://unitsofmeasure.org|mg", &mg, &mg_more);
    check("value-quantity=5.4|http://unitsofmeasure.org|mg", &mg, &kg);
    check("value-quantity=5.4||mg", &mg, &kg);
    check("value-quantity=ge5.4", &mg_more, &quantity(json!(5.3), "mg"));
    check("value-quantity=gt5.4", &mg_more, &mg);
    check("value-quantity=le5.4|http://unitsofmeasure.org|mg", &mg, &mg_more);
    check("value-quantity=lt5.5", &mg, &mg_more);
    check("value-quantity=ne5.4", &mg_more, &mg);
    check("value-quantity=ap5", &mg, &quantity(json!(5.6), "mg"));
    check("value-quantity=sa5.4", &mg_more, &mg);
    check("value-quantity=eb5.5", &mg, &mg_more);
    // implicit precision: 100 means [99.5, 100.5)
    check("value-quantity=100", &quantity(json!(100.4), "mg"), &quantity(json!(100.5), "mg"));
    check("value-quantity=5.40", &quantity(json!(5.404), "mg"), &quantity(json!(5.41), "mg"));
    // unit-only match (no system) against the `unit` text
    let lbs = example("Observation", "example");
    check("value-quantity=185||lbs", &lbs, &mg);
    check("value-quantity=185|http://unitsofmeasure.org|[lb_av]", &lbs, &mg);
    // numbers
    let risk = |p: f64| json!({"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": p}]});
    check("probability=gt0.8", &risk(0.9), &risk(0.8));
    check("probability=0.8", &risk(0.84), &risk(0.86));
    check("probability=le0.5,ge0.9", &risk(0.95), &risk(0.7));
}

#[test]
fn composites() {
    let pressure = example("Observation", "blood-pressure");
    let component = |code: &str, value: i64| {
        json!({"code": {"coding": [{"system": "http://loinc.org", "code": code}]},
               "valueQuantity": {"value": value, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}})
    };
    let low = json!({"resourceType": "Observation", "component": [component("8480-6", 95), component("8462-4", 60)]});
    // systolic 60, diastolic 107: both values exist, but not in the same component
    let swapped = json!({"resourceType": "Observation", "component": [component("8480-6", 60), component("8462-4", 107)]});
    check("component-code-value-quantity=http://loinc.org|8480-6$gt100", &pressure, &low);
    check("component-code-value-quantity=http://loinc.org|8480-6$gt100", &pressure, &swapped);
    check("component-code-value-quantity=8462-4$lt70|http://unitsofmeasure.org|mm[Hg]", &pressure, &swapped);
    check("combo-code-value-quantity=http://loinc.org|8480-6$107", &pressure, &low);
    let weight = example("Observation", "example");
    check("code-value-quantity=http://loinc.org|29463-7$185", &weight, &pressure);
    check("code-value-quantity=29463-7$ge200,3141-9$lt190", &weight, &pressure);
    check("code-value-quantity:missing=true", &pressure, &weight);
}

#[test]
fn references_and_uris() {
    let weight = example("Observation", "example");
    let other = json!({"resourceType": "Observation", "subject": {"reference": "Patient/other"}});
    check("subject=Patient/example", &weight, &other);
    check("subject=http://example.org/fhir/Patient/example", &weight, &other);
    check("subject:Patient=example", &weight, &other);
    check("patient=example", &weight, &other);
    check("encounter=example", &weight, &other);
    check("subject:missing=true", &json!({"resourceType": "Observation"}), &weight);
    let pressure = example("Observation", "blood-pressure");
    check("based-on:identifier=https://acme.org/identifiers|1234", &pressure, &weight);
    check("_profile=http://hl7.org/fhir/StructureDefinition/vitalsigns", &pressure, &weight);
    check("_profile:below=http://hl7.org/fhir/StructureDefinition/", &pressure, &weight);
    check("_profile:above=http://hl7.org/fhir/StructureDefinition/vitalsigns/extra", &pressure, &weight);
}

#[test]
fn and_of_several_filters_and_wrong_type() {
    let weight = example("Observation", "example");
    let amended = json!({"resourceType": "Observation", "status": "amended",
                         "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}});
    check("code=29463-7&status=final", &weight, &amended);
    check("code=29463-7&code=27113001", &weight, &amended);
    // a query for another type never matches
    let query = parse_ok("Patient", "_id=example");
    assert!(!matches(table(), &query, &weight));
    // no filters: every resource of the type
    assert!(matches(table(), &parse_ok("Observation", "_count=5"), &weight));
}

#[test]
fn chains_with_a_resource_set() {
    let patient = example("Patient", "example");
    let pat2 = example("Patient", "pat2");
    let weight = example("Observation", "example");
    let pressure = example("Observation", "blood-pressure");
    let organization = json!({"resourceType": "Organization", "id": "1", "name": "ACME Healthcare"});
    let on_pat2 = json!({"resourceType": "Observation", "id": "o2", "subject": {"reference": "Patient/pat2"}});
    let set = ResourceSet::new([&patient, &pat2, &weight, &pressure, &organization, &on_pat2]);
    let ids = |resource_type: &str, query: &str| -> Vec<String> {
        set.search(table(), &parse_ok(resource_type, query)).into_iter().map(|r| r["id"].as_str().unwrap_or_default().to_string()).collect()
    };
    assert_eq!(ids("Observation", "subject:Patient.name=chalmers"), ["example", "blood-pressure"]);
    assert_eq!(ids("Observation", "subject.family=nobody"), Vec::<String>::new());
    // Patient/example and Patient/pat2 are both managed by Organization/1
    assert_eq!(ids("Observation", "patient.organization.name=acme"), ["example", "blood-pressure", "o2"]);
    assert_eq!(ids("Observation", "patient.organization.name=other"), Vec::<String>::new());
    assert_eq!(ids("Patient", "_has:Observation:patient:code=29463-7"), ["example"]);
    assert_eq!(ids("Patient", "_has:Observation:subject:_id=o2"), ["pat2"]);
    assert_eq!(ids("Observation", "code=85354-9"), ["blood-pressure"]);
    // without a lookup, chains cannot match
    assert!(!matches(table(), &parse_ok("Observation", "subject:Patient.name=chalmers"), &weight));
}
