//! What a host runs around the core: the Check executor, the loaded config and its hot
//! reload, key sets and OAuth tokens fetched with backoff, compartment lookups, TLS trust.

pub mod audit;
pub mod backoff;
pub mod discovery;
pub mod executor;
pub mod http;
pub mod introspect;
pub mod jwks;
pub mod lookup;
pub mod oauth;
pub mod reload;
pub mod shared;
pub mod state;
pub mod tls;
