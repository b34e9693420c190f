//! SMART enforcement end to end: client → real Envoy → fhirguard-authz → a local FHIR stub,
//! with compartment lookups made through a FhirConnection (Basic auth) to the same stub.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::real_envoy::*;
use common::*;
use fhirguard_authz::config::*;

struct Stack {
    key: SigningKey,
    stub: FhirStub,
    envoy: Envoy,
    http: reqwest::Client,
    _svc: RunningService,
    _dir: ConfigDir,
}

impl Stack {
    fn token(&self, scopes: &str) -> String {
        let mut c = claims("app", scopes);
        c["patient"] = "p1".into();
        format!("Bearer {}", self.key.sign(&c))
    }

    async fn call(
        &self,
        host: &str,
        method: reqwest::Method,
        path: &str,
        scopes: &str,
        body: Option<&str>,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        self.call_with(host, method, path, scopes, body, &[]).await
    }

    async fn call_with(
        &self,
        host: &str,
        method: reqwest::Method,
        path: &str,
        scopes: &str,
        body: Option<&str>,
        extra: &[(&str, &str)],
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut r = self
            .http
            .request(
                method,
                format!("http://127.0.0.1:{}{path}", self.envoy.port),
            )
            .header("host", host)
            .header("authorization", self.token(scopes));
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    }

    fn basic_lookups(&self) -> usize {
        self.stub
            .lookups
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.starts_with("Basic "))
            .count()
    }
}

async fn stack(bin: &std::path::Path) -> Stack {
    init();
    let key = SigningKey::new("k1");
    let jwks = jwks_doc(&[&key]);
    let stub = FhirStub::default();
    let stub_addr = start_fhir_stub(stub.clone()).await;
    let config = CompiledConfig {
        version: FORMAT_VERSION,
        generation: 1,
        policies: vec![
            smart_policy("ehr", "smart.test", &jwks, false),
            smart_policy("narrowed", "narrow.test", &jwks, true),
        ],
        connections: vec![ConnectionConfig {
            namespace: "clinical".into(),
            name: "ehr-internal".into(),
            url: format!("http://127.0.0.1:{}/fhir/r4", stub_addr.port()),
            auth: ConnectionAuth {
                basic: Some(BasicCredentials {
                    username: "fhirguard".into(),
                    password: "lookup-pw".into(),
                }),
                oauth: None,
            },
            tls: TlsConfig::default(),
        }],
    };
    let dir = ConfigDir::new();
    dir.publish_config(&config, None);
    let svc = start_service(dir.path(), Duration::from_secs(60)).await;
    assert!(svc.service.is_ready(), "the SMART config must load");
    let envoy = start_envoy(bin, svc.grpc, stub_addr).await;
    Stack {
        key,
        stub,
        envoy,
        http: reqwest::Client::new(),
        _svc: svc,
        _dir: dir,
    }
}

fn observation(id: &str, patient: &str) -> String {
    format!(
        r#"{{"resourceType":"Observation","id":"{id}","subject":{{"reference":"Patient/{patient}"}}}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smart_through_real_envoy() {
    let Some(bin) = envoy_bin() else { return };
    let s = stack(&bin).await;
    use reqwest::Method as M;
    let obs = "patient/Observation.rs patient/Observation.c";

    // Searches: pinned to the context patient passes, unpinned is refused with a challenge.
    // The pinned search goes upstream with `Prefer: handling=strict`, replacing the client's
    // lenient handling but keeping its other preferences: a server that ignored `subject`
    // would otherwise return every patient's Observations.
    let (st, _, body) = s
        .call_with(
            "smart.test",
            M::GET,
            "/fhir/r4/Observation?subject=Patient/p1&code=x",
            obs,
            None,
            &[("prefer", "return=minimal, handling=lenient")],
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let upstream: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        upstream["headers"]["prefer"], "return=minimal, handling=strict",
        "{upstream}"
    );
    let (st, h, body) = s
        .call(
            "smart.test",
            M::GET,
            "/fhir/r4/Observation?code=x",
            obs,
            None,
        )
        .await;
    assert_eq!(st, 403, "{body}");
    // The token holds patient/Observation.s already: the search is refused for not naming the
    // patient, which no scope would change, so no scope is named.
    assert_eq!(
        h["www-authenticate"],
        r#"Bearer realm="fhir", error="insufficient_scope""#
    );
    let (st, h, _) = s
        .call(
            "smart.test",
            M::GET,
            "/fhir/r4/Observation?subject=Patient/p1",
            "patient/Observation.r",
            None,
        )
        .await;
    assert_eq!(st, 403);
    assert_eq!(
        h["www-authenticate"],
        r#"Bearer realm="fhir", error="insufficient_scope", scope="patient/Observation.s""#
    );
    let oo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(oo["issue"][0]["code"], "forbidden");
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("limited to the context patient"),
        "{oo}"
    );
    // Another patient's data: no scope would help, so the challenge names none and the
    // OperationOutcome says why.
    let (st, h, body) = s
        .call(
            "smart.test",
            M::GET,
            "/fhir/r4/Observation?subject=Patient/p2",
            obs,
            None,
        )
        .await;
    assert_eq!(st, 403);
    assert_eq!(
        h["www-authenticate"],
        r#"Bearer realm="fhir", error="insufficient_scope""#
    );
    assert!(body.contains("no scope grants this"), "{body}");
    // A hint is never a scope the token already holds.
    let (st, h, _) = s
        .call(
            "smart.test",
            M::GET,
            "/fhir/r4/Patient/p2",
            "patient/Patient.r",
            None,
        )
        .await;
    assert_eq!(st, 403);
    assert!(
        !h["www-authenticate"].to_str().unwrap().contains("scope="),
        "{:?}",
        h["www-authenticate"]
    );

    // Narrowing: the unpinned search goes upstream with the context patient added by Envoy.
    let (st, _, body) = s
        .call(
            "narrow.test",
            M::GET,
            "/fhir/r4/Observation?code=x",
            obs,
            None,
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let upstream: serde_json::Value = serde_json::from_str(&body).unwrap();
    let path = upstream["path"].as_str().unwrap();
    assert!(
        path.starts_with("/fhir/r4/Observation?") && path.contains("code=x"),
        "{path}"
    );
    assert!(
        path.contains("subject=Patient%2Fp1") || path.contains("subject=Patient/p1"),
        "not narrowed: {path}"
    );
    assert_eq!(
        upstream["headers"]["prefer"], "handling=strict",
        "{upstream}"
    );
    // A user/ scope may see every match anyway: the client's Prefer is left alone.
    let (st, _, body) = s
        .call_with(
            "smart.test",
            M::GET,
            "/fhir/r4/Observation?code=x",
            "user/Observation.rs",
            None,
            &[("prefer", "handling=lenient")],
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let upstream: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        upstream["headers"]["prefer"], "handling=lenient",
        "{upstream}"
    );

    // Reads by id: decided from the stored resource, fetched through the FhirConnection.
    s.stub
        .put("/fhir/r4/Observation/o1", 200, &observation("o1", "p1"));
    s.stub
        .put("/fhir/r4/Observation/o2", 200, &observation("o2", "p2"));
    s.stub.put(
        "/fhir/r4/Observation/gone",
        404,
        r#"{"resourceType":"OperationOutcome"}"#,
    );
    s.stub.put("/fhir/r4/Observation/boom", 500, "oops");
    let (st, _, body) = s
        .call("smart.test", M::GET, "/fhir/r4/Observation/o1", obs, None)
        .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(s.basic_lookups(), 1);
    let auth = s
        .stub
        .lookups
        .lock()
        .unwrap()
        .iter()
        .find(|a| a.starts_with("Basic "))
        .cloned()
        .unwrap();
    assert_eq!(
        auth,
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("fhirguard:lookup-pw")
        )
    );
    let (st, _, _) = s
        .call("smart.test", M::GET, "/fhir/r4/Observation/o1", obs, None)
        .await;
    assert_eq!(st, 200);
    assert_eq!(s.basic_lookups(), 1, "the lookup is cached");
    let (st, _, body) = s
        .call("smart.test", M::GET, "/fhir/r4/Observation/o2", obs, None)
        .await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body.contains("not in the context patient's compartment"),
        "{body}"
    );
    let (st, _, _) = s
        .call("smart.test", M::GET, "/fhir/r4/Observation/gone", obs, None)
        .await;
    assert_eq!(st, 403);
    let (st, _, _) = s
        .call("smart.test", M::GET, "/fhir/r4/Observation/boom", obs, None)
        .await;
    assert_eq!(st, 503, "a failed lookup means no decision, never an allow");
    // Without compartmentLookup (the narrowing policy has none) such reads are refused.
    let (st, _, _) = s
        .call("narrow.test", M::GET, "/fhir/r4/Observation/o1", obs, None)
        .await;
    assert_eq!(st, 403);

    // Creates are judged by their bodies.
    let (st, _, body) = s
        .call(
            "smart.test",
            M::POST,
            "/fhir/r4/Observation",
            obs,
            Some(r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#),
        )
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, _, body) = s
        .call(
            "smart.test",
            M::POST,
            "/fhir/r4/Observation",
            obs,
            Some(r#"{"resourceType":"Observation","subject":{"reference":"Patient/p2"}}"#),
        )
        .await;
    assert_eq!(st, 403, "{body}");
    let (st, _, _) = s
        .call(
            "smart.test",
            M::POST,
            "/fhir/r4/Observation",
            obs,
            Some("{broken"),
        )
        .await;
    assert_eq!(st, 400);

    // A transaction passes only if every entry does.
    let tx = |other: &str| {
        format!(
            r#"{{"resourceType":"Bundle","type":"transaction","entry":[
            {{"resource":{{"resourceType":"Observation","subject":{{"reference":"Patient/p1"}}}},"request":{{"method":"POST","url":"Observation"}}}},
            {{"request":{{"method":"GET","url":"Observation?subject=Patient/{other}"}}}}]}}"#
        )
    };
    let (st, _, body) = s
        .call("smart.test", M::POST, "/fhir/r4", obs, Some(&tx("p1")))
        .await;
    assert_eq!(st, 200, "{body}");
    let (st, _, body) = s
        .call("smart.test", M::POST, "/fhir/r4", obs, Some(&tx("p2")))
        .await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("entry[1]"), "{body}");

    // $everything follows references past the compartment on real servers: never under a
    // patient/ scope, even for the context patient; a user/ *.rs scope may.
    let (st, h, body) = s
        .call(
            "smart.test",
            M::GET,
            "/fhir/r4/Patient/p1/$everything",
            "patient/*.rs",
            None,
        )
        .await;
    assert_eq!(st, 403);
    assert_eq!(
        h["www-authenticate"],
        r#"Bearer realm="fhir", error="insufficient_scope""#
    );
    assert!(body.contains("search the compartment by type"), "{body}");
    let (st, _, _) = s
        .call(
            "smart.test",
            M::GET,
            "/fhir/r4/Patient/p1/$everything",
            "user/*.rs",
            None,
        )
        .await;
    assert_eq!(st, 200);
    let (st, _, _) = s
        .call(
            "smart.test",
            M::GET,
            "/fhir/r4/Patient/p2/$everything",
            "patient/*.rs",
            None,
        )
        .await;
    assert_eq!(st, 403);
    let (st, _, _) = s
        .call(
            "smart.test",
            M::GET,
            "/fhir/r4/Patient/p1/$everything",
            obs,
            None,
        )
        .await;
    assert_eq!(st, 403);

    // Identity headers carry the patient and the granted scopes.
    let (_, _, body) = s
        .call(
            "smart.test",
            M::GET,
            "/fhir/r4/Patient/p1/Observation",
            obs,
            None,
        )
        .await;
    let upstream: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(upstream["headers"]["x-fhirguard-patient"], "p1");
    assert_eq!(upstream["headers"]["x-fhirguard-scopes"], obs);
}
