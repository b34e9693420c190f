//! Property tests of every parser that sees attacker input: path and query normalisation and
//! request classification, the SMART scope grammar, htpasswd, JWT header and payload handling,
//! Bundle and Parameters bodies, and `Prefer` merging.
//!
//! Each property states an invariant that must hold for every input, not an example: no panic;
//! bounded work; normalisation is idempotent; re-encoding an unreserved character never turns
//! a refusal into an allow or changes what is allowed; junk never grants anything; a forged
//! or mutated token never verifies.
//!
//! CI runs proptest's default number of cases (256 per property). For a long run:
//!
//! ```sh
//! PROPTEST_CASES=100000 cargo test --release -p fhirguard-authz --test properties
//! ```
//!
//! A failing case is shrunk and written to `tests/properties.proptest-regressions`; commit that
//! file with the fix so the case is replayed from then on.

// A test crate of its own: clippy.toml's allow-*-in-tests covers #[test] functions only, and
// here a failed unwrap in a helper is a failed test as well.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fhirguard_authz::config::*;
use fhirguard_authz::core::fhir::{self, Body, HttpRequest};
use fhirguard_authz::core::policy::{
    self, BasicCredential, Decision, Identity, Request, Step, TokenIdentity,
};
use fhirguard_authz::core::smart::{self, Stored};
use fhirguard_authz::verify::cache::ByteCache;
use fhirguard_authz::verify::jwt::{Attempt, Provider, TokenError, TokenVerifier};
use fhirguard_authz::verify::keys::{KeySlot, parse_jwks};
use fhirguard_authz::{config::htpasswd, core::answer};
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------------------------
// Shared generators
// ---------------------------------------------------------------------------------------------

/// Characters RFC 3986 calls unreserved: percent-encoding one of them changes nothing.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Positions of unreserved characters in `s` that are not part of a `%XX` escape.
fn unreserved_positions(s: &str) -> Vec<usize> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            i += 3;
            continue;
        }
        if is_unreserved(b[i]) {
            out.push(i);
        }
        i += 1;
    }
    out
}

/// `s` with the byte at `pos` percent-encoded, in upper or lower case hex.
fn reencode_at(s: &str, pos: usize, lower: bool) -> String {
    let b = s.as_bytes()[pos];
    let esc = if lower {
        format!("%{b:02x}")
    } else {
        format!("%{b:02X}")
    };
    format!("{}{esc}{}", &s[..pos], &s[pos + 1..])
}

/// Arbitrary text biased towards the characters path and query parsers care about.
fn tricky_text(max: usize) -> impl Strategy<Value = String> {
    let atoms = prop_oneof![
        4 => "[a-zA-Z0-9]{1,4}",
        2 => Just("/".to_string()),
        1 => Just("//".to_string()),
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
        1 => Just("%".to_string()),
        1 => Just("%2e".to_string()),
        1 => Just("%2E%2e".to_string()),
        1 => Just("%2f".to_string()),
        1 => Just("%5C".to_string()),
        1 => Just("%25".to_string()),
        1 => Just("%00".to_string()),
        1 => Just("%C0%AF".to_string()),
        1 => Just("%ff".to_string()),
        1 => Just(";".to_string()),
        1 => Just("?".to_string()),
        1 => Just("#".to_string()),
        1 => Just("&".to_string()),
        1 => Just("=".to_string()),
        1 => Just("+".to_string()),
        1 => Just("\\".to_string()),
        1 => Just(" ".to_string()),
        1 => Just("$".to_string()),
        1 => Just("é".to_string()),
        1 => any::<char>().prop_map(|c| c.to_string()),
    ];
    proptest::collection::vec(atoms, 0..max).prop_map(|v| v.concat())
}

/// Percent-encodes everything but unreserved characters and the sub-delimiters a path
/// segment may carry literally.
fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if is_unreserved(b) || b"!$&'()*+,=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Paths and queries
// ---------------------------------------------------------------------------------------------

proptest! {
    /// Whatever the path, normalisation either refuses it or yields plain segments that no
    /// server could read differently: no separators, escapes, parameters or dot-segments left.
    #[test]
    fn normalised_segments_are_plain(path in tricky_text(24)) {
        let path = format!("/{path}");
        if let Ok(segs) = fhir::normalize_path(&path) {
            for s in &segs {
                prop_assert!(!s.is_empty());
                prop_assert!(!s.contains(['/', '\\', '%', ';']), "{s:?} from {path:?}");
                prop_assert!(s != "." && s != "..");
                prop_assert!(!s.chars().any(|c| c.is_control() || c.is_whitespace()));
            }
        }
    }

    /// Normalisation is idempotent: the canonical encoding of what it produced normalises to
    /// the same segments.
    #[test]
    fn normalisation_is_idempotent(path in tricky_text(24)) {
        let path = format!("/{path}");
        if let Ok(segs) = fhir::normalize_path(&path) {
            let canonical = format!(
                "/{}",
                segs.iter().map(|s| encode_segment(s)).collect::<Vec<_>>().join("/")
            );
            prop_assert_eq!(fhir::normalize_path(&canonical), Ok(segs), "{} -> {}", path, canonical);
        }
    }

    /// Percent-encoding an unreserved character of a path gives the same segments (or, for a
    /// segment that becomes a dot-segment, a refusal), never different segments.
    #[test]
    fn reencoding_an_unreserved_path_character_changes_nothing(
        path in tricky_text(16), at in any::<Index>(), lower in any::<bool>()
    ) {
        let path = format!("/{path}");
        let positions = unreserved_positions(&path);
        if positions.is_empty() {
            return Ok(());
        }
        let variant = reencode_at(&path, positions[at.index(positions.len())], lower);
        match (fhir::normalize_path(&path), fhir::normalize_path(&variant)) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(_), Ok(b)) => prop_assert!(false, "{path:?} refused but {variant:?} gives {b:?}"),
            _ => {}
        }
    }

    /// Query parameters survive form encoding exactly (or are refused as a whole, for names a
    /// server could read differently), and re-encoding an unreserved character of a raw query
    /// changes nothing.
    #[test]
    fn queries_round_trip_and_ignore_reencoding(
        params in proptest::collection::vec((prop_oneof![
            3 => "[a-z][a-z0-9_.:-]{0,7}",
            1 => "[^\u{0}-\u{1f}\u{7f}-\u{9f}]{1,8}",
        ], "[^\u{0}-\u{1f}\u{7f}-\u{9f}]{0,8}"), 0..6),
        at in any::<Index>(), lower in any::<bool>()
    ) {
        let raw = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params.iter())
            .finish();
        let parsed = fhir::parse_query(&raw).ok();
        if let Some(p) = &parsed {
            prop_assert_eq!(p, &params, "{}", raw);
        }
        let positions = unreserved_positions(&raw);
        if !positions.is_empty() {
            let variant = reencode_at(&raw, positions[at.index(positions.len())], lower);
            prop_assert_eq!(fhir::parse_query(&variant).ok(), parsed, "{}", variant);
        }
    }

    #[test]
    fn arbitrary_queries_never_panic(q in tricky_text(30)) {
        let _ = fhir::parse_query(&q);
    }
}

// ---------------------------------------------------------------------------------------------
// Whole decisions: prepare → (credentials from a fixed table) → authorize
// ---------------------------------------------------------------------------------------------

const HASH: &str = "$2y$05$3bPgAOMbkZ3UxBYuvB/T2.7xI0ag4VDj9gkOHkRyz0.p5Rz8Ru.Ia";

fn smart_policy(name: &str, base: &str, narrow: bool) -> PolicyConfig {
    PolicyConfig {
        audit: None,
        smart_configuration: None,
        namespace: "clinical".into(),
        name: name.into(),
        hosts: vec![],
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
                        users: vec!["bob".into()],
                        permission: Permission::Read,
                    },
                    AccessRule {
                        users: vec!["alice".into()],
                        permission: Permission::ReadWrite,
                    },
                ],
            }),
            jwt: Some(JwtConfig {
                token_sources: vec![TokenSource::Header, TokenSource::QueryParameter],
                require_subject_matches_basic_user: false,
                providers: vec![ProviderConfig {
                    name: "idp".into(),
                    issuer: common::ISSUER.into(),
                    audiences: vec![common::AUDIENCE.into()],
                    algorithms: vec![Algorithm::ES256],
                    clock_skew_seconds: 0,
                    jwks: JwksConfig {
                        uri: None,
                        refresh_interval_seconds: 600,
                        tls: TlsConfig::default(),
                        document: Some(r#"{"keys":[]}"#.into()),
                    },
                    claims: ClaimNames::default(),
                }],
            }),
        },
        authorization: AuthorizationConfig {
            smart: SmartConfig {
                patient_search: if narrow {
                    PatientSearch::Narrow
                } else {
                    PatientSearch::Reject
                },
                compartment_lookup: Some(CompartmentLookup {
                    connection: "clinical/ehr-internal".into(),
                }),
                ..SmartConfig::default()
            },
        },
    }
}

fn policies() -> &'static [PolicyConfig] {
    static P: OnceLock<Vec<PolicyConfig>> = OnceLock::new();
    P.get_or_init(|| {
        vec![
            smart_policy("ehr", "/fhir/r4", false),
            smart_policy("narrow", "/narrow", true),
        ]
    })
}

/// The verified identity behind each test token (verification itself is tested below).
fn token_identity(token: &str) -> Option<TokenIdentity> {
    let (scope, patient) = match token {
        "tok-patient" => ("launch/patient patient/*.rs", Some("123")),
        "tok-obs" => ("patient/Observation.rs patient/Patient.r", Some("123")),
        "tok-writer" => ("patient/*.cruds", Some("123")),
        "tok-granular" => (
            "patient/Observation.rs?category=laboratory patient/Patient.r",
            Some("123"),
        ),
        "tok-user" => ("user/*.cruds", None),
        "tok-system" => ("system/Observation.rs", None),
        _ => return None,
    };
    Some(TokenIdentity {
        client_id: None,
        provider: "idp".into(),
        subject: token.into(),
        scopes: smart::parse_scopes(scope.split(' ')),
        scope_text: scope.into(),
        patient: patient.map(str::to_string),
        fhir_user: None,
    })
}

fn basic_ok(c: &BasicCredential) -> bool {
    matches!(
        (c.user.as_str(), c.password.as_str()),
        ("alice", "alice-pw") | ("bob", "bob-pw")
    )
}

/// What a compartment lookup answers: ids name their patient, "gone" is not stored.
fn stored(key: &smart::LookupKey) -> Stored {
    let (t, id) = (key.resource_type.as_str(), key.id.as_str());
    let owned_by = |patient: &str| {
        let mut r = serde_json::json!({"resourceType": t, "id": id,
            "subject": {"reference": format!("Patient/{patient}")}});
        if let Some(v) = &key.version {
            r["meta"] = serde_json::json!({"versionId": v});
        }
        Stored::Found(Arc::new(r))
    };
    match (t, id) {
        (_, "gone") => Stored::NotFound,
        ("Patient", id) => Stored::Found(Arc::new(
            serde_json::json!({"resourceType": "Patient", "id": id}),
        )),
        (_, "123") | (_, "o-123") => owned_by("123"),
        (_, "456") | (_, "o-456") => owned_by("456"),
        _ => Stored::Found(Arc::new(serde_json::json!({"resourceType": t, "id": id}))),
    }
}

/// The parts of an answer that matter to whoever is behind Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Summary {
    Allow {
        interaction: Option<String>,
        subject: Option<String>,
        patient: Option<String>,
        set_query: Vec<(String, String)>,
        remove_query: Vec<String>,
        strict: bool,
    },
    Deny(u16),
}

fn summarise(d: Decision) -> Summary {
    match d {
        Decision::Allow(a) => Summary::Allow {
            interaction: a.interaction,
            subject: a.subject,
            patient: a.patient,
            set_query: a.set_query,
            remove_query: a.remove_query,
            strict: a.strict_search,
        },
        Decision::Deny(d) => Summary::Deny(d.status),
        Decision::Respond(r) => panic!("no policy here answers itself: {r:?}"),
    }
}

fn decide(req: &Request<'_>) -> Summary {
    let policies = policies();
    let pending = match policy::prepare(policies, req) {
        Ok(p) => p,
        Err(d) => return summarise(d),
    };
    let p = &policies[pending.policy_index];
    let mut id = Identity::default();
    if let Some(c) = &pending.basic {
        if !basic_ok(c) {
            return Summary::Deny(401);
        }
        id.basic_user = Some(c.user.clone());
    }
    if let Some(b) = &pending.bearer {
        match token_identity(&b.token) {
            Some(t) => id.token = Some(Arc::new(t)),
            None => return Summary::Deny(401),
        }
    }
    let mut lookups = smart::Lookups::new();
    for _ in 0..2 {
        match policy::authorize(p, &pending, &id, Some(&lookups)) {
            Step::Done(d) => return summarise(d),
            Step::Lookup(wanted) => {
                for key in wanted {
                    let s = stored(&key);
                    lookups.insert(key, s);
                }
            }
        }
    }
    Summary::Deny(503)
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    path: String,
    query: Option<String>,
    authorization: Option<String>,
    body: Option<(String, String)>,
}

impl Req {
    fn full_path(&self, path: &str, query: Option<&str>) -> String {
        match query {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        }
    }

    fn decide_with(&self, path: &str, query: Option<&str>) -> Summary {
        let full = self.full_path(path, query);
        decide(&Request {
            method: self.method,
            host: "ehr.example",
            path: &full,
            authorization: self.authorization.as_deref(),
            if_none_exist: None,
            headers: &[],
            body: self.body.as_ref().map(|(ct, b)| Body {
                bytes: b.as_bytes(),
                content_type: Some(ct.as_str()),
            }),
            policy_ref: None,
        })
    }

    fn decide(&self) -> Summary {
        self.decide_with(&self.path, self.query.as_deref())
    }
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "Patient", "Observation", "Encounter", "Condition", "Practitioner", "Group",
            "Medication", "AuditEvent",
        ]).prop_map(String::from),
        4 => prop::sample::select(vec![
            "123", "456", "o-123", "o-456", "gone", "a.b", "x", "_history", "_search", "*",
            "$everything", "$export", "$validate", "$meta-add", "$process-message", "metadata",
            "1", ".well-known", "smart-configuration",
        ]).prop_map(String::from),
        1 => "[A-Za-z0-9._~-]{1,6}",
    ]
}

fn param() -> impl Strategy<Value = (String, String)> {
    let key = prop::sample::select(vec![
        "patient",
        "subject",
        "subject:Patient",
        "_id",
        "code",
        "category",
        "_include",
        "_revinclude",
        "_type",
        "_count",
        "_has:Observation:patient:code",
        "identifier",
        "patient.identifier",
        "_elements",
        "performer",
        "_format",
        "access_token",
    ]);
    let value = prop::sample::select(vec![
        "123",
        "456",
        "Patient/123",
        "Patient/456",
        "123,456",
        "laboratory",
        "vital-signs",
        "Observation:patient",
        "Observation:subject",
        "*",
        "Patient",
        "Observation",
        "x",
        "tok-patient",
        "tok-user",
        "tok-obs",
        "",
    ]);
    (key, value).prop_map(|(k, v)| (k.to_string(), v.to_string()))
}

fn request() -> impl Strategy<Value = Req> {
    let method = prop::sample::select(vec![
        "GET", "GET", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE",
    ]);
    let base = prop::sample::select(vec!["/fhir/r4", "/fhir/r4", "/narrow", "/other"]);
    let path = (
        base,
        proptest::collection::vec(segment(), 0..5),
        any::<bool>(),
    )
        .prop_map(|(b, segs, slash)| {
            let mut p = format!("{b}/{}", segs.join("/"));
            if segs.is_empty() && !slash {
                p.pop();
            }
            p
        });
    let query = proptest::option::weighted(
        0.6,
        proptest::collection::vec(param(), 1..4).prop_map(|ps| {
            ps.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&")
        }),
    );
    let auth = prop::sample::select(vec![
        None,
        Some(common::basic("alice", "alice-pw")),
        Some(common::basic("bob", "bob-pw")),
        Some(common::basic("alice", "nope")),
        Some("Bearer tok-patient".to_string()),
        Some("Bearer tok-obs".to_string()),
        Some("Bearer tok-writer".to_string()),
        Some("Bearer tok-granular".to_string()),
        Some("Bearer tok-user".to_string()),
        Some("Bearer tok-system".to_string()),
        Some("Bearer forged".to_string()),
    ]);
    let body = prop::sample::select(vec![
        None,
        Some((
            "application/fhir+json",
            r#"{"resourceType":"Observation","subject":{"reference":"Patient/123"}}"#,
        )),
        Some((
            "application/fhir+json",
            r#"{"resourceType":"Observation","subject":{"reference":"Patient/456"}}"#,
        )),
        Some(("application/x-www-form-urlencoded", "patient=123&code=x")),
        Some(("application/x-www-form-urlencoded", "subject=Patient/456")),
        Some((
            "application/fhir+json",
            r#"{"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Observation?patient=123"}},{"request":{"method":"GET","url":"Patient/456"}}]}"#,
        )),
        Some((
            "application/fhir+json",
            r#"{"resourceType":"Parameters","parameter":[{"name":"patient","valueString":"456"}]}"#,
        )),
    ]);
    (method, path, query, auth, body).prop_map(|(method, path, query, authorization, body)| Req {
        method,
        path,
        query,
        authorization,
        body: body.map(|(c, b)| (c.to_string(), b.to_string())),
    })
}

/// An allow after re-encoding must be exactly the allow the original got.
fn same_or_refused(original: &Summary, variant: &Summary) -> bool {
    matches!(variant, Summary::Deny(_)) || variant == original
}

proptest! {
    /// Re-encoding one unreserved character anywhere in the path or query never allows what
    /// the original request was refused, nor allows something else than it allowed.
    #[test]
    fn a_reencoded_request_is_refused_or_decided_the_same(
        req in request(), at in any::<Index>(), lower in any::<bool>(), in_query in any::<bool>()
    ) {
        let original = req.decide();
        let (path, query) = (req.path.clone(), req.query.clone());
        let (path_v, query_v) = match (&query, in_query) {
            (Some(q), true) => {
                let pos = unreserved_positions(q);
                if pos.is_empty() {
                    return Ok(());
                }
                (path, Some(reencode_at(q, pos[at.index(pos.len())], lower)))
            }
            _ => {
                let pos = unreserved_positions(&path);
                if pos.is_empty() {
                    return Ok(());
                }
                (reencode_at(&path, pos[at.index(pos.len())], lower), query)
            }
        };
        let variant = req.decide_with(&path_v, query_v.as_deref());
        prop_assert!(
            same_or_refused(&original, &variant),
            "{} {:?} -> {:?}\nre-encoded {:?} {:?} -> {:?}",
            req.method, req.full_path(&req.path, req.query.as_deref()), original,
            path_v, query_v, variant
        );
    }

    /// A path and its canonical spelling (normalised, then encoded) are decided alike.
    #[test]
    fn a_request_and_its_normalised_path_are_decided_alike(req in request()) {
        if let Ok(segs) = fhir::normalize_path(&req.path) {
            let canonical = format!(
                "/{}",
                segs.iter().map(|s| encode_segment(s)).collect::<Vec<_>>().join("/")
            );
            let a = req.decide();
            let b = req.decide_with(&canonical, req.query.as_deref());
            prop_assert_eq!(a, b, "{} vs {}", req.path, canonical);
        }
    }

    /// Junk in any header or the path never panics the decision core.
    #[test]
    fn arbitrary_requests_never_panic(
        method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "get", ""]),
        path in tricky_text(20),
        auth in proptest::option::of(prop_oneof![
            tricky_text(10),
            tricky_text(10).prop_map(|t| format!("Bearer {t}")),
            any::<Vec<u8>>().prop_map(|b| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(b))),
            "[A-Za-z0-9+/=]{0,12}".prop_map(|b| format!("basic {b}")),
        ]),
        body in proptest::option::of(any::<Vec<u8>>()),
        ct in proptest::option::of(prop::sample::select(vec!["application/fhir+json", "application/x-www-form-urlencoded", "text/plain", ""])),
    ) {
        let path = format!("/fhir/r4/{path}");
        let _ = decide(&Request {
            method,
            host: "h",
            path: &path,
            authorization: auth.as_deref(),
            if_none_exist: None,
            headers: &[],
            body: body.as_ref().map(|b| Body { bytes: b, content_type: ct }),
            policy_ref: None,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Bundle and Parameters bodies
// ---------------------------------------------------------------------------------------------

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "[ -~]{0,12}".prop_map(serde_json::Value::String),
        prop::sample::select(vec![
            "Bundle",
            "batch",
            "transaction",
            "GET",
            "POST",
            "PUT",
            "DELETE",
            "PATCH",
            "Patient/123",
            "Observation?patient=456",
            "Patient/123/_history/1",
            "",
            "/Patient",
            "http://x/Patient/1",
            "Observation",
            "Parameters",
            "$everything",
        ])
        .prop_map(|s| serde_json::Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                prop::sample::select(vec![
                    "resourceType",
                    "type",
                    "entry",
                    "request",
                    "method",
                    "url",
                    "resource",
                    "ifNoneExist",
                    "subject",
                    "reference",
                    "parameter",
                    "name",
                    "valueString",
                    "id",
                    "x",
                ])
                .prop_map(String::from),
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn entry() -> impl Strategy<Value = serde_json::Value> {
    let method = prop::sample::select(vec![
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "get", "TRACE",
    ]);
    let url = prop_oneof![
        (
            proptest::collection::vec(segment(), 0..4),
            proptest::option::of(param())
        )
            .prop_map(|(s, q)| {
                let mut u = s.join("/");
                if let Some((k, v)) = q {
                    u.push_str(&format!("?{k}={v}"));
                }
                u
            }),
        tricky_text(8),
    ];
    (method, url, proptest::option::of(json_value())).prop_map(|(m, u, r)| {
        let mut e = serde_json::json!({"request": {"method": m, "url": u}});
        if let Some(r) = r {
            e["resource"] = r;
        }
        e
    })
}

proptest! {
    /// A batch or transaction is classified entry by entry: it writes exactly when an entry
    /// writes, each entry is classified as the same request sent alone, and nothing about a
    /// malformed entry is guessed.
    #[test]
    fn bundles_are_classified_entry_by_entry(
        kind in prop::sample::select(vec!["batch", "transaction", "collection"]),
        entries in proptest::collection::vec(entry(), 0..6)
    ) {
        let doc = serde_json::json!({"resourceType": "Bundle", "type": kind, "entry": entries}).to_string();
        let r = fhir::classify(HttpRequest {
            method: "POST",
            segments: &[],
            query: None,
            body: Some(Body { bytes: doc.as_bytes(), content_type: Some("application/fhir+json") }),
            if_none_exist: None,
        });
        if let Ok(b) = r {
            prop_assert!(kind != "collection");
            prop_assert_eq!(b.entries.len(), entries.len());
            prop_assert_eq!(b.writes, b.entries.iter().any(|e| e.writes));
            for (e, c) in entries.iter().zip(&b.entries) {
                let method = e["request"]["method"].as_str().unwrap();
                let url = e["request"]["url"].as_str().unwrap();
                let (path, query) = fhir::split_path(url);
                let segs = fhir::normalize_path(&format!("/{path}")).unwrap();
                prop_assert!(!segs.is_empty(), "a nested bundle was accepted");
                let resource = e.get("resource").map(|r| r.to_string());
                let alone = fhir::classify(HttpRequest {
                    method,
                    segments: &segs,
                    query,
                    body: resource.as_ref().map(|r| Body { bytes: r.as_bytes(), content_type: Some("application/fhir+json") }),
                    if_none_exist: None,
                }).unwrap();
                prop_assert_eq!(&alone, c);
            }
        }
    }

    /// Arbitrary JSON (and non-JSON) bodies on every kind of endpoint: no panic, and a body
    /// that is not a batch or transaction Bundle is never classified as one.
    #[test]
    fn arbitrary_bodies_never_panic(
        segs in proptest::collection::vec(segment(), 0..3),
        method in prop::sample::select(vec!["POST", "PUT", "PATCH"]),
        body in prop_oneof![json_value().prop_map(|v| v.to_string().into_bytes()), any::<Vec<u8>>()],
    ) {
        let r = fhir::classify(HttpRequest {
            method,
            segments: &segs,
            query: None,
            body: Some(Body { bytes: &body, content_type: Some("application/fhir+json") }),
            if_none_exist: None,
        });
        if let Ok(c) = r
            && matches!(c.interaction, fhir::Interaction::Batch | fhir::Interaction::Transaction)
        {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            prop_assert_eq!(v["resourceType"].as_str(), Some("Bundle"));
        }
    }

    /// What a Parameters body says never makes an operation count as writing less than the
    /// same operation with an empty Parameters body; a body fhirguard cannot read is refused.
    #[test]
    fn operations_with_parameters_bodies(
        op in prop::sample::select(vec!["$everything", "$export", "$validate", "$meta-add", "$process-message", "$x"]),
        level in 0usize..3,
        params in json_value(),
    ) {
        let segs: Vec<String> = match level {
            0 => vec![op.to_string()],
            1 => vec!["Patient".into(), op.to_string()],
            _ => vec!["Patient".into(), "123".into(), op.to_string()],
        };
        let classify = |body: &str| fhir::classify(HttpRequest {
            method: "POST",
            segments: &segs,
            query: None,
            body: Some(Body { bytes: body.as_bytes(), content_type: Some("application/fhir+json") }),
            if_none_exist: None,
        });
        let empty = classify(r#"{"resourceType":"Parameters"}"#);
        let body = serde_json::json!({"resourceType": "Parameters", "parameter": params}).to_string();
        if let (Ok(c), Ok(e)) = (classify(&body), empty) {
            prop_assert!(c.writes || !e.writes, "{} at level {}: the body made it read-only", op, level);
        }
    }
}

/// Nesting far beyond what FHIR uses is refused without exhausting the stack, and large
/// bodies take time in proportion to their size (the bound is generous: a pathological
/// parser would take minutes, not seconds).
#[test]
fn deep_and_large_bodies_are_bounded() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let nested_bundle = {
        let mut v = serde_json::json!({"resourceType": "Patient"});
        for _ in 0..100 {
            v = serde_json::json!({"resourceType": "Bundle", "type": "batch",
                "entry": [{"request": {"method": "POST", "url": "Patient"}, "resource": v}]});
        }
        v.to_string()
    };
    let wide = serde_json::json!({"resourceType": "Bundle", "type": "transaction",
        "entry": (0..5000).map(|i| serde_json::json!({"request": {"method": "GET", "url": format!("Observation/{i}")}})).collect::<Vec<_>>()})
        .to_string();
    for body in [deep.as_str(), nested_bundle.as_str(), wide.as_str()] {
        let started = Instant::now();
        let _ = fhir::classify(HttpRequest {
            method: "POST",
            segments: &[],
            query: None,
            body: Some(Body {
                bytes: body.as_bytes(),
                content_type: Some("application/fhir+json"),
            }),
            if_none_exist: None,
        });
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    let long_path = format!("/{}", vec!["a"; 100_000].join("/"));
    assert!(fhir::normalize_path(&long_path).is_ok());
    // More parameters than any server keeps are refused, not parsed.
    let long_query = vec!["a=b"; 100_000].join("&");
    let started = Instant::now();
    assert!(fhir::parse_query(&long_query).is_err());
    assert!(started.elapsed() < Duration::from_secs(10));
}

// ---------------------------------------------------------------------------------------------
// SMART scopes
// ---------------------------------------------------------------------------------------------

fn scope_parts() -> impl Strategy<Value = (String, String, String, Option<String>)> {
    let context = prop::sample::select(vec!["patient", "user", "system"]);
    let rt = prop_oneof![
        Just("*".to_string()),
        prop::sample::select(vec![
            "Patient",
            "Observation",
            "Encounter",
            "MedicationRequest"
        ])
        .prop_map(String::from),
        "[A-Z][a-zA-Z]{0,10}",
    ];
    let perms = prop_oneof![
        prop::sample::select(vec!["read", "write", "*"]).prop_map(String::from),
        (1u8..32).prop_map(|bits| {
            "cruds"
                .chars()
                .enumerate()
                .filter(|(i, _)| bits & (1 << i) != 0)
                .map(|(_, c)| c)
                .collect()
        }),
    ];
    let query = proptest::option::of("[a-z]{1,8}=[a-z0-9|]{1,12}");
    (context, rt, perms, query).prop_map(|(c, r, p, q)| (c.to_string(), r, p, q))
}

fn render(s: &smart::Scope) -> String {
    format!(
        "{}/{}.{}{}",
        s.context.as_str(),
        s.resource_type.as_deref().unwrap_or("*"),
        s.perms.letters(),
        s.query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default()
    )
}

proptest! {
    /// Every scope the grammar allows parses to what it says.
    #[test]
    fn grammatical_scopes_parse_to_what_they_say((c, rt, perms, q) in scope_parts()) {
        let token = format!("{c}/{rt}.{perms}{}", q.as_deref().map(|q| format!("?{q}")).unwrap_or_default());
        let parsed = smart::parse_scope(&token);
        if rt == "*" && (perms == "cruds" || perms == "*") && q.is_some() {
            // A filter on everything is refused rather than guessed at.
            prop_assert!(parsed.is_none(), "{}", token);
            return Ok(());
        }
        let s = parsed.unwrap();
        prop_assert_eq!(s.context.as_str(), c.as_str());
        prop_assert_eq!(s.resource_type.as_deref().unwrap_or("*"), rt.as_str());
        prop_assert_eq!(&s.query, &q);
        let letters = match perms.as_str() {
            "read" => "rs".to_string(),
            "write" => "cud".to_string(),
            "*" => "cruds".to_string(),
            other => other.to_string(),
        };
        prop_assert_eq!(s.perms.letters(), letters);
    }

    /// Whatever parses has one canonical spelling, which parses to the same scope.
    #[test]
    fn parsed_scopes_have_a_canonical_form(token in prop_oneof![tricky_text(8), "(patient|user|system|x)/[A-Za-z*]{0,6}\\.[a-z*]{0,6}(\\?[a-z=]{0,4})?"]) {
        if let Some(s) = smart::parse_scope(&token) {
            prop_assert_eq!(smart::parse_scope(&render(&s)), Some(s), "{}", token);
        }
    }

    /// A malformed token grants nothing: adding it to a token's scopes changes no grant.
    #[test]
    fn junk_scopes_grant_nothing(
        valid in proptest::collection::vec(scope_parts(), 0..4),
        junk in tricky_text(6),
    ) {
        prop_assume!(smart::parse_scope(&junk).is_none());
        let tokens: Vec<String> = valid
            .iter()
            .map(|(c, r, p, q)| format!("{c}/{r}.{p}{}", q.as_deref().map(|q| format!("?{q}")).unwrap_or_default()))
            .collect();
        let without = smart::parse_scopes(tokens.iter().map(String::as_str));
        let with = smart::parse_scopes(tokens.iter().map(String::as_str).chain([junk.as_str()]));
        prop_assert_eq!(without.scopes, with.scopes);
    }

    /// More scopes never refuse what fewer scopes allowed.
    #[test]
    fn grants_are_monotonic_in_scopes(
        req in request(),
        extra in scope_parts(),
    ) {
        let Ok(pending) = policy::prepare(&policies()[..1], &Request {
            method: req.method,
            host: "h",
            path: &req.full_path(&req.path, req.query.as_deref()),
            authorization: Some("Bearer tok-obs"),
            if_none_exist: None,
            headers: &[],
            body: req.body.as_ref().map(|(ct, b)| Body { bytes: b.as_bytes(), content_type: Some(ct.as_str()) }),
            policy_ref: None,
        }) else { return Ok(()) };
        let base = token_identity("tok-obs").unwrap();
        let (c, r, p, q) = extra;
        let extra_token = format!("{c}/{r}.{p}{}", q.as_deref().map(|q| format!("?{q}")).unwrap_or_default());
        let mut more = base.clone();
        more.scope_text = format!("{} {extra_token}", base.scope_text);
        more.scopes = smart::parse_scopes(more.scope_text.split(' '));
        let run = |t: TokenIdentity| {
            let id = Identity { basic_user: None, token: Some(Arc::new(t)) };
            let mut lookups = smart::Lookups::new();
            for _ in 0..2 {
                match policy::authorize(&policies()[0], &pending, &id, Some(&lookups)) {
                    Step::Done(d) => return d.is_allow(),
                    Step::Lookup(w) => {
                        for key in w {
                            let s = stored(&key);
                            lookups.insert(key, s);
                        }
                    }
                }
            }
            false
        };
        if run(base) {
            prop_assert!(run(more), "adding {} refused {} {:?} {:?}", extra_token, req.method, req.path, req.query);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// htpasswd
// ---------------------------------------------------------------------------------------------

fn crypt64(n: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop::sample::select(
            "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                .chars()
                .collect::<Vec<_>>(),
        ),
        n,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn valid_hash() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            prop::sample::select(vec!["2a", "2b", "2y"]),
            4u32..=31,
            crypt64(53)
        )
            .prop_map(|(v, c, d)| format!("${v}${c:02}${d}")),
        (
            proptest::option::of(1000u32..999_999),
            crypt64(8),
            crypt64(86)
        )
            .prop_map(|(r, s, d)| {
                match r {
                    Some(r) => format!("$6$rounds={r}${s}${d}"),
                    None => format!("$6${s}${d}"),
                }
            }),
        ("[A-Za-z0-9+/]{16,22}", "[A-Za-z0-9+/]{22,43}")
            .prop_map(|(s, d)| format!("$argon2id$v=19$m=19456,t=2,p=1${s}${d}")),
    ]
}

proptest! {
    #[test]
    fn arbitrary_htpasswd_never_panics(text in tricky_text(40)) {
        let _ = htpasswd::parse(&text);
    }

    /// Well-formed files parse to their users, each once.
    #[test]
    fn valid_files_parse_to_their_users(
        users in proptest::collection::btree_map("[a-z][a-z0-9._@-]{0,12}", valid_hash(), 1..6),
        comments in any::<bool>(),
    ) {
        let mut text = String::new();
        for (u, h) in &users {
            if comments {
                text.push_str("# a comment\n\n");
            }
            text.push_str(&format!("{u}:{h}\n"));
        }
        let entries = htpasswd::parse(&text).unwrap();
        let got: BTreeMap<String, String> = entries.into_iter().map(|e| (e.user, e.hash)).collect();
        prop_assert_eq!(got, users);
    }

    /// Refusals name the line and the user but never repeat the hash: they end up in status
    /// conditions and Events that more people can read than the Secret.
    #[test]
    fn refusals_never_contain_the_hash(
        user in "[a-z]{1,8}",
        hash in "[$A-Z0-9./{}+=]{8,70}",
        crlf in any::<bool>(),
    ) {
        let line = format!("{user}:{hash}{}", if crlf { "\r" } else { "" });
        if let Err(errors) = htpasswd::parse(&format!("{line}\n")) {
            for e in errors {
                prop_assert!(!e.to_string().contains(&hash), "{}", e);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prefer merging
// ---------------------------------------------------------------------------------------------

fn preference() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "handling=lenient",
            "handling=strict",
            " Handling = lenient ",
            "HANDLING=lenient",
            "handling",
            "handling;x=1",
            "return=minimal",
            "return=representation",
            "respond-async",
            "handlingx=1",
            "wait=10",
            "",
        ])
        .prop_map(String::from),
        "[a-zA-Z =;\"-]{0,12}",
    ]
}

fn is_handling(piece: &str) -> bool {
    piece
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"')
        .eq_ignore_ascii_case("handling")
}

/// Every piece of a Prefer value: preferences split at `,`, their parameters at `;`.
fn pieces(prefer: &str) -> Vec<String> {
    prefer
        .split([',', ';'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

proptest! {
    /// The merged header asks for strict handling exactly once (no `handling` survives as a
    /// preference or a parameter), keeps every other preference whose own name is not
    /// `handling`, and merging again changes nothing.
    #[test]
    fn prefer_merging_forces_strict_handling_once(prefs in proptest::collection::vec(preference(), 0..5)) {
        let given = prefs.join(",");
        let merged = answer::strict_prefer(Some(&given));
        let handling: Vec<String> = pieces(&merged).into_iter().filter(|p| is_handling(p)).collect();
        prop_assert_eq!(handling, vec!["handling=strict".to_string()], "{:?} -> {:?}", given, merged);
        let kept = pieces(&merged);
        for preference in given.split(',') {
            let ps: Vec<&str> = preference.split(';').map(str::trim).collect();
            if ps.first().is_some_and(|p| is_handling(p)) {
                continue;
            }
            for p in ps.iter().filter(|p| !p.is_empty() && !is_handling(p)) {
                prop_assert!(kept.iter().any(|k| k == p), "{:?} lost {:?}: {:?}", given, p, merged);
            }
        }
        prop_assert_eq!(answer::strict_prefer(Some(&merged)), merged);
    }
}

// ---------------------------------------------------------------------------------------------
// JWT header and payload handling
// ---------------------------------------------------------------------------------------------

struct Jwt {
    key: common::SigningKey,
    verifier: TokenVerifier,
}

fn jwt() -> &'static Jwt {
    static J: OnceLock<Jwt> = OnceLock::new();
    J.get_or_init(|| {
        common::init();
        let key = common::SigningKey::new("k1");
        let doc = common::jwks_doc(&[&key]);
        // CPU-only verification: the key set is parsed here, no fetcher and no runtime.
        let keys = Arc::new(KeySlot::new(Some(parse_jwks(doc.as_bytes()).unwrap())));
        let jwks = JwksConfig {
            uri: None,
            refresh_interval_seconds: 600,
            tls: TlsConfig::default(),
            document: Some(doc),
        };
        let provider = ProviderConfig {
            name: "idp".into(),
            issuer: common::ISSUER.into(),
            audiences: vec![common::AUDIENCE.into()],
            algorithms: vec![Algorithm::ES256, Algorithm::RS256],
            clock_skew_seconds: 5,
            jwks,
            claims: ClaimNames::default(),
        };
        // No cache: every case is verified from scratch.
        let verifier = TokenVerifier::new(
            vec![Provider::new(provider, keys)],
            Arc::new(ByteCache::new(0)),
        );
        Jwt { key, verifier }
    })
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

/// Signs an arbitrary header and payload (as JSON text) with the test key.
fn sign_raw(key: &common::SigningKey, header: &str, payload: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
    let enc = jsonwebtoken::EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap();
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), &enc, jsonwebtoken::Algorithm::ES256).unwrap();
    format!("{input}.{sig}")
}

fn verify(token: &str) -> Result<TokenIdentity, TokenError> {
    // `after_refetch`: the set in the slot is all there is, so an unknown key id is final.
    match jwt().verifier.verify(token, true)? {
        Attempt::Verified(id) => Ok((*id).clone()),
        Attempt::NeedKeys { .. } => panic!("the key slot is filled"),
    }
}

fn claim_value(good: serde_json::Value) -> impl Strategy<Value = Option<serde_json::Value>> {
    prop_oneof![
        3 => Just(Some(good)),
        1 => Just(None),
        1 => json_value().prop_map(Some),
    ]
}

fn claims() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
    let now = common::now();
    (
        claim_value(serde_json::json!(common::ISSUER)),
        claim_value(serde_json::json!([common::AUDIENCE, "other"])),
        claim_value(serde_json::json!("someone")),
        claim_value(serde_json::json!(now + 600)),
        claim_value(serde_json::json!(now - 10)),
        claim_value(serde_json::json!("patient/*.rs launch/patient")),
        claim_value(serde_json::json!("Patient/123")),
        claim_value(serde_json::json!(["patient/Observation.r", "openid"])),
    )
        .prop_map(|(iss, aud, sub, exp, nbf, scope, patient, scp)| {
            let mut m = serde_json::Map::new();
            for (k, v) in [
                ("iss", iss),
                ("aud", aud),
                ("sub", sub),
                ("exp", exp),
                ("nbf", nbf),
                ("scope", scope),
                ("patient", patient),
                ("scp", scp),
            ] {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            }
            m
        })
}

proptest! {
    /// Arbitrary strings are refused, never verified, never a panic.
    #[test]
    fn arbitrary_tokens_are_refused(token in prop_oneof![
        tricky_text(20),
        (tricky_text(6), tricky_text(6), tricky_text(6)).prop_map(|(a, b, c)| format!("{a}.{b}.{c}")),
        (json_value(), json_value(), any::<Vec<u8>>()).prop_map(|(h, p, s)| format!("{}.{}.{}", b64(h.to_string().as_bytes()), b64(p.to_string().as_bytes()), b64(&s))),
    ]) {
        prop_assert!(verify(&token).is_err());
    }

    /// Correctly signed tokens with arbitrary headers: any header that names its own key
    /// (jku, x5u, jwk, x5c) or critical extensions is refused; an algorithm outside the
    /// allow-list never verifies.
    #[test]
    fn token_headers_cannot_choose_their_own_trust(
        alg in prop::sample::select(vec!["ES256", "RS256", "HS256", "none", "ES384", "EdDSA", "es256", ""]),
        kid in proptest::option::of(prop::sample::select(vec!["k1", "k2", "", "../k1"])),
        extra in proptest::collection::btree_map(
            prop::sample::select(vec!["jku", "x5u", "jwk", "x5c", "crit", "typ", "cty", "b64", "zip"]).prop_map(String::from),
            json_value(),
            0..3,
        ),
    ) {
        let mut header = serde_json::Map::new();
        header.insert("alg".into(), alg.into());
        if let Some(k) = kid {
            header.insert("kid".into(), k.into());
        }
        for (k, v) in &extra {
            header.insert(k.clone(), v.clone());
        }
        let payload = serde_json::json!({"iss": common::ISSUER, "aud": common::AUDIENCE, "sub": "s",
            "exp": common::now() + 600, "scope": "user/*.rs"});
        let token = sign_raw(&jwt().key, &serde_json::Value::Object(header).to_string(), &payload.to_string());
        let r = verify(&token);
        if ["jku", "x5u", "jwk", "x5c", "crit"].iter().any(|m| extra.contains_key(*m)) {
            prop_assert!(matches!(r, Err(TokenError::ForbiddenHeader(_)) | Err(TokenError::Malformed)), "{:?}", r.map(|i| i.subject));
        }
        if alg != "ES256" {
            prop_assert!(r.is_err());
        }
    }

    /// Correctly signed tokens with arbitrary claim values: accepted only when every claim
    /// fhirguard relies on is present, well-typed and valid, and then the identity is exactly
    /// what the claims say.
    #[test]
    fn signed_claims_are_accepted_only_when_valid(claims in claims()) {
        let token = sign_raw(&jwt().key, r#"{"alg":"ES256","kid":"k1"}"#, &serde_json::Value::Object(claims.clone()).to_string());
        if let Ok(id) = verify(&token) {
            let now = common::now();
            prop_assert_eq!(claims.get("iss").and_then(|v| v.as_str()), Some(common::ISSUER));
            let aud_ok = match claims.get("aud") {
                Some(serde_json::Value::String(a)) => a == common::AUDIENCE,
                Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(common::AUDIENCE)),
                _ => false,
            };
            prop_assert!(aud_ok, "{:?}", claims.get("aud"));
            let exp = claims.get("exp").and_then(|v| v.as_f64()).unwrap();
            prop_assert!(exp + 5.0 >= now as f64);
            if let Some(nbf) = claims.get("nbf") {
                prop_assert!(nbf.as_f64().unwrap() <= now as f64 + 5.0);
            }
            prop_assert_eq!(Some(id.subject.as_str()), claims.get("sub").and_then(|v| v.as_str()));
            match claims.get("patient") {
                None | Some(serde_json::Value::Null) => prop_assert_eq!(id.patient, None),
                Some(v) => {
                    let p = v.as_str().and_then(smart::context_patient_id);
                    prop_assert_eq!(id.patient.as_deref(), p);
                    prop_assert!(p.is_some());
                }
            }
            let scope_tokens: Vec<String> = match claims.get("scope").or_else(|| claims.get("scp")) {
                None => vec![],
                Some(serde_json::Value::String(s)) => s.split(' ').filter(|t| !t.is_empty()).map(String::from).collect(),
                Some(serde_json::Value::Array(a)) => a.iter().map(|x| x.as_str().unwrap().to_string()).collect(),
                Some(other) => { prop_assert!(false, "scope {other} accepted"); vec![] }
            };
            prop_assert_eq!(id.scopes, smart::parse_scopes(scope_tokens.iter().map(String::as_str)));
        }
    }

    /// Changing any one character of a valid token never yields a different verified token:
    /// either it is refused, or it decodes to exactly the same header, claims and signature
    /// (base64's unused trailing bits).
    #[test]
    fn a_mutated_token_never_verifies_as_something_else(at in any::<Index>(), c in prop::sample::select(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ".chars().collect::<Vec<_>>()
    )) {
        static TOKEN: OnceLock<String> = OnceLock::new();
        let token = TOKEN.get_or_init(|| jwt().key.sign(&common::claims("someone", "patient/*.rs")));
        let i = at.index(token.len());
        let mut mutated = token.clone();
        mutated.replace_range(i..i + 1, &c.to_string());
        prop_assume!(&mutated != token);
        if verify(&mutated).is_ok() {
            let parts = |t: &str| t.split('.').map(b64_decode).collect::<Vec<_>>();
            prop_assert_eq!(parts(&mutated), parts(token), "{} verified", mutated);
        }
    }
}
