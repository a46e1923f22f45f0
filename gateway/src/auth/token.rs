//! Bearer access tokens (SMART App Launch v2, resource-server side): JWT verification against
//! the JWKS of configured issuers. The caller passes the time, so decisions are reproducible.
//!
//! Order of checks, each failing closed: the header names an allowed asymmetric algorithm
//! (RS256, RS384, ES256, ES384, EdDSA; never `none`, never HMAC: a public key can never act as
//! an HMAC secret); the (unverified) `iss` names a configured issuer; the header's `kid` names
//! one of that issuer's keys (or the issuer has exactly one key and no `kid` is given); the key's
//! type and curve fit the algorithm, and its own `alg`, if stated, is the header's; the signature
//! verifies (jsonwebtoken); `iss` and `aud` (this FHIR base) match exactly; `exp` is present and
//! not past, `nbf` not in the future (both with a small leeway); and the SMART context claims the
//! scopes need are there (`patient` for `patient/` scopes, `fhirUser` for `user/` scopes).

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::scopes::{ScopeContext, Scopes};
use crate::fhir::is_valid_id;

/// Accepted signature algorithms (SMART: RS256 and ES384 at least).
pub const ALGORITHMS: [Algorithm; 5] = [Algorithm::RS256, Algorithm::RS384, Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA];

/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECONDS: u64 = 30;

/// Why a token was refused. The messages name the failed check, never token contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is not a well-formed JWT")]
    Malformed,
    #[error("the access token's signature algorithm is not accepted (accepted: RS256, RS384, ES256, ES384, EdDSA)")]
    Algorithm,
    #[error("the access token's issuer is not trusted by this server")]
    UnknownIssuer,
    #[error("the access token's key id is not among its issuer's keys")]
    UnknownKey,
    #[error("the access token's algorithm does not fit its issuer's key")]
    KeyMismatch,
    #[error("the access token's signature does not verify")]
    Signature,
    #[error("the access token is not meant for this server (aud)")]
    Audience,
    #[error("the access token has expired")]
    Expired,
    #[error("the access token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the access token has no expiry (exp)")]
    NoExpiry,
    #[error("the access token has a patient/ scope but no patient claim")]
    MissingPatient,
    #[error("the access token has a user/ scope but no fhirUser claim")]
    MissingFhirUser,
    #[error("the access token's patient claim is not a FHIR id")]
    InvalidPatient,
    #[error("the access token's fhirUser claim is not a reference to a Patient, Practitioner, PractitionerRole, RelatedPerson or Person")]
    InvalidFhirUser,
    #[error("the authorisation server says the access token is not active")]
    Inactive,
    #[error("the authorisation server could not be asked about the access token")]
    IntrospectionUnavailable,
}

/// What a verified token says about who is asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub issuer: String,
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub scopes: Scopes,
    /// Every scope of the token as written, also those granting no resource permission (an
    /// operation scope such as the one `Patient/$purge` asks for).
    pub scope_names: Vec<String>,
    /// The patient in context (`patient` claim): a Patient id (checked to be a FHIR id).
    pub patient: Option<String>,
    /// The user (`fhirUser`), as the relative reference it names: `Practitioner/123` (the claim
    /// may be that or a resource URL ending in it; checked to be a user type and a FHIR id).
    pub fhir_user: Option<String>,
    /// Seconds since the epoch.
    pub expires_at: u64,
    /// `nbf`, seconds since the epoch.
    pub not_before: Option<u64>,
    /// The requester's organisation (`organization` claim), e.g. `Organization/x`.
    pub organization: Option<String>,
    /// Purposes of use (`purpose_of_use` claim, v3-ActReason codes such as `TREAT`, `ETREAT`).
    pub purpose_of_use: Vec<String>,
    /// The user's roles (`subject_role` claim), compared with the configured emergency roles.
    pub roles: Vec<String>,
    /// The stated reason of a break-the-glass token (`break_glass_reason` claim).
    pub break_glass_reason: Option<String>,
}

impl AccessToken {
    /// `exp` and `nbf` against `now`, with [`LEEWAY_SECONDS`].
    fn check_time(&self, now: u64) -> Result<(), TokenError> {
        if now > self.expires_at.saturating_add(LEEWAY_SECONDS) {
            return Err(TokenError::Expired);
        }
        if self.not_before.is_some_and(|not_before| not_before > now.saturating_add(LEEWAY_SECONDS)) {
            return Err(TokenError::NotYetValid);
        }
        Ok(())
    }
}

/// One trusted authorisation server and its public keys.
pub struct TrustedIssuer {
    pub issuer: String,
    keys: Vec<(Jwk, DecodingKey)>,
}

impl TrustedIssuer {
    /// `jwks` is the issuer's JWKS document (`{"keys":[...]}`). Symmetric (`oct`) keys are
    /// refused: this server only verifies signatures made with private keys it never sees.
    pub fn from_jwks(issuer: &str, jwks: &str) -> Result<TrustedIssuer, String> {
        let set: JwkSet = serde_json::from_str(jwks).map_err(|error| format!("JWKS of {issuer}: {error}"))?;
        let mut keys = Vec::with_capacity(set.keys.len());
        for jwk in set.keys {
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                return Err(format!("JWKS of {issuer}: symmetric (oct) keys are not accepted"));
            }
            let key = DecodingKey::from_jwk(&jwk).map_err(|error| format!("JWKS of {issuer}: {error}"))?;
            keys.push((jwk, key));
        }
        if keys.is_empty() {
            return Err(format!("JWKS of {issuer} has no keys"));
        }
        Ok(TrustedIssuer { issuer: issuer.to_string(), keys })
    }

    fn key(&self, kid: Option<&str>) -> Option<&(Jwk, DecodingKey)> {
        match kid {
            Some(kid) => self.keys.iter().find(|(jwk, _)| jwk.common.key_id.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }
}

/// Whether a JWK may verify a signature made with `algorithm`.
fn key_fits(jwk: &Jwk, algorithm: Algorithm) -> bool {
    let stated = match jwk.common.key_algorithm {
        None => true,
        Some(stated) => matches!(
            (stated, algorithm),
            (KeyAlgorithm::RS256, Algorithm::RS256)
                | (KeyAlgorithm::RS384, Algorithm::RS384)
                | (KeyAlgorithm::ES256, Algorithm::ES256)
                | (KeyAlgorithm::ES384, Algorithm::ES384)
                | (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
        ),
    };
    let shape = match (&jwk.algorithm, algorithm) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256 | Algorithm::RS384) => true,
        (AlgorithmParameters::EllipticCurve(params), Algorithm::ES256) => params.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(params), Algorithm::ES384) => params.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(params), Algorithm::EdDSA) => params.curve == EllipticCurve::Ed25519,
        _ => false,
    };
    stated && shape
}

/// Tokens whose signature and claims were verified, kept so a client sending the same token on
/// every request pays the signature check once. Bounded; cleared of expired tokens when full.
const VERIFIED_CAPACITY: usize = 10_000;

/// Verifies access tokens for one FHIR base (the `aud` every token must name).
pub struct TokenVerifier {
    /// Replaced whole when an issuer's JWKS is fetched again (`replace_keys`).
    issuers: RwLock<Vec<Arc<TrustedIssuer>>>,
    audience: String,
    /// SHA-256 of the token → what it says. Only the time checks depend on the request, and
    /// they run on every use; the issuers and keys are fixed for the verifier's lifetime.
    verified: RwLock<HashMap<[u8; 32], Arc<AccessToken>>>,
}

impl TokenVerifier {
    pub fn new(issuers: Vec<TrustedIssuer>, audience: &str) -> TokenVerifier {
        let issuers = issuers.into_iter().map(Arc::new).collect();
        TokenVerifier { issuers: RwLock::new(issuers), audience: audience.to_string(), verified: RwLock::new(HashMap::new()) }
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Replaces the keys of a trusted issuer with a newly fetched JWKS (key rotation). Tokens
    /// already verified stay verified until they expire.
    pub fn replace_keys(&self, issuer: &str, jwks: &str) -> Result<(), String> {
        let fresh = Arc::new(TrustedIssuer::from_jwks(issuer, jwks)?);
        let mut issuers = self.issuers.write().expect("issuers lock");
        match issuers.iter_mut().find(|known| known.issuer == issuer) {
            Some(known) => *known = fresh,
            None => issuers.push(fresh),
        }
        Ok(())
    }

    /// The issuer a JWT names (unverified: only to decide where to look for its keys).
    pub fn claimed_issuer(token: &str) -> Option<String> {
        let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(token).ok()?;
        claims.get("iss").and_then(Value::as_str).map(str::to_string)
    }

    /// Verifies `token` at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<AccessToken>, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = self.verified.read().expect("verified tokens lock").get(&digest).cloned();
        if let Some(cached) = cached {
            cached.check_time(now)?;
            return Ok(cached);
        }
        let verified = Arc::new(self.verify_signed(token, now)?);
        let mut cache = self.verified.write().expect("verified tokens lock");
        if cache.len() >= VERIFIED_CAPACITY {
            cache.retain(|_, token| token.check_time(now).is_ok());
            if cache.len() >= VERIFIED_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(digest, Arc::clone(&verified));
        Ok(verified)
    }

    /// The full check: header, issuer, key, signature, claims, time.
    fn verify_signed(&self, token: &str, now: u64) -> Result<AccessToken, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Algorithm)?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(TokenError::Algorithm);
        }
        // Only to choose the issuer's keys; nothing else is read before the signature checks.
        let unverified: Value = jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| TokenError::Malformed)?;
        let issuer_name = unverified.get("iss").and_then(Value::as_str).ok_or(TokenError::UnknownIssuer)?;
        let issuer = {
            let issuers = self.issuers.read().expect("issuers lock");
            Arc::clone(issuers.iter().find(|issuer| issuer.issuer == issuer_name).ok_or(TokenError::UnknownIssuer)?)
        };
        let (jwk, key) = issuer.key(header.kid.as_deref()).ok_or(TokenError::UnknownKey)?;
        if !key_fits(jwk, header.alg) {
            return Err(TokenError::KeyMismatch);
        }

        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.audience]);
        validation.set_issuer(&[&issuer.issuer]);
        // Time is checked below against the caller's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        let claims = jsonwebtoken::decode::<Value>(token, key, &validation).map_err(|error| {
            use jsonwebtoken::errors::ErrorKind;
            match error.kind() {
                ErrorKind::InvalidAudience | ErrorKind::MissingRequiredClaim(_) => TokenError::Audience,
                ErrorKind::InvalidIssuer => TokenError::UnknownIssuer,
                ErrorKind::InvalidSignature | ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => TokenError::Signature,
                ErrorKind::InvalidAlgorithm => TokenError::KeyMismatch,
                _ => TokenError::Malformed,
            }
        })?;
        let claims = claims.claims;
        if claims.get("aud").is_none() {
            return Err(TokenError::Audience);
        }
        access_token(issuer.issuer.clone(), &claims, now)
    }

    /// The answer of an RFC 7662 introspection endpoint about an opaque token: `active` must be
    /// true, `aud` must name this server, and the same claims are read and checked as in a JWT
    /// (`exp`, `nbf`, `scope`, SMART `patient`/`fhirUser`, …). `issuer` names the endpoint.
    pub fn from_introspection(&self, issuer: &str, response: &Value, now: u64) -> Result<AccessToken, TokenError> {
        if response.get("active").and_then(Value::as_bool) != Some(true) {
            return Err(TokenError::Inactive);
        }
        let audience_matches = match response.get("aud") {
            Some(Value::String(audience)) => *audience == self.audience,
            Some(Value::Array(audiences)) => audiences.iter().any(|audience| audience.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !audience_matches {
            return Err(TokenError::Audience);
        }
        let issuer = response.get("iss").and_then(Value::as_str).unwrap_or(issuer).to_string();
        access_token(issuer, response, now)
    }
}

/// What verified claims (of a JWT, or of an introspection answer) say, once `exp`, `nbf` and the
/// SMART context claims check out.
fn access_token(issuer: String, claims: &Value, now: u64) -> Result<AccessToken, TokenError> {
    let seconds = |name: &str| claims.get(name).and_then(|value| value.as_u64().or_else(|| value.as_f64().map(|value| value as u64)));
    let expires_at = seconds("exp").ok_or(TokenError::NoExpiry)?;
    let text = |name: &str| claims.get(name).and_then(Value::as_str).filter(|text| !text.is_empty()).map(str::to_string);
    let scope_text = claims.get("scope").and_then(Value::as_str).unwrap_or_default();
    let scopes = Scopes::parse(scope_text);
    let token = AccessToken {
        issuer,
        subject: text("sub"),
        client_id: text("client_id"),
        patient: text("patient")
            .map(|patient| if is_valid_id(&patient) { Ok(patient) } else { Err(TokenError::InvalidPatient) })
            .transpose()?,
        fhir_user: text("fhirUser").map(|user| user_reference(&user).ok_or(TokenError::InvalidFhirUser)).transpose()?,
        scopes,
        scope_names: scope_text.split_ascii_whitespace().map(str::to_string).collect(),
        expires_at,
        not_before: seconds("nbf"),
        organization: text("organization"),
        purpose_of_use: codes(claims.get("purpose_of_use")),
        roles: codes(claims.get("subject_role")),
        break_glass_reason: text("break_glass_reason"),
    };
    token.check_time(now)?;
    if token.scopes.has_context(ScopeContext::Patient) && token.patient.is_none() {
        return Err(TokenError::MissingPatient);
    }
    if token.scopes.has_context(ScopeContext::User) && token.fhir_user.is_none() {
        return Err(TokenError::MissingFhirUser);
    }
    Ok(token)
}

/// The relative reference (`Practitioner/123`) a `fhirUser` claim names: the claim is that, or
/// a resource URL ending in it (`https://ehr.example/fhir/Practitioner/123`). The type must be one
/// SMART allows for a user, the id a FHIR id; anything else (`Patient/?`, `Patient/a/b`) is `None`.
pub fn user_reference(claim: &str) -> Option<String> {
    const USER_TYPES: [&str; 5] = ["Patient", "Practitioner", "PractitionerRole", "RelatedPerson", "Person"];
    let mut parts = claim.rsplitn(3, '/');
    let (id, resource_type) = (parts.next()?, parts.next()?);
    let prefix_fits = match parts.next() {
        None => true,
        Some(base) => base.starts_with("https://") || base.starts_with("http://"),
    };
    (prefix_fits && USER_TYPES.contains(&resource_type) && is_valid_id(id)).then(|| format!("{resource_type}/{id}"))
}

/// A claim holding codes: a space-separated string, an array of strings, or an array of
/// `Coding`-like objects (`{"system": …, "code": …}`; the code is kept).
fn codes(claim: Option<&Value>) -> Vec<String> {
    match claim {
        Some(Value::String(text)) => text.split_ascii_whitespace().map(str::to_string).collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|item| item.as_str().or_else(|| item.get("code").and_then(Value::as_str)))
            .filter(|code| !code.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const ISSUER: &str = "https://issuer.test";
    const AUDIENCE: &str = "http://127.0.0.1:8080/fhir";
    const NOW: u64 = 1_800_000_000;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{}/fixtures/auth/{name}", env!("CARGO_MANIFEST_DIR"))).expect("test key fixture")
    }

    fn verifier() -> TokenVerifier {
        TokenVerifier::new(vec![TrustedIssuer::from_jwks(ISSUER, &fixture("test-issuer.jwks.json")).unwrap()], AUDIENCE)
    }

    fn claims() -> Value {
        json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "app-user-1", "client_id": "growth-chart",
            "exp": NOW + 300, "nbf": NOW - 10, "iat": NOW - 10,
            "scope": "openid fhirUser launch/patient patient/Observation.rs patient/Patient.r",
            "patient": "A", "fhirUser": "Patient/A",
        })
    }

    fn sign(algorithm: Algorithm, kid: Option<&str>, pem: &str, claims: &Value) -> String {
        let key = match algorithm {
            Algorithm::RS256 | Algorithm::RS384 => EncodingKey::from_rsa_pem(pem.as_bytes()),
            Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(pem.as_bytes()),
            _ => EncodingKey::from_ed_pem(pem.as_bytes()),
        }
        .unwrap();
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    fn rs256(claims: &Value) -> String {
        sign(Algorithm::RS256, Some("test-rsa"), &fixture("test-rsa.pem"), claims)
    }

    /// A token assembled by hand: `header.payload.signature`.
    fn forged(header: &Value, claims: &Value, signature: &[u8]) -> String {
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(signature)
        )
    }

    #[test]
    fn every_accepted_algorithm_verifies() {
        for (algorithm, kid, pem) in [
            (Algorithm::RS256, "test-rsa", "test-rsa.pem"),
            (Algorithm::RS384, "test-rsa-384", "test-rsa.pem"),
            (Algorithm::ES256, "test-es256", "test-es256.pem"),
            (Algorithm::ES384, "test-es384", "test-es384.pem"),
            (Algorithm::EdDSA, "test-eddsa", "test-eddsa.pem"),
        ] {
            let token = verifier()
                .verify(&sign(algorithm, Some(kid), &fixture(pem), &claims()), NOW)
                .unwrap_or_else(|error| panic!("{algorithm:?}: {error}"));
            assert_eq!(token.patient.as_deref(), Some("A"));
            assert_eq!(token.fhir_user.as_deref(), Some("Patient/A"));
            assert_eq!(token.client_id.as_deref(), Some("growth-chart"));
            assert_eq!(token.scopes.0.len(), 2);
            assert_eq!(token.expires_at, NOW + 300);
        }
    }

    #[test]
    fn time_checks_use_a_small_leeway() {
        let verifier = verifier();
        let mut expired = claims();
        expired["exp"] = json!(NOW - LEEWAY_SECONDS - 1);
        assert_eq!(verifier.verify(&rs256(&expired), NOW), Err(TokenError::Expired));
        expired["exp"] = json!(NOW - LEEWAY_SECONDS + 1);
        assert!(verifier.verify(&rs256(&expired), NOW).is_ok(), "within the leeway");
        let mut early = claims();
        early["nbf"] = json!(NOW + LEEWAY_SECONDS + 1);
        assert_eq!(verifier.verify(&rs256(&early), NOW), Err(TokenError::NotYetValid));
        let mut eternal = claims();
        eternal.as_object_mut().unwrap().remove("exp");
        assert_eq!(verifier.verify(&rs256(&eternal), NOW), Err(TokenError::NoExpiry));
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_changed_one_is_checked_again() {
        let verifier = verifier();
        let token = rs256(&claims());
        assert!(verifier.verify(&token, NOW).is_ok());
        assert!(verifier.verify(&token, NOW + 300).is_ok(), "second use: remembered, still within exp");
        assert_eq!(verifier.verify(&token, NOW + 300 + LEEWAY_SECONDS + 1), Err(TokenError::Expired));
        let mut early = claims();
        early["nbf"] = json!(NOW + 100);
        let early = rs256(&early);
        assert!(verifier.verify(&early, NOW + 100).is_ok());
        assert_eq!(verifier.verify(&early, NOW), Err(TokenError::NotYetValid), "nbf is checked on every use");
        // One changed signature byte: not the remembered token, so fully checked (and refused).
        let mut forged = token.into_bytes();
        let last = forged.len() - 2;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        assert!(verifier.verify(std::str::from_utf8(&forged).unwrap(), NOW).is_err());
    }

    #[test]
    fn audience_and_issuer_must_match_exactly() {
        let verifier = verifier();
        for audience in [json!("http://127.0.0.1:8080/fhir/"), json!("https://other.example/fhir"), json!(["https://other.example/fhir"])] {
            let mut wrong = claims();
            wrong["aud"] = audience.clone();
            assert_eq!(verifier.verify(&rs256(&wrong), NOW), Err(TokenError::Audience), "{audience}");
        }
        let mut missing = claims();
        missing.as_object_mut().unwrap().remove("aud");
        assert_eq!(verifier.verify(&rs256(&missing), NOW), Err(TokenError::Audience));
        let mut in_list = claims();
        in_list["aud"] = json!(["https://other.example/fhir", AUDIENCE]);
        assert!(verifier.verify(&rs256(&in_list), NOW).is_ok(), "aud may be a list that includes this server");
        let mut other_issuer = claims();
        other_issuer["iss"] = json!("https://evil.test");
        assert_eq!(verifier.verify(&rs256(&other_issuer), NOW), Err(TokenError::UnknownIssuer));
    }

    #[test]
    fn algorithm_attacks_are_refused() {
        let verifier = verifier();
        // alg: none, with and without a signature.
        let none = json!({"alg": "none", "typ": "JWT"});
        assert_eq!(verifier.verify(&forged(&none, &claims(), b""), NOW), Err(TokenError::Algorithm));
        assert_eq!(verifier.verify(&forged(&none, &claims(), b"signature"), NOW), Err(TokenError::Algorithm));
        // HS256 "signed" with the issuer's RSA public key (the classic key-confusion attack).
        let jwks: Value = serde_json::from_str(&fixture("test-issuer.jwks.json")).unwrap();
        let public_key_text = jwks["keys"][0].to_string();
        let header = Header { kid: Some("test-rsa".into()), ..Header::new(Algorithm::HS256) };
        let hs256 = jsonwebtoken::encode(&header, &claims(), &EncodingKey::from_secret(public_key_text.as_bytes())).unwrap();
        assert_eq!(verifier.verify(&hs256, NOW), Err(TokenError::Algorithm));
        // A header algorithm that does not fit the named key: ES256 over the RSA key's kid.
        let es_as_rsa = sign(Algorithm::ES256, Some("test-rsa"), &fixture("test-es256.pem"), &claims());
        assert_eq!(verifier.verify(&es_as_rsa, NOW), Err(TokenError::KeyMismatch));
        // RS384 under a kid whose JWK says RS256.
        let rs384_as_rs256 = sign(Algorithm::RS384, Some("test-rsa"), &fixture("test-rsa.pem"), &claims());
        assert_eq!(verifier.verify(&rs384_as_rs256, NOW), Err(TokenError::KeyMismatch));
        // ES384 over the P-256 key.
        let wrong_curve = sign(Algorithm::ES384, Some("test-es256"), &fixture("test-es384.pem"), &claims());
        assert_eq!(verifier.verify(&wrong_curve, NOW), Err(TokenError::KeyMismatch));
    }

    #[test]
    fn keys_and_signatures() {
        let verifier = verifier();
        let unknown_kid = sign(Algorithm::RS256, Some("rotated-away"), &fixture("test-rsa.pem"), &claims());
        assert_eq!(verifier.verify(&unknown_kid, NOW), Err(TokenError::UnknownKey));
        let no_kid = sign(Algorithm::RS256, None, &fixture("test-rsa.pem"), &claims());
        assert_eq!(verifier.verify(&no_kid, NOW), Err(TokenError::UnknownKey), "several keys: kid required");
        let other_key = sign(Algorithm::RS256, Some("test-rsa"), &fixture("other-rsa.pem"), &claims());
        assert_eq!(verifier.verify(&other_key, NOW), Err(TokenError::Signature));
        // A valid token whose payload is swapped for another patient's keeps its signature.
        let token = rs256(&claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let mut other = claims();
        other["patient"] = json!("B");
        let payload = URL_SAFE_NO_PAD.encode(other.to_string());
        parts[1] = &payload;
        assert_eq!(verifier.verify(&parts.join("."), NOW), Err(TokenError::Signature));
        assert_eq!(verifier.verify("not-a-token", NOW), Err(TokenError::Algorithm));
        assert_eq!(verifier.verify("", NOW), Err(TokenError::Algorithm));
    }

    #[test]
    fn context_claims_are_required_by_their_scopes() {
        let verifier = verifier();
        let mut no_patient = claims();
        no_patient.as_object_mut().unwrap().remove("patient");
        assert_eq!(verifier.verify(&rs256(&no_patient), NOW), Err(TokenError::MissingPatient));
        let mut user = claims();
        user["scope"] = json!("user/*.rs");
        user.as_object_mut().unwrap().remove("fhirUser");
        assert_eq!(verifier.verify(&rs256(&user), NOW), Err(TokenError::MissingFhirUser));
        let mut system = claims();
        system["scope"] = json!("system/Patient.rs");
        system.as_object_mut().unwrap().remove("patient");
        system.as_object_mut().unwrap().remove("fhirUser");
        assert!(verifier.verify(&rs256(&system), NOW).is_ok(), "backend services need no patient or user");
    }

    #[test]
    fn symmetric_keys_are_not_accepted_in_a_jwks() {
        let jwks = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "shared"}]}).to_string();
        assert!(TrustedIssuer::from_jwks(ISSUER, &jwks).is_err());
        assert!(TrustedIssuer::from_jwks(ISSUER, r#"{"keys":[]}"#).is_err());
    }

    #[test]
    fn introspection_answers_are_checked_like_tokens() {
        let verifier = verifier();
        let active = json!({
            "active": true, "aud": AUDIENCE, "exp": NOW + 60, "client_id": "lab-portal", "sub": "u1",
            "scope": "openid patient/Observation.rs", "patient": "A", "iss": "https://as.example",
        });
        let token = verifier.from_introspection("https://as.example/introspect", &active, NOW).unwrap();
        assert_eq!(token.issuer, "https://as.example");
        assert_eq!(token.patient.as_deref(), Some("A"));
        assert_eq!(token.scopes.0.len(), 1);
        let with = |field: &str, value: Value| {
            let mut answer = active.clone();
            answer[field] = value;
            verifier.from_introspection("https://as.example/introspect", &answer, NOW)
        };
        assert_eq!(with("active", json!(false)), Err(TokenError::Inactive));
        assert_eq!(with("active", json!("true")), Err(TokenError::Inactive), "active must be the boolean true");
        assert_eq!(with("aud", json!("https://other.example/fhir")), Err(TokenError::Audience));
        assert_eq!(with("aud", json!(["https://other.example/fhir", AUDIENCE])).map(|token| token.subject), Ok(Some("u1".into())));
        assert_eq!(with("exp", json!(NOW - 3600)), Err(TokenError::Expired));
        assert_eq!(with("patient", Value::Null), Err(TokenError::MissingPatient));
        let mut no_audience = active.clone();
        no_audience.as_object_mut().unwrap().remove("aud");
        assert_eq!(verifier.from_introspection("x", &no_audience, NOW), Err(TokenError::Audience), "fail closed without aud");
        assert_eq!(verifier.from_introspection("x", &json!({"active": false}), NOW), Err(TokenError::Inactive));
    }
}
