//! Valkey over TLS with a private CA (`spec.valkey.tls`): a real `valkey-server` listening on a
//! TLS port only, with certificates each test makes (rcgen), and the real controller.

use crate::common::*;
use apikey_rotator::key::RawKey;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};
use std::time::Duration;

/// A throwaway certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// (certificate PEM, private key PEM) for these names.
    fn issue(&self, name: &str, sans: &[&str], usage: &[ExtendedKeyUsagePurpose]) -> Pair {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = usage.to_vec();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn client(&self) -> Pair {
        self.issue(
            "apikey-rotator",
            &[],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        )
    }
}

struct Pair {
    cert: String,
    key: String,
}

/// A TLS-only Valkey whose certificate `ca` signed (for `127.0.0.1` and `localhost`); with
/// `client`, it asks for a client certificate (mutual TLS) and the test presents this one.
fn tls_valkey(ca: &Ca, client: Option<&Pair>) -> (Valkey, tempfile::TempDir) {
    tls_valkey_named(ca, client, &["127.0.0.1", "localhost"])
}

/// As [`tls_valkey`], with a certificate for these names only.
fn tls_valkey_named(ca: &Ca, client: Option<&Pair>, names: &[&str]) -> (Valkey, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let server = ca.issue(
        "sirius-valkey",
        names,
        &[
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    std::fs::write(dir.path().join("server.crt"), &server.cert).unwrap();
    std::fs::write(dir.path().join("server.key"), &server.key).unwrap();
    std::fs::write(dir.path().join("ca.crt"), &ca.pem).unwrap();
    let ours = redis::TlsCertificates {
        client_tls: client.map(|c| redis::ClientTlsConfig {
            client_cert: c.cert.clone().into_bytes(),
            client_key: c.key.clone().into_bytes(),
        }),
        root_cert: Some(ca.pem.clone().into_bytes()),
    };
    let valkey = Valkey::start_tls(dir.path(), client.is_some(), ours);
    assert!(valkey.url().starts_with("rediss://"), "{}", valkey.url());
    (valkey, dir)
}

fn secret(name: &str, data: &[(&str, &str)]) -> Value {
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), json!(b64(v))))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NS},
        "data": data,
    })
}

fn degraded_message(sim: &kube_sim::Sim) -> String {
    condition(sim, "Degraded")["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The consumers' key after the operator adopted or rotated it.
fn current_key(sim: &kube_sim::Sim) -> RawKey {
    RawKey::new(secret_value(sim, "sirius-api-key", "SIRIUS_API_KEY").unwrap())
}

/// Every log line of the process (trace level), for the leak check.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn install() -> Self {
        let logs = Captured::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
            .with_writer(move || writer.clone())
            .init();
        logs
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// No certificate or key PEM in status, Events (or `more`, the captured logs).
fn assert_no_pem_shown(sim: &kube_sim::Sim, pems: &[&str], more: &str) {
    let shown = format!("{} {:?} {more}", akr_status(sim), events(sim));
    assert!(!shown.contains("-----BEGIN"), "{shown}");
    for pem in pems {
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!shown.contains(line), "PEM content in {shown}");
        }
    }
}

/// A rotation end to end over `rediss://`, trusting the CA from a Secret (cert-manager's
/// `ca.crt` by default); Valkey's change feed also runs over TLS: with the resync an hour away,
/// a `FLUSHALL` is repaired within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_runs_over_tls_with_the_ca_from_a_secret_and_the_change_feed_follows() {
    let ca = Ca::new("sirius private CA");
    let (valkey, _certs) = tls_valkey(&ca, None);
    let sim = start_sim().await;
    sim.create_object(secret("sirius-valkey-ca", &[("ca.crt", &ca.pem)]))
        .unwrap();
    let old = known_key();
    let tls = json!({"valkey": {"tls": {"caSecretRef": {"name": "sirius-valkey-ca"}}}});
    install_sirius(&sim, &valkey.url(), &old, 1, Some("first"), tls).await;
    let operator = spawn_operator_with_resync(&sim, Duration::from_secs(3600));
    wait_revision(&sim, 1).await;

    let new = current_key(&sim);
    assert_ne!(new, old);
    let record = format!("apikey:{}", new.id());
    assert!(valkey.exists(&record), "{}", valkey.dump());
    assert!(!valkey.exists(&format!("apikey:{}", old.id())));
    assert!(
        valkey.exists("apikey-rotator:state:sirius/sirius"),
        "{}",
        valkey.dump()
    );

    wait_for(Duration::from_secs(10), "the change feed over TLS", || {
        !valkey.change_feeds().is_empty()
    })
    .await;
    let lost = std::time::Instant::now();
    // No check that the record is gone: the change feed can have it written back before the
    // test looks (CI saw it).
    valkey.flushall();
    wait_for(Duration::from_secs(3), "the record written back", || {
        valkey.exists(&record)
    })
    .await;
    eprintln!(
        "FLUSHALL over TLS: repaired in {} ms",
        lost.elapsed().as_millis()
    );
    operator.abort();
    assert_eq!(status(&sim).phase, Some(Phase::Ready));
}

/// A CA that did not sign the server's certificate is refused: nothing reaches Valkey, and the
/// condition says the certificate did not verify. With the right CA in the Secret it goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused() {
    let ca = Ca::new("sirius private CA");
    let unrelated = Ca::new("some other CA");
    let (valkey, _certs) = tls_valkey(&ca, None);
    let sim = start_sim().await;
    sim.create_object(secret("sirius-valkey-ca", &[("ca.crt", &unrelated.pem)]))
        .unwrap();
    let old = known_key();
    let tls = json!({"valkey": {"tls": {"caSecretRef": {"name": "sirius-valkey-ca"}}}});
    install_sirius(&sim, &valkey.url(), &old, 1, Some("first"), tls).await;
    let operator = spawn_operator(&sim);
    wait_degraded(&sim, "ValkeyUnavailable").await;
    let message = degraded_message(&sim);
    eprintln!("with another CA: {message}");
    assert!(
        message.contains("TLS certificate did not verify") && message.contains("UnknownIssuer"),
        "{message}"
    );
    // A few retries later, still nothing in Valkey and the consumers keep their key.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(valkey.keys().is_empty(), "{}", valkey.dump());
    assert_eq!(current_key(&sim), old);
    assert_eq!(degraded_reason(&sim).as_deref(), Some("ValkeyUnavailable"));
    assert_no_pem_shown(&sim, &[&unrelated.pem], "");

    // The CA was the only thing wrong: with the right one in the Secret the rotation goes on.
    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-valkey-ca",
        json!({"data": {"ca.crt": base64::engine::general_purpose::STANDARD.encode(&ca.pem)}}),
    )
    .unwrap();
    wait_revision(&sim, 1).await;
    operator.abort();
    assert!(valkey.exists(&format!("apikey:{}", current_key(&sim).id())));
}

/// A server that asks for a client certificate (`--tls-auth-clients yes`) refuses the operator
/// until `certSecretRef` names one (here a cert-manager-shaped Secret: `tls.crt`, `tls.key` and
/// `ca.crt`, also used as the CA); then the rotation finishes. No PEM reaches the logs, Events or
/// status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate_from_cert_secret_ref() {
    let logs = Captured::install();
    let ca = Ca::new("sirius private CA");
    let client = ca.client();
    let (valkey, _certs) = tls_valkey(&ca, Some(&client));
    let sim = start_sim().await;
    sim.create_object(secret(
        "apikey-rotator-valkey-client",
        &[
            ("tls.crt", &client.cert),
            ("tls.key", &client.key),
            ("ca.crt", &ca.pem),
        ],
    ))
    .unwrap();
    let old = known_key();
    let ca_only =
        json!({"valkey": {"tls": {"caSecretRef": {"name": "apikey-rotator-valkey-client"}}}});
    install_sirius(&sim, &valkey.url(), &old, 1, Some("first"), ca_only).await;
    let operator = spawn_operator(&sim);
    wait_degraded(&sim, "ValkeyUnavailable").await;
    let message = degraded_message(&sim);
    eprintln!("without a client certificate: {message}");
    assert!(
        message.contains("asks for a client certificate"),
        "{message}"
    );
    assert!(valkey.keys().is_empty(), "{}", valkey.dump());
    assert_eq!(current_key(&sim), old);

    sim.merge_patch_object(
        "keys.siriusscan.io",
        "apikeyrotations",
        NS,
        "sirius",
        json!({"spec": {"valkey": {"tls": {"certSecretRef": {"name": "apikey-rotator-valkey-client"}}}}}),
    )
    .unwrap();
    wait_revision(&sim, 1).await;
    operator.abort();
    let new = current_key(&sim);
    assert_ne!(new, old);
    assert!(
        valkey.exists(&format!("apikey:{}", new.id())),
        "{}",
        valkey.dump()
    );
    let logs = logs.text();
    assert!(
        logs.lines().count() > 50,
        "the log capture saw too little to prove anything"
    );
    assert_no_pem_shown(&sim, &[&client.key, &client.cert], &logs);
}

/// A CA Secret that is missing, then holds no PEM, is reported by name (never a panic, nothing
/// written to Valkey); once it holds the CA the rotation goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_unreadable_ca_secret_is_reported_by_name() {
    let ca = Ca::new("sirius private CA");
    let (valkey, _certs) = tls_valkey(&ca, None);
    let sim = start_sim().await;
    let old = known_key();
    let tls = json!({"valkey": {"tls": {"caSecretRef": {"name": "sirius-valkey-ca"}}}});
    install_sirius(&sim, &valkey.url(), &old, 1, Some("first"), tls).await;
    let operator = spawn_operator(&sim);
    wait_degraded(&sim, "ValkeyUnavailable").await;
    let message = degraded_message(&sim);
    assert!(
        message.contains("CA Secret sirius-valkey-ca not found"),
        "{message}"
    );

    sim.create_object(secret(
        "sirius-valkey-ca",
        &[(
            "ca.crt",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
        )],
    ))
    .unwrap();
    wait_for(
        Duration::from_secs(15),
        "the unreadable CA reported",
        || degraded_message(&sim).contains("CA Secret sirius-valkey-ca key ca.crt"),
    )
    .await;
    let message = degraded_message(&sim);
    assert!(message.contains("not a valid X.509 CA"), "{message}");
    assert_eq!(degraded_reason(&sim).as_deref(), Some("ValkeyUnavailable"));
    assert!(valkey.keys().is_empty(), "{}", valkey.dump());

    sim.merge_patch_object(
        "",
        "secrets",
        NS,
        "sirius-valkey-ca",
        json!({"data": {"ca.crt": base64::engine::general_purpose::STANDARD.encode(&ca.pem)}}),
    )
    .unwrap();
    wait_revision(&sim, 1).await;
    operator.abort();
    assert!(valkey.exists(&format!("apikey:{}", current_key(&sim).id())));
}

/// `tls` on a plain `redis://` URL is refused when it is applied (the CRD's CEL rule).
#[tokio::test]
async fn tls_on_a_plain_url_is_refused_by_the_api() {
    let sim = start_sim().await;
    let tls = json!({"valkey": {"tls": {"caSecretRef": {"name": "sirius-valkey-ca"}}}});
    let e = sim
        .create_object(rotation("redis://sirius-valkey:6379/0", tls.clone()))
        .unwrap_err();
    assert!(
        e.contains("spec.valkey") && e.contains("tls needs a rediss:// or valkeys:// URL"),
        "{e}"
    );
    sim.create_object(rotation("valkeys://sirius-valkey:6379/0", tls))
        .unwrap();
}

/// A certificate for the Service's name while the URL names another host (here `localhost`; in a
/// cluster a pod IP or a ClusterIP): refused as not valid for the URL's host, until
/// `tls.serverName` names the certificate's name; then the rotation and the change feed run,
/// still connecting to the URL's host. (The certificate also names 127.0.0.1, for the test's
/// own connections.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_name_checks_a_certificate_issued_for_another_name_than_the_urls_host() {
    let ca = Ca::new("sirius private CA");
    let (mut valkey, _certs) = tls_valkey_named(&ca, None, &["valkey.sirius.svc", "127.0.0.1"]);
    let sim = start_sim().await;
    sim.create_object(secret("sirius-valkey-ca", &[("ca.crt", &ca.pem)]))
        .unwrap();
    let old = known_key();
    let url = format!("rediss://localhost:{}", valkey.port);
    let tls = json!({"valkey": {"tls": {"caSecretRef": {"name": "sirius-valkey-ca"}}}});
    install_sirius(&sim, &url, &old, 1, Some("first"), tls).await;
    let operator = spawn_operator_with_resync(&sim, Duration::from_secs(3600));
    wait_degraded(&sim, "ValkeyUnavailable").await;
    let message = degraded_message(&sim);
    assert!(
        message.contains("does not name the URL's host"),
        "{message}"
    );
    assert!(valkey.keys().is_empty(), "{}", valkey.dump());

    sim.merge_patch_object(
        "keys.siriusscan.io",
        "apikeyrotations",
        NS,
        "sirius",
        json!({"spec": {"valkey": {"tls": {"serverName": "valkey.sirius.svc"}}}}),
    )
    .unwrap();
    wait_revision(&sim, 1).await;
    let record = format!("apikey:{}", current_key(&sim).id());
    assert!(valkey.exists(&record), "{}", valkey.dump());
    wait_for(Duration::from_secs(10), "the change feed over TLS", || {
        !valkey.change_feeds().is_empty()
    })
    .await;
    valkey.flushall();
    wait_for(Duration::from_secs(5), "the record written back", || {
        valkey.exists(&record)
    })
    .await;
    // A restart (its data lost) ends every connection: the operator connects again by the
    // server name and writes the record back.
    valkey.restart();
    wait_for(
        Duration::from_secs(20),
        "the record written back after a restart",
        || valkey.exists(&record),
    )
    .await;
    operator.abort();
}
