//! A real kube-apiserver + etcd on 127.0.0.1 for the operator's integration tests.
//!
//! The API server binary is built from Debian's `kubernetes` source package by
//! `scripts/kube-apiserver.sh` (Kubernetes 1.20.2; see docs/testing.md for what that version can
//! and cannot show). It is found through `FHIRGUARD_KUBE_APISERVER` or the script's cache.
//! Without it (or etcd, or kubectl) the tests fail, unless `FHIRGUARD_SKIP_KUBE=1` or
//! `FHIRGUARD_SKIP_MISSING=1` skips them with a `SKIPPED:` line on stderr. Finding binaries,
//! ports, processes and waiting are the shared `fhirguard-test-support` crate's, re-exported
//! here under the names these tests use.
// Each test crate uses its own subset of the harness.
#![allow(dead_code, unused_imports)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use test_support::bins::helm as helm_bin;
pub use test_support::http::{http_get, metric};
pub use test_support::ports::free_port;
pub use test_support::process::{Proc, tail};
pub use test_support::repo;
pub use test_support::wait::eventually_some as eventually;

/// etcd + kube-apiserver with two identities: `admin` (system:masters) and the operator's
/// ServiceAccount name, so the operator runs with exactly the RBAC in deploy/operator-rbac.yaml.
pub struct KubeStack {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub admin_kubeconfig: PathBuf,
    pub operator_kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    apiserver_bin: PathBuf,
    etcd_port: u16,
    secure_port: u16,
    // Field order: apiserver stops before etcd.
    pub apiserver: Proc,
    pub etcd: Proc,
}

fn apiserver_command(bin: &Path, d: &Path, etcd_port: u16, secure_port: u16) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
        .arg("--bind-address=127.0.0.1")
        .arg("--advertise-address=127.0.0.1")
        .arg(format!("--secure-port={secure_port}"))
        .arg("--insecure-port=0")
        .arg(format!("--cert-dir={}", d.join("certs").display()))
        .arg(format!(
            "--token-auth-file={}",
            d.join("tokens.csv").display()
        ))
        .arg("--authorization-mode=RBAC")
        .arg(format!(
            "--service-account-key-file={}",
            d.join("sa.pub").display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            d.join("sa.key").display()
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc")
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        .arg("--enable-priority-and-fairness=false");
    cmd
}

pub const OPERATOR_USER: &str = "system:serviceaccount:fhirguard-system:fhirguard-operator";

impl KubeStack {
    /// `None` only when the binaries are missing and the run opted out of them.
    #[track_caller]
    pub fn start() -> Option<KubeStack> {
        let test_support::bins::KubeBinaries {
            apiserver: apiserver_bin,
            etcd: etcd_bin,
            kubectl,
        } = test_support::bins::kube()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let (etcd_port, peer_port, secure_port) = (free_port(), free_port(), free_port());
        let etcd = Proc::spawn(
            "etcd",
            Command::new(&etcd_bin)
                .arg("--data-dir")
                .arg(d.join("etcd"))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{etcd_port}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
                ))
                .arg(format!(
                    "--initial-cluster=default=http://127.0.0.1:{peer_port}"
                ))
                .env("ETCD_UNSUPPORTED_ARCH", "amd64"),
            d,
        );
        let (sa_key, sa_pub) = test_support::pki::key_pair_pem();
        std::fs::write(d.join("sa.key"), sa_key).expect("write sa.key");
        std::fs::write(d.join("sa.pub"), sa_pub).expect("write sa.pub");
        std::fs::write(
            d.join("tokens.csv"),
            format!(
                "admin-token,admin,admin,system:masters\noperator-token,{OPERATOR_USER},operator-uid,\"system:serviceaccounts,system:serviceaccounts:fhirguard-system\"\n"
            ),
        )
        .expect("tokens");
        let apiserver = Proc::spawn(
            "kube-apiserver",
            &mut apiserver_command(&apiserver_bin, d, etcd_port, secure_port),
            d,
        );
        let url = format!("https://127.0.0.1:{secure_port}");
        let kubeconfig = |user: &str, token: &str| {
            let path = d.join(format!("{user}.kubeconfig"));
            std::fs::write(
                &path,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster: {{server: \"{url}\", insecure-skip-tls-verify: true}}\nusers:\n- name: {user}\n  user: {{token: {token}}}\ncontexts:\n- name: {user}\n  context: {{cluster: local, user: {user}, namespace: default}}\ncurrent-context: {user}\n"
                ),
            )
            .expect("kubeconfig");
            path
        };
        let admin_kubeconfig = kubeconfig("admin", "admin-token");
        let operator_kubeconfig = kubeconfig("operator", "operator-token");
        let stack = KubeStack {
            dir,
            url,
            admin_kubeconfig,
            operator_kubeconfig,
            kubectl,
            apiserver_bin,
            etcd_port,
            secure_port,
            apiserver,
            etcd,
        };
        stack.wait_ready();
        Some(stack)
    }

    /// Kills the API server (etcd keeps the data).
    pub fn stop_apiserver(&mut self) {
        let _ = self.apiserver.child.kill();
        let _ = self.apiserver.child.wait();
    }

    /// Starts the API server again on the same port, with the same data, and waits for it.
    pub fn start_apiserver(&mut self) {
        let d = self.dir.path().to_path_buf();
        let mut cmd = apiserver_command(&self.apiserver_bin, &d, self.etcd_port, self.secure_port);
        // The restarted server logs to kube-apiserver-restarted.log, next to the first one's.
        self.apiserver = Proc::spawn("kube-apiserver-restarted", &mut cmd, &d);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let start = Instant::now();
        loop {
            let out = self.kubectl_output(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                // Namespaces (default, kube-system) are created by a post-start hook.
                if self
                    .kubectl_output(&["get", "namespace", "default"])
                    .status
                    .success()
                {
                    return;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(90),
                "kube-apiserver not ready after 90s:\n{}\netcd:\n{}",
                tail(&self.apiserver.log_text(), 40),
                tail(&self.etcd.log_text(), 20)
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    pub fn kubectl_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Runs kubectl as admin and returns stdout; panics with stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` with the given YAML.
    pub fn apply(&self, yaml: &str) -> std::process::Output {
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.admin_kubeconfig)
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write yaml");
        child.wait_with_output().expect("kubectl apply")
    }

    pub fn apply_ok(&self, yaml: &str) {
        let out = self.apply(yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed:\n{}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub async fn admin_client(&self) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.admin_kubeconfig).expect("kubeconfig");
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("kube config");
        kube::Client::try_from(cfg).expect("client")
    }
}

/// Starts `fhirguard-operator run` as the operator's ServiceAccount identity.
pub fn start_operator(stack: &KubeStack, name: &str, http_port: u16, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhirguard-operator"));
    cmd.arg("run")
        .args(["--config-namespace", "fhirguard-system"])
        .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
        .args(["--identity", name])
        .args(["--lease-duration-seconds", "4"])
        .args(["--debounce-seconds", "0.1"])
        .args(extra)
        .env("KUBECONFIG", &stack.operator_kubeconfig)
        .env("RUST_LOG", "info,kube=warn");
    Proc::spawn(name, &mut cmd, stack.dir.path())
}
