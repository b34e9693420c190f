//! Golden files for the Envoy adapter: `tests/golden/adapter/NAME.request.json` (the parts of
//! an ext_authz CheckRequest that fhirguard reads) goes through the same function the gRPC
//! service calls, without a socket, and the CheckResponse (or gRPC status) it gives is compared
//! with `NAME.response.json`. The JSON shapes are this test's own (envoy-types has no serde);
//! the field names follow the proto. The decision id, random per Check, reads `<decision-id>`.
//!
//! `make-inputs.py` in that directory wrote the config and requests (its tokens expire in
//! 2100). After a deliberate change of answers, `FHIRGUARD_BLESS=1 cargo test --test
//! adapter_golden` rewrites the responses; review the diff like code.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
    HttpRequest, Request as AttrRequest,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use fhirguard_authz::observe::Ignore;
use fhirguard_authz::runtime::executor::{Executor, Options};
use fhirguard_authz::runtime::reload;
use fhirguard_authz::server::envoy;
use serde_json::{Value, json};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/adapter")
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The test's JSON request → the protobuf Envoy sends.
fn check_request(v: &Value) -> CheckRequest {
    let http = &v["http"];
    let headers: HashMap<String, String> = http
        .get("headers")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    // `encode_raw_headers: true`: headers arrive in header_map, values as bytes.
    let header_map = http
        .get("headerMap")
        .and_then(Value::as_array)
        .map(|list| HeaderMap {
            headers: list
                .iter()
                .map(|h| HeaderValue {
                    key: str_of(h, "key").to_string(),
                    raw_value: str_of(h, "rawValue").as_bytes().to_vec(),
                    ..Default::default()
                })
                .collect(),
        });
    let context_extensions: HashMap<String, String> = v
        .get("contextExtensions")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: str_of(http, "method").into(),
                    host: str_of(http, "host").into(),
                    path: str_of(http, "path").into(),
                    headers,
                    header_map,
                    body: str_of(http, "body").into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions,
            ..Default::default()
        }),
    }
}

fn header_options(list: &[HeaderValueOption]) -> Value {
    list.iter()
        .map(|o| {
            let h = o.header.clone().unwrap_or_default();
            let append = match o.append_action {
                0 => "append",
                1 => "add-if-absent",
                2 => "overwrite-or-add",
                3 => "overwrite-if-exists",
                _ => "unknown",
            };
            json!({"key": h.key, "value": h.value, "action": append})
        })
        .collect()
}

/// The body as JSON when it is JSON (OperationOutcomes), else as text.
fn body(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

/// The protobuf Envoy receives → the test's JSON.
fn response_json(r: &Result<tonic::Response<CheckResponse>, tonic::Status>) -> Value {
    let r = match r {
        Ok(r) => r.get_ref(),
        Err(status) => {
            return json!({"grpcError": {"code": format!("{:?}", status.code()), "message": status.message()}});
        }
    };
    let status = r.status.clone().unwrap_or_default();
    let http = match &r.http_response {
        Some(HttpResponse::OkResponse(ok)) => json!({"ok": {
            "headers": header_options(&ok.headers),
            "headersToRemove": ok.headers_to_remove,
            "responseHeadersToAdd": header_options(&ok.response_headers_to_add),
            "queryParametersToRemove": ok.query_parameters_to_remove,
            "queryParametersToSet": ok.query_parameters_to_set.iter()
                .map(|q| json!({"key": q.key, "value": q.value})).collect::<Vec<_>>(),
        }}),
        Some(HttpResponse::DeniedResponse(d)) => json!({"denied": {
            "status": d.status.map(|s| s.code),
            "headers": header_options(&d.headers),
            "body": body(&d.body),
        }}),
        Some(HttpResponse::ErrorResponse(e)) => json!({"error": format!("{e:?}")}),
        None => Value::Null,
    };
    json!({"status": {"code": status.code, "message": status.message}, "httpResponse": http})
}

/// Replaces every decision id (32 lower-case hex characters in a decision-id header, a
/// message or an OperationOutcome) with a placeholder.
fn without_decision_ids(v: Value, ids: &mut Vec<String>) -> Value {
    match v {
        Value::String(s) => {
            let mut out = s.clone();
            for id in ids.iter() {
                out = out.replace(id.as_str(), "<decision-id>");
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(
            a.into_iter()
                .map(|x| without_decision_ids(x, ids))
                .collect(),
        ),
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, x)| (k, without_decision_ids(x, ids)))
                .collect(),
        ),
        other => other,
    }
}

fn decision_ids(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => {
            // A decision id is 32 hex digits; find them wherever they appear.
            let b = s.as_bytes();
            let mut i = 0;
            while i + 32 <= b.len() {
                let run = b[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                    .count();
                if run == 32 && !out.iter().any(|o| o == &s[i..i + 32]) {
                    out.push(s[i..i + 32].to_string());
                }
                i += run.max(1);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| decision_ids(x, out)),
        Value::Object(m) => m.values().for_each(|x| decision_ids(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_answers_as_the_golden_files_say() {
    let executor = Arc::new(Executor::new(Arc::new(Ignore), Options::default()));
    reload::reload_now(&executor, &dir()).expect("the golden config loads");
    let bless = std::env::var_os("FHIRGUARD_BLESS").is_some();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".request.json"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 20,
        "golden requests missing from {}",
        dir().display()
    );
    let mut failures = Vec::new();
    for path in &names {
        let input: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let got = response_json(&envoy::check(&executor, &check_request(&input)).await);
        let mut ids = Vec::new();
        decision_ids(&got, &mut ids);
        let got = without_decision_ids(got, &mut ids);
        let expected_path = PathBuf::from(
            path.to_string_lossy()
                .replace(".request.json", ".response.json"),
        );
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if bless {
            std::fs::write(&expected_path, &text).unwrap();
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(want) if want == text => {}
            Ok(want) => failures.push(format!(
                "{}:\n--- expected\n{want}--- got\n{text}",
                expected_path.display()
            )),
            Err(_) => failures.push(format!(
                "{} is missing; got\n{text}",
                expected_path.display()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} golden answers differ:\n{}",
        failures.len(),
        names.len(),
        failures.join("\n")
    );
}

/// Attack probes (issue 14): requests whose answer a secure adapter must give. A test marked
/// `#[ignore = "finding N"]` fails today; see the attack report for finding N.
mod attack14 {
    use super::*;

    async fn executor() -> Arc<Executor> {
        let executor = Arc::new(Executor::new(Arc::new(Ignore), Options::default()));
        reload::reload_now(&executor, &dir()).expect("the golden config loads");
        executor
    }

    /// The writer app's token (patient 123, `patient/Observation.cruds`), from its golden request.
    fn writer_token() -> String {
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(dir().join("token-create-in-own-chart.request.json")).unwrap(),
        )
        .unwrap();
        str_of(&v["http"]["headers"], "authorization").to_string()
    }

    const OBS_123: &str = r#"{"resourceType":"Observation","status":"final","code":{"text":"heart rate"},"subject":{"reference":"Patient/123"}}"#;

    /// A conditional create of an Observation in patient 123's chart with these extra headers,
    /// either in `headers` (Envoy's default: duplicates joined with ',') or as `header_map`
    /// entries (`encode_raw_headers: true`: one entry per header line).
    fn create(extra: &[(&str, &str)], raw: bool) -> Value {
        let mut list = vec![
            ("authorization".to_string(), writer_token()),
            ("content-type".into(), "application/fhir+json".into()),
            ("content-length".into(), OBS_123.len().to_string()),
        ];
        list.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut http = json!({"method": "POST", "host": "ehr.golden", "path": "/fhir/r4/Observation", "body": OBS_123});
        if raw {
            http["headerMap"] = list
                .iter()
                .map(|(k, v)| json!({"key": k, "rawValue": v}))
                .collect();
        } else {
            let mut m = serde_json::Map::new();
            for (k, v) in list {
                m.insert(k, Value::String(v));
            }
            http["headers"] = Value::Object(m);
        }
        json!({ "http": http })
    }

    async fn allowed(executor: &Executor, input: &Value) -> bool {
        matches!(
            envoy::check(executor, &check_request(input)).await,
            Ok(r) if matches!(r.get_ref().http_response, Some(HttpResponse::OkResponse(_)))
        )
    }

    /// Control: an If-None-Exist that does not name patient 123 is refused (a match is
    /// returned to the client), and one that does is allowed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn control_if_none_exist_must_be_pinned() {
        let e = executor().await;
        let unpinned = [("if-none-exist", "identifier=http://x|abc")];
        assert!(!allowed(&e, &create(&unpinned, false)).await);
        assert!(!allowed(&e, &create(&unpinned, true)).await);
        let pinned = [("if-none-exist", "patient=123&identifier=http://x|abc")];
        assert!(allowed(&e, &create(&pinned, false)).await);
    }

    /// Finding 1: two If-None-Exist lines. The upstream (Tomcat/HAPI `getHeader`) reads the
    /// first, unpinned one; fhirguard reads the lines joined with ',' and finds a pin in the
    /// second, so HAPI returns another patient's matching Observation.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplicate_if_none_exist_lines_are_refused() {
        let e = executor().await;
        let mut allowed_variants = Vec::new();
        for first in ["identifier=http://x|abc", "_id=o2"] {
            // encode_raw_headers: true — one entry per line, joined by the adapter.
            let two_lines = [("if-none-exist", first), ("if-none-exist", "&patient=123")];
            if allowed(&e, &create(&two_lines, true)).await {
                allowed_variants.push(format!("header_map: {first:?} + \"&patient=123\""));
            }
            // Envoy's default `headers` map joins the same two lines with ','.
            let joined = format!("{first},&patient=123");
            if allowed(&e, &create(&[("if-none-exist", joined.as_str())], false)).await {
                allowed_variants.push(format!("headers: {joined:?}"));
            }
        }
        assert!(
            allowed_variants.is_empty(),
            "allowed: {allowed_variants:#?}"
        );
    }

    /// Finding 2: `If_None_Exist` (underscore) is not read, so the request is judged as a
    /// plain create; a CGI/WSGI/Rack-style server reads it as If-None-Exist (HTTP_IF_NONE_EXIST)
    /// and returns another patient's match. The same spelling rule already covers
    /// x-fhirguard-* and X-Cascade.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn if_none_exist_in_another_spelling_is_refused() {
        let e = executor().await;
        for name in ["if_none_exist", "if-none_exist", "if_none-exist"] {
            let h = [(name, "identifier=http://x|abc")];
            assert!(!allowed(&e, &create(&h, false)).await, "{name} was allowed");
        }
    }

    /// Finding 5: a GET carrying a form body. fhirguard judges the URL only; stacks that read
    /// form bodies on any method (Rack/Rails `params`, PHP `$_REQUEST`, Express `body-parser`
    /// merged into the query) see `_revinclude=*` and another patient's pin. Nothing in FHIR
    /// sends a body on GET, HEAD or DELETE, so a secure answer refuses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_on_get_is_refused() {
        let e = executor().await;
        let v: Value = serde_json::from_str(
            &std::fs::read_to_string(dir().join("token-own-patient-search.request.json")).unwrap(),
        )
        .unwrap();
        let token = str_of(&v["http"]["headers"], "authorization").to_string();
        let body = "patient=456&_revinclude=*";
        let input = json!({"http": {"method": "GET", "host": "ehr.golden",
            "path": "/fhir/r4/Observation?patient=123",
            "headers": {"authorization": token,
                        "content-type": "application/x-www-form-urlencoded",
                        "content-length": body.len().to_string()},
            "body": body}});
        assert!(
            !allowed(&e, &input).await,
            "GET with a form body was allowed"
        );
        // Without the body reaching fhirguard (a route that buffers no body) the length shows it.
        let input = json!({"http": {"method": "GET", "host": "ehr.golden",
            "path": "/fhir/r4/Observation?patient=123",
            "headers": {"authorization": str_of(&v["http"]["headers"], "authorization"),
                        "content-type": "application/x-www-form-urlencoded",
                        "content-length": body.len().to_string()}}});
        assert!(
            !allowed(&e, &input).await,
            "GET with an unseen body was allowed"
        );
    }
}
