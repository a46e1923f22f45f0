//! Parsing of search requests.

use super::common::{pairs, parse, parse_ok, table};
use fhir_gateway::search::datetime::parse_date_range;
use fhir_gateway::search::{
    Chain, FilterValue, Include, Modifier, ParamType, Prefix, QueryError, Summary, TokenSystem, TotalMode, parse_query,
};

fn only_value(resource_type: &str, query: &str) -> FilterValue {
    let parsed = parse_ok(resource_type, query);
    assert_eq!(parsed.filters.len(), 1, "{query}");
    assert_eq!(parsed.filters[0].values.len(), 1, "{query}");
    parsed.filters[0].values[0].clone()
}

fn token(system: TokenSystem, code: Option<&str>) -> FilterValue {
    FilterValue::Token { system, code: code.map(str::to_string) }
}

#[test]
fn every_prefix_with_every_date_precision() {
    let prefixes = [
        ("", Prefix::Eq),
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("lt", Prefix::Lt),
        ("gt", Prefix::Gt),
        ("le", Prefix::Le),
        ("ge", Prefix::Ge),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for date in ["2013", "2013-01", "2013-01-14", "2013-01-14T10:00:00+01:00"] {
        let range = parse_date_range(date).unwrap();
        for (text, prefix) in prefixes {
            // `+` must arrive %-decoded; the pairs here are already decoded
            let value = only_value("Observation", &format!("date={text}{date}"));
            assert_eq!(value, FilterValue::Date { prefix, start_ms: range.start_ms, end_ms: range.end_ms }, "{text}{date}");
        }
    }
    // an unencoded `+` decoded to a space is tolerated
    assert_eq!(only_value("Patient", "birthdate=2013-01-14T10:00:00 01:00"), only_value("Patient", "birthdate=2013-01-14T10:00:00+01:00"));
    let value = only_value("Patient", "birthdate=2013-01-14T10:00:00+01:00");
    let FilterValue::Date { start_ms, end_ms, .. } = value else { panic!() };
    assert_eq!((start_ms, end_ms), (1_358_154_000_000, 1_358_154_000_999));
}

#[test]
fn token_forms() {
    let some = |s: &str| TokenSystem::Some(s.to_string());
    assert_eq!(only_value("Observation", "code=http://loinc.org|8480-6"), token(some("http://loinc.org"), Some("8480-6")));
    assert_eq!(only_value("Observation", "code=|8480-6"), token(TokenSystem::None, Some("8480-6")));
    assert_eq!(only_value("Observation", "code=8480-6"), token(TokenSystem::Any, Some("8480-6")));
    assert_eq!(only_value("Observation", "code=http://loinc.org|"), token(some("http://loinc.org"), None));
    assert_eq!(only_value("Observation", r"code=a\|b|c"), token(some("a|b"), Some("c")));
    assert!(matches!(parse("Observation", "code=|"), Err(QueryError::Invalid { .. })));
}

#[test]
fn modifiers() {
    let parsed = parse_ok("Observation", "status:not=final");
    assert_eq!(parsed.filters[0].modifier, Some(Modifier::Not));
    for (value, missing) in [("true", true), ("false", false)] {
        let parsed = parse_ok("Observation", &format!("category:missing={value}"));
        assert_eq!(parsed.filters[0].modifier, Some(Modifier::Missing(missing)));
        assert!(parsed.filters[0].values.is_empty());
    }
    assert!(matches!(parse("Observation", "category:missing=yes"), Err(QueryError::Invalid { .. })));
    assert_eq!(parse_ok("Patient", "family:exact=Chalmers").filters[0].modifier, Some(Modifier::Exact));
    assert_eq!(parse_ok("Patient", "family:contains=alm").filters[0].modifier, Some(Modifier::Contains));
    assert_eq!(parse_ok("Observation", "code:text=weight").filters[0].values, [FilterValue::String("weight".into())]);
    assert_eq!(parse_ok("Observation", "_profile:below=http://x/").filters[0].modifier, Some(Modifier::Below));
    let typed = parse_ok("Observation", "subject:Patient=123");
    assert_eq!(typed.filters[0].modifier, Some(Modifier::Type("Patient".into())));
    assert_eq!(typed.filters[0].values, [FilterValue::Reference { target: "Patient/123".into() }]);
    let identifier = parse_ok("Observation", "subject:identifier=urn:sys|42");
    assert_eq!(identifier.filters[0].values, [token(TokenSystem::Some("urn:sys".into()), Some("42"))]);
    // not supported: terminology / wrong-type modifiers
    for query in ["code:below=x", "code:in=x", "code:of-type=a|b|c", "family:not=x", "date:exact=2013"] {
        assert_eq!(parse("Observation", query).err(), Some(QueryError::Unsupported(query.split('=').next().unwrap().into())), "{query}");
    }
    assert!(matches!(parse("Observation", "subject:Medication=1"), Err(QueryError::Invalid { .. })));
}

#[test]
fn quantities_and_numbers() {
    assert_eq!(
        only_value("Observation", "value-quantity=5.4|http://unitsofmeasure.org|mg"),
        FilterValue::Quantity {
            prefix: Prefix::Eq,
            value: 5.4,
            value_text: "5.4".into(),
            system: Some("http://unitsofmeasure.org".into()),
            code: Some("mg".into()),
        }
    );
    assert_eq!(
        only_value("Observation", "value-quantity=ge5.4"),
        FilterValue::Quantity { prefix: Prefix::Ge, value: 5.4, value_text: "5.4".into(), system: None, code: None }
    );
    assert_eq!(
        only_value("Observation", "value-quantity=ap5.4||mg"),
        FilterValue::Quantity { prefix: Prefix::Ap, value: 5.4, value_text: "5.4".into(), system: None, code: Some("mg".into()) }
    );
    assert_eq!(
        only_value("RiskAssessment", "probability=gt0.8"),
        FilterValue::Number { prefix: Prefix::Gt, value: 0.8, value_text: "0.8".into() }
    );
    for bad in ["value-quantity=abc", "value-quantity=5.4|a|b|c", "value-quantity=gt", "value-quantity=1e999"] {
        assert!(matches!(parse("Observation", bad), Err(QueryError::Invalid { .. })), "{bad}");
    }
}

#[test]
fn composites() {
    let value = only_value("Observation", "component-code-value-quantity=http://loinc.org|8480-6$gt100");
    assert_eq!(
        value,
        FilterValue::Composite(vec![
            token(TokenSystem::Some("http://loinc.org".into()), Some("8480-6")),
            FilterValue::Quantity { prefix: Prefix::Gt, value: 100.0, value_text: "100".into(), system: None, code: None },
        ])
    );
    assert!(matches!(parse("Observation", "code-value-quantity=8480-6"), Err(QueryError::Invalid { .. })));
    assert!(matches!(parse("Observation", "code-value-quantity=a$b$c"), Err(QueryError::Invalid { .. })));
    // an escaped `$` is not a separator
    assert!(matches!(parse("Observation", r"code-value-quantity=a\$b"), Err(QueryError::Invalid { .. })));
}

#[test]
fn or_and_and_escaping() {
    let or = parse_ok("Observation", "code=a,b,http://loinc.org|c");
    assert_eq!(or.filters.len(), 1);
    assert_eq!(or.filters[0].values.len(), 3);
    let and = parse_ok("Observation", "code=a&code=b&status=final");
    assert_eq!(and.filters.len(), 3);
    let escaped = parse_ok("Patient", r"family=Smith\, Jr,Jones");
    assert_eq!(escaped.filters[0].values, [FilterValue::String("Smith, Jr".into()), FilterValue::String("Jones".into())]);
    // empty values are ignored, and so are empty OR items
    assert!(parse_ok("Patient", "family=&gender=").filters.is_empty());
    assert_eq!(parse_ok("Patient", "family=a,,b").filters[0].values.len(), 2);
}

#[test]
fn references() {
    let target = |q: &str| match only_value("Observation", q) {
        FilterValue::Reference { target } => target,
        other => panic!("{other:?}"),
    };
    assert_eq!(target("subject=Patient/123"), "Patient/123");
    assert_eq!(target("subject=http://example.org/fhir/Patient/123/_history/2"), "Patient/123");
    assert_eq!(target("subject=urn:uuid:1234"), "urn:uuid:1234");
    // several target types: the id alone
    assert_eq!(target("subject=123"), "123");
    // a single target type: completed
    assert_eq!(target("specimen=s1"), "Specimen/s1");
    assert_eq!(target("encounter=e1"), "e1");
}

#[test]
fn result_parameters() {
    let parsed = parse_ok(
        "Observation",
        "_count=20&_sort=-date,_id,code&_summary=count&_elements=id,code&_total=accurate&_format=json&_pretty=true\
         &_include=Observation:subject:Patient&_include=*&_revinclude:iterate=Provenance:target\
         &_include:iterate=Observation:*",
    );
    assert_eq!(parsed.count, Some(20));
    let sort: Vec<(&str, bool)> = parsed.sort.iter().map(|k| (k.param.as_str(), k.descending)).collect();
    assert_eq!(sort, [("date", true), ("_id", false), ("code", false)]);
    assert_eq!(parsed.sort[0].param_type, ParamType::Date);
    assert_eq!(parsed.summary, Some(Summary::Count));
    assert_eq!(parsed.elements, ["id", "code"]);
    assert_eq!(parsed.total, Some(TotalMode::Accurate));
    assert_eq!(
        parsed.includes,
        [
            Include {
                source_type: Some("Observation".into()),
                param: Some("subject".into()),
                target_type: Some("Patient".into()),
                iterate: false
            },
            Include { source_type: None, param: None, target_type: None, iterate: false },
            Include { source_type: Some("Observation".into()), param: None, target_type: None, iterate: true },
        ]
    );
    assert_eq!(
        parsed.revincludes,
        [Include { source_type: Some("Provenance".into()), param: Some("target".into()), target_type: None, iterate: true }]
    );
    assert!(parsed.filters.is_empty());

    for bad in ["_count=-1", "_count=x", "_summary=maybe", "_total=all", "_include=Observation", "_include=Nope:x"] {
        assert!(matches!(parse("Observation", bad), Err(QueryError::Invalid { .. })), "{bad}");
    }
    for unsupported in ["_sort=subject", "_sort=nope", "_include=Observation:code", "_include:weird=*"] {
        assert!(matches!(parse("Observation", unsupported), Err(QueryError::Unsupported(_))), "{unsupported}");
    }
}

#[test]
fn unknown_parameters_and_lenient_mode() {
    assert_eq!(parse("Observation", "foo=bar"), Err(QueryError::Unsupported("foo".into())));
    assert_eq!(parse("Observation", "_text=x"), Err(QueryError::Unsupported("_text".into())));
    assert_eq!(parse("Patient", "deceased=true"), Err(QueryError::Unsupported("deceased".into())));
    let lenient = parse_query(table(), "Observation", &pairs("foo=bar&code:below=x&status=final&_sort=nope"), true).expect("lenient");
    assert_eq!(lenient.unknown, ["foo", "code:below", "_sort=nope"]);
    assert_eq!(lenient.filters.len(), 1);
    // invalid values are errors even when lenient
    assert!(parse_query(table(), "Observation", &pairs("date=2013-13"), true).is_err());
    assert!(matches!(parse("Observation", "date=yesterday"), Err(QueryError::Invalid { .. })));
    assert_eq!(parse("NoSuchType", "a=b"), Err(QueryError::Unsupported("NoSuchType".into())));
}

#[test]
fn chains() {
    let parsed = parse_ok("Observation", "subject:Patient.name=peter");
    let filter = &parsed.filters[0];
    assert_eq!(filter.param, "subject");
    let Some(Chain::Forward { target_types, filter: inner }) = filter.chain.as_deref() else { panic!() };
    assert_eq!(target_types, &["Patient"]);
    assert_eq!((inner.param.as_str(), inner.param_type), ("name", ParamType::String));

    // no explicit type: the targets that have the inner parameter
    let parsed = parse_ok("Observation", "subject.birthdate=1974");
    let Some(Chain::Forward { target_types, .. }) = parsed.filters[0].chain.as_deref() else { panic!() };
    assert!(target_types.contains(&"Patient".to_string()));
    assert!(!target_types.contains(&"Device".to_string()));

    // two levels
    let parsed = parse_ok("Observation", "patient.organization.name=acme");
    let Some(Chain::Forward { filter: level1, .. }) = parsed.filters[0].chain.as_deref() else { panic!() };
    assert!(matches!(level1.chain.as_deref(), Some(Chain::Forward { .. })));

    let parsed = parse_ok("Patient", "_has:Observation:patient:code=1234-5");
    let Some(Chain::Reverse { source_type, reference_param, filter }) = parsed.filters[0].chain.as_deref() else { panic!() };
    assert_eq!((source_type.as_str(), reference_param.as_str(), filter.param.as_str()), ("Observation", "patient", "code"));

    assert!(matches!(parse("Observation", "code.name=x"), Err(QueryError::Invalid { .. })));
    assert!(matches!(parse("Patient", "_has:Observation:code:code=x"), Err(QueryError::Invalid { .. })));
    assert!(matches!(parse("Observation", "subject.nope=x"), Err(QueryError::Unsupported(_))));
    // at most MAX_CHAIN_DEPTH (3) links, whether the query is lenient or not
    parse_ok("Observation", "patient.organization.partof.name=x");
    let deep = "patient.organization.partof.partof.name=x";
    assert!(matches!(parse("Observation", deep), Err(QueryError::Invalid { .. })), "{:?}", parse("Observation", deep));
}
