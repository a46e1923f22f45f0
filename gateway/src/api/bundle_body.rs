//! Response Bundles (searchset, history, batch/transaction-response) written straight from the
//! stored bytes: an entry's `resource` is the sealed store's canonical JSON, copied, never
//! parsed into a tree and serialised again (a 4 MB Bundle response would otherwise hold every
//! resource twice more in memory).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::fhir_response;

/// One response entry: its fields (`fullUrl`, `search`, `request`, `response`, …) and the
/// stored resource, if any.
pub struct Entry {
    pub fields: Value,
    pub resource: Option<Resource>,
}

pub enum Resource {
    /// Canonical JSON bytes of a stored version, as the store returned them.
    Stored(Vec<u8>),
    /// A resource built or changed here (an OperationOutcome, an `_elements` subset).
    Value(Value),
}

/// `envelope` is the Bundle without `entry` (an object); the entries follow in order.
pub fn bundle_response(envelope: Value, entries: Vec<Entry>) -> Response {
    let mut out = serde_json::to_vec(&envelope).expect("a JSON value serialises");
    if entries.is_empty() {
        return fhir_response(StatusCode::OK, out);
    }
    debug_assert_eq!(out.last(), Some(&b'}'), "the envelope is an object");
    out.pop();
    out.extend_from_slice(if out.len() > 1 { b",\"entry\":[" } else { b"\"entry\":[" });
    for (position, entry) in entries.into_iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        let fields = serde_json::to_vec(&entry.fields).expect("a JSON value serialises");
        out.push(b'{');
        if let Some(resource) = entry.resource {
            out.extend_from_slice(b"\"resource\":");
            match resource {
                Resource::Stored(bytes) => out.extend_from_slice(&bytes),
                Resource::Value(value) => serde_json::to_writer(&mut out, &value).expect("a JSON value serialises"),
            }
            if fields.len() > 2 {
                out.push(b',');
            }
        }
        // `fields` is an object: its members without the braces.
        out.extend_from_slice(&fields[1..fields.len() - 1]);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    fhir_response(StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    async fn body(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        serde_json::from_slice(&bytes).expect("valid JSON")
    }

    #[tokio::test]
    async fn entries_embed_stored_bytes_verbatim_and_stay_valid_json() {
        let stored = br#"{"id":"a","resourceType":"Observation","valueQuantity":{"value":37.50}}"#;
        let response = bundle_response(
            json!({"resourceType": "Bundle", "type": "searchset"}),
            vec![
                Entry {
                    fields: json!({"fullUrl": "http://x/Observation/a", "search": {"mode": "match"}}),
                    resource: Some(Resource::Stored(stored.to_vec())),
                },
                Entry { fields: json!({}), resource: Some(Resource::Value(json!({"resourceType": "OperationOutcome"}))) },
                Entry { fields: json!({"response": {"status": "204 No Content"}}), resource: None },
            ],
        );
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
        let text = std::str::from_utf8(&bytes).unwrap();
        assert!(text.contains(r#""value":37.50"#), "decimals verbatim: {text}");
        let bundle: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(bundle["entry"][0]["resource"]["id"], "a");
        assert_eq!(bundle["entry"][0]["search"]["mode"], "match");
        assert_eq!(bundle["entry"][1], json!({"resource": {"resourceType": "OperationOutcome"}}));
        assert_eq!(bundle["entry"][2], json!({"response": {"status": "204 No Content"}}));
        assert_eq!(bundle["type"], "searchset");
    }

    #[tokio::test]
    async fn no_entries_and_an_empty_envelope() {
        assert_eq!(body(bundle_response(json!({"type": "history"}), vec![])).await, json!({"type": "history"}));
        assert_eq!(body(bundle_response(json!({}), vec![Entry { fields: json!({}), resource: None }])).await, json!({"entry": [{}]}));
    }
}
