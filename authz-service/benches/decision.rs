//! The decision path, measured: a Check decided from a cached token, from an uncached token
//! (signature verification), from cached Basic credentials, and the pure classification and
//! scope evaluation underneath. Run with `cargo bench -p fhirguard-authz`.

// A benchmark of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed run as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use fhirguard_authz::config::*;
use fhirguard_authz::core::driver::Outcome;
use fhirguard_authz::core::policy::Request;
use fhirguard_authz::observe::Observer;
use fhirguard_authz::runtime::executor::{Executor, Options};
use fhirguard_authz::server::metrics::Metrics;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

struct Fixture {
    service: Arc<Executor>,
    token: String,
    key: jsonwebtoken::EncodingKey,
    kid: String,
    basic: String,
}

fn claims(jti: u64) -> serde_json::Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({"iss": "https://idp", "aud": "fhir", "sub": "dr", "scope": "user/Observation.rs patient/*.rs openid",
        "exp": now + 3600, "jti": jti})
}

fn fixture() -> Fixture {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    let jwks = serde_json::json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])}]});
    let key = jsonwebtoken::EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&h, &claims(0), &key).unwrap();
    let policy = PolicyConfig {
        audit: None,
        smart_configuration: None,
        namespace: "b".into(),
        name: "p".into(),
        hosts: vec![],
        base_path: "/fhir/r4".into(),
        public_paths: default_public_paths(),
        unauthenticated_access: false,
        authentication: AuthenticationConfig {
            introspection: None,
            combine: Combine::AnyOf,
            basic: Some(BasicConfig {
                htpasswd: format!("alice:{}\n", bcrypt::hash("pw", 10).unwrap()),
                access: vec![],
            }),
            jwt: Some(JwtConfig {
                token_sources: vec![TokenSource::Header],
                require_subject_matches_basic_user: false,
                providers: vec![ProviderConfig {
                    name: "idp".into(),
                    issuer: "https://idp".into(),
                    audiences: vec!["fhir".into()],
                    algorithms: vec![Algorithm::ES256],
                    clock_skew_seconds: 30,
                    jwks: JwksConfig {
                        uri: None,
                        refresh_interval_seconds: 600,
                        tls: TlsConfig::default(),
                        document: Some(jwks.to_string()),
                    },
                    claims: ClaimNames::default(),
                }],
            }),
        },
        authorization: AuthorizationConfig::default(),
    };
    let config = CompiledConfig {
        version: FORMAT_VERSION,
        generation: 1,
        policies: vec![policy],
        connections: vec![],
    };
    // The real metrics as observer: their cost is part of every Check.
    let observer: Arc<dyn Observer> = Arc::new(Metrics::new());
    let service = Arc::new(Executor::new(observer, Options::default()));
    let rt = service
        .build(config, [0; 32], std::path::Path::new("."))
        .unwrap();
    service.install(rt);
    Fixture {
        service,
        token,
        key,
        kid: "k1".into(),
        basic: format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:pw")
        ),
    }
}

fn request<'a>(auth: &'a str, path: &'a str) -> Request<'a> {
    Request {
        method: "GET",
        host: "ehr",
        path,
        authorization: Some(auth),
        if_none_exist: None,
        headers: &[],
        body: None,
        policy_ref: None,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = fixture();
    let bearer = format!("Bearer {}", f.token);
    let path = "/fhir/r4/Observation/123";
    let check = |auth: &str| {
        let a = rt.block_on(f.service.check(&request(auth, path)));
        assert!(
            matches!(a.outcome, Outcome::Decided(ref d) if d.is_allow()),
            "{:?}",
            a.outcome
        );
    };
    check(&bearer);
    check(&f.basic);

    let mut g = c.benchmark_group("check");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("token_cached", |b| b.iter(|| check(&bearer)));
    g.bench_function("basic_cached", |b| b.iter(|| check(&f.basic)));
    let mut n = 1u64;
    g.bench_function("token_uncached", |b| {
        // A new token each iteration: signing is outside the timed part.
        b.iter_batched(
            || {
                n += 1;
                let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                h.kid = Some(f.kid.clone());
                format!(
                    "Bearer {}",
                    jsonwebtoken::encode(&h, &claims(n), &f.key).unwrap()
                )
            },
            |auth| check(&auth),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("pure");
    let scopes = "openid fhirUser launch/patient patient/Observation.rs patient/Condition.rs user/Patient.r user/*.cruds system/Encounter.read";
    g.bench_function("parse_scopes", |b| {
        b.iter(|| {
            fhirguard_authz::core::smart::parse_scopes(std::hint::black_box(scopes).split(' '))
        })
    });
    let set = fhirguard_authz::core::smart::parse_scopes(scopes.split(' '));
    let segs = fhirguard_authz::core::fhir::normalize_path("/Observation").unwrap();
    let req = fhirguard_authz::core::fhir::classify(fhirguard_authz::core::fhir::HttpRequest {
        method: "GET",
        segments: &segs,
        query: Some("subject=Patient/1&code=x"),
        body: None,
        if_none_exist: None,
    })
    .unwrap();
    let grant = fhirguard_authz::core::smart::Grant {
        scopes: &set,
        patient: Some("1"),
        narrow: false,
        lookup_configured: true,
        lookups: None,
        reference_data: false,
    };
    g.bench_function("smart_authorize_pinned_search", |b| {
        b.iter(|| fhirguard_authz::core::smart::authorize(&grant, std::hint::black_box(&req)))
    });
    g.bench_function("classify_search", |b| {
        b.iter(|| {
            let segs =
                fhirguard_authz::core::fhir::normalize_path(std::hint::black_box("/Observation"))
                    .unwrap();
            fhirguard_authz::core::fhir::classify(fhirguard_authz::core::fhir::HttpRequest {
                method: "GET",
                segments: &segs,
                query: Some("subject=Patient%2F1&code=http://loinc.org|1234-5&_count=50"),
                body: None,
                if_none_exist: None,
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
