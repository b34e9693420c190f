use super::*;

const BCRYPT: &str = "alice:$2y$05$3bPgAOMbkZ3UxBYuvB/T2.7xI0ag4VDj9gkOHkRyz0.p5Rz8Ru.Ia";

fn policy(name: &str) -> PolicyConfig {
    PolicyConfig {
        audit: None,
        smart_configuration: None,
        namespace: "clinical".into(),
        name: name.into(),
        hosts: vec!["ehr.example.org".into()],
        base_path: "/fhir/r4".into(),
        public_paths: default_public_paths(),
        unauthenticated_access: false,
        authentication: AuthenticationConfig {
            introspection: None,
            combine: Combine::AnyOf,
            basic: Some(BasicConfig {
                htpasswd: format!("{BCRYPT}\n"),
                access: vec![],
            }),
            jwt: None,
        },
        authorization: AuthorizationConfig::default(),
    }
}

fn provider() -> ProviderConfig {
    ProviderConfig {
        name: "idp".into(),
        issuer: "https://idp.example.org".into(),
        audiences: vec!["https://ehr.example.org/fhir/r4".into()],
        algorithms: vec![Algorithm::RS256],
        clock_skew_seconds: 60,
        jwks: JwksConfig {
            uri: Some("https://idp.example.org/jwks".into()),
            refresh_interval_seconds: 600,
            tls: TlsConfig::default(),
            document: None,
        },
        claims: ClaimNames::default(),
    }
}

fn with_policy(p: PolicyConfig) -> CompiledConfig {
    CompiledConfig {
        policies: vec![p],
        ..CompiledConfig::empty(1)
    }
}

fn fields(c: &CompiledConfig) -> Vec<String> {
    c.validate().into_iter().map(|p| p.field).collect()
}

#[test]
fn a_plain_policy_is_valid_and_round_trips() {
    let c = with_policy(policy("ehr"));
    assert_eq!(c.validate(), vec![]);
    let back = CompiledConfig::from_json(&c.to_json()).unwrap();
    assert_eq!(back, c);
}

#[test]
fn unknown_fields_and_versions_are_refused() {
    let err = CompiledConfig::from_json(r#"{"version":1,"generation":1,"extra":true}"#);
    assert!(err.is_err());
    let c = CompiledConfig::from_json(r#"{"version":2,"generation":1}"#).unwrap();
    assert_eq!(fields(&c), vec!["version"]);
}

#[test]
fn defaults_fill_in_what_the_operator_may_omit() {
    let c = CompiledConfig::from_json(
        r#"{"version":1,"generation":3,"policies":[{"namespace":"a","name":"b","basePath":"/fhir","unauthenticatedAccess":true}]}"#,
    )
    .unwrap();
    let p = &c.policies[0];
    assert_eq!(p.public_paths, default_public_paths());
    assert_eq!(p.authentication.combine, Combine::AnyOf);
    assert_eq!(p.authorization.smart.patient_search, PatientSearch::Reject);
    assert_eq!(c.validate(), vec![]);
}

#[test]
fn base_path_tricks_are_refused() {
    for bad in [
        "fhir",
        "/fhir/",
        "/fhir//r4",
        "/fhir/../r4",
        "/fhir/%2e",
        "/fhir?x",
    ] {
        let mut p = policy("ehr");
        p.base_path = bad.into();
        assert_eq!(fields(&with_policy(p)), vec!["basePath"], "{bad}");
    }
}

#[test]
fn two_policies_claiming_one_host_and_base_path_conflict() {
    let mut a = policy("a");
    a.hosts = vec!["EHR.example.org:443".into()];
    let b = policy("b");
    let c = CompiledConfig {
        policies: vec![a, b],
        ..CompiledConfig::empty(1)
    };
    let problems = c.validate();
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].object, "clinical/b");
    assert!(problems[0].message.contains("clinical/a"));
}

#[test]
fn missing_authentication_is_refused_unless_unauthenticated() {
    let mut p = policy("ehr");
    p.authentication.basic = None;
    assert_eq!(fields(&with_policy(p.clone())), vec!["authentication"]);
    p.unauthenticated_access = true;
    assert_eq!(fields(&with_policy(p)), Vec::<String>::new());
}

#[test]
fn all_of_needs_both_kinds() {
    let mut p = policy("ehr");
    p.authentication.combine = Combine::AllOf;
    assert_eq!(fields(&with_policy(p)), vec!["authentication.combine"]);
}

fn introspection() -> IntrospectionConfig {
    IntrospectionConfig {
        endpoint: "https://as.example.org/introspect".into(),
        client_id: "fhirguard".into(),
        client_secret: "s3cret".into(),
        client_auth_method: ClientAuthMethod::ClientSecretBasic,
        audiences: vec!["https://ehr.example.org/fhir/r4".into()],
        max_cache_seconds: default_max_cache_seconds(),
        introspect_jwts: false,
        clock_skew_seconds: 60,
        tls: TlsConfig::default(),
    }
}

#[test]
fn introspection_alone_authenticates_and_satisfies_all_of_with_basic() {
    let mut p = policy("ehr");
    p.authentication.introspection = Some(introspection());
    p.authentication.combine = Combine::AllOf;
    assert_eq!(fields(&with_policy(p.clone())), Vec::<String>::new());
    p.authentication.basic = None;
    p.authentication.combine = Combine::AnyOf;
    assert_eq!(fields(&with_policy(p)), Vec::<String>::new());
}

#[test]
fn introspection_rules_speak_the_format_s_own_field_names() {
    let mut p = policy("ehr");
    let mut i = introspection();
    i.endpoint = "http://as.example.org/introspect".into();
    i.client_id.clear();
    i.client_secret.clear();
    i.audiences = vec![String::new()];
    i.max_cache_seconds = 3601;
    i.clock_skew_seconds = 601;
    i.introspect_jwts = true;
    i.tls.mode = TlsMode::CustomBundle;
    p.authentication.introspection = Some(i);
    let problems = with_policy(p).validate();
    let got: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect();
    for want in [
        "authentication.introspection.endpoint: \"http://as.example.org/introspect\" must use https",
        "authentication.introspection.clientId: must not be empty",
        "authentication.introspection.clientSecret: the secret is empty",
        "authentication.introspection.audiences: must list at least one non-empty audience",
        "authentication.introspection.maxCacheSeconds: must be at most 1h",
        "authentication.introspection.clockSkewSeconds: must be at most 10m",
        "authentication.introspection.introspectJwts: only meaningful when jwt providers are configured",
        "authentication.introspection.tls.caFile: required when mode is CustomBundle",
    ] {
        assert!(
            got.iter().any(|g| g.starts_with(want)),
            "missing {want:?} in {got:#?}"
        );
    }
    assert_eq!(got.len(), 8, "{got:#?}");
}

#[test]
fn access_rules_must_name_known_users() {
    let mut p = policy("ehr");
    p.authentication.basic.as_mut().unwrap().access = vec![AccessRule {
        users: vec!["alcie".into()],
        permission: Permission::Read,
    }];
    let problems = with_policy(p).validate();
    assert_eq!(problems[0].field, "authentication.basic.access[0].users");
    assert!(problems[0].message.contains("alcie"));
}

#[test]
fn jwt_provider_rules() {
    let mut p = policy("ehr");
    let mut pr = provider();
    pr.audiences.clear();
    pr.jwks.uri = Some("http://idp.example.org/jwks".into());
    pr.jwks.tls.mode = TlsMode::CustomBundle;
    p.authentication.jwt = Some(JwtConfig {
        token_sources: vec![TokenSource::Header],
        require_subject_matches_basic_user: true,
        providers: vec![pr.clone(), pr],
    });
    let f = fields(&with_policy(p));
    for want in [
        "authentication.jwt.requireSubjectMatchesBasicUser",
        "authentication.jwt.providers[0].audiences",
        "authentication.jwt.providers[0].jwks.uri",
        "authentication.jwt.providers[0].jwks.tls.caFile",
        "authentication.jwt.providers[1].name",
        "authentication.jwt.providers[1].issuer",
    ] {
        assert!(f.contains(&want.to_string()), "missing {want} in {f:?}");
    }
}

#[test]
fn jwks_exactly_one_source_and_no_private_keys() {
    let mut p = policy("ehr");
    let mut pr = provider();
    pr.jwks.document = Some(r#"{"keys":[]}"#.into());
    p.authentication.jwt = Some(JwtConfig {
        token_sources: vec![TokenSource::Header],
        require_subject_matches_basic_user: false,
        providers: vec![pr.clone()],
    });
    assert_eq!(
        fields(&with_policy(p.clone())),
        vec!["authentication.jwt.providers[0].jwks"]
    );
    pr.jwks.uri = None;
    pr.jwks.document = Some(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into());
    p.authentication.jwt.as_mut().unwrap().providers = vec![pr];
    let problems = with_policy(p).validate();
    assert!(problems[0].message.contains("symmetric"), "{problems:?}");
}

#[test]
fn connections_are_checked() {
    let c = CompiledConfig {
        connections: vec![ConnectionConfig {
            namespace: "n".into(),
            name: "partner".into(),
            url: "ftp://x".into(),
            auth: ConnectionAuth {
                basic: Some(BasicCredentials {
                    username: "u".into(),
                    password: "p".into(),
                }),
                oauth: Some(OAuthConfig {
                    token_url: "https://t".into(),
                    client_id: "c".into(),
                    client_secret: "s".into(),
                    client_auth_method: ClientAuthMethod::ClientSecretBasic,
                    scopes: vec![],
                    audience: None,
                    extra_params: BTreeMap::new(),
                }),
            },
            tls: TlsConfig {
                mode: TlsMode::DefaultBundle,
                ca_file: Some("ca.pem".into()),
            },
        }],
        ..CompiledConfig::empty(1)
    };
    assert_eq!(fields(&c), vec!["auth", "tls.caFile", "url"]);
    let dbg = format!("{:?}", c.connections[0]);
    assert!(!dbg.contains("\"p\"") && !dbg.contains("\"s\""), "{dbg}");
}

#[test]
fn compartment_lookup_must_name_a_connection() {
    let mut p = policy("ehr");
    p.authorization.smart.compartment_lookup = Some(CompartmentLookup {
        connection: "clinical/missing".into(),
    });
    assert_eq!(
        fields(&with_policy(p)),
        vec!["authorization.smart.compartmentLookup.connection"]
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("60s"), Ok(60));
    assert_eq!(parse_duration("10m"), Ok(600));
    assert_eq!(parse_duration("1h30m"), Ok(5400));
    for bad in ["", "10", "m", "1d", "-1s", "1.5s"] {
        assert!(parse_duration(bad).is_err(), "{bad}");
    }
}

#[test]
fn hosts_normalise() {
    assert_eq!(normalize_host("EHR.Example.org:8443"), "ehr.example.org");
    assert_eq!(normalize_host("[::1]:80"), "[::1]");
    assert_eq!(normalize_host("ehr"), "ehr");
    assert_eq!(normalize_host("ehr.example.org."), "ehr.example.org");
    assert_eq!(normalize_host("EHR.example.org.:8443"), "ehr.example.org");
}

#[test]
fn problems_are_typed_by_object_index_and_field() {
    let mut p = policy("ehr");
    let mut pr = provider();
    pr.clock_skew_seconds = 601;
    pr.issuer = "https://other.example.org".into();
    pr.name = "other".into();
    p.authentication.jwt = Some(JwtConfig {
        token_sources: vec![TokenSource::Header],
        require_subject_matches_basic_user: false,
        providers: vec![provider(), pr],
    });
    let mut first = policy("first");
    first.base_path = "/first".into();
    let c = CompiledConfig {
        policies: vec![first, p],
        ..CompiledConfig::empty(1)
    };
    let problems = c.problems();
    assert_eq!(
        problems,
        vec![ConfigProblem {
            at: ConfigPath::Policy {
                index: 1,
                id: ObjectId {
                    namespace: "clinical".into(),
                    name: "ehr".into()
                },
                field: PolicyField::Provider(1, ProviderField::ClockSkew),
            },
            kind: ProblemKind::ClockSkewTooLarge,
        }]
    );
    assert_eq!(
        problems[0].to_string(),
        "clinical/ehr: authentication.jwt.providers[1].clockSkewSeconds: must be at most 10m"
    );
    assert_eq!(
        Problem::from(&problems[0]).to_string(),
        problems[0].to_string()
    );
}

#[test]
fn urls_with_credentials_are_refused_without_echoing_them() {
    let mut p = policy("ehr");
    let mut pr = provider();
    pr.jwks.uri = Some("http://user:hunter2@idp.example.org/jwks".into());
    p.authentication.jwt = Some(JwtConfig {
        token_sources: vec![TokenSource::Header],
        require_subject_matches_basic_user: false,
        providers: vec![pr],
    });
    let problems = with_policy(p).problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].kind, ProblemKind::Url(UrlProblem::Credentials));
    assert!(!problems[0].to_string().contains("hunter2"));
}

#[test]
fn audit_rules_speak_the_format_s_own_field_names() {
    let mut p = policy("ehr");
    p.audit = Some(AuditConfig {
        record: AuditRecord::All,
        stdout: true,
        file: Some("relative/audit.ndjson".into()),
        connection: Some("clinical/missing".into()),
        queue_size: 0,
        batch_size: MAX_AUDIT_BATCH + 1,
    });
    let mut got: Vec<String> = with_policy(p)
        .validate()
        .iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect();
    let mut want = [
        "audit: exactly one destination (stdout, file or a connection) must be set",
        "audit.file: \"relative/audit.ndjson\" must be an absolute path to a file",
        "audit.connection: connection \"clinical/missing\" does not exist",
        "audit.queueSize: must be between 1 and 1000000",
        "audit.batchSize: must be between 1 and 1000",
    ];
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn smart_configuration_rules_speak_the_format_s_own_field_names() {
    let mut p = policy("ehr");
    p.public_paths = vec!["/metadata".into()];
    p.smart_configuration = Some(SmartConfigurationConfig {
        openid_discovery: Some(OpenIdDiscovery {
            refresh_interval_seconds: 5,
            tls: TlsConfig {
                mode: TlsMode::CustomBundle,
                ca_file: None,
            },
        }),
        authorization_endpoint: Some("http://as.example.org/authorize".into()),
        code_challenge_methods: vec!["S256".into(), "plain".into()],
        scopes: vec!["two words".into()],
        ..SmartConfigurationConfig::default()
    });
    let mut got: Vec<String> = with_policy(p)
        .validate()
        .iter()
        .map(|p| format!("{}: {}", p.field, p.message))
        .collect();
    let mut want = [
        "smartConfiguration: a SMART discovery document needs a bearer-token check (jwt or introspection): without bearer tokens no SMART app could use it",
        "smartConfiguration: /.well-known/smart-configuration must stay in publicPaths: apps fetch it without credentials",
        "smartConfiguration.authorizationEndpoint: \"http://as.example.org/authorize\" must use https",
        "smartConfiguration.openidDiscovery: needs issuer: the document is fetched from [issuer]/.well-known/openid-configuration",
        "smartConfiguration.openidDiscovery.refreshIntervalSeconds: must be at least 10s",
        "smartConfiguration.openidDiscovery.tls.caFile: required when mode is CustomBundle",
        "smartConfiguration.codeChallengeMethods[1]: plain must not be offered (SMART App Launch 2.2 requires S256 and forbids plain)",
        "smartConfiguration.scopes[0]: \"two words\" must be one non-empty word",
    ];
    got.sort_unstable();
    want.sort_unstable();
    assert_eq!(got, want);
    // Opaque tokens checked by introspection serve SMART apps as well as JWTs do.
    let mut q = policy("ehr");
    q.authentication.basic = None;
    q.authentication.introspection = Some(introspection());
    q.smart_configuration = Some(SmartConfigurationConfig {
        token_endpoint: Some("https://as.example.org/token".into()),
        ..SmartConfigurationConfig::default()
    });
    assert_eq!(with_policy(q).validate(), vec![]);
}
