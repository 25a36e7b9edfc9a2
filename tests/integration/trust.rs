//! No confused deputy: someone who may create ApiKeyRotations but not read Secrets learns no
//! Secret's value through the operator. A password Secret goes to Valkey only with its owner's
//! opt-in, an existing Secret is adopted as the consumers' Secret only if it is an Opaque Secret
//! of no other use, and a key is never sent in clear text outside the cluster.

use crate::common::*;
use base64::Engine;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A TCP proxy in front of the test Valkey that counts the connections made through it.
async fn counting_proxy(valkey_port: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) =
                    tokio::net::TcpStream::connect(("127.0.0.1", valkey_port)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, connections)
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn condition_message(sim: &kube_sim::Sim) -> String {
    condition(sim, "Degraded")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The password Secret is not sent anywhere until its owner names the rotation in
/// `keys.siriusscan.io/valkey-password`; then the rotation runs with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_secret_without_its_owners_opt_in_is_never_sent() {
    let valkey = Valkey::start();
    valkey.set_user_password("sirius", "the-password");
    let (port, connections) = counting_proxy(valkey.port).await;
    let sim = start_sim().await;
    sim.create_object(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "valkey-auth", "namespace": NS},
        "data": {"password": b64("the-password")},
    }))
    .unwrap();
    let old = known_key();
    install_sirius(
        &sim,
        &format!("redis://sirius@127.0.0.1:{port}/0"),
        &old,
        1,
        None,
        json!({"valkey": {"passwordSecretRef": {"name": "valkey-auth", "key": "password"}}}),
    )
    .await;
    let operator = spawn_operator(&sim);

    wait_degraded(&sim, "SecretNotPermitted").await;
    let message = condition_message(&sim);
    assert!(
        message.contains(
            "kubectl -n sirius annotate secret valkey-auth keys.siriusscan.io/valkey-password=sirius"
        ),
        "{message}"
    );
    wait_for(Duration::from_secs(5), "the Warning Event", || {
        has_event(&sim, Reason::SecretNotPermitted)
    })
    .await;
    let note = event(&sim, "SecretNotPermitted")["note"].clone();
    assert!(note.as_str().unwrap().contains("valkey-auth"), "{note}");
    // A retry or two later, still nothing went to Valkey: no connection, so no AUTH.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0, "nothing connected");
    assert!(valkey.keys().is_empty(), "{:?}", valkey.keys());

    // The owner opts in: the retry reads the password and the rotation works.
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "valkey-auth",
        json!({"metadata": {"annotations": {"keys.siriusscan.io/valkey-password": "sirius"}}}),
    )
    .unwrap();
    let record = format!("apikey:{}", old.id());
    wait_for(Duration::from_secs(30), "Ready through the proxy", || {
        status(&sim).phase == Some(Phase::Ready) && valkey.exists(&record)
    })
    .await;
    operator.abort();
    assert!(connections.load(Ordering::SeqCst) > 0);
}

fn vault_exists(sim: &kube_sim::Sim, rotation: &str) -> bool {
    sim.get_object("", "secrets", NS, &format!("{rotation}-apikey-vault"))
        .is_some()
}

fn without_volatile(mut secret: Value) -> Value {
    secret["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("managedFields");
    secret
}

/// A service-account token, or another rotation's vault, named as the consumers' Secret is
/// refused: nothing minted, nothing written, the Secret as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_or_another_rotations_vault_is_not_adopted_as_the_consumers_secret() {
    let mut cluster = Cluster::start().await;
    cluster.install(1, None, json!({})).await;
    let sim = &cluster.sim;
    sim.create_object(json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
        "metadata": {"name": "robot-token", "namespace": NS,
                     "annotations": {"kubernetes.io/service-account.name": "robot"}},
        "data": {"token": b64("a-service-account-token"), "SIRIUS_API_KEY": b64("not-a-key")},
    }))
    .unwrap();
    for target in ["token-target", "vault-target"] {
        sim.create_object(sirius_deployment(target, 1)).unwrap();
    }
    cluster.run_operator();
    wait_for(Duration::from_secs(15), "the first rotation Ready", || {
        cluster.status().phase == Some(Phase::Ready)
    })
    .await;
    let (sim, valkey) = (&cluster.sim, &cluster.valkey);
    let vault_before = without_volatile(
        sim.get_object("", "secrets", NS, "sirius-apikey-vault")
            .unwrap(),
    );
    let token_before = without_volatile(sim.get_object("", "secrets", NS, "robot-token").unwrap());

    for (name, secret, expected) in [
        (
            "token",
            "robot-token",
            "is of type kubernetes.io/service-account-token",
        ),
        (
            "vault",
            "sirius-apikey-vault",
            "is another ApiKeyRotation's vault",
        ),
    ] {
        let mut manifest = rotation(
            &valkey.url(),
            json!({"secret": {"name": secret}, "targets": [{"name": format!("{name}-target")}]}),
        );
        manifest["metadata"]["name"] = json!(name);
        manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "now"});
        sim.create_object(manifest).unwrap();
        let status = || {
            sim.get_object("keys.siriusscan.io", "apikeyrotations", NS, name)
                .map(|o| o["status"].clone())
                .unwrap_or(Value::Null)
        };
        wait_for(Duration::from_secs(15), "ClaimConflict", || {
            status()["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().any(|c| c["reason"] == "ClaimConflict"))
        })
        .await;
        let message = status()["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["reason"] == "ClaimConflict")
            .unwrap()["message"]
            .clone();
        assert!(message.as_str().unwrap().contains(expected), "{message}");
        wait_for(Duration::from_secs(5), "a ClaimConflict Event", || {
            events(sim)
                .iter()
                .any(|e| e["reason"] == "ClaimConflict" && e["regarding"]["name"] == name)
        })
        .await;
        assert!(!vault_exists(sim, name), "{name} minted nothing");
        assert_eq!(template_key(sim, &format!("{name}-target")), Value::Null);
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // neither Secret is touched meanwhile
    cluster.kill_operator();
    let sim = &cluster.sim;
    assert_eq!(
        without_volatile(sim.get_object("", "secrets", NS, "robot-token").unwrap()),
        token_before,
        "the token Secret is untouched"
    );
    assert_eq!(
        without_volatile(
            sim.get_object("", "secrets", NS, "sirius-apikey-vault")
                .unwrap()
        ),
        vault_before,
        "the vault is untouched"
    );
}

/// A probe URL that would send the key in clear text to a public address is refused by the spec
/// check, before anything happens (8.8.8.8 is never contacted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_url_over_http_to_a_public_address_is_invalid_spec() {
    let mut cluster = Cluster::start().await;
    let old = cluster
        .install(
            1,
            Some("now"),
            json!({"verification": {"url": "http://8.8.8.8/host/", "timeoutSeconds": 1}}),
        )
        .await;
    cluster.run_operator();
    cluster.wait_degraded(Reason::InvalidSpec).await;
    let message = condition_message(&cluster.sim);
    assert!(
        message.contains("spec.verification.url: http://8.8.8.8/host/ would go in clear text"),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await; // nothing is minted meanwhile
    cluster.kill_operator();
    assert!(!vault_exists(&cluster.sim, "sirius"), "nothing minted");
    assert!(cluster.valkey.keys().is_empty(), "nothing registered");
    assert_eq!(cluster.consumers_key(), old);
}

/// An Opaque Secret holding something that is no Sirius key (here a database password under the
/// data key the spec names) is not adopted: its value would go to the verification URL and its
/// first characters into Valkey. Nothing is minted or written, and the Secret stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_is_no_sirius_key_is_never_adopted() {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    sim.create_object(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "db-credentials", "namespace": NS},
        "type": "Opaque",
        "data": {"password": b64("correct-horse-battery-staple")},
    }))
    .unwrap();
    let before = without_volatile(sim.get_object("", "secrets", NS, "db-credentials").unwrap());
    let spec = json!({
        "secret": {"name": "db-credentials", "key": "password"},
        "verification": {"url": "https://attacker.example/collect"},
    });
    sim.create_object(rotation(&valkey.url(), spec)).unwrap();
    let operator = spawn_operator(&sim);
    wait_degraded(&sim, "ClaimConflict").await;
    let message = condition_message(&sim);
    assert!(message.contains("not a Sirius API key"), "{message}");
    assert!(!message.contains("correct-horse"), "{message}");
    tokio::time::sleep(Duration::from_millis(500)).await; // nothing is adopted meanwhile
    operator.abort();
    assert!(!vault_exists(&sim, "sirius"), "nothing adopted or minted");
    assert!(
        valkey.keys().is_empty(),
        "nothing written to Valkey: {:?}",
        valkey.keys()
    );
    assert_eq!(
        without_volatile(sim.get_object("", "secrets", NS, "db-credentials").unwrap()),
        before
    );
}
