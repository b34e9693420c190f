//! `fhirguard-operator`: `run` (the controller), `crds` (print the CRDs) and `render` (compile
//! YAML files offline into a config directory).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use fhirguard_operator::reconcile::{self, Settings, lease::LeaseSettings};
use fhirguard_operator::{crd, metrics, publish, render, status};

#[derive(Parser)]
#[command(
    name = "fhirguard-operator",
    version,
    about = "Compiles FhirSecurityPolicy and FhirConnection resources into fhirguard-authz configuration"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (in-cluster, or with KUBECONFIG / ~/.kube/config).
    Run(RunArgs),
    /// Print both CustomResourceDefinitions as YAML.
    Crds,
    /// Compile YAML files offline and write the config directory the controller would publish.
    Render {
        /// Files or directories with FhirSecurityPolicy, FhirConnection and Secret objects.
        #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Output directory (created if needed).
        #[arg(short = 'o', long = "output-dir")]
        output: PathBuf,
        /// The generation written into config.json.
        #[arg(long, default_value_t = 1)]
        generation: u64,
        /// Also write the CA bundles egress Envoys trust for FhirConnection upstreams, as
        /// DIR/<namespace>/<file>: what the controller publishes as the trust ConfigMap in each
        /// namespace. Certificates only, no credentials.
        #[arg(long, value_name = "DIR")]
        trust_dir: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespaces to watch (comma-separated); empty watches every namespace.
    #[arg(
        long,
        env = "FHIRGUARD_WATCH_NAMESPACES",
        value_delimiter = ',',
        default_value = ""
    )]
    namespaces: Vec<String>,
    /// Namespace of the published config Secret (and of the leader Lease).
    #[arg(long, env = "POD_NAMESPACE", default_value = "fhirguard-system")]
    config_namespace: String,
    /// Name of the published config Secret, mounted by the authz-service.
    #[arg(
        long,
        env = "FHIRGUARD_CONFIG_SECRET",
        default_value = "fhirguard-authz-config"
    )]
    config_secret: String,
    /// Name of the ConfigMap, in each namespace with FhirConnections that use `CustomBundle`,
    /// holding those connections' CA bundles for egress Envoys to mount (certificates only;
    /// the credentials stay in the config Secret). Empty: publish none.
    #[arg(
        long,
        env = "FHIRGUARD_TRUST_CONFIGMAP",
        default_value = publish::DEFAULT_TRUST_CONFIGMAP
    )]
    trust_configmap: String,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "fhirguard-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the lease stays valid without renewal, in seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,
    /// Seconds to wait for more changes before compiling.
    #[arg(long, default_value_t = 0.3)]
    debounce_seconds: f64,
    /// Recompile at least this often (seconds).
    #[arg(long, default_value_t = 300)]
    resync_seconds: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crds => match crd::crds_yaml() {
            Ok(y) => {
                print!("{y}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Render {
            files,
            output,
            generation,
            trust_dir,
        } => render_cmd(&files, &output, generation, trust_dir.as_deref()),
        Command::Run(args) => match run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn render_cmd(
    files: &[PathBuf],
    out: &std::path::Path,
    generation: u64,
    trust_dir: Option<&std::path::Path>,
) -> ExitCode {
    let inputs = match render::load(files) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    for s in &inputs.skipped {
        eprintln!("note: skipped {s} (not a fhirguard resource or Secret)");
    }
    let (compiled, problems) = render::compile(&inputs);
    if !problems.is_empty() {
        eprint!("{}", status::format_problems(&problems));
        eprintln!(
            "error: {} problem(s); nothing was written to {}",
            problems.len(),
            out.display()
        );
        return ExitCode::FAILURE;
    }
    let files = publish::files(&compiled, generation);
    if let Err(e) = publish::write_dir(out, &files) {
        eprintln!("error: cannot write {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    if let Some(dir) = trust_dir {
        let trust = publish::trust_files(&compiled);
        if let Err(e) = publish::write_trust_dir(dir, &trust) {
            eprintln!("error: cannot write {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
        let count: usize = trust.values().map(|f| f.len()).sum();
        eprintln!(
            "wrote {count} CA bundle(s) for egress Envoys to {} ({} namespace(s))",
            dir.display(),
            trust.len()
        );
    }
    for w in compiled.objects.values().flat_map(|o| {
        o.warnings
            .iter()
            .map(move |w| format!("warning: {}: {w}", o.key))
    }) {
        eprintln!("{w}");
    }
    eprintln!(
        "wrote {} file(s) to {}: {} policies, {} connections",
        files.len(),
        out.display(),
        compiled.config.policies.len(),
        compiled.config.connections.len()
    );
    ExitCode::SUCCESS
}

fn init_tracing() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    init_tracing();
    // kube builds rustls configs with the process-default provider; ring is the only one
    // compiled in, but installing it explicitly avoids a panic if that ever changes.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "fhirguard-operator".into());
        format!("{host}-{}", std::process::id())
    });
    let lease_duration = Duration::from_secs(args.lease_duration_seconds.max(2));
    let settings = Settings {
        namespaces: args
            .namespaces
            .iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        output_namespace: args.config_namespace.clone(),
        output_name: args.config_secret.clone(),
        trust_configmap: Some(args.trust_configmap.trim().to_string()).filter(|n| !n.is_empty()),
        lease: LeaseSettings {
            namespace: args.config_namespace.clone(),
            name: args.lease_name.clone(),
            identity,
            duration: lease_duration,
            retry: lease_duration / 5,
        },
        debounce: Duration::from_secs_f64(args.debounce_seconds.clamp(0.0, 60.0)),
        resync: Duration::from_secs(args.resync_seconds.max(10)),
    };
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
        let metrics = Arc::new(metrics::Metrics::new());
        let listener = tokio::net::TcpListener::bind(args.http_addr)
            .await
            .with_context(|| format!("binding {}", args.http_addr))?;
        tracing::info!(addr = %args.http_addr, "serving /healthz, /readyz and /metrics");
        let http =
            tokio::spawn(axum::serve(listener, metrics::router(metrics.clone())).into_future());
        tracing::info!(
            namespaces = ?settings.namespaces,
            config_secret = %format!("{}/{}", settings.output_namespace, settings.output_name),
            "starting controller"
        );
        let result = reconcile::run(client, settings, metrics, shutdown_signal()).await;
        http.abort();
        result.map_err(anyhow::Error::from)?;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}
