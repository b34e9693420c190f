//! Two operator replicas against a real kube-apiserver that goes away for 30 seconds, twice:
//! once stopped outright (a control-plane restart: connections refused), once frozen
//! (SIGSTOP: requests hang). The lease is the chart's default (15 s, renew deadline 10 s), so
//! both outages outlast it.
//!
//! What must hold: neither process exits; the leader steps down when it cannot renew, and
//! readiness says so; never do both replicas consider themselves leader at the same time;
//! when the API server is back, exactly one leads again and publishes the next change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{KubeStack, Proc, eventually, http_get, metric};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

const OUTAGE: Duration = Duration::from_secs(30);

fn start(stack: &KubeStack, name: &str, port: u16) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhirguard-operator"));
    cmd.arg("run")
        .args(["--config-namespace", "fhirguard-system"])
        .args(["--http-addr", &format!("127.0.0.1:{port}")])
        .args(["--identity", name])
        .args(["--debounce-seconds", "0.1"])
        .env("KUBECONFIG", &stack.operator_kubeconfig)
        .env("RUST_LOG", "info,kube=warn");
    Proc::spawn(name, &mut cmd, stack.dir.path())
}

/// (leader gauge, ready) of one replica; `None` when its HTTP port does not answer.
fn state(port: u16) -> Option<(bool, bool)> {
    let (_, body) = http_get(port, "/metrics")?;
    let leader = metric(&body, "fhirguard_operator_leader ")? == 1.0;
    let (ready, _) = http_get(port, "/readyz")?;
    Some((leader, ready == 200))
}

async fn generation(api: &Api<Secret>) -> Option<u64> {
    api.get_opt("fhirguard-authz-config")
        .await
        .ok()??
        .metadata
        .annotations?
        .get("fhirguard.dev/config-generation")?
        .parse()
        .ok()
}

/// Samples both replicas every 100 ms until stopped and fails the test if both ever claim
/// the lead at once.
fn watch_for_two_leaders(ports: [u16; 2], stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut samples = 0;
        while !stop.load(Ordering::SeqCst) {
            let a = state(ports[0]).is_some_and(|s| s.0);
            let b = state(ports[1]).is_some_and(|s| s.0);
            assert!(!(a && b), "both replicas lead at once");
            samples += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        samples
    })
}

/// Waits for the outage to end while checking that both processes stay up and that, once
/// the renew deadline has passed, nobody claims the lead and nobody says it is ready.
/// Returns when the leader was seen stepping down, counted from the outage's start.
fn ride_out(ops: &mut [&mut Proc; 2], ports: [u16; 2]) -> Option<Duration> {
    let started = Instant::now();
    let mut saw_unready = [false; 2];
    let mut stepped_down = None;
    while started.elapsed() < OUTAGE {
        let leaders = ports
            .iter()
            .filter(|p| state(**p).is_some_and(|s| s.0))
            .count();
        if leaders == 0 && stepped_down.is_none() {
            stepped_down = Some(started.elapsed());
        }
        for (i, op) in ops.iter_mut().enumerate() {
            assert!(
                op.child.try_wait().unwrap().is_none(),
                "{} exited during the API server outage:\n{}",
                op.name,
                common::tail(&op.log_text(), 30)
            );
            if started.elapsed() > Duration::from_secs(16) {
                let (leader, ready) = state(ports[i]).expect("the HTTP port answers");
                assert!(!leader, "{} still leads without renewing", op.name);
                saw_unready[i] |= !ready;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(saw_unready, [true, true], "readiness reflects the outage");
    stepped_down
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_ride_out_api_server_outages_with_one_writer() {
    let Some(mut stack) = tokio::task::block_in_place(KubeStack::start) else {
        return;
    };
    let repo = common::repo();
    stack.kubectl(&[
        "apply",
        "--validate=false",
        "-f",
        repo.join("crds").to_str().unwrap(),
    ]);
    stack.kubectl(&[
        "wait",
        "--for",
        "condition=established",
        "--timeout=30s",
        "crd/fhirsecuritypolicies.fhirguard.dev",
        "crd/fhirconnections.fhirguard.dev",
    ]);
    for ns in ["fhirguard-system", "clinical", "research"] {
        stack.kubectl(&["create", "namespace", ns]);
    }
    stack.kubectl(&[
        "apply",
        "-f",
        repo.join("deploy/operator-rbac.yaml").to_str().unwrap(),
    ]);
    stack.kubectl(&[
        "apply",
        "-f",
        repo.join("operator/tests/fixtures/valid").to_str().unwrap(),
    ]);
    let secrets: Api<Secret> = Api::namespaced(stack.admin_client().await, "fhirguard-system");

    let ports = [common::free_port(), common::free_port()];
    let mut a = start(&stack, "operator-a", ports[0]);
    let mut b = start(&stack, "operator-b", ports[1]);
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = watch_for_two_leaders(ports, stop.clone());
    let one_leader = move || async move {
        let s = [state(ports[0])?, state(ports[1])?];
        (s[0].0 != s[1].0 && s[0].1 && s[1].1).then_some(())
    };
    eventually(
        "one leader, both ready",
        Duration::from_secs(60),
        one_leader,
    )
    .await;
    let g1 = eventually("the config published", Duration::from_secs(30), || {
        generation(&secrets)
    })
    .await;

    for (round, freeze) in [(1u64, false), (2, true)] {
        // --- the API server goes away for 30 s ---------------------------------------------
        if freeze {
            stack.apiserver.signal("STOP");
        } else {
            stack.stop_apiserver();
        }
        let stepped_down = tokio::task::block_in_place(|| ride_out(&mut [&mut a, &mut b], ports));
        if freeze {
            stack.apiserver.signal("CONT");
        } else {
            tokio::task::block_in_place(|| stack.start_apiserver());
        }
        let back = Instant::now();

        // --- back: exactly one leader again, and it publishes the next change -------------
        eventually(
            &format!("round {round}: one leader again, both ready"),
            Duration::from_secs(60),
            one_leader,
        )
        .await;
        let users =
            std::fs::read_to_string(repo.join("operator/tests/fixtures/valid/10-secrets.yaml"))
                .unwrap();
        let users_doc = users.split("---").next().unwrap().trim_end().to_string();
        stack.apply_ok(&format!(
            "{users_doc}\n    round{round}:$6$demoAlic$ymJf6FEfOFdofNtjX17SLmXMsZSKBdVjPUHqckA2Yz3autzWfvvgcyMuAOiyZWeG06FKNUFjtCJ1So76MPLBR/\n"
        ));
        let g = eventually(
            &format!("round {round}: the change published"),
            Duration::from_secs(30),
            || async {
                let g = generation(&secrets).await?;
                (g > g1 + round - 1).then_some(g)
            },
        )
        .await;
        assert_eq!(g, g1 + round, "one write per change");
        eprintln!(
            "round {round} ({}): the leader stepped down {:.1}s into the 30s outage; {:.1}s after the API server answered again one replica led and had published the next change",
            if freeze {
                "API server frozen with SIGSTOP"
            } else {
                "API server stopped and restarted"
            },
            stepped_down.map_or(f64::NAN, |d| d.as_secs_f64()),
            back.elapsed().as_secs_f64()
        );
    }

    stop.store(true, Ordering::SeqCst);
    let samples = tokio::task::block_in_place(|| sampler.join().expect("never two leaders"));
    assert!(samples > 300, "sampled {samples} times");
    // The replica that led stepped down (it did not exit) and the lease changed hands
    // or was taken back in the same process.
    let logs = format!("{}\n{}", a.log_text(), b.log_text());
    assert!(
        logs.contains("lost the leader lease; stepped down"),
        "{}",
        common::tail(&logs, 60)
    );
    let acquired: f64 = ports
        .iter()
        .map(|p| {
            let (_, body) = http_get(*p, "/metrics").unwrap();
            metric(
                &body,
                "fhirguard_operator_leadership_changes_total{change=\"acquired\"}",
            )
            .unwrap_or(0.0)
        })
        .sum();
    assert!(
        acquired >= 3.0,
        "the lead was taken again after each outage"
    );
    for op in [&mut a, &mut b] {
        assert!(op.child.try_wait().unwrap().is_none(), "{} exited", op.name);
    }
}
