//! One table, two hosts: every request of the Envoy adapter's golden table
//! (`authz-service/tests/golden/adapter`) goes over HTTP through one real Envoy twice, once on
//! a listener with ext_authz → the gRPC service and once on a listener with the dynamic
//! module, both reading the same config directory. What a client and the upstream see must be
//! identical: status, `WWW-Authenticate`, the OperationOutcome (decision ids aside), the
//! `x-fhirguard-*` and `Authorization` headers reaching the upstream (forged ones gone), the
//! rewritten query and `Prefer`. Each answer must also be the one the golden file states.
// Tests unwrap, expect and panic: a failed assumption here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::PathBuf;

use serde_json::Value;
use support::*;

fn golden_dir() -> PathBuf {
    workspace().join("authz-service/tests/golden/adapter")
}

/// Route selectors for the cases that name a policy or a connection: a request carries
/// `x-golden-route: <name>`, and that route carries the same key as ext_authz context
/// extension (gRPC listener) and as route metadata (module listener).
const NAMED: &[(&str, &str, &str)] = &[
    ("apps", "fhirguard.dev/policy", "clinical/apps"),
    ("nope-policy", "fhirguard.dev/policy", "clinical/nope"),
    ("partner", "fhirguard.dev/connection", "clinical/partner"),
    ("open", "fhirguard.dev/connection", "clinical/open"),
    (
        "nope-connection",
        "fhirguard.dev/connection",
        "clinical/nope",
    ),
];

fn routes(module: bool) -> String {
    let mut out = String::new();
    for (name, key, value) in NAMED {
        let per_route = if module {
            format!(
                r#"
                metadata: {{filter_metadata: {{fhirguard: {{"{key}": "{value}"}}}}}}"#
            )
        } else {
            format!(
                r#"
                typed_per_filter_config:
                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings: {{context_extensions: {{"{key}": "{value}"}}}}"#
            )
        };
        out.push_str(&format!(
            r#"
              - match: {{prefix: "/", headers: [{{name: x-golden-route, string_match: {{exact: {name}}}}}]}}
                route: {{cluster: upstream}}{per_route}"#
        ));
    }
    out.push_str(
        r#"
              - match: {prefix: "/"}
                route: {cluster: upstream}"#,
    );
    out
}

fn route_of(ext: &serde_json::Map<String, Value>) -> Option<&'static str> {
    NAMED
        .iter()
        .find(|(_, k, v)| ext.get(*k).and_then(Value::as_str) == Some(*v))
        .map(|(n, _, _)| *n)
}

/// What a client and the upstream saw, decision ids replaced.
fn visible(r: &Response) -> Value {
    let id = r
        .header("x-fhirguard-decision-id")
        .unwrap_or("")
        .to_string();
    let scrub = |s: &str| {
        if id.is_empty() {
            s.to_string()
        } else {
            s.replace(&id, "<id>")
        }
    };
    let mut v = serde_json::json!({
        "status": r.status,
        "www-authenticate": r.all("www-authenticate"),
        "content-type": r.header("content-type"),
        "decision-id-sent": r.header("x-fhirguard-decision-id").is_some_and(|v| v.len() == 32),
    });
    let body: Value = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    if r.status == 200 && body.get("method").is_none() {
        // fhirguard's own answer (the SMART discovery document), not the echo's.
        v["own-answer"] = body;
    } else if r.status == 200 {
        // The echo: what reached the upstream.
        let mut headers = serde_json::Map::new();
        let upstream_id = body["headers"]["x-fhirguard-decision-id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if let Some(h) = body["headers"].as_object() {
            for (k, val) in h {
                let k2 = k.replace('_', "-");
                if k2.starts_with("x-fhirguard-") || k == "authorization" || k == "prefer" {
                    let s = val.as_str().unwrap_or("");
                    let s = if !upstream_id.is_empty() {
                        s.replace(&upstream_id, "<id>")
                    } else {
                        s.to_string()
                    };
                    headers.insert(k.clone(), Value::String(s));
                }
            }
        }
        v["upstream"] = serde_json::json!({
            "method": body["method"],
            "path": body["path"],
            "headers": headers,
            "body": body["body"],
            "same-decision-id-both-ways": upstream_id == id,
        });
    } else if let Some(issue) = body["issue"].get(0) {
        v["outcome"] = serde_json::json!({
            "code": issue["code"],
            "diagnostics": scrub(issue["diagnostics"].as_str().unwrap_or("")),
        });
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_golden_table_gets_the_same_answers_through_ext_authz_and_the_module() {
    let Some(bin) = envoy_bin() else { return };
    let dir = golden_dir();
    let grpc = start_grpc_service(&dir).await;
    let upstream = start_echo().await;
    let (grpc_port, module_port, admin) = (free_port(), free_port(), free_port());
    let yaml = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:{l1}{l2}
  clusters:{authz}{up}
"#,
        l1 = listener("via_grpc", grpc_port, &routes(false), ext_authz_filter()),
        l2 = listener(
            "via_module",
            module_port,
            &routes(true),
            &module_filter(&dir, "")
        ),
        authz = cluster("authz", grpc, true),
        up = cluster("upstream", upstream, false),
    );
    let envoy = run_envoy(&bin, &yaml, admin, &["--log-level", "warn"]).await;

    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".request.json"))
        .collect();
    names.sort();
    assert!(names.len() >= 20, "golden requests missing");
    let mut failures = Vec::new();
    let mut compared = 0;
    for path in &names {
        let case = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".request.json", "");
        let input: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let http = &input["http"];
        let body = http["body"].as_str().unwrap_or("");
        let mut headers: Vec<(String, String)> = Vec::new();
        for (k, v) in http["headers"].as_object().into_iter().flatten() {
            headers.push((k.clone(), v.as_str().unwrap_or("").to_string()));
        }
        for h in http["headerMap"].as_array().into_iter().flatten() {
            headers.push((
                h["key"].as_str().unwrap_or("").to_string(),
                h["rawValue"].as_str().unwrap_or("").to_string(),
            ));
        }
        let declared = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        if declared.is_some_and(|n| n != body.len()) {
            // A body Envoy cut at max_request_bytes: an ext_authz message shape, not something
            // a client can send through a proxy (covered by the module's body-limit test).
            continue;
        }
        if let Some(ext) = input["contextExtensions"].as_object() {
            let Some(route) = route_of(ext) else {
                failures.push(format!("{case}: no route for {ext:?}"));
                continue;
            };
            headers.push(("x-golden-route".into(), route.into()));
        }
        let raw = request(
            http["method"].as_str().unwrap(),
            http["path"].as_str().unwrap(),
            http["host"].as_str().unwrap(),
            &headers,
            body,
        );
        let via_grpc = send(grpc_port, &raw).await.unwrap();
        let via_module = send(module_port, &raw).await.unwrap();
        let (g, m) = (visible(&via_grpc), visible(&via_module));
        compared += 1;
        if g != m {
            failures.push(format!(
                "{case}: the hosts differ\n  ext_authz: {g}\n  module:    {m}"
            ));
            continue;
        }
        // And both give the golden file's answer.
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(
                path.to_string_lossy()
                    .replace(".request.json", ".response.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let want_status = expected["httpResponse"]["denied"]["status"]
            .as_u64()
            .unwrap_or(if expected["httpResponse"]["ok"].is_object() {
                200
            } else {
                503
            });
        if u64::from(via_module.status) != want_status {
            failures.push(format!(
                "{case}: status {} but the golden file says {want_status}",
                via_module.status
            ));
        }
        let own = &expected["httpResponse"]["denied"];
        if own["status"] == 200 && m["own-answer"] != own["body"] {
            failures.push(format!(
                "{case}: answered {} but the golden file says {}",
                m["own-answer"], own["body"]
            ));
        }
        if let Some(ok) = expected["httpResponse"]["ok"].as_object() {
            let upstream = &m["upstream"]["headers"];
            for h in ok["headers"].as_array().into_iter().flatten() {
                let k = h["key"].as_str().unwrap_or("");
                let v = h["value"]
                    .as_str()
                    .unwrap_or("")
                    .replace("<decision-id>", "<id>");
                if upstream[k].as_str() != Some(v.as_str()) {
                    failures.push(format!("{case}: upstream {k} is {} not {v}", upstream[k]));
                }
            }
            for k in ok["headersToRemove"].as_array().into_iter().flatten() {
                let k = k.as_str().unwrap_or("");
                if !upstream[k].is_null() {
                    failures.push(format!("{case}: forged {k} reached the upstream"));
                }
            }
        }
    }
    assert!(compared >= 20, "only {compared} cases compared");
    assert!(
        failures.is_empty(),
        "{} of {compared} cases failed:\n{}\n--- envoy log\n{}",
        failures.len(),
        failures.join("\n"),
        envoy.log()
    );
}
