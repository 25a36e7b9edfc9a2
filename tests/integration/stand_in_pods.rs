//! The stand-in's Pods checked against what kube-apiserver, the ReplicaSet controller and the
//! kubelet do: every simulated pod is a Pod object (listed, watched, selected by label and field),
//! with the fields the ReplicaSet controller copies from the template; pods created through the
//! API run too; deletion is graceful, as a kubelet makes it.

use crate::common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent};
use kube_sim::{PodView, Sim};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const KEY_ID: &str = "keys.siriusscan.io/key-id";

fn pods_api(sim: &Sim) -> Api<Pod> {
    Api::namespaced(client_for(sim), NS)
}

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// The consumers' Secret holding `value`.
fn secret(value: &str) -> Value {
    consumer_secret(&apikey_rotator::key::RawKey::new(value))
}

/// A Deployment like Sirius's, the key id stamped in its template as the operator does.
fn deployment(name: &str, replicas: i64, key_id: &str) -> Value {
    let mut d = sirius_deployment(name, replicas);
    d["spec"]["template"]["metadata"]["annotations"] = json!({KEY_ID: key_id});
    d
}

async fn rolled_out(sim: &Sim, revisions: usize) {
    wait_for(Duration::from_secs(10), "rollouts to complete", || {
        sim.rollouts()
            .iter()
            .filter(|r| r.completed_at_ms.is_some())
            .count()
            >= revisions
    })
    .await;
}

fn pod_objects(sim: &Sim) -> Vec<Value> {
    sim.list_objects("", "pods", Some(NS))
}

fn object_names(pods: &[Value]) -> BTreeSet<String> {
    pods.iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn condition<'a>(pod: &'a Value, type_: &str) -> &'a Value {
    pod["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or(&Value::Null)
}

fn view(sim: &Sim, name: &str) -> Option<PodView> {
    sim.pods().into_iter().find(|p| p.name == name)
}

fn running_ready(pod: &Value) -> bool {
    pod["status"]["phase"] == "Running" && condition(pod, "Ready")["status"] == "True"
}

/// A pod created through the API: the key as env var and, through a projected volume, as a file.
fn bare_pod(name: &str, grace_seconds: Option<i64>) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "tool"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "tool",
                "image": "ghcr.io/siriusscan/tool:1",
                "env": [{"name": "SIRIUS_API_KEY", "valueFrom": {"secretKeyRef": {"name": "sirius-api-key", "key": "SIRIUS_API_KEY"}}}],
                "volumeMounts": [{"name": "key", "mountPath": "/run/secrets"}],
            }],
            "volumes": [{"name": "key", "projected": {"sources": [
                {"secret": {"name": "sirius-api-key", "items": [{"key": "OTHER", "path": "other"}]}},
            ]}}],
        },
    });
    if let Some(seconds) = grace_seconds {
        pod["spec"]["terminationGracePeriodSeconds"] = json!(seconds);
    }
    pod
}

#[tokio::test]
async fn deployment_pods_are_pod_objects_as_the_replicaset_controller_and_kubelet_write_them() {
    let sim = start_sim().await;
    sim.create_object(secret("old-key")).unwrap();
    let d = sim
        .create_object(deployment("sirius-api", 2, "k1"))
        .unwrap();
    rolled_out(&sim, 1).await;
    wait_for(
        Duration::from_secs(5),
        "both pods Running and Ready",
        || {
            let pods = pod_objects(&sim);
            pods.len() == 2 && pods.iter().all(running_ready)
        },
    )
    .await;

    // Through an ordinary client, typed: every field parses as a Pod.
    let listed = pods_api(&sim).list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 2);
    let pods = pod_objects(&sim);
    let hash = pods[0]["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !hash.is_empty()
            && hash
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)),
        "{hash}"
    );
    let rs = format!("sirius-api-{hash}");
    let views = sim.pods();
    for pod in &pods {
        let meta = &pod["metadata"];
        let name = meta["name"].as_str().unwrap();
        let suffix = name.strip_prefix(&format!("{rs}-")).unwrap();
        assert_eq!(suffix.len(), 5, "{name}");
        assert_eq!(meta["generateName"], json!(format!("{rs}-")));
        assert_eq!(meta["namespace"], NS);
        assert!(meta["uid"].as_str().is_some_and(|u| !u.is_empty()));
        let created = meta["creationTimestamp"].as_str().unwrap();
        assert!(
            created.parse::<jiff::Timestamp>().is_ok() && created.len() == 20,
            "{created}"
        );
        assert_eq!(
            meta["labels"],
            json!({"app": "sirius-api", "pod-template-hash": hash})
        );
        assert_eq!(meta["annotations"], json!({KEY_ID: "k1"}));
        let refs = meta["ownerReferences"].as_array().unwrap();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0]["apiVersion"], "apps/v1");
        assert_eq!(refs[0]["kind"], "ReplicaSet");
        assert_eq!(refs[0]["name"], json!(rs));
        assert_eq!(refs[0]["controller"], true);
        assert_eq!(refs[0]["blockOwnerDeletion"], true);
        assert!(
            refs[0]["uid"]
                .as_str()
                .is_some_and(|u| u != d["metadata"]["uid"])
        );
        // The template's spec, bound to the node.
        let mut spec = d["spec"]["template"]["spec"].clone();
        spec["nodeName"] = json!("sim-node");
        assert_eq!(pod["spec"], spec);
        let status = &pod["status"];
        assert_eq!(status["phase"], "Running");
        assert!(status["startTime"].as_str().is_some());
        assert_eq!(condition(pod, "Ready")["status"], "True");
        assert_eq!(condition(pod, "PodScheduled")["status"], "True");
        assert_eq!(status["containerStatuses"][0]["ready"], true);
        assert_eq!(status["containerStatuses"][0]["name"], "sirius-api");
        assert!(status["containerStatuses"][0]["state"]["running"]["startedAt"].is_string());
        // The simulator's view of the same pod.
        let v = views.iter().find(|v| v.name == name).unwrap();
        assert_eq!(v.deployment, "sirius-api");
        assert_eq!(v.owner, Some(("ReplicaSet".to_string(), rs.clone())));
        assert_eq!(
            v.secrets["sirius-api-key/SIRIUS_API_KEY"].as_deref(),
            Some("old-key")
        );
    }
    assert_eq!(
        object_names(&pods),
        views.iter().map(|v| v.name.clone()).collect()
    );
    // The Deployment's messages name the same ReplicaSet.
    let d = sim
        .get_object("apps", "deployments", NS, "sirius-api")
        .unwrap();
    let progressing = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Progressing")
        .unwrap()
        .clone();
    assert_eq!(
        progressing["message"],
        json!(format!("ReplicaSet \"{rs}\" has successfully progressed."))
    );
}

#[tokio::test]
async fn a_template_change_rolls_pods_with_a_new_hash_and_old_ones_terminate_then_vanish() {
    let sim = start_sim().await;
    sim.create_object(secret("old-key")).unwrap();
    sim.create_object(deployment("sirius-ui", 2, "k1")).unwrap();
    rolled_out(&sim, 1).await;
    let first = pod_objects(&sim);
    let old_hash = first[0]["metadata"]["labels"]["pod-template-hash"].clone();
    let old_names = object_names(&first);

    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        "sirius-ui",
        json!({"spec": {"template": {"metadata": {"annotations": {KEY_ID: "k2"}}}}}),
    )
    .unwrap();
    let mut saw_terminating = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "the rollout did not finish");
        let pods = pod_objects(&sim);
        for p in &pods {
            let name = p["metadata"]["name"].as_str().unwrap();
            if p["metadata"]["deletionTimestamp"].is_string() {
                assert!(
                    old_names.contains(name),
                    "only old pods are retired: {name}"
                );
                assert!(p["metadata"]["deletionGracePeriodSeconds"].is_u64());
                saw_terminating.insert(name.to_string());
            }
        }
        let done = sim
            .rollouts()
            .iter()
            .any(|r| r.revision == 2 && r.completed_at_ms.is_some());
        if done && object_names(&pods).is_disjoint(&old_names) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        saw_terminating, old_names,
        "each old pod was terminating before it vanished"
    );
    let pods = pod_objects(&sim);
    assert_eq!(pods.len(), 2);
    let new_hash = &pods[0]["metadata"]["labels"]["pod-template-hash"];
    assert_ne!(new_hash, &old_hash);
    for p in &pods {
        assert_eq!(&p["metadata"]["labels"]["pod-template-hash"], new_hash);
        assert_eq!(p["metadata"]["annotations"][KEY_ID], "k2");
        assert_eq!(
            p["metadata"]["ownerReferences"][0]["name"],
            json!(format!("sirius-ui-{}", new_hash.as_str().unwrap()))
        );
    }
}

#[tokio::test]
async fn termination_grace_period_seconds_keeps_a_retired_pod_terminating_that_long() {
    let sim = start_sim().await;
    sim.create_object(secret("old-key")).unwrap();
    let mut d = deployment("sirius-engine", 1, "k1");
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(2);
    sim.create_object(d).unwrap();
    rolled_out(&sim, 1).await;
    let old = pod_objects(&sim)[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        "sirius-engine",
        json!({"spec": {"template": {"metadata": {"annotations": {KEY_ID: "k2"}}}}}),
    )
    .unwrap();
    wait_for(Duration::from_secs(5), "the old pod to be deleted", || {
        sim.get_object("", "pods", NS, &old)
            .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string())
    })
    .await;
    let marked = Instant::now();
    let pod = sim.get_object("", "pods", NS, &old).unwrap();
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 2);
    // deletionTimestamp is when the grace period ends.
    let at: jiff::Timestamp = pod["metadata"]["deletionTimestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let ahead = at.as_second() - jiff::Timestamp::now().as_second();
    assert!(
        (1..=2).contains(&ahead),
        "deletionTimestamp {at} is {ahead}s ahead"
    );
    // It keeps running (with its key) while it terminates, then is gone.
    tokio::time::sleep(Duration::from_millis(1500)).await; // within its 2 s of grace
    let v = view(&sim, &old).expect("still terminating after 1.5 s");
    assert!(v.terminating);
    assert_eq!(
        v.secrets["sirius-api-key/SIRIUS_API_KEY"].as_deref(),
        Some("old-key")
    );
    assert!(sim.get_object("", "pods", NS, &old).is_some());
    wait_for(Duration::from_secs(3), "the old pod to vanish", || {
        sim.get_object("", "pods", NS, &old).is_none() && view(&sim, &old).is_none()
    })
    .await;
    let lingered = marked.elapsed();
    assert!(
        lingered >= Duration::from_millis(1900) && lingered < Duration::from_millis(3500),
        "terminated for {lingered:?}"
    );
}

#[tokio::test]
async fn a_pod_watch_sees_added_modified_and_deleted() {
    let sim = start_sim().await;
    sim.create_object(secret("old-key")).unwrap();
    let pods = pods_api(&sim);
    let rv = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = pods
        .watch(
            &kube::api::WatchParams::default()
                .labels("app=sirius-api")
                .timeout(10),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    sim.create_object(deployment("sirius-api", 1, "k1"))
        .unwrap();
    rolled_out(&sim, 1).await;
    sim.merge_patch_object(
        "apps",
        "deployments",
        NS,
        "sirius-api",
        json!({"spec": {"template": {"metadata": {"annotations": {KEY_ID: "k2"}}}}}),
    )
    .unwrap();
    let mut events: Vec<(String, String, Option<String>)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !events.iter().any(|(t, _, _)| t == "DELETED") {
        let event = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("no DELETED event")
            .unwrap()
            .unwrap();
        let (kind, pod) = match event {
            WatchEvent::Added(p) => ("ADDED", p),
            WatchEvent::Modified(p) => ("MODIFIED", p),
            WatchEvent::Deleted(p) => ("DELETED", p),
            WatchEvent::Bookmark(_) => continue,
            WatchEvent::Error(e) => panic!("{e:?}"),
        };
        events.push((
            kind.to_string(),
            pod.metadata.name.unwrap(),
            pod.status.and_then(|s| s.phase),
        ));
    }
    let first = &events[0];
    assert_eq!(
        (first.0.as_str(), first.2.as_deref()),
        ("ADDED", Some("Pending"))
    );
    let of_first: Vec<&str> = events
        .iter()
        .filter(|e| e.1 == first.1)
        .map(|e| e.0.as_str())
        .collect();
    assert!(
        of_first.len() >= 4
            && of_first[0] == "ADDED"
            && of_first[1..of_first.len() - 1]
                .iter()
                .all(|k| *k == "MODIFIED")
            && of_first.last() == Some(&"DELETED"),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.1 == first.1 && e.0 == "MODIFIED" && e.2.as_deref() == Some("Running")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.1 != first.1 && e.0 == "ADDED"),
        "the new revision's pod is ADDED: {events:?}"
    );
}

#[tokio::test]
async fn a_bare_pod_created_through_the_api_reads_its_secrets_and_terminates_when_deleted() {
    let sim = start_sim().await;
    sim.create_object(secret("old-key")).unwrap();
    let pods = pods_api(&sim);
    let created = pods
        .create(
            &PostParams::default(),
            &serde_json::from_value(bare_pod("tool", Some(1))).unwrap(),
        )
        .await
        .unwrap();
    // kube-apiserver answers the create with a Pending pod; the kubelet takes it from there.
    assert_eq!(
        created.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
    // The Secret changes right after: the pod read it as it was when it started.
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-api-key",
        json!({"data": {"SIRIUS_API_KEY": "bmV3LWtleQ=="}}),
    )
    .unwrap();
    let v = view(&sim, "tool").expect("the pod runs on the simulated node");
    assert_eq!(v.deployment, "");
    assert_eq!(v.owner, None);
    assert_eq!(v.revision, 0);
    assert_eq!(
        v.secrets["sirius-api-key/SIRIUS_API_KEY"].as_deref(),
        Some("old-key")
    );
    assert_eq!(
        v.secrets["sirius-api-key/OTHER"].as_deref(),
        Some("kept"),
        "projected volumes read their secret sources"
    );
    wait_for(Duration::from_secs(5), "the pod to be Ready", || {
        sim.get_object("", "pods", NS, "tool")
            .is_some_and(|p| running_ready(&p))
            && view(&sim, "tool").is_some_and(|v| v.ready)
    })
    .await;
    let pod = sim.get_object("", "pods", NS, "tool").unwrap();
    assert_eq!(pod["spec"]["nodeName"], "sim-node");
    assert!(pod["status"]["startTime"].is_string());

    // Deleted without a grace period: the pod's own (1 s) applies.
    let deleted = pods.delete("tool", &DeleteParams::default()).await.unwrap();
    let deleted = deleted.left().expect("a graceful delete returns the pod");
    assert_eq!(deleted.metadata.deletion_grace_period_seconds, Some(1));
    assert!(deleted.metadata.deletion_timestamp.is_some());
    tokio::time::sleep(Duration::from_millis(500)).await; // within its 1 s of grace
    assert!(view(&sim, "tool").is_some_and(|v| v.terminating));
    assert!(
        pods.get("tool")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    // A second delete with a longer grace period does not extend it.
    pods.delete("tool", &DeleteParams::default().grace_period(30))
        .await
        .unwrap();
    wait_for(Duration::from_secs(2), "the pod to vanish", || {
        sim.get_object("", "pods", NS, "tool").is_none() && view(&sim, "tool").is_none()
    })
    .await;

    // gracePeriodSeconds=0 removes a pod at once.
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(bare_pod("tool-2", Some(30))).unwrap(),
    )
    .await
    .unwrap();
    assert!(view(&sim, "tool-2").is_some());
    let gone = pods
        .delete("tool-2", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert!(gone.is_left());
    assert!(sim.get_object("", "pods", NS, "tool-2").is_none());
    assert!(view(&sim, "tool-2").is_none());
}

#[tokio::test]
async fn a_pod_whose_secret_is_missing_stays_pending_until_it_exists() {
    let sim = start_sim().await;
    sim.create_object(bare_pod("tool", None)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await; // no start without its Secret
    let pod = sim.get_object("", "pods", NS, "tool").unwrap();
    assert_eq!(pod["status"]["phase"], "Pending");
    assert_eq!(condition(&pod, "Ready")["status"], "False");
    assert_eq!(
        pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
        "ContainerCreating"
    );
    let v = view(&sim, "tool").unwrap();
    assert!(!v.ready);
    assert_eq!(v.secrets["sirius-api-key/SIRIUS_API_KEY"], None);
    sim.create_object(secret("late-key")).unwrap();
    wait_for(Duration::from_secs(5), "the pod to start", || {
        sim.get_object("", "pods", NS, "tool")
            .is_some_and(|p| running_ready(&p))
    })
    .await;
    assert_eq!(
        view(&sim, "tool").unwrap().secrets["sirius-api-key/SIRIUS_API_KEY"].as_deref(),
        Some("late-key")
    );
}

#[tokio::test]
async fn a_jobs_pod_that_succeeded_keeps_its_object_but_no_longer_runs() {
    let sim = start_sim().await;
    sim.create_object(secret("old-key")).unwrap();
    let mut pod = bare_pod("backup-x7k2p", Some(30));
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "batch/v1", "kind": "Job", "name": "backup",
        "uid": "00000000-0000-4000-8000-00000000b0b0", "controller": true, "blockOwnerDeletion": true,
    }]);
    sim.create_object(pod).unwrap();
    let v = view(&sim, "backup-x7k2p").unwrap();
    assert_eq!(v.owner, Some(("Job".to_string(), "backup".to_string())));
    assert_eq!(
        v.secrets["sirius-api-key/SIRIUS_API_KEY"].as_deref(),
        Some("old-key")
    );
    wait_for(Duration::from_secs(5), "the pod to be Ready", || {
        sim.get_object("", "pods", NS, "backup-x7k2p")
            .is_some_and(|p| running_ready(&p))
    })
    .await;

    sim.set_pod_phase(NS, "backup-x7k2p", "Succeeded").unwrap();
    let pod = sim.get_object("", "pods", NS, "backup-x7k2p").unwrap();
    assert_eq!(pod["status"]["phase"], "Succeeded");
    assert_eq!(condition(&pod, "Ready")["status"], "False");
    assert_eq!(condition(&pod, "Ready")["reason"], "PodCompleted");
    let terminated = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
    assert_eq!(
        (&terminated["exitCode"], &terminated["reason"]),
        (&json!(0), &json!("Completed"))
    );
    assert!(
        view(&sim, "backup-x7k2p").is_none(),
        "a finished pod holds no key"
    );
    tokio::time::sleep(Duration::from_millis(200)).await; // it is not restarted meanwhile
    assert_eq!(
        sim.get_object("", "pods", NS, "backup-x7k2p").unwrap()["status"]["phase"],
        "Succeeded",
        "the kubelet does not restart it"
    );
    // Phases other than the terminal ones, and a Deployment's pods, cannot be set.
    assert!(sim.set_pod_phase(NS, "backup-x7k2p", "Running").is_err());
    sim.create_object(deployment("sirius-api", 1, "k1"))
        .unwrap();
    rolled_out(&sim, 1).await;
    let api_pod = sim
        .pods()
        .into_iter()
        .find(|p| p.deployment == "sirius-api")
        .unwrap();
    assert!(sim.set_pod_phase(NS, &api_pod.name, "Succeeded").is_err());

    // A finished pod is deleted at once, whatever its grace period.
    sim.delete_object("", "pods", NS, "backup-x7k2p").unwrap();
    assert!(sim.get_object("", "pods", NS, "backup-x7k2p").is_none());
}

#[tokio::test]
async fn a_deleted_deployment_pod_is_replaced_by_one_that_reads_the_secret_as_it_is_now() {
    let sim = start_sim().await;
    sim.create_object(secret("old-key")).unwrap();
    let mut d = deployment("sirius-api", 1, "k1");
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(1);
    sim.create_object(d).unwrap();
    rolled_out(&sim, 1).await;
    let old = sim.pods()[0].clone();
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-api-key",
        json!({"data": {"SIRIUS_API_KEY": "bmV3LWtleQ=="}}),
    )
    .unwrap();
    let deleted = pods_api(&sim)
        .delete(&old.name, &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .unwrap();
    assert_eq!(deleted.metadata.deletion_grace_period_seconds, Some(1));
    wait_for(Duration::from_secs(5), "a replacement pod", || {
        sim.pods().iter().any(|p| p.name != old.name && p.ready)
    })
    .await;
    let pods = sim.pods();
    let replacement = pods.iter().find(|p| p.name != old.name).unwrap();
    assert_eq!(
        replacement.secrets["sirius-api-key/SIRIUS_API_KEY"].as_deref(),
        Some("new-key")
    );
    assert_eq!(replacement.revision, old.revision, "same ReplicaSet");
    assert_eq!(replacement.owner, old.owner);
    let terminating = pods.iter().find(|p| p.name == old.name);
    assert!(
        terminating.is_some_and(|p| p.terminating),
        "the deleted pod still terminates: {pods:?}"
    );
    wait_for(Duration::from_secs(3), "the deleted pod to vanish", || {
        sim.get_object("", "pods", NS, &old.name).is_none() && view(&sim, &old.name).is_none()
    })
    .await;
    assert_eq!(pod_objects(&sim).len(), 1);
}

#[tokio::test]
async fn deleting_a_deployment_deletes_its_pods() {
    let sim = start_sim().await;
    sim.create_object(secret("old-key")).unwrap();
    let mut d = deployment("sirius-ui", 2, "k1");
    d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(1);
    sim.create_object(d).unwrap();
    rolled_out(&sim, 1).await;
    sim.delete_object("apps", "deployments", NS, "sirius-ui")
        .unwrap();
    wait_for(Duration::from_secs(2), "the pods to terminate", || {
        let pods = pod_objects(&sim);
        pods.len() == 2
            && pods
                .iter()
                .all(|p| p["metadata"]["deletionTimestamp"].is_string())
            && sim.pods().iter().all(|p| p.terminating)
    })
    .await;
    wait_for(Duration::from_secs(3), "the pods to vanish", || {
        pod_objects(&sim).is_empty() && sim.pods().is_empty()
    })
    .await;
}

#[tokio::test]
async fn pods_are_listed_by_label_and_field_selectors() {
    let sim = start_sim().await;
    sim.create_object(secret("old-key")).unwrap();
    sim.create_object(deployment("sirius-api", 2, "k1"))
        .unwrap();
    sim.create_object(deployment("sirius-ui", 1, "k1")).unwrap();
    rolled_out(&sim, 2).await;
    sim.create_object(bare_pod("tool", None)).unwrap();
    sim.create_object(bare_pod("done", None)).unwrap();
    sim.set_pod_phase(NS, "done", "Succeeded").unwrap();
    let pods = pods_api(&sim);
    let names = |list: kube::core::ObjectList<Pod>| -> BTreeSet<String> {
        list.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect()
    };
    let api_pods: BTreeSet<String> = sim
        .pods()
        .into_iter()
        .filter(|p| p.deployment == "sirius-api")
        .map(|p| p.name)
        .collect();
    assert_eq!(api_pods.len(), 2);
    let by_label = pods
        .list(&ListParams::default().labels("app=sirius-api"))
        .await
        .unwrap();
    assert_eq!(names(by_label), api_pods);
    let with_hash = pods
        .list(&ListParams::default().labels("pod-template-hash"))
        .await
        .unwrap();
    assert_eq!(
        with_hash.items.len(),
        3,
        "bare pods have no pod-template-hash"
    );
    let some_api = api_pods.iter().next().unwrap();
    let by_name = pods
        .list(&ListParams::default().fields(&format!("metadata.name={some_api}")))
        .await
        .unwrap();
    assert_eq!(names(by_name), BTreeSet::from([some_api.clone()]));
    let running = pods
        .list(&ListParams::default().fields("status.phase=Running"))
        .await
        .unwrap();
    assert_eq!(running.items.len(), 4);
    let not_running = pods
        .list(&ListParams::default().fields("status.phase!=Running"))
        .await
        .unwrap();
    assert_eq!(names(not_running), BTreeSet::from(["done".to_string()]));
    let on_node = pods
        .list(&ListParams::default().fields("spec.nodeName=sim-node,metadata.namespace=sirius"))
        .await
        .unwrap();
    assert_eq!(on_node.items.len(), 5);
    // `spec.host` is the old name of `spec.nodeName`; an unset field selects as empty.
    let on_host = pods
        .list(&ListParams::default().fields("spec.host=sim-node"))
        .await
        .unwrap();
    assert_eq!(on_host.items.len(), 5);
    let no_account = pods
        .list(&ListParams::default().fields("spec.serviceAccountName="))
        .await
        .unwrap();
    assert_eq!(no_account.items.len(), 5);
    let combined = pods
        .list(
            &ListParams::default()
                .labels("app=tool")
                .fields("status.phase=Succeeded"),
        )
        .await
        .unwrap();
    assert_eq!(names(combined), BTreeSet::from(["done".to_string()]));
}

#[tokio::test]
async fn an_unsupported_pod_field_selector_is_refused_like_kube_apiserver() {
    let sim = start_sim().await;
    let pods = pods_api(&sim);
    let e = api_error(
        pods.list(&ListParams::default().fields("status.hostIP=10.0.0.1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (
            400,
            "BadRequest",
            "field label not supported: status.hostIP"
        )
    );
    let e = api_error(
        pods.list(&ListParams::default().fields("metadata.name=a,metadata.labels=b"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.message, "field label not supported: metadata.labels");
    // A watch is refused the same way.
    let e = pods
        .watch(
            &kube::api::WatchParams::default().fields("spec.containers=x"),
            "0",
        )
        .await
        .err()
        .map(api_error)
        .expect("the watch is refused");
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "field label not supported: spec.containers")
    );
    // The supported ones pass.
    for selector in [
        "metadata.name=a",
        "metadata.namespace=sirius",
        "spec.nodeName=sim-node",
        "spec.restartPolicy=Always",
        "spec.schedulerName=default-scheduler",
        "spec.serviceAccountName=default",
        "spec.hostNetwork=false",
        "status.phase=Running",
        "status.podIP=10.0.0.1",
        "status.nominatedNodeName=n",
    ] {
        pods.list(&ListParams::default().fields(selector))
            .await
            .unwrap_or_else(|e| panic!("{selector}: {e}"));
    }
    // A merge patch to a pod's labels is an ordinary update, seen by selectors.
    sim.create_object(secret("k")).unwrap();
    sim.create_object(bare_pod("tool", None)).unwrap();
    pods.patch(
        "tool",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "x"}}})),
    )
    .await
    .unwrap();
    let teams = pods
        .list(&ListParams::default().labels("team=x"))
        .await
        .unwrap();
    assert_eq!(teams.items.len(), 1);
}

#[tokio::test]
async fn pod_churn_does_not_shorten_how_far_back_other_resources_can_be_watched() {
    let sim = start_sim().await;
    sim.create_object(secret("k")).unwrap();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client_for(&sim), NS);
    let cm = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "c"}, "data": {"a": "1"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    let rv = cm.metadata.resource_version.unwrap();
    sim.create_object(bare_pod("busy", None)).unwrap();
    // More pod events than a watch cache holds (kube-apiserver keeps one per resource).
    for i in 0..20_001 {
        sim.merge_patch_object(
            "",
            "pods",
            NS,
            "busy",
            json!({"metadata": {"labels": {"n": i.to_string()}}}),
        )
        .unwrap();
    }
    cms.patch(
        "c",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await
    .unwrap();
    let params = kube::api::WatchParams::default().timeout(5);
    let mut stream = cms.watch(&params, &rv).await.unwrap().boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Modified(c) => assert_eq!(c.data.unwrap()["a"], "2"),
        other => panic!("expected the ConfigMap's MODIFIED, got {other:?}"),
    }
    // The pods' own log was compacted past that resourceVersion.
    let mut stream = pods_api(&sim).watch(&params, &rv).await.unwrap().boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}
