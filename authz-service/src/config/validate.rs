//! Validation of a compiled config: every problem, typed and located by object and field
//! (see [`super::problem`]).

use super::problem::*;
use super::*;

/// Why a config directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid compiled config: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid config:\n{}", .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl CompiledConfig {
    /// Every problem in the config, typed, in document order. Empty means the service will
    /// accept it.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        if self.version != FORMAT_VERSION {
            out.push(ConfigProblem {
                at: ConfigPath::Version,
                kind: ProblemKind::UnsupportedVersion {
                    found: self.version,
                },
            });
        }
        let connections: BTreeSet<String> = self
            .connections
            .iter()
            .map(|c| format!("{}/{}", c.namespace, c.name))
            .collect();
        let mut seen = BTreeSet::new();
        let mut claims: BTreeMap<(String, String), ObjectId> = BTreeMap::new();
        for (index, p) in self.policies.iter().enumerate() {
            let id = ObjectId {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
            };
            let mut v = At {
                out: &mut out,
                index,
                id: id.clone(),
                path: policy_path,
            };
            if !seen.insert(id.clone()) {
                v.push(PolicyField::Name, ProblemKind::DuplicatePolicy);
            }
            check_object_name(
                &mut v,
                &p.namespace,
                &p.name,
                PolicyField::Namespace,
                PolicyField::Name,
            );
            validate_policy(&mut v, p, &connections);
            let hosts: Vec<String> = if p.hosts.is_empty() {
                vec!["*".into()]
            } else {
                p.hosts.iter().map(|h| normalize_host(h)).collect()
            };
            for h in hosts {
                let key = (h.clone(), p.base_path.trim_end_matches('/').to_string());
                if let Some(other) = claims.get(&key) {
                    v.push(
                        PolicyField::Hosts,
                        ProblemKind::HostClaimed {
                            host: h,
                            base_path: p.base_path.clone(),
                            by: other.clone(),
                        },
                    );
                } else {
                    claims.insert(key, id.clone());
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (index, c) in self.connections.iter().enumerate() {
            let id = ObjectId {
                namespace: c.namespace.clone(),
                name: c.name.clone(),
            };
            let mut v = At {
                out: &mut out,
                index,
                id: id.clone(),
                path: connection_path,
            };
            if !seen.insert(id) {
                v.push(ConnectionField::Name, ProblemKind::DuplicateConnection);
            }
            check_object_name(
                &mut v,
                &c.namespace,
                &c.name,
                ConnectionField::Namespace,
                ConnectionField::Name,
            );
            validate_connection(&mut v, c);
        }
        out
    }

    /// Every problem rendered for people, sorted by object, field and message. Empty means the
    /// service will accept the config.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out: Vec<Problem> = self.problems().iter().map(Problem::from).collect();
        out.sort();
        out
    }
}

fn policy_path(index: usize, id: ObjectId, field: PolicyField) -> ConfigPath {
    ConfigPath::Policy { index, id, field }
}

fn connection_path(index: usize, id: ObjectId, field: ConnectionField) -> ConfigPath {
    ConfigPath::Connection { index, id, field }
}

/// Collects the problems of one object: its index and id are filled in for every field.
struct At<'a, F> {
    out: &'a mut Vec<ConfigProblem>,
    index: usize,
    id: ObjectId,
    path: fn(usize, ObjectId, F) -> ConfigPath,
}

impl<F> At<'_, F> {
    fn push(&mut self, field: F, kind: ProblemKind) {
        self.out.push(ConfigProblem {
            at: (self.path)(self.index, self.id.clone(), field),
            kind,
        });
    }
}

fn check_object_name<F>(
    v: &mut At<'_, F>,
    namespace: &str,
    name: &str,
    ns_field: F,
    name_field: F,
) {
    let bad = |s: &str| s.is_empty() || s.contains('/');
    if bad(namespace) {
        v.push(ns_field, ProblemKind::BadObjectName);
    }
    if bad(name) {
        v.push(name_field, ProblemKind::BadObjectName);
    }
}

/// Lower-cases a host and drops a port, as `:authority` is compared.
pub fn normalize_host(host: &str) -> String {
    host_name(host).to_ascii_lowercase()
}

/// [`normalize_host`] without the lowercasing, borrowed: what a per-request comparison uses
/// (with `eq_ignore_ascii_case`) so that matching a host allocates nothing.
pub fn host_name(host: &str) -> &str {
    let h = host.trim();
    if h.starts_with('[') {
        // IPv6 literal: [::1]:8080
        return match h.find(']') {
            Some(end) => &h[..=end],
            None => h,
        };
    }
    let name = match h.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => h,
    };
    // `ehr.example.` is the fully qualified spelling of `ehr.example`: the same server behind
    // the same sidecar, so it must be judged by the same policy, not by a catch-all.
    name.trim_end_matches('.')
}

/// A path that fhirguard will compare literally must be free of the tricks that make two
/// spellings mean one resource; otherwise a policy could be bypassed by spelling it differently.
pub(super) fn check_plain_path(path: &str) -> Result<(), PathProblem> {
    if !path.starts_with('/') {
        return Err(PathProblem::NotAbsolute);
    }
    if path.contains(['?', '#', '%', '\\']) || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err(PathProblem::ForbiddenCharacter);
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err(PathProblem::TrailingSlash);
    }
    if path.contains("//") {
        return Err(PathProblem::EmptySegment);
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err(PathProblem::DotSegment);
    }
    Ok(())
}

fn validate_policy(v: &mut At<'_, PolicyField>, p: &PolicyConfig, connections: &BTreeSet<String>) {
    if let Err(e) = check_plain_path(&p.base_path) {
        v.push(PolicyField::BasePath, ProblemKind::Path(e));
    }
    for (i, h) in p.hosts.iter().enumerate() {
        let n = normalize_host(h);
        if n.is_empty() || n.contains(['/', ' ', '?', '#', '@']) || n == "*" {
            v.push(
                PolicyField::Host(i),
                ProblemKind::NotAHostName { host: h.clone() },
            );
        }
    }
    for (i, pp) in p.public_paths.iter().enumerate() {
        if let Err(e) = check_plain_path(pp) {
            v.push(PolicyField::PublicPath(i), ProblemKind::Path(e));
        }
    }
    let auth = &p.authentication;
    let bearer = auth.jwt.is_some() || auth.introspection.is_some();
    if auth.basic.is_none() && !bearer && !p.unauthenticated_access {
        v.push(PolicyField::Authentication, ProblemKind::NoCredentials);
    }
    if auth.combine == Combine::AllOf && (auth.basic.is_none() || !bearer) {
        v.push(PolicyField::Combine, ProblemKind::AllOfNeedsBoth);
    }
    if let Some(i) = &auth.introspection {
        validate_introspection(v, i, auth.jwt.is_some());
    }
    if let Some(basic) = &auth.basic {
        validate_basic(v, basic);
    }
    if let Some(jwt) = &auth.jwt {
        if jwt.require_subject_matches_basic_user && auth.combine != Combine::AllOf {
            v.push(
                PolicyField::RequireSubjectMatchesBasicUser,
                ProblemKind::OnlyWithAllOf,
            );
        }
        validate_jwt(v, jwt);
    }
    if let Some(lookup) = &p.authorization.smart.compartment_lookup
        && !connections.contains(&lookup.connection)
    {
        v.push(
            PolicyField::CompartmentLookupConnection,
            ProblemKind::UnknownConnection {
                connection: lookup.connection.clone(),
            },
        );
    }
    if let Some(a) = &p.audit {
        validate_audit(v, a, connections);
    }
    if let Some(sc) = &p.smart_configuration {
        validate_smart_configuration(v, p, sc);
    }
}

fn validate_audit(v: &mut At<'_, PolicyField>, a: &AuditConfig, connections: &BTreeSet<String>) {
    let mut push = |f: AuditField, kind: ProblemKind| v.push(PolicyField::Audit(f), kind);
    let destinations =
        usize::from(a.stdout) + usize::from(a.file.is_some()) + usize::from(a.connection.is_some());
    if destinations != 1 {
        push(AuditField::Destination, ProblemKind::AuditDestinationCount);
    }
    if let Some(f) = &a.file
        && (!f.starts_with('/') || f.ends_with('/') || f.chars().any(char::is_control))
    {
        push(
            AuditField::File,
            ProblemKind::NotAnAbsoluteFile { file: f.clone() },
        );
    }
    if let Some(c) = &a.connection
        && !connections.contains(c)
    {
        push(
            AuditField::Connection,
            ProblemKind::UnknownConnection {
                connection: c.clone(),
            },
        );
    }
    if a.queue_size == 0 || a.queue_size > MAX_AUDIT_QUEUE {
        push(
            AuditField::QueueSize,
            ProblemKind::OutOfRange {
                min: 1,
                max: MAX_AUDIT_QUEUE,
            },
        );
    }
    if a.batch_size == 0 || a.batch_size > MAX_AUDIT_BATCH {
        push(
            AuditField::BatchSize,
            ProblemKind::OutOfRange {
                min: 1,
                max: MAX_AUDIT_BATCH,
            },
        );
    }
}

fn validate_smart_configuration(
    v: &mut At<'_, PolicyField>,
    p: &PolicyConfig,
    sc: &SmartConfigurationConfig,
) {
    use SmartConfigurationField as S;
    let mut push = |f: S, kind: ProblemKind| v.push(PolicyField::SmartConfiguration(f), kind);
    let auth = &p.authentication;
    if auth.jwt.is_none() && auth.introspection.is_none() {
        push(S::Document, ProblemKind::DiscoveryNeedsBearer);
    }
    let path = "/.well-known/smart-configuration";
    if !p.public_paths.iter().any(|pp| pp == path) {
        push(
            S::Document,
            ProblemKind::DiscoveryNotPublic { path: path.into() },
        );
    }
    let urls = [
        (S::Issuer, &sc.issuer),
        (S::AuthorizationEndpoint, &sc.authorization_endpoint),
        (S::TokenEndpoint, &sc.token_endpoint),
        (S::JwksUri, &sc.jwks_uri),
        (S::RegistrationEndpoint, &sc.registration_endpoint),
        (S::ManagementEndpoint, &sc.management_endpoint),
        (S::IntrospectionEndpoint, &sc.introspection_endpoint),
        (S::RevocationEndpoint, &sc.revocation_endpoint),
    ];
    for (field, value) in urls {
        if let Some(u) = value
            && let Err(e) = check_https_url(u)
        {
            push(field, ProblemKind::Url(e));
        }
    }
    match &sc.openid_discovery {
        Some(d) => {
            if sc.issuer.is_none() {
                push(S::OpenIdDiscovery, ProblemKind::DiscoveryNeedsIssuer);
            }
            if d.refresh_interval_seconds < 10 {
                push(S::DiscoveryRefreshInterval, ProblemKind::RefreshTooShort);
            }
            if let Some(kind) = check_tls(&d.tls) {
                push(S::DiscoveryCaFile, kind);
            }
        }
        None => {
            if sc.token_endpoint.is_none() {
                push(S::TokenEndpoint, ProblemKind::TokenEndpointRequired);
            }
        }
    }
    for (i, m) in sc.code_challenge_methods.iter().enumerate() {
        if m == "plain" {
            push(S::CodeChallengeMethod(i), ProblemKind::PlainCodeChallenge);
        }
    }
    type Item = fn(usize) -> SmartConfigurationField;
    let lists: [(Item, &Vec<String>); 5] = [
        (S::Capability, &sc.capabilities),
        (S::Scope, &sc.scopes),
        (S::GrantType, &sc.grant_types),
        (S::CodeChallengeMethod, &sc.code_challenge_methods),
        (S::TokenEndpointAuthMethod, &sc.token_endpoint_auth_methods),
    ];
    for (field, list) in lists {
        for (i, item) in list.iter().enumerate() {
            if item.is_empty() || item.chars().any(|c| c.is_whitespace() || c.is_control()) {
                push(field(i), ProblemKind::NotOneWord { item: item.clone() });
            }
        }
    }
}

fn validate_basic(v: &mut At<'_, PolicyField>, basic: &BasicConfig) {
    let users = match htpasswd::parse(&basic.htpasswd) {
        Ok(entries) => entries.into_iter().map(|e| e.user).collect::<BTreeSet<_>>(),
        Err(errors) => {
            for e in errors {
                v.push(PolicyField::Htpasswd, ProblemKind::Htpasswd(e));
            }
            return;
        }
    };
    if users.is_empty() {
        v.push(PolicyField::Htpasswd, ProblemKind::NoHtpasswdUsers);
    }
    for (i, rule) in basic.access.iter().enumerate() {
        if rule.users.is_empty() {
            v.push(PolicyField::AccessUsers(i), ProblemKind::NoUsers);
        }
        for u in &rule.users {
            if u != "*" && !users.contains(u) {
                v.push(
                    PolicyField::AccessUsers(i),
                    ProblemKind::UnknownUser { user: u.clone() },
                );
            }
        }
    }
}

fn validate_jwt(v: &mut At<'_, PolicyField>, jwt: &JwtConfig) {
    if jwt.token_sources.is_empty() {
        v.push(PolicyField::TokenSources, ProblemKind::NoTokenSources);
    }
    if jwt.providers.is_empty() {
        v.push(PolicyField::Providers, ProblemKind::NoProviders);
    }
    let mut names = BTreeSet::new();
    let mut issuers = BTreeSet::new();
    for (i, p) in jwt.providers.iter().enumerate() {
        let mut push =
            |f: ProviderField, kind: ProblemKind| v.push(PolicyField::Provider(i, f), kind);
        if p.name.is_empty() || !names.insert(p.name.clone()) {
            push(ProviderField::Name, ProblemKind::NameNotUnique);
        }
        if p.issuer.is_empty() {
            push(ProviderField::Issuer, ProblemKind::Empty);
        } else if !issuers.insert(p.issuer.clone()) {
            push(
                ProviderField::Issuer,
                ProblemKind::SharedIssuer {
                    issuer: p.issuer.clone(),
                },
            );
        }
        if p.audiences.is_empty() || p.audiences.iter().any(|a| a.is_empty()) {
            push(ProviderField::Audiences, ProblemKind::NoAudiences);
        }
        if p.algorithms.is_empty() {
            push(ProviderField::Algorithms, ProblemKind::NoAlgorithms);
        }
        if p.clock_skew_seconds > 600 {
            push(ProviderField::ClockSkew, ProblemKind::ClockSkewTooLarge);
        }
        for (claim, value) in [
            (ClaimField::Scope, &p.claims.scope),
            (ClaimField::Patient, &p.claims.patient),
            (ClaimField::FhirUser, &p.claims.fhir_user),
            (ClaimField::Subject, &p.claims.subject),
        ] {
            if value.is_empty() {
                push(ProviderField::Claim(claim), ProblemKind::Empty);
            }
        }
        match (&p.jwks.uri, &p.jwks.document) {
            (Some(_), Some(_)) | (None, None) => {
                push(ProviderField::Jwks, ProblemKind::JwksSourceCount)
            }
            (Some(uri), None) => {
                if let Err(e) = check_https_url(uri) {
                    push(ProviderField::JwksUri, ProblemKind::Url(e));
                }
                if p.jwks.refresh_interval_seconds < 10 {
                    push(
                        ProviderField::JwksRefreshInterval,
                        ProblemKind::RefreshTooShort,
                    );
                }
                if let Some(kind) = check_tls(&p.jwks.tls) {
                    push(ProviderField::JwksCaFile, kind);
                }
            }
            (None, Some(doc)) => {
                if let Err(e) = check_jwks_document(doc) {
                    push(ProviderField::JwksDocument, ProblemKind::Jwks(e));
                }
            }
        }
    }
}

fn validate_introspection(v: &mut At<'_, PolicyField>, i: &IntrospectionConfig, has_jwt: bool) {
    let mut push =
        |f: IntrospectionField, kind: ProblemKind| v.push(PolicyField::Introspection(f), kind);
    if let Err(e) = check_https_url(&i.endpoint) {
        push(IntrospectionField::Endpoint, ProblemKind::Url(e));
    }
    if i.client_id.is_empty() {
        push(IntrospectionField::ClientId, ProblemKind::Empty);
    }
    if i.client_secret.is_empty() {
        push(IntrospectionField::ClientSecret, ProblemKind::EmptySecret);
    }
    if i.audiences.is_empty() || i.audiences.iter().any(|a| a.is_empty()) {
        push(IntrospectionField::Audiences, ProblemKind::NoAudiences);
    }
    if i.max_cache_seconds > 3600 {
        push(
            IntrospectionField::MaxCacheSeconds,
            ProblemKind::CacheTooLong,
        );
    }
    if i.clock_skew_seconds > 600 {
        push(
            IntrospectionField::ClockSkew,
            ProblemKind::ClockSkewTooLarge,
        );
    }
    if i.introspect_jwts && !has_jwt {
        push(
            IntrospectionField::IntrospectJwts,
            ProblemKind::OnlyWithJwtProviders,
        );
    }
    if let Some(kind) = check_tls(&i.tls) {
        push(IntrospectionField::CaFile, kind);
    }
}

/// Structural check of a JWKS document; the server additionally turns every key into a
/// verification key when it loads the config.
pub fn check_jwks_document(doc: &str) -> Result<(), JwksProblem> {
    let value: serde_json::Value =
        serde_json::from_str(doc).map_err(|e| JwksProblem::NotJson(e.to_string()))?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or(JwksProblem::NoKeysArray)?;
    if keys.is_empty() {
        return Err(JwksProblem::NoKeys);
    }
    for (i, k) in keys.iter().enumerate() {
        if k.get("d").is_some() || k.get("k").is_some() {
            return Err(JwksProblem::PrivateKeyMaterial(i));
        }
    }
    Ok(())
}

/// The problem with a TLS setting, if any; every one of them concerns `caFile`.
fn check_tls(tls: &TlsConfig) -> Option<ProblemKind> {
    match (tls.mode, &tls.ca_file) {
        (TlsMode::CustomBundle, None) => Some(ProblemKind::CaFileRequired),
        (TlsMode::CustomBundle, Some(f)) => (f.is_empty() || f.contains('/') || f.starts_with('.'))
            .then(|| ProblemKind::CaFileNotPlain { file: f.clone() }),
        (_, Some(_)) => Some(ProblemKind::CaFileNotAllowed),
        (_, None) => None,
    }
}

pub(super) fn check_https_url(s: &str) -> Result<url::Url, UrlProblem> {
    let u = url::Url::parse(s).map_err(|e| UrlProblem::NotAUrl {
        url: s.into(),
        error: e.to_string(),
    })?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(UrlProblem::Credentials);
    }
    if u.scheme() != "https" {
        return Err(UrlProblem::NotHttps { url: s.into() });
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(UrlProblem::NoHost { url: s.into() });
    }
    Ok(u)
}

fn validate_connection(v: &mut At<'_, ConnectionField>, c: &ConnectionConfig) {
    match url::Url::parse(&c.url) {
        Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                v.push(
                    ConnectionField::Url,
                    ProblemKind::Url(UrlProblem::Credentials),
                );
            }
        }
        Ok(_) => v.push(
            ConnectionField::Url,
            ProblemKind::Url(UrlProblem::NotHttp { url: c.url.clone() }),
        ),
        Err(e) => v.push(
            ConnectionField::Url,
            ProblemKind::Url(UrlProblem::NotAUrl {
                url: c.url.clone(),
                error: e.to_string(),
            }),
        ),
    }
    match (&c.auth.basic, &c.auth.oauth) {
        (Some(_), Some(_)) => v.push(ConnectionField::Auth, ProblemKind::BasicAndOAuth),
        (Some(b), None) => {
            if b.username.is_empty() || b.username.contains(':') {
                v.push(ConnectionField::BasicUsername, ProblemKind::BadUsername);
            }
        }
        (None, Some(o)) => {
            if let Err(e) = check_https_url(&o.token_url) {
                v.push(ConnectionField::OAuthTokenUrl, ProblemKind::Url(e));
            }
            if o.client_id.is_empty() {
                v.push(ConnectionField::OAuthClientId, ProblemKind::Empty);
            }
            if o.client_secret.is_empty() {
                v.push(ConnectionField::OAuthClientSecret, ProblemKind::EmptySecret);
            }
        }
        (None, None) => {}
    }
    if let Some(kind) = check_tls(&c.tls) {
        v.push(ConnectionField::CaFile, kind);
    }
}

/// Parses the CRDs' duration strings: an integer followed by `s`, `m` or `h`, or several
/// such parts (`1h30m`). Returns seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration like 60s, 10m or 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(total)
}
