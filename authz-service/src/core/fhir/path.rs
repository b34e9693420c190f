//! The request path: percent-decoding one segment at a time and refusing every spelling that
//! two parsers could read as different resources.

use super::*;

/// Decodes `%XX` escapes in one path segment and refuses every escape trick.
pub(super) fn decode_segment(seg: &str) -> Result<String, RequestError> {
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
