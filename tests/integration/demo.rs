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
