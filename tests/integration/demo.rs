//! README command 1 end to end: the embedded demo finishes a rotation, and `--fail-at` halts one
//! with the old key still valid.
#![cfg(feature = "demo")]

use apikey_rotator::demo::{DemoArgs, StoreChoice, run};

fn args(fail_at: Option<&str>) -> DemoArgs {
    DemoArgs {
        fail_at: fail_at.map(str::to_string),
        rollback: false,
        replicas: 1,
        pod_ready_seconds: 0.1,
        validation_window: 1,
        store: StoreChoice::Valkey,
        serve: false,
        no_rotation: false,
        kubeconfig: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_finishes_a_rotation() {
    assert!(run(args(None)).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_finishes_a_rotation_on_the_in_memory_store() {
    let mut a = args(None);
    a.store = StoreChoice::Memory;
    assert!(run(a).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_a_failed_rollout_halting() {
    assert!(!run(args(Some("sirius-ui"))).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_refuses_an_unknown_target() {
    assert!(run(args(Some("sirius-db"))).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_shows_a_rollback() {
    let mut a = args(Some("sirius-engine"));
    a.rollback = true;
    assert!(
        !run(a).await.unwrap(),
        "a rolled-back rotation is reported as a failure"
    );
}

/// README: `./scripts/demo.sh --serve --no-rotation`, then the kubectl lines it prints: the
/// first rotation is started, awaited and read with kubectl alone, and the demo stops cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_demo_is_driven_with_kubectl() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let mut a = args(None);
    a.serve = true;
    a.no_rotation = true;
    a.kubeconfig = Some(kubeconfig.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let demo = tokio::spawn(apikey_rotator::demo::run_until(a, async {
        let _ = stopped.await;
    }));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !kubeconfig.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no kubeconfig written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let kubectl = |args: &'static [&'static str]| {
        let kubeconfig = kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("kubectl")
                .env("KUBECONFIG", &kubeconfig)
                .env("KUBECACHEDIR", kubeconfig.with_file_name("kube-cache"))
                .args(args)
                .output()
                .expect("kubectl must be installed for this test");
            assert!(
                out.status.success(),
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        })
    };
    kubectl(&[
        "wait",
        "akr/sirius",
        "--for=condition=Ready",
        "--timeout=30s",
    ])
    .await
    .unwrap();
    let before = kubectl(&["get", "akr", "sirius", "-o", "jsonpath={.status.revision}"])
        .await
        .unwrap();
    assert!(
        before.is_empty() || before == "0",
        "no rotation yet: {before}"
    );
    kubectl(&[
        "annotate",
        "akr",
        "sirius",
        "keys.siriusscan.io/rotate=first",
        "--overwrite",
    ])
    .await
    .unwrap();
    kubectl(&[
        "wait",
        "akr/sirius",
        "--for=jsonpath={.status.revision}=1",
        "--timeout=60s",
    ])
    .await
    .unwrap();
    let table = kubectl(&["get", "akr"]).await.unwrap();
    assert!(table.lines().nth(1).unwrap().contains("Ready"), "{table}");
    stop.send(()).unwrap();
    assert!(demo.await.unwrap().unwrap());
}
