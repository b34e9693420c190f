//! The module's life in Envoy: 503 with an OperationOutcome while no config exists, the config
//! picked up when it appears, the last good one kept when an invalid one replaces it, and a
//! body over the module's limit judged as not sent (as a partial ext_authz body).
// Tests unwrap, expect and panic: a failed assumption here is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

const ALICE: &str = "Basic YWxpY2U6YWxpY2UtcHc="; // alice:alice-pw, in the golden config

fn golden_config() -> String {
    std::fs::read_to_string(workspace().join("authz-service/tests/golden/adapter/config.json"))
        .unwrap()
}

/// Publishes `config.json` the way a Secret mount does: write aside, then rename over.
fn publish(dir: &Path, text: &str) {
    let tmp = dir.join(".config.json.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("config.json")).unwrap();
}

async fn start(config_dir: &Path, extra: &str) -> (Envoy, u16) {
    let bin = envoy_bin().unwrap();
    let upstream = start_echo().await;
    let (port, admin) = (free_port(), free_port());
    let yaml = format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
static_resources:
  listeners:{l}
  clusters:{up}
"#,
        l = listener(
            "in",
            port,
            "\n              - match: {prefix: \"/\"}\n                route: {cluster: upstream}",
            &module_filter(config_dir, extra)
        ),
        up = cluster("upstream", upstream, false),
    );
    (
        run_envoy(&bin, &yaml, admin, &["--log-level", "warn"]).await,
        port,
    )
}

fn get(path: &str, auth: Option<&str>) -> Vec<u8> {
    let headers: Vec<(String, String)> = auth
        .map(|a| vec![("authorization".to_string(), a.to_string())])
        .unwrap_or_default();
    request("GET", path, "ehr.golden", &headers, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_config_fails_closed_then_hot_reload_keeps_the_last_good_config() {
    if envoy_bin().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (envoy, port) = start(dir.path(), r#", "reload_poll_seconds": 1"#).await;

    // Nothing to decide with: 503, an OperationOutcome, never the upstream.
    let r = send(port, &get("/fhir/r4/Patient/1", Some(ALICE)))
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("application/fhir+json"));
    let outcome: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "transient");
    assert!(r.header("x-fhirguard-decision-id").is_some());

    // The config appears: picked up without restarting Envoy.
    publish(dir.path(), &golden_config());
    eventually(
        "the module loads the published config",
        Duration::from_secs(20),
        async || {
            send(port, &get("/fhir/r4/Patient/1", Some(ALICE)))
                .await
                .is_ok_and(|r| r.status == 200)
        },
    )
    .await;
    let r = send(port, &get("/fhir/r4/Patient/1", None)).await.unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(
        r.all("www-authenticate"),
        vec!["Bearer realm=\"fhir\"", "Basic realm=\"fhir\""]
    );

    // An invalid config is refused; the last good one stays in force.
    publish(
        dir.path(),
        "{\"version\": 1, \"generation\": 8, \"policies\": [{\"name\": 5}]}",
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for _ in 0..20 {
        let r = send(port, &get("/fhir/r4/Patient/1", Some(ALICE)))
            .await
            .unwrap();
        assert_eq!(
            r.status, 200,
            "an invalid config replaced the good one: {}",
            r.body
        );
    }

    // Counted in Envoy's stats with the service's metric labels.
    let stats = send(
        envoy.admin,
        &request("GET", "/stats/prometheus", "admin", &[], ""),
    )
    .await
    .unwrap()
    .body;
    for want in [
        r#"fhirguard_decisions{policy="clinical/ehr",result="allow",reason="authenticated"}"#,
        r#"fhirguard_decisions{policy="clinical/ehr",result="deny",reason="missing_credentials"} 1"#,
        r#"result="unavailable""#,
    ] {
        assert!(stats.contains(want), "Envoy's stats lack {want}:\n{stats}");
    }
    drop(envoy);
}

const TOKEN_CREATE: &str = "token-create-in-own-chart";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_is_judged_whole_and_one_over_the_limit_is_judged_as_not_sent() {
    if envoy_bin().is_none() {
        return;
    }
    let dir = workspace().join("authz-service/tests/golden/adapter");
    let case: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("{TOKEN_CREATE}.request.json"))).unwrap(),
    )
    .unwrap();
    let http = &case["http"];
    let headers: Vec<(String, String)> = http["headers"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
        .collect();
    let body = http["body"].as_str().unwrap();
    let raw = request(
        "POST",
        http["path"].as_str().unwrap(),
        "ehr.golden",
        &headers,
        body,
    );

    let (_whole, port) = start(&dir, "").await;
    let r = send(port, &raw).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let echo: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        echo["body"], body,
        "the upstream got the body the module read"
    );

    let (_cut, port) = start(&dir, r#", "max_request_bytes": 16"#).await;
    let r = send(port, &raw).await.unwrap();
    assert_eq!(
        r.status, 403,
        "a create judged without its body must be refused: {}",
        r.body
    );
}

/// SMART with compartment lookups: a read by id under a patient scope is decided by fetching
/// the resource through the policy's connection (on the module's runtime, the stream parked),
/// allowed for the context patient's resource, refused for another's, 503 when the lookup
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_reads_by_id_are_decided_by_compartment_lookups() {
    if envoy_bin().is_none() {
        return;
    }
    let fhir = start_stub(
        [
            ("mine", "Patient/123"),
            ("theirs", "Patient/456"),
        ]
        .into_iter()
        .map(|(id, subject)| {
            (
                format!("/fhir/r4/Observation/{id}"),
                format!(
                    r#"{{"resourceType":"Observation","id":"{id}","subject":{{"reference":"{subject}"}}}}"#
                ),
            )
        })
        .collect(),
    )
    .await;
    let mut config: serde_json::Value = serde_json::from_str(&golden_config()).unwrap();
    config["connections"] = serde_json::json!([{
        "namespace": "clinical", "name": "ehr-internal",
        "url": format!("http://127.0.0.1:{}/fhir/r4", fhir.port()),
        "auth": {"basic": {"username": "fhirguard", "password": "lookup-pw"}},
    }]);
    config["policies"][0]["authorization"]["smart"]["compartmentLookup"] =
        serde_json::json!({"connection": "clinical/ehr-internal"});
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), &config.to_string());
    let (_envoy, port) = start(dir.path(), "").await;
    // patient/*.rs for patient 123 (the golden narrowed-search token).
    let case: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            workspace()
                .join("authz-service/tests/golden/adapter/token-search-narrowed.request.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let token = case["http"]["headers"]["authorization"]
        .as_str()
        .unwrap()
        .to_string();

    let r = send(port, &get("/fhir/r4/Observation/mine", Some(&token)))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(port, &get("/fhir/r4/Observation/theirs", Some(&token)))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("forbidden"), "{}", r.body);

    // The lookup server gone: no decision, never an allow.
    config["generation"] = serde_json::json!(8);
    config["connections"][0]["url"] =
        serde_json::json!(format!("http://127.0.0.1:{}/fhir/r4", free_port()));
    publish(dir.path(), &config.to_string());
    eventually(
        "the module fails closed on a dead lookup server",
        Duration::from_secs(60),
        async || {
            send(port, &get("/fhir/r4/Observation/other-id", Some(&token)))
                .await
                .is_ok_and(|r| r.status == 503)
        },
    )
    .await;
}

/// The module records AuditEvents like the ext_authz service, with the client's address from
/// Envoy's `source.address` attribute (the only place the module learns it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_events_carry_the_client_address() {
    if envoy_bin().is_none() {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("audit.ndjson");
    let mut config: serde_json::Value = serde_json::from_str(&golden_config()).unwrap();
    config["policies"][0]["audit"] =
        serde_json::json!({"record": "All", "file": file.display().to_string(), "batchSize": 1});
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), &config.to_string());
    let (_envoy, port) = start(dir.path(), "").await;

    let allowed = send(port, &get("/fhir/r4/Patient/p1", Some(ALICE)))
        .await
        .unwrap();
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    let refused = send(port, &get("/fhir/r4/Patient/p1", None)).await.unwrap();
    assert_eq!(refused.status, 401, "{}", refused.body);

    let mut events = Vec::new();
    eventually(
        "two AuditEvents in the file",
        Duration::from_secs(10),
        async || {
            events = std::fs::read_to_string(&file)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect();
            events.len() >= 2
        },
    )
    .await;
    for (e, answer) in events.iter().zip([&allowed, &refused]) {
        let id = e["entity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["type"]["code"] == "XrequestId")
            .unwrap()["what"]["identifier"]["value"]
            .clone();
        assert_eq!(
            Some(id.as_str().unwrap()),
            answer.header("x-fhirguard-decision-id"),
            "{e:#}"
        );
        let client = &e["agent"][0];
        assert_eq!(client["type"]["coding"][0]["code"], "110153", "{e:#}");
        assert_eq!(client["network"]["address"], "127.0.0.1", "{e:#}");
    }
    assert_eq!(events[0]["outcome"], "0");
    assert_eq!(events[1]["outcome"], "4");
}
