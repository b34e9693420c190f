//! Resources as read (from the API server or from files), before the compile: metadata, the
//! typed object when its spec could be read, and what the shape check found. The controller and
//! `render` both go through [`parse`], so a malformed object gets the same messages in an
//! `Accepted=False` condition as on `render`'s stderr, and one malformed object never stops the
//! others from being read (a typed watch would fail the whole list on it).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::shape::{self, Checked, ShapeProblem};
use super::{FhirConnection, FhirSecurityPolicy, ObjectStatus};

/// One resource as read.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<K> {
    pub meta: ObjectMeta,
    /// The typed object. When `shape` is not empty this holds the cleaned spec (unknown fields
    /// dropped, unusable parts left out or replaced), compiled only to report further problems;
    /// `None` when not even that could be read.
    pub object: Option<K>,
    /// Problems with the spec's shape; any of them keeps the object out of the config.
    pub shape: Vec<ShapeProblem>,
    /// The status as stored, for computing transitions.
    pub status: Option<ObjectStatus>,
}

impl<K> Loaded<K> {
    pub fn namespace(&self) -> String {
        self.meta.namespace.clone().unwrap_or_default()
    }

    pub fn name(&self) -> String {
        self.meta.name.clone().unwrap_or_default()
    }
}

impl Loaded<FhirSecurityPolicy> {
    /// A typed object that needs no shape check (built in code, or already typed).
    pub fn valid(p: FhirSecurityPolicy) -> Self {
        Loaded {
            meta: p.metadata.clone(),
            status: p.status.clone(),
            object: Some(p),
            shape: Vec::new(),
        }
    }
}

impl Loaded<FhirConnection> {
    pub fn valid(c: FhirConnection) -> Self {
        Loaded {
            meta: c.metadata.clone(),
            status: c.status.clone(),
            object: Some(c),
            shape: Vec::new(),
        }
    }
}

/// Reads a whole FhirSecurityPolicy document (apiVersion, kind, metadata, spec, status).
/// `Err` only when its metadata cannot be read, i.e. it cannot even be named.
pub fn parse_policy(doc: &Value) -> Result<Loaded<FhirSecurityPolicy>, String> {
    parse(doc, shape::check_policy)
}

/// Reads a whole FhirConnection document.
pub fn parse_connection(doc: &Value) -> Result<Loaded<FhirConnection>, String> {
    parse(doc, shape::check_connection)
}

fn parse<K: DeserializeOwned>(
    doc: &Value,
    check: fn(Option<&Value>) -> Checked,
) -> Result<Loaded<K>, String> {
    let meta: ObjectMeta = serde_json::from_value(doc.get("metadata").cloned().unwrap_or_default())
        .map_err(|e| format!("metadata is not valid object metadata: {e}"))?;
    // A status another version of the operator wrote in a shape this one does not know is
    // simply rewritten.
    let status = doc
        .get("status")
        .and_then(|s| serde_json::from_value::<ObjectStatus>(s.clone()).ok());
    let Checked {
        mut problems,
        cleaned,
    } = check(doc.get("spec"));
    let object = cleaned.and_then(|spec| {
        let mut typed = doc.clone();
        if let Some(o) = typed.as_object_mut() {
            o.insert("spec".into(), spec);
            o.remove("status");
        }
        match serde_json::from_value::<K>(typed) {
            Ok(k) => Some(k),
            Err(e) => {
                // The shape check follows the same schema serde does, so this is a safety net:
                // whatever serde still objects to is reported rather than lost.
                if problems.is_empty() {
                    problems.push(ShapeProblem {
                        path: "spec".into(),
                        message: format!("does not match the schema: {e}"),
                    });
                }
                None
            }
        }
    });
    Ok(Loaded {
        meta,
        object,
        shape: problems,
        status,
    })
}
