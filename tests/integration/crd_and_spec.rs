//! The shipped CRD, the examples, and how the operator treats a spec it cannot use.

use crate::common::*;
use serde_json::{Value, json};
use std::time::Duration;

#[test]
fn crds_dir_holds_exactly_what_the_crd_command_prints() {
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crds/apikeyrotation.yaml"
    ))
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_apikey-rotator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        shipped,
        "crds/ is stale: run `cargo run -- crd > crds/apikeyrotation.yaml`"
    );
}

#[test]
fn the_crd_declares_what_kubectl_shows() {
    let crd: Value = serde_yaml::from_str(
        apikey_rotator::crd::crd_yaml()
            .split("---\n")
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(crd["spec"]["group"], "keys.siriusscan.io");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["akr"]));
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"], "v1alpha1");
    assert!(version["subresources"]["status"].is_object());
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for c in [
        "Phase",
        "Active Key",
        "Last Rotation",
        "Next Rotation",
        "Age",
    ] {
        assert!(columns.contains(&c), "{columns:?}");
    }
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    // Atomic: an entry that selects by label has no name to key a map list by.
    assert_eq!(
        spec["properties"]["targets"]["x-kubernetes-list-type"],
        "atomic"
    );
    assert_eq!(
        spec["properties"]["valkey"]["properties"]["url"]["pattern"],
        "^(redis|rediss|valkey|valkeys)://[^\\s]+$"
    );
    assert_eq!(
        spec["properties"]["key"]["properties"]["randomBytes"]["minimum"],
        json!(16.0)
    );
    assert_eq!(spec["required"], json!(["valkey"]));
}

fn example_docs() -> Vec<(String, Value)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            if !v.is_null() {
                out.push((path.file_name().unwrap().to_string_lossy().into_owned(), v));
            }
        }
    }
    out
}

#[tokio::test]
async fn every_example_manifest_is_accepted_by_the_api() {
    let sim = start_sim().await;
    let docs = example_docs();
    assert!(docs.iter().any(|(_, d)| d["kind"] == "ApiKeyRotation"));
    for (file, doc) in docs {
        sim.create_object(doc.clone())
            .unwrap_or_else(|e| panic!("{file}: {} {}: {e}", doc["kind"], doc["metadata"]["name"]));
        if doc["kind"] == "ApiKeyRotation" {
            let typed: apikey_rotator::crd::ApiKeyRotation = serde_json::from_value(doc).unwrap();
            assert_eq!(
                apikey_rotator::spec_check::problems(&typed.spec),
                Vec::<String>::new(),
                "{file}"
            );
        }
    }
}

#[tokio::test]
async fn an_out_of_range_manifest_is_refused_with_a_readable_message() {
    let sim = start_sim().await;
    let mut doc = rotation(
        "redis://sirius-valkey:6379",
        json!({"key": {"randomBytes": 8}}),
    );
    doc["metadata"]["name"] = json!("weak");
    let e = sim.create_object(doc).unwrap_err();
    assert!(e.contains("spec.key.randomBytes") && e.contains("8"), "{e}");
}

/// The CRD's CEL rules, evaluated by the stand-in as kube-apiserver (1.25+) does.
#[tokio::test]
async fn cel_rules_refuse_overlapping_prefixes_and_the_vault_as_consumer_secret() {
    let sim = start_sim().await;
    let mut overlapping = rotation(
        "redis://sirius-valkey:6379",
        json!({"valkey": {"operatorPrefix": "apikey:operator:"}}),
    );
    overlapping["metadata"]["name"] = json!("overlap");
    let e = sim.create_object(overlapping).unwrap_err();
    assert!(
        e.contains("spec.valkey") && e.contains("must not overlap"),
        "{e}"
    );

    let mut self_vault = rotation(
        "redis://sirius-valkey:6379",
        json!({"secret": {"name": "own-apikey-vault"}}),
    );
    self_vault["metadata"]["name"] = json!("own");
    let e = sim.create_object(self_vault).unwrap_err();
    assert!(e.contains("own vault Secret"), "{e}");

    // The same spec under another name is fine.
    let mut fine = rotation(
        "redis://sirius-valkey:6379",
        json!({"secret": {"name": "own-apikey-vault"}}),
    );
    fine["metadata"]["name"] = json!("other");
    sim.create_object(fine).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_spec_is_degraded_with_a_reason_and_changes_nothing() {
    let mut cluster = Cluster::start().await;
    let old = known_key();
    // Valid for the schema (its pattern and CEL rules), but not a URL a client can use.
    install_sirius(
        &cluster.sim,
        "redis://sirius-valkey:99999",
        &old,
        1,
        None,
        json!({}),
    )
    .await;
    cluster.run_operator();
    let sim = &cluster.sim;
    wait_for(Duration::from_secs(10), "Degraded InvalidSpec", || {
        status(sim)
            .conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "InvalidSpec")
    })
    .await;
    wait_event(sim, Reason::InvalidSpec).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // nothing more happens once Degraded
    cluster.kill_operator();
    let sim = &cluster.sim;
    let status = status(sim);
    assert_eq!(status.phase, Some(Phase::Degraded));
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert!(degraded.message.contains("spec.valkey.url"), "{degraded:?}");
    assert_eq!(degraded.observed_generation, Some(1));
    let warning = events(sim)
        .into_iter()
        .find(|e| e["reason"] == "InvalidSpec")
        .unwrap();
    assert_eq!(warning["type"], "Warning");
    // Nothing changed: no vault, the consumers' key untouched, nothing in Valkey, no restarts.
    assert!(
        sim.get_object("", "secrets", NS, "sirius-apikey-vault")
            .is_none()
    );
    assert_eq!(cluster.consumers_key(), old);
    assert!(
        cluster.valkey.keys().is_empty(),
        "{:?}",
        cluster.valkey.keys()
    );
    assert!(sim.rollouts().iter().all(|r| r.revision == 1));
}

#[tokio::test]
async fn duplicate_targets_are_admitted_by_the_atomic_list_and_refused_by_the_spec_checks() {
    let sim = start_sim().await;
    let mut doc = rotation(
        "redis://sirius-valkey:6379",
        json!({"targets": [{"name": "sirius-api"}, {"kind": "Deployment", "name": "sirius-api"}]}),
    );
    doc["metadata"]["name"] = json!("dup");
    let created = sim.create_object(doc).unwrap();
    let typed: apikey_rotator::crd::ApiKeyRotation = serde_json::from_value(created).unwrap();
    let problems = apikey_rotator::spec_check::problems(&typed.spec);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("spec.targets[1]: duplicate target Deployment sirius-api")),
        "{problems:?}"
    );
}
