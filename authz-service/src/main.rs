//! `fhirguard-authz`: the Envoy ext_authz gRPC service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fhirguard_authz::observe::Observer;
use fhirguard_authz::runtime::executor::{Executor, Options};
use fhirguard_authz::runtime::{jwks::JwksOptions, reload, state};
use fhirguard_authz::server::{envoy, health, http, metrics::Metrics};
use fhirguard_authz::verify::cache::{Budget, DEFAULT_BUDGET_MIB};

#[derive(Parser)]
#[command(
    name = "fhirguard-authz",
    version,
    about = "Envoy ext_authz service for FHIR APIs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve Check over gRPC, with /healthz, /readyz and /metrics on the HTTP port.
    Serve {
        /// The compiled config: `config.json` and the CA files it names, as the operator
        /// publishes them (the mounted config Secret) or `fhirguard-operator render` writes them.
        /// Reloaded when it changes.
        #[arg(long, env = "FHIRGUARD_CONFIG_DIR")]
        config_dir: PathBuf,
        /// Where Envoy's ext_authz filter sends Check (gRPC, HTTP/2).
        #[arg(long, default_value = "0.0.0.0:9001", env = "FHIRGUARD_GRPC_ADDR")]
        grpc_addr: SocketAddr,
        /// /healthz, /readyz (ready once a valid config is loaded), /connections, /metrics.
        #[arg(long, default_value = "0.0.0.0:9090", env = "FHIRGUARD_HTTP_ADDR")]
        http_addr: SocketAddr,
        /// Re-read the config directory at least this often (seconds), besides file events.
        #[arg(long, default_value_t = 10)]
        poll_seconds: u64,
        /// Minimum seconds between two JWKS refetches caused by unknown key ids.
        #[arg(long, default_value_t = 30)]
        jwks_min_refetch_seconds: u64,
        /// Memory for all caches together (verified tokens, Basic successes, compartment
        /// lookups), in MiB. Keep it well below the container's memory limit; the process
        /// itself needs about 20 MiB besides.
        #[arg(long, default_value_t = DEFAULT_BUDGET_MIB, env = "FHIRGUARD_CACHE_MEMORY_MIB")]
        cache_memory_mib: usize,
        /// On SIGTERM, report not ready (HTTP /readyz and grpc.health.v1) but keep answering
        /// for this many seconds, so that Envoy and Kubernetes stop sending before the port
        /// closes. A second signal stops at once.
        #[arg(long, default_value_t = 5)]
        drain_seconds: u64,
        /// Log format: json or text.
        #[arg(long, default_value = "json", env = "FHIRGUARD_LOG_FORMAT")]
        log_format: String,
    },
    /// Validate a config directory and exit (0 when valid).
    Validate {
        /// The config directory to check (`config.json` and the CA files it names).
        #[arg(long)]
        config_dir: PathBuf,
    },
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "text" {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

fn main() -> anyhow::Result<()> {
    // Only ring is compiled in; installing it explicitly keeps any library that calls
    // `ClientConfig::builder()` from panicking should a second provider ever sneak in.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config_dir } => {
            // Building the runtime verifies every hash and key document too; remote JWKS are
            // not fetched (that happens lazily in a serving process).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let service = Executor::new(
                Arc::new(fhirguard_authz::observe::Ignore),
                Options::default(),
            );
            match rt.block_on(async { reload::reload_now(&service, &config_dir) }) {
                Ok(_) => {
                    let c = service
                        .runtime()
                        .map(|r| r.config.clone())
                        .unwrap_or_else(|| fhirguard_authz::config::CompiledConfig::empty(0));
                    println!(
                        "valid: generation {}, {} policies, {} connections",
                        c.generation,
                        c.policies.len(),
                        c.connections.len()
                    );
                    Ok(())
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Serve {
            config_dir,
            grpc_addr,
            http_addr,
            poll_seconds,
            jwks_min_refetch_seconds,
            cache_memory_mib,
            drain_seconds,
            log_format,
        } => {
            init_logging(&log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(ServeArgs {
                config_dir,
                grpc_addr,
                http_addr,
                poll: Duration::from_secs(poll_seconds.max(1)),
                options: Options {
                    jwks: JwksOptions {
                        min_refetch_interval: Duration::from_secs(jwks_min_refetch_seconds),
                        ..JwksOptions::default()
                    },
                    cache: Budget::from_mib(cache_memory_mib),
                    ..Options::default()
                },
                drain: Duration::from_secs(drain_seconds),
            }))
        }
    }
}

struct ServeArgs {
    config_dir: PathBuf,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    poll: Duration,
    options: Options,
    drain: Duration,
}

/// Resolves at SIGTERM or Ctrl-C.
async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} },
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let ServeArgs {
        config_dir,
        grpc_addr,
        http_addr,
        poll,
        options,
        drain,
    } = args;
    let metrics = Arc::new(Metrics::new());
    let observer: Arc<dyn Observer> = metrics.clone();
    let service = Arc::new(Executor::new(observer, options));
    tracing::info!(
        cache_budget_bytes = options.cache.total(),
        "cache memory budget"
    );
    if let Err(e) = reload::reload_now(&service, &config_dir) {
        // Not fatal: the directory may be filled later. Until then every Check is UNAVAILABLE
        // and /readyz says not ready.
        tracing::error!(error = %e, "no valid config at start; not ready");
    }
    let _watch = reload::watch(service.clone(), config_dir.clone(), poll);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let http_listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .with_context(|| format!("binding the HTTP port {http_addr}"))?;
    let mut http_stop = stop_rx.clone();
    let http_task = tokio::spawn(
        axum::serve(
            http_listener,
            http::router(service.clone(), metrics.clone()),
        )
        .with_graceful_shutdown(async move {
            let _ = http_stop.changed().await;
        })
        .into_future(),
    );

    let incoming = tonic::transport::server::TcpIncoming::bind(grpc_addr)
        .map_err(|e| anyhow::anyhow!("binding the gRPC port {grpc_addr}: {e}"))?
        .with_nodelay(Some(true));
    tracing::info!(%grpc_addr, %http_addr, config_dir = %state::display_dir(&config_dir).display(), "serving");
    let mut grpc_stop = stop_rx.clone();
    let grpc = tonic::transport::Server::builder()
        .add_service(health::server(&service))
        .add_service(envoy::EnvoyAuthz::new(service.clone()).into_server())
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = grpc_stop.changed().await;
        });
    let grpc_task = tokio::spawn(grpc);
    signal().await;
    if !drain.is_zero() {
        // Not ready from here on, still answering: health checks take this replica out of
        // rotation before its port closes, so no Check is cut off.
        tracing::info!(drain_s = drain.as_secs(), "shutting down: draining");
        service.start_draining();
        tokio::select! {
            _ = tokio::time::sleep(drain) => {}
            _ = signal() => tracing::info!("second signal: stopping now"),
        }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    // In-flight Checks finish; Envoy retries elsewhere for new ones.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let _ = grpc_task.await;
        let _ = http_task.await;
    })
    .await;
    Ok(())
}
