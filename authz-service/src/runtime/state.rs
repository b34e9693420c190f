//! A loaded config: the compiled config plus everything built from it (password verifiers,
//! token verifiers with their key sources). Built off to the side and swapped in whole.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::{CONFIG_FILE, CompiledConfig, ConfigError, Problem};
use crate::core::policy::OutboundAuth;
use crate::observe::{DecisionObserver, Observer};
use crate::runtime::audit::{AuditAuth, AuditOptions, AuditRegistry, AuditSink};
use crate::runtime::discovery::{DiscoveryOptions, DiscoveryRegistry, OpenIdSource};
use crate::runtime::introspect::{IntrospectionClient, IntrospectionOptions};
use crate::runtime::jwks::{JwksOptions, JwksRegistry, JwksSource};
use crate::runtime::oauth::{OAuthOptions, OAuthRegistry, TokenSource};
use crate::verify::basic::BasicVerifier;
use crate::verify::cache::{Budget, Caches};
use crate::verify::jwt::{Provider, TokenVerifier};

/// What outlives one config: key sources and OAuth token sources (reused by the next config
/// when it keeps them, so a reload does not refetch), the caches, and the observer.
pub struct Shared {
    pub registry: JwksRegistry,
    pub oauth: OAuthRegistry,
    pub caches: Caches,
    pub observer: Arc<dyn Observer>,
    pub introspection: IntrospectionOptions,
    /// Audit sinks, shared by destination between config generations.
    pub audit: AuditRegistry,
    /// OpenID discovery sources for SMART discovery documents.
    pub discovery: DiscoveryRegistry,
    /// This instance's name (the pod name), for AuditEvent sources.
    pub instance: String,
}

impl Shared {
    pub fn new(
        jwks: JwksOptions,
        oauth: OAuthOptions,
        budget: Budget,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Self::with_options(
            jwks,
            oauth,
            AuditOptions::default(),
            DiscoveryOptions::default(),
            budget,
            observer,
        )
    }

    pub fn with_options(
        jwks: JwksOptions,
        oauth: OAuthOptions,
        audit: AuditOptions,
        discovery: DiscoveryOptions,
        budget: Budget,
        observer: Arc<dyn Observer>,
    ) -> Self {
        Shared {
            registry: JwksRegistry::new(jwks, observer.clone()),
            oauth: OAuthRegistry::new(oauth, observer.clone()),
            caches: Caches::new(budget, &observer),
            audit: AuditRegistry::new(audit, observer.clone()),
            discovery: DiscoveryRegistry::new(discovery, observer.clone()),
            instance: std::env::var("HOSTNAME").unwrap_or_else(|_| "fhirguard-authz".into()),
            observer,
            introspection: IntrospectionOptions::default(),
        }
    }
}

/// A policy's bearer-token verification: the verifier, and the key source behind each of its
/// providers (index-aligned), which the host asks when the verifier needs keys.
pub struct TokenRuntime {
    pub verifier: Arc<TokenVerifier>,
    pub sources: Vec<Arc<JwksSource>>,
}

/// What one policy needs at decision time, index-aligned with `config.policies`.
pub struct PolicyRuntime {
    /// `namespace/name`.
    pub id: String,
    pub basic: Option<Arc<BasicVerifier>>,
    pub jwt: Option<TokenRuntime>,
    /// Asks the policy's RFC 7662 endpoint about tokens no JWT provider claims.
    pub introspection: Option<Arc<IntrospectionClient>>,
    /// Fetches stored resources for patient-compartment checks (`compartmentLookup`).
    pub lookup: Option<crate::runtime::lookup::LookupClient>,
    /// Counts this policy's decisions; made at load so that a decision looks nothing up.
    pub decisions: Arc<dyn DecisionObserver>,
    /// Where this policy's AuditEvents go (`audit`).
    pub audit: Option<Arc<AuditSink>>,
    /// The issuer's OpenID metadata for the SMART discovery document.
    pub discovery: Option<Arc<OpenIdSource>>,
}

/// How an outbound request through a connection gets its credential.
pub enum Outbound {
    /// A fixed header value (Basic), or none at all.
    Fixed(OutboundAuth),
    /// The connection's current OAuth token.
    OAuth(Arc<TokenSource>),
}

pub struct Runtime {
    pub config: CompiledConfig,
    pub policies: Vec<PolicyRuntime>,
    /// By `namespace/name`.
    pub connections: std::collections::HashMap<String, Outbound>,
    /// Counts outbound decisions, by connection.
    pub connection_decisions: std::collections::HashMap<String, Arc<dyn DecisionObserver>>,
    /// Counts the decisions of requests that no policy (or connection) matched.
    pub unmatched: Arc<dyn DecisionObserver>,
    /// Digest of every file the config was built from; a reload with the same digest is skipped.
    pub digest: [u8; 32],
    /// Whether any policy records AuditEvents (a host gathers what only they need, such as the
    /// client's address, only then).
    pub audits: bool,
}

/// Reads and validates a config directory without building verifiers (for `validate` and
/// as the first step of a load).
pub fn read_dir(dir: &Path) -> Result<(CompiledConfig, [u8; 32]), ConfigError> {
    let (digest, result) = read_dir_digest(dir);
    result.map(|c| (c, digest))
}

/// Like [`read_dir`], but the digest of what was read comes back whether or not it is valid:
/// the reloader remembers refused content by it, so that it refuses (and reports) a broken
/// config once instead of on every re-read. A file that cannot be read enters the digest as
/// its error, so it counts as changed once it can be read.
pub fn read_dir_digest(dir: &Path) -> ([u8; 32], Result<CompiledConfig, ConfigError>) {
    let mut digest = Sha256::new();
    let path = dir.join(CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(source) => {
            digest.update(b"unreadable config: ");
            digest.update(source.kind().to_string().as_bytes());
            return (
                digest.finalize().into(),
                Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                }),
            );
        }
    };
    digest.update(text.as_bytes());
    let config = match CompiledConfig::from_json(&text) {
        Ok(c) => c,
        Err(source) => {
            return (
                digest.finalize().into(),
                Err(ConfigError::Parse {
                    path: path.display().to_string(),
                    source,
                }),
            );
        }
    };
    let mut problems = config.validate();
    for file in config.ca_files() {
        digest.update([0]);
        digest.update(file.as_bytes());
        digest.update([0]);
        match std::fs::read(dir.join(file)) {
            Ok(pem) => {
                if let Err(e) = crate::runtime::tls::roots_from_pem(file, &pem) {
                    problems.push(Problem {
                        object: "config".into(),
                        field: format!("files[{file}]"),
                        message: e.to_string(),
                    });
                }
                digest.update(&pem);
            }
            Err(e) => {
                digest.update(b"unreadable: ");
                digest.update(e.kind().to_string().as_bytes());
                problems.push(Problem {
                    object: "config".into(),
                    field: format!("files[{file}]"),
                    message: format!("the CA bundle named by the config cannot be read: {e}"),
                });
            }
        }
    }
    let digest: [u8; 32] = digest.finalize().into();
    if !problems.is_empty() {
        return (digest, Err(ConfigError::Invalid(problems)));
    }
    (digest, Ok(config))
}

impl Runtime {
    /// Builds the runtime for a validated config.
    pub fn build(
        config: CompiledConfig,
        digest: [u8; 32],
        dir: &Path,
        shared: &Shared,
    ) -> Result<Runtime, ConfigError> {
        let Shared {
            registry,
            oauth,
            caches,
            observer,
            introspection: introspection_options,
            audit,
            discovery,
            ..
        } = shared;
        let mut problems = Vec::new();
        let mut connections = std::collections::HashMap::new();
        for c in &config.connections {
            let id = format!("{}/{}", c.namespace, c.name);
            let outbound = match (&c.auth.basic, &c.auth.oauth) {
                (Some(b), _) => Outbound::Fixed(OutboundAuth::Set(
                    crate::verify::basic::header_value(&b.username, &b.password),
                )),
                (None, Some(o)) => match oauth.source(c, o, dir) {
                    Ok(s) => Outbound::OAuth(s),
                    Err(e) => {
                        problems.push(Problem {
                            object: id.clone(),
                            field: "tls".into(),
                            message: e.to_string(),
                        });
                        continue;
                    }
                },
                (None, None) => Outbound::Fixed(OutboundAuth::Remove),
            };
            connections.insert(id, outbound);
        }
        let connection_decisions = connections
            .keys()
            .map(|id| (id.clone(), observer.decisions(id)))
            .collect();
        let mut policies = Vec::with_capacity(config.policies.len());
        for p in &config.policies {
            let id = format!("{}/{}", p.namespace, p.name);
            let basic = match &p.authentication.basic {
                None => None,
                Some(b) => match BasicVerifier::with_cache(&b.htpasswd, caches.basic.clone()) {
                    Ok(v) => Some(Arc::new(v)),
                    Err(e) => {
                        problems.push(Problem {
                            object: id.clone(),
                            field: crate::config::PolicyField::Htpasswd.to_string(),
                            message: e.to_string(),
                        });
                        None
                    }
                },
            };
            let jwt = match &p.authentication.jwt {
                None => None,
                Some(j) => {
                    let mut providers = Vec::new();
                    let mut sources = Vec::new();
                    for (i, pc) in j.providers.iter().enumerate() {
                        let label = format!("{id}/{}", pc.name);
                        match registry.source(&label, &pc.jwks, dir) {
                            Ok(source) => {
                                providers.push(Provider::new(pc.clone(), source.slot().clone()));
                                sources.push(source);
                            }
                            Err(e) => problems.push(Problem {
                                object: id.clone(),
                                field: format!("authentication.jwt.providers[{i}].jwks"),
                                message: e.to_string(),
                            }),
                        }
                    }
                    Some(TokenRuntime {
                        verifier: Arc::new(TokenVerifier::new(providers, caches.tokens.clone())),
                        sources,
                    })
                }
            };
            let introspection = match &p.authentication.introspection {
                None => None,
                Some(ic) => match IntrospectionClient::new(
                    id.clone(),
                    ic,
                    dir,
                    caches.introspection.clone(),
                    *introspection_options,
                    observer.clone(),
                ) {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        problems.push(Problem {
                            object: id.clone(),
                            field: crate::config::PolicyField::Introspection(
                                crate::config::IntrospectionField::CaFile,
                            )
                            .to_string(),
                            message: e.to_string(),
                        });
                        None
                    }
                },
            };
            let lookup = match &p.authorization.smart.compartment_lookup {
                None => None,
                Some(cl) => {
                    let conn = config
                        .connections
                        .iter()
                        .find(|c| format!("{}/{}", c.namespace, c.name) == cl.connection);
                    let token = connections.get(&cl.connection).and_then(|o| match o {
                        Outbound::OAuth(s) => Some(s.clone()),
                        Outbound::Fixed(_) => None,
                    });
                    match conn.map(|c| {
                        crate::runtime::lookup::LookupClient::with_cache(
                            c,
                            dir,
                            token,
                            caches.lookups.clone(),
                        )
                    }) {
                        Some(Ok(client)) => Some(client),
                        Some(Err(e)) => {
                            problems.push(Problem {
                                object: id.clone(),
                                field: crate::config::PolicyField::CompartmentLookupConnection
                                    .to_string(),
                                message: e.to_string(),
                            });
                            None
                        }
                        None => None,
                    }
                }
            };
            if p.unauthenticated_access {
                tracing::warn!(policy = %id, "unauthenticatedAccess is on: every request to this policy is allowed without credentials");
            }
            let audit_sink = match &p.audit {
                None => None,
                Some(a) => {
                    let connection = a.connection.as_ref().and_then(|cid| {
                        let c = config
                            .connections
                            .iter()
                            .find(|c| format!("{}/{}", c.namespace, c.name) == *cid)?;
                        let auth = match connections.get(cid) {
                            Some(Outbound::Fixed(OutboundAuth::Set(v))) => {
                                AuditAuth::Fixed(v.clone())
                            }
                            Some(Outbound::OAuth(s)) => AuditAuth::OAuth(s.clone()),
                            _ => AuditAuth::None,
                        };
                        Some((c, auth))
                    });
                    match audit.sink(a, connection, dir) {
                        Ok(s) => Some(s),
                        Err(message) => {
                            problems.push(Problem {
                                object: id.clone(),
                                field: "audit".into(),
                                message,
                            });
                            None
                        }
                    }
                }
            };
            let discovery_source = match p
                .smart_configuration
                .as_ref()
                .and_then(|sc| Some((sc.issuer.as_ref()?, sc.openid_discovery.as_ref()?)))
            {
                None => None,
                Some((issuer, d)) => match discovery.source(&id, issuer, d, dir) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        problems.push(Problem {
                            object: id.clone(),
                            field: "smartConfiguration.openidDiscovery.tls".into(),
                            message: e.to_string(),
                        });
                        None
                    }
                },
            };
            let decisions = observer.decisions(&id);
            policies.push(PolicyRuntime {
                id,
                basic,
                jwt,
                introspection,
                lookup,
                decisions,
                audit: audit_sink,
                discovery: discovery_source,
            });
        }
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(Runtime {
            audits: config.policies.iter().any(|p| p.audit.is_some()),
            config,
            policies,
            connections,
            connection_decisions,
            unmatched: observer.decisions("none"),
            digest,
        })
    }
}

/// Loads a directory: read, validate, build.
pub fn load(dir: &Path, shared: &Shared) -> Result<Runtime, ConfigError> {
    let (config, digest) = read_dir(dir)?;
    Runtime::build(config, digest, dir, shared)
}

/// Where the config lives, for logs.
pub fn display_dir(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}
