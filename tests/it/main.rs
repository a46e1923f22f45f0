//! The one integration-test binary. Every test talks to a real `fhir-gateway` process over HTTP
//! on loopback (see `harness`), with its own data directory.

mod audit;
mod auth;
mod availability;
mod bundles;
mod cli;
mod consent;
mod damage;
mod erasure;
mod harness;
mod import;
mod openapi;
mod persistence;
mod rest;
mod roundtrip;
mod search;
mod search_core;
mod validation;
mod write_access;
