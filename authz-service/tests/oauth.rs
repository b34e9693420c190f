//! OAuth2 client credentials for outbound connections, against a local HTTPS token server
//! signed by a test CA, counting its requests.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use common::https::{Mode, TokenServer};
use common::{ConfigDir, TestPki, eventually, init, metric, start_service};
use fhirguard_authz::config::*;
use fhirguard_authz::core::driver::Outcome;
use fhirguard_authz::core::policy::{Decision, DenyReason, OutboundAuth};
use fhirguard_authz::runtime::executor::Executor as Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "s3cr3t-do-not-log";

fn connection(token_url: &str, method: ClientAuthMethod, tls: TlsConfig) -> ConnectionConfig {
    ConnectionConfig {
        namespace: "clinical".into(),
        name: "partner".into(),
        url: "https://partner.test/fhir/r4".into(),
        auth: ConnectionAuth {
            basic: None,
            oauth: Some(OAuthConfig {
                token_url: token_url.into(),
                client_id: "fhirguard".into(),
                client_secret: SECRET.into(),
                client_auth_method: method,
                scopes: vec!["system/*.rs".into(), "system/Patient.r".into()],
                audience: Some("https://partner.test/fhir/r4".into()),
                extra_params: [("resource".to_string(), "https://partner.test".to_string())].into(),
            }),
        },
        tls,
    }
}

fn custom_ca() -> TlsConfig {
    TlsConfig {
        mode: TlsMode::CustomBundle,
        ca_file: Some("connection_clinical_partner_ca.pem".into()),
    }
}

struct Stack {
    _dir: ConfigDir,
    svc: common::RunningService,
}

async fn serve(conn: ConnectionConfig, ca_pem: &str) -> Stack {
    init();
    let dir = ConfigDir::new();
    let config = CompiledConfig {
        connections: vec![conn],
        ..CompiledConfig::empty(1)
    };
    let json = config.to_json();
    let mut files = vec![(CONFIG_FILE, json.as_str())];
    if !ca_pem.is_empty() {
        files.push(("connection_clinical_partner_ca.pem", ca_pem));
    }
    dir.publish(&files);
    let svc = start_service(dir.path(), Duration::from_secs(60)).await;
    assert!(svc.service.is_ready(), "config loads");
    Stack { _dir: dir, svc }
}

/// The Authorization header an outbound request would carry, or the refusal.
async fn outbound(service: &Service) -> Result<String, (u16, DenyReason, String)> {
    match service.outbound("clinical/partner", "GET").await.outcome {
        Outcome::Decided(Decision::Allow(a)) => match a.outbound {
            Some(OutboundAuth::Set(v)) => Ok(v),
            other => panic!("unexpected {other:?}"),
        },
        Outcome::Decided(Decision::Deny(d)) => Err((d.status, d.reason, d.diagnostics)),
        Outcome::Decided(Decision::Respond(r)) => panic!("unexpected {r:?}"),
        Outcome::Unavailable(w) => panic!("unavailable: {w}"),
    }
}

#[tokio::test]
async fn token_is_fetched_at_start_reused_and_refreshed_before_expiry() {
    let pki = TestPki::new();
    let server = TokenServer::start(&pki, Mode::Ok { expires_in: 3 }, Duration::ZERO).await;
    let s = serve(
        connection(
            &server.url(),
            ClientAuthMethod::ClientSecretBasic,
            custom_ca(),
        ),
        &pki.ca_pem,
    )
    .await;
    // Fetched at start, before any request asks.
    eventually(
        "the token fetched at start",
        Duration::from_secs(5),
        async || server.hits() == 1,
    )
    .await;
    for _ in 0..20 {
        assert_eq!(outbound(&s.svc.service).await.unwrap(), "Bearer token-1");
    }
    assert_eq!(server.hits(), 1, "reused, not refetched per request");
    // expires_in 3 s: refreshed at half its life, before it expires, without any request.
    eventually(
        "a refresh before expiry",
        Duration::from_secs(3),
        async || server.hits() == 2,
    )
    .await;
    assert_eq!(outbound(&s.svc.service).await.unwrap(), "Bearer token-2");
    assert_eq!(server.hits(), 2);

    // The request: client_secret_basic with form-encoded id and secret, the grant, scopes,
    // audience and extra parameters.
    let (head, body) = server.last.lock().unwrap().clone();
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("fhirguard:{SECRET}"));
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "authorization: basic {}",
            expected.to_ascii_lowercase()
        )),
        "{head}"
    );
    let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(
        form,
        [
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs system/Patient.r"),
            ("audience", "https://partner.test/fhir/r4"),
            ("resource", "https://partner.test"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
}

#[tokio::test]
async fn client_secret_post_sends_the_credentials_in_the_form() {
    let pki = TestPki::new();
    let server = TokenServer::start(&pki, Mode::Ok { expires_in: 3600 }, Duration::ZERO).await;
    let s = serve(
        connection(
            &server.url(),
            ClientAuthMethod::ClientSecretPost,
            custom_ca(),
        ),
        &pki.ca_pem,
    )
    .await;
    assert_eq!(outbound(&s.svc.service).await.unwrap(), "Bearer token-1");
    let (head, body) = server.last.lock().unwrap().clone();
    assert!(
        !head.to_ascii_lowercase().contains("authorization:"),
        "{head}"
    );
    assert!(
        body.contains("client_id=fhirguard") && body.contains(&format!("client_secret={SECRET}")),
        "{body}"
    );
}

#[tokio::test]
async fn one_fetch_serves_a_hundred_concurrent_requests() {
    let pki = TestPki::new();
    let server = TokenServer::start(
        &pki,
        Mode::Ok { expires_in: 3600 },
        Duration::from_millis(300),
    )
    .await;
    let s = serve(
        connection(
            &server.url(),
            ClientAuthMethod::ClientSecretBasic,
            custom_ca(),
        ),
        &pki.ca_pem,
    )
    .await;
    let service = s.svc.service.clone();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { outbound(&service).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "Bearer token-1");
    }
    assert_eq!(server.hits(), 1, "single flight");
}

#[tokio::test]
async fn a_failing_endpoint_backs_off_answers_503_and_recovers() {
    let pki = TestPki::new();
    let server = TokenServer::start(
        &pki,
        Mode::Fail {
            status: 500,
            body: r#"{"error":"temporarily_unavailable"}"#,
        },
        Duration::ZERO,
    )
    .await;
    let s = serve(
        connection(
            &server.url(),
            ClientAuthMethod::ClientSecretBasic,
            custom_ca(),
        ),
        &pki.ca_pem,
    )
    .await;
    let started = std::time::Instant::now();
    let mut refusals = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let (status, reason, diagnostics) = outbound(&s.svc.service).await.unwrap_err();
        assert_eq!((status, reason), (503, DenyReason::TokenUnavailable));
        assert!(diagnostics.contains("HTTP 500"), "{diagnostics}");
        assert!(!diagnostics.contains(SECRET));
        refusals += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Backoff from 200 ms doubling to 1 s: a handful of fetches in 2 s, not one per request.
    let fetches = server.hits();
    assert!(
        refusals > 50 && (2..=8).contains(&fetches),
        "{refusals} refusals caused {fetches} fetches"
    );

    *server.mode.lock().unwrap() = Mode::Ok { expires_in: 3600 };
    eventually("recovery", Duration::from_secs(3), async || {
        outbound(&s.svc.service).await.is_ok()
    })
    .await;
    let text = s.svc.metrics.encode();
    assert!(metric(&text, r#"fhirguard_oauth_token_fetches_total{connection="clinical/partner",result="server_error"}"#).unwrap() >= 2.0);
    assert_eq!(
        metric(
            &text,
            r#"fhirguard_oauth_token_fetches_total{connection="clinical/partner",result="ok"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"fhirguard_oauth_token_valid{connection="clinical/partner"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn invalid_client_is_reported_without_the_secret() {
    let pki = TestPki::new();
    let server = TokenServer::start(
        &pki,
        Mode::Fail {
            status: 401,
            body: r#"{"error":"invalid_client","error_description":"unknown client"}"#,
        },
        Duration::ZERO,
    )
    .await;
    let s = serve(
        connection(
            &server.url(),
            ClientAuthMethod::ClientSecretBasic,
            custom_ca(),
        ),
        &pki.ca_pem,
    )
    .await;
    let (status, reason, diagnostics) = outbound(&s.svc.service).await.unwrap_err();
    assert_eq!((status, reason), (503, DenyReason::TokenUnavailable));
    assert!(
        diagnostics.contains("HTTP 401 invalid_client: unknown client"),
        "{diagnostics}"
    );
    let text = s.svc.metrics.encode();
    assert!(metric(&text, r#"fhirguard_oauth_token_fetches_total{connection="clinical/partner",result="invalid_client"}"#).is_some());

    // The token state on the HTTP port: error and failures, never the secret or a token.
    let body = http_get(s.svc.http, "/connections").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v[0]["connection"], "clinical/partner");
    assert_eq!(v[0]["auth"], "oauth");
    assert_eq!(v[0]["token"]["state"], "none");
    assert!(
        v[0]["token"]["lastError"]
            .as_str()
            .unwrap()
            .contains("invalid_client")
    );
    assert!(v[0]["token"]["consecutiveFailures"].as_u64().unwrap() >= 1);
    assert!(!body.contains(SECRET));
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[tokio::test]
async fn skip_verification_accepts_a_self_signed_endpoint_and_default_bundle_refuses_it() {
    let pki = TestPki::self_signed();
    let server = TokenServer::start(&pki, Mode::Ok { expires_in: 3600 }, Duration::ZERO).await;
    let skip = TlsConfig {
        mode: TlsMode::SkipVerification,
        ca_file: None,
    };
    let s = serve(
        connection(&server.url(), ClientAuthMethod::ClientSecretBasic, skip),
        "",
    )
    .await;
    assert_eq!(outbound(&s.svc.service).await.unwrap(), "Bearer token-1");

    let server2 = TokenServer::start(&pki, Mode::Ok { expires_in: 3600 }, Duration::ZERO).await;
    let s2 = serve(
        connection(
            &server2.url(),
            ClientAuthMethod::ClientSecretBasic,
            TlsConfig::default(),
        ),
        "",
    )
    .await;
    let (status, reason, diagnostics) = outbound(&s2.svc.service).await.unwrap_err();
    assert_eq!((status, reason), (503, DenyReason::TokenUnavailable));
    assert!(
        diagnostics.to_ascii_lowercase().contains("certificate"),
        "{diagnostics}"
    );
    assert_eq!(
        server2.hits(),
        0,
        "no request got through the refused handshake"
    );
    let text = s2.svc.metrics.encode();
    assert!(
        metric(
            &text,
            r#"fhirguard_oauth_token_fetches_total{connection="clinical/partner",result="tls"}"#
        )
        .is_some(),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_connections_are_refused_and_basic_or_no_credentials_are_set_or_stripped() {
    init();
    let dir = ConfigDir::new();
    let mut basic = connection(
        "https://unused.test/token",
        ClientAuthMethod::ClientSecretBasic,
        TlsConfig::default(),
    );
    basic.auth = ConnectionAuth {
        basic: Some(BasicCredentials {
            username: "svc".into(),
            password: "pw".into(),
        }),
        oauth: None,
    };
    let mut none = basic.clone();
    none.name = "open".into();
    none.auth = ConnectionAuth::default();
    let config = CompiledConfig {
        connections: vec![basic, none],
        ..CompiledConfig::empty(1)
    };
    dir.publish(&[(CONFIG_FILE, &config.to_json())]);
    let s = start_service(dir.path(), Duration::from_secs(60)).await;
    let svc = &s.service;
    assert_eq!(outbound(svc).await.unwrap(), common::basic("svc", "pw"));
    match svc.outbound("clinical/open", "GET").await.outcome {
        Outcome::Decided(Decision::Allow(a)) => assert_eq!(a.outbound, Some(OutboundAuth::Remove)),
        other => panic!("{other:?}"),
    }
    match svc.outbound("clinical/nope", "GET").await.outcome {
        Outcome::Decided(Decision::Deny(d)) => {
            assert_eq!((d.status, d.reason), (403, DenyReason::UnknownConnection));
            assert!(d.diagnostics.contains("clinical/nope"));
        }
        other => panic!("{other:?}"),
    }
}
