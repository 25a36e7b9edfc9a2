//! `cargo bench --bench scale`: many ApiKeyRotations rotating at once. The operator runs as its own
//! process (the release binary, `apikey-rotator run`) against the stand-in and a real Valkey, so
//! its memory and CPU are measured alone. Reports the total wall time against the lower bound the
//! simulated rollouts set, the operator's step latency (a target complete in the simulator -> the
//! next target patched), its CPU and API requests per rotation, its peak RSS, and its CPU and API
//! requests while idle. SCALE sets the number of rotations (default 1000), IDLE_SECONDS the idle
//! measurement (65: it spans one 60 s resync).

#[path = "../tests/common/mod.rs"]
mod common;

use apikey_rotator::key::RawKey;
use common::*;
use kube_sim::{Sim, SimOptions};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SCALE_NS: &str = "scale";
const ROLES: [&str; 3] = ["api", "ui", "engine"];
const POD_READY_MS: u64 = 500;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn secret_name(i: u64) -> String {
    format!("app-{i}-key")
}

fn deployment(i: u64, role: &str) -> serde_json::Value {
    let name = format!("app-{i}-{role}");
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": SCALE_NS},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                "name": role, "image": "sirius",
                "env": [{"name": "SIRIUS_API_KEY", "valueFrom": {"secretKeyRef": {"name": secret_name(i), "key": "SIRIUS_API_KEY"}}}],
            }]}},
        },
    })
}

fn rotation_of(i: u64, valkey_url: &str) -> serde_json::Value {
    json!({
        "apiVersion": "keys.siriusscan.io/v1alpha1", "kind": "ApiKeyRotation",
        "metadata": {"name": format!("app-{i}"), "namespace": SCALE_NS},
        "spec": {
            "secret": {"name": secret_name(i)},
            "targets": ROLES.iter().map(|r| json!({"kind": "Deployment", "name": format!("app-{i}-{r}")})).collect::<Vec<_>>(),
            "valkey": {"url": valkey_url},
            "validationWindowSeconds": 1,
            "revokeRecheckSeconds": 1,
            "progressDeadlineSeconds": 600,
        },
    })
}

/// The operator binary as its own process, with a kubeconfig for the stand-in.
fn spawn_operator_process(sim: &Sim, dir: &std::path::Path) -> Child {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: sim, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: sim, user: {{}}}}]\n\
             contexts: [{{name: sim, context: {{cluster: sim, user: sim, namespace: {SCALE_NS}}}}}]\n\
             current-context: sim\n",
            sim.url()
        ),
    )
    .unwrap();
    // SCALE_OPERATOR_WRAPPER=heaptrack profiles the operator's heap (the memory and CPU figures
    // are then the wrapper's, not the operator's).
    let binary = env!("CARGO_BIN_EXE_apikey-rotator");
    let mut command = match std::env::var("SCALE_OPERATOR_WRAPPER") {
        Ok(wrapper) if !wrapper.is_empty() => {
            let mut c = Command::new(wrapper);
            c.arg(binary);
            c
        }
        _ => Command::new(binary),
    };
    command
        .args([
            "run",
            "--namespace",
            SCALE_NS,
            "--log-level",
            "warn",
            "--metrics-bind-address",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// (VmRSS, VmHWM) in KiB from /proc.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// User + system CPU time of the process, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

/// Per rotation, the time from one target's rollout complete (as the simulator recorded it) to the
/// next target's template patched by the operator: the operator's own share of a step.
fn step_latencies_ms(rollouts: &[kube_sim::RolloutRecord]) -> Vec<f64> {
    let mut by_deployment = std::collections::HashMap::new();
    for r in rollouts {
        by_deployment.insert(r.deployment.as_str(), r);
    }
    let mut latencies = Vec::new();
    for (name, done) in &by_deployment {
        let Some((app, role)) = name.rsplit_once('-') else {
            continue;
        };
        let Some(position) = ROLES.iter().position(|r| *r == role) else {
            continue;
        };
        let Some(next_role) = ROLES.get(position + 1) else {
            continue;
        };
        let (Some(next), Some(completed)) = (
            by_deployment.get(format!("{app}-{next_role}").as_str()),
            done.completed_at_ms,
        ) else {
            continue;
        };
        latencies.push((next.template_changed_at_ms - completed) as f64);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    latencies
}

fn own_cpu_ticks() -> u64 {
    cpu_ticks(std::process::id())
}

fn revisions_done(sim: &Sim, revision: u64) -> usize {
    sim.list_objects("keys.siriusscan.io", "apikeyrotations", Some(SCALE_NS))
        .iter()
        .filter(|o| o["status"]["revision"].as_u64() == Some(revision))
        .count()
}

fn phase_count(sim: &Sim, phase: &str) -> usize {
    sim.list_objects("keys.siriusscan.io", "apikeyrotations", Some(SCALE_NS))
        .iter()
        .filter(|o| o["status"]["phase"] == phase)
        .count()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = env_or("SCALE", 1000);
    let idle_seconds = env_or("IDLE_SECONDS", 65);
    let valkey = Valkey::start();
    let sim = start_sim_with(SimOptions {
        pod_ready_after: Duration::from_millis(POD_READY_MS),
        termination_grace: Duration::from_millis(20),
        tick: Duration::from_millis(50),
    })
    .await;
    sim.create_object(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SCALE_NS}}),
    )
    .unwrap();
    use base64::Engine;
    for i in 0..n {
        let key = RawKey::new(format!("{i:064x}"));
        sim.create_object(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": secret_name(i), "namespace": SCALE_NS},
            "data": {"SIRIUS_API_KEY": base64::engine::general_purpose::STANDARD.encode(key.expose())}}))
            .unwrap();
        for role in ROLES {
            sim.create_object(deployment(i, role)).unwrap();
        }
    }
    wait_for(Duration::from_secs(600), "initial rollouts", || {
        sim.rollouts()
            .iter()
            .filter(|r| r.completed_at_ms.is_some())
            .count()
            >= 3 * n as usize
    })
    .await;
    for i in 0..n {
        sim.create_object(rotation_of(i, &valkey.url())).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut operator = spawn_operator_process(&sim, dir.path());
    let pid = operator.id();
    let adopt_start = Instant::now();
    wait_for(Duration::from_secs(600), "every rotation Ready", || {
        phase_count(&sim, "Ready") == n as usize
    })
    .await;
    let adopted_in = adopt_start.elapsed();
    let (rss_ready, _) = memory_kib(pid);

    // Trigger them all at once and sample memory while they run.
    let rollouts_before = sim.rollouts().len();
    let (cpu_before, requests_before_run) =
        (cpu_ticks(pid), sim.request_counts().values().sum::<u64>());
    let own_cpu_before = own_cpu_ticks();
    let start = Instant::now();
    for i in 0..n {
        sim.merge_patch_object(
            "keys.siriusscan.io",
            "apikeyrotations",
            SCALE_NS,
            &format!("app-{i}"),
            json!({"metadata": {"annotations": {"keys.siriusscan.io/rotate": "scale"}}}),
        )
        .unwrap();
    }
    let mut peak_rss = 0;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while revisions_done(&sim, 1) < n as usize {
        assert!(Instant::now() < deadline, "the rotations did not finish");
        peak_rss = peak_rss.max(memory_kib(pid).0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = start.elapsed();
    let (_, hwm) = memory_kib(pid);
    let operator_cpu = (cpu_ticks(pid) - cpu_before) as f64 / 100.0;
    let harness_cpu = (own_cpu_ticks() - own_cpu_before) as f64 / 100.0;
    let run_requests = sim.request_counts().values().sum::<u64>() - requests_before_run;

    // Lower bound: the slowest rotation's three rollouts, back to back, as the simulator timed
    // them, plus the validation window (1 s) and the revocation re-check (1 s).
    let rollouts = sim.rollouts();
    let mut per_rotation = std::collections::HashMap::<String, i64>::new();
    for r in &rollouts[rollouts_before..] {
        let app = r.deployment.rsplit_once('-').unwrap().0.to_string();
        *per_rotation.entry(app).or_default() +=
            r.completed_at_ms.unwrap_or(0) - r.template_changed_at_ms;
    }
    let slowest_rollouts_ms = per_rotation.values().copied().max().unwrap_or(0);
    let ideal_rollouts_ms = 3 * POD_READY_MS as i64;
    let lower_bound_ms = slowest_rollouts_ms + 2000;
    let steps = step_latencies_ms(&rollouts[rollouts_before..]);

    // Idle: everything finished; count CPU and API requests over a quiet period.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ticks_before, requests_before) =
        (cpu_ticks(pid), sim.request_counts().values().sum::<u64>());
    tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
    let idle_ticks = cpu_ticks(pid) - ticks_before;
    let idle_requests = sim.request_counts().values().sum::<u64>() - requests_before;
    let _ = operator.kill();
    let _ = operator.wait();

    println!(
        "| measure ({n} ApiKeyRotations x 3 targets, 1 replica, pods ready after {POD_READY_MS} ms) | value | goal |"
    );
    println!("|---|---|---|");
    println!(
        "| adoption: all {n} Ready after operator start | {:.1} s | - |",
        adopted_in.as_secs_f64()
    );
    println!(
        "| wall time, all {n} rotations triggered at once -> all finished | {:.1} s | - |",
        wall.as_secs_f64()
    );
    println!(
        "| lower bound: slowest rotation's 3 rollouts as simulated ({:.1} s; {:.1} s unloaded) + 2 s window and re-check | {:.1} s | ratio {:.2} |",
        slowest_rollouts_ms as f64 / 1000.0,
        ideal_rollouts_ms as f64 / 1000.0,
        lower_bound_ms as f64 / 1000.0,
        wall.as_secs_f64() * 1000.0 / lower_bound_ms as f64
    );
    println!(
        "| step latency: target complete in the simulator -> next target patched ({} steps), median / p99 | {:.0} ms / {:.0} ms | p99 < 50 ms |",
        steps.len(),
        percentile(&steps, 0.5),
        percentile(&steps, 0.99)
    );
    println!(
        "| CPU while rotating: operator / API stand-in + simulator + harness (2 cores) | {operator_cpu:.1} s / {harness_cpu:.1} s | - |"
    );
    println!(
        "| operator CPU per rotation | {:.1} ms | <= 15 ms |",
        operator_cpu * 1000.0 / n as f64
    );
    println!(
        "| API requests while rotating (per rotation) | {run_requests} ({:.0}) | <= 60 per rotation |",
        run_requests as f64 / n as f64
    );
    println!(
        "| operator RSS when all were Ready (before rotating) | {:.1} MiB | - |",
        rss_ready as f64 / 1024.0
    );
    println!(
        "| operator peak RSS (VmHWM; sampled peak {:.1} MiB) | {:.1} MiB | < 64 MiB |",
        peak_rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "| operator CPU while idle for {idle_seconds} s after (resync 60 s) | {:.2} s ({:.2} s per minute) | no periodic work beyond the resync |",
        idle_ticks as f64 / 100.0,
        idle_ticks as f64 / 100.0 * 60.0 / idle_seconds as f64
    );
    println!(
        "| API requests while idle for {idle_seconds} s (per minute) | {idle_requests} ({:.0}) | 0 |",
        idle_requests as f64 * 60.0 / idle_seconds as f64
    );
}
