//! The real kubectl drives the stand-in with the operator running: a rotation applied, started,
//! watched and inspected only through kubectl (and `apikey-rotator status`), as a user meets the
//! embedded cluster of `demo --serve`. Discovery (`akr`, `deploy`), server-side Tables with the
//! CRD's printer columns, `describe`'s conditions and Events, `rollout status`, `wait`, `apply
//! --server-side`, `patch` and `delete` all go through kubectl's own code. A machine without
//! kubectl fails these tests; they never skip.

use crate::common::*;
use kube_sim::Sim;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs kubectl with `kubeconfig`; panics when kubectl cannot be started.
async fn kubectl(kubeconfig: &Path, args: &[&str]) -> Output {
    let (kubeconfig, args): (PathBuf, Vec<String>) = (
        kubeconfig.to_path_buf(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    tokio::task::spawn_blocking(move || {
        Command::new("kubectl")
            .env("KUBECONFIG", &kubeconfig)
            .env("KUBECACHEDIR", cache_dir(&kubeconfig))
            .args(&args)
            .output()
            .expect("kubectl must be installed for these tests")
    })
    .await
    .unwrap()
}

/// Each test's own discovery cache (kubectl keys its default one by host and port, and a port
/// the stand-in reuses would serve another run's discovery).
fn cache_dir(kubeconfig: &Path) -> PathBuf {
    kubeconfig.with_file_name("kube-cache")
}

/// kubectl's stdout; panics with its stderr unless it succeeded.
async fn kubectl_ok(kubeconfig: &Path, args: &[&str]) -> String {
    let out = kubectl(kubeconfig, args).await;
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The stand-in with Sirius installed, the operator running, and a kubeconfig for it.
async fn cluster(dir: &Path) -> (Sim, Valkey, tokio::task::JoinHandle<()>, PathBuf) {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    sim.create_object(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
        .unwrap();
    sim.create_object(consumer_secret(&known_key())).unwrap();
    deploy_sirius(&sim, 2).await;
    let operator = spawn_operator(&sim);
    let kubeconfig = dir.join("kubeconfig");
    sim.write_kubeconfig(&kubeconfig, NS).unwrap();
    (sim, valkey, operator, kubeconfig)
}

/// The header and the row of `name` in kubectl's table output, split into columns.
fn row<'a>(table: &'a str, name: &str) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or("");
    let columns = |line: &'a str| -> Vec<&'a str> {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    };
    let row = lines
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"));
    (columns(header), columns(row))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_applied_started_watched_and_inspected_only_through_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, valkey, operator, kubeconfig) = cluster(dir.path()).await;
    let manifest = dir.path().join("rotation.yaml");
    let rotation = rotation(&valkey.url(), json!({}));
    std::fs::write(&manifest, serde_yaml::to_string(&rotation).unwrap()).unwrap();
    let applied = kubectl_ok(
        &kubeconfig,
        &["apply", "--server-side", "-f", manifest.to_str().unwrap()],
    )
    .await;
    assert_eq!(
        applied.trim(),
        "apikeyrotation.keys.siriusscan.io/sirius serverside-applied"
    );
    kubectl_ok(
        &kubeconfig,
        &[
            "wait",
            "akr/sirius",
            "--for=condition=Ready",
            "--timeout=30s",
        ],
    )
    .await;
    // The short name resolves through discovery; the columns are the CRD's printer columns.
    let table = kubectl_ok(&kubeconfig, &["get", "akr"]).await;
    let (header, cells) = row(&table, "sirius");
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "ACTIVE KEY",
            "LAST ROTATION",
            "NEXT ROTATION",
            "AGE"
        ]
    );
    assert_eq!(cells[1], "Ready", "{table}");
    assert_eq!(cells[2], &known_key().id().as_str()[..12], "{table}");
    let wide = kubectl_ok(&kubeconfig, &["get", "akr", "-o", "wide"]).await;
    assert!(row(&wide, "sirius").0.contains(&"STEP"), "{wide}");

    // Watch while a rotation is requested by annotation.
    let mut watch = Command::new("kubectl")
        .env("KUBECONFIG", &kubeconfig)
        .env("KUBECACHEDIR", cache_dir(&kubeconfig))
        .args(["get", "akr", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl must be installed for these tests");
    kubectl_ok(
        &kubeconfig,
        &[
            "annotate",
            "akr",
            "sirius",
            "keys.siriusscan.io/rotate=from-kubectl",
            "--overwrite",
        ],
    )
    .await;
    kubectl_ok(
        &kubeconfig,
        &[
            "wait",
            "akr/sirius",
            "--for=jsonpath={.status.revision}=1",
            "--timeout=60s",
        ],
    )
    .await;
    let rolled = kubectl_ok(
        &kubeconfig,
        &["rollout", "status", "deploy/sirius-engine", "--timeout=30s"],
    )
    .await;
    assert!(
        rolled.contains("deployment \"sirius-engine\" successfully rolled out"),
        "{rolled}"
    );
    watch.kill().unwrap();
    watch.wait().unwrap();
    let mut watched = String::new();
    std::io::Read::read_to_string(&mut watch.stdout.take().unwrap(), &mut watched).unwrap();
    let phases: Vec<&str> = watched
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let rotating = phases.iter().position(|p| *p == "Rotating");
    assert!(
        rotating.is_some(),
        "the watch never showed Rotating:\n{watched}"
    );
    assert!(
        phases[rotating.unwrap()..].contains(&"Ready"),
        "the watch never showed Ready after Rotating:\n{watched}"
    );

    let described = kubectl_ok(&kubeconfig, &["describe", "akr", "sirius"]).await;
    for expected in [
        "Conditions:",
        "KeyActive",
        "Events:",
        "RotationStarted",
        "RotationSucceeded",
    ] {
        assert!(
            described.contains(expected),
            "no {expected} in:\n{described}"
        );
    }
    let events = kubectl_ok(&kubeconfig, &["get", "events"]).await;
    let header: Vec<&str> = events
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(header, ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]);
    assert!(
        events
            .lines()
            .any(|l| l.contains("RotationSucceeded") && l.contains("apikeyrotation/sirius")),
        "{events}"
    );
    let table = kubectl_ok(&kubeconfig, &["get", "akr"]).await;
    let (_, cells) = row(&table, "sirius");
    let active = status(&sim).active_key_id_short;
    assert_eq!(Some(cells[2]), active.as_deref());
    assert_ne!(cells[2], &known_key().id().as_str()[..12]);

    // The operator's own view, through the same kubeconfig.
    let status = tokio::task::spawn_blocking({
        let kubeconfig = kubeconfig.clone();
        move || {
            Command::new(env!("CARGO_BIN_EXE_apikey-rotator"))
                .env("KUBECONFIG", &kubeconfig)
                .args(["status", "-n", NS])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        shown.contains("sirius") && shown.contains("Ready"),
        "{shown}"
    );
    operator.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_writes_reads_and_deletes_built_in_objects_with_their_default_columns() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, _valkey, operator, kubeconfig) = cluster(dir.path()).await;
    let manifest = dir.path().join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: \"1\"\n",
    )
    .unwrap();
    let path = manifest.to_str().unwrap();
    // Server-side apply, then client-side apply and create: kubectl checks field validation
    // through the OpenAPI v3 documents before it writes.
    kubectl_ok(&kubeconfig, &["apply", "--server-side", "-f", path]).await;
    let applied = kubectl_ok(&kubeconfig, &["apply", "-f", path]).await;
    assert_eq!(applied.trim(), "configmap/settings configured");
    let created = kubectl(&kubeconfig, &["create", "-f", path]).await;
    assert!(!created.status.success());
    assert!(
        String::from_utf8_lossy(&created.stderr).contains("AlreadyExists"),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    kubectl_ok(
        &kubeconfig,
        &["patch", "cm", "settings", "-p", r#"{"data":{"b":"2"}}"#],
    )
    .await;
    let data = kubectl_ok(
        &kubeconfig,
        &["get", "cm", "settings", "-o", "jsonpath={.data}"],
    )
    .await;
    assert_eq!(data, r#"{"a":"1","b":"2"}"#);
    let configmaps = kubectl_ok(&kubeconfig, &["get", "cm"]).await;
    let (header, cells) = row(&configmaps, "settings");
    assert_eq!((header, cells[1]), (vec!["NAME", "DATA", "AGE"], "2"));

    let deployments = kubectl_ok(&kubeconfig, &["get", "deploy"]).await;
    let (header, cells) = row(&deployments, "sirius-api");
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert_eq!(&cells[1..4], ["2/2", "2", "2"], "{deployments}");
    let pods = kubectl_ok(&kubeconfig, &["get", "pods"]).await;
    let pod = pods
        .lines()
        .find(|l| l.starts_with("sirius-ui-"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let (header, cells) = row(&pods, pod);
    assert_eq!(header, ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert_eq!(&cells[1..3], ["1/1", "Running"], "{pods}");
    let secrets = kubectl_ok(&kubeconfig, &["get", "secret", "sirius-api-key"]).await;
    let (header, cells) = row(&secrets, "sirius-api-key");
    assert_eq!(header, ["NAME", "TYPE", "DATA", "AGE"]);
    let keys = sim.get_object("", "secrets", NS, "sirius-api-key").unwrap()["data"]
        .as_object()
        .unwrap()
        .len();
    assert_eq!(&cells[1..3], ["Opaque", keys.to_string().as_str()]);
    // The `all` category.
    let all = kubectl_ok(&kubeconfig, &["get", "all"]).await;
    assert!(
        all.contains("deployment.apps/sirius-engine") && all.contains("pod/sirius-api-"),
        "{all}"
    );

    kubectl_ok(&kubeconfig, &["delete", "cm", "settings"]).await;
    let gone = kubectl(&kubeconfig, &["get", "cm", "settings"]).await;
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("NotFound"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
    let explained = kubectl_ok(
        &kubeconfig,
        &["explain", "akr.spec.validationWindowSeconds"],
    )
    .await;
    assert!(
        explained.contains("FIELD: validationWindowSeconds <integer>"),
        "{explained}"
    );
    operator.abort();
}
