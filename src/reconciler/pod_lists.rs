//! The pod lists the gate reads, shared by the rotations of a namespace. A check waits for a list
//! that began after it asked, so that it never sees pods older than its question, and every check
//! waiting by then takes that same list: a burst of rotations at the gate costs the API server one
//! or two lists of the namespace instead of one each, and no reconcile holds its slot for long
//! behind the others' lists.
//!
//! A list is read a page at a time into [`crate::pod_view`]'s few fields, with each pod's
//! annotations cut to this operator's; it is kept only until its last waiter took it.

use crate::crd::{ROLLBACK_ANNOTATION, ROLLOUT_ANNOTATION, SECRET_RESTORES_ANNOTATION};
use crate::pod_view::{PodPage, PodView};
use kube::Client;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const PAGE: u32 = 500;
const MAX_PAGES: usize = 200;
/// At most this many namespaces' lists at once: each holds a page of pods while it decodes it.
const CONCURRENT_LISTS: usize = 4;

pub type Pods = Result<Arc<Vec<PodView>>, String>;

#[derive(Default)]
struct Namespace {
    /// The number of the latest list begun.
    begun: AtomicU64,
    /// Checks waiting for a list (or taking one).
    waiting: AtomicUsize,
    latest: tokio::sync::Mutex<Latest>,
}

#[derive(Default)]
struct Latest {
    /// The number of the list `pods` came from.
    number: u64,
    pods: Option<Pods>,
}

pub struct PodLists {
    namespaces: Mutex<HashMap<String, Arc<Namespace>>>,
    lists: tokio::sync::Semaphore,
}

impl Default for PodLists {
    fn default() -> Self {
        Self {
            namespaces: Mutex::default(),
            lists: tokio::sync::Semaphore::new(CONCURRENT_LISTS),
        }
    }
}

/// Counts a check among the waiting until it is done or dropped.
struct Waiting(Arc<Namespace>);

impl Drop for Waiting {
    fn drop(&mut self) {
        // The last one out (done, or dropped while waiting) lets the list go: the next check
        // needs a newer one anyway. A check holding the lock has just arrived and lists anew.
        if self.0.waiting.fetch_sub(1, Ordering::SeqCst) == 1
            && let Ok(mut latest) = self.0.latest.try_lock()
        {
            latest.pods = None;
        }
    }
}

impl PodLists {
    /// The pods of `ns`, from a list that began after this call.
    pub async fn list(&self, client: &Client, ns: &str) -> Pods {
        self.list_with(ns, || list_pages(client, ns)).await
    }

    async fn list_with<F, Fut>(&self, ns: &str, list: F) -> Pods
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<PodView>, String>>,
    {
        let entry = (self.namespaces.lock().unwrap())
            .entry(ns.to_string())
            .or_default()
            .clone();
        entry.waiting.fetch_add(1, Ordering::SeqCst);
        let waiting = Waiting(entry.clone());
        // Any list numbered above this one begins after now.
        let asked = entry.begun.load(Ordering::SeqCst);
        let mut latest = entry.latest.lock().await;
        let pods = match &latest.pods {
            Some(pods) if latest.number > asked => pods.clone(),
            _ => {
                let number = entry.begun.fetch_add(1, Ordering::SeqCst) + 1;
                let pods = {
                    let _turn = self.lists.acquire().await.map_err(|e| e.to_string())?;
                    list().await.map(Arc::new)
                };
                latest.number = number;
                latest.pods = Some(pods.clone());
                pods
            }
        };
        drop(latest);
        drop(waiting);
        pods
    }
}

/// Every pod of `ns`, a page at a time, each cut to what the gate reads.
async fn list_pages(client: &Client, ns: &str) -> Result<Vec<PodView>, String> {
    let request = kube::core::Request::new(format!("/api/v1/namespaces/{ns}/pods"));
    let mut out = Vec::new();
    let mut params = kube::api::ListParams::default().limit(PAGE);
    for _ in 0..MAX_PAGES {
        let page: PodPage = client
            .request(request.list(&params).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| e.to_string())?;
        out.extend(page.items.into_iter().flatten().filter_map(slim));
        match (page.metadata.and_then(|m| m.continue_)).filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
    Err(format!(
        "more than {} pods in namespace {ns}",
        PAGE as usize * MAX_PAGES
    ))
}

/// What the gate reads of a pod: this operator's annotations, and the env entries, `envFrom`
/// sources and volumes that name a Secret. A pod that has finished, or reads no Secret at all,
/// is not kept.
fn slim(mut pod: PodView) -> Option<PodView> {
    const READ: [&str; 3] = [
        ROLLOUT_ANNOTATION,
        SECRET_RESTORES_ANNOTATION,
        ROLLBACK_ANNOTATION,
    ];
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return None;
    }
    if let Some(annotations) = pod.metadata.as_mut().and_then(|m| m.annotations.as_mut()) {
        annotations.retain(|k, _| READ.contains(&k.as_str()));
    }
    let spec = pod.spec.as_mut()?;
    let mut reads = false;
    for containers in [
        &mut spec.containers,
        &mut spec.init_containers,
        &mut spec.ephemeral_containers,
    ] {
        for c in containers.iter_mut().flatten() {
            if let Some(env) = c.env.as_mut() {
                env.retain(|e| (e.value_from.as_ref()).is_some_and(|f| f.secret_key_ref.is_some()));
                reads |= !env.is_empty();
            }
            if let Some(env_from) = c.env_from.as_mut() {
                env_from.retain(|e| e.secret_ref.is_some());
                reads |= !env_from.is_empty();
            }
        }
    }
    if let Some(volumes) = spec.volumes.as_mut() {
        volumes.retain(|v| {
            v.secret.is_some()
                || (v.projected.as_ref()).is_some_and(|p| {
                    (p.sources.iter().flatten()).any(|source| source.secret.is_some())
                })
        });
        reads |= !volumes.is_empty();
    }
    reads.then_some(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    fn pod(name: &str) -> PodView {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
    }

    fn names(pods: &Pods) -> Vec<String> {
        let pods = pods.as_ref().unwrap();
        (pods.iter())
            .map(|p| p.metadata.as_ref().unwrap().name.clone().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn checks_that_ask_while_a_list_runs_share_the_next_one() {
        let lists = Arc::new(PodLists::default());
        let listed = Arc::new(AtomicU32::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let check = |lists: Arc<PodLists>,
                     listed: Arc<AtomicU32>,
                     mut released: tokio::sync::watch::Receiver<bool>| async move {
            lists
                .list_with("ns", || async move {
                    let n = listed.fetch_add(1, Ordering::SeqCst) + 1;
                    released.wait_for(|r| *r).await.unwrap();
                    Ok(vec![pod(&format!("list-{n}"))])
                })
                .await
        };
        // The first check starts a list; ten more ask while it runs.
        let first = tokio::spawn(check(lists.clone(), listed.clone(), released.clone()));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let later: Vec<_> = (0..10)
            .map(|_| tokio::spawn(check(lists.clone(), listed.clone(), released.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        release.send(true).unwrap();
        assert_eq!(names(&first.await.unwrap()), ["list-1"]);
        for check in later {
            // The list under way began before they asked: they all take the one after it.
            assert_eq!(names(&check.await.unwrap()), ["list-2"]);
        }
        assert_eq!(listed.load(Ordering::SeqCst), 2);
        // Nobody waits any more: the list is let go, and the next check lists again.
        let after = check(lists.clone(), listed.clone(), released.clone()).await;
        assert_eq!(names(&after), ["list-3"]);
    }

    #[tokio::test]
    async fn a_failed_list_fails_its_waiters_and_the_next_check_lists_again() {
        let lists = PodLists::default();
        let failed = lists
            .list_with("ns", || async {
                Err("503 Service Unavailable".to_string())
            })
            .await;
        assert_eq!(failed.unwrap_err(), "503 Service Unavailable");
        let ok = lists.list_with("ns", || async { Ok(vec![pod("a")]) }).await;
        assert_eq!(names(&ok), ["a"]);
    }

    #[test]
    fn a_kept_pod_holds_only_what_the_gate_reads() {
        let env =
            |extra: serde_json::Value| serde_json::json!([{"name": "PLAIN", "value": "1"}, extra]);
        let pod = |spec: serde_json::Value, phase: &str| -> PodView {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "annotations": {ROLLOUT_ANNOTATION: "id", "big": "x".repeat(10_000)}},
                "spec": spec, "status": {"phase": phase}}))
            .unwrap()
        };
        let by_key = serde_json::json!({"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}});
        let reads = pod(
            serde_json::json!({"containers": [{"name": "c", "env": env(by_key.clone())}],
                                           "volumes": [{"name": "tmp", "emptyDir": {}}]}),
            "Running",
        );
        let kept = slim(reads).unwrap();
        let annotations = kept.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), [ROLLOUT_ANNOTATION]);
        let spec = kept.spec.unwrap();
        assert_eq!(spec.containers.unwrap()[0].env.as_ref().unwrap().len(), 1);
        assert!(spec.volumes.unwrap().is_empty());
        // A pod reading no Secret, or finished, is not kept.
        let plain = serde_json::json!({"name": "P2", "value": "2"});
        let no_secret = pod(
            serde_json::json!({"containers": [{"name": "c", "env": env(plain)}]}),
            "Running",
        );
        assert!(slim(no_secret).is_none());
        let done = pod(
            serde_json::json!({"containers": [{"name": "c", "env": env(by_key)}]}),
            "Succeeded",
        );
        assert!(slim(done).is_none());
        // A projected Secret volume is kept.
        let projected = pod(
            serde_json::json!({"containers": [{"name": "c"}], "volumes": [
            {"name": "v", "projected": {"sources": [{"secret": {"name": "s"}}]}}]}),
            "Pending",
        );
        assert!(slim(projected).is_some());
    }

    #[tokio::test]
    async fn a_check_dropped_while_waiting_lets_the_list_go() {
        let lists = Arc::new(PodLists::default());
        let (release, released) = tokio::sync::watch::channel(false);
        let holder = {
            let (lists, mut released) = (lists.clone(), released.clone());
            tokio::spawn(async move {
                lists
                    .list_with("ns", || async move {
                        released.wait_for(|r| *r).await.unwrap();
                        Ok(vec![pod("a")])
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let waiter = {
            let lists = lists.clone();
            tokio::spawn(async move { lists.list_with("ns", || async { Ok(vec![]) }).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiter.abort();
        let _ = waiter.await;
        release.send(true).unwrap();
        holder.await.unwrap().unwrap();
        let entry = lists.namespaces.lock().unwrap().get("ns").unwrap().clone();
        assert!(entry.latest.try_lock().unwrap().pods.is_none());
        drop(released);
    }
}
