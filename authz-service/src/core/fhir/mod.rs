//! FHIR R4 request classification (pure).
//!
//! From the method, the path relative to the policy's base, the query and (when Envoy sends
//! it) the body, derive which RESTful interaction a request is. The path is normalised first,
//! and every spelling that could make fhirguard and the FHIR server disagree about which
//! resource is meant is refused: dot-segments, empty segments, encoded slashes, `;` path
//! parameters (servlet containers strip them), double encoding, invalid UTF-8.

use std::collections::BTreeSet;

use crate::core::operations;

mod body;
mod bundle;
mod classify;
mod path;
mod query;

use body::*;
use bundle::*;
pub use classify::*;
pub use path::*;
pub use query::*;

/// Why a request is not a well-formed FHIR request. Mapped to 400 (or 405 for the method).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("malformed path: {0}")]
    Path(&'static str),
    #[error("malformed query: {0}")]
    Query(&'static str),
    #[error("method {0} is not used by the FHIR RESTful API")]
    Method(String),
    #[error("not a FHIR interaction: {0}")]
    NotFhir(String),
    #[error("malformed request body: {0}")]
    Body(String),
}

impl RequestError {
    pub fn http_status(&self) -> u16 {
        match self {
            RequestError::Method(_) => 405,
            _ => 400,
        }
    }
}

/// The RESTful interactions of FHIR R4 (https://hl7.org/fhir/R4/http.html), plus the
/// conditional variants, which authorisation treats differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    Read,
    VRead,
    Update,
    Patch,
    Delete,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    Create,
    SearchType,
    SearchSystem,
    /// `GET [base]/Patient/123/Observation` (or `/*` for every type).
    SearchCompartment,
    Capabilities,
    Batch,
    Transaction,
    /// A bundle POSTed to the base whose body fhirguard could not see (Envoy did not send
    /// it, or only part of it). Its entries are unknown, so it is treated as writing.
    BundleUninspected,
    OperationSystem,
    OperationType,
    OperationInstance,
    ConditionalCreate,
    ConditionalUpdate,
    ConditionalPatch,
    ConditionalDelete,
}

impl Interaction {
    /// A stable name for logs and OperationOutcome diagnostics.
    pub fn as_str(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::VRead => "vread",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
            Interaction::SearchSystem => "search-system",
            Interaction::SearchCompartment => "search-compartment",
            Interaction::Capabilities => "capabilities",
            Interaction::Batch => "batch",
            Interaction::Transaction => "transaction",
            Interaction::BundleUninspected => "bundle-uninspected",
            Interaction::OperationSystem => "operation-system",
            Interaction::OperationType => "operation-type",
            Interaction::OperationInstance => "operation-instance",
            Interaction::ConditionalCreate => "conditional-create",
            Interaction::ConditionalUpdate => "conditional-update",
            Interaction::ConditionalPatch => "conditional-patch",
            Interaction::ConditionalDelete => "conditional-delete",
        }
    }
}

/// A token found in the top-level query. `plain` is false when the name was spelled in any
/// way other than the literal `access_token` (encoded, another case, with a modifier): such a
/// parameter is refused rather than used, because Envoy could not be trusted to remove it.
#[derive(Clone, PartialEq, Eq)]
pub struct QueryToken {
    pub value: String,
    pub plain: bool,
}

impl std::fmt::Debug for QueryToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueryToken(<redacted>, plain: {})", self.plain)
    }
}

/// One operation of a PATCH body, whichever format it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchOp {
    /// `add`, `remove`, `replace`, `move`, `copy`, `test` (JSON Patch) or `add`, `insert`,
    /// `delete`, `replace`, `move` (FHIRPath Patch).
    pub op: String,
    /// The top-level element the operation changes (`subject`, `meta`, `link`), or `None`
    /// when it cannot be told from the path (the root, an expression fhirguard does not read).
    pub element: Option<String>,
    /// `move`/`copy`: the element the value is taken from.
    pub from_element: Option<String>,
    /// The value written, when there is one.
    pub value: Option<serde_json::Value>,
    /// The operation writes a `reference` member itself (a pointer ending in `/reference`):
    /// its value is a reference string.
    pub to_reference: bool,
}

/// A PATCH body as far as fhirguard reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchBody {
    Ops(Vec<PatchOp>),
    /// Not visible, or in a format fhirguard does not read (XML Patch, an unknown type).
    Uninspected,
}

/// A classified FHIR request.
#[derive(Debug, Clone, PartialEq)]
pub struct FhirRequest {
    pub interaction: Interaction,
    /// The resource type, when the interaction has one (`Observation`).
    pub resource_type: Option<String>,
    /// The logical id from the path.
    pub id: Option<String>,
    /// The version id of a vread.
    pub version_id: Option<String>,
    /// The operation name without `$`.
    pub operation: Option<String>,
    /// What the operation is, when fhirguard knows it (`None` for an unknown operation).
    pub op: Option<&'static operations::OpSpec>,
    /// For compartment searches: the compartment's type and id (`Patient`, `123`).
    pub compartment: Option<(String, String)>,
    /// Search, conditional and operation parameters: the query, then a form body
    /// (`POST _search`), a `Parameters` body (POSTed operations) or `If-None-Exist` criteria.
    pub params: Vec<(String, String)>,
    /// False when parameters may exist that fhirguard could not see (a `POST _search` or a
    /// POSTed operation whose body Envoy did not send, or sent in a format not read here).
    pub params_complete: bool,
    /// Whether the interaction can change stored data. Decided conservatively: an operation
    /// fhirguard does not know writes, whatever the method.
    pub writes: bool,
    /// Entries of a batch or transaction, each classified like a request of its own.
    pub entries: Vec<FhirRequest>,
    /// The resource sent with a create or update, when the body was available as JSON.
    pub resource: Option<serde_json::Value>,
    /// The body of a patch.
    pub patch: Option<PatchBody>,
    /// `access_token` parameters of the request's own query (never of entries or bodies).
    pub access_tokens: Vec<QueryToken>,
}

impl FhirRequest {
    fn new(interaction: Interaction) -> Self {
        FhirRequest {
            interaction,
            resource_type: None,
            id: None,
            version_id: None,
            operation: None,
            op: None,
            compartment: None,
            params: Vec::new(),
            params_complete: true,
            writes: false,
            entries: Vec::new(),
            resource: None,
            patch: None,
            access_tokens: Vec::new(),
        }
    }

    /// `read`, or `read Observation/123`, for diagnostics (never includes parameter values,
    /// which may identify a patient).
    /// Only names fhirguard knows are repeated: an unknown operation or type name is the
    /// request's own text.
    pub fn describe(&self) -> String {
        let mut s = self.interaction.as_str().to_string();
        match (self.op, &self.operation) {
            (Some(o), _) => s.push_str(&format!(" ${}", o.name)),
            (None, Some(_)) => s.push_str(" $<unknown>"),
            _ => {}
        }
        if let Some(t) = &self.resource_type {
            s.push(' ');
            s.push_str(if crate::core::definitions::is_resource_type(t) {
                t
            } else {
                "<unknown type>"
            });
        }
        s
    }
}

/// The request body as Envoy forwarded it.
#[derive(Debug, Clone, Copy)]
pub struct Body<'a> {
    pub bytes: &'a [u8],
    pub content_type: Option<&'a str>,
}

/// What classification needs from the HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    pub method: &'a str,
    /// Decoded segments after the FHIR base.
    pub segments: &'a [String],
    pub query: Option<&'a str>,
    /// `None` when the body was not sent to the authorizer (or only partly).
    pub body: Option<Body<'a>>,
    pub if_none_exist: Option<&'a str>,
}

/// Every resource type a request touches by name, including bundle entries.
pub fn resource_types(req: &FhirRequest) -> BTreeSet<&str> {
    let mut out: BTreeSet<&str> = req.resource_type.iter().map(String::as_str).collect();
    for e in &req.entries {
        out.extend(resource_types(e));
    }
    out
}

#[cfg(test)]
mod tests;
