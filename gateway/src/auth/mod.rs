//! Who is asking: SMART App Launch v2 access tokens (resource-server side) and their scopes.
//! Pure apart from reading JWKS documents the caller hands in; no network, no clock.

pub mod scopes;
pub mod token;

pub use scopes::{Permission, Scope, ScopeContext, Scopes};
pub use token::{AccessToken, TokenError, TokenVerifier, TrustedIssuer};
