//! The Helm chart offline: `helm lint`, `helm template` snapshots (committed; regenerate with
//! `UPDATE_GOLDEN=1`), values.schema.json refusing bad values, and its CRDs in sync with crds/.
//! The chart against a real API server is in helm_e2e.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn chart() -> PathBuf {
    common::repo().join("charts/fhirguard")
}

fn helm(bin: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args(args)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("fhirguard-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("fhirguard-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("fhirguard-helm-data"),
        )
        .output()
        .expect("run helm")
}

#[test]
fn lint_passes() {
    let Some(h) = common::helm_bin() else { return };
    let chart = chart();
    for values in [
        None,
        Some("tests/values-all.yaml"),
        Some("tests/values-mesh.yaml"),
    ] {
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        let file = values.map(|v| chart.join(v));
        if let Some(f) = &file {
            args.extend(["-f", f.to_str().unwrap()]);
        }
        let out = helm(&h, &args);
        assert!(
            out.status.success(),
            "{values:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn template_output_matches_the_snapshots() {
    let Some(h) = common::helm_bin() else { return };
    let chart = chart();
    let values_all = chart.join("tests/values-all.yaml");
    let values_mesh = chart.join("tests/values-mesh.yaml");
    let cases: [(&str, Vec<&str>); 4] = [
        ("default.yaml", vec![]),
        (
            "all-features.yaml",
            vec!["-f", values_all.to_str().unwrap()],
        ),
        ("kube-1.20.yaml", vec!["--kube-version", "1.20.2"]),
        ("mesh.yaml", vec!["-f", values_mesh.to_str().unwrap()]),
    ];
    let mut drift = Vec::new();
    for (file, extra) in cases {
        let mut args = vec![
            "template",
            "fhirguard",
            chart.to_str().unwrap(),
            "--namespace",
            "fhirguard-system",
        ];
        if !extra.contains(&"--kube-version") {
            args.extend(["--kube-version", "1.33.0"]);
        }
        args.extend(extra);
        let out = helm(&h, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let path = chart.join("tests/snapshots").join(file);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != text {
            drift.push(path.display().to_string());
        }
    }
    assert!(
        drift.is_empty(),
        "helm template drifted from {drift:?}; review and run UPDATE_GOLDEN=1 cargo test --test helm"
    );
}

#[test]
fn rendered_objects_meet_the_security_defaults() {
    let Some(h) = common::helm_bin() else { return };
    let out = helm(
        &h,
        &[
            "template",
            "fhirguard",
            chart().to_str().unwrap(),
            "-n",
            "fhirguard-system",
        ],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} missing"))
    };
    let authz = find("Deployment", "fhirguard-authz");
    let spec = &authz["spec"]["template"]["spec"];
    assert_eq!(authz["spec"]["replicas"], 2);
    assert_eq!(spec["automountServiceAccountToken"], false);
    assert_eq!(
        spec["volumes"][0]["secret"]["secretName"],
        "fhirguard-authz-config"
    );
    assert_eq!(
        spec["containers"][0]["readinessProbe"]["httpGet"]["path"],
        "/readyz"
    );
    assert!(spec["containers"][0]["resources"]["requests"]["cpu"].is_string());
    assert!(spec["affinity"]["podAntiAffinity"].is_object());
    for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let c = &d["spec"]["template"]["spec"]["containers"][0]["securityContext"];
        assert_eq!(c["runAsNonRoot"], true);
        assert_eq!(c["readOnlyRootFilesystem"], true);
        assert_eq!(c["allowPrivilegeEscalation"], false);
    }
    find("PodDisruptionBudget", "fhirguard-authz");
    let svc = find("Service", "fhirguard-authz");
    let ports: Vec<&str> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(ports, ["grpc", "http-metrics"]);
    // The headless Service (on by default) resolves to every ready replica, gRPC only.
    let headless = find("Service", "fhirguard-authz-headless");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["selector"], svc["spec"]["selector"]);
    assert_eq!(headless["spec"]["ports"][0]["name"], "grpc");
    assert!(
        spec["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "--cache-memory-mib=64"),
        "the cache budget is passed to the service"
    );
    // Only the operator may write Secrets, and only the config Secret by name.
    let role = find("Role", "fhirguard-operator");
    let named: Vec<&serde_json::Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["resources"][0] == "secrets"
                && r["verbs"].as_array().unwrap().iter().any(|v| v == "patch")
        })
        .collect();
    assert_eq!(named.len(), 1);
    assert_eq!(named[0]["resourceNames"][0], "fhirguard-authz-config");
    let cluster = find("ClusterRole", "fhirguard-operator");
    for rule in cluster["rules"].as_array().unwrap() {
        if rule["resources"][0] == "secrets" {
            assert_eq!(
                rule["verbs"],
                serde_json::json!(["get", "list", "watch"]),
                "cluster-wide Secret access is read-only"
            );
        }
    }
}

#[test]
fn values_schema_rejects_bad_values() {
    let Some(h) = common::helm_bin() else { return };
    let chart = chart();
    for (set, expect) in [
        ("authz.replicas=0", "/authz/replicas"),
        ("authz.podAntiAffinity=sometimes", "/authz/podAntiAffinity"),
        ("authz.grpcPort=70000", "/authz/grpcPort"),
        (
            "operator.image.pullPolicy=Sometimes",
            "/operator/image/pullPolicy",
        ),
        ("watchNamespaces[0]=Not_A_Namespace", "/watchNamespaces/0"),
        ("replicas=3", "additional properties 'replicas' not allowed"),
        ("serviceMonitor.enabled=yes", "/serviceMonitor/enabled"),
        ("authz.service.headless=yes", "/authz/service/headless"),
        ("authz.cacheMemoryMiB=4", "/authz/cacheMemoryMiB"),
        // A NetworkPolicy that would admit every source to the gRPC port.
        ("networkPolicy.enabled=true", "/networkPolicy/grpcFrom"),
        ("mesh.istio.apiVersion=v2", "/mesh/istio/apiVersion"),
        (
            "mesh.envoyGateway.securityPolicies[0].namespace=clinical",
            "missing property 'targetRefs'",
        ),
        (
            "mesh.istio.authorizationPolicies[0].name=x",
            "missing property 'namespace'",
        ),
        (
            "mesh.envoyGateway.maxRequestBytes=0",
            "/mesh/envoyGateway/maxRequestBytes",
        ),
    ] {
        // "yes" as a string, not YAML's boolean, to test the type check.
        let flag = if set.ends_with("=yes") {
            "--set-string"
        } else {
            "--set"
        };
        let out = helm(&h, &["template", "x", chart.to_str().unwrap(), flag, set]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{set} was accepted");
        assert!(err.contains(expect), "{set}: {err}");
    }
}

#[test]
fn chart_crds_are_the_generated_ones() {
    for (file, yaml) in fhirguard_operator::crd::crd_documents().unwrap() {
        let path = chart().join("crds").join(&file);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap_or_default(),
            yaml,
            "{} is stale; run scripts/gen-crds.sh",
            path.display()
        );
    }
}

/// ConfigMap access exists only for the trust ConfigMap: create (which RBAC cannot limit by
/// name) and everything else by name; with `trustConfigMapName=""` there is none, and the
/// operator is told to publish none.
#[test]
fn trust_configmap_access_is_limited_to_its_name_and_optional() {
    let Some(h) = common::helm_bin() else { return };
    let rules = |extra: &[&str]| {
        let chart = chart();
        let mut args: Vec<String> = ["template", "fhirguard", chart.to_str().unwrap()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = helm(&h, &refs);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_str_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap();
        let cm_rules: Vec<serde_json::Value> = docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
            .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["resources"][0] == "configmaps")
            .collect();
        let args: Vec<String> = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "fhirguard-operator")
            .map(|d| {
                d["spec"]["template"]["spec"]["containers"][0]["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap();
        (cm_rules, args)
    };
    let (on, args) = rules(&[]);
    assert_eq!(
        on,
        vec![
            serde_json::json!({"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}),
            serde_json::json!({"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["fhirguard-trust"], "verbs": ["get", "list", "watch", "patch", "update", "delete"]}),
        ]
    );
    assert!(args.contains(&"--trust-configmap=fhirguard-trust".to_string()));
    let (off, args) = rules(&["--set", "trustConfigMapName="]);
    assert!(off.is_empty(), "{off:?}");
    assert!(args.contains(&"--trust-configmap=".to_string()));
}

/// Nothing mesh-related unless asked for: the default chart needs no Istio or Envoy Gateway
/// CRDs. With the mesh values, every AuthorizationPolicy is CUSTOM with the provider and a rule
/// that matches every request, and every SecurityPolicy fails closed and points at the
/// installed Service, with a ReferenceGrant for the namespaces that need one.
#[test]
fn mesh_objects_are_off_by_default_and_fail_closed_when_on() {
    let Some(h) = common::helm_bin() else { return };
    let chart = chart();
    let render = |extra: &[&str]| {
        let mut args = vec![
            "template",
            "fhirguard",
            chart.to_str().unwrap(),
            "-n",
            "fhirguard-system",
        ];
        args.extend(extra);
        let out = helm(&h, &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_saphyr::from_str_multiple::<serde_json::Value, Vec<serde_json::Value>>(
            &String::from_utf8(out.stdout).unwrap(),
        )
        .unwrap()
    };
    let mesh_kinds = ["AuthorizationPolicy", "SecurityPolicy", "ReferenceGrant"];
    let default = render(&[]);
    assert!(
        !default
            .iter()
            .any(|d| mesh_kinds.contains(&d["kind"].as_str().unwrap_or(""))),
        "no mesh objects by default"
    );
    let values = chart.join("tests/values-mesh.yaml");
    let docs = render(&["-f", values.to_str().unwrap()]);
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        docs.iter().filter(|d| d["kind"] == kind).collect()
    };
    let aps = of("AuthorizationPolicy");
    assert_eq!(aps.len(), 2);
    for ap in &aps {
        assert_eq!(ap["spec"]["action"], "CUSTOM");
        assert_eq!(ap["spec"]["provider"]["name"], "fhirguard");
        assert_eq!(
            ap["spec"]["rules"],
            serde_json::json!([{}]),
            "every request"
        );
    }
    let sps = of("SecurityPolicy");
    assert_eq!(sps.len(), 3);
    for sp in &sps {
        let ext = &sp["spec"]["extAuth"];
        assert_eq!(ext["failOpen"], false);
        assert_eq!(
            ext["grpc"]["backendRefs"],
            serde_json::json!([{"group": "", "kind": "Service", "name": "fhirguard-authz", "namespace": "fhirguard-system", "port": 9001}])
        );
        assert_eq!(ext["bodyToExtAuth"]["maxRequestBytes"], 1048576);
    }
    let named = sps
        .iter()
        .find(|s| s["metadata"]["namespace"] == "research")
        .unwrap();
    assert_eq!(
        named["spec"]["extAuth"]["contextExtensions"],
        serde_json::json!([{"name": "fhirguard.dev/policy", "type": "Value", "value": "research/cohort-explorer"}])
    );
    let grants = of("ReferenceGrant");
    assert_eq!(grants.len(), 1);
    let from: Vec<&str> = grants[0]["spec"]["from"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["namespace"].as_str().unwrap())
        .collect();
    assert_eq!(
        from,
        ["clinical", "research"],
        "not the release's own namespace"
    );
}
