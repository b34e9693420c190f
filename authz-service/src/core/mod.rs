//! The decision core: FHIR request classification, SMART scopes and compartments, policy
//! steps, the Check driver and the answers. Plain values in, a [`policy::Decision`] out; no
//! I/O, no async, no dependency on a host.

pub mod answer;
pub mod audit;
pub mod compartment;
pub mod definitions;
pub mod discovery;
pub mod driver;
pub mod fhir;
pub mod granular;
pub mod json;
pub mod operations;
pub mod policy;
pub mod smart;
pub mod time;
