//! The config validator's typed problems, said in the resources' words: each config field maps
//! to the CRD field a user edits (`authentication.basic.htpasswd` is filled from
//! `spec.authentication.basic.htpasswdSecretRef`), and each problem kind to the `Accepted`
//! reason. Both are exhaustive matches, so a field or kind added to the format fails to compile
//! here until it is given a place in the resources.

use fhirguard_authz::config::{
    AuditField, ClaimField, ConfigPath, ConfigProblem, ConnectionField, IntrospectionField,
    PolicyField, ProblemKind, ProviderField, SmartConfigurationField,
};

use super::{Issue, Reason};
use crate::crd::{FhirConnectionSpec, FhirSecurityPolicySpec};

/// The CRD field (relative to `spec`, or under `metadata.`) that a policy config field comes
/// from. The introspection client id may come from either of two fields, so the spec says
/// which.
pub fn policy_field(field: PolicyField, spec: Option<&FhirSecurityPolicySpec>) -> String {
    match field {
        PolicyField::Namespace => "metadata.namespace".into(),
        PolicyField::Name => "metadata.name".into(),
        PolicyField::Hosts => "match".into(),
        PolicyField::Host(i) => format!("match.hosts[{i}]"),
        PolicyField::BasePath => "match.basePath".into(),
        PolicyField::PublicPath(i) => format!("publicPaths[{i}]"),
        PolicyField::Authentication => "authentication".into(),
        PolicyField::Combine => "authentication.combine".into(),
        PolicyField::Htpasswd => "authentication.basic.htpasswdSecretRef".into(),
        PolicyField::AccessUsers(i) => format!("authentication.basic.access[{i}].users"),
        PolicyField::TokenSources => "authentication.jwt.tokenSources".into(),
        PolicyField::RequireSubjectMatchesBasicUser => {
            "authentication.jwt.requireSubjectMatchesBasicUser".into()
        }
        PolicyField::Providers => "authentication.jwt.providers".into(),
        PolicyField::Provider(i, f) => {
            format!("authentication.jwt.providers[{i}].{}", provider_field(f))
        }
        PolicyField::Introspection(f) => format!(
            "authentication.introspection.{}",
            introspection_field(f, spec)
        ),
        PolicyField::CompartmentLookupConnection => {
            "authorization.smart.compartmentLookup.connectionRef".into()
        }
        PolicyField::Audit(f) => match f {
            AuditField::Destination => "audit".into(),
            AuditField::File => "audit.file".into(),
            AuditField::Connection => "audit.connectionRef".into(),
            AuditField::QueueSize => "audit.queueSize".into(),
            AuditField::BatchSize => "audit.batchSize".into(),
        },
        PolicyField::SmartConfiguration(f) => smart_configuration_field(f),
    }
}

fn smart_configuration_field(field: SmartConfigurationField) -> String {
    use SmartConfigurationField as S;
    let sub = match field {
        S::Document => return "smartConfiguration".into(),
        S::Issuer => "issuer".into(),
        S::AuthorizationEndpoint => "authorizationEndpoint".into(),
        S::TokenEndpoint => "tokenEndpoint".into(),
        S::JwksUri => "jwksUri".into(),
        S::RegistrationEndpoint => "registrationEndpoint".into(),
        S::ManagementEndpoint => "managementEndpoint".into(),
        S::IntrospectionEndpoint => "introspectionEndpoint".into(),
        S::RevocationEndpoint => "revocationEndpoint".into(),
        S::OpenIdDiscovery => "openidDiscovery".into(),
        S::DiscoveryRefreshInterval => "openidDiscovery.refreshInterval".into(),
        S::DiscoveryCaFile => "openidDiscovery.tls.caBundleSecretRef".into(),
        S::Capability(i) => format!("capabilities[{i}]"),
        S::Scope(i) => format!("scopes[{i}]"),
        S::GrantType(i) => format!("grantTypes[{i}]"),
        S::CodeChallengeMethod(i) => format!("codeChallengeMethods[{i}]"),
        S::TokenEndpointAuthMethod(i) => format!("tokenEndpointAuthMethods[{i}]"),
    };
    format!("smartConfiguration.{sub}")
}

fn provider_field(field: ProviderField) -> String {
    match field {
        ProviderField::Name => "name".into(),
        ProviderField::Issuer => "issuer".into(),
        ProviderField::Audiences => "audiences".into(),
        ProviderField::Algorithms => "algorithms".into(),
        ProviderField::ClockSkew => "clockSkew".into(),
        ProviderField::Claim(c) => format!(
            "claims.{}",
            match c {
                ClaimField::Scope => "scope",
                ClaimField::Patient => "patient",
                ClaimField::FhirUser => "fhirUser",
                ClaimField::Subject => "subject",
            }
        ),
        ProviderField::Jwks => "jwks".into(),
        ProviderField::JwksUri => "jwks.uri".into(),
        ProviderField::JwksRefreshInterval => "jwks.refreshInterval".into(),
        ProviderField::JwksDocument => "jwks.secretRef".into(),
        ProviderField::JwksCaFile => "jwks.tls.caBundleSecretRef".into(),
    }
}

fn introspection_field(
    field: IntrospectionField,
    spec: Option<&FhirSecurityPolicySpec>,
) -> &'static str {
    match field {
        IntrospectionField::Endpoint => "endpoint",
        IntrospectionField::ClientId => {
            let from_secret = spec
                .and_then(|s| s.authentication.introspection.as_ref())
                .is_some_and(|i| i.client_id_secret_ref.is_some());
            if from_secret {
                "clientIdSecretRef"
            } else {
                "clientId"
            }
        }
        IntrospectionField::ClientSecret => "clientSecretRef",
        IntrospectionField::Audiences => "audiences",
        IntrospectionField::MaxCacheSeconds => "maxCacheDuration",
        IntrospectionField::ClockSkew => "clockSkew",
        IntrospectionField::IntrospectJwts => "introspectJwts",
        IntrospectionField::CaFile => "tls.caBundleSecretRef",
    }
}

/// The CRD field that a connection config field comes from. The client id may come from
/// either of two fields, so the spec says which.
pub fn connection_field(field: ConnectionField, spec: Option<&FhirConnectionSpec>) -> String {
    match field {
        ConnectionField::Namespace => "metadata.namespace".into(),
        ConnectionField::Name => "metadata.name".into(),
        ConnectionField::Url => "url".into(),
        ConnectionField::Auth => "auth".into(),
        ConnectionField::BasicUsername => "auth.basic.secretRef".into(),
        ConnectionField::OAuthTokenUrl => "auth.oauth.tokenUrl".into(),
        ConnectionField::OAuthClientId => {
            let from_secret = spec
                .and_then(|s| s.auth.as_ref())
                .and_then(|a| a.oauth.as_ref())
                .is_some_and(|o| o.client_id_secret_ref.is_some());
            if from_secret {
                "auth.oauth.clientIdSecretRef".into()
            } else {
                "auth.oauth.clientId".into()
            }
        }
        ConnectionField::OAuthClientSecret => "auth.oauth.clientSecretRef".into(),
        ConnectionField::CaFile => "tls.caBundleSecretRef".into(),
    }
}

/// The `Accepted` reason for a validator problem.
pub fn reason(kind: &ProblemKind) -> Reason {
    match kind {
        ProblemKind::Htpasswd(_) | ProblemKind::NoHtpasswdUsers => Reason::InvalidHtpasswd,
        ProblemKind::Jwks(_) => Reason::InvalidJwks,
        ProblemKind::Url(_) => Reason::InvalidUrl,
        ProblemKind::HostClaimed { .. } => Reason::HostConflict,
        ProblemKind::UnknownConnection { .. } => Reason::ConnectionNotFound,
        ProblemKind::UnsupportedVersion { .. }
        | ProblemKind::DuplicatePolicy
        | ProblemKind::DuplicateConnection
        | ProblemKind::BadObjectName
        | ProblemKind::Path(_)
        | ProblemKind::NotAHostName { .. }
        | ProblemKind::NoCredentials
        | ProblemKind::AllOfNeedsBoth
        | ProblemKind::NoUsers
        | ProblemKind::UnknownUser { .. }
        | ProblemKind::OnlyWithAllOf
        | ProblemKind::NoTokenSources
        | ProblemKind::NoProviders
        | ProblemKind::NameNotUnique
        | ProblemKind::Empty
        | ProblemKind::SharedIssuer { .. }
        | ProblemKind::NoAudiences
        | ProblemKind::NoAlgorithms
        | ProblemKind::ClockSkewTooLarge
        | ProblemKind::CacheTooLong
        | ProblemKind::OnlyWithJwtProviders
        | ProblemKind::JwksSourceCount
        | ProblemKind::RefreshTooShort
        | ProblemKind::CaFileRequired
        | ProblemKind::CaFileNotAllowed
        | ProblemKind::CaFileNotPlain { .. }
        | ProblemKind::BasicAndOAuth
        | ProblemKind::BadUsername
        | ProblemKind::EmptySecret
        | ProblemKind::AuditDestinationCount
        | ProblemKind::NotAnAbsoluteFile { .. }
        | ProblemKind::OutOfRange { .. }
        | ProblemKind::DiscoveryNeedsBearer
        | ProblemKind::DiscoveryNotPublic { .. }
        | ProblemKind::DiscoveryNeedsIssuer
        | ProblemKind::TokenEndpointRequired
        | ProblemKind::PlainCodeChallenge
        | ProblemKind::NotOneWord { .. } => Reason::InvalidSpec,
    }
}

/// The resource whose compiled form is being validated.
#[derive(Clone, Copy)]
pub enum Spec<'a> {
    Policy(&'a FhirSecurityPolicySpec),
    Connection(&'a FhirConnectionSpec),
}

/// A validator problem as an issue on `spec`'s resource, or `None` when it is about another
/// object of the config (or the document).
pub fn issue(problem: &ConfigProblem, spec: Spec<'_>) -> Option<Issue> {
    let field = match (&problem.at, spec) {
        (ConfigPath::Policy { field, .. }, Spec::Policy(s)) => policy_field(*field, Some(s)),
        (ConfigPath::Connection { field, .. }, Spec::Connection(s)) => {
            connection_field(*field, Some(s))
        }
        (ConfigPath::Policy { .. } | ConfigPath::Connection { .. } | ConfigPath::Version, _) => {
            return None;
        }
    };
    Some(Issue {
        field,
        reason: reason(&problem.kind),
        message: problem.kind.to_string(),
    })
}

/// Adds the validator's problems about the object that was validated (index 0 of its kind, as
/// each object is validated alone), unless compile already reported a problem at the same
/// field: it knows more, e.g. which Secret.
pub(super) fn merge(issues: &mut Vec<Issue>, problems: &[ConfigProblem], spec: Spec<'_>) {
    let known: Vec<String> = issues.iter().map(|i| i.field.clone()).collect();
    let own = problems.iter().filter(|p| {
        matches!(
            (&p.at, spec),
            (ConfigPath::Policy { index: 0, .. }, Spec::Policy(_))
                | (ConfigPath::Connection { index: 0, .. }, Spec::Connection(_))
        )
    });
    for issue in own.filter_map(|p| issue(p, spec)) {
        if !known.contains(&issue.field) {
            issues.push(issue);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use fhirguard_authz::config::{JwksProblem, ObjectId};

    fn connection(oauth: &str) -> FhirConnectionSpec {
        serde_json::from_value(serde_json::json!({
            "url": "https://x.example/fhir",
            "auth": {"oauth": serde_json::from_str::<serde_json::Value>(oauth).unwrap()},
        }))
        .unwrap()
    }

    #[test]
    fn format_fields_map_to_the_resource_fields_they_were_compiled_from() {
        let jwks = ConfigProblem {
            at: ConfigPath::Policy {
                index: 0,
                id: ObjectId {
                    namespace: "a".into(),
                    name: "p".into(),
                },
                field: PolicyField::Provider(2, ProviderField::JwksDocument),
            },
            kind: ProblemKind::Jwks(JwksProblem::NoKeys),
        };
        assert_eq!(
            jwks.to_string(),
            "a/p: authentication.jwt.providers[2].jwks.document: the JWKS holds no keys"
        );
        let spec: FhirSecurityPolicySpec = serde_json::from_value(serde_json::json!({
            "match": {"basePath": "/fhir"},
        }))
        .unwrap();
        assert_eq!(
            issue(&jwks, Spec::Policy(&spec)),
            Some(Issue {
                field: "authentication.jwt.providers[2].jwks.secretRef".into(),
                reason: Reason::InvalidJwks,
                message: "the JWKS holds no keys".into(),
            })
        );
        // A problem about a policy is not an issue of a connection.
        let other = connection(
            r#"{"tokenUrl": "https://t", "clientId": "x", "clientSecretRef": {"name": "s", "key": "k"}}"#,
        );
        assert_eq!(issue(&jwks, Spec::Connection(&other)), None);
    }

    #[test]
    fn introspection_fields_map_to_the_resource_fields_they_were_compiled_from() {
        let spec = |client: &str| -> FhirSecurityPolicySpec {
            serde_json::from_value(serde_json::json!({
                "match": {"basePath": "/fhir"},
                "authentication": {"introspection": serde_json::from_str::<serde_json::Value>(&format!(
                    r#"{{"endpoint": "https://as/i", {client}, "clientSecretRef": {{"name": "s", "key": "k"}}, "audiences": ["a"]}}"#
                )).unwrap()},
            }))
            .unwrap()
        };
        let literal = spec(r#""clientId": """#);
        let from_secret = spec(r#""clientIdSecretRef": {"name": "s", "key": "id"}"#);
        let f = |i| PolicyField::Introspection(i);
        let at = |i, s| policy_field(f(i), Some(s));
        assert_eq!(
            at(IntrospectionField::ClientId, &literal),
            "authentication.introspection.clientId"
        );
        assert_eq!(
            at(IntrospectionField::ClientId, &from_secret),
            "authentication.introspection.clientIdSecretRef"
        );
        for (field, crd) in [
            (IntrospectionField::Endpoint, "endpoint"),
            (IntrospectionField::ClientSecret, "clientSecretRef"),
            (IntrospectionField::Audiences, "audiences"),
            (IntrospectionField::MaxCacheSeconds, "maxCacheDuration"),
            (IntrospectionField::ClockSkew, "clockSkew"),
            (IntrospectionField::IntrospectJwts, "introspectJwts"),
            (IntrospectionField::CaFile, "tls.caBundleSecretRef"),
        ] {
            assert_eq!(
                at(field, &literal),
                format!("authentication.introspection.{crd}")
            );
        }
        assert_eq!(reason(&ProblemKind::CacheTooLong), Reason::InvalidSpec);
    }

    #[test]
    fn the_client_id_is_named_where_the_user_gave_it() {
        let literal = connection(
            r#"{"tokenUrl": "https://t", "clientId": "", "clientSecretRef": {"name": "s", "key": "k"}}"#,
        );
        let from_secret = connection(
            r#"{"tokenUrl": "https://t", "clientIdSecretRef": {"name": "s", "key": "id"}, "clientSecretRef": {"name": "s", "key": "k"}}"#,
        );
        let f = ConnectionField::OAuthClientId;
        assert_eq!(connection_field(f, Some(&literal)), "auth.oauth.clientId");
        assert_eq!(
            connection_field(f, Some(&from_secret)),
            "auth.oauth.clientIdSecretRef"
        );
    }

    /// Whether `path` (dots, `[i]` for list items) names a field of the policy CRD's schema.
    fn in_policy_schema(path: &str) -> bool {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(crate::crd::FhirSecurityPolicy::crd()).unwrap();
        let mut node =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        for part in path.split('.') {
            let (name, item) = match part.split_once('[') {
                Some((n, _)) => (n, true),
                None => (part, false),
            };
            node = &node["properties"][name];
            if item {
                node = &node["items"];
            }
            if node.is_null() {
                return false;
            }
        }
        true
    }

    #[test]
    fn audit_and_discovery_fields_map_to_fields_of_the_policy_resource() {
        use SmartConfigurationField as S;
        let table = [
            (PolicyField::Audit(AuditField::Destination), "audit"),
            (PolicyField::Audit(AuditField::File), "audit.file"),
            (
                PolicyField::Audit(AuditField::Connection),
                "audit.connectionRef",
            ),
            (PolicyField::Audit(AuditField::QueueSize), "audit.queueSize"),
            (PolicyField::Audit(AuditField::BatchSize), "audit.batchSize"),
            (
                PolicyField::SmartConfiguration(S::Document),
                "smartConfiguration",
            ),
            (
                PolicyField::SmartConfiguration(S::Issuer),
                "smartConfiguration.issuer",
            ),
            (
                PolicyField::SmartConfiguration(S::AuthorizationEndpoint),
                "smartConfiguration.authorizationEndpoint",
            ),
            (
                PolicyField::SmartConfiguration(S::TokenEndpoint),
                "smartConfiguration.tokenEndpoint",
            ),
            (
                PolicyField::SmartConfiguration(S::JwksUri),
                "smartConfiguration.jwksUri",
            ),
            (
                PolicyField::SmartConfiguration(S::RegistrationEndpoint),
                "smartConfiguration.registrationEndpoint",
            ),
            (
                PolicyField::SmartConfiguration(S::ManagementEndpoint),
                "smartConfiguration.managementEndpoint",
            ),
            (
                PolicyField::SmartConfiguration(S::IntrospectionEndpoint),
                "smartConfiguration.introspectionEndpoint",
            ),
            (
                PolicyField::SmartConfiguration(S::RevocationEndpoint),
                "smartConfiguration.revocationEndpoint",
            ),
            (
                PolicyField::SmartConfiguration(S::OpenIdDiscovery),
                "smartConfiguration.openidDiscovery",
            ),
            (
                PolicyField::SmartConfiguration(S::DiscoveryRefreshInterval),
                "smartConfiguration.openidDiscovery.refreshInterval",
            ),
            (
                PolicyField::SmartConfiguration(S::DiscoveryCaFile),
                "smartConfiguration.openidDiscovery.tls.caBundleSecretRef",
            ),
            (
                PolicyField::SmartConfiguration(S::Capability(1)),
                "smartConfiguration.capabilities[1]",
            ),
            (
                PolicyField::SmartConfiguration(S::Scope(0)),
                "smartConfiguration.scopes[0]",
            ),
            (
                PolicyField::SmartConfiguration(S::GrantType(2)),
                "smartConfiguration.grantTypes[2]",
            ),
            (
                PolicyField::SmartConfiguration(S::CodeChallengeMethod(0)),
                "smartConfiguration.codeChallengeMethods[0]",
            ),
            (
                PolicyField::SmartConfiguration(S::TokenEndpointAuthMethod(3)),
                "smartConfiguration.tokenEndpointAuthMethods[3]",
            ),
        ];
        for (field, crd) in table {
            assert_eq!(policy_field(field, None), crd);
            assert!(
                in_policy_schema(crd),
                "{crd} is not a field of FhirSecurityPolicy"
            );
        }
        assert!(!in_policy_schema("audit.connection"));
        assert_eq!(
            reason(&ProblemKind::PlainCodeChallenge),
            Reason::InvalidSpec
        );
    }
}
