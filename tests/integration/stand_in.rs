//! The API stand-in checked against what kube-apiserver does, through an ordinary kube::Client,
//! one semantic per test, so what the other tests prove on it can be trusted.

use crate::common::*;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use kube_sim::RolloutBehavior;
use serde_json::json;
use std::time::Duration;

fn api_error(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(s) => *s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn configmap(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": NS}, "data": {"a": "1"}}))
        .unwrap()
}

#[tokio::test]
async fn create_sets_server_metadata_and_refuses_duplicates() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    let created = cms
        .create(&PostParams::default(), &configmap("c"))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert!(created.metadata.resource_version.is_some());
    assert_eq!(
        created.metadata.generation, None,
        "ConfigMaps have no generation"
    );
    let got = cms.get("c").await.unwrap();
    assert_eq!(
        got.metadata.resource_version,
        created.metadata.resource_version
    );
    let e = api_error(
        cms.create(&PostParams::default(), &configmap("c"))
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(e.message, "configmaps \"c\" already exists");
}

#[tokio::test]
async fn missing_objects_are_404_not_found() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    let e = api_error(cms.get("nope").await.unwrap_err());
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (404, "NotFound", "configmaps \"nope\" not found")
    );
    assert!(cms.get_opt("nope").await.unwrap().is_none());
    let e = api_error(
        cms.delete("nope", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
    let e = api_error(
        cms.patch(
            "nope",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "2"}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 404);
}

#[tokio::test]
async fn stale_resource_version_is_a_409_conflict() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    let first = cms
        .create(&PostParams::default(), &configmap("c"))
        .await
        .unwrap();
    let mut a = first.clone();
    a.data = Some([("a".to_string(), "2".to_string())].into());
    let updated = cms.replace("c", &PostParams::default(), &a).await.unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        first.metadata.resource_version
    );
    let mut stale = first.clone();
    stale.data = Some([("a".to_string(), "3".to_string())].into());
    let e = api_error(
        cms.replace("c", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(e.message.contains("the object has been modified"));
    // A merge patch carrying a stale resourceVersion is refused the same way.
    let patch = json!({"metadata": {"resourceVersion": first.metadata.resource_version}, "data": {"a": "4"}});
    let e = api_error(
        cms.patch("c", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert_eq!(cms.get("c").await.unwrap().data.unwrap()["a"], "2");
}

#[tokio::test]
async fn no_op_writes_keep_the_resource_version() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    let first = cms
        .create(&PostParams::default(), &configmap("c"))
        .await
        .unwrap();
    let again = cms
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        first.metadata.resource_version
    );
}

#[tokio::test]
async fn custom_resources_are_validated_against_the_crd_schema_with_422() {
    let sim = start_sim().await;
    let akrs: Api<apikey_rotator::crd::ApiKeyRotation> = Api::namespaced(client_for(&sim), NS);
    let mut bad = rotation(
        "redis://127.0.0.1:6379",
        json!({"validationWindowSeconds": 99999999, "key": {"randomBytes": 4}}),
    );
    bad["metadata"]["name"] = json!("bad");
    let bad: apikey_rotator::crd::ApiKeyRotation = serde_json::from_value(bad).unwrap();
    let e = api_error(akrs.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (422, "Invalid"));
    assert!(
        e.message
            .starts_with("ApiKeyRotation.keys.siriusscan.io \"bad\" is invalid"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("spec.validationWindowSeconds"),
        "{}",
        e.message
    );
    assert!(e.message.contains("spec.key.randomBytes"), "{}", e.message);
    let causes = e.details.unwrap().causes;
    assert_eq!(causes.len(), 2, "{causes:?}");
    // Also on updates: a valid object cannot be patched out of range.
    let good: apikey_rotator::crd::ApiKeyRotation =
        serde_json::from_value(rotation("redis://127.0.0.1:6379", json!({}))).unwrap();
    akrs.create(&PostParams::default(), &good).await.unwrap();
    let e = api_error(
        akrs.patch(
            "sirius",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"historyLimit": 0}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert!(e.message.contains("spec.historyLimit"), "{}", e.message);
}

#[tokio::test]
async fn generation_moves_on_spec_changes_only_and_status_is_a_separate_subresource() {
    let sim = start_sim().await;
    let akrs: Api<apikey_rotator::crd::ApiKeyRotation> = Api::namespaced(client_for(&sim), NS);
    let mut manifest = rotation("redis://127.0.0.1:6379", json!({}));
    manifest["status"] = json!({"revision": 7});
    let created = akrs
        .create(
            &PostParams::default(),
            &serde_json::from_value(manifest).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.status.is_none(),
        "status is dropped on create when the subresource is on"
    );

    let labelled = akrs
        .patch(
            "sirius",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}})),
        )
        .await
        .unwrap();
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "metadata changes leave generation alone"
    );

    let with_status = akrs
        .patch_status(
            "sirius",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"revision": 3}, "spec": {"historyLimit": 50}})),
        )
        .await
        .unwrap();
    assert_eq!(
        with_status.metadata.generation,
        Some(1),
        "status writes leave generation alone"
    );
    assert_eq!(with_status.status.unwrap().revision, 3);
    assert_eq!(
        with_status.spec.history_limit, 10,
        "spec changes through /status are ignored"
    );

    let spec_changed = akrs
        .patch(
            "sirius",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"historyLimit": 20}, "status": {"revision": 99}})),
        )
        .await
        .unwrap();
    assert_eq!(spec_changed.metadata.generation, Some(2));
    assert_eq!(
        spec_changed.status.unwrap().revision,
        3,
        "status changes through the main resource are ignored"
    );
}

#[tokio::test]
async fn json_patch_applies_operations_and_a_failed_test_op_is_refused() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    cms.create(&PostParams::default(), &configmap("c"))
        .await
        .unwrap();
    let ops: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/data/a", "value": "1"},
        {"op": "add", "path": "/data/b", "value": "2"},
    ]))
    .unwrap();
    let patched = cms
        .patch("c", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap()["b"], "2");
    let failing: json_patch::Patch =
        serde_json::from_value(json!([{"op": "test", "path": "/data/a", "value": "nope"}]))
            .unwrap();
    let e = api_error(
        cms.patch("c", &PatchParams::default(), &Patch::<()>::Json(failing))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);
}

#[tokio::test]
async fn server_side_apply_tracks_field_managers() {
    let sim = start_sim().await;
    let secrets: Api<Secret> = Api::namespaced(client_for(&sim), NS);
    // Apply creates.
    let mine = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"mine": "MQ==", "dropped": "MQ=="}});
    secrets
        .patch("s", &PatchParams::apply("operator"), &Patch::Apply(&mine))
        .await
        .unwrap();
    // Another manager adds its own key.
    let theirs = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"theirs": "Mg=="}});
    secrets
        .patch("s", &PatchParams::apply("helm"), &Patch::Apply(&theirs))
        .await
        .unwrap();
    // Re-applying without a field removes it, and leaves the other manager's field alone.
    let mine_again = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"mine": "Mw=="}});
    let s = secrets
        .patch(
            "s",
            &PatchParams::apply("operator"),
            &Patch::Apply(&mine_again),
        )
        .await
        .unwrap();
    let keys: Vec<_> = s.data.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["mine", "theirs"]);
    let managers: Vec<_> = s
        .metadata
        .managed_fields
        .unwrap()
        .iter()
        .map(|m| (m.manager.clone().unwrap(), m.operation.clone().unwrap()))
        .collect();
    assert!(
        managers.contains(&("operator".into(), "Apply".into()))
            && managers.contains(&("helm".into(), "Apply".into())),
        "{managers:?}"
    );
    // Changing a field someone else owns conflicts, unless forced.
    let grab = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"theirs": "OQ=="}});
    let e = api_error(
        secrets
            .patch("s", &PatchParams::apply("operator"), &Patch::Apply(&grab))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert!(
        e.message.contains("conflict") && e.message.contains("helm"),
        "{}",
        e.message
    );
    let forced = secrets
        .patch(
            "s",
            &PatchParams::apply("operator").force(),
            &Patch::Apply(&grab),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["theirs"].0, b"9");
    // Forcing moved ownership: helm re-applying its old value now conflicts.
    let e = api_error(
        secrets
            .patch("s", &PatchParams::apply("helm"), &Patch::Apply(&theirs))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
}

/// structured-merge-diff shares a field two appliers set to the same value: neither conflicts,
/// both are listed as its managers, and one dropping it from its apply leaves it to the other
/// (kube-apiserver removes a field only when no manager owns it any more).
#[tokio::test]
async fn a_field_two_appliers_set_to_the_same_value_is_shared_and_survives_one_dropping_it() {
    let sim = start_sim().await;
    let secrets: Api<Secret> = Api::namespaced(client_for(&sim), NS);
    let both = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"shared": "MQ==", "helm-only": "Mg=="}});
    secrets
        .patch("s", &PatchParams::apply("helm"), &Patch::Apply(&both))
        .await
        .unwrap();
    let same = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"shared": "MQ=="}});
    let s = secrets
        .patch("s", &PatchParams::apply("operator"), &Patch::Apply(&same))
        .await
        .unwrap();
    let owners_of_shared: Vec<String> = (s.metadata.managed_fields.unwrap().iter())
        .filter(|m| {
            m.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.to_string().contains("f:shared"))
        })
        .map(|m| m.manager.clone().unwrap())
        .collect();
    assert_eq!(owners_of_shared, ["helm", "operator"]);
    // The operator stops applying it: helm still owns it, so it stays.
    let other = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"operator-only": "Mw=="}});
    let s = secrets
        .patch("s", &PatchParams::apply("operator"), &Patch::Apply(&other))
        .await
        .unwrap();
    let keys: Vec<_> = s.data.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["helm-only", "operator-only", "shared"]);
    // Helm drops it too: now nobody owns it, and it is removed.
    let helm_only = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"helm-only": "Mg=="}});
    let s = secrets
        .patch("s", &PatchParams::apply("helm"), &Patch::Apply(&helm_only))
        .await
        .unwrap();
    let keys: Vec<_> = s.data.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["helm-only", "operator-only"]);
}

#[tokio::test]
async fn status_apply_and_updates_keep_owners_apart() {
    let sim = start_sim().await;
    let akrs: Api<apikey_rotator::crd::ApiKeyRotation> = Api::namespaced(client_for(&sim), NS);
    akrs.create(
        &PostParams::default(),
        &serde_json::from_value(rotation("redis://127.0.0.1:6379", json!({}))).unwrap(),
    )
    .await
    .unwrap();
    let status = json!({"apiVersion": "keys.siriusscan.io/v1alpha1", "kind": "ApiKeyRotation", "status": {"revision": 2, "phase": "Ready"}});
    akrs.patch_status(
        "sirius",
        &PatchParams::apply("operator").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();
    let fewer = json!({"apiVersion": "keys.siriusscan.io/v1alpha1", "kind": "ApiKeyRotation", "status": {"revision": 2}});
    let after = akrs
        .patch_status(
            "sirius",
            &PatchParams::apply("operator").force(),
            &Patch::Apply(&fewer),
        )
        .await
        .unwrap();
    assert_eq!(
        after.status.unwrap().phase,
        None,
        "a field dropped from the applied status is removed"
    );
    assert_eq!(after.metadata.generation, Some(1));
}

#[tokio::test]
async fn finalizers_hold_deletion_and_owners_cascade() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    let mut owner = configmap("owner");
    owner.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let mut dependent = configmap("dependent");
    dependent.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().unwrap(),
            controller: Some(true),
            ..Default::default()
        },
    ]);
    cms.create(&PostParams::default(), &dependent)
        .await
        .unwrap();

    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    let held = cms.get("owner").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    // No new finalizers on an object being deleted.
    let e = api_error(
        cms.patch(
            "owner",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold", "x/y"]}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    // Removing the last finalizer completes the deletion, and dependents go with it.
    cms.patch(
        "owner",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(cms.get_opt("owner").await.unwrap().is_none());
    assert!(cms.get_opt("dependent").await.unwrap().is_none());
}

#[tokio::test]
async fn delete_preconditions_conflict() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    cms.create(&PostParams::default(), &configmap("c"))
        .await
        .unwrap();
    let dp = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            resource_version: Some("1".into()),
            uid: None,
        }),
        ..Default::default()
    };
    assert_eq!(api_error(cms.delete("c", &dp).await.unwrap_err()).code, 409);
}

#[tokio::test]
async fn watch_from_a_resource_version_sees_later_events_in_order() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    let created = cms
        .create(&PostParams::default(), &configmap("a"))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "2"}})),
    )
    .await
    .unwrap();
    cms.create(&PostParams::default(), &configmap("b"))
        .await
        .unwrap();
    cms.delete("a", &DeleteParams::default()).await.unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match stream.next().await.unwrap().unwrap() {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.metadata.name.unwrap())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(seen, ["MODIFIED a", "ADDED b", "DELETED a"]);
}

/// A watch that falls behind the event buffer ends, as kube-apiserver ends a watcher too slow
/// for its cache: the client resumes from the last version it saw, and nothing is skipped. (It
/// used to stay open on bookmarks alone, whose versions carried the client past what it missed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_falls_behind_the_event_buffer_ends_and_skips_nothing() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    let mut stream = cms
        .watch(&WatchParams::default().timeout(60), "0")
        .await
        .unwrap()
        .boxed();
    // The client reads nothing while far more events than the buffer holds are made.
    let filler = "x".repeat(2_000);
    for i in 0..12_000 {
        sim.create_object(json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("c{i}"), "namespace": NS}, "data": {"a": filler}}))
            .unwrap();
    }
    let mut versions = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = stream.next().await {
            match event.unwrap() {
                WatchEvent::Added(o) => versions.push(
                    (o.metadata.resource_version.unwrap())
                        .parse::<u64>()
                        .unwrap(),
                ),
                WatchEvent::Bookmark(_) => {}
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the watch stayed open after falling behind");
    assert!(
        versions.len() < 12_000,
        "it fell behind (saw {})",
        versions.len()
    );
    assert!(
        versions.windows(2).all(|w| w[1] == w[0] + 1),
        "what it delivered has no gap"
    );
}

#[tokio::test]
async fn watch_from_a_compacted_resource_version_is_410_gone() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    cms.create(&PostParams::default(), &configmap("a"))
        .await
        .unwrap();
    let mut stream = cms
        .watch(&WatchParams::default().timeout(5), "1")
        .await
        .unwrap()
        .boxed();
    match stream.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn label_selector_watches_see_objects_enter_and_leave() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    let list = cms.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.unwrap();
    cms.create(&PostParams::default(), &configmap("a"))
        .await
        .unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "x"}}})),
    )
    .await
    .unwrap();
    cms.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "y"}}})),
    )
    .await
    .unwrap();
    let wp = WatchParams::default().labels("team=x").timeout(5);
    let mut stream = cms.watch(&wp, &rv).await.unwrap().boxed();
    assert!(matches!(
        stream.next().await.unwrap().unwrap(),
        WatchEvent::Added(_)
    ));
    assert!(matches!(
        stream.next().await.unwrap().unwrap(),
        WatchEvent::Deleted(_)
    ));
    assert_eq!(
        cms.list(&ListParams::default().labels("team=y"))
            .await
            .unwrap()
            .items
            .len(),
        1
    );
    assert_eq!(
        cms.list(&ListParams::default().labels("team=x"))
            .await
            .unwrap()
            .items
            .len(),
        0
    );
}

#[tokio::test]
async fn kube_runtime_watcher_lists_then_follows() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    cms.create(&PostParams::default(), &configmap("before"))
        .await
        .unwrap();
    let mut objects = watcher(cms.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    assert_eq!(
        objects
            .next()
            .await
            .unwrap()
            .unwrap()
            .metadata
            .name
            .as_deref(),
        Some("before")
    );
    cms.create(&PostParams::default(), &configmap("after"))
        .await
        .unwrap();
    assert_eq!(
        objects
            .next()
            .await
            .unwrap()
            .unwrap()
            .metadata
            .name
            .as_deref(),
        Some("after")
    );
}

#[tokio::test]
async fn deployment_simulator_rolls_a_new_template_to_completion() {
    let sim = start_sim().await;
    let deployments: Api<Deployment> = Api::namespaced(client_for(&sim), NS);
    sim.create_object(consumer_secret(&apikey_rotator::key::RawKey::new(
        "old-key",
    )))
    .unwrap();
    sim.create_object(sirius_deployment("sirius-api", 3))
        .unwrap();
    wait_for(Duration::from_secs(10), "first rollout", || {
        sim.rollouts().iter().any(|r| r.completed_at_ms.is_some())
    })
    .await;
    let d = deployments.get("sirius-api").await.unwrap();
    let status = d.status.unwrap();
    assert_eq!(
        (
            status.replicas,
            status.updated_replicas,
            status.available_replicas
        ),
        (Some(3), Some(3), Some(3))
    );
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        apikey_rotator::workload::rollout_state(&deployments.get("sirius-api").await.unwrap()),
        apikey_rotator::workload::RolloutState::Complete
    );

    // The Secret changes, then the template: new pods read the new value, old pods kept theirs.
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-api-key",
        json!({"data": {"SIRIUS_API_KEY": "bmV3LWtleQ=="}}),
    )
    .unwrap();
    let patched = deployments
        .patch(
            "sirius-api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"x": "1"}}}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    let mut saw_mixed = false;
    wait_for(Duration::from_secs(10), "second rollout", || {
        let pods = sim.pods();
        let values: std::collections::BTreeSet<_> = pods
            .iter()
            .filter(|p| !p.terminating)
            .map(|p| p.secrets["sirius-api-key/SIRIUS_API_KEY"].clone())
            .collect();
        saw_mixed |= values.len() == 2;
        sim.rollouts()
            .iter()
            .any(|r| r.revision == 2 && r.completed_at_ms.is_some())
    })
    .await;
    assert!(
        saw_mixed,
        "a rolling update runs old and new pods side by side"
    );
    let d = deployments.get("sirius-api").await.unwrap();
    assert_eq!(d.status.as_ref().unwrap().observed_generation, Some(2));
    assert_eq!(
        apikey_rotator::workload::rollout_state(&d),
        apikey_rotator::workload::RolloutState::Complete
    );
    wait_for(Duration::from_secs(5), "old pods to terminate", || {
        sim.pods().iter().all(|p| p.revision == 2)
    })
    .await;
    for pod in sim.pods() {
        assert_eq!(
            pod.secrets["sirius-api-key/SIRIUS_API_KEY"].as_deref(),
            Some("new-key")
        );
        assert_eq!(
            pod.secrets["sirius-api-key/OTHER"].as_deref(),
            Some("kept"),
            "mounted volumes read every key"
        );
    }
}

#[tokio::test]
async fn a_stalled_rollout_reports_progress_deadline_exceeded() {
    let sim = start_sim().await;
    let deployments: Api<Deployment> = Api::namespaced(client_for(&sim), NS);
    sim.create_object(consumer_secret(&apikey_rotator::key::RawKey::new("k")))
        .unwrap();
    let mut d = sirius_deployment("sirius-engine", 1);
    d["spec"]["progressDeadlineSeconds"] = json!(1);
    sim.create_object(d).unwrap();
    wait_for(Duration::from_secs(10), "first rollout", || {
        sim.rollouts().iter().any(|r| r.completed_at_ms.is_some())
    })
    .await;
    sim.set_rollout_behavior(NS, "sirius-engine", RolloutBehavior::Stall);
    deployments
        .patch(
            "sirius-engine",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"x": "1"}}}}})),
        )
        .await
        .unwrap();
    let mut last = None;
    for _ in 0..300 {
        let d = deployments.get("sirius-engine").await.unwrap();
        last = Some(apikey_rotator::workload::rollout_state(&d));
        if matches!(
            last,
            Some(apikey_rotator::workload::RolloutState::Failed(_))
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    match last.unwrap() {
        apikey_rotator::workload::RolloutState::Failed(m) => {
            assert!(m.contains("has timed out progressing"), "{m}")
        }
        other => panic!("expected ProgressDeadlineExceeded, got {other:?}"),
    }
    // Availability never dropped: the old pod still serves.
    assert!(
        sim.pods()
            .iter()
            .any(|p| p.revision == 1 && p.ready && !p.terminating)
    );
}

#[tokio::test]
async fn paused_deployments_do_not_roll() {
    let sim = start_sim().await;
    let deployments: Api<Deployment> = Api::namespaced(client_for(&sim), NS);
    sim.create_object(consumer_secret(&apikey_rotator::key::RawKey::new("k")))
        .unwrap();
    sim.create_object(sirius_deployment("sirius-ui", 1))
        .unwrap();
    wait_for(Duration::from_secs(10), "first rollout", || {
        sim.rollouts().iter().any(|r| r.completed_at_ms.is_some())
    })
    .await;
    deployments
        .patch("sirius-ui", &PatchParams::default(), &Patch::Merge(json!({"spec": {"paused": true, "template": {"metadata": {"annotations": {"x": "1"}}}}})))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing rolls while paused
    assert!(sim.pods().iter().all(|p| p.revision == 1));
    let d = deployments.get("sirius-ui").await.unwrap();
    let reason = d
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap()
        .reason;
    assert_eq!(reason.as_deref(), Some("DeploymentPaused"));
}

#[tokio::test]
async fn injected_faults_fail_the_next_matching_requests() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    sim.inject_faults("create", "configmaps", 1, 500);
    assert_eq!(
        api_error(
            cms.create(&PostParams::default(), &configmap("c"))
                .await
                .unwrap_err()
        )
        .code,
        500
    );
    cms.create(&PostParams::default(), &configmap("c"))
        .await
        .unwrap();
    assert!(sim.request_counts()[&("create".to_string(), "configmaps".to_string())] >= 2);
}

/// kube-apiserver's JSON patch treats a missing path as null in a `test` op, and refuses a
/// failed test with 422 (kube-rs's finalizer helper depends on both).
#[tokio::test]
async fn json_patch_test_ops_match_kube_apiserver() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    cms.create(&PostParams::default(), &configmap("c"))
        .await
        .unwrap();
    let add: json_patch::Patch = serde_json::from_value(json!([
        {"op": "test", "path": "/metadata/finalizers", "value": null},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x/y"]},
    ]))
    .unwrap();
    let patched = cms
        .patch(
            "c",
            &PatchParams::default(),
            &Patch::<()>::Json(add.clone()),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.finalizers, Some(vec!["x/y".to_string()]));
    let e = api_error(
        cms.patch("c", &PatchParams::default(), &Patch::<()>::Json(add))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422, "the test op fails once the finalizers exist");
}

/// Metadata-only lists, gets and watches (the operator's Secret and Deployment watches use them).
#[tokio::test]
async fn metadata_only_requests_return_partial_object_metadata() {
    use kube::core::PartialObjectMeta;
    let sim = start_sim().await;
    let client = client_for(&sim);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    cms.create(&PostParams::default(), &configmap("c"))
        .await
        .unwrap();
    let meta: Api<PartialObjectMeta<ConfigMap>> = Api::namespaced(client, NS);
    let listed = meta.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    let item = &listed.items[0];
    assert_eq!(
        item.types.as_ref().map(|t| t.kind.as_str()),
        Some("PartialObjectMetadata")
    );
    assert_eq!(item.metadata.name.as_deref(), Some("c"));
    let got = meta.get("c").await.unwrap();
    assert_eq!(
        got.types.as_ref().map(|t| t.api_version.as_str()),
        Some("meta.k8s.io/v1")
    );
    let mut events = watcher(meta, watcher::Config::default())
        .applied_objects()
        .boxed();
    let first = tokio::time::timeout(Duration::from_secs(5), events.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.types.as_ref().map(|t| t.kind.as_str()),
        Some("PartialObjectMetadata")
    );
}

#[tokio::test]
async fn lists_page_by_limit_and_continue_as_kube_apiserver_does() {
    let sim = start_sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&sim), NS);
    for name in ["g", "b", "e", "a", "f", "c", "d"] {
        cms.create(&PostParams::default(), &configmap(name))
            .await
            .unwrap();
    }
    let names = |l: &kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect()
    };
    let first = cms.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(names(&first), ["a", "b", "c"]);
    assert_eq!(first.metadata.remaining_item_count, Some(4));
    let token = first.metadata.continue_.clone().unwrap();
    // A later page answers with the first page's resourceVersion, also after another write.
    cms.create(&PostParams::default(), &configmap("h"))
        .await
        .unwrap();
    let second = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second), ["d", "e", "f"]);
    assert_eq!(
        second.metadata.resource_version,
        first.metadata.resource_version
    );
    let token = second.metadata.continue_.clone().unwrap();
    let last = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&last), ["g", "h"]);
    assert!(last.metadata.continue_.as_deref().unwrap_or("").is_empty());
    // No limit, no paging; a selector hides the count of what is left; a forged token is 400.
    assert_eq!(
        names(&cms.list(&ListParams::default()).await.unwrap()).len(),
        8
    );
    let selected = cms
        .list(&ListParams::default().limit(2).fields("metadata.name!=a"))
        .await
        .unwrap();
    assert_eq!(names(&selected), ["b", "c"]);
    assert_eq!(selected.metadata.remaining_item_count, None);
    let forged = cms
        .list(&ListParams::default().limit(2).continue_token("bm9wZQ"))
        .await
        .unwrap_err();
    assert_eq!(api_error(forged).code, 400);
}

/// kube-apiserver authorizes a server-side apply that creates its object as a create too: a user
/// that may only patch gets 403 for a new object and applies to an existing one.
#[tokio::test]
async fn an_apply_that_creates_needs_the_create_verb() {
    let sim = start_sim().await;
    let rules =
        json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "patch"]}]);
    let api: Api<ConfigMap> =
        Api::namespaced(client_as_service_account(&sim, "patcher", rules), NS);
    let apply = |name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
               "data": {"k": "v"}})
    };
    let params = PatchParams::apply("test").force();
    match api.patch("new", &params, &Patch::Apply(apply("new"))).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 403);
            assert!(
                s.message.contains("cannot create resource"),
                "{}",
                s.message
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(sim.get_object("", "configmaps", NS, "new").is_none());
    sim.create_object(json!({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"name": "old", "namespace": NS}}))
        .unwrap();
    api.patch("old", &params, &Patch::Apply(apply("old")))
        .await
        .unwrap();
}
