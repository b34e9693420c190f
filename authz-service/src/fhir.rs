//! FHIR R4 request classification (pure).
//!
//! From the method, the path relative to the policy's base, the query and (when Envoy sends
//! it) the body, derive which RESTful interaction a request is. The path is normalised first,
//! and every spelling that could make fhirguard and the FHIR server disagree about which
//! resource is meant is refused: dot-segments, empty segments, encoded slashes, `;` path
//! parameters (servlet containers strip them), double encoding, invalid UTF-8.

use std::collections::BTreeSet;

use crate::operations;

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

/// Decodes `%XX` escapes in one path segment and refuses every escape trick.
fn decode_segment(seg: &str) -> Result<String, RequestError> {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(RequestError::Path("invalid percent-encoding"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| RequestError::Path("not valid UTF-8"))?;
    if s.contains(['/', '\\']) {
        return Err(RequestError::Path("encoded slash or backslash"));
    }
    if s.contains('%') {
        return Err(RequestError::Path("double percent-encoding"));
    }
    if s.contains(';') {
        return Err(RequestError::Path("';' path parameters are not allowed"));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(RequestError::Path("control characters or whitespace"));
    }
    if s == "." || s == ".." {
        return Err(RequestError::Path("dot-segments are not allowed"));
    }
    Ok(s)
}

/// Splits `:path` into the path and the raw query.
pub fn split_path(raw: &str) -> (&str, Option<&str>) {
    match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    }
}

/// Normalises an absolute request path into decoded segments.
///
/// A single trailing slash is tolerated only on the path as a whole (`/fhir/r4/` is the base);
/// any other empty segment is refused.
pub fn normalize_path(path: &str) -> Result<Vec<String>, RequestError> {
    if !path.starts_with('/') {
        return Err(RequestError::Path("must start with '/'"));
    }
    if path.contains('#') {
        return Err(RequestError::Path("fragments are not sent to servers"));
    }
    if path.contains('\\') {
        return Err(RequestError::Path("backslash"));
    }
    let body = &path[1..];
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let body = body.strip_suffix('/').unwrap_or(body);
    body.split('/')
        .map(|seg| {
            if seg.is_empty() {
                Err(RequestError::Path("empty segment ('//')"))
            } else {
                decode_segment(seg)
            }
        })
        .collect()
}

/// One query parameter as sent: the raw name (before decoding), decoded name and value.
struct RawParam {
    raw_name: String,
    name: String,
    value: String,
}

/// Control parameters whose meaning widens or redirects a search. A server that matched
/// parameter names loosely would honour `_INCLUDE` while fhirguard saw an unknown parameter,
/// so any other spelling of these is refused.
const CONTROL_PARAMS: &[&str] = &[
    "_include",
    "_revinclude",
    "_has",
    "_query",
    "_contained",
    "_containedType",
    "_id",
    "_type",
    "_list",
    "_filter",
    "_format",
    "_since",
    "_typeFilter",
];

/// At most this many parameters in one query string, form or Parameters body.
pub const MAX_PARAMS: usize = 100;

fn parse_query_raw(query: &str) -> Result<Vec<RawParam>, RequestError> {
    if query.contains(';') {
        // Some frameworks split the query on `;` as well as `&`: `?a=1;_revinclude=...` would
        // then carry a parameter fhirguard never saw. A literal `;` must be sent as %3B.
        return Err(RequestError::Query(
            "';' in the query (send it percent-encoded as %3B)",
        ));
    }
    if query.contains('#') {
        // Only bundle entry URLs can carry one; a server that parses them as URLs drops
        // everything after it, pins included.
        return Err(RequestError::Query("'#' in the query"));
    }
    let mut out = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        if out.len() == MAX_PARAMS {
            // Node's querystring and qs keep the first 1000, Tomcat its maxParameterCount:
            // a pin after the cut would be judged here and never applied.
            return Err(RequestError::Query("more than 100 parameters"));
        }
        // Validate escapes ourselves: form_urlencoded silently keeps bad ones.
        let bytes = part.as_bytes();
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'%' {
                let ok = bytes
                    .get(i + 1..i + 3)
                    .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
                if !ok {
                    return Err(RequestError::Query("invalid percent-encoding"));
                }
            }
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let name = decode_query_component(k)?;
        let value = decode_query_component(v)?;
        if name.is_empty() {
            return Err(RequestError::Query("empty parameter name"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        {
            return Err(RequestError::Query(
                "parameter names may contain only letters, digits and _ - . :",
            ));
        }
        let base = name.split([':', '.']).next().unwrap_or("");
        if base.eq_ignore_ascii_case("_method") {
            return Err(RequestError::Query(
                "_method (a method override) is not accepted; send the real HTTP method",
            ));
        }
        if CONTROL_PARAMS
            .iter()
            .any(|c| c.eq_ignore_ascii_case(base) && *c != base)
        {
            return Err(RequestError::Query(
                "a search control parameter in another spelling (parameter names are case-sensitive)",
            ));
        }
        out.push(RawParam {
            raw_name: k.to_string(),
            name,
            value,
        });
    }
    Ok(out)
}

/// Whether a decoded parameter name is an OAuth access token in any spelling.
fn is_access_token_name(name: &str) -> bool {
    name.split(':')
        .next()
        .is_some_and(|b| b.eq_ignore_ascii_case("access_token"))
}

/// Decodes a query string into parameters. `+` is a space, as servlet-based FHIR servers read
/// it. Refuses names fhirguard and a server could read differently (see [`CONTROL_PARAMS`]),
/// method overrides, and an access token, which may only travel as the top-level
/// `access_token` parameter (see [`classify`]).
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, RequestError> {
    let raw = parse_query_raw(query)?;
    if raw.iter().any(|p| is_access_token_name(&p.name)) {
        return Err(RequestError::Query(
            "an access_token may be sent only in the request's own query string",
        ));
    }
    Ok(raw.into_iter().map(|p| (p.name, p.value)).collect())
}

/// The access tokens of a query string, in every spelling (see [`QueryToken`]).
pub fn query_tokens(query: &str) -> Result<Vec<QueryToken>, RequestError> {
    Ok(parse_query_raw(query)?
        .into_iter()
        .filter(|p| is_access_token_name(&p.name))
        .map(|p| QueryToken {
            plain: p.raw_name == "access_token",
            value: p.value,
        })
        .collect())
}

fn decode_query_component(s: &str) -> Result<String, RequestError> {
    let replaced = s.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&replaced).collect();
    let s = String::from_utf8(bytes).map_err(|_| RequestError::Query("not valid UTF-8"))?;
    if s.chars().any(|c| c.is_control()) {
        return Err(RequestError::Query("control characters"));
    }
    Ok(s)
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
            s.push_str(if crate::definitions::is_resource_type(t) {
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

fn is_resource_type(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && s.len() <= 64
        && chars.all(|c| c.is_ascii_alphabetic())
}

fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn operation_name(s: &str) -> Option<&str> {
    let name = s.strip_prefix('$')?;
    let mut chars = name.chars();
    (chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    .then_some(name)
}

fn media_type(content_type: Option<&str>) -> Option<String> {
    content_type.map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

fn is_form(content_type: Option<&str>) -> bool {
    media_type(content_type).is_some_and(|m| m == "application/x-www-form-urlencoded")
}

fn is_json(content_type: Option<&str>) -> bool {
    // A missing content type is parsed as JSON and refused if it is not: never an allow.
    media_type(content_type).is_none_or(|m| {
        m == "application/fhir+json" || m == "application/json" || m == "application/json+fhir"
    })
}

fn is_json_patch(content_type: Option<&str>) -> bool {
    media_type(content_type).is_some_and(|m| m == "application/json-patch+json")
}

fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, RequestError> {
    crate::json::parse_strict(bytes)
        .map_err(|e| RequestError::Body(format!("not usable JSON: {e}")))
}

fn parse_json_body(body: Body<'_>) -> Result<serde_json::Value, RequestError> {
    if !is_json(body.content_type) {
        return Err(RequestError::Body(
            "this content type cannot be inspected; send application/fhir+json".into(),
        ));
    }
    parse_json(body.bytes)
}

/// Classifies one request.
pub fn classify(req: HttpRequest<'_>) -> Result<FhirRequest, RequestError> {
    let method = req.method;
    let is_read_method = matches!(method, "GET" | "HEAD");
    if !is_read_method && !matches!(method, "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(RequestError::Method(method.to_string()));
    }
    let mut access_tokens = Vec::new();
    let mut query = Vec::new();
    for p in parse_query_raw(req.query.unwrap_or(""))? {
        if is_access_token_name(&p.name) {
            access_tokens.push(QueryToken {
                plain: p.raw_name == "access_token",
                value: p.value,
            });
        } else {
            query.push((p.name, p.value));
        }
    }
    let has_query = !query.is_empty();
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let not_fhir = |what: &str| Err(RequestError::NotFhir(format!("{method} {what}")));

    let mut out = match segs.as_slice() {
        [] => match method {
            "GET" | "HEAD" => FhirRequest::new(Interaction::SearchSystem),
            "POST" => {
                if query.iter().any(|(k, _)| k != "_format" && k != "_pretty") {
                    return Err(RequestError::Query(
                        "a batch or transaction takes no parameters but _format and _pretty",
                    ));
                }
                let mut r = classify_bundle(req)?;
                r.access_tokens = access_tokens;
                return Ok(r);
            }
            _ => return not_fhir("on the base"),
        },
        ["metadata"] if is_read_method => FhirRequest::new(Interaction::Capabilities),
        ["_history"] if is_read_method => FhirRequest::new(Interaction::HistorySystem),
        ["_search"] if method == "POST" => search_post(Interaction::SearchSystem, req)?,
        [op] if operation_name(op).is_some() => {
            operation(Interaction::OperationSystem, req, op, None, &query)?
        }
        [t] if is_resource_type(t) => {
            let mut r = match method {
                "GET" | "HEAD" => FhirRequest::new(Interaction::SearchType),
                "POST" => match req.if_none_exist {
                    Some(criteria) => {
                        let mut r = FhirRequest::new(Interaction::ConditionalCreate);
                        r.params = parse_query(criteria)?;
                        if r.params.is_empty() {
                            return Err(RequestError::Query("empty If-None-Exist criteria"));
                        }
                        r
                    }
                    None => FhirRequest::new(Interaction::Create),
                },
                "PUT" if has_query => FhirRequest::new(Interaction::ConditionalUpdate),
                "PATCH" if has_query => FhirRequest::new(Interaction::ConditionalPatch),
                "DELETE" if has_query => FhirRequest::new(Interaction::ConditionalDelete),
                _ => {
                    return not_fhir("on a resource type without search criteria");
                }
            };
            r.resource_type = Some(t.to_string());
            r
        }
        [t, "_search"] if is_resource_type(t) && method == "POST" => {
            let mut r = search_post(Interaction::SearchType, req)?;
            r.resource_type = Some(t.to_string());
            r
        }
        [t, "_history"] if is_resource_type(t) && is_read_method => {
            let mut r = FhirRequest::new(Interaction::HistoryType);
            r.resource_type = Some(t.to_string());
            r
        }
        [t, op] if is_resource_type(t) && operation_name(op).is_some() => {
            operation(Interaction::OperationType, req, op, Some(t), &query)?
        }
        [t, id] if is_resource_type(t) && is_id(id) => {
            let interaction = match method {
                "GET" | "HEAD" => Interaction::Read,
                "PUT" => Interaction::Update,
                "PATCH" => Interaction::Patch,
                "DELETE" => Interaction::Delete,
                _ => return not_fhir("on a resource instance"),
            };
            instance(interaction, t, id)
        }
        [t, id, "_history"] if is_resource_type(t) && is_id(id) && is_read_method => {
            instance(Interaction::HistoryInstance, t, id)
        }
        [t, id, "_history", vid] if is_resource_type(t) && is_id(id) && is_id(vid) => {
            if !is_read_method {
                return not_fhir("on a resource version");
            }
            let mut r = instance(Interaction::VRead, t, id);
            r.version_id = Some(vid.to_string());
            r
        }
        [t, id, op] if is_resource_type(t) && is_id(id) && operation_name(op).is_some() => {
            let mut r = operation(Interaction::OperationInstance, req, op, Some(t), &query)?;
            r.id = Some(id.to_string());
            r
        }
        [ct, id, target] | [ct, id, target, "_search"]
            if is_resource_type(ct)
                && is_id(id)
                && (is_resource_type(target) || *target == "*") =>
        {
            let via_post = segs.len() == 4;
            let mut r = if via_post && method == "POST" {
                search_post(Interaction::SearchCompartment, req)?
            } else if !via_post && is_read_method {
                FhirRequest::new(Interaction::SearchCompartment)
            } else {
                return not_fhir("on a compartment");
            };
            r.compartment = Some((ct.to_string(), id.to_string()));
            r.resource_type = (*target != "*").then(|| target.to_string());
            r
        }
        _ => {
            return Err(RequestError::NotFhir(format!(
                "{method} on a path that is no FHIR RESTful endpoint"
            )));
        }
    };

    if let Some(t) = out.resource_type.as_deref() {
        check_param_spellings(t, query.iter().chain(out.params.iter()))?;
    }
    check_instance_query(out.interaction, &query)?;

    // Parameters a body added (a form, a Parameters resource) must not also come in the URL:
    // which of two values a server uses is its own choice.
    if out
        .params
        .iter()
        .any(|(k, _)| query.iter().any(|(q, _)| q.eq_ignore_ascii_case(k)))
        && matches!(
            out.interaction,
            Interaction::OperationSystem
                | Interaction::OperationType
                | Interaction::OperationInstance
        )
    {
        return Err(RequestError::Query(
            "an operation parameter is given both in the URL and in the body",
        ));
    }
    let mut params = query;
    params.append(&mut out.params);
    out.params = params;
    out.access_tokens = access_tokens;
    out.writes = out.writes
        || matches!(
            out.interaction,
            Interaction::Update
                | Interaction::Patch
                | Interaction::Delete
                | Interaction::Create
                | Interaction::ConditionalCreate
                | Interaction::ConditionalUpdate
                | Interaction::ConditionalPatch
                | Interaction::ConditionalDelete
        );
    if matches!(
        out.interaction,
        Interaction::Create
            | Interaction::ConditionalCreate
            | Interaction::Update
            | Interaction::ConditionalUpdate
    ) && let Some(body) = req.body
        && is_json(body.content_type)
    {
        // Creates and updates are classified without their body; the body is parsed for the
        // authorizer when it is JSON, and a JSON body that does not parse is refused.
        let resource = parse_json_body(body)?;
        if resource
            .get("resourceType")
            .and_then(|t| t.as_str())
            .is_none()
        {
            return Err(RequestError::Body(
                "the body is not a FHIR resource (no resourceType)".into(),
            ));
        }
        // The resource is created or updated as its own type, whatever the URL says: a
        // server that creates `Patient` from `POST /Observation` would be judged on the URL.
        if out.resource_type.as_deref() != resource.get("resourceType").and_then(|t| t.as_str()) {
            return Err(RequestError::Body(
                "the body's resourceType is not the type the URL names".into(),
            ));
        }
        out.resource = Some(resource);
    }
    check_conditional_params(out.interaction, &out.params)?;
    if matches!(
        out.interaction,
        Interaction::Patch | Interaction::ConditionalPatch
    ) {
        out.patch = Some(match req.body {
            Some(body) => patch_body(body)?,
            None => PatchBody::Uninspected,
        });
    }
    Ok(out)
}

/// A parameter named like one of the type's search parameters but in another case
/// (`Subject=` next to `subject=`): a server with a case-insensitive parameter map reads one
/// of them, fhirguard the other.
fn check_param_spellings<'a>(
    t: &str,
    params: impl Iterator<Item = &'a (String, String)>,
) -> Result<(), RequestError> {
    let defined = crate::definitions::search_params(t);
    for (k, _) in params {
        let base = k.split([':', '.']).next().unwrap_or("");
        if defined
            .iter()
            .any(|sp| sp.code != base && sp.code.eq_ignore_ascii_case(base))
        {
            return Err(RequestError::Query(
                "a search parameter of this type in another spelling (parameter names are case-sensitive)",
            ));
        }
    }
    Ok(())
}

/// Interactions on one resource take no search parameters; only these presentation ones.
/// Anything else is a server extension fhirguard did not judge: HAPI's `_cascade=delete`
/// deletes every resource that references the target, other patients' included.
fn check_instance_query(
    interaction: Interaction,
    query: &[(String, String)],
) -> Result<(), RequestError> {
    let allowed: &[&str] = match interaction {
        Interaction::Read | Interaction::VRead => &["_format", "_pretty", "_summary", "_elements"],
        Interaction::HistoryInstance | Interaction::HistoryType | Interaction::HistorySystem => &[
            "_format",
            "_pretty",
            "_summary",
            "_elements",
            "_count",
            "_since",
            "_at",
        ],
        Interaction::Update | Interaction::Patch | Interaction::Delete | Interaction::Create => {
            &["_format", "_pretty"]
        }
        _ => return Ok(()),
    };
    match query.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        None => Ok(()),
        Some(_) => Err(RequestError::Query(
            "this interaction takes no parameters but _format, _pretty (and, for reads and history, _summary, _elements, _count, _since, _at)",
        )),
    }
}

/// Conditional criteria take search parameters of the type and the common search parameters,
/// nothing else: HAPI skips other `_` names when it matches and then acts on them
/// (`_cascade=delete` deletes every resource referencing what matched, `_expunge`).
fn check_conditional_params(
    interaction: Interaction,
    params: &[(String, String)],
) -> Result<(), RequestError> {
    const COMMON: &[&str] = &[
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
        "_list",
        "_has",
        "_text",
        "_content",
        "_filter",
        "_format",
        "_pretty",
    ];
    if !matches!(
        interaction,
        Interaction::ConditionalCreate
            | Interaction::ConditionalUpdate
            | Interaction::ConditionalPatch
            | Interaction::ConditionalDelete
    ) {
        return Ok(());
    }
    for (k, _) in params {
        let base = k.split([':', '.']).next().unwrap_or("");
        if base.starts_with('_') && !COMMON.contains(&base) {
            return Err(RequestError::Query(
                "conditional criteria take search parameters only (no _cascade, _expunge or other server switches)",
            ));
        }
    }
    Ok(())
}

fn instance(interaction: Interaction, t: &str, id: &str) -> FhirRequest {
    let mut r = FhirRequest::new(interaction);
    r.resource_type = Some(t.to_string());
    r.id = Some(id.to_string());
    r
}

/// Classifies an operation: exact name, level and type from the table of known operations,
/// whether it writes, and (POSTed) the parameters of its body.
fn operation(
    interaction: Interaction,
    req: HttpRequest<'_>,
    segment: &str,
    resource_type: Option<&str>,
    query: &[(String, String)],
) -> Result<FhirRequest, RequestError> {
    use crate::operations::{self, Level};
    let name = operation_name(segment).unwrap_or_default();
    if let Some(known) = operations::respelling_of(name) {
        return Err(RequestError::NotFhir(format!(
            "operation names are case-sensitive; this server's operation is ${known}"
        )));
    }
    let level = match interaction {
        Interaction::OperationSystem => Level::System,
        Interaction::OperationType => Level::Type,
        _ => Level::Instance,
    };
    if !matches!(req.method, "GET" | "HEAD" | "POST") {
        // A framework routing on the path's shape could run a delete or an update here.
        return Err(RequestError::NotFhir(format!(
            "operations are invoked with GET or POST, not {}",
            req.method
        )));
    }
    let spec = operations::lookup(name, level, resource_type);
    let is_get = matches!(req.method, "GET" | "HEAD");
    if is_get && spec.is_some_and(|s| s.affects_state) {
        return Err(RequestError::NotFhir(format!(
            "${name} changes data and must be invoked with POST"
        )));
    }
    let mut r = FhirRequest::new(interaction);
    r.operation = Some(name.to_string());
    r.op = spec;
    r.resource_type = resource_type.map(str::to_string);
    if !is_get {
        match req.body {
            None => r.params_complete = false,
            Some(body) if body.bytes.is_empty() => {}
            Some(body) if is_form(body.content_type) => {
                let text = std::str::from_utf8(body.bytes)
                    .map_err(|_| RequestError::Body("form body is not UTF-8".into()))?;
                r.params = parse_query(text)?;
            }
            Some(body) if is_json(body.content_type) => {
                let doc = parse_json(body.bytes)?;
                if doc.get("resourceType").and_then(|t| t.as_str()) == Some("Parameters") {
                    r.params = parameters_of(&doc)?;
                }
            }
            // XML and other formats: their parameters are not read here.
            Some(_) => r.params_complete = false,
        }
    }
    let mentions = |what: &str| {
        query
            .iter()
            .chain(r.params.iter())
            .any(|(_, v)| v.to_ascii_lowercase().contains(what))
    };
    r.writes = match (spec, name) {
        // GraphQL mutations can ride a POST, or (on a lax server) a GET.
        (Some(_), "graphql") => !is_get || mentions("mutation"),
        // `$document` stores the document when asked to persist it (possibly in a body
        // fhirguard did not see).
        (Some(_), "document") => {
            !r.params_complete
                || query
                    .iter()
                    .chain(r.params.iter())
                    .any(|(k, v)| k == "persist" && v != "false")
        }
        (Some(s), _) => s.affects_state,
        // An operation fhirguard does not know may change anything.
        (None, _) => true,
    };
    Ok(r)
}

/// The parameters of a `Parameters` body as (name, value) pairs: primitive values as their
/// text, references as their reference string, anything else (a resource, parts) as "".
fn parameters_of(doc: &serde_json::Value) -> Result<Vec<(String, String)>, RequestError> {
    let items = match doc.get("parameter") {
        None => return Ok(Vec::new()),
        Some(serde_json::Value::Array(a)) => a,
        Some(_) => {
            return Err(RequestError::Body(
                "Parameters.parameter must be an array".into(),
            ));
        }
    };
    let mut out = Vec::new();
    for p in items {
        let name = p
            .get("name")
            .and_then(|n| n.as_str())
            .ok_or_else(|| RequestError::Body("a Parameters parameter has no name".into()))?;
        if is_access_token_name(name) || name.eq_ignore_ascii_case("_method") {
            return Err(RequestError::Body(
                "access_token and _method are not accepted as operation parameters".into(),
            ));
        }
        let base = name.split([':', '.']).next().unwrap_or("");
        if CONTROL_PARAMS
            .iter()
            .any(|c| c.eq_ignore_ascii_case(base) && *c != base)
        {
            return Err(RequestError::Body(
                "a control parameter in another spelling (parameter names are case-sensitive)"
                    .into(),
            ));
        }
        let members = p
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("value") || *k == "resource" || *k == "part")
            .count();
        if members > 1 {
            // One parameter, two values: which one a server reads is its own choice.
            return Err(RequestError::Body(
                "a Parameters parameter carries more than one value".into(),
            ));
        }
        let value = p
            .as_object()
            .into_iter()
            .flatten()
            .find(|(k, _)| k.starts_with("value"))
            .map(|(_, v)| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Object(o) => o
                    .get("reference")
                    .and_then(|r| r.as_str())
                    .unwrap_or("")
                    .to_string(),
                _ => String::new(),
            })
            .unwrap_or_default();
        out.push((name.to_string(), value));
    }
    Ok(out)
}

/// The top-level element a JSON Pointer (`/subject/reference`) changes.
fn pointer_element(pointer: &str) -> Option<String> {
    let first = pointer.strip_prefix('/')?.split('/').next()?;
    // RFC 6901 escapes.
    let name = first.replace("~1", "/").replace("~0", "~");
    (!name.is_empty()).then_some(name)
}

/// The top-level element a FHIRPath Patch path (`Observation.subject`, `Patient.name[0]`)
/// names, when it is a plain path.
fn fhirpath_element(path: &str) -> Option<String> {
    let mut parts = path.split('.');
    let root = parts.next()?;
    if !is_resource_type(root) {
        return None;
    }
    let el = parts.next()?;
    let el = el.split('[').next().unwrap_or("");
    el.chars()
        .all(|c| c.is_ascii_alphanumeric())
        .then(|| el.to_string())
        .filter(|e| !e.is_empty())
}

/// Reads a PATCH body: JSON Patch (`application/json-patch+json`) or FHIRPath Patch (a
/// `Parameters` resource). Anything else is left uninspected.
fn patch_body(body: Body<'_>) -> Result<PatchBody, RequestError> {
    if is_json_patch(body.content_type) {
        let doc = parse_json(body.bytes)?;
        let Some(items) = doc.as_array() else {
            return Err(RequestError::Body("a JSON Patch must be an array".into()));
        };
        let mut ops = Vec::new();
        for item in items {
            let op = item
                .get("op")
                .and_then(|v| v.as_str())
                .ok_or_else(|| RequestError::Body("a JSON Patch operation has no op".into()))?;
            let path = item
                .get("path")
                .and_then(|v| v.as_str())
                .ok_or_else(|| RequestError::Body("a JSON Patch operation has no path".into()))?;
            ops.push(PatchOp {
                op: op.to_string(),
                to_reference: path.ends_with("/reference"),
                element: pointer_element(path),
                from_element: item
                    .get("from")
                    .and_then(|v| v.as_str())
                    .map(|f| pointer_element(f).unwrap_or_default()),
                value: item.get("value").cloned(),
            });
        }
        return Ok(PatchBody::Ops(ops));
    }
    if is_json(body.content_type) && !body.bytes.is_empty() {
        let doc = parse_json(body.bytes)?;
        if doc.get("resourceType").and_then(|t| t.as_str()) != Some("Parameters") {
            return Err(RequestError::Body(
                "a JSON PATCH body must be a JSON Patch or a FHIRPath Patch Parameters".into(),
            ));
        }
        return Ok(PatchBody::Ops(fhirpath_patch_ops(&doc)?));
    }
    Ok(PatchBody::Uninspected)
}

fn fhirpath_patch_ops(doc: &serde_json::Value) -> Result<Vec<PatchOp>, RequestError> {
    let mut ops = Vec::new();
    for p in doc
        .get("parameter")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        if p.get("name").and_then(|n| n.as_str()) != Some("operation") {
            return Err(RequestError::Body(
                "a FHIRPath Patch holds only operation parameters".into(),
            ));
        }
        let part = |name: &str| {
            p.get("part")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .find(|x| x.get("name").and_then(|n| n.as_str()) == Some(name))
        };
        let parts: Vec<&serde_json::Value> = p
            .get("part")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .collect();
        for x in &parts {
            let values = x
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("value") || *k == "part" || *k == "resource")
                .count();
            let name = x.get("name").and_then(|n| n.as_str()).unwrap_or("");
            let repeats = parts
                .iter()
                .filter(|y| y.get("name").and_then(|n| n.as_str()) == Some(name))
                .count();
            if values > 1 || repeats > 1 {
                return Err(RequestError::Body(
                    "a FHIRPath Patch operation part repeats or carries two values".into(),
                ));
            }
        }
        let text = |name: &str| {
            part(name).and_then(|x| {
                x.as_object()?
                    .iter()
                    .find(|(k, _)| k.starts_with("value"))
                    .and_then(|(_, v)| v.as_str())
                    .map(str::to_string)
            })
        };
        let op = text("type")
            .ok_or_else(|| RequestError::Body("a FHIRPath Patch operation has no type".into()))?;
        let path = text("path").unwrap_or_default();
        // `add` names the new element separately: `path: Observation, name: subject`.
        let element = match (fhirpath_element(&path), text("name")) {
            (Some(e), _) => Some(e),
            (None, Some(n)) if is_resource_type(&path) => Some(n),
            _ => None,
        };
        let value = part("value").and_then(|x| {
            x.as_object()?
                .iter()
                .find(|(k, _)| k.starts_with("value") || *k == "part")
                .map(|(_, v)| v.clone())
        });
        ops.push(PatchOp {
            to_reference: path.ends_with(".reference")
                || text("name").as_deref() == Some("reference"),
            op,
            element,
            from_element: None,
            value,
        });
    }
    Ok(ops)
}

fn search_post(
    interaction: Interaction,
    req: HttpRequest<'_>,
) -> Result<FhirRequest, RequestError> {
    let mut r = FhirRequest::new(interaction);
    match req.body {
        Some(body) if body.bytes.is_empty() => {}
        Some(body) if is_form(body.content_type) => {
            let text = std::str::from_utf8(body.bytes)
                .map_err(|_| RequestError::Body("form body is not UTF-8".into()))?;
            r.params = parse_query(text)?;
        }
        Some(_) => {
            return Err(RequestError::Body(
                "POST _search needs an application/x-www-form-urlencoded body".into(),
            ));
        }
        None => r.params_complete = false,
    }
    Ok(r)
}

fn classify_bundle(req: HttpRequest<'_>) -> Result<FhirRequest, RequestError> {
    let Some(body) = req.body else {
        let mut r = FhirRequest::new(Interaction::BundleUninspected);
        r.writes = true;
        return Ok(r);
    };
    let doc = parse_json_body(body)?;
    if doc.get("resourceType").and_then(|v| v.as_str()) != Some("Bundle") {
        return Err(RequestError::Body(
            "a POST to the base must carry a Bundle".into(),
        ));
    }
    let interaction = match doc.get("type").and_then(|v| v.as_str()) {
        Some("batch") => Interaction::Batch,
        Some("transaction") => Interaction::Transaction,
        _ => {
            return Err(RequestError::Body(
                "Bundle.type must be batch or transaction".into(),
            ));
        }
    };
    let mut out = FhirRequest::new(interaction);
    let entries = match doc.get("entry") {
        None => Vec::new(),
        Some(serde_json::Value::Array(a)) => a.clone(),
        Some(_) => return Err(RequestError::Body("Bundle.entry must be an array".into())),
    };
    for (i, entry) in entries.into_iter().enumerate() {
        let classified =
            classify_entry(&entry).map_err(|e| RequestError::Body(format!("entry[{i}]: {e}")))?;
        out.writes |= classified.writes;
        out.entries.push(classified);
    }
    Ok(out)
}

/// The members of `Bundle.entry.request` fhirguard judges. `ifMatch` and `ifNoneMatch` carry
/// only ETags: HAPI reads a transaction PATCH's `ifMatch` as a match URL that beats the id in
/// `url`, so `ifMatch: "Observation?_id=o2"` would patch another resource.
fn check_entry_request(request: &serde_json::Value) -> Result<(), RequestError> {
    let Some(members) = request.as_object() else {
        return Err(RequestError::Body("request must be an object".into()));
    };
    let etag = |v: &serde_json::Value| {
        v.as_str().is_some_and(|s| {
            let s = s.strip_prefix("W/").unwrap_or(s);
            s.len() >= 2
                && s.starts_with('"')
                && s.ends_with('"')
                && !s[1..s.len() - 1].contains('"')
        })
    };
    for (k, v) in members {
        let ok = match k.as_str() {
            "method" | "url" | "ifNoneExist" | "ifModifiedSince" | "id" | "extension" => true,
            "ifMatch" | "ifNoneMatch" => etag(v),
            _ => false,
        };
        if !ok {
            return Err(RequestError::Body(
                "request carries a member fhirguard does not judge (ifMatch and ifNoneMatch take ETags only)".into(),
            ));
        }
    }
    Ok(())
}

fn classify_entry(entry: &serde_json::Value) -> Result<FhirRequest, RequestError> {
    let request = entry
        .get("request")
        .ok_or_else(|| RequestError::Body("has no request".into()))?;
    let method = request
        .get("method")
        .and_then(|m| m.as_str())
        .ok_or_else(|| RequestError::Body("has no request.method".into()))?;
    let url = request
        .get("url")
        .and_then(|u| u.as_str())
        .ok_or_else(|| RequestError::Body("has no request.url".into()))?;
    if url.contains("://") || url.starts_with('/') {
        return Err(RequestError::Body(
            "request.url must be relative to the base".into(),
        ));
    }
    let (path, query) = split_path(url);
    let segments = if path.is_empty() {
        Vec::new()
    } else {
        normalize_path(&format!("/{path}"))?
    };
    if segments.is_empty() {
        // A bundle inside a bundle: FHIR gives it no meaning, and it would hide entries.
        return Err(RequestError::Body("nested batch or transaction".into()));
    }
    check_entry_request(request)?;
    let resource = entry.get("resource");
    // On some servers (HAPI) a POST entry creates its resource whatever the URL names: an
    // operation URL with a resource to create would be judged as the operation. A POST entry
    // carries a resource only to create it at its own type, or a Parameters for an operation.
    if method == "POST"
        && let Some(r) = resource
    {
        let rt = r.get("resourceType").and_then(|t| t.as_str()).unwrap_or("");
        let creates_own_type = segments.len() == 1 && segments[0] == rt;
        let operation_parameters =
            rt == "Parameters" && segments.last().is_some_and(|s| s.starts_with('$'));
        if !(creates_own_type || operation_parameters) {
            return Err(RequestError::Body(
                "a POST entry's resource must be of the type its URL creates (or Parameters for an operation)".into(),
            ));
        }
    }
    // A PATCH entry carries its patch as a Binary (JSON Patch, base64) or a Parameters
    // (FHIRPath Patch) resource.
    let patch_bytes;
    let (bytes, content_type) = match resource {
        Some(r)
            if method == "PATCH"
                && r.get("resourceType").and_then(|t| t.as_str()) == Some("Binary") =>
        {
            use base64::Engine as _;
            patch_bytes = r
                .get("data")
                .and_then(|d| d.as_str())
                .and_then(|d| base64::engine::general_purpose::STANDARD.decode(d).ok())
                .ok_or_else(|| RequestError::Body("a PATCH Binary has no readable data".into()))?;
            (
                patch_bytes,
                r.get("contentType")
                    .and_then(|c| c.as_str())
                    .unwrap_or("application/octet-stream"),
            )
        }
        Some(r) => (r.to_string().into_bytes(), "application/fhir+json"),
        None => (Vec::new(), "application/fhir+json"),
    };
    let body = resource.map(|_| Body {
        bytes: &bytes,
        content_type: Some(content_type),
    });
    let r = classify(HttpRequest {
        method,
        segments: &segments,
        query,
        body,
        if_none_exist: request.get("ifNoneExist").and_then(|v| v.as_str()),
    })?;
    if !r.access_tokens.is_empty() {
        return Err(RequestError::Query(
            "an access_token may be sent only in the request's own query string",
        ));
    }
    Ok(r)
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
mod tests {
    use super::*;
    use Interaction::*;

    fn classify_str(
        method: &str,
        rel: &str,
        body: Option<(&str, &str)>,
        if_none_exist: Option<&str>,
    ) -> Result<FhirRequest, RequestError> {
        let (path, query) = split_path(rel);
        let segments = normalize_path(path)?;
        classify(HttpRequest {
            method,
            segments: &segments,
            query,
            body: body.map(|(ct, b)| Body {
                bytes: b.as_bytes(),
                content_type: Some(ct),
            }),
            if_none_exist,
        })
    }

    /// (method, path relative to the base, interaction, type, id, writes)
    type Case = (
        &'static str,
        &'static str,
        Interaction,
        Option<&'static str>,
        Option<&'static str>,
        bool,
    );
    #[rustfmt::skip]
    const CASES: &[Case] = &[
        ("GET", "/Patient/123", Read, Some("Patient"), Some("123"), false),
        ("HEAD", "/Patient/123", Read, Some("Patient"), Some("123"), false),
        ("GET", "/Observation/a-b.c", Read, Some("Observation"), Some("a-b.c"), false),
        ("GET", "/Patient/123/_history/2", VRead, Some("Patient"), Some("123"), false),
        ("PUT", "/Patient/123", Update, Some("Patient"), Some("123"), true),
        ("PATCH", "/Patient/123", Patch, Some("Patient"), Some("123"), true),
        ("DELETE", "/Patient/123", Delete, Some("Patient"), Some("123"), true),
        ("GET", "/Patient/123/_history", HistoryInstance, Some("Patient"), Some("123"), false),
        ("GET", "/Patient/_history", HistoryType, Some("Patient"), None, false),
        ("GET", "/_history", HistorySystem, None, None, false),
        ("POST", "/Patient", Create, Some("Patient"), None, true),
        ("GET", "/Observation?subject=Patient/1", SearchType, Some("Observation"), None, false),
        ("GET", "/Observation", SearchType, Some("Observation"), None, false),
        ("GET", "/", SearchSystem, None, None, false),
        ("GET", "/?_type=Patient", SearchSystem, None, None, false),
        ("GET", "/metadata", Capabilities, None, None, false),
        ("GET", "/Patient/123/Observation", SearchCompartment, Some("Observation"), None, false),
        ("GET", "/Patient/123/*", SearchCompartment, None, None, false),
        ("GET", "/$export", OperationSystem, None, None, false),
        ("POST", "/$export", OperationSystem, None, None, false),
        ("POST", "/$reindex", OperationSystem, None, None, true),
        ("GET", "/Patient/$match", OperationType, Some("Patient"), None, false),
        ("POST", "/Patient/$match", OperationType, Some("Patient"), None, false),
        ("GET", "/Patient/123/$everything", OperationInstance, Some("Patient"), Some("123"), false),
        ("POST", "/Patient/123/$everything", OperationInstance, Some("Patient"), Some("123"), false),
        ("POST", "/Patient/123/$meta-add", OperationInstance, Some("Patient"), Some("123"), true),
        ("POST", "/Patient/123/$meta-delete", OperationInstance, Some("Patient"), Some("123"), true),
        ("POST", "/ValueSet/$expand", OperationType, Some("ValueSet"), None, false),
        ("POST", "/Observation/$validate", OperationType, Some("Observation"), None, false),
        // Without a visible body, `persist` may be in it.
        ("POST", "/Composition/1/$document", OperationInstance, Some("Composition"), Some("1"), true),
        ("GET", "/Composition/1/$document", OperationInstance, Some("Composition"), Some("1"), false),
        ("GET", "/Composition/1/$document?persist=true", OperationInstance, Some("Composition"), Some("1"), true),
        ("GET", "/Observation/$reindex", OperationType, Some("Observation"), None, true),
        ("GET", "/$graphql?query=mutation", OperationSystem, None, None, true),
        ("GET", "/$graphql?query=x", OperationSystem, None, None, false),
        ("POST", "/$graphql", OperationSystem, None, None, true),
        ("PUT", "/Patient?identifier=x|1", ConditionalUpdate, Some("Patient"), None, true),
        ("PATCH", "/Patient?identifier=x|1", ConditionalPatch, Some("Patient"), None, true),
        ("DELETE", "/Patient?identifier=x|1", ConditionalDelete, Some("Patient"), None, true),
        ("GET", "/Patient/123/", Read, Some("Patient"), Some("123"), false),
        ("GET", "/Pat%69ent/123", Read, Some("Patient"), Some("123"), false),
    ];

    #[test]
    fn interactions_table() {
        for (method, path, interaction, rt, id, writes) in CASES {
            let r = classify_str(method, path, None, None)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            assert_eq!(r.interaction, *interaction, "{method} {path}");
            assert_eq!(r.resource_type.as_deref(), *rt, "{method} {path}");
            assert_eq!(r.id.as_deref(), *id, "{method} {path}");
            assert_eq!(r.writes, *writes, "{method} {path}");
        }
    }

    /// Paths that could make fhirguard and the server disagree, and non-FHIR requests.
    #[rustfmt::skip]
    const REFUSED: &[(&str, &str, u16)] = &[
        ("GET", "/Patient/../Observation/1", 400),
        ("GET", "/Patient/./1", 400),
        ("GET", "/Patient/%2e%2e/x", 400),
        ("GET", "/Patient/%2E", 400),
        ("GET", "/Patient//1", 400),
        ("GET", "//Patient/1", 400),
        ("GET", "/Patient%2F1", 400),
        ("GET", "/Patient%5c1", 400),
        ("GET", "/Patient\\1", 400),
        ("GET", "/Patient/1;jsessionid=x", 400),
        ("GET", "/Patient;x/1", 400),
        ("GET", "/Patient/%252e%252e", 400),
        ("GET", "/Patient/%zz", 400),
        ("GET", "/Patient/%c3", 400),
        ("GET", "/Patient/%00", 400),
        ("GET", "/Patient/a%20b", 400),
        ("GET", "/Patient/1#frag", 400),
        ("GET", "/Patient?name=%zz", 400),
        ("GET", "/Patient?name=%ff", 400),
        ("GET", "/Patient?=x", 400),
        ("GET", "/patient/1", 400),
        ("GET", "/Patient/has space", 400),
        ("GET", "/Patient/12345678901234567890123456789012345678901234567890123456789012345", 400),
        ("GET", "/Patient/1/_history/2/x", 400),
        ("GET", "/Patient/1/Observation/2", 400),
        ("GET", "/_search", 400),
        ("POST", "/metadata", 400),
        ("PUT", "/Patient", 400),
        ("DELETE", "/Patient", 400),
        ("DELETE", "/", 400),
        ("POST", "/Patient/1", 400),
        ("PUT", "/Patient/1/_history/2", 400),
        ("GET", "/Patient/$", 400),
        ("OPTIONS", "/Patient", 405),
        ("TRACE", "/Patient", 405),
        ("CONNECT", "/", 405),
    ];

    #[test]
    fn refused_table() {
        for (method, path, status) in REFUSED {
            match classify_str(method, path, None, None) {
                Ok(r) => panic!("{method} {path} classified as {r:?}"),
                Err(e) => assert_eq!(e.http_status(), *status, "{method} {path}: {e}"),
            }
        }
    }

    #[test]
    fn query_parameters_are_decoded() {
        let r = classify_str(
            "GET",
            "/Observation?subject=Patient%2F1&code=a+b&code=c",
            None,
            None,
        )
        .unwrap();
        assert_eq!(
            r.params,
            vec![
                ("subject".into(), "Patient/1".into()),
                ("code".into(), "a b".into()),
                ("code".into(), "c".into())
            ]
        );
    }

    #[test]
    fn post_search_reads_the_form_body() {
        let form = "application/x-www-form-urlencoded; charset=utf-8";
        let r = classify_str(
            "POST",
            "/Observation/_search?_count=5",
            Some((form, "subject=Patient%2F9")),
            None,
        )
        .unwrap();
        assert_eq!(r.interaction, SearchType);
        assert!(!r.writes && r.params_complete);
        assert_eq!(
            r.params,
            vec![
                ("_count".into(), "5".into()),
                ("subject".into(), "Patient/9".into())
            ]
        );

        let r = classify_str("POST", "/_search", None, None).unwrap();
        assert_eq!(r.interaction, SearchSystem);
        assert!(!r.params_complete, "no body: parameters unknown");

        let e = classify_str(
            "POST",
            "/Observation/_search",
            Some(("application/json", "{}")),
            None,
        );
        assert_eq!(e.unwrap_err().http_status(), 400);

        let r = classify_str(
            "POST",
            "/Patient/1/Observation/_search",
            Some((form, "code=x")),
            None,
        )
        .unwrap();
        assert_eq!(r.interaction, SearchCompartment);
        assert_eq!(r.compartment, Some(("Patient".into(), "1".into())));
    }

    #[test]
    fn conditional_create_uses_if_none_exist() {
        let r = classify_str("POST", "/Patient", None, Some("identifier=http://x|1")).unwrap();
        assert_eq!(r.interaction, ConditionalCreate);
        assert_eq!(r.params, vec![("identifier".into(), "http://x|1".into())]);
        assert!(r.writes);
    }

    #[test]
    fn create_bodies_are_parsed_when_json() {
        let j = "application/fhir+json";
        let r = classify_str(
            "POST",
            "/Observation",
            Some((j, r#"{"resourceType":"Observation"}"#)),
            None,
        )
        .unwrap();
        assert_eq!(r.resource.unwrap()["resourceType"], "Observation");
        let e = classify_str("PUT", "/Observation/1", Some((j, "{not json")), None).unwrap_err();
        assert_eq!(e.http_status(), 400);
        // XML is passed through unparsed: Basic authorisation does not need it.
        let r = classify_str(
            "POST",
            "/Observation",
            Some(("application/fhir+xml", "<x/>")),
            None,
        )
        .unwrap();
        assert!(r.resource.is_none());
    }

    const TX: &str = r#"{"resourceType":"Bundle","type":"transaction","entry":[
        {"request":{"method":"GET","url":"Patient/1"}},
        {"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Observation"}},
        {"request":{"method":"POST","url":"Patient","ifNoneExist":"identifier=a|b"}},
        {"request":{"method":"GET","url":"Observation?subject=Patient/1"}}
    ]}"#;

    #[test]
    fn bundles_classify_every_entry() {
        let r = classify_str("POST", "/", Some(("application/fhir+json", TX)), None).unwrap();
        assert_eq!(r.interaction, Transaction);
        assert!(r.writes);
        let got: Vec<_> = r.entries.iter().map(|e| e.interaction).collect();
        assert_eq!(got, vec![Read, Create, ConditionalCreate, SearchType]);
        assert_eq!(
            r.entries[3].params,
            vec![("subject".into(), "Patient/1".into())]
        );
        assert_eq!(
            resource_types(&r).into_iter().collect::<Vec<_>>(),
            vec!["Observation", "Patient"]
        );

        let batch = r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1"}}]}"#;
        let r = classify_str("POST", "/", Some(("application/json", batch)), None).unwrap();
        assert_eq!(r.interaction, Batch);
        assert!(!r.writes, "a batch of reads writes nothing");
    }

    #[test]
    fn bad_bundles_are_refused() {
        let bad = [
            r#"{"resourceType":"Patient"}"#,
            r#"{"resourceType":"Bundle","type":"collection"}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":{}}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"http://evil/Patient/1"}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"/Patient/1"}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/../x"}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":""}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"OPTIONS","url":"Patient"}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"url":"Patient"}}]}"#,
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"POST","url":"Patient"},"resource":5}]}"#,
            "not json",
        ];
        for b in bad {
            let e = classify_str("POST", "/", Some(("application/fhir+json", b)), None);
            assert!(e.is_err(), "{b} was accepted: {e:?}");
        }
        let e = classify_str(
            "POST",
            "/",
            Some(("application/fhir+xml", "<Bundle/>")),
            None,
        );
        assert!(e.is_err());
    }

    /// (rule, method, path, (body content type, body))
    type Ambiguous = (
        &'static str,
        &'static str,
        &'static str,
        Option<(&'static str, &'static str)>,
    );

    /// Requests whose meaning fhirguard and a server could read differently: refused (400)
    /// before any rule looks at them.
    #[rustfmt::skip]
    const AMBIGUOUS: &[Ambiguous] = &[
        // operation names are exact
        ("op.case-variant", "GET", "/Patient/1/$Everything", None),
        ("op.upper-case", "GET", "/Patient/1/$EVERYTHING", None),
        ("op.camel-case", "GET", "/Patient/1/$everyThing", None),
        ("op.underscore-for-dash", "POST", "/Observation/1/$meta_add", None),
        ("op.no-dash", "POST", "/Observation/1/$metaadd", None),
        ("op.graphql-case", "GET", "/$GraphQL", None),
        ("op.state-changing-by-get", "GET", "/Observation/1/$meta-add", None),
        ("op.state-changing-by-head", "HEAD", "/Observation/1/$meta-delete", None),
        ("op.process-message-by-get", "GET", "/$process-message", None),
        ("op.param-in-url-and-body", "POST", "/Patient/1/$everything?_type=Observation",
            Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Condition"}]}"#))),
        ("op.param-in-url-and-form", "POST", "/Patient/1/$everything?_type=Observation",
            Some(("application/x-www-form-urlencoded", "_type=Condition"))),
        ("op.parameters-not-an-array", "POST", "/Patient/1/$everything",
            Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":{"name":"_type"}}"#))),
        ("op.access-token-in-parameters", "POST", "/Patient/1/$everything",
            Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"access_token","valueString":"x"}]}"#))),
        // one query parser, one meaning
        ("query.semicolon-separator", "GET", "/Observation?subject=Patient/1;_revinclude=Observation:focus", None),
        ("query.semicolon-anywhere", "GET", "/Observation?code=a;b", None),
        ("query.include-upper", "GET", "/Observation?_INCLUDE=Observation:subject", None),
        ("query.include-mixed", "GET", "/Observation?_Include=Observation:subject", None),
        ("query.revinclude-mixed", "GET", "/Patient?_revInclude=Observation:focus", None),
        ("query.has-upper", "GET", "/Observation?_HAS:Observation:part-of:code=x", None),
        ("query.query-upper", "GET", "/Observation?_Query=x", None),
        ("query.contained-type-lower", "GET", "/Observation?_containedtype=container", None),
        ("query.id-upper", "GET", "/Patient?_ID=1", None),
        ("query.encoded-include-name-upper", "GET", "/Observation?%5FINCLUDE=x", None),
        ("query.name-with-space", "GET", "/Observation?subject%20=Patient/1", None),
        ("query.name-with-plus", "GET", "/Observation?subject+=Patient/1", None),
        ("query.name-with-brackets", "GET", "/Observation?subject%5B0%5D=Patient/1", None),
        ("query.name-with-slash", "GET", "/Observation?a%2Fb=1", None),
        ("query.method-override", "GET", "/Observation?_method=DELETE", None),
        ("query.method-override-upper", "GET", "/Observation?_METHOD=DELETE", None),
        ("query.method-override-in-form", "POST", "/Observation/_search", Some(("application/x-www-form-urlencoded", "_method=DELETE"))),
        ("query.token-in-form-body", "POST", "/Observation/_search", Some(("application/x-www-form-urlencoded", "subject=Patient/1&access_token=x"))),
        ("query.token-in-form-body-encoded", "POST", "/Observation/_search", Some(("application/x-www-form-urlencoded", "access%5Ftoken=x"))),
        ("query.token-in-entry-url", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation?access_token=x"}}]}"#))),
        ("query.method-override-in-entry-url", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/1?_method=DELETE"}}]}"#))),
        // duplicate JSON members
        ("json.duplicate-subject", "POST", "/Observation",
            Some(("application/fhir+json", r#"{"resourceType":"Observation","subject":{"reference":"Patient/1"},"subject":{"reference":"Patient/2"}}"#))),
        ("json.duplicate-reference", "PUT", "/Observation/1",
            Some(("application/fhir+json", r#"{"resourceType":"Observation","id":"1","subject":{"reference":"Patient/1","reference":"Patient/2"}}"#))),
        ("json.duplicate-resource-type", "POST", "/Observation",
            Some(("application/fhir+json", r#"{"resourceType":"Observation","resourceType":"Patient"}"#))),
        ("json.duplicate-entry", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[],"entry":[{"request":{"method":"DELETE","url":"Patient/1"}}]}"#))),
        ("json.duplicate-method", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","method":"DELETE","url":"Patient/1"}}]}"#))),
        ("json.duplicate-type", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","type":"transaction","entry":[]}"#))),
        ("json.duplicate-in-entry-resource", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/1"},"subject":{"reference":"Patient/2"}},"request":{"method":"POST","url":"Observation"}}]}"#))),
        ("json.duplicate-parameter-value", "POST", "/Patient/1/$everything",
            Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Observation","valueString":"Condition"}]}"#))),
        ("json.duplicate-in-json-patch", "PATCH", "/Patient/1",
            Some(("application/json-patch+json", r#"[{"op":"replace","path":"/name","path":"/link","value":[]}]"#))),
        // a body of another type than the URL's (servers create it at its own type)
        ("type.create-other-type", "POST", "/Observation",
            Some(("application/fhir+json", r#"{"resourceType":"Condition","subject":{"reference":"Patient/1"}}"#))),
        ("type.update-other-type", "PUT", "/Observation/1",
            Some(("application/fhir+json", r#"{"resourceType":"Patient","id":"1"}"#))),
        ("type.conditional-update-other-type", "PUT", "/Observation?identifier=a|b",
            Some(("application/fhir+json", r#"{"resourceType":"Patient"}"#))),
        ("type.entry-create-other-type", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient"},"request":{"method":"POST","url":"Observation"}}]}"#))),
        ("type.entry-operation-with-a-resource", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"resource":{"resourceType":"Observation","subject":{"reference":"Patient/2"}},"request":{"method":"POST","url":"Observation/$lastn?patient=1"}}]}"#))),
        ("type.entry-instance-operation-with-a-resource", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Patient/1/$meta"}}]}"#))),
        ("type.entry-search-with-a-resource", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Observation/_search"}}]}"#))),
        // bundle entry request members
        ("entry.if-match-as-a-match-url", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Parameters"},"request":{"method":"PATCH","url":"Observation/1","ifMatch":"Observation?_id=2"}}]}"#))),
        ("entry.if-none-match-not-an-etag", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/1","ifNoneMatch":"*"}}]}"#))),
        ("entry.unknown-request-member", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation/1","modifierExtension":[]}}]}"#))),
        // conditional criteria are search parameters only
        ("conditional.cascade", "DELETE", "/Patient?_id=1&_cascade=delete", None),
        ("conditional.expunge", "DELETE", "/Observation?code=x&_expunge=true", None),
        ("conditional.cascade-in-entry", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"DELETE","url":"Encounter?patient=1&_cascade=delete"}}]}"#))),
        ("conditional.if-none-exist-switch", "POST", "/",
            Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation"},"request":{"method":"POST","url":"Observation","ifNoneExist":"code=x&_cascade=delete"}}]}"#))),
        // respelled control names in a Parameters body
        ("parameters.respelled-type", "POST", "/$export?_type=Observation",
            Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"_TYPE","valueString":"Patient,Condition"}]}"#))),
        ("parameters.same-name-other-case", "POST", "/Patient/1/$everything?start=2020",
            Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"Start","valueString":"2000"}]}"#))),
        // found by the attack review
        ("review.cascade-delete-param", "DELETE", "/Patient/1?_cascade=delete", None),
        ("review.cascade-delete-observation", "DELETE", "/Observation/1?_cascade=delete", None),
        ("review.update-with-a-parameter", "PUT", "/Observation/1?_cascade=delete", None),
        ("review.read-with-a-search-parameter", "GET", "/Patient/1?_revinclude=Observation:subject", None),
        ("review.create-with-a-parameter", "POST", "/Observation?subject=Patient/1", None),
        ("review.bundle-with-a-parameter", "POST", "/?_cascade=delete", Some(("application/fhir+json", r#"{"resourceType":"Bundle","type":"batch"}"#))),
        ("review.operation-by-delete", "DELETE", "/Patient/1/$meta", None),
        ("review.operation-by-put", "PUT", "/Patient/1/$meta", None),
        ("review.operation-by-patch", "PATCH", "/$everything", None),
        ("review.parameters-two-values", "POST", "/Patient/1/$everything",
            Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueCode":"Observation","valueString":"Condition,MedicationRequest"}]}"#))),
        ("review.parameters-value-and-part", "POST", "/$export",
            Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Observation","part":[]}]}"#))),
        ("review.fhirpath-patch-part-twice", "PATCH", "/Patient/1",
            Some(("application/fhir+json", r#"{"resourceType":"Parameters","parameter":[{"name":"operation","part":[{"name":"type","valueCode":"replace"},{"name":"path","valueString":"Patient.name"},{"name":"path","valueString":"Patient.link"}]}]}"#))),
        ("review.fragment-in-entry-url", "POST", "/",
            Some(("application/fhir+json", r##"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation?code=x#&subject=Patient/1"}}]}"##))),
        ("review.pin-in-another-case", "GET", "/Observation?subject=Patient/1&Subject=Patient/2", None),
        ("review.pin-in-upper-case", "GET", "/Observation?SUBJECT=Patient/2", None),
        ("review.pin-case-chained", "GET", "/Observation?Subject.name=x", None),
        ("review.reference-member-case", "POST", "/Observation",
            Some(("application/fhir+json", r#"{"resourceType":"Observation","subject":{"reference":"Patient/1","Reference":"Patient/2"}}"#))),
        ("json.escaped-duplicate", "POST", "/Observation",
            Some(("application/fhir+json", r#"{"resourceType":"Observation","subject":{"reference":"Patient/1"},"subj\u0065ct":{"reference":"Patient/2"}}"#))),
    ];

    #[test]
    fn ambiguous_requests_are_refused() {
        let mut failures = Vec::new();
        for (rule, method, path, body) in AMBIGUOUS {
            match classify_str(method, path, *body, None) {
                Err(e) if e.http_status() == 400 => {}
                other => failures.push(format!("{rule}: {method} {path}: {other:?}")),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn at_most_a_hundred_parameters() {
        // Node's querystring and qs keep 1000, Tomcat its maxParameterCount: a pin after the
        // cut would be judged here and never applied.
        let mut q = String::from("/Observation?");
        for _ in 0..MAX_PARAMS {
            q.push_str("_lastUpdated=ge1900&");
        }
        let ok = classify_str("GET", q.trim_end_matches('&'), None, None);
        assert!(ok.is_ok(), "{ok:?}");
        q.push_str("subject=Patient/1");
        assert_eq!(
            classify_str("GET", &q, None, None)
                .map_err(|e| e.http_status())
                .err(),
            Some(400)
        );
        let form: String = (0..=MAX_PARAMS).map(|i| format!("a{i}=1&")).collect();
        let e = classify_str(
            "POST",
            "/Observation/_search",
            Some(("application/x-www-form-urlencoded", &form)),
            None,
        );
        assert_eq!(e.map_err(|e| e.http_status()).err(), Some(400));
    }

    #[test]
    fn if_none_exist_cannot_carry_a_token_or_an_override() {
        for criteria in [
            "identifier=a|b&access_token=x",
            "access%5Ftoken=x",
            "_method=DELETE",
        ] {
            let e = classify_str("POST", "/Observation", None, Some(criteria));
            assert_eq!(
                e.map_err(|e| e.http_status()).err(),
                Some(400),
                "{criteria}"
            );
        }
    }

    #[test]
    fn query_tokens_are_found_in_every_spelling() {
        // (query, plain spelling?)
        for (q, plain) in [
            ("access_token=t", true),
            ("access%5Ftoken=t", false),
            ("access%5ftoken=t", false),
            ("%61ccess_token=t", false),
            ("Access_Token=t", false),
            ("ACCESS_TOKEN=t", false),
            ("access_token:x=t", false),
        ] {
            let r = classify_str("GET", &format!("/Observation?code=1&{q}"), None, None).unwrap();
            assert_eq!(r.access_tokens.len(), 1, "{q}");
            assert_eq!(r.access_tokens[0].plain, plain, "{q}");
            assert_eq!(r.access_tokens[0].value, "t", "{q}");
            assert!(
                r.params
                    .iter()
                    .all(|(k, _)| !k.to_ascii_lowercase().starts_with("access")),
                "{q}: the token is never a search parameter"
            );
        }
    }

    #[test]
    fn posted_operation_parameters_are_read() {
        let j = "application/fhir+json";
        let r = classify_str(
            "POST",
            "/Patient/1/$everything",
            Some((j, r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Condition,MedicationRequest"},{"name":"start","valueDate":"2020-01-01"},{"name":"patient","valueReference":{"reference":"Patient/9"}}]}"#)),
            None,
        )
        .unwrap();
        assert!(r.params_complete);
        assert_eq!(
            r.params,
            vec![
                ("_type".into(), "Condition,MedicationRequest".into()),
                ("start".into(), "2020-01-01".into()),
                ("patient".into(), "Patient/9".into()),
            ]
        );
        let r = classify_str("POST", "/Patient/1/$everything", None, None).unwrap();
        assert!(!r.params_complete, "no body: its parameters are unknown");
        let r = classify_str(
            "POST",
            "/Patient/1/$everything",
            Some(("application/fhir+xml", "<Parameters/>")),
            None,
        )
        .unwrap();
        assert!(!r.params_complete, "XML parameters are not read");
        let r = classify_str(
            "POST",
            "/$export",
            Some(("application/x-www-form-urlencoded", "_type=Observation")),
            None,
        )
        .unwrap();
        assert_eq!(r.params, vec![("_type".into(), "Observation".into())]);
    }

    #[test]
    fn patch_bodies_name_the_elements_they_change() {
        let r = classify_str(
            "PATCH",
            "/Patient/1",
            Some(("application/json-patch+json", r#"[{"op":"add","path":"/link/-","value":{}},{"op":"move","from":"/id","path":"/name/0"},{"op":"replace","path":"/a~1b","value":1}]"#)),
            None,
        )
        .unwrap();
        let Some(PatchBody::Ops(ops)) = r.patch else {
            panic!("{:?}", r.patch)
        };
        let got: Vec<_> = ops
            .iter()
            .map(|o| (o.element.clone(), o.from_element.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("link".into()), None),
                (Some("name".into()), Some("id".into())),
                (Some("a/b".into()), None)
            ]
        );
        let r = classify_str(
            "PATCH",
            "/Patient/1",
            Some(("application/xml-patch+xml", "<x/>")),
            None,
        )
        .unwrap();
        assert_eq!(r.patch, Some(PatchBody::Uninspected));
    }

    #[test]
    fn a_bundle_without_a_visible_body_counts_as_writing() {
        let r = classify_str("POST", "/", None, None).unwrap();
        assert_eq!(r.interaction, BundleUninspected);
        assert!(r.writes);
    }

    #[test]
    fn describe_never_shows_parameter_values() {
        let r = classify_str("GET", "/Observation?subject=Patient/secret-id", None, None).unwrap();
        assert_eq!(r.describe(), "search-type Observation");
    }
}
