//! Typed validation problems, located in the compiled format's own vocabulary.
//!
//! The validator says *where* (a [`ConfigPath`]: the document, or a policy or connection by
//! index and `namespace/name`, plus a field enum) and *what* (a [`ProblemKind`]). It never
//! speaks resource vocabulary: a front end that compiled the config from something else (the
//! operator, from custom resources) maps these paths to its own fields by matching the enums,
//! so adding a field here fails to compile there until it is mapped.
//!
//! [`Problem`] is the same thing rendered for people (`object: field: message`); it is also
//! what the service reports for problems found while loading (CA files, keys), which have no
//! typed path.

use super::{FORMAT_VERSION, htpasswd};

/// One thing wrong with a config, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub at: ConfigPath,
    pub kind: ProblemKind,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.kind)
    }
}

/// A policy's or connection's identity inside the config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectId {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where in the config a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigPath {
    /// The document's `version`.
    Version,
    /// `policies[index]`, known to people as `id`.
    Policy {
        index: usize,
        id: ObjectId,
        field: PolicyField,
    },
    /// `connections[index]`, known to people as `id`.
    Connection {
        index: usize,
        id: ObjectId,
        field: ConnectionField,
    },
}

impl ConfigPath {
    /// `namespace/name` of the object, or `config` for the document itself.
    pub fn object(&self) -> String {
        match self {
            ConfigPath::Version => "config".into(),
            ConfigPath::Policy { id, .. } | ConfigPath::Connection { id, .. } => id.to_string(),
        }
    }

    /// The field inside the object (or the document), e.g. `authentication.basic.htpasswd`.
    pub fn field(&self) -> String {
        match self {
            ConfigPath::Version => "version".into(),
            ConfigPath::Policy { field, .. } => field.to_string(),
            ConfigPath::Connection { field, .. } => field.to_string(),
        }
    }
}

impl std::fmt::Display for ConfigPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object(), self.field())
    }
}

/// A field of [`super::PolicyConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyField {
    Namespace,
    Name,
    /// The host + basePath pair the policy claims, as a whole.
    Hosts,
    Host(usize),
    BasePath,
    PublicPath(usize),
    /// `authentication` as a whole.
    Authentication,
    Combine,
    Htpasswd,
    AccessUsers(usize),
    TokenSources,
    RequireSubjectMatchesBasicUser,
    /// `authentication.jwt.providers` as a whole.
    Providers,
    Provider(usize, ProviderField),
    Introspection(IntrospectionField),
    CompartmentLookupConnection,
    Audit(AuditField),
    SmartConfiguration(SmartConfigurationField),
}

/// A field of [`super::AuditConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditField {
    /// `audit` as a whole: its destinations.
    Destination,
    File,
    Connection,
    QueueSize,
    BatchSize,
}

/// A field of [`super::SmartConfigurationConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmartConfigurationField {
    /// `smartConfiguration` as a whole.
    Document,
    Issuer,
    AuthorizationEndpoint,
    TokenEndpoint,
    JwksUri,
    RegistrationEndpoint,
    ManagementEndpoint,
    IntrospectionEndpoint,
    RevocationEndpoint,
    /// `openidDiscovery` as a whole.
    OpenIdDiscovery,
    DiscoveryRefreshInterval,
    DiscoveryCaFile,
    Capability(usize),
    Scope(usize),
    GrantType(usize),
    CodeChallengeMethod(usize),
    TokenEndpointAuthMethod(usize),
}

/// A field of [`super::ProviderConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderField {
    Name,
    Issuer,
    Audiences,
    Algorithms,
    ClockSkew,
    Claim(ClaimField),
    /// `jwks` as a whole (its source).
    Jwks,
    JwksUri,
    JwksRefreshInterval,
    JwksDocument,
    JwksCaFile,
}

/// A field of [`super::IntrospectionConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionField {
    Endpoint,
    ClientId,
    ClientSecret,
    Audiences,
    MaxCacheSeconds,
    ClockSkew,
    IntrospectJwts,
    CaFile,
}

/// A field of [`super::ClaimNames`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimField {
    Scope,
    Patient,
    FhirUser,
    Subject,
}

/// A field of [`super::ConnectionConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionField {
    Namespace,
    Name,
    Url,
    /// `auth` as a whole.
    Auth,
    BasicUsername,
    OAuthTokenUrl,
    OAuthClientId,
    OAuthClientSecret,
    CaFile,
}

impl std::fmt::Display for PolicyField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyField::Namespace => f.write_str("namespace"),
            PolicyField::Name => f.write_str("name"),
            PolicyField::Hosts => f.write_str("hosts"),
            PolicyField::Host(i) => write!(f, "hosts[{i}]"),
            PolicyField::BasePath => f.write_str("basePath"),
            PolicyField::PublicPath(i) => write!(f, "publicPaths[{i}]"),
            PolicyField::Authentication => f.write_str("authentication"),
            PolicyField::Combine => f.write_str("authentication.combine"),
            PolicyField::Htpasswd => f.write_str("authentication.basic.htpasswd"),
            PolicyField::AccessUsers(i) => write!(f, "authentication.basic.access[{i}].users"),
            PolicyField::TokenSources => f.write_str("authentication.jwt.tokenSources"),
            PolicyField::RequireSubjectMatchesBasicUser => {
                f.write_str("authentication.jwt.requireSubjectMatchesBasicUser")
            }
            PolicyField::Providers => f.write_str("authentication.jwt.providers"),
            PolicyField::Provider(i, p) => write!(f, "authentication.jwt.providers[{i}].{p}"),
            PolicyField::Introspection(i) => write!(f, "authentication.introspection.{i}"),
            PolicyField::CompartmentLookupConnection => {
                f.write_str("authorization.smart.compartmentLookup.connection")
            }
            PolicyField::Audit(AuditField::Destination) => f.write_str("audit"),
            PolicyField::Audit(a) => write!(f, "audit.{a}"),
            PolicyField::SmartConfiguration(SmartConfigurationField::Document) => {
                f.write_str("smartConfiguration")
            }
            PolicyField::SmartConfiguration(s) => write!(f, "smartConfiguration.{s}"),
        }
    }
}

impl std::fmt::Display for ProviderField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProviderField::Name => f.write_str("name"),
            ProviderField::Issuer => f.write_str("issuer"),
            ProviderField::Audiences => f.write_str("audiences"),
            ProviderField::Algorithms => f.write_str("algorithms"),
            ProviderField::ClockSkew => f.write_str("clockSkewSeconds"),
            ProviderField::Claim(c) => write!(f, "claims.{c}"),
            ProviderField::Jwks => f.write_str("jwks"),
            ProviderField::JwksUri => f.write_str("jwks.uri"),
            ProviderField::JwksRefreshInterval => f.write_str("jwks.refreshIntervalSeconds"),
            ProviderField::JwksDocument => f.write_str("jwks.document"),
            ProviderField::JwksCaFile => f.write_str("jwks.tls.caFile"),
        }
    }
}

impl std::fmt::Display for IntrospectionField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IntrospectionField::Endpoint => "endpoint",
            IntrospectionField::ClientId => "clientId",
            IntrospectionField::ClientSecret => "clientSecret",
            IntrospectionField::Audiences => "audiences",
            IntrospectionField::MaxCacheSeconds => "maxCacheSeconds",
            IntrospectionField::ClockSkew => "clockSkewSeconds",
            IntrospectionField::IntrospectJwts => "introspectJwts",
            IntrospectionField::CaFile => "tls.caFile",
        })
    }
}

impl std::fmt::Display for AuditField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuditField::Destination => "destination",
            AuditField::File => "file",
            AuditField::Connection => "connection",
            AuditField::QueueSize => "queueSize",
            AuditField::BatchSize => "batchSize",
        })
    }
}

impl std::fmt::Display for SmartConfigurationField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use SmartConfigurationField as S;
        match self {
            S::Document => f.write_str("document"),
            S::Issuer => f.write_str("issuer"),
            S::AuthorizationEndpoint => f.write_str("authorizationEndpoint"),
            S::TokenEndpoint => f.write_str("tokenEndpoint"),
            S::JwksUri => f.write_str("jwksUri"),
            S::RegistrationEndpoint => f.write_str("registrationEndpoint"),
            S::ManagementEndpoint => f.write_str("managementEndpoint"),
            S::IntrospectionEndpoint => f.write_str("introspectionEndpoint"),
            S::RevocationEndpoint => f.write_str("revocationEndpoint"),
            S::OpenIdDiscovery => f.write_str("openidDiscovery"),
            S::DiscoveryRefreshInterval => f.write_str("openidDiscovery.refreshIntervalSeconds"),
            S::DiscoveryCaFile => f.write_str("openidDiscovery.tls.caFile"),
            S::Capability(i) => write!(f, "capabilities[{i}]"),
            S::Scope(i) => write!(f, "scopes[{i}]"),
            S::GrantType(i) => write!(f, "grantTypes[{i}]"),
            S::CodeChallengeMethod(i) => write!(f, "codeChallengeMethods[{i}]"),
            S::TokenEndpointAuthMethod(i) => write!(f, "tokenEndpointAuthMethods[{i}]"),
        }
    }
}

impl std::fmt::Display for ClaimField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClaimField::Scope => "scope",
            ClaimField::Patient => "patient",
            ClaimField::FhirUser => "fhirUser",
            ClaimField::Subject => "subject",
        })
    }
}

impl std::fmt::Display for ConnectionField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectionField::Namespace => "namespace",
            ConnectionField::Name => "name",
            ConnectionField::Url => "url",
            ConnectionField::Auth => "auth",
            ConnectionField::BasicUsername => "auth.basic.username",
            ConnectionField::OAuthTokenUrl => "auth.oauth.tokenUrl",
            ConnectionField::OAuthClientId => "auth.oauth.clientId",
            ConnectionField::OAuthClientSecret => "auth.oauth.clientSecret",
            ConnectionField::CaFile => "tls.caFile",
        })
    }
}

/// What is wrong. The Display text is the message users read, after the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    #[error("format version {found} is not supported (this build reads {FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("two policies have this name")]
    DuplicatePolicy,
    #[error("two connections have this name")]
    DuplicateConnection,
    #[error("must be non-empty and contain no '/'")]
    BadObjectName,
    #[error("host {host:?} with basePath {base_path:?} is already claimed by {by}")]
    HostClaimed {
        host: String,
        base_path: String,
        by: ObjectId,
    },
    #[error("{0}")]
    Path(PathProblem),
    #[error("{host:?} is not a host name (leave hosts empty to match any host)")]
    NotAHostName { host: String },
    #[error(
        "none of basic, jwt and introspection is configured, so no request could ever be authenticated"
    )]
    NoCredentials,
    #[error("AllOf needs basic and a bearer-token check (jwt or introspection) to be configured")]
    AllOfNeedsBoth,
    #[error("{0}")]
    Htpasswd(htpasswd::LineError),
    #[error("the htpasswd file holds no users")]
    NoHtpasswdUsers,
    #[error("must name at least one user or \"*\"")]
    NoUsers,
    #[error("user {user:?} is not in the htpasswd file")]
    UnknownUser { user: String },
    #[error("only meaningful with combine: AllOf")]
    OnlyWithAllOf,
    #[error("must name at least one source")]
    NoTokenSources,
    #[error("must list at least one provider")]
    NoProviders,
    #[error("must be non-empty and unique")]
    NameNotUnique,
    #[error("must not be empty")]
    Empty,
    #[error("issuer {issuer:?} is used by two providers; tokens could not be told apart")]
    SharedIssuer { issuer: String },
    #[error(
        "must list at least one non-empty audience; tokens minted for another service must not be accepted"
    )]
    NoAudiences,
    #[error("must list at least one algorithm")]
    NoAlgorithms,
    #[error("must be at most 10m")]
    ClockSkewTooLarge,
    #[error("must be at most 1h: a revoked token must stop working within the hour")]
    CacheTooLong,
    #[error("only meaningful when jwt providers are configured")]
    OnlyWithJwtProviders,
    #[error("exactly one of uri and document must be set")]
    JwksSourceCount,
    #[error("must be at least 10s")]
    RefreshTooShort,
    #[error("{0}")]
    Url(UrlProblem),
    #[error("{0}")]
    Jwks(JwksProblem),
    #[error("required when mode is CustomBundle")]
    CaFileRequired,
    #[error("only allowed when mode is CustomBundle")]
    CaFileNotAllowed,
    #[error("{file:?} must be a plain file name inside the config directory")]
    CaFileNotPlain { file: String },
    #[error("at most one of basic and oauth: HTTP has one Authorization header")]
    BasicAndOAuth,
    #[error("username must be non-empty and contain no ':'")]
    BadUsername,
    #[error("the secret is empty")]
    EmptySecret,
    #[error("connection {connection:?} does not exist")]
    UnknownConnection { connection: String },
    #[error("exactly one destination (stdout, file or a connection) must be set")]
    AuditDestinationCount,
    #[error("{file:?} must be an absolute path to a file")]
    NotAnAbsoluteFile { file: String },
    #[error("must be between {min} and {max}")]
    OutOfRange { min: usize, max: usize },
    #[error(
        "a SMART discovery document needs a bearer-token check (jwt or introspection): without bearer tokens no SMART app could use it"
    )]
    DiscoveryNeedsBearer,
    #[error("{path} must stay in publicPaths: apps fetch it without credentials")]
    DiscoveryNotPublic { path: String },
    #[error("needs issuer: the document is fetched from [issuer]/.well-known/openid-configuration")]
    DiscoveryNeedsIssuer,
    #[error("required (SMART App Launch 2.2) unless openidDiscovery finds it")]
    TokenEndpointRequired,
    #[error("plain must not be offered (SMART App Launch 2.2 requires S256 and forbids plain)")]
    PlainCodeChallenge,
    #[error("{item:?} must be one non-empty word")]
    NotOneWord { item: String },
}

/// Why a path that fhirguard compares literally is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    #[error("must start with '/'")]
    NotAbsolute,
    #[error("must not contain '?', '#', '%', '\\', spaces or control characters")]
    ForbiddenCharacter,
    #[error("must not end with '/'")]
    TrailingSlash,
    #[error("must not contain '//'")]
    EmptySegment,
    #[error("must not contain '.' or '..' segments")]
    DotSegment,
}

/// Why a URL is refused. Never echoes a URL that carries credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    #[error("{url:?} is not a URL: {error}")]
    NotAUrl { url: String, error: String },
    #[error("{url:?} must use https")]
    NotHttps { url: String },
    #[error("{url:?} must be an http(s) URL with a host")]
    NotHttp { url: String },
    #[error("{url:?} has no host")]
    NoHost { url: String },
    #[error("must not carry credentials in the URL")]
    Credentials,
}

/// Why a JWKS document is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksProblem {
    #[error("not a JSON document: {0}")]
    NotJson(String),
    #[error("not a JWKS: no \"keys\" array")]
    NoKeysArray,
    #[error("the JWKS holds no keys")]
    NoKeys,
    #[error("key {0} contains private or symmetric key material; publish only public keys")]
    PrivateKeyMaterial(usize),
}

/// One thing wrong with a config, rendered for people: `object: field: message`.
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

impl From<&ConfigProblem> for Problem {
    fn from(p: &ConfigProblem) -> Self {
        Problem {
            object: p.at.object(),
            field: p.at.field(),
            message: p.kind.to_string(),
        }
    }
}
