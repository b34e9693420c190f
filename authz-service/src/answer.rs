//! What a refusal looks like on the wire (pure): a FHIR `OperationOutcome` body and the
//! headers that go with it. The Envoy adapter only copies these into its message types.

use crate::policy::Deny;

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
/// The client's other preferences (`return=`, `respond-async`) are kept; its own `handling`
/// is replaced, so a client cannot ask for lenient handling of a pinned search.
pub fn strict_prefer(existing: Option<&str>) -> String {
    let mut kept: Vec<&str> = existing
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|p| {
            let name = p.split(['=', ';']).next().unwrap_or("").trim();
            !p.is_empty() && !name.eq_ignore_ascii_case("handling")
        })
        .collect();
    kept.push("handling=strict");
    kept.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DenyReason;

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
        ];
        for (given, want) in cases {
            assert_eq!(strict_prefer(given), want, "Prefer: {given:?}");
        }
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
}
