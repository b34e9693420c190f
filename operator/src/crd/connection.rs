//! `FhirConnection`: how workloads reach a FHIR server that someone else runs.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{LocalObjectRef, ObjectStatus, SecretKeyRef, Tls};
/// How workloads reach a FHIR server that someone else runs: the credentials fhirguard injects
/// into outbound requests and how the server's TLS certificate is trusted.
///
/// An Envoy route names the connection with the context extension
/// `fhirguard.dev/connection: <namespace>/<name>`; fhirguard then sets the request's
/// Authorization header (Basic, or Bearer with an OAuth2 client-credentials token it keeps
/// fresh).
// Several printer columns share `type_ = "string"`; that is not a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fhirguard.dev",
    version = "v1alpha1",
    kind = "FhirConnection",
    plural = "fhirconnections",
    singular = "fhirconnection",
    shortname = "fconn",
    category = "fhirguard",
    namespaced,
    status = "ObjectStatus",
    doc = "FhirConnection describes how workloads reach another organisation's FHIR server: the credentials fhirguard injects (Basic or OAuth2 client credentials) and how its TLS certificate is trusted.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct FhirConnectionSpec {
    /// The FHIR base URL, e.g. `https://partner.example.org/fhir/r4`.
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,

    /// Credentials injected into outbound requests: at most one of `basic` and `oauth`, since
    /// HTTP has one Authorization header. Without it requests are forwarded without credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ConnectionAuth>,

    /// How the server's certificate (and the token endpoint's) is verified. Default: public CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
}

/// Outbound credentials.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.basic) && has(self.oauth))").message("at most one of basic and oauth: HTTP has one Authorization header"))]
pub struct ConnectionAuth {
    /// HTTP Basic credentials from a Secret with the keys `username` and `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<ConnectionBasic>,

    /// An OAuth2 client (client-credentials grant, RFC 6749 section 4.4). Tokens are fetched,
    /// cached and refreshed before they expire (and at least hourly) with no further settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<OAuthClient>,
}

/// Basic credentials for a connection.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionBasic {
    /// A Secret in this namespace with the keys `username` and `password`.
    pub secret_ref: LocalObjectRef,
}

/// How the client authenticates to the token endpoint.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ClientAuthMethod {
    /// HTTP Basic with the client id and secret (RFC 6749 section 2.3.1; the default).
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// An OAuth2 client-credentials client.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientId) != has(self.clientIdSecretRef)").message("exactly one of clientId and clientIdSecretRef must be set"))]
pub struct OAuthClient {
    /// The token endpoint, an HTTPS URL.
    #[schemars(regex(pattern = r"^https://"))]
    pub token_url: String,

    /// The client id, given literally ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,

    /// ... or read from a Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_secret_ref: Option<SecretKeyRef>,

    /// The Secret key holding the client secret.
    pub client_secret_ref: SecretKeyRef,

    /// `ClientSecretBasic` (default) or `ClientSecretPost`.
    #[serde(default)]
    pub client_auth_method: ClientAuthMethod,

    /// Scopes to request, e.g. `["system/*.rs"]`.
    #[serde(default)]
    pub scopes: Vec<String>,

    /// Sent as the `audience` form parameter when set (some servers require it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,

    /// More form parameters for the token request, e.g. `resource`.
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
}
