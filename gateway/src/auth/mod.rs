//! Who is asking: SMART App Launch v2 access tokens (resource-server side) and their scopes.
//! No network and no clock here: the caller passes JWKS documents and the time. The development
//! issuer reads (or creates) its key in the data directory.

pub mod dev_issuer;
pub mod remote;
pub mod scopes;
pub mod smart_configuration;
pub mod token;

pub use scopes::{Permission, Scope, ScopeContext, Scopes};
pub use token::{AccessToken, TokenError, TokenVerifier, TrustedIssuer};
