//! Stored resources a decision asked for: the keys the core names and the answers a host brings
//! back.

use super::*;

/// A stored resource a decision depends on: the current version, or one version (vread).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupKey {
    pub resource_type: String,
    pub id: String,
    pub version: Option<String>,
    /// The answer decides a write: it must be fetched now, never taken from a cache (a
    /// resource moved to another patient, or created under an id that was empty a moment
    /// ago, must not be written on the strength of an old answer).
    pub for_write: bool,
}

impl LookupKey {
    pub fn current(resource_type: &str, id: &str) -> Self {
        LookupKey {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            version: None,
            for_write: false,
        }
    }

    /// The current version, fetched fresh because a write depends on it.
    pub fn for_write(resource_type: &str, id: &str) -> Self {
        LookupKey {
            for_write: true,
            ..Self::current(resource_type, id)
        }
    }

    /// The same resource as a read would ask for it (the key fresh answers are cached under).
    pub fn read(&self) -> Self {
        LookupKey {
            for_write: false,
            ..self.clone()
        }
    }

    /// The path to fetch, relative to the server's base.
    pub fn path(&self) -> String {
        match &self.version {
            None => format!("{}/{}", self.resource_type, self.id),
            Some(v) => format!("{}/{}/_history/{v}", self.resource_type, self.id),
        }
    }
}

/// What is stored under a lookup key.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Found(Arc<serde_json::Value>),
    /// 404: nothing was ever stored there (as far as the server says).
    NotFound,
    /// 410: something was stored and deleted. It existed, and whose it was is unknown: not
    /// free to overwrite.
    Gone,
}

/// Answers of compartment lookups.
pub type Lookups = std::collections::HashMap<LookupKey, Stored>;
