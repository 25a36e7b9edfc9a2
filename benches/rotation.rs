//! `cargo bench --bench rotation`: the operator's own cost per rotation, against the stand-in and a
//! real Valkey. Reports medians and p99 of the step latency (a target's rollout completing in the
//! simulator -> the next target's pod template patched), and Valkey commands and API requests per
//! rotation. Set ROTATIONS to change the sample size (default 100).

#[path = "../tests/common/mod.rs"]
mod common;

use apikey_rotator::key::RawKey;
use common::*;
use kube_sim::SimOptions;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Calls per command, over one connection kept for the whole run (a new one would add its own
/// `CLIENT SETINFO`s to every count).
fn commandstats(conn: &mut redis::Connection) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(conn).unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rotations: u64 = std::env::var("ROTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let valkey = Valkey::start();
    let mut stats = valkey.conn();
    let sim = start_sim_with(SimOptions {
        pod_ready_after: Duration::from_millis(50),
        termination_grace: Duration::from_millis(20),
        tick: Duration::from_millis(5),
    })
    .await;
    sim.create_object(consumer_secret(&RawKey::new("0123456789abcdef".repeat(4))))
        .unwrap();
    deploy_sirius(&sim, 1).await;
    sim.create_object(rotation(
        &valkey.url(),
        json!({"validationWindowSeconds": 0, "revokeRecheckSeconds": 1}),
    ))
    .unwrap();
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(10), "Ready", || {
        akr_status(&sim)["phase"] == "Ready"
    })
    .await;

    let mut step_latencies_ms = Vec::new();
    let mut valkey_per_rotation = Vec::new();
    let mut api_per_rotation = Vec::new();
    let mut wall_per_rotation = Vec::new();
    let requests_before_all = sim.request_counts();
    let commands_before_all = commandstats(&mut stats);
    for n in 1..=rotations {
        let before_valkey: u64 = commandstats(&mut stats)
            .iter()
            .filter(|(k, _)| k.as_str() != "info")
            .map(|(_, v)| v)
            .sum();
        let before_api: u64 = sim.request_counts().values().sum();
        let started = std::time::Instant::now();
        sim.merge_patch_object("keys.siriusscan.io", "apikeyrotations", NS, "sirius", json!({"metadata": {"annotations": {"keys.siriusscan.io/rotate": format!("bench-{n}")}}})).unwrap();
        wait_for(Duration::from_secs(60), "the rotation", || {
            akr_status(&sim)["revision"] == json!(n)
        })
        .await;
        wall_per_rotation.push(started.elapsed().as_secs_f64() * 1000.0);
        let after_valkey: u64 = commandstats(&mut stats)
            .iter()
            .filter(|(k, _)| k.as_str() != "info")
            .map(|(_, v)| v)
            .sum();
        valkey_per_rotation.push((after_valkey - before_valkey) as f64);
        api_per_rotation.push((sim.request_counts().values().sum::<u64>() - before_api) as f64);
        // Step latency: completion of target i -> template change of target i+1, this rotation.
        let rollouts = sim.rollouts();
        let latest = |name: &str| {
            rollouts
                .iter()
                .filter(|r| r.deployment == name)
                .max_by_key(|r| r.revision)
                .cloned()
                .unwrap()
        };
        let order = ["sirius-api", "sirius-ui", "sirius-engine"];
        for pair in order.windows(2) {
            let (done, next) = (latest(pair[0]), latest(pair[1]));
            step_latencies_ms
                .push((next.template_changed_at_ms - done.completed_at_ms.unwrap()) as f64);
        }
    }
    operator.abort();
    // Where the API requests go, per rotation on average.
    let mut by_kind: Vec<(String, f64)> = sim
        .request_counts()
        .into_iter()
        .map(|((verb, resource), n)| {
            let before = requests_before_all
                .get(&(verb.clone(), resource.clone()))
                .copied()
                .unwrap_or(0);
            (
                format!("{verb} {resource}"),
                (n - before) as f64 / rotations as f64,
            )
        })
        .filter(|(_, n)| *n > 0.0)
        .collect();
    by_kind.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    let breakdown: Vec<String> = by_kind
        .iter()
        .map(|(what, n)| format!("{what} {n:.1}"))
        .collect();
    println!(
        "API requests per rotation by verb and resource: {}",
        breakdown.join(", ")
    );
    // And the Valkey commands (INFO is this benchmark's own).
    let commands: Vec<String> = commandstats(&mut stats)
        .into_iter()
        .filter(|(command, _)| command != "info")
        .map(|(command, n)| {
            let before = commands_before_all.get(&command).copied().unwrap_or(0);
            (command, (n - before) as f64 / rotations as f64)
        })
        .filter(|(_, n)| *n > 0.0)
        .map(|(command, n)| format!("{command} {n:.1}"))
        .collect();
    println!(
        "Valkey commands per rotation by command: {}\n",
        commands.join(", ")
    );
    let report = |name: &str, mut v: Vec<f64>, unit: &str| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "| {name} | {:.1} {unit} | {:.1} {unit} | {:.1} {unit} | {} |",
            percentile(&v, 0.5),
            percentile(&v, 0.99),
            v[v.len() - 1],
            v.len()
        );
    };
    println!(
        "| measure ({rotations} rotations, 3 targets, 1 replica) | median | p99 | max | samples |"
    );
    println!("|---|---|---|---|---|");
    report(
        "step latency: rollout complete -> next target patched",
        step_latencies_ms,
        "ms",
    );
    report("Valkey commands per rotation", valkey_per_rotation, "");
    report(
        "API requests per rotation (incl. Events)",
        api_per_rotation,
        "",
    );
    report(
        "wall time per rotation (includes 1 s revocation re-check)",
        wall_per_rotation,
        "ms",
    );
}
