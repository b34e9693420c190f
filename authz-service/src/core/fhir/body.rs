//! Request bodies read for the decision: POSTed `Parameters` and PATCH documents (JSON Patch
//! and FHIRPath Patch).

use super::*;

/// The parameters of a `Parameters` body as (name, value) pairs: primitive values as their
/// text, references as their reference string, anything else (a resource, parts) as "".
pub(super) fn parameters_of(
    doc: &serde_json::Value,
) -> Result<Vec<(String, String)>, RequestError> {
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
pub(super) fn pointer_element(pointer: &str) -> Option<String> {
    let first = pointer.strip_prefix('/')?.split('/').next()?;
    // RFC 6901 escapes.
    let name = first.replace("~1", "/").replace("~0", "~");
    (!name.is_empty()).then_some(name)
}

/// The top-level element a FHIRPath Patch path (`Observation.subject`, `Patient.name[0]`)
/// names, when it is a plain path.
pub(super) fn fhirpath_element(path: &str) -> Option<String> {
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
pub(super) fn patch_body(body: Body<'_>) -> Result<PatchBody, RequestError> {
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

pub(super) fn fhirpath_patch_ops(doc: &serde_json::Value) -> Result<Vec<PatchOp>, RequestError> {
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
