//! One resource at a time: a `FhirConnection` or `FhirSecurityPolicy` spec, with the values of
//! the Secrets it names, into its compiled form. Problems go to the [`Ctx`]; the config
//! validator checks the result afterwards (see [`super::problems`]).

use std::collections::{BTreeMap, BTreeSet};

use fhirguard_authz::config::{
    self, AccessRule, AuthenticationConfig, AuthorizationConfig, BasicConfig, BasicCredentials,
    CompartmentLookup, ConnectionAuth, ConnectionConfig, IntrospectionConfig, JwksConfig,
    JwtConfig, OAuthConfig, PolicyConfig, ProviderConfig, SmartConfig,
};
use kube::ResourceExt;

use super::Reason;
use super::secrets::{Ctx, SecretRef, duration};
use super::{connection_ca_file, discovery_ca_file, introspection_ca_file, provider_ca_file};
use crate::crd::{self, FhirConnection, FhirSecurityPolicy};

pub(super) fn compile_connection(cx: &mut Ctx<'_>, c: &FhirConnection) -> Option<ConnectionConfig> {
    let spec = &c.spec;
    let mut auth = ConnectionAuth::default();
    if let Some(a) = &spec.auth {
        if a.basic.is_some() && a.oauth.is_some() {
            cx.issue(
                "auth",
                Reason::InvalidSpec,
                "at most one of basic and oauth: HTTP has one Authorization header",
            );
        }
        if let Some(b) = &a.basic {
            let field = "auth.basic.secretRef";
            let r = |key| SecretRef {
                name: &b.secret_ref.name,
                key,
                namespace: b.secret_ref.namespace.as_deref(),
            };
            let username = cx.credential(field, r("username"));
            let password = cx.credential(field, r("password"));
            if let (Some(username), Some(password)) = (username, password) {
                auth.basic = Some(BasicCredentials { username, password });
            }
        }
        if let Some(o) = &a.oauth {
            let client_id = match (&o.client_id, &o.client_id_secret_ref) {
                (Some(id), None) => Some(id.clone()),
                (None, Some(r)) => cx.credential(
                    "auth.oauth.clientIdSecretRef",
                    SecretRef {
                        name: &r.name,
                        key: &r.key,
                        namespace: r.namespace.as_deref(),
                    },
                ),
                _ => {
                    cx.issue(
                        "auth.oauth.clientId",
                        Reason::InvalidSpec,
                        "exactly one of clientId and clientIdSecretRef must be set",
                    );
                    None
                }
            };
            let r = &o.client_secret_ref;
            let client_secret = cx.credential(
                "auth.oauth.clientSecretRef",
                SecretRef {
                    name: &r.name,
                    key: &r.key,
                    namespace: r.namespace.as_deref(),
                },
            );
            if let (Some(client_id), Some(client_secret)) = (client_id, client_secret) {
                auth.oauth = Some(OAuthConfig {
                    token_url: o.token_url.clone(),
                    client_id,
                    client_secret,
                    client_auth_method: o.client_auth_method.into(),
                    scopes: o.scopes.clone(),
                    audience: o.audience.clone(),
                    extra_params: o.extra_params.clone(),
                });
            }
        }
    }
    let ns = cx.namespace.clone();
    let tls = cx.tls(
        "tls",
        spec.tls.as_ref(),
        connection_ca_file(&ns, &c.name_any()),
    );
    if !cx.issues.is_empty() {
        return None;
    }
    Some(ConnectionConfig {
        namespace: ns,
        name: c.name_any(),
        url: spec.url.clone(),
        auth,
        tls,
    })
}

pub(super) fn compile_policy(
    cx: &mut Ctx<'_>,
    p: &FhirSecurityPolicy,
    accepted_connections: &BTreeMap<String, ConnectionConfig>,
    rejected_connections: &BTreeSet<String>,
) -> Option<PolicyConfig> {
    let spec = &p.spec;
    let ns = cx.namespace.clone();
    let name = p.name_any();
    let a = &spec.authentication;

    let basic = a.basic.as_ref().and_then(|b| {
        let r = &b.htpasswd_secret_ref;
        let htpasswd = cx.secret_text(
            "authentication.basic.htpasswdSecretRef",
            SecretRef {
                name: &r.name,
                key: &r.key,
                namespace: r.namespace.as_deref(),
            },
        )?;
        Some(BasicConfig {
            htpasswd,
            access: b
                .access
                .iter()
                .map(|rule| AccessRule {
                    users: rule.users.clone(),
                    permission: rule.permission.into(),
                })
                .collect(),
        })
    });

    let jwt = a.jwt.as_ref().map(|j| {
        let providers = j
            .providers
            .iter()
            .enumerate()
            .map(|(i, pr)| compile_provider(cx, &ns, &name, i, pr))
            .collect();
        JwtConfig {
            token_sources: j.token_sources.iter().copied().map(Into::into).collect(),
            require_subject_matches_basic_user: j.require_subject_matches_basic_user,
            providers,
        }
    });

    let introspection = a
        .introspection
        .as_ref()
        .and_then(|i| compile_introspection(cx, &ns, &name, i));

    let mut smart = SmartConfig::default();
    if let Some(authz) = &spec.authorization {
        smart.patient_search = authz.smart.patient_search.into();
        smart.user_scopes = authz.smart.user_scopes.into();
        smart.reference_data = authz.smart.reference_data.into();
        if let Some(lookup) = &authz.smart.compartment_lookup {
            let field = "authorization.smart.compartmentLookup.connectionRef";
            let r = &lookup.connection_ref;
            if cx.same_namespace(field, r.namespace.as_deref()) {
                let id = format!("{ns}/{}", r.name);
                if rejected_connections.contains(&id) {
                    cx.issue(
                        field,
                        Reason::ConnectionNotAccepted,
                        format!("FhirConnection {id} is not accepted; see its status"),
                    );
                } else if !accepted_connections.contains_key(&id) {
                    cx.issue(
                        field,
                        Reason::ConnectionNotFound,
                        format!("FhirConnection {:?} not found in namespace {ns:?}", r.name),
                    );
                }
                smart.compartment_lookup = Some(CompartmentLookup { connection: id });
            }
        }
    }

    let audit = spec
        .audit
        .as_ref()
        .map(|au| compile_audit(cx, au, accepted_connections, rejected_connections));
    let smart_configuration = spec
        .smart_configuration
        .as_ref()
        .map(|sc| compile_smart_configuration(cx, &ns, &name, sc));

    if a.combine == crd::Combine::AllOf
        && (a.basic.is_none() || (a.jwt.is_none() && a.introspection.is_none()))
    {
        cx.issue(
            "authentication.combine",
            Reason::InvalidSpec,
            "AllOf needs basic and a bearer-token check (jwt or introspection) to be configured",
        );
    }
    if !cx.issues.is_empty() {
        return None;
    }
    Some(PolicyConfig {
        audit,
        smart_configuration,
        namespace: ns,
        name,
        hosts: spec.match_.hosts.clone(),
        base_path: spec.match_.base_path.clone(),
        public_paths: spec
            .public_paths
            .clone()
            .unwrap_or_else(config::default_public_paths),
        unauthenticated_access: spec.unauthenticated_access,
        authentication: AuthenticationConfig {
            combine: a.combine.into(),
            basic,
            jwt,
            introspection,
        },
        authorization: AuthorizationConfig { smart },
    })
}

fn compile_provider(
    cx: &mut Ctx<'_>,
    ns: &str,
    name: &str,
    i: usize,
    pr: &crd::JwtProvider,
) -> ProviderConfig {
    let f = |s: &str| format!("authentication.jwt.providers[{i}].{s}");
    let clock_skew_seconds = duration(cx, &f("clockSkew"), &pr.clock_skew);
    let refresh_interval_seconds =
        duration(cx, &f("jwks.refreshInterval"), &pr.jwks.refresh_interval);
    let document = pr.jwks.secret_ref.as_ref().and_then(|r| {
        cx.secret_text(
            &f("jwks.secretRef"),
            SecretRef {
                name: &r.name,
                key: &r.key,
                namespace: r.namespace.as_deref(),
            },
        )
    });
    if pr.jwks.uri.is_some() == pr.jwks.secret_ref.is_some() {
        cx.issue(
            f("jwks"),
            Reason::InvalidSpec,
            "exactly one of uri and secretRef must be set",
        );
    }
    let tls = cx.tls(
        &f("jwks.tls"),
        pr.jwks.tls.as_ref(),
        provider_ca_file(ns, name, i),
    );
    ProviderConfig {
        name: pr.name.clone(),
        issuer: pr.issuer.clone(),
        audiences: pr.audiences.clone(),
        algorithms: pr.algorithms.iter().copied().map(Into::into).collect(),
        clock_skew_seconds,
        jwks: JwksConfig {
            uri: pr.jwks.uri.clone(),
            refresh_interval_seconds,
            tls,
            document,
        },
        claims: (&pr.claims).into(),
    }
}

/// `authentication.introspection`, with the client credentials read from their Secrets; `None`
/// when one of them could not be resolved (the issue is in `cx`).
fn compile_introspection(
    cx: &mut Ctx<'_>,
    ns: &str,
    name: &str,
    i: &crd::Introspection,
) -> Option<IntrospectionConfig> {
    let f = |s: &str| format!("authentication.introspection.{s}");
    let client_id = match (&i.client_id, &i.client_id_secret_ref) {
        (Some(id), None) => Some(id.clone()),
        (None, Some(r)) => cx.credential(
            &f("clientIdSecretRef"),
            SecretRef {
                name: &r.name,
                key: &r.key,
                namespace: r.namespace.as_deref(),
            },
        ),
        _ => {
            cx.issue(
                f("clientId"),
                Reason::InvalidSpec,
                "exactly one of clientId and clientIdSecretRef must be set",
            );
            None
        }
    };
    let r = &i.client_secret_ref;
    let client_secret = cx.credential(
        &f("clientSecretRef"),
        SecretRef {
            name: &r.name,
            key: &r.key,
            namespace: r.namespace.as_deref(),
        },
    );
    let max_cache_seconds = duration(cx, &f("maxCacheDuration"), &i.max_cache_duration);
    let clock_skew_seconds = duration(cx, &f("clockSkew"), &i.clock_skew);
    let tls = cx.tls(&f("tls"), i.tls.as_ref(), introspection_ca_file(ns, name));
    Some(IntrospectionConfig {
        endpoint: i.endpoint.clone(),
        client_id: client_id?,
        client_secret: client_secret?,
        client_auth_method: i.client_auth_method.into(),
        audiences: i.audiences.clone(),
        max_cache_seconds,
        introspect_jwts: i.introspect_jwts,
        clock_skew_seconds,
        tls,
    })
}

/// `spec.audit`; the destination connection must be an accepted FhirConnection of the policy's
/// namespace.
fn compile_audit(
    cx: &mut Ctx<'_>,
    a: &crd::Audit,
    accepted_connections: &BTreeMap<String, ConnectionConfig>,
    rejected_connections: &BTreeSet<String>,
) -> config::AuditConfig {
    let mut connection = None;
    if let Some(r) = &a.connection_ref {
        let field = "audit.connectionRef";
        if cx.same_namespace(field, r.namespace.as_deref()) {
            let id = format!("{}/{}", cx.namespace, r.name);
            if rejected_connections.contains(&id) {
                cx.issue(
                    field,
                    Reason::ConnectionNotAccepted,
                    format!("FhirConnection {id} is not accepted; see its status"),
                );
            } else if !accepted_connections.contains_key(&id) {
                cx.issue(
                    field,
                    Reason::ConnectionNotFound,
                    format!(
                        "FhirConnection {:?} not found in namespace {:?}",
                        r.name, cx.namespace
                    ),
                );
            }
            connection = Some(id);
        }
    }
    config::AuditConfig {
        record: a.record.into(),
        stdout: a.stdout.unwrap_or(false),
        file: a.file.clone(),
        connection,
        queue_size: a
            .queue_size
            .map_or_else(config::default_queue_size, |n| n as usize),
        batch_size: a
            .batch_size
            .map_or_else(config::default_batch_size, |n| n as usize),
    }
}

/// `spec.smartConfiguration`, with the CA bundle of the OpenID discovery endpoint published
/// under [`discovery_ca_file`].
fn compile_smart_configuration(
    cx: &mut Ctx<'_>,
    ns: &str,
    name: &str,
    sc: &crd::SmartConfiguration,
) -> config::SmartConfigurationConfig {
    let openid_discovery = sc.openid_discovery.as_ref().map(|d| {
        let refresh_interval_seconds = match &d.refresh_interval {
            Some(s) => duration(cx, "smartConfiguration.openidDiscovery.refreshInterval", s),
            None => 3600,
        };
        let tls = cx.tls(
            "smartConfiguration.openidDiscovery.tls",
            d.tls.as_ref(),
            discovery_ca_file(ns, name),
        );
        config::OpenIdDiscovery {
            refresh_interval_seconds,
            tls,
        }
    });
    config::SmartConfigurationConfig {
        issuer: sc.issuer.clone(),
        openid_discovery,
        authorization_endpoint: sc.authorization_endpoint.clone(),
        token_endpoint: sc.token_endpoint.clone(),
        jwks_uri: sc.jwks_uri.clone(),
        registration_endpoint: sc.registration_endpoint.clone(),
        management_endpoint: sc.management_endpoint.clone(),
        introspection_endpoint: sc.introspection_endpoint.clone(),
        revocation_endpoint: sc.revocation_endpoint.clone(),
        capabilities: sc.capabilities.clone(),
        scopes: sc.scopes.clone(),
        grant_types: sc.grant_types.clone(),
        code_challenge_methods: sc.code_challenge_methods.clone(),
        token_endpoint_auth_methods: sc.token_endpoint_auth_methods.clone(),
    }
}
