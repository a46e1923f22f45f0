//! fhir-gateway: a FHIR R4 gateway whose every write is validated, sealed, stored by IPFS CID and
//! anchored in a signed Merkle log before it is acknowledged. See ARCHITECTURE.md for the map.

pub mod access;
pub mod api;
pub mod audit;
pub mod auth;
pub mod blob;
pub mod config;
pub mod consent;
pub mod fhir;
pub mod flushed_index;
pub mod import;
pub mod journal;
pub mod ledger;
pub mod seal;
pub mod search;
pub mod server;
pub mod store;
pub mod verify;
