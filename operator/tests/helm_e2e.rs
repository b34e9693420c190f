//! The Helm chart against a real kube-apiserver + etcd: `helm install` is accepted object by
//! object, the CRDs are served, every example applies, and with the operator running as the
//! chart's ServiceAccount (so exactly the chart's RBAC applies) each example reaches Ready.
//! No kubelet runs here: the Deployments are stored, not started; the operator runs as a
//! local process with the chart's arguments.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{KubeStack, eventually, start_operator};
use fhirguard_operator::crd::{FhirConnection, FhirSecurityPolicy};
use kube::Api;
use kube::api::ListParams;

fn ready(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
) -> Option<(String, String)> {
    conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), format!("{}: {}", c.reason, c.message)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_and_every_example_reaches_ready() {
    let Some(helm) = common::helm_bin() else {
        return;
    };
    let Some(stack) = tokio::task::block_in_place(KubeStack::start) else {
        return;
    };
    let repo = common::repo();
    let helm_cmd = |args: &[&str]| {
        let out = Command::new(&helm)
            .args(args)
            .arg("--kubeconfig")
            .arg(&stack.admin_kubeconfig)
            .env("HELM_CACHE_HOME", stack.dir.path().join("helm-cache"))
            .env("HELM_CONFIG_HOME", stack.dir.path().join("helm-config"))
            .env("HELM_DATA_HOME", stack.dir.path().join("helm-data"))
            .output()
            .expect("run helm");
        assert!(
            out.status.success(),
            "helm {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    let chart = repo.join("charts/fhirguard");
    let notes = helm_cmd(&[
        "install",
        "fhirguard",
        chart.to_str().unwrap(),
        "--namespace",
        "fhirguard-system",
        "--create-namespace",
        "--set",
        "fullnameOverride=fhirguard",
        // Helm 4 applies server-side by default and builds typed patches from the server's
        // OpenAPI, which on Kubernetes < 1.25 does not know the CRDs' CEL rules
        // (x-kubernetes-validations). README: use --server-side=false on such servers.
        "--server-side=false",
    ]);
    assert!(
        notes.contains("kubectl apply -f examples/quickstart/"),
        "NOTES tell the user what to do next:\n{notes}"
    );
    let status = helm_cmd(&["status", "fhirguard", "-n", "fhirguard-system"]);
    assert!(status.contains("STATUS: deployed"), "{status}");

    // Every object the chart renders is stored by the server.
    let manifest = helm_cmd(&["get", "manifest", "fhirguard", "-n", "fhirguard-system"]);
    let docs: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&manifest).unwrap();
    let mut kinds = Vec::new();
    for d in docs.iter().filter(|d| !d.is_null()) {
        let kind = d["kind"].as_str().unwrap();
        let name = d["metadata"]["name"].as_str().unwrap();
        let ns = d["metadata"]["namespace"].as_str();
        let mut args = vec!["get", kind, name, "-o", "name"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        stack.kubectl(&args);
        kinds.push(kind.to_string());
    }
    for k in [
        "Deployment",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "RoleBinding",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} not installed: {kinds:?}");
    }
    // The CRDs from the chart's crds/ are served.
    stack.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/fhirsecuritypolicies.fhirguard.dev",
        "crd/fhirconnections.fhirguard.dev",
    ]);
    let pdb = stack.kubectl(&[
        "-n",
        "fhirguard-system",
        "get",
        "pdb",
        "fhirguard-authz",
        "-o",
        "jsonpath={.apiVersion}",
    ]);
    assert_eq!(
        pdb, "policy/v1beta1",
        "the chart picks the PDB API this 1.20 server has"
    );

    // Every example applies as a user would apply it.
    for dir in [
        "quickstart",
        "smart",
        "introspection",
        "allof",
        "egress",
        "audit",
    ] {
        stack.kubectl(&[
            "apply",
            "-f",
            repo.join("examples").join(dir).to_str().unwrap(),
        ]);
    }

    let _op = start_operator(
        &stack,
        "chart-operator",
        common::free_port(),
        &[
            "--config-secret",
            "fhirguard-authz-config",
            "--lease-name",
            "fhirguard-operator",
        ],
    );
    let client = stack.admin_client().await;
    let policies: Api<FhirSecurityPolicy> = Api::all(client.clone());
    let connections: Api<FhirConnection> = Api::all(client.clone());
    let expected = [
        "demo/ehr",
        "clinical/ehr-smart",
        "clinical/ehr-opaque",
        "clinical/ehr-audited",
        "research/cohort-explorer",
        "clinical/ehr-internal",
        "clinical/partner",
        "clinical/audit-repository",
    ];
    let states = eventually("every example Ready", Duration::from_secs(40), || async {
        let mut out = Vec::new();
        for p in policies.list(&ListParams::default()).await.ok()?.items {
            let conds = p.status.map(|s| s.conditions).unwrap_or_default();
            out.push((
                format!("{}/{}", p.metadata.namespace?, p.metadata.name?),
                ready(&conds),
            ));
        }
        for c in connections.list(&ListParams::default()).await.ok()?.items {
            let conds = c.status.map(|s| s.conditions).unwrap_or_default();
            out.push((
                format!("{}/{}", c.metadata.namespace?, c.metadata.name?),
                ready(&conds),
            ));
        }
        let all = expected.iter().all(|e| {
            out.iter()
                .any(|(n, r)| n == e && r.as_ref().is_some_and(|r| r.0 == "True"))
        });
        all.then_some(out)
    })
    .await;
    assert_eq!(states.len(), expected.len(), "{states:?}");
    let data = stack.kubectl(&[
        "-n",
        "fhirguard-system",
        "get",
        "secret",
        "fhirguard-authz-config",
        "-o",
        "jsonpath={.data.config\\.json}",
    ]);
    assert!(!data.is_empty());
    // The chart's RBAC lets the operator publish the egress trust ConfigMap next to the
    // example FhirConnection that has a CA bundle.
    let trust = stack.kubectl(&[
        "-n",
        "clinical",
        "get",
        "configmap",
        "fhirguard-trust",
        "-o",
        "jsonpath={.data}",
    ]);
    assert!(
        trust.contains("connection_clinical_partner_ca.pem") && trust.contains("BEGIN CERTIFICATE"),
        "{trust}"
    );

    // --- the mesh objects: this 1.20 server serves none of these kinds, so stand-in CRDs whose
    // schemas hold exactly the fields the chart uses (tests/fixtures/mesh/crds.yaml) let helm
    // install them, validating every field name against them on the way.
    let mesh_crds = repo.join("operator/tests/fixtures/mesh/crds.yaml");
    stack.kubectl(&["apply", "-f", mesh_crds.to_str().unwrap()]);
    stack.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/authorizationpolicies.security.istio.io",
        "crd/securitypolicies.gateway.envoyproxy.io",
        "crd/referencegrants.gateway.networking.k8s.io",
    ]);
    // The server publishes new CRD schemas to /openapi/v2 a moment after they are established.
    let values_mesh = chart.join("tests/values-mesh.yaml");
    let upgrade = || {
        let args = vec![
            "upgrade",
            "fhirguard",
            chart.to_str().unwrap(),
            "--namespace",
            "fhirguard-system",
            "--server-side=false",
            "-f",
            values_mesh.to_str().unwrap(),
        ];
        Command::new(&helm)
            .args(&args)
            .arg("--kubeconfig")
            .arg(&stack.admin_kubeconfig)
            .env("HELM_CACHE_HOME", stack.dir.path().join("helm-cache"))
            .env("HELM_CONFIG_HOME", stack.dir.path().join("helm-config"))
            .env("HELM_DATA_HOME", stack.dir.path().join("helm-data"))
            .output()
            .expect("run helm")
    };
    let start = std::time::Instant::now();
    let out = loop {
        let out = upgrade();
        if out.status.success() || start.elapsed() > Duration::from_secs(40) {
            break out;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        out.status.success(),
        "helm upgrade with the mesh objects:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let notes = String::from_utf8_lossy(&out.stdout);
    assert!(
        notes.contains("envoyExtAuthzGrpc:") && notes.contains("statusOnError: \"503\""),
        "NOTES give the meshConfig provider the AuthorizationPolicies need:\n{notes}"
    );
    let count = |resource: &str| {
        stack
            .kubectl(&["get", resource, "-A", "-o", "name"])
            .lines()
            .count()
    };
    // Nothing was pruned: a misspelt field would be dropped silently by the server (whose
    // stand-in schemas hold exactly the projects' field names), so every stored spec must equal
    // the rendered one.
    let manifest = helm_cmd(&["get", "manifest", "fhirguard", "-n", "fhirguard-system"]);
    let rendered: Vec<serde_json::Value> = serde_saphyr::from_str_multiple(&manifest).unwrap();
    // This server reads "" in a custom resource as null (see the fixture); compare them alike.
    fn blank_is_null(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) if s.is_empty() => *v = serde_json::Value::Null,
            serde_json::Value::Array(a) => a.iter_mut().for_each(blank_is_null),
            serde_json::Value::Object(o) => o.values_mut().for_each(blank_is_null),
            _ => {}
        }
    }
    let mut checked = 0;
    for doc in rendered.iter().filter(|d| {
        ["AuthorizationPolicy", "SecurityPolicy", "ReferenceGrant"]
            .contains(&d["kind"].as_str().unwrap_or(""))
    }) {
        let resource = format!(
            "{}.{}",
            doc["kind"].as_str().unwrap().to_lowercase(),
            doc["apiVersion"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
        );
        let stored = stack.kubectl(&[
            "-n",
            doc["metadata"]["namespace"].as_str().unwrap(),
            "get",
            &resource,
            doc["metadata"]["name"].as_str().unwrap(),
            "-o",
            "json",
        ]);
        let mut stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
        let mut want = doc["spec"].clone();
        blank_is_null(&mut stored["spec"]);
        blank_is_null(&mut want);
        assert_eq!(stored["spec"], want, "{resource} lost fields on the server");
        checked += 1;
    }
    assert_eq!(checked, 6);
    assert_eq!(count("authorizationpolicies.security.istio.io"), 2);
    assert_eq!(count("securitypolicies.gateway.envoyproxy.io"), 3);
    assert_eq!(count("referencegrants.gateway.networking.k8s.io"), 1);
    let ap = stack.kubectl(&[
        "-n",
        "clinical",
        "get",
        "authorizationpolicies.security.istio.io",
        "fhirguard-authz",
        "-o",
        "jsonpath={.spec.action} {.spec.provider.name} {.spec.selector.matchLabels.app}",
    ]);
    assert_eq!(ap, "CUSTOM fhirguard ehr-fhir");

    helm_cmd(&["uninstall", "fhirguard", "-n", "fhirguard-system"]);
}
