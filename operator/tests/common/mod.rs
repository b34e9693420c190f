//! A real kube-apiserver + etcd on 127.0.0.1 for the operator's integration tests.
//!
//! The API server binary is built from Debian's `kubernetes` source package by
//! `scripts/kube-apiserver.sh` (Kubernetes 1.20.2; see docs/testing.md for what that version can
//! and cannot show). It is found through `FHIRGUARD_KUBE_APISERVER` or the script's cache.
//! Without it the tests are skipped, unless `FHIRGUARD_REQUIRE_KUBE=1` (set by CI) makes that
//! a failure.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(cmd))
            .find(|p| p.is_file())
    })
}

fn apiserver_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FHIRGUARD_KUBE_APISERVER") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("FHIRGUARD_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/fhirguard")))?;
    let mut found: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("kube-apiserver-"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Returns `None` (test skipped) when the binaries are missing and CI did not require them.
pub fn binaries() -> Option<(PathBuf, PathBuf, PathBuf)> {
    let found = (apiserver_bin(), which("etcd"), which("kubectl"));
    match found {
        (Some(a), Some(e), Some(k)) if a.is_file() => Some((a, e, k)),
        _ => {
            assert!(
                std::env::var("FHIRGUARD_REQUIRE_KUBE").as_deref() != Ok("1"),
                "FHIRGUARD_REQUIRE_KUBE=1 but kube-apiserver/etcd/kubectl missing: {found:?}; run scripts/kube-apiserver.sh"
            );
            eprintln!(
                "SKIPPED: kube-apiserver, etcd or kubectl not found ({found:?}); run scripts/kube-apiserver.sh"
            );
            None
        }
    }
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }

    /// Waits for exit; `None` if still running after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    pub fn start() -> Option<KubeStack> {
        let (apiserver_bin, etcd_bin, kubectl) = binaries()?;
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
        let key = rcgen::KeyPair::generate().expect("service account key");
        std::fs::write(d.join("sa.key"), key.serialize_pem()).expect("write sa.key");
        std::fs::write(d.join("sa.pub"), key.public_key_pem()).expect("write sa.pub");
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
        let log = d.join("kube-apiserver-restarted.log");
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log"))
            .stderr(file)
            .spawn()
            .expect("restart kube-apiserver");
        self.apiserver = Proc {
            name: "kube-apiserver".into(),
            child,
            log,
        };
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

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
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

/// A plain HTTP GET on 127.0.0.1; `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|x| x.1).unwrap_or_default();
    Some((status, body.to_string()))
}

/// The value of a metric sample line starting with `prefix` (name plus labels).
pub fn metric(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// helm (v4): `FHIRGUARD_HELM`, else `.venv/bin/helm` from `scripts/setup-helm.sh`. Missing
/// means skipped, unless `FHIRGUARD_REQUIRE_HELM=1`.
pub fn helm_bin() -> Option<PathBuf> {
    let p = std::env::var_os("FHIRGUARD_HELM")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".venv/bin/helm"));
    if p.is_file() {
        return Some(p);
    }
    assert!(
        std::env::var("FHIRGUARD_REQUIRE_HELM").as_deref() != Ok("1"),
        "FHIRGUARD_REQUIRE_HELM=1 but {} is missing; run scripts/setup-helm.sh",
        p.display()
    );
    eprintln!(
        "SKIPPED: no helm at {} (run scripts/setup-helm.sh)",
        p.display()
    );
    None
}
