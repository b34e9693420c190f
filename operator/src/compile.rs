//! Pure compile: resources and the Secrets they name in, compiled configuration and a verdict
//! per object out. No I/O, no clock: the same inputs give byte-identical output, which is what
//! lets the controller skip writes and `render` produce golden files.
//!
//! Isolation is the rule: an object with any problem is left out of the compiled config (its
//! requests are then refused by the authz-service, which is the safe direction) and never
//! affects the others, except that a policy naming a rejected connection is rejected too.

use std::collections::{BTreeMap, BTreeSet};

use fhirguard_authz::config::{
    self, AccessRule, AuthenticationConfig, AuthorizationConfig, BasicConfig, BasicCredentials,
    ClaimNames, CompartmentLookup, CompiledConfig, ConnectionAuth, ConnectionConfig, JwksConfig,
    JwtConfig, OAuthConfig, PolicyConfig, ProviderConfig, SmartConfig, TlsConfig,
};
use kube::ResourceExt;

use crate::crd::{self, FhirConnection, FhirSecurityPolicy};
use crate::object::Loaded;
use crate::shape::ShapeProblem;

/// Secret contents by (namespace, name): key → bytes. Only what the controller could read.
pub type Secrets = BTreeMap<(String, String), BTreeMap<String, Vec<u8>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    FhirSecurityPolicy,
    FhirConnection,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::FhirSecurityPolicy => "FhirSecurityPolicy",
            Kind::FhirConnection => "FhirConnection",
        }
    }
}

/// Identifies one resource.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why an object was not accepted. Doubles as the `Accepted` condition's reason and as a
/// metric label, so the set is small and fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    InvalidSpec,
    SecretNotFound,
    SecretKeyNotFound,
    InvalidHtpasswd,
    InvalidJwks,
    InvalidCaBundle,
    InvalidUrl,
    HostConflict,
    ConnectionNotFound,
    ConnectionNotAccepted,
    CrossNamespaceReference,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InvalidSpec => "InvalidSpec",
            Reason::SecretNotFound => "SecretNotFound",
            Reason::SecretKeyNotFound => "SecretKeyNotFound",
            Reason::InvalidHtpasswd => "InvalidHtpasswd",
            Reason::InvalidJwks => "InvalidJwks",
            Reason::InvalidCaBundle => "InvalidCABundle",
            Reason::InvalidUrl => "InvalidURL",
            Reason::HostConflict => "HostConflict",
            Reason::ConnectionNotFound => "ConnectionNotFound",
            Reason::ConnectionNotAccepted => "ConnectionNotAccepted",
            Reason::CrossNamespaceReference => "CrossNamespaceReference",
        }
    }
}

/// One thing wrong with an object: where (a field path in the resource) and what.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Issue {
    pub field: String,
    pub reason: Reason,
    pub message: String,
}

/// The verdict on one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectResult {
    pub key: ObjectKey,
    /// `metadata.generation` of the object that was compiled.
    pub generation: Option<i64>,
    /// Empty means accepted and included in the config.
    pub issues: Vec<Issue>,
    /// Accepted, but the user should know (e.g. `unauthenticatedAccess`).
    pub warnings: Vec<String>,
}

impl ObjectResult {
    pub fn accepted(&self) -> bool {
        self.issues.is_empty()
    }
}

/// Everything `compile` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The config with `generation: 0`; the publisher stamps the real generation.
    pub config: CompiledConfig,
    /// CA bundle files that `config` names by `caFile`, by file name.
    pub ca_files: BTreeMap<String, Vec<u8>>,
    /// One result per input object.
    pub objects: BTreeMap<ObjectKey, ObjectResult>,
}

impl Compiled {
    /// Every issue as `<namespace>/<name>: <field>: <message>` problems, sorted by object;
    /// each object's keep their order (shape problems in spec order first).
    pub fn problems(&self) -> Vec<config::Problem> {
        let mut out: Vec<config::Problem> = self
            .objects
            .values()
            .flat_map(|o| {
                o.issues.iter().map(move |i| config::Problem {
                    object: o.key.to_string(),
                    field: i.field.clone(),
                    message: i.message.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.object.cmp(&b.object));
        out
    }
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
            for (name, ref_ns) in crate::introspection::secret_refs(i) {
                add(name, ref_ns);
            }
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

/// The CA file name a connection's bundle is published under. Stable and documented, because
/// an Envoy egress cluster's `validation_context.trusted_ca` names it. `_` cannot occur in
/// Kubernetes namespaces or names, so the name is unambiguous.
pub fn connection_ca_file(namespace: &str, name: &str) -> String {
    format!("connection_{namespace}_{name}_ca.pem")
}

/// The CA file name for the JWKS endpoint of a policy's `index`th provider.
pub fn provider_ca_file(namespace: &str, name: &str, index: usize) -> String {
    format!("policy_{namespace}_{name}_provider{index}_ca.pem")
}

/// Compiles everything. See the module docs for the isolation rules. An object with shape
/// problems is never accepted; when its cleaned spec could be read it is still compiled, alone
/// and without claiming hosts, so that its other problems are reported in the same run.
pub fn compile(
    policies: &[Loaded<FhirSecurityPolicy>],
    connections: &[Loaded<FhirConnection>],
    secrets: &Secrets,
) -> Compiled {
    let mut objects = BTreeMap::new();
    let mut ca_files = BTreeMap::new();

    let mut accepted_connections: BTreeMap<String, ConnectionConfig> = BTreeMap::new();
    let mut sorted_connections: Vec<&Loaded<FhirConnection>> = connections.iter().collect();
    sorted_connections.sort_by_key(|c| (c.namespace(), c.name()));
    for c in sorted_connections {
        let key = ObjectKey {
            kind: Kind::FhirConnection,
            namespace: c.namespace(),
            name: c.name(),
        };
        let mut cx = Ctx::new(&key, secrets);
        let compiled = c
            .object
            .as_ref()
            .and_then(|o| compile_connection(&mut cx, o));
        let mut issues = std::mem::take(&mut cx.issues);
        if let Some(cc) = &compiled {
            let alone = CompiledConfig {
                connections: vec![cc.clone()],
                ..CompiledConfig::empty(0)
            };
            merge_validation(&mut issues, &key, alone.validate());
        }
        let accepted = finish(
            &key,
            c.meta.generation,
            &c.shape,
            issues,
            Vec::new(),
            &mut objects,
        );
        if let (true, Some(cc)) = (accepted, compiled) {
            ca_files.extend(cx.files);
            accepted_connections.insert(key.to_string(), cc);
        }
    }
    let rejected_connections: BTreeSet<String> = objects
        .values()
        .filter(|o| !o.accepted())
        .map(|o| o.key.to_string())
        .collect();

    // Older policies keep a contested host+basePath (like Gateway API listener conflicts), so
    // applying a new object can never take traffic away from one that already works.
    let mut sorted_policies: Vec<&Loaded<FhirSecurityPolicy>> = policies.iter().collect();
    sorted_policies.sort_by_key(|p| {
        (
            p.meta.creation_timestamp.clone().map(|t| t.0),
            p.namespace(),
            p.name(),
        )
    });
    let mut accepted_policies: Vec<PolicyConfig> = Vec::new();
    let mut claims: BTreeMap<(String, String), String> = BTreeMap::new();
    let connection_list: Vec<ConnectionConfig> = accepted_connections.values().cloned().collect();
    for p in sorted_policies {
        let key = ObjectKey {
            kind: Kind::FhirSecurityPolicy,
            namespace: p.namespace(),
            name: p.name(),
        };
        let mut cx = Ctx::new(&key, secrets);
        let compiled = p
            .object
            .as_ref()
            .and_then(|o| compile_policy(&mut cx, o, &accepted_connections, &rejected_connections));
        let mut issues = std::mem::take(&mut cx.issues);
        let mut warnings = Vec::new();
        if let Some(pc) = &compiled {
            let alone = CompiledConfig {
                policies: vec![pc.clone()],
                connections: connection_list.clone(),
                ..CompiledConfig::empty(0)
            };
            merge_validation(&mut issues, &key, alone.validate());
            // Only a policy that will be used claims its hosts.
            if issues.is_empty() && p.shape.is_empty() {
                check_claims(&mut issues, &key, pc, &mut claims);
            }
            if pc.unauthenticated_access {
                warnings.push(
                    "unauthenticatedAccess is true: EVERY request to this FHIR server is allowed without credentials"
                        .to_string(),
                );
            }
        }
        let ok = finish(
            &key,
            p.meta.generation,
            &p.shape,
            issues,
            warnings,
            &mut objects,
        );
        if let (true, Some(pc)) = (ok, compiled) {
            ca_files.extend(cx.files);
            accepted_policies.push(pc);
        }
    }
    accepted_policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let config = CompiledConfig {
        policies: accepted_policies,
        connections: connection_list,
        ..CompiledConfig::empty(0)
    };
    // Each object was validated alone and claims were checked above, so the whole must be
    // valid; if it ever is not, publishing nothing new is safer than publishing it.
    let leftover = config.validate();
    let mut compiled = Compiled {
        config,
        ca_files,
        objects,
    };
    if !leftover.is_empty() {
        for p in leftover {
            tracing::error!(problem = %p, "compiled config failed validation; dropping the object");
            drop_object(&mut compiled, &p);
        }
    }
    compiled
}

/// Removes an object named by a whole-config problem (a safety net; see `compile`).
fn drop_object(c: &mut Compiled, p: &config::Problem) {
    let Some((ns, name)) = p.object.split_once('/') else {
        return;
    };
    c.config
        .policies
        .retain(|x| !(x.namespace == ns && x.name == name));
    c.config
        .connections
        .retain(|x| !(x.namespace == ns && x.name == name));
    for o in c.objects.values_mut() {
        if o.key.namespace == ns && o.key.name == name {
            o.issues.push(Issue {
                field: spec_path(&p.field),
                reason: Reason::InvalidSpec,
                message: p.message.clone(),
            });
        }
    }
    let names: BTreeSet<String> = c
        .config
        .ca_files()
        .into_iter()
        .map(str::to_string)
        .collect();
    c.ca_files.retain(|k, _| names.contains(k));
}

/// Records the verdict on one object. Shape problems come first, in spec order; the compile's
/// own issues follow, sorted, with paths made absolute (`spec.`), leaving out those about a
/// part the shape check already reported (they would only describe a placeholder).
fn finish(
    key: &ObjectKey,
    generation: Option<i64>,
    shape: &[ShapeProblem],
    mut issues: Vec<Issue>,
    warnings: Vec<String>,
    objects: &mut BTreeMap<ObjectKey, ObjectResult>,
) -> bool {
    for i in &mut issues {
        i.field = spec_path(&i.field);
    }
    issues.retain(|i| !shape.iter().any(|s| related(&i.field, &s.path)));
    issues.sort();
    issues.dedup();
    let mut all: Vec<Issue> = shape
        .iter()
        .map(|s| Issue {
            field: s.path.clone(),
            reason: Reason::InvalidSpec,
            message: s.message.clone(),
        })
        .collect();
    all.extend(issues);
    let accepted = all.is_empty();
    objects.insert(
        key.clone(),
        ObjectResult {
            key: key.clone(),
            generation,
            issues: all,
            warnings,
        },
    );
    accepted
}

/// A compile field path (relative to the spec) as users see it in the resource.
fn spec_path(field: &str) -> String {
    if field == "spec" || field.starts_with("spec.") {
        field.to_string()
    } else {
        format!("spec.{field}")
    }
}

/// Whether one path is the other or lies inside it.
fn related(a: &str, b: &str) -> bool {
    let inside = |x: &str, y: &str| {
        x.strip_prefix(y)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
    };
    inside(a, b) || inside(b, a)
}

/// Adds the config validator's problems for this object, unless compile already reported a
/// problem at the same field (it knows more, e.g. which Secret).
fn merge_validation(issues: &mut Vec<Issue>, key: &ObjectKey, problems: Vec<config::Problem>) {
    let id = key.to_string();
    let known: BTreeSet<String> = issues.iter().map(|i| i.field.clone()).collect();
    for p in problems.into_iter().filter(|p| p.object == id) {
        if known.contains(&p.field) {
            continue;
        }
        let reason = if p.field.ends_with("htpasswdSecretRef") {
            Reason::InvalidHtpasswd
        } else if p.field.ends_with("jwks.secretRef") {
            Reason::InvalidJwks
        } else if p.field.ends_with("url") || p.field.ends_with("Url") || p.field.ends_with("uri") {
            Reason::InvalidUrl
        } else {
            Reason::InvalidSpec
        };
        issues.push(Issue {
            field: p.field,
            reason,
            message: p.message,
        });
    }
}

fn check_claims(
    issues: &mut Vec<Issue>,
    key: &ObjectKey,
    pc: &PolicyConfig,
    claims: &mut BTreeMap<(String, String), String>,
) {
    let base = pc.base_path.trim_end_matches('/').to_string();
    let hosts: Vec<String> = if pc.hosts.is_empty() {
        vec!["*".into()]
    } else {
        pc.hosts.iter().map(|h| config::normalize_host(h)).collect()
    };
    let mut conflicts = Vec::new();
    for h in &hosts {
        if let Some(owner) = claims.get(&(h.clone(), base.clone())) {
            conflicts.push(format!(
                "host {} with basePath {:?} is already claimed by FhirSecurityPolicy {owner}",
                if h == "*" {
                    "(any)".to_string()
                } else {
                    format!("{h:?}")
                },
                pc.base_path
            ));
        }
    }
    if conflicts.is_empty() {
        for h in hosts {
            claims.insert((h, base.clone()), key.to_string());
        }
    } else {
        for message in conflicts {
            issues.push(Issue {
                field: "match".into(),
                reason: Reason::HostConflict,
                message,
            });
        }
    }
}

/// Per-object compile state: where issues and CA files collect.
struct Ctx<'a> {
    namespace: String,
    secrets: &'a Secrets,
    issues: Vec<Issue>,
    files: BTreeMap<String, Vec<u8>>,
}

/// The parts of any of the CRDs' Secret references.
struct SecretRef<'r> {
    name: &'r str,
    key: &'r str,
    namespace: Option<&'r str>,
}

impl<'a> Ctx<'a> {
    fn new(key: &ObjectKey, secrets: &'a Secrets) -> Self {
        Ctx {
            namespace: key.namespace.clone(),
            secrets,
            issues: Vec::new(),
            files: BTreeMap::new(),
        }
    }

    fn issue(&mut self, field: impl Into<String>, reason: Reason, message: impl Into<String>) {
        self.issues.push(Issue {
            field: field.into(),
            reason,
            message: message.into(),
        });
    }

    /// References never cross namespaces (SPEC): a `namespace` other than our own is refused
    /// rather than silently ignored, so the user sees why the object is not used.
    fn same_namespace(&mut self, field: &str, namespace: Option<&str>) -> bool {
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

    fn secret_bytes(&mut self, field: &str, r: SecretRef<'_>) -> Option<Vec<u8>> {
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

    fn secret_text(&mut self, field: &str, r: SecretRef<'_>) -> Option<String> {
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
    fn credential(&mut self, field: &str, r: SecretRef<'_>) -> Option<String> {
        let s = self.secret_text(field, r)?;
        let s = s
            .strip_suffix("\r\n")
            .or_else(|| s.strip_suffix('\n'))
            .unwrap_or(&s);
        Some(s.to_string())
    }

    fn tls(&mut self, field: &str, tls: Option<&crd::Tls>, file_name: String) -> TlsConfig {
        let Some(tls) = tls else {
            return TlsConfig::default();
        };
        let mode = match tls.mode {
            crd::TlsMode::SkipVerification => config::TlsMode::SkipVerification,
            crd::TlsMode::DefaultBundle => config::TlsMode::DefaultBundle,
            crd::TlsMode::CustomBundle => config::TlsMode::CustomBundle,
        };
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

/// `authentication.introspection` resolves its Secrets, TLS files and durations here.
impl crate::introspection::Resolve for Ctx<'_> {
    fn credential(
        &mut self,
        field: &str,
        name: &str,
        key: &str,
        namespace: Option<&str>,
    ) -> Option<String> {
        Ctx::credential(
            self,
            field,
            SecretRef {
                name,
                key,
                namespace,
            },
        )
    }

    fn tls(&mut self, field: &str, tls: Option<&crd::Tls>, file_name: String) -> TlsConfig {
        Ctx::tls(self, field, tls, file_name)
    }

    fn duration(&mut self, field: &str, s: &str) -> u64 {
        duration(self, field, s)
    }

    fn invalid(&mut self, field: &str, message: &str) {
        self.issue(field, Reason::InvalidSpec, message);
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

fn duration(cx: &mut Ctx<'_>, field: &str, s: &str) -> u64 {
    match config::parse_duration(s) {
        Ok(v) => v,
        Err(e) => {
            cx.issue(field, Reason::InvalidSpec, e);
            0
        }
    }
}

fn compile_connection(cx: &mut Ctx<'_>, c: &FhirConnection) -> Option<ConnectionConfig> {
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
                    client_auth_method: match o.client_auth_method {
                        crd::ClientAuthMethod::ClientSecretBasic => {
                            config::ClientAuthMethod::ClientSecretBasic
                        }
                        crd::ClientAuthMethod::ClientSecretPost => {
                            config::ClientAuthMethod::ClientSecretPost
                        }
                    },
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

fn compile_policy(
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
                    permission: match rule.permission {
                        crd::Permission::Read => config::Permission::Read,
                        crd::Permission::ReadWrite => config::Permission::ReadWrite,
                    },
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
            token_sources: j
                .token_sources
                .iter()
                .map(|s| match s {
                    crd::TokenSource::Header => config::TokenSource::Header,
                    crd::TokenSource::QueryParameter => config::TokenSource::QueryParameter,
                })
                .collect(),
            require_subject_matches_basic_user: j.require_subject_matches_basic_user,
            providers,
        }
    });

    let introspection = a
        .introspection
        .as_ref()
        .and_then(|i| crate::introspection::compile(cx, &ns, &name, i));

    let mut smart = SmartConfig::default();
    if let Some(authz) = &spec.authorization {
        smart.patient_search = match authz.smart.patient_search {
            crd::PatientSearch::Reject => config::PatientSearch::Reject,
            crd::PatientSearch::Narrow => config::PatientSearch::Narrow,
        };
        smart.user_scopes = match authz.smart.user_scopes {
            crd::UserScopes::Unrestricted => config::UserScopes::Unrestricted,
            crd::UserScopes::ConfineToFhirUser => config::UserScopes::ConfineToFhirUser,
        };
        smart.reference_data = match authz.smart.reference_data {
            crd::ReferenceData::Deny => config::ReferenceData::Deny,
            crd::ReferenceData::ReadWithScope => config::ReferenceData::ReadWithScope,
        };
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
            introspection,
            combine: match a.combine {
                crd::Combine::AnyOf => config::Combine::AnyOf,
                crd::Combine::AllOf => config::Combine::AllOf,
            },
            basic,
            jwt,
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
        algorithms: pr
            .algorithms
            .iter()
            .filter_map(|a| {
                // The CRD enum and the config enum list the same names.
                let s = serde_json::to_value(a).ok()?;
                config::Algorithm::parse(s.as_str()?)
            })
            .collect(),
        clock_skew_seconds,
        jwks: JwksConfig {
            uri: pr.jwks.uri.clone(),
            refresh_interval_seconds,
            tls,
            document,
        },
        claims: ClaimNames {
            scope: pr.claims.scope.clone(),
            patient: pr.claims.patient.clone(),
            fhir_user: pr.claims.fhir_user.clone(),
            subject: pr.claims.subject.clone(),
        },
    }
}
