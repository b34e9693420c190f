//! Table tests of the pure decision core: policy selection, public paths, credential
//! extraction, Basic permissions and the shape of every refusal.

use super::*;
use crate::config::*;
use crate::core::smart::parse_scopes;

fn decide(p: &PolicyConfig, pending: &Pending, id: &Identity) -> Decision {
    match authorize(p, pending, id, None) {
        Step::Done(d) => d,
        Step::Lookup(l) => panic!("unexpected lookup {l:?}"),
    }
}

const HASH: &str = "$2y$05$3bPgAOMbkZ3UxBYuvB/T2.7xI0ag4VDj9gkOHkRyz0.p5Rz8Ru.Ia";

fn provider() -> ProviderConfig {
    ProviderConfig {
        name: "idp".into(),
        issuer: "https://idp".into(),
        audiences: vec!["fhir".into()],
        algorithms: vec![Algorithm::RS256],
        clock_skew_seconds: 0,
        jwks: JwksConfig {
            uri: None,
            refresh_interval_seconds: 600,
            tls: TlsConfig::default(),
            document: Some(r#"{"keys":[]}"#.into()),
        },
        claims: ClaimNames::default(),
    }
}

fn policy(name: &str, hosts: &[&str], base: &str) -> PolicyConfig {
    PolicyConfig {
        audit: None,
        smart_configuration: None,
        namespace: "ns".into(),
        name: name.into(),
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        base_path: base.into(),
        public_paths: default_public_paths(),
        unauthenticated_access: false,
        authentication: AuthenticationConfig {
            introspection: None,
            combine: Combine::AnyOf,
            basic: Some(BasicConfig {
                htpasswd: format!("alice:{HASH}\nbob:{HASH}\n"),
                access: vec![
                    AccessRule {
                        users: vec!["alice".into()],
                        permission: Permission::ReadWrite,
                    },
                    AccessRule {
                        users: vec!["bob".into()],
                        permission: Permission::Read,
                    },
                ],
            }),
            jwt: Some(JwtConfig {
                token_sources: vec![TokenSource::Header],
                require_subject_matches_basic_user: false,
                providers: vec![provider()],
            }),
        },
        authorization: AuthorizationConfig::default(),
    }
}

fn policies() -> Vec<PolicyConfig> {
    let mut all_of = policy("allof", &["allof.example"], "/fhir");
    all_of.authentication.combine = Combine::AllOf;
    all_of
        .authentication
        .jwt
        .as_mut()
        .unwrap()
        .require_subject_matches_basic_user = true;
    let mut dev = policy("dev", &["dev.example"], "/fhir");
    dev.unauthenticated_access = true;
    let mut query = policy("query", &["query.example"], "/fhir");
    query.authentication.jwt.as_mut().unwrap().token_sources = vec![TokenSource::QueryParameter];
    let mut basic_only = policy("basiconly", &["basic.example"], "/fhir");
    basic_only.authentication.jwt = None;
    vec![
        policy("any", &[], "/fhir"),
        policy("ehr", &["ehr.example"], "/fhir/r4"),
        policy("ehr-root", &["ehr.example"], "/"),
        all_of,
        dev,
        query,
        basic_only,
    ]
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn req<'a>(method: &'a str, host: &'a str, path: &'a str, auth: Option<&'a str>) -> Request<'a> {
    Request {
        method,
        host,
        path,
        authorization: auth,
        if_none_exist: None,
        headers: &[],
        body: None,
        policy_ref: None,
    }
}

/// What step 1 should do.
#[derive(Debug, PartialEq)]
enum Want {
    /// Verification needed, for this policy, with (basic user, bearer source).
    Pending(&'static str, Option<&'static str>, Option<TokenSource>),
    Allow(&'static str, AllowReason),
    Deny(u16, DenyReason),
}

fn outcome(policies: &[PolicyConfig], r: &Request<'_>) -> Want {
    match prepare(policies, r) {
        Ok(p) => Want::Pending(
            Box::leak(policies[p.policy_index].name.clone().into_boxed_str()),
            p.basic.map(|b| &*Box::leak(b.user.into_boxed_str())),
            p.bearer.map(|b| b.source),
        ),
        Err(Decision::Allow(a)) => Want::Allow(
            Box::leak(
                a.policy
                    .split('/')
                    .nth(1)
                    .unwrap()
                    .to_string()
                    .into_boxed_str(),
            ),
            a.reason,
        ),
        Err(Decision::Deny(d)) => Want::Deny(d.status, d.reason),
        Err(Decision::Respond(r)) => panic!("prepare never answers itself: {r:?}"),
    }
}

#[test]
fn step_one_table() {
    let ps = policies();
    let alice = format!("Basic {}", b64("alice:pw"));
    let colon_pw = format!("Basic {}", b64("alice:p:w"));
    let no_colon = format!("Basic {}", b64("alice"));
    let empty_user = format!("Basic {}", b64(":pw"));
    let cases: Vec<(&str, Request<'_>, Want)> = vec![
        (
            "host-specific policy, longest base",
            req("GET", "ehr.example", "/fhir/r4/Patient/1", Some(&alice)),
            Want::Pending("ehr", Some("alice"), None),
        ),
        (
            "host with port and case",
            req(
                "GET",
                "EHR.example:8443",
                "/fhir/r4/Patient/1",
                Some(&alice),
            ),
            Want::Pending("ehr", Some("alice"), None),
        ),
        (
            "host-specific root base beats host-less /fhir",
            req("GET", "ehr.example", "/fhir/Patient/1", Some(&alice)),
            Want::Deny(400, DenyReason::MalformedRequest),
        ),
        (
            "host-less policy for other hosts",
            req("GET", "other.example", "/fhir/Patient/1", Some(&alice)),
            Want::Pending("any", Some("alice"), None),
        ),
        (
            "no policy for the path",
            req("GET", "other.example", "/api/x", Some(&alice)),
            Want::Deny(403, DenyReason::NoPolicy),
        ),
        (
            "base path is a segment prefix, not a string prefix",
            req("GET", "other.example", "/fhirx/Patient/1", Some(&alice)),
            Want::Deny(403, DenyReason::NoPolicy),
        ),
        (
            "path tricks are 400 before anything else",
            req("GET", "ehr.example", "/fhir/r4/../admin", Some(&alice)),
            Want::Deny(400, DenyReason::MalformedRequest),
        ),
        (
            "public metadata",
            req("GET", "ehr.example", "/fhir/r4/metadata", None),
            Want::Allow("ehr", AllowReason::PublicPath),
        ),
        (
            "public smart-configuration",
            req(
                "GET",
                "ehr.example",
                "/fhir/r4/.well-known/smart-configuration",
                None,
            ),
            Want::Allow("ehr", AllowReason::PublicPath),
        ),
        (
            "public with a query",
            req("GET", "ehr.example", "/fhir/r4/metadata?_format=json", None),
            Want::Allow("ehr", AllowReason::PublicPath),
        ),
        (
            "public paths are for reading only",
            req("POST", "ehr.example", "/fhir/r4/metadata", None),
            Want::Deny(400, DenyReason::MalformedRequest),
        ),
        (
            "encoded public path still public",
            req("GET", "ehr.example", "/fhir/r4/meta%64ata", None),
            Want::Allow("ehr", AllowReason::PublicPath),
        ),
        (
            "unauthenticatedAccess",
            req("DELETE", "dev.example", "/fhir/Patient/1", None),
            Want::Allow("dev", AllowReason::UnauthenticatedAccess),
        ),
        (
            "unauthenticatedAccess still refuses path tricks",
            req("GET", "dev.example", "/fhir/Patient//1", None),
            Want::Deny(400, DenyReason::MalformedRequest),
        ),
        (
            "no credentials",
            req("GET", "ehr.example", "/fhir/r4/Patient/1", None),
            Want::Deny(401, DenyReason::MissingCredentials),
        ),
        (
            "password with a colon",
            req("GET", "ehr.example", "/fhir/r4/Patient/1", Some(&colon_pw)),
            Want::Pending("ehr", Some("alice"), None),
        ),
        (
            "basic without colon",
            req("GET", "ehr.example", "/fhir/r4/Patient/1", Some(&no_colon)),
            Want::Deny(401, DenyReason::MalformedCredentials),
        ),
        (
            "basic with empty user",
            req(
                "GET",
                "ehr.example",
                "/fhir/r4/Patient/1",
                Some(&empty_user),
            ),
            Want::Deny(401, DenyReason::MalformedCredentials),
        ),
        (
            "basic not base64",
            req(
                "GET",
                "ehr.example",
                "/fhir/r4/Patient/1",
                Some("Basic !!!"),
            ),
            Want::Deny(401, DenyReason::MalformedCredentials),
        ),
        (
            "scheme is case-insensitive",
            req(
                "GET",
                "ehr.example",
                "/fhir/r4/Patient/1",
                Some("bearer abc.def.ghi"),
            ),
            Want::Pending("ehr", None, Some(TokenSource::Header)),
        ),
        (
            "unknown scheme",
            req("GET", "ehr.example", "/fhir/r4/Patient/1", Some("Digest x")),
            Want::Deny(401, DenyReason::UnsupportedScheme),
        ),
        (
            "empty bearer",
            req("GET", "ehr.example", "/fhir/r4/Patient/1", Some("Bearer ")),
            Want::Deny(401, DenyReason::MalformedCredentials),
        ),
        (
            "query token not accepted by a header-only policy",
            req(
                "GET",
                "ehr.example",
                "/fhir/r4/Patient/1?access_token=abc",
                None,
            ),
            Want::Deny(400, DenyReason::MalformedCredentials),
        ),
        (
            "query token accepted where configured",
            req(
                "GET",
                "query.example",
                "/fhir/Patient/1?access_token=abc",
                None,
            ),
            Want::Pending("query", None, Some(TokenSource::QueryParameter)),
        ),
        (
            "header token refused where only query is configured",
            req(
                "GET",
                "query.example",
                "/fhir/Patient/1",
                Some("Bearer abc"),
            ),
            Want::Deny(401, DenyReason::UnsupportedScheme),
        ),
        (
            "two query tokens",
            req(
                "GET",
                "query.example",
                "/fhir/Patient/1?access_token=a&access_token=b",
                None,
            ),
            Want::Deny(400, DenyReason::MalformedCredentials),
        ),
        (
            "a percent-encoded access_token name next to valid Basic",
            req(
                "GET",
                "query.example",
                "/fhir/Patient/1?%61ccess_token=abc",
                Some(&alice),
            ),
            Want::Deny(400, DenyReason::MalformedCredentials),
        ),
        (
            "bearer on a basic-only policy",
            req(
                "GET",
                "basic.example",
                "/fhir/Patient/1",
                Some("Bearer abc"),
            ),
            Want::Deny(401, DenyReason::UnsupportedScheme),
        ),
        (
            "AllOf: Basic header plus query token",
            req(
                "GET",
                "allof.example",
                "/fhir/Patient/1?access_token=abc",
                Some(&alice),
            ),
            Want::Pending("allof", Some("alice"), Some(TokenSource::QueryParameter)),
        ),
        (
            "AllOf: Basic alone",
            req("GET", "allof.example", "/fhir/Patient/1", Some(&alice)),
            Want::Deny(401, DenyReason::MissingCredentials),
        ),
        (
            "AllOf: token alone",
            req(
                "GET",
                "allof.example",
                "/fhir/Patient/1?access_token=abc",
                None,
            ),
            Want::Deny(401, DenyReason::MissingCredentials),
        ),
        (
            "AllOf: bearer in the header",
            req(
                "GET",
                "allof.example",
                "/fhir/Patient/1",
                Some("Bearer abc"),
            ),
            Want::Deny(401, DenyReason::UnsupportedScheme),
        ),
        (
            "method not in FHIR",
            req("OPTIONS", "ehr.example", "/fhir/r4/Patient", Some(&alice)),
            Want::Deny(405, DenyReason::MalformedRequest),
        ),
        // Every spelling of the token parameter is found by the one query parser, and only
        // the literal one is used: Envoy removes parameters by their literal name.
        (
            "encoded token name where query tokens are accepted",
            req(
                "GET",
                "query.example",
                "/fhir/Patient/1?access%5Ftoken=abc",
                None,
            ),
            Want::Deny(400, DenyReason::MalformedCredentials),
        ),
        (
            "encoded token name on a header-only policy",
            req(
                "GET",
                "ehr.example",
                "/fhir/r4/Patient/1?access%5Ftoken=abc",
                Some(&alice),
            ),
            Want::Deny(400, DenyReason::MalformedCredentials),
        ),
        (
            "token name in another case",
            req(
                "GET",
                "query.example",
                "/fhir/Patient/1?Access_Token=abc",
                None,
            ),
            Want::Deny(400, DenyReason::MalformedCredentials),
        ),
        (
            "token name with a modifier",
            req(
                "GET",
                "query.example",
                "/fhir/Patient/1?access_token:exact=abc",
                None,
            ),
            Want::Deny(400, DenyReason::MalformedCredentials),
        ),
        (
            "plain and encoded token together",
            req(
                "GET",
                "query.example",
                "/fhir/Patient/1?access_token=a&access%5Ftoken=b",
                None,
            ),
            Want::Deny(400, DenyReason::MalformedCredentials),
        ),
        (
            "token in a POST _search form body",
            Request {
                body: Some(fhir::Body {
                    bytes: b"access_token=abc",
                    content_type: Some("application/x-www-form-urlencoded"),
                }),
                ..req("POST", "query.example", "/fhir/Observation/_search", None)
            },
            Want::Deny(400, DenyReason::MalformedRequest),
        ),
    ];
    for (name, r, want) in cases {
        assert_eq!(outcome(&ps, &r), want, "{name}");
    }
}

#[test]
fn method_overrides_are_refused_in_every_spelling() {
    let ps = policies();
    let alice = format!("Basic {}", b64("alice:pw"));
    for name in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
        "x_http_method_override",
        "X-HTTP-Method-Override",
        "x-http_method",
        // HAPI's cascading delete would remove every resource referencing the target.
        "x-cascade",
        "X_Cascade",
    ] {
        let headers = vec![(name, "DELETE")];
        let r = Request {
            headers: &headers,
            ..req(
                "POST",
                "ehr.example",
                "/fhir/r4/Observation/_search",
                Some(&alice),
            )
        };
        let Err(Decision::Deny(d)) = prepare(&ps, &r) else {
            panic!("{name} was not refused")
        };
        assert_eq!(
            (d.status, d.reason),
            (400, DenyReason::MalformedRequest),
            "{name}"
        );
        assert!(
            d.diagnostics.contains("method override") || d.diagnostics.contains("cascading"),
            "{name}: {}",
            d.diagnostics
        );
    }
    // Headers that merely look alike pass.
    let headers = vec![("x-http-methods", "x")];
    let r = Request {
        headers: &headers,
        ..req("GET", "ehr.example", "/fhir/r4/Patient/1", Some(&alice))
    };
    assert!(prepare(&ps, &r).is_ok());
}

#[test]
fn a_public_path_drops_a_token_sent_along() {
    let ps = policies();
    let Err(Decision::Allow(a)) = prepare(
        &ps,
        &req(
            "GET",
            "ehr.example",
            "/fhir/r4/metadata?access_token=abc",
            None,
        ),
    ) else {
        panic!()
    };
    assert_eq!(a.remove_query, vec!["access_token"]);
    // Any other spelling could not be removed by Envoy: refused rather than forwarded.
    for path in [
        "/fhir/r4/metadata?access%5Ftoken=abc",
        "/fhir/r4/metadata?ACCESS_TOKEN=abc",
        "/fhir/r4/metadata?access_token%3Ax=abc",
    ] {
        let Err(Decision::Deny(d)) = prepare(&ps, &req("GET", "ehr.example", path, None)) else {
            panic!("{path} was not refused")
        };
        assert_eq!(d.status, 400, "{path}");
    }
}

#[test]
fn a_named_policy_wins_and_an_unknown_name_is_refused() {
    let ps = policies();
    let alice = format!("Basic {}", b64("alice:pw"));
    let mut r = req("GET", "ehr.example", "/fhir/Patient/1", Some(&alice));
    r.policy_ref = Some("ns/basiconly");
    assert_eq!(
        outcome(&ps, &r),
        Want::Pending("basiconly", Some("alice"), None)
    );
    r.policy_ref = Some("ns/nope");
    assert_eq!(outcome(&ps, &r), Want::Deny(403, DenyReason::NoPolicy));
    r.policy_ref = Some("garbage");
    assert_eq!(outcome(&ps, &r), Want::Deny(403, DenyReason::NoPolicy));
    // A named policy whose basePath does not cover the path refuses.
    r.policy_ref = Some("ns/ehr");
    assert_eq!(outcome(&ps, &r), Want::Deny(403, DenyReason::NoPolicy));
}

#[test]
fn challenges_offer_what_the_policy_accepts() {
    let ps = policies();
    let Err(Decision::Deny(d)) =
        prepare(&ps, &req("GET", "ehr.example", "/fhir/r4/Patient/1", None))
    else {
        panic!()
    };
    assert_eq!(
        d.www_authenticate,
        vec![r#"Bearer realm="fhir""#, r#"Basic realm="fhir""#]
    );
    let Err(Decision::Deny(d)) =
        prepare(&ps, &req("GET", "basic.example", "/fhir/Patient/1", None))
    else {
        panic!()
    };
    assert_eq!(d.www_authenticate, vec![r#"Basic realm="fhir""#]);
    assert_eq!(d.issue_code(), "login");
}

fn pending(ps: &[PolicyConfig], method: &str, host: &str, path: &str, auth: &str) -> Pending {
    prepare(ps, &req(method, host, path, Some(auth))).unwrap()
}

fn token(subject: &str, scopes: &str, patient: Option<&str>) -> TokenIdentity {
    TokenIdentity {
        client_id: None,
        provider: "idp".into(),
        subject: subject.into(),
        scopes: parse_scopes(scopes.split(' ')),
        scope_text: scopes.into(),
        patient: patient.map(str::to_string),
        fhir_user: None,
    }
}

#[test]
fn basic_permissions_table() {
    let ps = policies();
    let ehr = &ps[1];
    let alice = format!("Basic {}", b64("alice:pw"));
    // (user, method, path, allowed)
    let cases = [
        ("alice", "GET", "/fhir/r4/Patient/1", true),
        ("alice", "DELETE", "/fhir/r4/Patient/1", true),
        ("bob", "GET", "/fhir/r4/Patient/1", true),
        ("bob", "GET", "/fhir/r4/Observation?code=x", true),
        ("bob", "POST", "/fhir/r4/Observation/_search", true),
        ("bob", "GET", "/fhir/r4/Patient/1/$everything", true),
        ("bob", "POST", "/fhir/r4/ValueSet/$expand", true),
        ("bob", "POST", "/fhir/r4/Patient", false),
        ("bob", "PUT", "/fhir/r4/Patient/1", false),
        ("bob", "PATCH", "/fhir/r4/Patient/1", false),
        ("bob", "DELETE", "/fhir/r4/Patient?identifier=x", false),
        ("bob", "POST", "/fhir/r4/$reindex", false),
        ("bob", "POST", "/fhir/r4", false),
        // Operations: known by name; an unknown one may write, whatever the method.
        ("bob", "GET", "/fhir/r4/$reindex", false),
        ("bob", "GET", "/fhir/r4/Observation/$foo", false),
        ("bob", "GET", "/fhir/r4/Patient/1/$meta", true),
        ("bob", "POST", "/fhir/r4/Patient/1/$meta-add", false),
        ("bob", "POST", "/fhir/r4/$graphql", false),
        (
            "bob",
            "GET",
            "/fhir/r4/$graphql?query=mutation%7Bx%7D",
            false,
        ),
        ("bob", "GET", "/fhir/r4/$graphql?query=%7Bx%7D", true),
        // `persist` may hide in a body fhirguard did not see.
        ("bob", "POST", "/fhir/r4/Composition/1/$document", false),
        ("bob", "GET", "/fhir/r4/Composition/1/$document", true),
        (
            "bob",
            "GET",
            "/fhir/r4/Composition/1/$document?persist=true",
            false,
        ),
        ("bob", "POST", "/fhir/r4/$process-message", false),
        ("bob", "GET", "/fhir/r4/Observation/$lastn?patient=1", true),
    ];
    for (user, method, path, allowed) in cases {
        let p = pending(&ps, method, "ehr.example", path, &alice);
        let id = Identity {
            basic_user: Some(user.into()),
            token: None,
        };
        let d = decide(ehr, &p, &id);
        assert_eq!(d.is_allow(), allowed, "{user} {method} {path}: {d:?}");
        if !allowed {
            assert_eq!(d.status(), 403);
            assert_eq!(d.reason_label(), "read_only_user");
        }
    }
    // A user no rule names.
    let p = pending(&ps, "GET", "ehr.example", "/fhir/r4/Patient/1", &alice);
    let mut ehr2 = ehr.clone();
    ehr2.authentication
        .basic
        .as_mut()
        .unwrap()
        .access
        .truncate(1);
    let d = decide(
        &ehr2,
        &p,
        &Identity {
            basic_user: Some("bob".into()),
            token: None,
        },
    );
    assert_eq!(d.reason_label(), "user_not_permitted");
    // With no rules at all, everyone may write.
    ehr2.authentication.basic.as_mut().unwrap().access.clear();
    let p = pending(&ps, "DELETE", "ehr.example", "/fhir/r4/Patient/1", &alice);
    assert!(
        decide(
            &ehr2,
            &p,
            &Identity {
                basic_user: Some("bob".into()),
                token: None
            }
        )
        .is_allow()
    );
}

#[test]
fn a_read_only_user_may_post_a_batch_of_reads_but_not_an_uninspected_bundle() {
    let ps = policies();
    let alice = format!("Basic {}", b64("alice:pw"));
    let batch = r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/1"}}]}"#;
    let mut r = req("POST", "ehr.example", "/fhir/r4", Some(&alice));
    r.body = Some(crate::core::fhir::Body {
        bytes: batch.as_bytes(),
        content_type: Some("application/fhir+json"),
    });
    let p = prepare(&ps, &r).unwrap();
    let bob = Identity {
        basic_user: Some("bob".into()),
        token: None,
    };
    assert!(decide(&ps[1], &p, &bob).is_allow());
    let tx = r#"{"resourceType":"Bundle","type":"transaction","entry":[{"request":{"method":"GET","url":"Patient/1"}},{"request":{"method":"DELETE","url":"Patient/2"}}]}"#;
    r.body = Some(crate::core::fhir::Body {
        bytes: tx.as_bytes(),
        content_type: Some("application/fhir+json"),
    });
    let p = prepare(&ps, &r).unwrap();
    assert_eq!(decide(&ps[1], &p, &bob).reason_label(), "read_only_user");
    r.body = None;
    let p = prepare(&ps, &r).unwrap();
    let Decision::Deny(d) = decide(&ps[1], &p, &bob) else {
        panic!()
    };
    assert!(d.diagnostics.contains("not visible"), "{}", d.diagnostics);
}

#[test]
fn token_decisions_carry_identity_and_scope_challenges() {
    let ps = policies();
    let p = pending(
        &ps,
        "GET",
        "ehr.example",
        "/fhir/r4/Observation/1",
        "Bearer t",
    );
    let id = Identity {
        basic_user: None,
        token: Some(std::sync::Arc::new(token(
            "dr-who",
            "user/Observation.rs",
            Some("p1"),
        ))),
    };
    let Decision::Allow(a) = decide(&ps[1], &p, &id) else {
        panic!()
    };
    assert_eq!(a.subject.as_deref(), Some("dr-who"));
    assert_eq!(a.patient.as_deref(), Some("p1"));
    assert_eq!(a.scopes.as_deref(), Some("user/Observation.rs"));
    assert!(a.remove_query.is_empty());

    let p = pending(
        &ps,
        "DELETE",
        "ehr.example",
        "/fhir/r4/Observation/1",
        "Bearer t",
    );
    let Decision::Deny(d) = decide(&ps[1], &p, &id) else {
        panic!()
    };
    assert_eq!((d.status, d.reason), (403, DenyReason::InsufficientScope));
    assert_eq!(
        d.www_authenticate,
        vec![r#"Bearer realm="fhir", error="insufficient_scope", scope="patient/Observation.d""#]
    );
    assert_eq!(d.issue_code(), "forbidden");
}

#[test]
fn all_of_checks_both_and_the_subject() {
    let ps = policies();
    let all_of = &ps[3];
    let alice = format!("Basic {}", b64("alice:pw"));
    let p = prepare(
        &ps,
        &req(
            "GET",
            "allof.example",
            "/fhir/Observation/1?access_token=t",
            Some(&alice),
        ),
    )
    .unwrap();
    let id = Identity {
        basic_user: Some("alice".into()),
        token: Some(std::sync::Arc::new(token("alice", "user/*.rs", None))),
    };
    let Decision::Allow(a) = decide(all_of, &p, &id) else {
        panic!()
    };
    assert_eq!(
        a.remove_query,
        vec!["access_token"],
        "the token must not travel upstream"
    );
    let id = Identity {
        basic_user: Some("alice".into()),
        token: Some(std::sync::Arc::new(token("mallory", "user/*.rs", None))),
    };
    assert_eq!(decide(all_of, &p, &id).reason_label(), "subject_mismatch");
    // Both credentials' permissions must allow: bob (Read) with a write scope cannot write.
    let p = prepare(
        &ps,
        &req(
            "DELETE",
            "allof.example",
            "/fhir/Observation/1?access_token=t",
            Some(&alice),
        ),
    )
    .unwrap();
    let id = Identity {
        basic_user: Some("bob".into()),
        token: Some(std::sync::Arc::new(token("bob", "user/*.cruds", None))),
    };
    assert_eq!(decide(all_of, &p, &id).reason_label(), "read_only_user");
}

mod review2;

/// Finding 4 (issue 14 attack): `ehr.example.` is the same DNS name as `ehr.example`, and an
/// inbound sidecar routes it to the same server, but the host-specific policies do not match
/// it, so the catch-all policy `any` (hosts: []) judges the request instead. A secure choice
/// treats both spellings alike.
#[test]
fn attack14_trailing_dot_host_is_not_judged_by_the_catch_all() {
    let ps = policies();
    let alice = format!("Basic {}", b64("alice:pw"));
    let plain = outcome(
        &ps,
        &req("GET", "ehr.example", "/fhir/Patient/1", Some(&alice)),
    );
    for host in ["ehr.example.", "EHR.example.:8443"] {
        let got = outcome(&ps, &req("GET", host, "/fhir/Patient/1", Some(&alice)));
        assert_eq!(
            got, plain,
            "{host} is judged by another policy than ehr.example"
        );
    }
}

/// Headers and bodies a server can read differently from fhirguard (issue 14 attack, findings
/// 1, 2 and 5): every variant is refused with 400 naming what it is, and the look-alikes that
/// mean nothing pass.
#[test]
fn smuggled_headers_and_bodies_are_refused_in_every_form() {
    let ps = policies();
    let alice = format!("Basic {}", b64("alice:pw"));
    let form = fhir::Body {
        bytes: b"patient=456&_revinclude=*",
        content_type: Some("application/x-www-form-urlencoded"),
    };
    let empty = fhir::Body {
        bytes: b"",
        content_type: None,
    };
    // (name, method, path, headers, If-None-Exist, body, refused, words in the refusal)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Option<&'a str>,
        Option<fhir::Body<'a>>,
        bool,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "if_none_exist",
            "POST",
            "/fhir/r4/Observation",
            vec![("if_none_exist", "identifier=x|1")],
            None,
            None,
            true,
            "If-None-Exist",
        ),
        (
            "If_None-Exist",
            "POST",
            "/fhir/r4/Observation",
            vec![("If_None-Exist", "identifier=x|1")],
            None,
            None,
            true,
            "If-None-Exist",
        ),
        (
            "IF-NONE_EXIST",
            "POST",
            "/fhir/r4/Observation",
            vec![("IF-NONE_EXIST", "identifier=x|1")],
            None,
            None,
            true,
            "If-None-Exist",
        ),
        (
            "underscore on GET too",
            "GET",
            "/fhir/r4/Patient/1",
            vec![("if_none_exist", "x=1")],
            None,
            None,
            true,
            "If-None-Exist",
        ),
        (
            "two lines joined",
            "POST",
            "/fhir/r4/Observation",
            vec![],
            Some("_id=o2,&patient=123"),
            None,
            true,
            "one header line",
        ),
        (
            "comma in one line",
            "POST",
            "/fhir/r4/Observation",
            vec![],
            Some("identifier=a,b&patient=123"),
            None,
            true,
            "one header line",
        ),
        (
            "GET with a form body",
            "GET",
            "/fhir/r4/Observation?patient=123",
            vec![],
            None,
            Some(form),
            true,
            "must not carry a body",
        ),
        (
            "GET announcing a body",
            "GET",
            "/fhir/r4/Observation?patient=123",
            vec![("content-length", "25")],
            None,
            None,
            true,
            "must not carry a body",
        ),
        (
            "GET chunked",
            "GET",
            "/fhir/r4/Patient/1",
            vec![("transfer-encoding", "chunked")],
            None,
            None,
            true,
            "must not carry a body",
        ),
        (
            "HEAD with a body",
            "HEAD",
            "/fhir/r4/Patient/1",
            vec![("Content-Length", "3")],
            None,
            Some(form),
            true,
            "must not carry a body",
        ),
        (
            "DELETE with a body",
            "DELETE",
            "/fhir/r4/Patient/1",
            vec![],
            None,
            Some(form),
            true,
            "must not carry a body",
        ),
        // Look-alikes and harmless forms pass this step.
        (
            "If-None-Exist proper",
            "POST",
            "/fhir/r4/Observation",
            vec![("if-none-exist", "identifier=x|1")],
            Some("identifier=x|1"),
            None,
            false,
            "",
        ),
        (
            "if-none-exists (another name)",
            "POST",
            "/fhir/r4/Observation",
            vec![("if_none_exists", "x")],
            None,
            None,
            false,
            "",
        ),
        (
            "GET with Content-Length: 0",
            "GET",
            "/fhir/r4/Patient/1",
            vec![("content-length", "0")],
            None,
            Some(empty),
            false,
            "",
        ),
        (
            "POST with a body",
            "POST",
            "/fhir/r4/Observation/_search",
            vec![("content-length", "25")],
            None,
            Some(form),
            false,
            "",
        ),
    ];
    for (name, method, path, headers, ine, body, refused, words) in cases {
        let r = Request {
            headers: &headers,
            if_none_exist: ine,
            body,
            ..req(method, "ehr.example", path, Some(&alice))
        };
        match prepare(&ps, &r) {
            Err(Decision::Deny(d)) if refused => {
                assert_eq!(
                    (d.status, d.reason),
                    (400, DenyReason::MalformedRequest),
                    "{name}"
                );
                assert!(d.diagnostics.contains(words), "{name}: {}", d.diagnostics);
            }
            Ok(_) if !refused => {}
            other => panic!("{name}: {other:?}"),
        }
    }
}

/// A verified token whose copied claims hold control characters is refused as a whole,
/// whichever claim it is (they would become header lines of their own upstream).
#[test]
fn tokens_with_control_characters_in_copied_claims_are_refused() {
    let ps = policies();
    let ehr = &ps[1];
    let p = prepare(
        &ps,
        &req(
            "GET",
            "ehr.example",
            "/fhir/r4/Observation/1",
            Some("Bearer t"),
        ),
    )
    .unwrap();
    let clean = token("app", "user/*.rs", None);
    let variants: Vec<(&str, TokenIdentity)> = vec![
        (
            "sub CRLF",
            TokenIdentity {
                subject: "app\r\nx-fhirguard-patient: 456".into(),
                ..clean.clone()
            },
        ),
        (
            "sub NUL",
            TokenIdentity {
                subject: "app\0".into(),
                ..clean.clone()
            },
        ),
        (
            "scope LF",
            TokenIdentity {
                scope_text: "user/*.rs\nx: y".into(),
                ..clean.clone()
            },
        ),
        (
            "patient CR",
            TokenIdentity {
                patient: Some("123\r".into()),
                ..clean.clone()
            },
        ),
        (
            "fhirUser TAB",
            TokenIdentity {
                fhir_user: Some("Practitioner/1\t".into()),
                ..clean.clone()
            },
        ),
        (
            "sub DEL",
            TokenIdentity {
                subject: "app\u{7f}".into(),
                ..clean.clone()
            },
        ),
        (
            "sub C1 control",
            TokenIdentity {
                subject: "app\u{85}".into(),
                ..clean.clone()
            },
        ),
    ];
    for (name, t) in variants {
        let id = Identity {
            basic_user: None,
            token: Some(std::sync::Arc::new(t)),
        };
        let Decision::Deny(d) = decide(ehr, &p, &id) else {
            panic!("{name} was allowed")
        };
        assert_eq!(
            (d.status, d.reason),
            (401, DenyReason::InvalidToken),
            "{name}"
        );
        assert!(d.diagnostics.contains("control characters"), "{name}");
    }
    let id = Identity {
        basic_user: None,
        token: Some(std::sync::Arc::new(clean)),
    };
    assert!(
        decide(ehr, &p, &id).is_allow(),
        "the clean token is allowed"
    );
}
