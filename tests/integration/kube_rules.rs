//! What a real cluster refuses or does behind the operator's back, met before any key is minted:
//! a name too long for the label the operator sets, an immutable consumers' Secret, a Secret that
//! Helm (or Argo CD, Flux, External Secrets) also writes.

use crate::common::*;
use serde_json::json;
use std::time::Duration;

/// The message of the `Degraded` condition (there must be one).
fn degraded_message(sim: &kube_sim::Sim) -> String {
    let status = status(sim);
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
    degraded.expect("a Degraded condition").message.clone()
}

fn vault_exists(sim: &kube_sim::Sim, name: &str) -> bool {
    sim.get_object("", "secrets", NS, &format!("{name}-apikey-vault"))
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_longer_than_a_label_value_is_refused_at_admission_with_a_clear_message() {
    let sim = start_sim().await;
    let valkey = Valkey::start();
    let mut manifest = rotation(&valkey.url(), json!({}));
    let long = "sirius-".to_string() + &"a".repeat(63);
    assert_eq!(long.len(), 70);
    manifest["metadata"]["name"] = json!(long);
    let refused = sim.create_object(manifest.clone()).unwrap_err();
    assert!(refused.contains("metadata.name"), "{refused}");
    assert!(refused.contains("63"), "{refused}");
    // 63 characters are fine.
    manifest["metadata"]["name"] = json!(&long[..63]);
    sim.create_object(manifest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helm_managed_secret_is_reported_before_any_key_is_minted_and_handed_over_by_annotation()
{
    let sim = start_sim().await;
    let valkey = Valkey::start();
    let old = known_key();
    let mut secret = consumer_secret(&old);
    secret["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "Helm"});
    secret["metadata"]["annotations"] = json!({"meta.helm.sh/release-name": "sirius"});
    sim.create_object(secret).unwrap();
    deploy_sirius(&sim, 1).await;
    sim.create_object(rotation(&valkey.url(), json!({})))
        .unwrap();
    let operator = spawn_operator(&sim);
    wait_degraded(&sim, "SecretManagedElsewhere").await;
    let message = degraded_message(&sim);
    assert!(message.contains("written by Helm"), "{message}");
    assert!(
        message.contains("helm.sh/resource-policy: keep"),
        "{message}"
    );
    assert!(
        message.contains(
            "kubectl -n sirius annotate secret sirius-api-key keys.siriusscan.io/handed-over=true"
        ),
        "{message}"
    );
    // Nothing was minted or written.
    tokio::time::sleep(Duration::from_millis(500)).await; // nothing happens until handed over
    assert!(!vault_exists(&sim, "sirius"));
    assert!(valkey.keys().is_empty(), "{:?}", valkey.keys());
    let event = event(&sim, "SecretManagedElsewhere");
    assert_eq!(event["type"], "Warning");

    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-api-key",
        json!({"metadata": {"annotations": {"keys.siriusscan.io/handed-over": "true"}}}),
    )
    .unwrap();
    wait_for(
        Duration::from_secs(20),
        "phase Ready once handed over",
        || status(&sim).phase == Some(Phase::Ready),
    )
    .await;
    operator.abort();
    assert!(valkey.exists(&format!("apikey:{}", old.id())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_immutable_consumers_secret_is_adopted_but_a_rotation_into_it_is_refused_losing_no_key()
{
    let sim = start_sim().await;
    let valkey = Valkey::start();
    let old = known_key();
    let mut secret = consumer_secret(&old);
    secret["immutable"] = json!(true);
    sim.create_object(secret).unwrap();
    deploy_sirius(&sim, 1).await;
    sim.create_object(rotation(&valkey.url(), json!({})))
        .unwrap();
    let operator = spawn_operator(&sim);
    wait_for(Duration::from_secs(20), "phase Ready", || {
        status(&sim).phase == Some(Phase::Ready)
    })
    .await;
    request_rotation(&sim, "go");
    wait_degraded(&sim, "SecretImmutable").await;
    let message = degraded_message(&sim);
    assert!(message.contains("immutable: true"), "{message}");
    tokio::time::sleep(Duration::from_secs(2)).await; // refused, nothing more happens
    operator.abort();
    // The old key is still delivered and valid; any key minted is in the vault and valid too.
    assert_eq!(
        secret_value(&sim, "sirius-api-key", "SIRIUS_API_KEY").as_deref(),
        Some(old.expose())
    );
    assert!(valkey.exists(&format!("apikey:{}", old.id())));
    assert_eq!(status(&sim).revision, 0);
    // Refused before it started: no rotation in flight, no key minted into the vault.
    assert_eq!(in_flight(&sim), None);
    let vault = sim
        .get_object("", "secrets", NS, "sirius-apikey-vault")
        .unwrap();
    assert_eq!(vault["data"].get("pending"), None, "{vault}");
    assert!(message.contains("nothing was minted"));
}
