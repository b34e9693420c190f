//! Layer 2, the pure compile: resources and the Secrets they name in, compiled configuration
//! and a verdict per object out. No I/O, no clock, no Kubernetes client: the same inputs give
//! byte-identical output, which is what lets the controller skip writes and `render` produce
//! golden files. Imports [`crate::crd`] and the config format (`fhirguard_authz::config`);
//! imported by [`crate::publish`], [`crate::status`], [`crate::render`] and
//! [`crate::reconcile`].
//!
//! - [`resources`]: one spec (plus Secret values) into its compiled form;
//! - [`secrets`]: which Secrets a resource names, and reading them during a compile;
//! - [`convert`]: the one conversion between CRD and config types (enums and claim names);
//! - [`problems`]: the config validator's typed problems mapped to CRD fields and reasons.
//!
//! Isolation is the rule: an object with any problem is left out of the compiled config (its
//! requests are then refused by the authz-service, which is the safe direction) and never
//! affects the others, except that a policy naming a rejected connection is rejected too.

use std::collections::{BTreeMap, BTreeSet};

use fhirguard_authz::config::{
    self, CompiledConfig, ConfigPath, ConfigProblem, ConnectionConfig, PolicyConfig,
};

use crate::crd::object::Loaded;
use crate::crd::shape::ShapeProblem;
use crate::crd::{FhirConnection, FhirSecurityPolicy};

pub mod convert;
pub mod problems;
mod resources;
mod secrets;

use problems::Spec;
use resources::{compile_connection, compile_policy};
use secrets::Ctx;
pub use secrets::{Secrets, check_ca_bundle, referenced_secrets, secret_data};

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

/// The CA file name for a policy's introspection endpoint.
pub fn introspection_ca_file(namespace: &str, name: &str) -> String {
    format!("policy_{namespace}_{name}_introspection_ca.pem")
}

/// The CA file name for the OpenID discovery endpoint of a policy's SMART configuration.
pub fn discovery_ca_file(namespace: &str, name: &str) -> String {
    format!("policy_{namespace}_{name}_discovery_ca.pem")
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
        if let (Some(cc), Some(o)) = (&compiled, &c.object) {
            let alone = CompiledConfig {
                connections: vec![cc.clone()],
                ..CompiledConfig::empty(0)
            };
            problems::merge(&mut issues, &alone.problems(), Spec::Connection(&o.spec));
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
        if let (Some(pc), Some(o)) = (&compiled, &p.object) {
            let alone = CompiledConfig {
                policies: vec![pc.clone()],
                connections: connection_list.clone(),
                ..CompiledConfig::empty(0)
            };
            problems::merge(&mut issues, &alone.problems(), Spec::Policy(&o.spec));
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
    let leftover = config.problems();
    let mut compiled = Compiled {
        config,
        ca_files,
        objects,
    };
    if !leftover.is_empty() {
        for p in leftover {
            tracing::error!(problem = %p, "compiled config failed validation; dropping the object");
            drop_object(&mut compiled, &p, policies, connections);
        }
    }
    compiled
}

/// Removes the object a whole-config problem is about (a safety net; see `compile`).
fn drop_object(
    c: &mut Compiled,
    p: &ConfigProblem,
    policies: &[Loaded<FhirSecurityPolicy>],
    connections: &[Loaded<FhirConnection>],
) {
    let (kind, id, field) = match &p.at {
        ConfigPath::Policy { id, field, .. } => {
            let spec = policies
                .iter()
                .find(|l| l.namespace() == id.namespace && l.name() == id.name)
                .and_then(|l| l.object.as_ref())
                .map(|o| &o.spec);
            (
                Kind::FhirSecurityPolicy,
                id,
                problems::policy_field(*field, spec),
            )
        }
        ConfigPath::Connection { id, field, .. } => {
            let spec = connections
                .iter()
                .find(|l| l.namespace() == id.namespace && l.name() == id.name)
                .and_then(|l| l.object.as_ref())
                .map(|o| &o.spec);
            (
                Kind::FhirConnection,
                id,
                problems::connection_field(*field, spec),
            )
        }
        ConfigPath::Version => return,
    };
    let this = |ns: &str, name: &str| ns == id.namespace && name == id.name;
    match kind {
        Kind::FhirSecurityPolicy => c.config.policies.retain(|x| !this(&x.namespace, &x.name)),
        Kind::FhirConnection => c
            .config
            .connections
            .retain(|x| !this(&x.namespace, &x.name)),
    }
    let key = ObjectKey {
        kind,
        namespace: id.namespace.clone(),
        name: id.name.clone(),
    };
    if let Some(o) = c.objects.get_mut(&key) {
        o.issues.push(Issue {
            field: spec_path(&field),
            reason: problems::reason(&p.kind),
            message: p.kind.to_string(),
        });
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

/// A compile field path (relative to the spec, or under `metadata.`) as users see it in the
/// resource.
fn spec_path(field: &str) -> String {
    if field == "spec" || field.starts_with("spec.") || field.starts_with("metadata.") {
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
