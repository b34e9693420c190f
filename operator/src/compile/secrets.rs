//! Reading what a resource references: which Secrets (for the controller to fetch), and their
//! values during a compile, with every missing Secret, key or malformed CA bundle recorded as
//! an issue on the field that named it.

use std::collections::{BTreeMap, BTreeSet};

use fhirguard_authz::config::{self, TlsConfig};
use k8s_openapi::api::core::v1::Secret;

use super::{Issue, ObjectKey, Reason};
use crate::crd::object::Loaded;
use crate::crd::{self, FhirConnection, FhirSecurityPolicy};

/// Secret contents by (namespace, name): key → bytes. Only what the controller could read.
pub type Secrets = BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>;

/// A Secret's keys as the API server would store them: `stringData` wins over `data`.
pub fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
    let mut out: BTreeMap<String, Vec<u8>> = s
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in s.string_data.iter().flatten() {
        out.insert(k.clone(), v.clone().into_bytes());
    }
    out
}

/// The Secrets (namespace, name) that these objects reference. Cross-namespace references are
/// never followed, so they are not listed: a policy cannot make the operator read, let alone
/// publish, another namespace's Secret.
pub fn referenced_secrets(
    policies: &[Loaded<FhirSecurityPolicy>],
    connections: &[Loaded<FhirConnection>],
) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    // Objects with shape problems are compiled for diagnostics too, so their Secrets count.
    for (ns, p) in policies
        .iter()
        .filter_map(|l| Some((l.namespace(), l.object.as_ref()?)))
    {
        let mut add = |name: &str, ref_ns: &Option<String>| {
            if ref_ns.as_deref().is_none_or(|n| n == ns) {
                out.insert((ns.clone(), name.to_string()));
            }
        };
        if let Some(b) = &p.spec.authentication.basic {
            add(
                &b.htpasswd_secret_ref.name,
                &b.htpasswd_secret_ref.namespace,
            );
        }
        if let Some(i) = &p.spec.authentication.introspection {
            add(&i.client_secret_ref.name, &i.client_secret_ref.namespace);
            if let Some(r) = &i.client_id_secret_ref {
                add(&r.name, &r.namespace);
            }
            if let Some(r) = i.tls.as_ref().and_then(|t| t.ca_bundle_secret_ref.as_ref()) {
                add(&r.name, &r.namespace);
            }
        }
        if let Some(r) = p
            .spec
            .smart_configuration
            .as_ref()
            .and_then(|s| s.openid_discovery.as_ref())
            .and_then(|d| d.tls.as_ref())
            .and_then(|t| t.ca_bundle_secret_ref.as_ref())
        {
            add(&r.name, &r.namespace);
        }
        if let Some(j) = &p.spec.authentication.jwt {
            for pr in &j.providers {
                if let Some(r) = &pr.jwks.secret_ref {
                    add(&r.name, &r.namespace);
                }
                if let Some(r) = pr
                    .jwks
                    .tls
                    .as_ref()
                    .and_then(|t| t.ca_bundle_secret_ref.as_ref())
                {
                    add(&r.name, &r.namespace);
                }
            }
        }
    }
    for (ns, c) in connections
        .iter()
        .filter_map(|l| Some((l.namespace(), l.object.as_ref()?)))
    {
        let mut add = |name: &str, ref_ns: &Option<String>| {
            if ref_ns.as_deref().is_none_or(|n| n == ns) {
                out.insert((ns.clone(), name.to_string()));
            }
        };
        if let Some(auth) = &c.spec.auth {
            if let Some(b) = &auth.basic {
                add(&b.secret_ref.name, &b.secret_ref.namespace);
            }
            if let Some(o) = &auth.oauth {
                add(&o.client_secret_ref.name, &o.client_secret_ref.namespace);
                if let Some(r) = &o.client_id_secret_ref {
                    add(&r.name, &r.namespace);
                }
            }
        }
        if let Some(r) = c
            .spec
            .tls
            .as_ref()
            .and_then(|t| t.ca_bundle_secret_ref.as_ref())
        {
            add(&r.name, &r.namespace);
        }
    }
    out
}

/// Per-object compile state: where issues and CA files collect.
pub(super) struct Ctx<'a> {
    pub(super) namespace: String,
    secrets: &'a Secrets,
    pub(super) issues: Vec<Issue>,
    pub(super) files: BTreeMap<String, Vec<u8>>,
}

/// The parts of any of the CRDs' Secret references.
pub(super) struct SecretRef<'r> {
    pub(super) name: &'r str,
    pub(super) key: &'r str,
    pub(super) namespace: Option<&'r str>,
}

impl<'a> Ctx<'a> {
    pub(super) fn new(key: &ObjectKey, secrets: &'a Secrets) -> Self {
        Ctx {
            namespace: key.namespace.clone(),
            secrets,
            issues: Vec::new(),
            files: BTreeMap::new(),
        }
    }

    pub(super) fn issue(
        &mut self,
        field: impl Into<String>,
        reason: Reason,
        message: impl Into<String>,
    ) {
        self.issues.push(Issue {
            field: field.into(),
            reason,
            message: message.into(),
        });
    }

    /// References never cross namespaces (SPEC): a `namespace` other than our own is refused
    /// rather than silently ignored, so the user sees why the object is not used.
    pub(super) fn same_namespace(&mut self, field: &str, namespace: Option<&str>) -> bool {
        match namespace {
            Some(ns) if !ns.is_empty() && ns != self.namespace => {
                self.issue(
                    format!("{field}.namespace"),
                    Reason::CrossNamespaceReference,
                    format!(
                        "references namespace {ns:?}, but references must stay in this object's namespace {:?}",
                        self.namespace
                    ),
                );
                false
            }
            _ => true,
        }
    }

    pub(super) fn secret_bytes(&mut self, field: &str, r: SecretRef<'_>) -> Option<Vec<u8>> {
        if !self.same_namespace(field, r.namespace) {
            return None;
        }
        let Some(data) = self
            .secrets
            .get(&(self.namespace.clone(), r.name.to_string()))
        else {
            self.issue(
                field,
                Reason::SecretNotFound,
                format!(
                    "Secret {:?} not found in namespace {:?}",
                    r.name, self.namespace
                ),
            );
            return None;
        };
        match data.get(r.key) {
            Some(v) => Some(v.clone()),
            None => {
                let keys: Vec<&str> = data.keys().map(String::as_str).collect();
                self.issue(
                    field,
                    Reason::SecretKeyNotFound,
                    format!(
                        "Secret {:?} has no key {:?} (keys present: {})",
                        r.name,
                        r.key,
                        if keys.is_empty() {
                            "none".to_string()
                        } else {
                            keys.join(", ")
                        }
                    ),
                );
                None
            }
        }
    }

    pub(super) fn secret_text(&mut self, field: &str, r: SecretRef<'_>) -> Option<String> {
        let name = r.name.to_string();
        let key = r.key.to_string();
        let bytes = self.secret_bytes(field, r)?;
        match String::from_utf8(bytes) {
            Ok(s) => Some(s),
            Err(_) => {
                self.issue(
                    field,
                    Reason::InvalidSpec,
                    format!("Secret {name:?} key {key:?} is not UTF-8 text"),
                );
                None
            }
        }
    }

    /// A credential from a Secret; one trailing newline is dropped because
    /// `kubectl create secret --from-file` keeps the file's final newline.
    pub(super) fn credential(&mut self, field: &str, r: SecretRef<'_>) -> Option<String> {
        let s = self.secret_text(field, r)?;
        let s = s
            .strip_suffix("\r\n")
            .or_else(|| s.strip_suffix('\n'))
            .unwrap_or(&s);
        Some(s.to_string())
    }

    pub(super) fn tls(
        &mut self,
        field: &str,
        tls: Option<&crd::Tls>,
        file_name: String,
    ) -> TlsConfig {
        let Some(tls) = tls else {
            return TlsConfig::default();
        };
        let mode: config::TlsMode = tls.mode.into();
        let ca_field = format!("{field}.caBundleSecretRef");
        let ca_file = match (&tls.ca_bundle_secret_ref, mode) {
            (Some(r), config::TlsMode::CustomBundle) => {
                let pem = self.secret_bytes(
                    &ca_field,
                    SecretRef {
                        name: &r.name,
                        key: &r.key,
                        namespace: r.namespace.as_deref(),
                    },
                );
                match pem.map(|p| (check_ca_bundle(&p), p)) {
                    Some((Ok(()), p)) => {
                        self.files.insert(file_name.clone(), p);
                    }
                    Some((Err(e), _)) => self.issue(
                        &ca_field,
                        Reason::InvalidCaBundle,
                        format!("Secret {:?} key {:?}: {e}", r.name, r.key),
                    ),
                    None => {}
                }
                Some(file_name)
            }
            (None, config::TlsMode::CustomBundle) => {
                self.issue(
                    &ca_field,
                    Reason::InvalidSpec,
                    "required when mode is CustomBundle",
                );
                None
            }
            (Some(_), _) => {
                self.issue(
                    &ca_field,
                    Reason::InvalidSpec,
                    "only allowed when mode is CustomBundle",
                );
                None
            }
            (None, _) => None,
        };
        TlsConfig { mode, ca_file }
    }
}

/// A CA bundle must hold at least one certificate that parses as X.509, and nothing else that
/// looks like PEM: a private key pasted into a CA Secret would otherwise be published.
pub fn check_ca_bundle(pem: &[u8]) -> Result<(), String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::{PemObject, SectionKind};

    let mut certs = 0;
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        match item {
            Ok((SectionKind::Certificate, der)) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from(der))
                    .map_err(|e| format!("certificate {} does not parse: {e}", certs + 1))?;
                certs += 1;
            }
            Ok((kind, _)) => {
                return Err(format!(
                    "contains a {kind:?} PEM section; a CA bundle holds only CERTIFICATE sections"
                ));
            }
            Err(e) => return Err(format!("not valid PEM: {e}")),
        }
    }
    if certs == 0 {
        return Err("holds no PEM CERTIFICATE".into());
    }
    Ok(())
}

pub(super) fn duration(cx: &mut Ctx<'_>, field: &str, s: &str) -> u64 {
    match config::parse_duration(s) {
        Ok(v) => v,
        Err(e) => {
            cx.issue(field, Reason::InvalidSpec, e);
            0
        }
    }
}
