//! Validation of a compiled config: every problem, located by object and field.

use super::*;

/// One thing wrong with a config, located well enough for a user to fix it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// `namespace/name` of the object, or `config` for the document itself.
    pub object: String,
    /// Field path inside the object, e.g. `authentication.jwt.providers[0].issuer`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

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
    /// Every problem in the config. An empty list means the service will accept it.
    pub fn validate(&self) -> Vec<Problem> {
        let mut v = Validator::default();
        if self.version != FORMAT_VERSION {
            v.push(
                "config",
                "version",
                format!(
                    "format version {} is not supported (this build reads {FORMAT_VERSION})",
                    self.version
                ),
            );
        }
        let connections: BTreeSet<String> = self
            .connections
            .iter()
            .map(|c| format!("{}/{}", c.namespace, c.name))
            .collect();
        let mut seen = BTreeSet::new();
        let mut claims: BTreeMap<(String, String), String> = BTreeMap::new();
        for p in &self.policies {
            let id = format!("{}/{}", p.namespace, p.name);
            if !seen.insert(id.clone()) {
                v.push(&id, "metadata.name", "two policies have this name".into());
            }
            validate_object_name(&mut v, &id, &p.namespace, &p.name);
            validate_policy(&mut v, &id, p, &connections);
            let hosts: Vec<String> = if p.hosts.is_empty() {
                vec!["*".into()]
            } else {
                p.hosts.iter().map(|h| normalize_host(h)).collect()
            };
            for h in hosts {
                let key = (h.clone(), p.base_path.trim_end_matches('/').to_string());
                if let Some(other) = claims.get(&key) {
                    v.push(
                        &id,
                        "match",
                        format!(
                            "host {h:?} with basePath {:?} is already claimed by {other}",
                            p.base_path
                        ),
                    );
                } else {
                    claims.insert(key, id.clone());
                }
            }
        }
        let mut seen = BTreeSet::new();
        for c in &self.connections {
            let id = format!("{}/{}", c.namespace, c.name);
            if !seen.insert(id.clone()) {
                v.push(
                    &id,
                    "metadata.name",
                    "two connections have this name".into(),
                );
            }
            validate_object_name(&mut v, &id, &c.namespace, &c.name);
            validate_connection(&mut v, &id, c);
        }
        v.problems.sort();
        v.problems
    }
}

#[derive(Default)]
pub(super) struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn push(&mut self, object: &str, field: &str, message: String) {
        self.problems.push(Problem {
            object: object.into(),
            field: field.into(),
            message,
        });
    }
}

pub(super) fn validate_object_name(v: &mut Validator, id: &str, namespace: &str, name: &str) {
    if namespace.is_empty() || name.is_empty() || namespace.contains('/') || name.contains('/') {
        v.push(
            id,
            "metadata",
            "namespace and name must be non-empty and contain no '/'".into(),
        );
    }
}

/// Lower-cases a host and drops a port, as `:authority` is compared.
pub fn normalize_host(host: &str) -> String {
    let h = host.trim().to_ascii_lowercase();
    if h.starts_with('[') {
        // IPv6 literal: [::1]:8080
        return match h.find(']') {
            Some(end) => h[..=end].to_string(),
            None => h,
        };
    }
    match h.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
        _ => h,
    }
}

/// A path that fhirguard will compare literally must be free of the tricks that make two
/// spellings mean one resource; otherwise a policy could be bypassed by spelling it differently.
pub(super) fn check_plain_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err("must start with '/'".into());
    }
    if path.contains(['?', '#', '%', '\\']) || path.chars().any(|c| c.is_control() || c == ' ') {
        return Err("must not contain '?', '#', '%', '\\', spaces or control characters".into());
    }
    if path.len() > 1 && path.ends_with('/') {
        return Err("must not end with '/'".into());
    }
    if path.contains("//") {
        return Err("must not contain '//'".into());
    }
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err("must not contain '.' or '..' segments".into());
    }
    Ok(())
}

pub(super) fn validate_policy(
    v: &mut Validator,
    id: &str,
    p: &PolicyConfig,
    connections: &BTreeSet<String>,
) {
    if let Err(e) = check_plain_path(&p.base_path) {
        v.push(id, "match.basePath", e);
    }
    for (i, h) in p.hosts.iter().enumerate() {
        let n = normalize_host(h);
        if n.is_empty() || n.contains(['/', ' ', '?', '#', '@']) || n == "*" {
            v.push(
                id,
                &format!("match.hosts[{i}]"),
                format!("{h:?} is not a host name (leave hosts empty to match any host)"),
            );
        }
    }
    for (i, pp) in p.public_paths.iter().enumerate() {
        if let Err(e) = check_plain_path(pp) {
            v.push(id, &format!("publicPaths[{i}]"), e);
        }
    }
    let auth = &p.authentication;
    let bearer = auth.jwt.is_some() || auth.introspection.is_some();
    if auth.basic.is_none() && !bearer && !p.unauthenticated_access {
        v.push(
            id,
            "authentication",
            "none of basic, jwt and introspection is configured, so no request could ever be authenticated".into(),
        );
    }
    if auth.combine == Combine::AllOf && (auth.basic.is_none() || !bearer) {
        v.push(
            id,
            "authentication.combine",
            "AllOf needs basic and a bearer-token check (jwt or introspection) to be configured"
                .into(),
        );
    }
    if let Some(i) = &auth.introspection {
        validate_introspection(v, id, i, auth.jwt.is_some());
    }
    if let Some(basic) = &auth.basic {
        validate_basic(v, id, basic);
    }
    if let Some(jwt) = &auth.jwt {
        if jwt.require_subject_matches_basic_user && auth.combine != Combine::AllOf {
            v.push(
                id,
                "authentication.jwt.requireSubjectMatchesBasicUser",
                "only meaningful with combine: AllOf".into(),
            );
        }
        validate_jwt(v, id, jwt);
    }
    if let Some(lookup) = &p.authorization.smart.compartment_lookup
        && !connections.contains(&lookup.connection)
    {
        v.push(
            id,
            "authorization.smart.compartmentLookup.connectionRef",
            format!("connection {:?} does not exist", lookup.connection),
        );
    }
}

pub(super) fn validate_basic(v: &mut Validator, id: &str, basic: &BasicConfig) {
    let field = "authentication.basic.htpasswdSecretRef";
    let users = match htpasswd::parse(&basic.htpasswd) {
        Ok(entries) => entries.into_iter().map(|e| e.user).collect::<BTreeSet<_>>(),
        Err(errors) => {
            for e in errors {
                v.push(id, field, e.to_string());
            }
            return;
        }
    };
    if users.is_empty() {
        v.push(id, field, "the htpasswd file holds no users".into());
    }
    for (i, rule) in basic.access.iter().enumerate() {
        if rule.users.is_empty() {
            v.push(
                id,
                &format!("authentication.basic.access[{i}].users"),
                "must name at least one user or \"*\"".into(),
            );
        }
        for u in &rule.users {
            if u != "*" && !users.contains(u) {
                v.push(
                    id,
                    &format!("authentication.basic.access[{i}].users"),
                    format!("user {u:?} is not in the htpasswd file"),
                );
            }
        }
    }
}

pub(super) fn validate_jwt(v: &mut Validator, id: &str, jwt: &JwtConfig) {
    if jwt.token_sources.is_empty() {
        v.push(
            id,
            "authentication.jwt.tokenSources",
            "must name at least one source".into(),
        );
    }
    if jwt.providers.is_empty() {
        v.push(
            id,
            "authentication.jwt.providers",
            "must list at least one provider".into(),
        );
    }
    let mut names = BTreeSet::new();
    let mut issuers = BTreeSet::new();
    for (i, p) in jwt.providers.iter().enumerate() {
        let f = |s: &str| format!("authentication.jwt.providers[{i}].{s}");
        if p.name.is_empty() || !names.insert(p.name.clone()) {
            v.push(id, &f("name"), "must be non-empty and unique".into());
        }
        if p.issuer.is_empty() {
            v.push(id, &f("issuer"), "must not be empty".into());
        } else if !issuers.insert(p.issuer.clone()) {
            v.push(
                id,
                &f("issuer"),
                format!(
                    "issuer {:?} is used by two providers; tokens could not be told apart",
                    p.issuer
                ),
            );
        }
        if p.audiences.is_empty() || p.audiences.iter().any(|a| a.is_empty()) {
            v.push(
                id,
                &f("audiences"),
                "must list at least one non-empty audience; tokens minted for another service must not be accepted"
                    .into(),
            );
        }
        if p.algorithms.is_empty() {
            v.push(
                id,
                &f("algorithms"),
                "must list at least one algorithm".into(),
            );
        }
        if p.clock_skew_seconds > 600 {
            v.push(id, &f("clockSkew"), "must be at most 10m".into());
        }
        for (name, value) in [
            ("scope", &p.claims.scope),
            ("patient", &p.claims.patient),
            ("fhirUser", &p.claims.fhir_user),
            ("subject", &p.claims.subject),
        ] {
            if value.is_empty() {
                v.push(
                    id,
                    &f(&format!("claims.{name}")),
                    "must not be empty".into(),
                );
            }
        }
        match (&p.jwks.uri, &p.jwks.document) {
            (Some(_), Some(_)) | (None, None) => v.push(
                id,
                &f("jwks"),
                "exactly one of uri and secretRef must be set".into(),
            ),
            (Some(uri), None) => {
                if let Err(e) = check_https_url(uri) {
                    v.push(id, &f("jwks.uri"), e);
                }
                if p.jwks.refresh_interval_seconds < 10 {
                    v.push(
                        id,
                        &f("jwks.refreshInterval"),
                        "must be at least 10s".into(),
                    );
                }
                validate_tls(v, id, &f("jwks.tls"), &p.jwks.tls);
            }
            (None, Some(doc)) => {
                if let Err(e) = check_jwks_document(doc) {
                    v.push(id, &f("jwks.secretRef"), e);
                }
            }
        }
    }
}

pub(super) fn validate_introspection(
    v: &mut Validator,
    id: &str,
    i: &IntrospectionConfig,
    has_jwt: bool,
) {
    let f = |s: &str| format!("authentication.introspection.{s}");
    if let Err(e) = check_https_url(&i.endpoint) {
        v.push(id, &f("endpoint"), e);
    }
    if i.client_id.is_empty() {
        v.push(id, &f("clientId"), "must not be empty".into());
    }
    if i.client_secret.is_empty() {
        v.push(
            id,
            &f("clientSecretRef"),
            "the referenced Secret key is empty".into(),
        );
    }
    if i.audiences.is_empty() || i.audiences.iter().any(|a| a.is_empty()) {
        v.push(
            id,
            &f("audiences"),
            "must list at least one non-empty audience; tokens issued for another service must not be accepted"
                .into(),
        );
    }
    if i.max_cache_seconds > 3600 {
        v.push(
            id,
            &f("maxCacheDuration"),
            "must be at most 1h: a revoked token must stop working within the hour".into(),
        );
    }
    if i.clock_skew_seconds > 600 {
        v.push(id, &f("clockSkew"), "must be at most 10m".into());
    }
    if i.introspect_jwts && !has_jwt {
        v.push(
            id,
            &f("introspectJwts"),
            "only meaningful when jwt providers are configured".into(),
        );
    }
    validate_tls(v, id, &f("tls"), &i.tls);
}

/// Structural check of a JWKS document; the server additionally turns every key into a
/// verification key when it loads the config.
pub fn check_jwks_document(doc: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(doc).map_err(|e| format!("not a JSON document: {e}"))?;
    let keys = value
        .get("keys")
        .and_then(|k| k.as_array())
        .ok_or("not a JWKS: no \"keys\" array")?;
    if keys.is_empty() {
        return Err("the JWKS holds no keys".into());
    }
    for (i, k) in keys.iter().enumerate() {
        if k.get("d").is_some() || k.get("k").is_some() {
            return Err(format!(
                "key {i} contains private or symmetric key material; publish only public keys"
            ));
        }
    }
    Ok(())
}

pub(super) fn validate_tls(v: &mut Validator, id: &str, field: &str, tls: &TlsConfig) {
    match (tls.mode, &tls.ca_file) {
        (TlsMode::CustomBundle, None) => v.push(
            id,
            &format!("{field}.caBundleSecretRef"),
            "required when mode is CustomBundle".into(),
        ),
        (TlsMode::CustomBundle, Some(f)) => {
            if f.is_empty() || f.contains('/') || f.starts_with('.') {
                v.push(
                    id,
                    &format!("{field}.caFile"),
                    format!("{f:?} must be a plain file name inside the config directory"),
                );
            }
        }
        (_, Some(_)) => v.push(
            id,
            &format!("{field}.caBundleSecretRef"),
            "only allowed when mode is CustomBundle".into(),
        ),
        (_, None) => {}
    }
}

pub(super) fn check_https_url(s: &str) -> Result<url::Url, String> {
    let u = url::Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if u.scheme() != "https" {
        return Err(format!("{s:?} must use https"));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!("{s:?} must not carry credentials in the URL"));
    }
    Ok(u)
}

pub(super) fn validate_connection(v: &mut Validator, id: &str, c: &ConnectionConfig) {
    match url::Url::parse(&c.url) {
        Ok(u) if (u.scheme() == "https" || u.scheme() == "http") && u.host_str().is_some() => {
            if !u.username().is_empty() || u.password().is_some() {
                v.push(id, "url", "must not carry credentials in the URL".into());
            }
        }
        Ok(_) => v.push(
            id,
            "url",
            format!("{:?} must be an http(s) URL with a host", c.url),
        ),
        Err(e) => v.push(id, "url", format!("{:?} is not a URL: {e}", c.url)),
    }
    match (&c.auth.basic, &c.auth.oauth) {
        (Some(_), Some(_)) => v.push(
            id,
            "auth",
            "at most one of basic and oauth: HTTP has one Authorization header".into(),
        ),
        (Some(b), None) => {
            if b.username.is_empty() || b.username.contains(':') {
                v.push(
                    id,
                    "auth.basic.secretRef",
                    "username must be non-empty and contain no ':'".into(),
                );
            }
        }
        (None, Some(o)) => {
            if let Err(e) = check_https_url(&o.token_url) {
                v.push(id, "auth.oauth.tokenUrl", e);
            }
            if o.client_id.is_empty() {
                v.push(id, "auth.oauth.clientId", "must not be empty".into());
            }
            if o.client_secret.is_empty() {
                v.push(
                    id,
                    "auth.oauth.clientSecretRef",
                    "the secret is empty".into(),
                );
            }
        }
        (None, None) => {}
    }
    validate_tls(v, id, "tls", &c.tls);
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
