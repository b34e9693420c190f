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
