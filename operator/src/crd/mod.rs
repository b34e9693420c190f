//! Layer 1, the resources: the two custom resources, `FhirSecurityPolicy` ([`policy`]) and
//! `FhirConnection` ([`connection`]) (group `fhirguard.dev`, version `v1alpha1`), the parts
//! they share (TLS, Secret references, status), and how a resource is read before it is
//! compiled ([`object`], with [`shape`] naming every malformed field). Imports nothing from
//! the rest of the crate and nothing from the compiled-config format: the conversion between
//! the two lives in [`crate::compile::convert`].
//!
//! Field names are part of the contract (docs/reference.md); doc comments here become the
//! `kubectl explain` text, so they are written for the people applying these objects.
//!
//! Cross-field rules are expressed twice: as CEL `x-kubernetes-validations` (rejected at apply
//! time on API servers that evaluate CEL, Kubernetes >= 1.25) and in [`crate::compile`], which
//! enforces the same rules for older servers that silently drop CEL from schemas.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub mod audit;
pub mod connection;
pub mod introspection;
pub mod object;
pub mod policy;
pub mod shape;
pub mod smart_configuration;

pub use audit::*;
pub use connection::*;
pub use introspection::*;
pub use policy::*;
pub use smart_configuration::*;

pub const GROUP: &str = "fhirguard.dev";

/// How a server certificate is verified.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Accept any certificate. Development only: anyone on the path can impersonate the server.
    SkipVerification,
    /// The public (Mozilla) certificate authorities.
    #[default]
    DefaultBundle,
    /// Only the CA certificates in `caBundleSecretRef`.
    CustomBundle,
}

/// TLS trust.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'CustomBundle' ? has(self.caBundleSecretRef) : !has(self.caBundleSecretRef)").message("caBundleSecretRef is required for mode CustomBundle and only allowed with it"))]
pub struct Tls {
    /// `SkipVerification`, `DefaultBundle` (default) or `CustomBundle`.
    #[serde(default)]
    pub mode: TlsMode,

    /// With `CustomBundle`: a Secret key holding PEM CA certificates. `key` defaults to `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<CaBundleSecretRef>,
}

macro_rules! secret_key_ref {
    ($name:ident, $default_fn:ident, $default_fn_name:literal, $default:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// The Secret's name.
            #[schemars(length(min = 1))]
            pub name: String,
            #[doc = concat!("The key inside the Secret (default `", $default, "`).")]
            #[serde(default = $default_fn_name)]
            pub key: String,
            /// Must be empty or this object's own namespace: references never cross namespaces.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub namespace: Option<String>,
        }

        fn $default_fn() -> String {
            $default.into()
        }
    };
}

secret_key_ref!(
    HtpasswdSecretRef,
    default_htpasswd_key,
    "default_htpasswd_key",
    "htpasswd",
    "A key in a Secret in this object's namespace."
);
secret_key_ref!(
    JwksSecretRef,
    default_jwks_key,
    "default_jwks_key",
    "jwks.json",
    "A key in a Secret in this object's namespace."
);
secret_key_ref!(
    CaBundleSecretRef,
    default_ca_key,
    "default_ca_key",
    "ca.crt",
    "A key in a Secret in this object's namespace."
);

/// A key in a Secret in this object's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// The key inside the Secret.
    #[schemars(length(min = 1))]
    pub key: String,
    /// Must be empty or this object's own namespace: references never cross namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// An object in this object's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// The object's name.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Must be empty or this object's own namespace: references never cross namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Observed state, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Accepted`: the spec is valid and every reference resolved (reason `Valid`, or why not).
    /// `Ready`: the object is part of the configuration published to the authz-service
    /// (reason `ConfigPublished`, or why not).
    #[serde(default)]
    pub conditions: Vec<Condition>,

    /// The generation of the compiled configuration that last included this object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_generation: Option<i64>,
}

/// Each CRD as `(file name in crds/, YAML document)`.
pub fn crd_documents() -> Result<Vec<(String, String)>, serde_saphyr::ser::Error> {
    use kube::CustomResourceExt;
    [FhirSecurityPolicy::crd(), FhirConnection::crd()]
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok((format!("{name}.yaml"), serde_saphyr::to_string(&crd)?))
        })
        .collect()
}

/// Both CRDs as one multi-document YAML stream, exactly what `fhirguard-operator crds` prints;
/// the files in `crds/` are these documents one per file.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for (_, doc) in crd_documents()? {
        out.push_str("---\n");
        out.push_str(&doc);
    }
    Ok(out)
}
