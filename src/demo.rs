//! `apikey-rotator demo`: the whole job on an embedded cluster. The same API stand-in and
//! Deployment simulator the tests use, a real valkey-server on a loopback port (or, where none is
//! installed, an in-memory store speaking the same protocol), and the real controller, with a live
//! view of the rotation. Built only with the `demo` feature.

use crate::crd::{ApiKeyRotation, crd_yaml};
use crate::key::RawKey;
use crate::rotation::{DEGRADED, Reason};
use kube_sim::{RolloutBehavior, Sim, SimOptions};
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

const NS: &str = "sirius";
const TARGETS: [&str; 3] = ["sirius-api", "sirius-ui", "sirius-engine"];

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Make this target's rollout fail: its pods become ready only with the old key.
    #[arg(long, value_name = "DEPLOYMENT")]
    pub fail_at: Option<String>,
    /// Use `failurePolicy: Rollback`: a failure returns everything to the old key.
    #[arg(long)]
    pub rollback: bool,
    /// Replicas per Deployment.
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Seconds a new pod takes to become ready.
    #[arg(long, default_value_t = 0.6)]
    pub pod_ready_seconds: f64,
    /// Seconds both keys stay valid after the last target finished.
    #[arg(long, default_value_t = 2)]
    pub validation_window: u32,
    /// The key store: a private valkey-server, the in-memory stand-in, or valkey-server when
    /// installed and the stand-in otherwise.
    #[arg(long, value_enum, default_value_t = StoreChoice::Auto)]
    pub store: StoreChoice,
    /// Keep the embedded cluster and the operator running after the rotation, reachable with
    /// kubectl through the kubeconfig it writes, until Ctrl-C.
    #[arg(long)]
    pub serve: bool,
    /// With --serve: apply the ApiKeyRotation without a trigger, so the first rotation is yours
    /// to start (`kubectl annotate akr sirius keys.siriusscan.io/rotate=now`).
    #[arg(long, requires = "serve")]
    pub no_rotation: bool,
    /// With --serve: where to write the kubeconfig (default: a new private directory in the
    /// temporary directory, removed when the demo stops).
    #[arg(long, value_name = "PATH", requires = "serve")]
    pub kubeconfig: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreChoice {
    Auto,
    Valkey,
    Memory,
}

/// The demo's key store; either way the operator reaches it with its ordinary Valkey client.
enum DemoStore {
    Valkey(kube_sim::valkey::ValkeyServer),
    Memory(kube_sim::memory_valkey::MemoryValkey),
}

impl DemoStore {
    fn start(choice: StoreChoice) -> anyhow::Result<Self> {
        use kube_sim::{memory_valkey::MemoryValkey, valkey::ValkeyServer};
        Ok(match choice {
            StoreChoice::Valkey => Self::Valkey(ValkeyServer::start()?),
            StoreChoice::Memory => Self::Memory(MemoryValkey::start()?),
            StoreChoice::Auto => match ValkeyServer::start() {
                Ok(server) => Self::Valkey(server),
                Err(e) => {
                    println!("{e}\nUsing the in-memory key store instead (--store memory).");
                    Self::Memory(MemoryValkey::start()?)
                }
            },
        })
    }

    fn url(&self) -> String {
        match self {
            Self::Valkey(server) => server.url(),
            Self::Memory(store) => store.url(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Valkey(server) => format!("valkey-server on 127.0.0.1:{}", server.port),
            Self::Memory(store) => format!("in-memory key store on 127.0.0.1:{}", store.port),
        }
    }
}

fn deployment(name: &str, replicas: u32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "progressDeadlineSeconds": 5,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": name, "image": format!("ghcr.io/siriusscan/{name}:latest"),
                        "env": [{"name": "SIRIUS_API_KEY", "valueFrom": {"secretKeyRef": {"name": "sirius-api-key", "key": "SIRIUS_API_KEY"}}}]}],
                },
            },
        },
    })
}

pub async fn run(args: DemoArgs) -> anyhow::Result<bool> {
    run_until(args, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}

/// [`run`], serving (with `--serve`) until `stop` completes instead of until Ctrl-C.
pub async fn run_until(
    args: DemoArgs,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<bool> {
    if let Some(target) = &args.fail_at {
        anyhow::ensure!(
            TARGETS.contains(&target.as_str()),
            "--fail-at must be one of {TARGETS:?}, got {target:?}"
        );
    }
    let valkey = DemoStore::start(args.store)?;
    let sim = Sim::start(SimOptions {
        pod_ready_after: Duration::from_secs_f64(args.pod_ready_seconds.max(0.05)),
        termination_grace: Duration::from_millis(300),
        tick: Duration::from_millis(20),
    })
    .await?;
    let old = install_sirius(&sim, &valkey, args.replicas).await?;
    if let Some(target) = &args.fail_at {
        sim.set_rollout_behavior(
            NS,
            target,
            RolloutBehavior::StallUnlessSecret(old.expose().to_string()),
        );
        println!("(--fail-at {target}: its pods become ready only with the old key)");
    }

    let annotations = if args.no_rotation {
        json!({})
    } else {
        json!({"keys.siriusscan.io/rotate": "demo"})
    };
    let manifest = json!({
        "apiVersion": "keys.siriusscan.io/v1alpha1", "kind": "ApiKeyRotation",
        "metadata": {"name": "sirius", "namespace": NS, "annotations": annotations},
        "spec": {"valkey": {"url": valkey.url()}, "validationWindowSeconds": args.validation_window, "revokeRecheckSeconds": 1, "progressDeadlineSeconds": 30,
            "failurePolicy": if args.rollback { "Rollback" } else { "Halt" }},
    });
    sim.create_object(manifest).map_err(anyhow::Error::msg)?;
    let client = kube::Client::try_from(kube::Config::new(sim.url().parse()?))?;
    let operator = tokio::spawn(crate::controller::run(
        client,
        crate::controller::Settings::namespaced(NS),
        std::future::pending(),
    ));
    let succeeded = if args.no_rotation {
        println!(
            "Applied ApiKeyRotation sirius/sirius without a trigger; the installed key is {}.",
            old.id().short()
        );
        true
    } else {
        println!(
            "Applied ApiKeyRotation sirius/sirius (manual trigger \"demo\"); old key {}\n",
            old.id().short()
        );
        let began = Instant::now();
        let outcome = watch_rotation(&sim, args.rollback, began).await?;
        println!();
        summary(&sim, &valkey, &old, outcome, began.elapsed())
    };
    if args.serve {
        serve(&sim, args.kubeconfig, stop).await?;
    }
    operator.abort();
    Ok(succeeded)
}

/// Writes a kubeconfig for the embedded cluster, says how to use it, and waits for `stop`.
async fn serve(
    sim: &Sim,
    kubeconfig: Option<std::path::PathBuf>,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // A directory of this run's own (mode 0700): no other user can plant or swap the file.
    let (path, own_dir) = match kubeconfig {
        Some(path) => (path, None),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("apikey-rotator-demo-")
                .tempdir()?;
            (dir.path().join("kubeconfig"), Some(dir))
        }
    };
    sim.write_kubeconfig(&path, NS)
        .map_err(|e| anyhow::anyhow!("cannot write the kubeconfig {}: {e}", path.display()))?;
    println!(
        "\nThe embedded cluster and the operator keep running at {} until Ctrl-C. In another terminal:\n\
         \n  export KUBECONFIG={}\
         \n  kubectl get akr -w                      # the rotation's phase, key and step\
         \n  kubectl annotate akr sirius keys.siriusscan.io/rotate=\"$(date +%s)\" --overwrite\
         \n  kubectl describe akr sirius             # conditions and Events\
         \n  kubectl rollout status deploy/sirius-engine\
         \n  kubectl wait akr/sirius --for=condition=Ready\
         \n  kubectl get events\
         \n  apikey-rotator status                   # the operator's own view\n",
        sim.url(),
        path.display()
    );
    stop.await;
    drop(own_dir);
    println!("Stopped.");
    Ok(())
}

/// The embedded cluster gets what a Sirius v1.1 install has: the CRD, the namespace, the
/// installer's root key (no Valkey record) and the three Deployments, started. Gives that key.
async fn install_sirius(sim: &Sim, valkey: &DemoStore, replicas: u32) -> anyhow::Result<RawKey> {
    let crd: Value = serde_yaml::from_str(crd_yaml().split("---\n").nth(1).unwrap_or_default())?;
    sim.install_crd(crd).map_err(anyhow::Error::msg)?;
    sim.create_object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
        .map_err(anyhow::Error::msg)?;

    // A Sirius v1.1 install: the installer's root key, with no Valkey record.
    let old =
        RawKey::mint("", 32).map_err(|e| anyhow::anyhow!("the OS random source failed: {e}"))?;
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(old.expose());
    sim.create_object(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sirius-api-key", "namespace": NS},
        "data": {"SIRIUS_API_KEY": encoded}}))
        .map_err(anyhow::Error::msg)?;
    for name in TARGETS {
        sim.create_object(deployment(name, replicas))
            .map_err(anyhow::Error::msg)?;
    }
    println!(
        "Embedded cluster up: API stand-in {}, {}",
        sim.url(),
        valkey.describe()
    );
    println!(
        "Starting Sirius (sirius-api, sirius-ui, sirius-engine, {} replicas each) ...",
        replicas
    );
    let start = Instant::now();
    while sim
        .rollouts()
        .iter()
        .filter(|r| r.completed_at_ms.is_some())
        .count()
        < TARGETS.len()
    {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "the simulated Deployments did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(old)
}

/// Draws the rotation as it goes until it finished, failed or was rolled back (or 120 s passed).
async fn watch_rotation(sim: &Sim, rollback: bool, began: Instant) -> anyhow::Result<Outcome> {
    let mut view = LiveView::new();
    Ok(loop {
        let rotation: ApiKeyRotation = serde_json::from_value(
            sim.get_object("keys.siriusscan.io", "apikeyrotations", NS, "sirius")
                .unwrap_or_default(),
        )?;
        view.draw(sim, &rotation, began.elapsed());
        let status = rotation.status.clone().unwrap_or_default();
        let degraded = |reason: Reason| {
            status
                .conditions
                .iter()
                .any(|c| c.type_ == DEGRADED && c.status == "True" && c.reason == reason)
        };
        if status.revision >= 1 && degraded(Reason::RolledBack) {
            break Outcome::RolledBack(rotation);
        }
        if status.revision >= 1 {
            break Outcome::Succeeded(rotation);
        }
        if degraded(Reason::RolloutFailed) && !rollback {
            break Outcome::Failed(rotation);
        }
        if began.elapsed() > Duration::from_secs(120) {
            break Outcome::Failed(rotation);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    })
}

enum Outcome {
    Succeeded(ApiKeyRotation),
    Failed(ApiKeyRotation),
    RolledBack(ApiKeyRotation),
}

struct LiveView {
    lines: usize,
    tty: bool,
    last: String,
}

impl LiveView {
    fn new() -> Self {
        Self {
            lines: 0,
            tty: std::io::stdout().is_terminal(),
            last: String::new(),
        }
    }

    fn draw(&mut self, sim: &Sim, rotation: &ApiKeyRotation, elapsed: Duration) {
        let status = rotation.status.clone().unwrap_or_default();
        let current = status.current_rotation.clone();
        let step = current
            .as_ref()
            .map(|r| format!("{:?}", r.step))
            .unwrap_or_else(|| {
                if status.revision > 0 {
                    "Done".into()
                } else {
                    "Starting".into()
                }
            });
        let mut out = vec![format!(
            "Rotation {}  step {:<9} phase {:<9} elapsed {:>5.1}s",
            current
                .as_ref()
                .map(|r| r.revision)
                .unwrap_or(status.revision.max(1)),
            step,
            status
                .phase
                .map(|p| format!("{p:?}"))
                .unwrap_or_else(|| "-".into()),
            elapsed.as_secs_f64()
        )];
        let pods = sim.pods();
        for name in TARGETS {
            let d = sim
                .get_object("apps", "deployments", NS, name)
                .unwrap_or_default();
            let desired = d["spec"]["replicas"].as_u64().unwrap_or(1).max(1);
            let rolled = d["spec"]["template"]["metadata"]["annotations"]
                [crate::crd::ROLLOUT_ANNOTATION]
                .as_str()
                .map(str::to_string);
            let new_id = current
                .as_ref()
                .and_then(|r| r.new_key_id.clone())
                .or(status.active_key_id.clone());
            let on_new = rolled.is_some() && rolled == new_id;
            let latest = pods
                .iter()
                .filter(|p| p.deployment == name)
                .map(|p| p.revision)
                .max()
                .unwrap_or(1);
            let updated = if on_new {
                pods.iter()
                    .filter(|p| {
                        p.deployment == name && p.revision == latest && p.ready && !p.terminating
                    })
                    .count() as u64
            } else {
                0
            };
            let state = current
                .as_ref()
                .and_then(|r| r.targets.iter().find(|t| t.name == name))
                .map(|t| format!("{:?}", t.state))
                .unwrap_or_else(|| {
                    if status.revision > 0 {
                        "Complete".into()
                    } else {
                        "Pending".into()
                    }
                });
            let width = 24;
            let filled = (updated.min(desired) * width / desired) as usize;
            out.push(format!(
                "  {name:<14} [{}{}] {updated}/{desired} on new key  {state}",
                "#".repeat(filled),
                ".".repeat(width as usize - filled)
            ));
        }
        let text = out.join("\n");
        if self.tty {
            let mut stdout = std::io::stdout();
            if self.lines > 0 {
                let _ = write!(stdout, "\x1b[{}A", self.lines);
            }
            for line in &out {
                let _ = writeln!(stdout, "\x1b[2K{line}");
            }
            let _ = stdout.flush();
            self.lines = out.len();
        } else {
            // Without a terminal, print a new frame only when something other than time changed.
            let key: String = text.lines().skip(1).collect::<Vec<_>>().join("\n") + &step;
            if key != self.last {
                println!("{text}\n");
                self.last = key;
            }
        }
    }
}

/// The Events, oldest first, and the ids Valkey holds records for (which it gives back).
fn print_events_and_records(sim: &Sim, valkey: &DemoStore) -> Vec<String> {
    let records: Vec<String> = redis::Client::open(valkey.url())
        .and_then(|c| c.get_connection())
        .and_then(|mut c| redis::cmd("KEYS").arg("apikey:*").query(&mut c))
        .unwrap_or_default();
    let events = sim.list_objects("events.k8s.io", "events", Some(NS));
    let mut events: Vec<(String, String, String, String)> = events
        .iter()
        .map(|e| {
            (
                e["eventTime"].as_str().unwrap_or("").to_string(),
                e["type"].as_str().unwrap_or("").to_string(),
                e["reason"].as_str().unwrap_or("").to_string(),
                e["note"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    events.sort();
    println!("Events:");
    for (_, kind, reason, note) in &events {
        println!("  {kind:<8} {reason:<20} {note}");
    }
    println!("\nValkey records (ids only; raw keys live only in Secrets):");
    for r in &records {
        println!("  {r}");
    }
    records
}

/// How long each target's last rollout took, in the order given.
fn print_rollout_times<'a>(
    rollouts: &[kube_sim::RolloutRecord],
    names: impl Iterator<Item = &'a &'a str>,
    verb: &str,
) {
    for name in names {
        if let Some(r) = rollouts.iter().rev().find(|r| r.deployment == *name) {
            let done = r
                .completed_at_ms
                .map(|c| format!("{} ms", c - r.template_changed_at_ms))
                .unwrap_or_else(|| "not completed".into());
            println!("    {name:<14} {verb} in {done}");
        }
    }
}

fn summary(
    sim: &Sim,
    valkey: &DemoStore,
    old: &RawKey,
    outcome: Outcome,
    elapsed: Duration,
) -> bool {
    let records = print_events_and_records(sim, valkey);
    let rollouts = sim.rollouts();
    match outcome {
        Outcome::Succeeded(rotation) => {
            let status = rotation.status.unwrap_or_default();
            println!("\nRotation succeeded in {:.1}s.", elapsed.as_secs_f64());
            println!(
                "  old key {} -> revoked (no record left: Sirius answers 401)",
                old.id().short()
            );
            println!(
                "  new key {} -> active, delivered to Secret sirius-api-key",
                status.active_key_id_short.unwrap_or_default()
            );
            println!("  rollout order (each started only after the previous completed):");
            print_rollout_times(&rollouts, TARGETS.iter(), "rolled out");
            true
        }
        Outcome::RolledBack(rotation) => {
            let status = rotation.status.unwrap_or_default();
            let why = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Degraded")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            println!(
                "\nRotation rolled back in {:.1}s: {why}",
                elapsed.as_secs_f64()
            );
            println!(
                "  the Secret and all three Deployments run the old key {} again (rolled back engine -> ui -> api)",
                old.id().short()
            );
            println!(
                "  the old key was never revoked; the new key's record was deleted only after every target ran the old key again."
            );
            println!("  A new trigger starts a fresh rotation.");
            print_rollout_times(&rollouts, TARGETS.iter().rev(), "rolled back");
            false
        }
        Outcome::Failed(rotation) => {
            let status = rotation.status.unwrap_or_default();
            let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
            println!(
                "\nRotation halted: {}",
                degraded
                    .map(|c| format!("{}: {}", c.reason, c.message))
                    .unwrap_or_else(|| "timed out".into())
            );
            let old_record = records.iter().any(|r| r.ends_with(old.id().as_str()));
            println!(
                "  old key {} still valid: {}",
                old.id().short(),
                if old_record {
                    "yes (its record stays until every consumer moved)"
                } else {
                    "NO"
                }
            );
            println!(
                "  nothing was revoked; pods still on the old key keep working. Fix the Deployment and the rotation resumes."
            );
            false
        }
    }
}
