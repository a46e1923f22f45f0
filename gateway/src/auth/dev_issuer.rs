//! The development issuer: an Ed25519 key in the data directory (`keys/dev-issuer.key`, 0600)
//! from which `fhir-gateway token` mints access tokens, so a newcomer (and the tests) can call the
//! API without an authorisation server. Whoever can read the data directory can mint tokens; a
//! production gateway turns it off (`--dev-issuer false`) and trusts its real issuers' JWKS.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use super::token::TrustedIssuer;

/// The `iss` of development tokens.
pub const DEV_ISSUER: &str = "urn:fhir-gateway:dev-issuer";
const KEY_ID: &str = "dev-issuer";

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410 §7), followed by the 32-byte seed.
const PKCS8_ED25519_PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// What a minted token says.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The FHIR base the token is for (`aud`).
    pub audience: String,
    pub scope: String,
    pub patient: Option<String>,
    pub fhir_user: Option<String>,
    pub subject: String,
    pub lifetime_seconds: u64,
    /// `organization` claim, e.g. `Organization/local`.
    pub organization: Option<String>,
    /// `purpose_of_use` claim (v3-ActReason codes).
    pub purpose_of_use: Vec<String>,
    /// `subject_role` claim.
    pub roles: Vec<String>,
    /// `break_glass_reason` claim.
    pub break_glass_reason: Option<String>,
}

pub struct DevIssuer {
    seed: [u8; 32],
}

impl DevIssuer {
    /// Loads the key from `<keys directory>/dev-issuer.key`, creating it on first use.
    pub fn load_or_create(keys_directory: &Path) -> Result<DevIssuer, String> {
        let seed =
            crate::seal::keyring::read_or_create_secret(&keys_directory.join("dev-issuer.key")).map_err(|error| error.to_string())?;
        Ok(DevIssuer { seed })
    }

    /// The issuer's public JWKS document.
    pub fn jwks(&self) -> Value {
        let public = SigningKey::from_bytes(&self.seed).verifying_key().to_bytes();
        json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig", "kid": KEY_ID, "x": URL_SAFE_NO_PAD.encode(public)}]})
    }

    pub fn trusted(&self) -> TrustedIssuer {
        TrustedIssuer::from_jwks(DEV_ISSUER, &self.jwks().to_string()).expect("the development JWKS is well formed")
    }

    /// A signed access token, valid from `now` (seconds since the epoch).
    pub fn mint(&self, request: &TokenRequest, now: u64) -> String {
        let mut claims = json!({
            "iss": DEV_ISSUER,
            "aud": request.audience,
            "sub": request.subject,
            "client_id": "fhir-gateway-token-cli",
            "scope": request.scope,
            "iat": now,
            "nbf": now,
            "exp": now + request.lifetime_seconds,
        });
        if let Some(patient) = &request.patient {
            claims["patient"] = json!(patient);
        }
        if let Some(fhir_user) = &request.fhir_user {
            claims["fhirUser"] = json!(fhir_user);
        }
        if let Some(organization) = &request.organization {
            claims["organization"] = json!(organization);
        }
        if !request.purpose_of_use.is_empty() {
            claims["purpose_of_use"] = json!(request.purpose_of_use);
        }
        if !request.roles.is_empty() {
            claims["subject_role"] = json!(request.roles);
        }
        if let Some(reason) = &request.break_glass_reason {
            claims["break_glass_reason"] = json!(reason);
        }
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&self.seed);
        let header = Header { kid: Some(KEY_ID.to_string()), ..Header::new(Algorithm::EdDSA) };
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ed_der(&der)).expect("an Ed25519 key signs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::{TokenError, TokenVerifier};

    #[test]
    fn minted_tokens_verify_only_with_their_own_key_and_audience() {
        let directory = std::env::temp_dir().join(format!("fg-dev-issuer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&directory);
        let issuer = DevIssuer::load_or_create(&directory).unwrap();
        assert_eq!(DevIssuer::load_or_create(&directory).unwrap().jwks(), issuer.jwks(), "the key persists");
        let request = TokenRequest {
            audience: "http://127.0.0.1:8080/fhir".into(),
            scope: "patient/Observation.rs".into(),
            patient: Some("A".into()),
            fhir_user: Some("Patient/A".into()),
            subject: "alice".into(),
            lifetime_seconds: 3600,
            organization: None,
            purpose_of_use: vec!["TREAT".into()],
            roles: Vec::new(),
            break_glass_reason: None,
        };
        let now = 1_800_000_000;
        let token = issuer.mint(&request, now);
        let verifier = TokenVerifier::new(vec![issuer.trusted()], "http://127.0.0.1:8080/fhir");
        let verified = verifier.verify(&token, now + 10).unwrap();
        assert_eq!(verified.patient.as_deref(), Some("A"));
        assert_eq!(verified.subject.as_deref(), Some("alice"));
        assert_eq!(verified.purpose_of_use, ["TREAT"]);
        assert_eq!(verifier.verify(&token, now + 3600 + 31), Err(TokenError::Expired));
        let elsewhere = TokenVerifier::new(vec![issuer.trusted()], "https://other.example/fhir");
        assert_eq!(elsewhere.verify(&token, now), Err(TokenError::Audience));
        std::fs::remove_dir_all(&directory).unwrap();
        let other = DevIssuer::load_or_create(&directory).unwrap();
        let other_verifier = TokenVerifier::new(vec![other.trusted()], "http://127.0.0.1:8080/fhir");
        assert_eq!(other_verifier.verify(&token, now), Err(TokenError::Signature), "another data directory's key");
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
