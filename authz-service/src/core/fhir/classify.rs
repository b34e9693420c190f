//! From method, path segments, query and body to the FHIR interaction.

use super::*;

pub(super) fn is_resource_type(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && s.len() <= 64
        && chars.all(|c| c.is_ascii_alphabetic())
}

pub(super) fn is_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

pub(super) fn operation_name(s: &str) -> Option<&str> {
    let name = s.strip_prefix('$')?;
    let mut chars = name.chars();
    (chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    .then_some(name)
}

pub(super) fn media_type(content_type: Option<&str>) -> Option<String> {
    content_type.map(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    })
}

pub(super) fn is_form(content_type: Option<&str>) -> bool {
    media_type(content_type).is_some_and(|m| m == "application/x-www-form-urlencoded")
}

pub(super) fn is_json(content_type: Option<&str>) -> bool {
    // A missing content type is parsed as JSON and refused if it is not: never an allow.
    media_type(content_type).is_none_or(|m| {
        m == "application/fhir+json" || m == "application/json" || m == "application/json+fhir"
    })
}

pub(super) fn is_json_patch(content_type: Option<&str>) -> bool {
    media_type(content_type).is_some_and(|m| m == "application/json-patch+json")
}

pub(super) fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, RequestError> {
    crate::core::json::parse_strict(bytes)
        .map_err(|e| RequestError::Body(format!("not usable JSON: {e}")))
}

pub(super) fn parse_json_body(body: Body<'_>) -> Result<serde_json::Value, RequestError> {
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

pub(super) fn instance(interaction: Interaction, t: &str, id: &str) -> FhirRequest {
    let mut r = FhirRequest::new(interaction);
    r.resource_type = Some(t.to_string());
    r.id = Some(id.to_string());
    r
}

/// Classifies an operation: exact name, level and type from the table of known operations,
/// whether it writes, and (POSTed) the parameters of its body.
pub(super) fn operation(
    interaction: Interaction,
    req: HttpRequest<'_>,
    segment: &str,
    resource_type: Option<&str>,
    query: &[(String, String)],
) -> Result<FhirRequest, RequestError> {
    use crate::core::operations::{self, Level};
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

pub(super) fn search_post(
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
