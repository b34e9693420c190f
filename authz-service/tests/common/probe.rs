//! The harness of the outside reviews' probe files: one policy on `ehr.test` (JWT, audit on,
//! optionally compartment lookups) and a request run through the core's driver with the
//! verifier and lookups answered by the test, giving its status and AuditEvents.

use std::sync::Arc;

use fhirguard_authz::config::*;
use fhirguard_authz::core::audit::audit_events;
use fhirguard_authz::core::driver::{Check, Need, Next, Outcome, TokenFailure};
use fhirguard_authz::core::fhir::Body;
use fhirguard_authz::core::policy::{Decision, DenyReason, Request, TokenIdentity};
use fhirguard_authz::core::smart::{LookupKey, Stored};
use serde_json::{Value, json};

pub const AUD: &str = "https://ehr.test/fhir";

/// The probes' config: with `lookups`, compartment lookups through a connection.
pub fn config(lookups: bool) -> CompiledConfig {
    let mut p: PolicyConfig = serde_json::from_value(json!({
        "namespace": "clinical", "name": "ehr", "hosts": ["ehr.test"], "basePath": "/fhir",
        "authentication": {
            "jwt": {"tokenSources": ["Header"], "providers": [{
                "name": "idp", "issuer": "https://idp.test", "audiences": [AUD],
                "algorithms": ["ES256"], "jwks": {"uri": "https://idp.test/jwks"}}]},
        },
        "audit": {"record": "PatientDataAndRefusals", "stdout": true},
    }))
    .unwrap();
    let mut connections = Vec::new();
    if lookups {
        p.authorization.smart.compartment_lookup = Some(CompartmentLookup {
            connection: "clinical/ehr-internal".into(),
        });
        connections.push(ConnectionConfig {
            namespace: "clinical".into(),
            name: "ehr-internal".into(),
            url: "https://ehr.test/fhir".into(),
            auth: ConnectionAuth::default(),
            tls: TlsConfig::default(),
        });
    }
    let c = CompiledConfig {
        policies: vec![p],
        connections,
        ..CompiledConfig::empty(1)
    };
    assert_eq!(c.validate(), vec![]);
    c
}

/// The status and every AuditEvent (`record: All`) of one request. `token: None`: the
/// bearer token is forged (401). Lookups are answered by `answer` (a policy with
/// compartment lookups is used whenever `answer` is given).
pub fn run(
    method: &str,
    path: &str,
    body: Option<(&[u8], &str)>,
    token: Option<TokenIdentity>,
    answer: Option<&dyn Fn(&LookupKey) -> Stored>,
) -> (String, Vec<Value>) {
    let headers: Vec<(&str, &str)> = body
        .map(|(_, ct)| vec![("content-type", ct)])
        .unwrap_or_default();
    let req = Request {
        method,
        host: "ehr.test",
        path,
        authorization: Some("Bearer opaque-or-forged"),
        if_none_exist: None,
        headers: &headers,
        body: body.map(|(bytes, ct)| Body {
            bytes,
            content_type: Some(ct),
        }),
        policy_ref: None,
    };
    let config = config(answer.is_some());
    let mut check = Check::new(&config, &req);
    if let Next::Need(Need::Token { .. }) = check.next() {
        let t = token.map(Arc::new).ok_or_else(|| {
            TokenFailure::Invalid(DenyReason::InvalidToken, "signature invalid".into())
        });
        check.token_verified(t);
    }
    if let Next::Need(Need::Lookups { keys, .. }) = check.next() {
        let Some(answer) = answer else {
            return ("lookup".into(), Vec::new());
        };
        let keys: Vec<LookupKey> = keys.to_vec();
        let answers = keys
            .into_iter()
            .map(|k| {
                let a = answer(&k);
                (k, Ok(a))
            })
            .collect();
        check.lookups_done(answers);
    }
    let Some(outcome) = check.outcome() else {
        return (format!("{:?}", check.next()), Vec::new());
    };
    let label = match outcome {
        Outcome::Decided(Decision::Allow(_)) => "200".to_string(),
        Outcome::Decided(Decision::Deny(d)) => d.status.to_string(),
        Outcome::Decided(Decision::Respond(r)) => format!("respond {}", r.status),
        Outcome::Unavailable(_) => "503".into(),
    };
    let facts = super::audit_facts(&config, &check, method, "ehr.test", path, Some("10.0.0.9"));
    (label, audit_events(&facts, AuditRecord::All))
}

pub fn events(
    method: &str,
    path: &str,
    body: Option<(&[u8], &str)>,
    token: Option<TokenIdentity>,
) -> (String, Vec<Value>) {
    run(method, path, body, token, None)
}
