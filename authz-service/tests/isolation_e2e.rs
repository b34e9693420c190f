//! Patient isolation end to end: an app holding a valid token for patient p1 tries, through real
//! Envoy, every class of request that could reach patient p2's data or write with the wrong
//! rights. A recording upstream proves that a refused request never reached the FHIR server,
//! and that what an allowed request carries upstream is what fhirguard decided on.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::real_envoy::*;
use common::*;
use fhirguard_authz::config::*;
use reqwest::Method as M;

struct Stack {
    key: SigningKey,
    stub: FhirStub,
    envoy: Envoy,
    strict_envoy: Envoy,
    http: reqwest::Client,
    _svc: RunningService,
    _dir: ConfigDir,
}

/// One attempt: what the client sends, and the status it must get.
struct Attempt<'a> {
    name: &'a str,
    method: M,
    path: &'a str,
    scopes: &'a str,
    body: Option<(&'a str, &'a str)>,
    headers: &'a [(&'a str, &'a str)],
    want: u16,
}

impl Stack {
    fn token(&self, scopes: &str) -> String {
        let mut c = claims("app", scopes);
        c["patient"] = "p1".into();
        format!("Bearer {}", self.key.sign(&c))
    }

    /// Requests the upstream saw from clients (fhirguard's own lookups, which authenticate
    /// with the connection's Basic credentials, left out).
    fn client_requests(&self) -> Vec<serde_json::Value> {
        self.stub
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| {
                !r["headers"]["authorization"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("Basic ")
            })
            .cloned()
            .collect()
    }

    async fn send(
        &self,
        envoy: &Envoy,
        a: &Attempt<'_>,
        authorization: &str,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let mut r = self
            .http
            .request(
                a.method.clone(),
                format!("http://127.0.0.1:{}{}", envoy.port, a.path),
            )
            .header("host", "smart.test")
            .header("authorization", authorization);
        for (k, v) in a.headers {
            r = r.header(*k, *v);
        }
        if let Some((ct, b)) = a.body {
            r = r.header("content-type", ct).body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.text().await.unwrap())
    }

    /// Sends `a` and checks its status; a refusal must never have reached the upstream.
    async fn attempt(&self, a: &Attempt<'_>) -> String {
        let before = self.client_requests().len();
        let (status, _, body) = self.send(&self.envoy, a, &self.token(a.scopes)).await;
        assert_eq!(status, a.want, "{}: {body}", a.name);
        let after = self.client_requests().len();
        if status >= 400 {
            assert_eq!(
                before, after,
                "{}: a refused request reached the upstream",
                a.name
            );
            if status != 503 {
                let oo: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| {
                    panic!("{}: not an OperationOutcome ({e}): {body}", a.name)
                });
                assert_eq!(oo["resourceType"], "OperationOutcome", "{}", a.name);
            }
        } else {
            assert_eq!(before + 1, after, "{}", a.name);
        }
        body
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
        policies: vec![smart_policy("ehr", "smart.test", &jwks, false)],
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
    assert!(svc.service.is_ready());
    // Envoy as the test harness configures it (underscore headers allowed, so fhirguard's own
    // removal is what is tested), and as the shipped configs do (such headers refused).
    let envoy = start_envoy(bin, svc.grpc, stub_addr).await;
    let strict_envoy = start_envoy_with(
        bin,
        svc.grpc,
        stub_addr,
        "\n          common_http_protocol_options: {headers_with_underscores_action: REJECT_REQUEST}",
    )
    .await;
    Stack {
        key,
        stub,
        envoy,
        strict_envoy,
        http: reqwest::Client::new(),
        _svc: svc,
        _dir: dir,
    }
}

const FHIR_JSON: &str = "application/fhir+json";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_reaches_another_patients_data() {
    let Some(bin) = envoy_bin() else { return };
    let s = stack(&bin).await;
    let obs = |id: &str, version: &str, patient: &str| {
        format!(
            r#"{{"resourceType":"Observation","id":"{id}","meta":{{"versionId":"{version}"}},"subject":{{"reference":"Patient/{patient}"}}}}"#
        )
    };
    // ov belonged to p2 in version 1 and was moved to p1 in version 2.
    s.stub
        .put("/fhir/r4/Observation/ov", 200, &obs("ov", "2", "p1"));
    s.stub.put(
        "/fhir/r4/Observation/ov/_history/1",
        200,
        &obs("ov", "1", "p2"),
    );
    s.stub.put(
        "/fhir/r4/Observation/ov/_history/2",
        200,
        &obs("ov", "2", "p1"),
    );
    s.stub.put(
        "/fhir/r4/Observation/gone",
        410,
        r#"{"resourceType":"OperationOutcome"}"#,
    );
    s.stub.put(
        "/fhir/r4/Observation/shared",
        200,
        r#"{"resourceType":"Observation","id":"shared","subject":{"reference":"Patient/p1"},"performer":[{"reference":"Patient/p2"}]}"#,
    );

    let all = "patient/*.cruds";
    let attempts = [
        // 1. includes
        Attempt {
            name: "include co-members of a group",
            method: M::GET,
            path: "/fhir/r4/Group?member=Patient/p1&_include=Group:member:Patient",
            scopes: "patient/Group.rs patient/Patient.rs",
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "include through a non-pin reference",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1&_include=Observation:performer:Patient",
            scopes: all,
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "revinclude through focus",
            method: M::GET,
            path: "/fhir/r4/Patient?_id=p1&_revinclude=Observation:focus",
            scopes: all,
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "include wildcard",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1&_include=*",
            scopes: all,
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "include iterate",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1&_include:iterate=Observation:subject",
            scopes: all,
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "include in another case",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1&_INCLUDE=Observation:performer",
            scopes: all,
            body: None,
            headers: &[],
            want: 400,
        },
        Attempt {
            name: "include behind a semicolon",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1;_include=Observation:performer",
            scopes: all,
            body: None,
            headers: &[],
            want: 400,
        },
        // 2. writes
        Attempt {
            name: "create in another patient's chart",
            method: M::POST,
            path: "/fhir/r4/Observation",
            scopes: all,
            body: Some((
                FHIR_JSON,
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/p2"},"performer":[{"reference":"Patient/p1"}]}"#,
            )),
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "create with a conditional reference",
            method: M::POST,
            path: "/fhir/r4/Observation",
            scopes: all,
            body: Some((
                FHIR_JSON,
                r#"{"resourceType":"Observation","subject":{"reference":"Patient?identifier=mrn|456"},"performer":[{"reference":"Patient/p1"}]}"#,
            )),
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "conditional update pinned by performer",
            method: M::PUT,
            path: "/fhir/r4/Observation?performer=Patient/p1",
            scopes: all,
            body: Some((
                FHIR_JSON,
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#,
            )),
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "conditional delete pinned by performer",
            method: M::DELETE,
            path: "/fhir/r4/Observation?performer=Patient/p1",
            scopes: all,
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "delete a resource shared with another patient",
            method: M::DELETE,
            path: "/fhir/r4/Observation/shared",
            scopes: all,
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "duplicate subject members",
            method: M::POST,
            path: "/fhir/r4/Observation",
            scopes: all,
            body: Some((
                FHIR_JSON,
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"subject":{"reference":"Patient/p2"}}"#,
            )),
            headers: &[],
            want: 400,
        },
        // 3. operations
        Attempt {
            name: "graphql with a patient scope",
            method: M::GET,
            path: "/fhir/r4/Patient/p1/$graphql?query=%7Bid%7D",
            scopes: "patient/Patient.rs",
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "summary with one type",
            method: M::GET,
            path: "/fhir/r4/Patient/p1/$summary",
            scopes: "patient/Patient.rs",
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "everything in another case",
            method: M::GET,
            path: "/fhir/r4/Patient/p1/$Everything",
            scopes: "patient/Patient.rs",
            body: None,
            headers: &[],
            want: 400,
        },
        // 4. operation bodies
        Attempt {
            name: "everything types in the body",
            method: M::POST,
            path: "/fhir/r4/Patient/p1/$everything",
            scopes: "patient/Observation.rs patient/Patient.rs",
            body: Some((
                FHIR_JSON,
                r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Condition,MedicationRequest"}]}"#,
            )),
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "everything types in URL and body",
            method: M::POST,
            path: "/fhir/r4/Patient/p1/$everything?_type=Observation",
            scopes: "patient/Observation.rs patient/Patient.rs",
            body: Some((
                FHIR_JSON,
                r#"{"resourceType":"Parameters","parameter":[{"name":"_type","valueString":"Condition"}]}"#,
            )),
            headers: &[],
            want: 400,
        },
        // 5. history
        Attempt {
            name: "old version of another patient's record",
            method: M::GET,
            path: "/fhir/r4/Observation/ov/_history/1",
            scopes: all,
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "instance history",
            method: M::GET,
            path: "/fhir/r4/Observation/ov/_history",
            scopes: all,
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "upsert over a deleted resource",
            method: M::PUT,
            path: "/fhir/r4/Observation/gone",
            scopes: all,
            body: Some((
                FHIR_JSON,
                r#"{"resourceType":"Observation","id":"gone","subject":{"reference":"Patient/p1"}}"#,
            )),
            headers: &[],
            want: 403,
        },
        // 6. header and query smuggling
        Attempt {
            name: "token under an encoded name",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1&access%5Ftoken=x",
            scopes: all,
            body: None,
            headers: &[],
            want: 400,
        },
        Attempt {
            name: "method override header",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1",
            scopes: all,
            body: None,
            headers: &[("x-http-method-override", "DELETE")],
            want: 400,
        },
        Attempt {
            name: "method override header, underscores",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1",
            scopes: all,
            body: None,
            headers: &[("x_http_method_override", "DELETE")],
            want: 400,
        },
        Attempt {
            name: "method override parameter",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1&_method=DELETE",
            scopes: all,
            body: None,
            headers: &[],
            want: 400,
        },
        // found by the attack review
        Attempt {
            name: "cascading delete by parameter",
            method: M::DELETE,
            path: "/fhir/r4/Patient/p1?_cascade=delete",
            scopes: all,
            body: None,
            headers: &[],
            want: 400,
        },
        Attempt {
            name: "cascading delete by header",
            method: M::DELETE,
            path: "/fhir/r4/Patient/p1",
            scopes: all,
            body: None,
            headers: &[("x-cascade", "delete")],
            want: 400,
        },
        Attempt {
            name: "everything of the own record",
            method: M::GET,
            path: "/fhir/r4/Patient/p1/$everything",
            scopes: "patient/*.rs",
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "other Patients in the compartment",
            method: M::GET,
            path: "/fhir/r4/Patient/p1/Patient",
            scopes: all,
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "revinclude of linking Patients",
            method: M::GET,
            path: "/fhir/r4/Patient?_id=p1&_revinclude=Patient:link",
            scopes: all,
            body: None,
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "conditional reference as an oracle",
            method: M::POST,
            path: "/fhir/r4/Observation",
            scopes: all,
            body: Some((
                FHIR_JSON,
                r#"{"resourceType":"Observation","subject":{"reference":"Patient/p1"},"hasMember":[{"reference":"Observation?subject=Patient/p2&code=x"}]}"#,
            )),
            headers: &[],
            want: 403,
        },
        Attempt {
            name: "a pin in another case",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1&Subject=Patient/p2",
            scopes: all,
            body: None,
            headers: &[],
            want: 400,
        },
        Attempt {
            name: "operation by DELETE",
            method: M::DELETE,
            path: "/fhir/r4/Observation/ov/$meta",
            scopes: all,
            body: None,
            headers: &[],
            want: 400,
        },
        // The legitimate versions still pass.
        Attempt {
            name: "pinned include of the context patient",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1&_include=Observation:subject",
            scopes: all,
            body: None,
            headers: &[],
            want: 200,
        },
        Attempt {
            name: "revinclude from the context patient",
            method: M::GET,
            path: "/fhir/r4/Patient?_id=p1&_revinclude=Observation:subject",
            scopes: all,
            body: None,
            headers: &[],
            want: 200,
        },
        Attempt {
            name: "current version of the moved record",
            method: M::GET,
            path: "/fhir/r4/Observation/ov/_history/2",
            scopes: all,
            body: None,
            headers: &[],
            want: 200,
        },
        Attempt {
            name: "read the shared record",
            method: M::GET,
            path: "/fhir/r4/Observation/shared",
            scopes: all,
            body: None,
            headers: &[],
            want: 200,
        },
    ];
    for a in &attempts {
        s.attempt(a).await;
    }

    // Prefer: every `handling` the client sent is replaced, however it is separated.
    let body = s
        .attempt(&Attempt {
            name: "lenient handling after ';'",
            method: M::GET,
            path: "/fhir/r4/Observation?subject=Patient/p1",
            scopes: all,
            body: None,
            headers: &[("prefer", "return=minimal; handling=lenient")],
            want: 200,
        })
        .await;
    let upstream: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        upstream["headers"]["prefer"],
        "return=minimal, handling=strict"
    );

    // Identity headers in any spelling a CGI/WSGI/Rack stack reads as x-fhirguard-*.
    let forged = [
        ("x_fhirguard_patient", "p2"),
        ("x-fhirguard_subject", "admin"),
        ("x_fhirguard-scopes", "user/*.cruds"),
    ];
    let allowed = Attempt {
        name: "forged identity headers",
        method: M::GET,
        path: "/fhir/r4/Patient/p1",
        scopes: all,
        body: None,
        headers: &forged,
        want: 200,
    };
    let body = s.attempt(&allowed).await;
    let upstream: serde_json::Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&String> = upstream["headers"].as_object().unwrap().keys().collect();
    for (k, _) in forged {
        assert!(
            !names.iter().any(|n| n.as_str() == k),
            "{k} reached the upstream: {names:?}"
        );
    }
    assert_eq!(upstream["headers"]["x-fhirguard-patient"], "p1");
    // The shipped configs refuse such headers in Envoy already.
    let before = s.client_requests().len();
    let (status, _, _) = s.send(&s.strict_envoy, &allowed, &s.token(all)).await;
    assert_eq!(
        status, 400,
        "headers_with_underscores_action: REJECT_REQUEST"
    );
    assert_eq!(s.client_requests().len(), before);

    // 7. tokens whose claims have two meanings, 8. a token issued in the future,
    let t = now();
    let duplicate = format!(
        r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"app","exp":{},"scope":"patient/*.rs","patient":"p1","patient":"p2"}}"#,
        t + 300
    );
    let future = format!(
        r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"app","exp":{},"iat":{},"scope":"patient/*.rs","patient":"p1"}}"#,
        t + 7200,
        t + 3600
    );
    // 9. key-bound tokens (DPoP, mutual TLS) presented without their proof.
    let bound = |cnf: &str| {
        format!(
            r#"{{"iss":"{ISSUER}","aud":"{AUDIENCE}","sub":"app","exp":{},"scope":"patient/*.rs","patient":"p1","cnf":{cnf}}}"#,
            t + 300
        )
    };
    for (name, token) in [
        ("duplicate patient claim", duplicate),
        ("issued in the future", future),
        (
            "DPoP-bound (cnf.jkt)",
            bound(r#"{"jkt":"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}"#),
        ),
        (
            "mTLS-bound (cnf.x5t#S256)",
            bound(r#"{"x5t#S256":"bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"}"#),
        ),
    ] {
        let before = s.client_requests().len();
        let (status, headers, body) = s
            .send(
                &s.envoy,
                &Attempt {
                    name,
                    method: M::GET,
                    path: "/fhir/r4/Patient/p1",
                    scopes: "",
                    body: None,
                    headers: &[],
                    want: 401,
                },
                &format!("Bearer {}", s.key.sign_raw(&token)),
            )
            .await;
        assert_eq!(status, 401, "{name}: {body}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token"),
            "{name}"
        );
        assert_eq!(s.client_requests().len(), before, "{name}");
    }
}
