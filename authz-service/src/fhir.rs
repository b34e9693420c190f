//! FHIR R4 request classification (pure).
//!
//! From the method, the path relative to the policy's base, the query and (when Envoy sends
//! it) the body, derive which RESTful interaction a request is. The path is normalised first,
//! and every spelling that could make fhirguard and the FHIR server disagree about which
//! resource is meant is refused: dot-segments, empty segments, encoded slashes, `;` path
//! parameters (servlet containers strip them), double encoding, invalid UTF-8.

use std::collections::BTreeSet;

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

/// Decodes a query string into parameters. `+` is a space, as servlet-based FHIR servers read it.
pub fn parse_query(query: &str) -> Result<Vec<(String, String)>, RequestError> {
    let mut out = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
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
        let k = decode_query_component(k)?;
        let v = decode_query_component(v)?;
        if k.is_empty() {
            return Err(RequestError::Query("empty parameter name"));
        }
        out.push((k, v));
    }
    Ok(out)
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
    /// For compartment searches: the compartment's type and id (`Patient`, `123`).
    pub compartment: Option<(String, String)>,
    /// Search, conditional and operation parameters: the query, then a form body
    /// (`POST _search`) or `If-None-Exist` criteria.
    pub params: Vec<(String, String)>,
    /// False when parameters may exist that fhirguard could not see (a `POST _search` whose
    /// body Envoy did not send).
    pub params_complete: bool,
    /// Whether the interaction can change stored data. Decided conservatively: an unknown
    /// operation invoked with POST writes.
    pub writes: bool,
    /// Entries of a batch or transaction, each classified like a request of its own.
    pub entries: Vec<FhirRequest>,
    /// The resource sent with a create or update, when the body was available as JSON.
    pub resource: Option<serde_json::Value>,
}

impl FhirRequest {
    fn new(interaction: Interaction) -> Self {
        FhirRequest {
            interaction,
            resource_type: None,
            id: None,
            version_id: None,
            operation: None,
            compartment: None,
            params: Vec::new(),
            params_complete: true,
            writes: false,
            entries: Vec::new(),
            resource: None,
        }
    }

    /// `read`, or `read Observation/123`, for diagnostics (never includes parameter values,
    /// which may identify a patient).
    pub fn describe(&self) -> String {
        let mut s = self.interaction.as_str().to_string();
        if let Some(op) = &self.operation {
            s.push_str(&format!(" ${op}"));
        }
        if let Some(t) = &self.resource_type {
            s.push(' ');
            s.push_str(t);
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

/// Operations whose R4 definitions say `affectsState: false`, so invoking them with POST
/// changes nothing (plus bulk-data `$export`, which only starts an export job). Operations
/// invoked with GET never change state (FHIR forbids GET for those that do). Every other
/// POSTed operation is treated as writing.
const READ_ONLY_OPERATIONS: &[&str] = &[
    "everything",
    "export",
    "validate",
    "meta",
    "lookup",
    "expand",
    "validate-code",
    "translate",
    "subsumes",
    "lastn",
    "stats",
    "match",
    "evaluate-measure",
    "data-requirements",
    "conforms",
    "implements",
    "versions",
    "graphql-query",
];

fn operation_writes(method: &str, name: &str) -> bool {
    !(matches!(method, "GET" | "HEAD") || READ_ONLY_OPERATIONS.contains(&name))
}

fn is_form(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.split(';').next().is_some_and(|m| {
            m.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
    })
}

fn is_json(content_type: Option<&str>) -> bool {
    // A missing content type is parsed as JSON and refused if it is not: never an allow.
    content_type.is_none_or(|ct| {
        let m = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        m == "application/fhir+json" || m == "application/json" || m == "application/json+fhir"
    })
}

fn parse_json_body(body: Body<'_>) -> Result<serde_json::Value, RequestError> {
    if !is_json(body.content_type) {
        return Err(RequestError::Body(format!(
            "content type {:?} cannot be inspected; send application/fhir+json",
            body.content_type.unwrap_or("")
        )));
    }
    serde_json::from_slice(body.bytes).map_err(|e| RequestError::Body(format!("not JSON: {e}")))
}

/// Classifies one request.
pub fn classify(req: HttpRequest<'_>) -> Result<FhirRequest, RequestError> {
    let method = req.method;
    let is_read_method = matches!(method, "GET" | "HEAD");
    if !is_read_method && !matches!(method, "POST" | "PUT" | "PATCH" | "DELETE") {
        return Err(RequestError::Method(method.to_string()));
    }
    let query = match req.query {
        Some(q) => parse_query(q)?,
        None => Vec::new(),
    };
    let has_query = !query.is_empty();
    let segs: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let not_fhir = |what: &str| Err(RequestError::NotFhir(format!("{method} {what}")));

    let mut out = match segs.as_slice() {
        [] => match method {
            "GET" | "HEAD" => FhirRequest::new(Interaction::SearchSystem),
            "POST" => return classify_bundle(req),
            _ => return not_fhir("on the base"),
        },
        ["metadata"] if is_read_method => FhirRequest::new(Interaction::Capabilities),
        ["_history"] if is_read_method => FhirRequest::new(Interaction::HistorySystem),
        ["_search"] if method == "POST" => search_post(Interaction::SearchSystem, req)?,
        [op] if operation_name(op).is_some() => operation(Interaction::OperationSystem, method, op),
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
                    return not_fhir(&format!("on a resource type without search criteria ({t})"));
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
            let mut r = operation(Interaction::OperationType, method, op);
            r.resource_type = Some(t.to_string());
            r
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
            let mut r = operation(Interaction::OperationInstance, method, op);
            r.resource_type = Some(t.to_string());
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

    let mut params = query;
    params.append(&mut out.params);
    out.params = params;
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
        out.resource = Some(resource);
    }
    Ok(out)
}

fn instance(interaction: Interaction, t: &str, id: &str) -> FhirRequest {
    let mut r = FhirRequest::new(interaction);
    r.resource_type = Some(t.to_string());
    r.id = Some(id.to_string());
    r
}

fn operation(interaction: Interaction, method: &str, op: &str) -> FhirRequest {
    let name = operation_name(op).unwrap_or_default();
    let mut r = FhirRequest::new(interaction);
    r.operation = Some(name.to_string());
    r.writes = operation_writes(method, name);
    r
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
        other => {
            return Err(RequestError::Body(format!(
                "Bundle.type must be batch or transaction, not {:?}",
                other.unwrap_or("")
            )));
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
    let resource = entry.get("resource");
    let bytes = resource.map(|r| r.to_string()).unwrap_or_default();
    let body = resource.map(|_| Body {
        bytes: bytes.as_bytes(),
        content_type: Some("application/fhir+json"),
    });
    classify(HttpRequest {
        method,
        segments: &segments,
        query,
        body,
        if_none_exist: request.get("ifNoneExist").and_then(|v| v.as_str()),
    })
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
        ("POST", "/Composition/1/$document", OperationInstance, Some("Composition"), Some("1"), true),
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
