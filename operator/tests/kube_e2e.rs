//! The operator against a real kube-apiserver + etcd (Kubernetes 1.20.2 from Debian's source
//! package; see tests/common). One stack, one story, in the order a user lives it:
//! install CRDs and RBAC, apply objects, watch the config appear, change a Secret, break a
//! policy, delete one, restart the operator, run two replicas.
//!
//! What 1.20 cannot show: CEL `x-kubernetes-validations` (dropped from the schema by this
//! server, enforced by the operator instead; asserted below) and the Kubernetes >= 1.33 API
//! surface kube 5 targets (nothing here uses it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{KubeStack, eventually, http_get, metric, start_operator};
use fhirguard_operator::crd::{FhirConnection, FhirSecurityPolicy, ObjectStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::Api;
use kube::api::ListParams;

const T: Duration = Duration::from_secs(30);

fn condition<'a>(s: Option<&'a ObjectStatus>, t: &str) -> Option<(&'a str, &'a str, &'a str)> {
    s?.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

async fn config_secret(api: &Api<Secret>) -> Option<(String, u64, BTreeMap<String, Vec<u8>>)> {
    let s = api.get_opt("fhirguard-authz-config").await.ok()??;
    let rv = s.metadata.resource_version.clone()?;
    let generation = s
        .metadata
        .annotations
        .as_ref()?
        .get("fhirguard.dev/config-generation")?
        .parse()
        .ok()?;
    let data = s
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Some((rv, generation, data))
}

fn config_json(data: &BTreeMap<String, Vec<u8>>) -> serde_json::Value {
    serde_json::from_slice(data.get("config.json").expect("config.json")).expect("json")
}

fn names(config: &serde_json::Value, list: &str) -> Vec<String> {
    config[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p["namespace"].as_str().unwrap(),
                p["name"].as_str().unwrap()
            )
        })
        .collect()
}

async fn events_for(api: &Api<Event>, kind: &str, name: &str) -> Vec<(String, String)> {
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            e.regarding
                .as_ref()
                .is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .map(|e| (e.type_.unwrap_or_default(), e.reason.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_against_a_real_api_server() {
    let Some(stack) = tokio::task::block_in_place(KubeStack::start) else {
        return;
    };
    let repo = common::repo();
    let k = |args: &[&str]| stack.kubectl(args);

    // --- install: CRDs with kubectl, exactly as committed -----------------------------------
    // kubectl validates client-side against this old server's OpenAPI, which predates CEL's
    // `x-kubernetes-validations`; on servers < 1.25 that needs --validate=false (README).
    let strict = stack.kubectl_output(&["apply", "-f", repo.join("crds").to_str().unwrap()]);
    eprintln!("strict apply: {}", String::from_utf8_lossy(&strict.stderr));
    k(&[
        "apply",
        "--validate=false",
        "-f",
        repo.join("crds").to_str().unwrap(),
    ]);
    k(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/fhirsecuritypolicies.fhirguard.dev",
        "crd/fhirconnections.fhirguard.dev",
    ]);
    for ns in ["fhirguard-system", "clinical", "research", "elsewhere"] {
        k(&["create", "namespace", ns]);
    }
    k(&[
        "apply",
        "-f",
        repo.join("deploy/operator-rbac.yaml").to_str().unwrap(),
    ]);
    // The server publishes CRD schemas to /openapi/v2 a moment after they are established.
    let explain = eventually("kubectl explain", T, || async {
        let out = stack.kubectl_output(&["explain", "fhirsecuritypolicy.spec.authentication.jwt"]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await;
    assert!(
        explain.contains("OAuth2 / OpenID Connect bearer tokens"),
        "{explain}"
    );
    assert!(explain.contains("providers"), "{explain}");

    // The structural schema is enforced by this server: an unknown enum value is refused.
    let bad_enum = stack.apply("apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {name: bad, namespace: clinical}\nspec:\n  match: {basePath: /x}\n  authorization: {smart: {patientSearch: Maybe}}\n");
    assert!(!bad_enum.status.success());
    assert!(String::from_utf8_lossy(&bad_enum.stderr).contains("Unsupported value: \"Maybe\""));

    // --- the same objects render uses, plus one in a namespace the operator does not watch ---
    k(&[
        "apply",
        "-f",
        repo.join("operator/tests/fixtures/valid").to_str().unwrap(),
    ]);
    stack.apply_ok(
        &std::fs::read_to_string(repo.join("operator/tests/fixtures/valid/20-policies.yaml"))
            .unwrap()
            .replace("namespace: clinical", "namespace: elsewhere")
            .replace("namespace: research", "namespace: elsewhere"),
    );

    let client = stack.admin_client().await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "fhirguard-system");
    let policies: Api<FhirSecurityPolicy> = Api::namespaced(client.clone(), "clinical");
    let research: Api<FhirSecurityPolicy> = Api::namespaced(client.clone(), "research");
    let elsewhere: Api<FhirSecurityPolicy> = Api::namespaced(client.clone(), "elsewhere");
    let connections: Api<FhirConnection> = Api::namespaced(client.clone(), "clinical");
    let events: Api<Event> = Api::namespaced(client.clone(), "clinical");

    // --- the controller publishes what render writes, byte for byte -------------------------
    let http = common::free_port();
    let mut op = start_operator(
        &stack,
        "operator-a",
        http,
        &["--namespaces", "clinical,research"],
    );
    let (rv1, gen1, data1) = eventually("the config Secret", T, || config_secret(&secrets)).await;
    assert_eq!(gen1, 1);
    let rendered = tempfile::tempdir().unwrap();
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_fhirguard-operator"))
        .args(["render", "-f"])
        .arg(repo.join("operator/tests/fixtures/valid"))
        .arg("-o")
        .arg(rendered.path())
        .output()
        .unwrap();
    assert!(r.status.success());
    let mut rendered_files = BTreeMap::new();
    for e in std::fs::read_dir(rendered.path()).unwrap() {
        let e = e.unwrap();
        rendered_files.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).unwrap(),
        );
    }
    assert_eq!(
        data1, rendered_files,
        "controller output equals render output"
    );
    let config = config_json(&data1);
    assert_eq!(
        names(&config, "policies"),
        ["clinical/ehr", "research/cohort"],
        "the unwatched namespace is not read"
    );

    // Status: Accepted and Ready with observedGeneration, on every object.
    let ehr = eventually("ehr Ready", T, || async {
        let p = policies.get("ehr").await.ok()?;
        (condition(p.status.as_ref(), "Ready")?.0 == "True").then_some(p)
    })
    .await;
    let st = ehr.status.as_ref().unwrap();
    assert_eq!(condition(Some(st), "Accepted").unwrap().0, "True");
    assert_eq!(condition(Some(st), "Accepted").unwrap().1, "Valid");
    let ready = condition(Some(st), "Ready").unwrap();
    assert_eq!(ready.1, "ConfigPublished");
    assert!(
        ready.2.contains("generation 1")
            && ready.2.contains("fhirguard-system/fhirguard-authz-config"),
        "{ready:?}"
    );
    assert_eq!(st.observed_generation, ehr.metadata.generation);
    assert!(
        st.conditions
            .iter()
            .all(|c| c.observed_generation == ehr.metadata.generation)
    );
    for c in ["ehr-internal", "partner"] {
        eventually(&format!("connection {c} Ready"), T, || async {
            let o = connections.get(c).await.ok()?;
            (condition(o.status.as_ref(), "Ready")?.1 == "ConfigPublished").then_some(())
        })
        .await;
    }
    // The CA bundle egress Envoys need is published apart from the credentials: a ConfigMap
    // in the connection's namespace, byte-identical to `render --trust-dir`, and the
    // connection's Ready condition says where it is.
    let trust_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "clinical");
    let trust_rendered = tempfile::tempdir().unwrap();
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_fhirguard-operator"))
        .args(["render", "-f"])
        .arg(repo.join("operator/tests/fixtures/valid"))
        .arg("-o")
        .arg(trust_rendered.path().join("config"))
        .arg("--trust-dir")
        .arg(trust_rendered.path().join("trust"))
        .output()
        .unwrap();
    assert!(r.status.success());
    let want_trust: BTreeMap<String, String> =
        std::fs::read_dir(trust_rendered.path().join("trust/clinical"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect();
    assert_eq!(
        want_trust.keys().collect::<Vec<_>>(),
        ["connection_clinical_ehr-internal_ca.pem"]
    );
    let trust_data = |cm: &ConfigMap| cm.data.clone().unwrap_or_default();
    let cm = eventually("the trust ConfigMap", T, || async {
        trust_maps.get_opt("fhirguard-trust").await.ok()?
    })
    .await;
    assert_eq!(trust_data(&cm), want_trust);
    assert_eq!(
        cm.metadata.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
        "fhirguard-operator"
    );
    let internal = connections.get("ehr-internal").await.unwrap();
    let ready = condition(internal.status.as_ref(), "Ready").unwrap();
    assert!(
        ready
            .2
            .contains("its CA bundle for egress Envoys is in ConfigMap clinical/fhirguard-trust"),
        "{ready:?}"
    );
    // research has no connection with a CA bundle: no ConfigMap there.
    let research_maps: Api<ConfigMap> = Api::namespaced(client.clone(), "research");
    assert!(
        research_maps
            .get_opt("fhirguard-trust")
            .await
            .unwrap()
            .is_none()
    );
    // A hand edit (changed bundle, extra key) is put back at once.
    k(&[
        "-n",
        "clinical",
        "patch",
        "configmap",
        "fhirguard-trust",
        "--type=merge",
        "-p",
        r#"{"data":{"connection_clinical_ehr-internal_ca.pem":"tampered","extra":"x"}}"#,
    ]);
    eventually("trust ConfigMap put back", T, || async {
        let cm = trust_maps.get_opt("fhirguard-trust").await.ok()??;
        (trust_data(&cm) == want_trust).then_some(())
    })
    .await;
    // Nobody else's ConfigMap is touched.
    assert!(
        trust_maps.get_opt("unrelated").await.unwrap().is_some(),
        "the fixture's unrelated ConfigMap stays"
    );

    assert!(
        elsewhere.get("ehr").await.unwrap().status.is_none(),
        "objects in unwatched namespaces are left alone"
    );
    let printed = k(&["get", "fhirsecuritypolicies", "-n", "clinical"]);
    assert!(
        printed.contains("READY") && printed.contains("ConfigPublished"),
        "{printed}"
    );

    // Events on the transition to Ready.
    let evs = eventually("a ConfigPublished event", T, || async {
        let e = events_for(&events, "FhirSecurityPolicy", "ehr").await;
        e.iter().any(|(_, r)| r == "ConfigPublished").then_some(e)
    })
    .await;
    assert!(
        evs.iter().any(|(t, r)| t == "Normal" && r == "Valid"),
        "{evs:?}"
    );

    // --- a referenced Secret changes: the config follows ------------------------------------
    let carol = "carol:$6$demoAlic$ymJf6FEfOFdofNtjX17SLmXMsZSKBdVjPUHqckA2Yz3autzWfvvgcyMuAOiyZWeG06FKNUFjtCJ1So76MPLBR/";
    let users = std::fs::read_to_string(repo.join("operator/tests/fixtures/valid/10-secrets.yaml"))
        .unwrap();
    let users_doc = users.split("---").next().unwrap().to_string();
    stack.apply_ok(&format!("{}\n    {carol}\n", users_doc.trim_end()));
    let (_, gen2, data2) = eventually("the htpasswd change", T, || async {
        let (rv, g, d) = config_secret(&secrets).await?;
        (String::from_utf8_lossy(&d["config.json"]).contains("carol:")).then_some((rv, g, d))
    })
    .await;
    assert_eq!(gen2, 2);
    assert_eq!(config_json(&data2)["generation"], 2);

    // An unrelated Secret changing does not cause a write.
    k(&[
        "-n",
        "clinical",
        "create",
        "secret",
        "generic",
        "noise",
        "--from-literal=a=b",
    ]);

    // --- a policy becomes invalid: Accepted=False with the reason; others keep publishing ----
    // (This also violates no CEL rule; see the CEL check below for one that does.)
    k(&[
        "-n",
        "research",
        "patch",
        "fhirsecuritypolicy",
        "cohort",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/authentication/jwt/providers/0/jwks/secretRef/name","value":"missing-jwks"}]"#,
    ]);
    let cohort = eventually("cohort rejected", T, || async {
        let p = research.get("cohort").await.ok()?;
        let a = condition(p.status.as_ref(), "Accepted")?;
        (a.0 == "False").then_some(p)
    })
    .await;
    let st = cohort.status.as_ref().unwrap();
    let accepted = condition(Some(st), "Accepted").unwrap();
    assert_eq!(accepted.1, "SecretNotFound");
    assert!(
        accepted.2.contains(
            "authentication.jwt.providers[0].jwks.secretRef: Secret \"missing-jwks\" not found"
        ),
        "{accepted:?}"
    );
    assert_eq!(condition(Some(st), "Ready").unwrap().1, "NotAccepted");
    assert_eq!(st.observed_generation, cohort.metadata.generation);
    let (_, gen3, data3) = eventually("cohort removed from the config", T, || async {
        let (rv, g, d) = config_secret(&secrets).await?;
        (names(&config_json(&d), "policies") == ["clinical/ehr"]).then_some((rv, g, d))
    })
    .await;
    assert_eq!(gen3, 3, "the noise Secret caused no write");
    assert!(String::from_utf8_lossy(&data3["config.json"]).contains("carol:"));
    let research_events: Api<Event> = Api::namespaced(client.clone(), "research");
    eventually("a SecretNotFound warning event", T, || async {
        let e = events_for(&research_events, "FhirSecurityPolicy", "cohort").await;
        e.iter()
            .any(|(t, r)| t == "Warning" && r == "SecretNotFound")
            .then_some(())
    })
    .await;

    // CEL rules are dropped by this 1.20 server, so the operator must enforce them itself.
    stack.apply_ok("apiVersion: fhirguard.dev/v1alpha1\nkind: FhirConnection\nmetadata: {name: both, namespace: clinical}\nspec:\n  url: https://x.example/fhir\n  tls: {mode: CustomBundle}\n");
    eventually(
        "CEL-violating connection rejected by the operator",
        T,
        || async {
            let c = connections.get("both").await.ok()?;
            let a = condition(c.status.as_ref(), "Accepted")?;
            (a.0 == "False"
                && a.1 == "InvalidSpec"
                && a.2
                    .contains("tls.caBundleSecretRef: required when mode is CustomBundle"))
            .then_some(())
        },
    )
    .await;

    // --- a malformed object stored under a looser CRD (as after rolling the CRDs back and
    // forth): a typed watch would fail its whole list on it. The operator reads it field by
    // field, reports exactly what `render` reports for the same YAML, and everything else keeps
    // publishing (the deletion below still reaches the config).
    let (_, strict_policy_crd) = fhirguard_operator::crd::crd_documents()
        .unwrap()
        .into_iter()
        .find(|(f, _)| f.starts_with("fhirsecuritypolicies"))
        .unwrap();
    let mut loose: serde_json::Value = serde_saphyr::from_str(&strict_policy_crd).unwrap();
    loose["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"] =
        serde_json::json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let loose_file = stack.dir.path().join("loose-crd.json");
    std::fs::write(&loose_file, loose.to_string()).unwrap();
    k(&[
        "apply",
        "--validate=false",
        "-f",
        loose_file.to_str().unwrap(),
    ]);
    let broken = "apiVersion: fhirguard.dev/v1alpha1\nkind: FhirSecurityPolicy\nmetadata: {name: broken, namespace: clinical}\nspec:\n  match: {hosts: ehr.example.org, basepath: /fhir/broken}\n  authentication:\n    basic: {htpaswdSecretRef: {name: users}}\n";
    let broken_file = stack.dir.path().join("broken.yaml");
    std::fs::write(&broken_file, broken).unwrap();
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_fhirguard-operator"))
        .args(["render", "-f"])
        .arg(&broken_file)
        .arg("-o")
        .arg(stack.dir.path().join("broken-out"))
        .output()
        .unwrap();
    let render_lines: Vec<String> = String::from_utf8_lossy(&r.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("clinical/broken: ").map(str::to_string))
        .collect();
    assert_eq!(render_lines.len(), 5, "{render_lines:?}");
    // The server accepts it now; the operator's view must not be blocked by it.
    eventually("the loose CRD accepts the malformed object", T, || async {
        stack.apply(broken).status.success().then_some(())
    })
    .await;
    let want = format!(
        "not used; requests it governs are refused until fixed: {}",
        render_lines.join("; ")
    );
    // Read untyped: the typed client cannot deserialise this object either.
    let got = eventually("the malformed object named field by field", T, || async {
        let out = stack.kubectl_output(&["-n", "clinical", "get", "fsp", "broken", "-o", "json"]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let status: ObjectStatus = serde_json::from_value(doc.get("status")?.clone()).ok()?;
        let a = condition(Some(&status), "Accepted")?;
        (a.0 == "False").then(|| (a.1.to_string(), a.2.to_string()))
    })
    .await;
    assert_eq!(got, ("InvalidSpec".to_string(), want));
    k(&["-n", "clinical", "delete", "fhirsecuritypolicy", "broken"]);
    k(&[
        "apply",
        "--validate=false",
        "-f",
        repo.join("crds").to_str().unwrap(),
    ]);

    // --- delete a policy: it leaves the config ----------------------------------------------
    k(&["-n", "clinical", "delete", "fhirsecuritypolicy", "ehr"]);
    let (rv4, gen4, data4) = eventually("ehr removed", T, || async {
        let (rv, g, d) = config_secret(&secrets).await?;
        names(&config_json(&d), "policies")
            .is_empty()
            .then_some((rv, g, d))
    })
    .await;
    assert_eq!(gen4, 4);
    assert_eq!(
        names(&config_json(&data4), "connections"),
        ["clinical/ehr-internal", "clinical/partner"]
    );
    assert_ne!(rv1, rv4);

    // --- someone edits the published Secret: put back at once (not at the next resync) -------
    // The stray CA file is owned by kubectl's field manager, so a server-side apply alone would
    // leave it; the operator removes it explicitly.
    k(&[
        "-n",
        "fhirguard-system",
        "patch",
        "secret",
        "fhirguard-authz-config",
        "--type=merge",
        "-p",
        r#"{"data":{"config.json":"e30=","connection_gone_old_ca.pem":"eA=="}}"#,
    ]);
    let without_generation = |d: &BTreeMap<String, Vec<u8>>| {
        let mut c = config_json(d);
        c.as_object_mut().unwrap().remove("generation");
        c
    };
    let (_, _, data5) = eventually("hand edit put back", T, || async {
        let (rv, g, d) = config_secret(&secrets).await?;
        (g == 5 && !d.contains_key("connection_gone_old_ca.pem")).then_some((rv, g, d))
    })
    .await;
    assert_eq!(without_generation(&data5), without_generation(&data4));
    assert_eq!(config_json(&data5)["generation"], 5);

    // Deleted outright: recreated, and the generation keeps counting up.
    k(&[
        "-n",
        "fhirguard-system",
        "delete",
        "secret",
        "fhirguard-authz-config",
    ]);
    let (rv4, _, _) = eventually("deleted config recreated", T, || async {
        let (rv, g, d) = config_secret(&secrets).await?;
        (g == 6).then_some((rv, g, d))
    })
    .await;

    let (status, body) = http_get(http, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&body, "fhirguard_operator_leader "), Some(1.0));
    assert_eq!(
        metric(&body, "fhirguard_operator_config_generation "),
        Some(6.0)
    );
    assert_eq!(
        metric(
            &body,
            "fhirguard_operator_config_publishes_total{result=\"written\"}"
        ),
        Some(6.0)
    );
    assert_eq!(http_get(http, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http_get(http, "/readyz").map(|r| r.0), Some(200));

    // --- graceful shutdown releases the lease; a restart writes nothing ----------------------
    op.signal("TERM");
    let exit = op
        .wait_timeout(Duration::from_secs(10))
        .expect("operator exits within 10s of SIGTERM");
    assert!(exit.success(), "{}", op.log_text());
    assert!(op.log_text().contains("released the leader lease"));
    let holder = k(&[
        "-n",
        "fhirguard-system",
        "get",
        "lease",
        "fhirguard-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, "", "lease released on shutdown");

    let http_b = common::free_port();
    let op_b = start_operator(
        &stack,
        "operator-b",
        http_b,
        &["--namespaces", "clinical,research"],
    );
    eventually("operator-b compiled", T, || async {
        let (_, body) = http_get(http_b, "/metrics")?;
        (metric(&body, "fhirguard_operator_compiles_total")? >= 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rv5, gen5, _) = config_secret(&secrets).await.unwrap();
    assert_eq!(
        (rv5.as_str(), gen5),
        (rv4.as_str(), 6),
        "a restarted operator does not rewrite an unchanged config"
    );
    let (_, body) = http_get(http_b, "/metrics").unwrap();
    assert_eq!(
        metric(
            &body,
            "fhirguard_operator_config_publishes_total{result=\"written\"}"
        ),
        None
    );
    assert_eq!(
        metric(
            &body,
            "fhirguard_operator_status_updates_total{result=\"written\"}"
        ),
        None,
        "statuses were already current"
    );
    assert_eq!(
        metric(
            &body,
            "fhirguard_operator_trust_publishes_total{result=\"written\"}"
        ),
        None,
        "the trust ConfigMap was already current"
    );

    // --- two replicas: the second stands by, and takes over when the leader dies -------------
    let http_c = common::free_port();
    let op_c = start_operator(
        &stack,
        "operator-c",
        http_c,
        &["--namespaces", "clinical,research"],
    );
    eventually("operator-c serving", T, || async {
        http_get(http_c, "/metrics")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, body) = http_get(http_c, "/metrics").unwrap();
    assert_eq!(
        metric(&body, "fhirguard_operator_leader "),
        Some(0.0),
        "standby while operator-b leads"
    );
    assert_eq!(
        metric(&body, "fhirguard_operator_compiles_total"),
        Some(0.0)
    );
    assert_eq!(
        http_get(http_c, "/readyz").map(|r| r.0),
        Some(200),
        "a standby replica is ready"
    );

    // The leader dies without releasing (SIGKILL); the standby waits out the lease, then leads.
    op_b.signal("KILL");
    drop(op_b);
    k(&["-n", "clinical", "delete", "fhirconnection", "partner"]);
    let (_, gen7, data7) = eventually(
        "operator-c took over and published",
        Duration::from_secs(40),
        || async {
            let (rv, g, d) = config_secret(&secrets).await?;
            (names(&config_json(&d), "connections") == ["clinical/ehr-internal"])
                .then_some((rv, g, d))
        },
    )
    .await;
    assert_eq!(gen7, 7);
    assert!(!data7.keys().any(|k| k.contains("partner")));
    let (_, body) = http_get(http_c, "/metrics").unwrap();
    assert_eq!(metric(&body, "fhirguard_operator_leader "), Some(1.0));
    assert!(
        op_c.log_text()
            .contains("lease holder stopped renewing; taking over"),
        "{}",
        op_c.log_text()
    );
    let holder = k(&[
        "-n",
        "fhirguard-system",
        "get",
        "lease",
        "fhirguard-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    assert_eq!(holder, "operator-c");

    // The last connection with a CA bundle goes: so does the trust ConfigMap.
    k(&["-n", "clinical", "delete", "fhirconnection", "ehr-internal"]);
    eventually("trust ConfigMap deleted", T, || async {
        trust_maps
            .get_opt("fhirguard-trust")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let (_, body) = http_get(http_c, "/metrics").unwrap();
    assert_eq!(
        metric(
            &body,
            "fhirguard_operator_trust_publishes_total{result=\"deleted\"}"
        ),
        Some(1.0)
    );
}
