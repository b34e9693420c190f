//! The query string: strict parsing (separators, repeated and respelled control parameters,
//! access tokens in the URL) and the parameters each interaction may carry.

use super::*;

/// One query parameter as sent: the raw name (before decoding), decoded name and value.
pub(super) struct RawParam {
    pub(super) raw_name: String,
    pub(super) name: String,
    pub(super) value: String,
}

/// Control parameters whose meaning widens or redirects a search. A server that matched
/// parameter names loosely would honour `_INCLUDE` while fhirguard saw an unknown parameter,
/// so any other spelling of these is refused.
pub(super) const CONTROL_PARAMS: &[&str] = &[
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

pub(super) fn parse_query_raw(query: &str) -> Result<Vec<RawParam>, RequestError> {
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
pub(super) fn is_access_token_name(name: &str) -> bool {
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

pub(super) fn decode_query_component(s: &str) -> Result<String, RequestError> {
    let replaced = s.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&replaced).collect();
    let s = String::from_utf8(bytes).map_err(|_| RequestError::Query("not valid UTF-8"))?;
    if s.chars().any(|c| c.is_control()) {
        return Err(RequestError::Query("control characters"));
    }
    Ok(s)
}

/// A parameter named like one of the type's search parameters but in another case
/// (`Subject=` next to `subject=`): a server with a case-insensitive parameter map reads one
/// of them, fhirguard the other.
pub(super) fn check_param_spellings<'a>(
    t: &str,
    params: impl Iterator<Item = &'a (String, String)>,
) -> Result<(), RequestError> {
    let defined = crate::core::definitions::search_params(t);
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
pub(super) fn check_instance_query(
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
pub(super) fn check_conditional_params(
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
