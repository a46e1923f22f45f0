//! `[base]/.well-known/smart-configuration` (SMART App Launch v2 §2.0.7): the authorisation
//! server's metadata, which the integrator provides as a JSON file because the gateway is the
//! resource server, not the authorisation server. It is checked once at start for the fields
//! SMART requires, so a client never discovers a half-configured server.

use serde_json::Value;

/// Fields SMART App Launch v2 requires in the document.
pub const REQUIRED: [&str; 5] =
    ["authorization_endpoint", "token_endpoint", "capabilities", "code_challenge_methods_supported", "grant_types_supported"];

/// Checks a SMART configuration document; the error names what is missing or wrong.
pub fn check(document: &str) -> Result<Value, String> {
    let value: Value = serde_json::from_str(document).map_err(|error| format!("not JSON: {error}"))?;
    let object = value.as_object().ok_or("not a JSON object")?;
    let missing: Vec<&str> = REQUIRED.iter().copied().filter(|field| !object.contains_key(*field)).collect();
    if !missing.is_empty() {
        return Err(format!("missing required fields: {}", missing.join(", ")));
    }
    for field in ["capabilities", "code_challenge_methods_supported", "grant_types_supported"] {
        if !object[field].as_array().is_some_and(|items| items.iter().all(Value::is_string)) {
            return Err(format!("{field} must be an array of strings"));
        }
    }
    for field in ["authorization_endpoint", "token_endpoint"] {
        if !object[field].as_str().is_some_and(|url| url.starts_with("https://") || url.starts_with("http://")) {
            return Err(format!("{field} must be an http(s) URL"));
        }
    }
    let methods = object["code_challenge_methods_supported"].as_array().expect("checked above");
    if !methods.iter().any(|method| method == "S256") || methods.iter().any(|method| method == "plain") {
        return Err("code_challenge_methods_supported must include S256 and must not include plain".into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn complete() -> Value {
        json!({
            "issuer": "https://auth.example.org",
            "authorization_endpoint": "https://auth.example.org/authorize",
            "token_endpoint": "https://auth.example.org/token",
            "capabilities": ["launch-standalone", "client-public", "permission-v2", "permission-patient", "context-standalone-patient"],
            "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "client_credentials"],
        })
    }

    #[test]
    fn a_complete_document_is_served_as_given() {
        assert_eq!(check(&complete().to_string()).unwrap(), complete());
    }

    #[test]
    fn incomplete_or_unsafe_documents_are_refused() {
        for field in REQUIRED {
            let mut document = complete();
            document.as_object_mut().unwrap().remove(field);
            let error = check(&document.to_string()).unwrap_err();
            assert!(error.contains(field), "{field}: {error}");
        }
        let mut plain = complete();
        plain["code_challenge_methods_supported"] = json!(["S256", "plain"]);
        assert!(check(&plain.to_string()).unwrap_err().contains("plain"));
        let mut no_s256 = complete();
        no_s256["code_challenge_methods_supported"] = json!(["S384"]);
        assert!(check(&no_s256.to_string()).is_err());
        let mut not_url = complete();
        not_url["token_endpoint"] = json!("token");
        assert!(check(&not_url.to_string()).unwrap_err().contains("token_endpoint"));
        assert!(check("[]").is_err());
        assert!(check("{").is_err());
    }
}
