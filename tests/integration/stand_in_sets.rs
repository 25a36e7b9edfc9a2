//! The stand-in's StatefulSet and DaemonSet controllers against kube-controller-manager's and
//! `kubectl rollout status`'s rules: pods by ordinal, one at a time from the highest, partitions,
//! OnDelete, revisions; one pod per node, maxUnavailable. Each read of the status goes through the
//! operator's own reading of it (`workload::rollout_state`), so both are checked together.

use crate::common::*;
use apikey_rotator::workload::{RolloutState, Workload, rollout_state};
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use kube::api::Api;
use kube_sim::{PodView, Sim};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const KEY_ID: &str = "keys.siriusscan.io/key-id";

async fn typed<K: Workload>(sim: &Sim, name: &str) -> K {
    Api::<K>::namespaced(client_for(sim), NS)
        .get(name)
        .await
        .unwrap()
}

fn pods_of<'a>(pods: &'a [PodView], name: &str) -> Vec<&'a PodView> {
    pods.iter().filter(|p| p.deployment == name).collect()
}

fn stamp(sim: &Sim, plural: &str, name: &str, key_id: &str) {
    sim.merge_patch_object(
        "apps",
        plural,
        NS,
        name,
        json!({"spec": {"template": {"metadata": {"annotations": {KEY_ID: key_id}}}}}),
    )
    .unwrap();
}

/// Samples the pods of `name` every few milliseconds until `done` holds for the workload's
/// rollout state, giving every sample.
async fn sample_until<K: Workload>(
    sim: &Sim,
    name: &str,
    what: &str,
    done: impl Fn(&RolloutState) -> bool,
) -> Vec<Vec<PodView>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut samples = Vec::new();
    loop {
        samples.push(
            pods_of(&sim.pods(), name)
                .into_iter()
                .cloned()
                .collect::<Vec<_>>(),
        );
        if done(&rollout_state(&typed::<K>(sim, name).await)) {
            return samples;
        }
        assert!(Instant::now() < deadline, "{name} never got to: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn statefulset(replicas: i64, strategy: Value) -> Value {
    let mut s = sirius_workload("StatefulSet", "sirius-engine", replicas);
    if !strategy.is_null() {
        s["spec"]["updateStrategy"] = strategy;
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statefulset_creates_pods_in_order_and_replaces_them_from_the_highest_ordinal_one_at_a_time()
 {
    let sim = start_sim().await;
    sim.create_object(consumer_secret(&known_key())).unwrap();
    let created = sim.create_object(statefulset(3, Value::Null)).unwrap();
    // kube-apiserver's defaults.
    assert_eq!(
        created["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
    );
    assert_eq!(created["spec"]["podManagementPolicy"], "OrderedReady");
    let samples = sample_until::<StatefulSet>(&sim, "sirius-engine", "first rollout", |s| {
        *s == RolloutState::Complete
    })
    .await;
    // OrderedReady: pod n exists only once pods 0..n are Ready.
    for pods in &samples {
        for p in pods {
            let n: usize = p.name.rsplit('-').next().unwrap().parse().unwrap();
            for lower in 0..n {
                let name = format!("sirius-engine-{lower}");
                assert!(
                    pods.iter().any(|q| q.name == name && q.ready),
                    "{} ran before {name} was Ready",
                    p.name
                );
            }
        }
    }
    let sts: StatefulSet = typed(&sim, "sirius-engine").await;
    let status = sts.status.unwrap();
    let first = status.update_revision.clone().unwrap();
    assert_eq!(status.current_revision.as_ref(), Some(&first));
    assert!(first.starts_with("sirius-engine-"));

    stamp(&sim, "statefulsets", "sirius-engine", "k2");
    let samples = sample_until::<StatefulSet>(&sim, "sirius-engine", "the update", |s| {
        *s == RolloutState::Complete
    })
    .await;
    // Replaced one at a time, 2 then 1 then 0: never two pods down at once.
    let mut order = Vec::new();
    for pods in &samples {
        let available = pods.iter().filter(|p| p.ready && !p.terminating).count();
        assert!(available >= 2, "two pods down at once: {pods:?}");
        for p in pods.iter().filter(|p| p.revision == 2) {
            if !order.contains(&p.name) {
                order.push(p.name.clone());
            }
        }
    }
    assert_eq!(
        order,
        ["sirius-engine-2", "sirius-engine-1", "sirius-engine-0"]
    );
    let sts: StatefulSet = typed(&sim, "sirius-engine").await;
    let status = sts.status.unwrap();
    assert_ne!(status.update_revision.as_ref(), Some(&first));
    assert_eq!(status.current_revision, status.update_revision);
    assert_eq!(
        (status.updated_replicas, status.ready_replicas),
        (Some(3), Some(3))
    );
    let pod = sim.get_object("", "pods", NS, "sirius-engine-0").unwrap();
    assert_eq!(
        pod["metadata"]["labels"]["controller-revision-hash"],
        json!(status.update_revision.unwrap())
    );
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "StatefulSet");
    assert_eq!(pod["metadata"]["annotations"][KEY_ID], "k2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_or_on_delete_leaves_pods_on_the_old_template_while_kubectl_calls_it_done() {
    let sim = start_sim().await;
    sim.create_object(consumer_secret(&known_key())).unwrap();
    let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}});
    sim.create_object(statefulset(3, strategy)).unwrap();
    sample_until::<StatefulSet>(&sim, "sirius-engine", "first rollout", |s| {
        *s == RolloutState::Complete
    })
    .await;
    stamp(&sim, "statefulsets", "sirius-engine", "k2");
    sample_until::<StatefulSet>(&sim, "sirius-engine", "the partitioned update", |s| {
        *s == RolloutState::Complete
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await; // nothing more happens
    let pods = sim.pods();
    let revisions: Vec<(String, u64)> = pods_of(&pods, "sirius-engine")
        .iter()
        .map(|p| (p.name.clone(), p.revision))
        .collect();
    assert!(
        revisions.contains(&("sirius-engine-2".into(), 2)),
        "{revisions:?}"
    );
    assert!(
        revisions.contains(&("sirius-engine-1".into(), 1)),
        "{revisions:?}"
    );
    assert!(
        revisions.contains(&("sirius-engine-0".into(), 1)),
        "{revisions:?}"
    );
    let sts: StatefulSet = typed(&sim, "sirius-engine").await;
    assert!(sts.cannot_roll().unwrap().contains("partition is 2"));
    let status = sts.status.unwrap();
    assert_ne!(status.current_revision, status.update_revision);

    // OnDelete: a new template replaces only the pods someone deletes.
    set_update_strategy(
        &sim,
        "statefulsets",
        "sirius-engine",
        json!({"type": "OnDelete", "rollingUpdate": null}),
    );
    stamp(&sim, "statefulsets", "sirius-engine", "k3");
    tokio::time::sleep(Duration::from_millis(500)).await; // nothing is replaced
    let pods = sim.pods();
    assert!(
        pods_of(&pods, "sirius-engine")
            .iter()
            .all(|p| p.revision != 3 && !p.terminating)
    );
    let sts: StatefulSet = typed(&sim, "sirius-engine").await;
    assert!(sts.cannot_roll().unwrap().contains("OnDelete"));
    sim.delete_object("", "pods", NS, "sirius-engine-1")
        .unwrap();
    wait_for(Duration::from_secs(10), "sirius-engine-1 recreated", || {
        sim.pods()
            .iter()
            .any(|p| p.name == "sirius-engine-1" && p.revision == 3 && p.ready)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_rolling_update_without_rolling_update_fields_recreates_deleted_pods_from_the_current_revision()
 {
    let sim = start_sim().await;
    sim.create_object(consumer_secret(&known_key())).unwrap();
    let created = sim
        .create_object(statefulset(3, json!({"type": "RollingUpdate"})))
        .unwrap();
    // `SetDefaults_StatefulSet` adds `rollingUpdate` only to an unset type.
    assert_eq!(
        created["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate"})
    );
    sample_until::<StatefulSet>(&sim, "sirius-engine", "first rollout", |s| {
        *s == RolloutState::Complete
    })
    .await;
    sim.set_pod_ready_after(NS, "sirius-engine", Duration::from_millis(800));
    stamp(&sim, "statefulsets", "sirius-engine", "k2");
    wait_for(Duration::from_secs(10), "sirius-engine-2 updated", || {
        sim.pods()
            .iter()
            .any(|p| p.name == "sirius-engine-2" && p.revision == 2 && !p.terminating)
    })
    .await;
    // Pod 0 is below the last status's currentReplicas: `newVersionedStatefulSetPod` recreates it
    // from the current revision, and the rolling update replaces it again later.
    sim.delete_object("", "pods", NS, "sirius-engine-0")
        .unwrap();
    let samples = sample_until::<StatefulSet>(&sim, "sirius-engine", "the update", |s| {
        *s == RolloutState::Complete
    })
    .await;
    let recreated: Vec<u64> = samples
        .iter()
        .flatten()
        .filter(|p| p.name == "sirius-engine-0" && !p.terminating)
        .map(|p| p.revision)
        .collect();
    assert!(recreated.contains(&1), "{recreated:?}");
    assert_eq!(recreated.last(), Some(&2), "{recreated:?}");
    // Without `rollingUpdate`, kubectl's last rule: the update revision became the current one.
    let status = typed::<StatefulSet>(&sim, "sirius-engine")
        .await
        .status
        .unwrap();
    assert_eq!(status.current_revision, status.update_revision);
    assert!(
        pods_of(&sim.pods(), "sirius-engine")
            .iter()
            .all(|p| p.revision == 2 && p.ready)
    );
}

fn daemonset(strategy: Value) -> Value {
    let mut d = sirius_workload("DaemonSet", "sirius-ui", 0);
    if !strategy.is_null() {
        d["spec"]["updateStrategy"] = strategy;
    }
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemonset_runs_one_pod_per_node_and_replaces_at_most_max_unavailable_at_once() {
    let sim = start_sim().await;
    sim.set_nodes(&["node-a", "node-b", "node-c", "node-d"]);
    sim.create_object(consumer_secret(&known_key())).unwrap();
    let created = sim.create_object(daemonset(Value::Null)).unwrap();
    assert_eq!(
        created["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}})
    );
    sample_until::<DaemonSet>(&sim, "sirius-ui", "first rollout", |s| {
        *s == RolloutState::Complete
    })
    .await;
    let nodes = |sim: &Sim| -> Vec<String> {
        let mut nodes: Vec<String> = sim
            .list_objects("", "pods", Some(NS))
            .iter()
            .filter(|p| p["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet")
            .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string())
            .collect();
        nodes.sort();
        nodes
    };
    assert_eq!(nodes(&sim), ["node-a", "node-b", "node-c", "node-d"]);

    stamp(&sim, "daemonsets", "sirius-ui", "k2");
    let samples = sample_until::<DaemonSet>(&sim, "sirius-ui", "the update", |s| {
        *s == RolloutState::Complete
    })
    .await;
    for pods in &samples {
        let available = pods.iter().filter(|p| p.ready && !p.terminating).count();
        assert!(
            available >= 3,
            "more than maxUnavailable (1) down: {pods:?}"
        );
    }
    let pods = sim.pods();
    let ui = pods_of(&pods, "sirius-ui");
    assert_eq!(ui.len(), 4);
    assert!(ui.iter().all(|p| p.revision == 2 && p.ready));
    let ds: DaemonSet = typed(&sim, "sirius-ui").await;
    let status = ds.status.unwrap();
    assert_eq!(
        (
            status.desired_number_scheduled,
            status.updated_number_scheduled,
            status.number_available
        ),
        (4, Some(4), Some(4))
    );
    // A DaemonSet's pods carry the bare revision hash, not `<name>-<hash>` as a StatefulSet's.
    let labels: Vec<Value> = sim
        .list_objects("", "pods", Some(NS))
        .iter()
        .filter(|p| p["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet")
        .map(|p| p["metadata"]["labels"]["controller-revision-hash"].clone())
        .collect();
    assert!(
        labels.iter().all(|l| l
            .as_str()
            .is_some_and(|h| !h.is_empty() && !h.contains('-'))),
        "{labels:?}"
    );

    // Two at a time with maxUnavailable 50%; OnDelete replaces none.
    set_update_strategy(
        &sim,
        "daemonsets",
        "sirius-ui",
        json!({"rollingUpdate": {"maxUnavailable": "50%"}}),
    );
    stamp(&sim, "daemonsets", "sirius-ui", "k3");
    let samples = sample_until::<DaemonSet>(&sim, "sirius-ui", "the 50% update", |s| {
        *s == RolloutState::Complete
    })
    .await;
    let least = samples
        .iter()
        .map(|pods| pods.iter().filter(|p| p.ready && !p.terminating).count())
        .min()
        .unwrap();
    assert_eq!(
        least, 2,
        "maxUnavailable 50% of 4 nodes takes two down at once"
    );
    set_update_strategy(
        &sim,
        "daemonsets",
        "sirius-ui",
        json!({"type": "OnDelete", "rollingUpdate": null}),
    );
    stamp(&sim, "daemonsets", "sirius-ui", "k4");
    tokio::time::sleep(Duration::from_millis(500)).await; // nothing is replaced
    let pods = sim.pods();
    assert!(
        pods_of(&pods, "sirius-ui")
            .iter()
            .all(|p| p.revision == 3 && !p.terminating),
        "OnDelete replaced a pod"
    );
    let ds: DaemonSet = typed(&sim, "sirius-ui").await;
    assert!(ds.cannot_roll().is_some());
    assert!(
        matches!(rollout_state(&ds), RolloutState::Progressing(m) if m.contains("only available for RollingUpdate"))
    );
}

/// kube-apiserver refuses what its Go types cannot decode (400) and strategies its validation
/// rejects (422); none of them takes the stand-in down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_invalid_update_strategies_are_refused_as_kube_apiserver_refuses_them() {
    let sim = start_sim().await;
    let refused = |strategy: Value| -> String {
        sim.create_object(statefulset(1, strategy))
            .expect_err("refused")
    };
    let e = refused(json!("RollingUpdate"));
    assert!(e.contains("cannot unmarshal string"), "{e}");
    let e = refused(json!({"type": "OnDelete", "rollingUpdate": {"partition": 0}}));
    assert!(
        e.contains("spec.updateStrategy.rollingUpdate")
            && e.contains("only allowed for updateStrategy 'RollingUpdate'"),
        "{e}"
    );
    let e = refused(json!({"type": "Recreate"}));
    assert!(
        e.contains("spec.updateStrategy.type") && e.contains("Unsupported value"),
        "{e}"
    );
    let e = refused(json!({"type": "RollingUpdate", "rollingUpdate": {"partition": -1}}));
    assert!(e.contains("must be greater than or equal to 0"), "{e}");
    let mut not_an_object = statefulset(1, Value::Null);
    not_an_object["spec"] = json!("x");
    assert!(sim.create_object(not_an_object).is_err());
    // Still serving.
    sim.create_object(statefulset(1, json!({"type": "OnDelete"})))
        .unwrap();
}
