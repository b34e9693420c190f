//! Batch and transaction Bundles: each entry classified as the request it stands for.

use super::*;

pub(super) fn classify_bundle(req: HttpRequest<'_>) -> Result<FhirRequest, RequestError> {
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
pub(super) fn check_entry_request(request: &serde_json::Value) -> Result<(), RequestError> {
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

pub(super) fn classify_entry(entry: &serde_json::Value) -> Result<FhirRequest, RequestError> {
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
