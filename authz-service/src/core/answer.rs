//! What a refusal looks like on the wire (pure): a FHIR `OperationOutcome` body and the
//! headers that go with it. The Envoy adapter only copies these into its message types.

use crate::core::policy::{Allow, Deny, OutboundAuth, Respond};

/// Header carrying the decision id, upstream and back to the client.
pub const DECISION_ID_HEADER: &str = "x-fhirguard-decision-id";
pub const SUBJECT_HEADER: &str = "x-fhirguard-subject";
pub const PATIENT_HEADER: &str = "x-fhirguard-patient";
pub const SCOPES_HEADER: &str = "x-fhirguard-scopes";
/// Every incoming header with this prefix is removed, so that a client cannot forge identity.
pub const HEADER_PREFIX: &str = "x-fhirguard-";
pub const FHIR_JSON: &str = "application/fhir+json";

/// An `OperationOutcome` with one error issue.
pub fn operation_outcome(code: &str, diagnostics: &str, decision_id: &str) -> String {
    serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": code,
            "diagnostics": diagnostics,
        }],
        "extension": [{
            "url": "https://fhirguard.dev/StructureDefinition/decision-id",
            "valueString": decision_id,
        }],
    })
    .to_string()
}

/// The HTTP answer for a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedAnswer {
    pub status: u16,
    /// In order; `WWW-Authenticate` may appear more than once.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

pub fn denied(d: &Deny, decision_id: &str) -> DeniedAnswer {
    let mut headers = vec![
        ("content-type".to_string(), FHIR_JSON.to_string()),
        (DECISION_ID_HEADER.to_string(), decision_id.to_string()),
    ];
    headers.extend(
        d.www_authenticate
            .iter()
            .map(|v| ("www-authenticate".to_string(), v.clone())),
    );
    DeniedAnswer {
        status: d.status,
        headers,
        body: operation_outcome(d.issue_code(), &d.diagnostics, decision_id),
    }
}

/// The HTTP answer fhirguard gives itself (the SMART discovery document): the same shape as a
/// refusal on the wire (Envoy sends it to the client instead of going upstream), with the
/// decided status, normally 200.
pub fn responded(r: &Respond, decision_id: &str) -> DeniedAnswer {
    DeniedAnswer {
        status: r.status,
        headers: vec![
            ("content-type".to_string(), r.content_type.to_string()),
            ("cache-control".to_string(), "no-cache".to_string()),
            (DECISION_ID_HEADER.to_string(), decision_id.to_string()),
        ],
        body: r.body.clone(),
    }
}

/// The answer when the service cannot decide but Envoy is configured to ask us anyway
/// (for the HTTP-level body of a 503 we never produce ourselves; kept for the demo page).
pub fn unavailable_body(decision_id: &str, why: &str) -> String {
    operation_outcome("transient", why, decision_id)
}

/// The `Prefer` header for a request whose permission rests on its search parameters.
///
/// FHIR servers may ignore search parameters they do not support (FHIR R4 search, "lenient"
/// handling, the default on many servers), and `Observation?patient=123` then returns every
/// patient's Observations. `handling=strict` makes such a server refuse the search instead.
/// The client's other preferences (`return=`, `respond-async`) are kept; every `handling`
/// token it sent is removed, however it is separated: RFC 7240 puts parameters of one
/// preference after `;` (`return=minimal; handling=lenient`), and servers differ in whether
/// they read those as preferences of their own.
pub fn strict_prefer(existing: Option<&str>) -> String {
    let is_handling = |token: &str| {
        let name = token
            .split('=')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches('"');
        name.eq_ignore_ascii_case("handling")
    };
    let mut kept: Vec<String> = Vec::new();
    for preference in existing.unwrap_or("").split(',') {
        let pieces: Vec<&str> = preference
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty() && !is_handling(p))
            .collect();
        // A preference whose own name was `handling` goes entirely, with its parameters.
        let first_was_handling = preference
            .split(';')
            .next()
            .is_some_and(|p| is_handling(p.trim()));
        if !pieces.is_empty() && !first_was_handling {
            kept.push(pieces.join("; "));
        }
    }
    kept.push("handling=strict".into());
    kept.join(", ")
}

/// Every spelling of fhirguard's identity headers with `-` or `_` at each separator, for
/// removal even when the check request did not carry them. Computed once.
pub fn identity_header_spellings() -> &'static [&'static str] {
    &IDENTITY_SPELLINGS.all
}

/// The spellings, and for each combination of identity headers an allow can set (subject,
/// patient, scopes; the decision id is always set) the spellings left to remove, so that an
/// allow picks its list instead of filtering twenty names per request.
struct Spellings {
    all: Vec<&'static str>,
    removals: [Vec<&'static str>; 8],
}

static IDENTITY_SPELLINGS: std::sync::LazyLock<Spellings> = std::sync::LazyLock::new(|| {
    let mut all: Vec<&'static str> = Vec::new();
    for name in [
        SUBJECT_HEADER,
        PATIENT_HEADER,
        SCOPES_HEADER,
        DECISION_ID_HEADER,
    ] {
        let parts: Vec<&str> = name.split('-').collect();
        let gaps = parts.len() - 1;
        for mask in 0..(1u32 << gaps) {
            let mut s = parts[0].to_string();
            for (i, p) in parts[1..].iter().enumerate() {
                s.push(if mask & (1 << i) == 0 { '-' } else { '_' });
                s.push_str(p);
            }
            // Twenty short names made once per process: leaking them gives the `'static`
            // borrows every answer hands out.
            all.push(Box::leak(s.into_boxed_str()));
        }
    }
    all.sort_unstable();
    let removals = std::array::from_fn(|mask| {
        let set = |bit: usize, name: &'static str| (mask & bit != 0).then_some(name);
        let ours = [
            Some(DECISION_ID_HEADER),
            set(1, SUBJECT_HEADER),
            set(2, PATIENT_HEADER),
            set(4, SCOPES_HEADER),
        ];
        all.iter()
            .copied()
            .filter(|k| !ours.contains(&Some(*k)))
            .collect()
    });
    Spellings { all, removals }
});

/// Whether a header name, read the way CGI, WSGI and Rack stacks read it (case-insensitive,
/// `_` as `-`), starts with `x-fhirguard-`.
pub fn is_forged_name(k: &str) -> bool {
    k.len() >= HEADER_PREFIX.len()
        && k.as_bytes()[..HEADER_PREFIX.len()]
            .iter()
            .zip(HEADER_PREFIX.as_bytes())
            .all(|(a, b)| {
                let a = a.to_ascii_lowercase();
                a == *b || (a == b'_' && *b == b'-')
            })
}

/// The incoming headers a client could use to assert an identity to the upstream: every
/// header whose name, read the way CGI, WSGI and Rack stacks read it (case-insensitive, `_`
/// as `-`), starts with `x-fhirguard-`. Returned as sent, so that Envoy removes exactly them.
pub fn forged_headers<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    names
        .into_iter()
        .filter(|k| is_forged_name(k))
        .map(str::to_string)
        .collect()
}

/// What an allowed request becomes upstream (pure): the headers to set and to remove, and the
/// headers for the client's response. A host copies these into its own message types; the
/// query rewrite is in the [`Allow`] itself (`remove_query`, `set_query`). Names are borrowed
/// (static, or from the request's own header names) so that a host that can pass them on
/// without copying does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedAnswer<'a> {
    /// Set on the upstream request, replacing any value the client sent.
    pub set: Vec<(&'static str, String)>,
    /// Removed from the upstream request.
    pub remove: Vec<&'a str>,
    /// Set on the response to the client.
    pub response_set: Vec<(&'static str, String)>,
}

/// The upstream headers for an allow. `incoming` are the request's header names as the host
/// saw them; `prefer` is the request's `Prefer` header.
pub fn allowed<'a>(
    a: &Allow,
    decision_id: &str,
    incoming: impl IntoIterator<Item = &'a str>,
    prefer: Option<&str>,
) -> AllowedAnswer<'a> {
    let mut set = Vec::with_capacity(6);
    set.push((DECISION_ID_HEADER, decision_id.to_string()));
    let mut mask = 0;
    if let Some(s) = &a.subject {
        set.push((SUBJECT_HEADER, s.clone()));
        mask |= 1;
    }
    if let Some(p) = &a.patient {
        set.push((PATIENT_HEADER, p.clone()));
        mask |= 2;
    }
    if let Some(s) = &a.scopes {
        set.push((SCOPES_HEADER, s.clone()));
        mask |= 4;
    }
    if a.strict_search {
        set.push(("prefer", strict_prefer(prefer)));
    }
    let mut remove_authorization = false;
    match &a.outbound {
        Some(OutboundAuth::Set(v)) => set.push(("authorization", v.clone())),
        Some(OutboundAuth::Remove) => remove_authorization = true,
        None => {}
    }
    // A client must not be able to assert an identity: every x-fhirguard-* header it sent
    // goes, except those set just now (Envoy applies removals after sets, so ours would go
    // too). Identity headers are removed in every spelling a CGI/WSGI/Rack stack reads as
    // ours even when the check request did not show them: a mesh may send fhirguard only
    // some headers (Envoy Gateway's headersToExtAuth, Envoy's allowed_headers), and a forged
    // x-fhirguard-patient must not survive that.
    let fixed = &IDENTITY_SPELLINGS.removals[mask];
    let mut remove: Vec<&'a str> = Vec::with_capacity(fixed.len() + 2);
    remove.extend_from_slice(fixed);
    for k in incoming {
        if is_forged_name(k) && !set.iter().any(|(s, _)| *s == k) && !remove.contains(&k) {
            remove.push(k);
        }
    }
    if remove_authorization {
        remove.push("authorization");
    }
    // The values come from verified credentials, which the policy step already refuses when
    // they hold control characters; escaping here keeps any future source from writing a
    // header line of its own upstream.
    for (_, v) in &mut set {
        if v.chars().any(char::is_control) {
            *v = escape_controls(v);
        }
    }
    AllowedAnswer {
        set,
        remove,
        response_set: vec![(DECISION_ID_HEADER, decision_id.to_string())],
    }
}

/// Control characters as `%XX`, the rest unchanged.
fn escape_controls(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        if c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::DenyReason;

    #[test]
    fn strict_handling_replaces_the_clients_and_keeps_its_other_preferences() {
        let cases = [
            (None, "handling=strict"),
            (Some(""), "handling=strict"),
            (Some("handling=lenient"), "handling=strict"),
            (Some(" Handling = lenient "), "handling=strict"),
            (
                Some("return=minimal, handling=lenient"),
                "return=minimal, handling=strict",
            ),
            (
                Some("respond-async,return=OperationOutcome"),
                "respond-async, return=OperationOutcome, handling=strict",
            ),
            (Some("handling=strict"), "handling=strict"),
            // A preference that merely starts with the word is not the handling preference.
            (Some("handlingx=1"), "handlingx=1, handling=strict"),
            // Parameters after `;` that some servers read as preferences of their own.
            (
                Some("return=minimal; handling=lenient"),
                "return=minimal, handling=strict",
            ),
            (
                Some("return=minimal;handling=lenient;foo=1"),
                "return=minimal; foo=1, handling=strict",
            ),
            (
                Some("respond-async; HANDLING = lenient"),
                "respond-async, handling=strict",
            ),
            (Some("handling=lenient; return=minimal"), "handling=strict"),
            (Some("\"handling\"=lenient"), "handling=strict"),
            (Some("handling"), "handling=strict"),
            (Some("handling=strict, handling=lenient"), "handling=strict"),
            (Some(" ; , ;handling=lenient,"), "handling=strict"),
            (
                Some("return=representation,\thandling=lenient"),
                "return=representation, handling=strict",
            ),
        ];
        for (given, want) in cases {
            assert_eq!(strict_prefer(given), want, "Prefer: {given:?}");
        }
    }

    #[test]
    fn forged_identity_headers_in_every_spelling() {
        let incoming = [
            "x-fhirguard-patient",
            "x_fhirguard_patient",
            "x-fhirguard_patient",
            "x_fhirguard-subject",
            "X-FHIRGUARD-SCOPES",
            "X_Fhirguard_Decision_Id",
            "x-fhirguard-",
            "x-fhirguardpatient",
            "x-fhirguard",
            "authorization",
            "xx-fhirguard-patient",
        ];
        assert_eq!(
            forged_headers(incoming),
            vec![
                "x-fhirguard-patient",
                "x_fhirguard_patient",
                "x-fhirguard_patient",
                "x_fhirguard-subject",
                "X-FHIRGUARD-SCOPES",
                "X_Fhirguard_Decision_Id",
                "x-fhirguard-",
            ]
        );
    }

    #[test]
    fn a_401_is_an_operation_outcome_with_challenges() {
        let d = Deny {
            policy: Some("a/b".into()),
            status: 401,
            reason: DenyReason::MissingCredentials,
            www_authenticate: vec![
                r#"Bearer realm="fhir""#.into(),
                r#"Basic realm="fhir""#.into(),
            ],
            diagnostics: "credentials are required".into(),
        };
        let a = denied(&d, "abc");
        assert_eq!(a.status, 401);
        let www: Vec<_> = a
            .headers
            .iter()
            .filter(|(k, _)| k == "www-authenticate")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(www, vec![r#"Bearer realm="fhir""#, r#"Basic realm="fhir""#]);
        assert!(
            a.headers
                .contains(&("x-fhirguard-decision-id".into(), "abc".into()))
        );
        let body: serde_json::Value = serde_json::from_str(&a.body).unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome");
        assert_eq!(body["issue"][0]["code"], "login");
        assert_eq!(body["issue"][0]["diagnostics"], "credentials are required");
    }

    /// Finding 6 (issue 14 attack): identity header values are copied from the token (`sub`,
    /// the scope claim) without a check. Envoy applies ext_authz header mutations unchecked
    /// unless `validate_mutations: true` (no shipped config sets it), and its HTTP/1 encoder
    /// writes the bytes as they are: a CR/LF in a claim becomes a header line of its own.
    #[test]
    fn identity_header_values_carry_no_control_characters() {
        use crate::core::policy::AllowReason;
        let a = Allow {
            policy: "ns/p".into(),
            reason: AllowReason::Authenticated,
            subject: Some("app-1\r\nx-fhirguard-patient: 456".into()),
            patient: Some("123".into()),
            scopes: Some("patient/*.rs\r\nx-fhirguard-patient: 456".into()),
            remove_query: vec![],
            set_query: vec![],
            strict_search: false,
            interaction: None,
            outbound: None,
        };
        let ans = allowed(&a, "id", [], None);
        for (k, v) in &ans.set {
            assert!(
                !v.chars().any(|c| c.is_control()),
                "{k} carries a control character: {v:?}"
            );
        }
    }
}
