//! The Helm chart against a real kube-apiserver + etcd: `helm install` is accepted object by
//! object, the CRDs are served, every example applies, and with the operator running as the
//! chart's ServiceAccount (so exactly the chart's RBAC applies) each example reaches Ready.
//! No kubelet runs here: the Deployments are stored, not started; the operator runs as a
//! local process with the chart's arguments.

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
    for dir in ["quickstart", "smart", "allof", "egress"] {
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
        "research/cohort-explorer",
        "clinical/ehr-internal",
        "clinical/partner",
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

    helm_cmd(&["uninstall", "fhirguard", "-n", "fhirguard-system"]);
}
