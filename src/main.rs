use apikey_rotator::{cli, controller, crd, leader, operator, telemetry};
use clap::{Parser, Subcommand};

/// Rotates the Sirius scanner's service API key with zero downtime.
#[derive(Parser)]
#[command(name = "apikey-rotator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster from the kubeconfig or the in-cluster config.
    Run {
        /// Watch only these namespaces, comma-separated (default: all namespaces).
        #[arg(
            long = "namespace",
            short = 'n',
            env = "WATCH_NAMESPACE",
            value_delimiter = ','
        )]
        namespaces: Vec<String>,
        #[arg(long, value_enum, default_value = "text", env = "LOG_FORMAT")]
        log_format: telemetry::LogFormat,
        #[arg(long, default_value = "info", env = "LOG_LEVEL")]
        log_level: String,
        /// Reconcile quiet rotations this often, in seconds (Valkey's change feed reports data
        /// loss at once; this bounds it where the server cannot give the feed).
        #[arg(long, default_value_t = 60, env = "RESYNC_SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
        resync_seconds: u64,
        /// Reconciles running at once (0: unbounded).
        #[arg(long, default_value_t = controller::DEFAULT_CONCURRENCY, env = "RECONCILE_CONCURRENCY")]
        concurrency: u16,
        /// How long a `deletionPolicy: Revoke` deletion keeps trying a Valkey it cannot reach,
        /// in seconds, before it releases the ApiKeyRotation with its keys left valid (named).
        #[arg(long, default_value_t = 300, env = "REVOKE_ON_DELETE_TIMEOUT_SECONDS", value_parser = clap::value_parser!(u64).range(1..=86400))]
        revoke_on_delete_timeout_seconds: u64,
        /// Let Argo Rollouts (`argoproj.io/v1alpha1` `rollouts`) be targets: watches them, so
        /// their CRD must be installed and RBAC must grant them (chart: `argoRollouts.enabled`).
        #[arg(long, env = "ARGO_ROLLOUTS")]
        argo_rollouts: bool,
        /// Where to serve /metrics, /healthz and /readyz ("off" to serve nothing).
        #[arg(long, default_value = "0.0.0.0:8080", env = "METRICS_BIND_ADDRESS")]
        metrics_bind_address: String,
        #[command(flatten)]
        election: ElectionArgs,
    },
    /// Print the ApiKeyRotation CustomResourceDefinition (the content of crds/).
    Crd,
    /// Show rotations: phase, active key id, last and next rotation, per-target progress, conditions.
    Status {
        /// Namespace to show (default: the kubeconfig's namespace).
        #[arg(long, short = 'n', conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        /// Show every namespace.
        #[arg(long, short = 'A')]
        all_namespaces: bool,
        #[arg(long, short = 'o', value_enum, default_value = "table")]
        output: cli::Output,
    },
    /// Request one rotation now (sets the keys.siriusscan.io/rotate annotation to a new token).
    Rotate {
        /// The ApiKeyRotation's name.
        name: String,
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// The token to set (default: the current time); each new token means one rotation.
        #[arg(long)]
        token: Option<String>,
        /// Start and roll out this rotation even when no maintenance window is open (an
        /// emergency, such as a leaked key).
        #[arg(long)]
        outside_windows: bool,
    },
    /// Run a full rotation on an embedded simulated cluster with a real valkey-server.
    #[cfg(feature = "demo")]
    Demo(apikey_rotator::demo::DemoArgs),
}

#[derive(clap::Args)]
struct ElectionArgs {
    /// Act only while holding a coordination.k8s.io Lease (run several replicas safely).
    #[arg(long, env = "LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", required_if_eq("leader_elect", "true"))]
    leader_election_namespace: Option<String>,
    #[arg(
        long,
        default_value = "apikey-rotator-leader",
        env = "LEADER_ELECTION_LEASE_NAME"
    )]
    lease_name: String,
    /// This instance's identity in the Lease (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// How long the Lease stays valid after the holder's last renewal (seconds).
    #[arg(long, default_value_t = 15, env = "LEASE_DURATION_SECONDS", value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_duration_seconds: u64,
    /// The holder renews this many seconds before the Lease expires; also the clock skew
    /// between nodes it tolerates.
    #[arg(long, default_value_t = 5, env = "LEASE_RENEW_GRACE_SECONDS", value_parser = clap::value_parser!(u64).range(1..=120))]
    lease_renew_grace_seconds: u64,
}

impl ElectionArgs {
    fn election(self) -> anyhow::Result<Option<leader::Election>> {
        if !self.leader_elect {
            return Ok(None);
        }
        anyhow::ensure!(
            self.lease_renew_grace_seconds < self.lease_duration_seconds,
            "--lease-renew-grace-seconds must be shorter than --lease-duration-seconds"
        );
        let identity = match self.identity {
            Some(id) => id,
            None => std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .map_err(|e| anyhow::anyhow!("no --identity and no host name: {e}"))?,
        };
        Ok(Some(leader::Election {
            namespace: self
                .leader_election_namespace
                .expect("clap requires it with --leader-elect"),
            lease_name: self.lease_name,
            identity,
            lease_duration: std::time::Duration::from_secs(self.lease_duration_seconds),
            renew_grace: std::time::Duration::from_secs(self.lease_renew_grace_seconds),
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", crd::crd_yaml());
            Ok(())
        }
        Command::Status {
            namespace,
            all_namespaces,
            output,
        } => {
            let client = kube::Client::try_default().await?;
            let scope = if all_namespaces {
                cli::Scope::All
            } else {
                cli::Scope::Namespace(
                    namespace.unwrap_or_else(|| client.default_namespace().to_string()),
                )
            };
            print!("{}", cli::status(client, &scope, output).await?);
            Ok(())
        }
        Command::Rotate {
            name,
            namespace,
            token,
            outside_windows,
        } => {
            let client = kube::Client::try_default().await?;
            let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
            let token = cli::rotate(client, &namespace, &name, token, outside_windows).await?;
            println!(
                "rotation of {namespace}/{name} requested (token {token}); watch it with `apikey-rotator status -n {namespace}`"
            );
            Ok(())
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => {
            telemetry::init(telemetry::LogFormat::Text, "warn");
            if apikey_rotator::demo::run(args).await? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Run {
            namespaces,
            log_format,
            log_level,
            resync_seconds,
            concurrency,
            revoke_on_delete_timeout_seconds,
            argo_rollouts,
            metrics_bind_address,
            election,
        } => {
            let shutdown = shutdown_signal();
            telemetry::init(log_format, &log_level);
            let election = election.election()?;
            let endpoints = match metrics_bind_address.as_str() {
                "off" | "0" => None,
                address => Some(
                    tokio::net::TcpListener::bind(address)
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {address}: {e}"))?,
                ),
            };
            // One configuration for both clients: the pod gate's lists must reach the same cluster
            // as the user the reconciles act as (a kubeconfig read twice could differ between).
            let config = kube::Config::infer().await?;
            let client = kube::Client::try_from(config.clone())?;
            let pod_list_client = kube::Client::try_from(config)?;
            tracing::info!(
                version = env!("CARGO_PKG_VERSION"),
                leader_election = election.is_some(),
                "apikey-rotator starting"
            );
            let options = operator::Options {
                settings: controller::Settings {
                    namespace: None,
                    resync: std::time::Duration::from_secs(resync_seconds),
                    concurrency,
                    clock: Default::default(),
                    revoke_on_delete_timeout: std::time::Duration::from_secs(
                        revoke_on_delete_timeout_seconds,
                    ),
                    argo_rollouts,
                    pod_list_client: controller::PodListClient(Some(pod_list_client)),
                },
                namespaces,
                election,
                endpoints,
            };
            operator::run(client, options, shutdown).await?;
            tracing::info!("apikey-rotator stopped");
            Ok(())
        }
    }
}

/// SIGTERM (Kubernetes) or Ctrl-C: stop taking work, let reconciles in flight finish. The handlers
/// are installed when this is called (not when the future is first polled), so a signal that
/// arrives during start-up is not fatal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutdown requested; finishing reconciles in flight");
    }
}
