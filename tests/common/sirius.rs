//! A model of Sirius's authentication (../shared/docs/sirius-auth-contract.md) over the stand-in's
//! pods and the real Valkey, to check that no running pod ever holds a key an API pod refuses.

use super::{NS, Valkey};
use apikey_rotator::key::RawKey;
use kube_sim::{PodView, Sim};
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SECRET_REF: &str = "sirius-api-key/SIRIUS_API_KEY";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthModel {
    /// v1.0: a key is valid only if its `apikey:<id>` record exists; the API writes its own
    /// record and the bootstrap flag at start-up.
    ValkeyOnly,
    /// v1.1+: the API also accepts the root key it read from its file at start-up.
    RootKeyPlusValkey,
}

/// Whether `api` (an API pod) accepts `presented`, given the record ids in Valkey.
pub fn accepts(
    model: AuthModel,
    api: &PodView,
    presented: &str,
    records: &HashSet<String>,
) -> bool {
    let has_record = records.contains(RawKey::new(presented).id().as_str());
    match model {
        AuthModel::ValkeyOnly => has_record,
        AuthModel::RootKeyPlusValkey => {
            has_record
                || api.secrets.get(SECRET_REF).cloned().flatten().as_deref() == Some(presented)
        }
    }
}

pub fn record_ids(valkey: &Valkey) -> HashSet<String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("apikey:*")
        .query(&mut valkey.conn())
        .unwrap();
    keys.into_iter()
        .filter_map(|k| k.strip_prefix("apikey:").map(str::to_string))
        .collect()
}

/// Samples the cluster continuously; every running pod's key must be accepted by every running
/// API pod. Collects violations (a single one fails the test) and the distinct keys seen.
pub struct InvariantChecker {
    pub violations: Arc<Mutex<Vec<String>>>,
    /// While set, violations are counted in `excused` instead: the window a test causes on
    /// purpose (Valkey flushed) until the operator repairs it.
    pub excuse: Arc<std::sync::atomic::AtomicBool>,
    pub excused: Arc<Mutex<u64>>,
    pub samples: Arc<Mutex<u64>>,
    pub keys_seen: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl InvariantChecker {
    pub fn start(sim: Arc<Sim>, valkey: Arc<Valkey>, model: AuthModel) -> Self {
        let violations = Arc::new(Mutex::new(Vec::new()));
        let samples = Arc::new(Mutex::new(0));
        let keys_seen = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let excuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let excused = Arc::new(Mutex::new(0));
        let (v, s, k, halt, pardon, pardoned) = (
            violations.clone(),
            samples.clone(),
            keys_seen.clone(),
            stop.clone(),
            excuse.clone(),
            excused.clone(),
        );
        let mut bootstrapped: HashSet<String> = HashSet::new();
        let thread = std::thread::spawn(move || {
            while !halt.load(std::sync::atomic::Ordering::SeqCst) {
                // Valkey first, then pods: a record can only vanish after its last user did, so
                // this order never reports a 401 that did not happen.
                let mut records = record_ids(&valkey);
                let pods: Vec<PodView> = sim
                    .pods()
                    .into_iter()
                    .filter(|p| p.namespace == NS)
                    .collect();
                if model == AuthModel::ValkeyOnly {
                    // The v1.0 API bootstraps its own record at start-up.
                    for api in pods.iter().filter(|p| p.deployment == "sirius-api") {
                        if bootstrapped.insert(api.name.clone())
                            && let Some(Some(key)) = api.secrets.get(SECRET_REF)
                        {
                            let k = RawKey::new(key.clone());
                            let record = apikey_rotator::sirius::record_json(
                                &k,
                                "root",
                                "system-bootstrap",
                                jiff::Timestamp::now(),
                            );
                            let _: Option<String> = redis::cmd("SET")
                                .arg(format!("apikey:{}", k.id()))
                                .arg(record)
                                .arg("NX")
                                .query(&mut valkey.conn())
                                .unwrap();
                            valkey.set("apikey:bootstrap_complete", "true");
                            // The API serves only after its bootstrap write.
                            records = record_ids(&valkey);
                        }
                    }
                }
                let apis: Vec<&PodView> = pods
                    .iter()
                    .filter(|p| p.deployment == "sirius-api")
                    .collect();
                for pod in &pods {
                    let Some(Some(key)) = pod.secrets.get(SECRET_REF) else {
                        continue;
                    };
                    k.lock().unwrap().insert(key.clone());
                    for api in &apis {
                        if !accepts(model, api, key, &records)
                            && pardon.load(std::sync::atomic::Ordering::SeqCst)
                        {
                            *pardoned.lock().unwrap() += 1;
                        } else if !accepts(model, api, key, &records) {
                            v.lock().unwrap().push(format!(
                                "401: pod {} (revision {}) presents key {} to API pod {} (revision {})",
                                pod.name,
                                pod.revision,
                                RawKey::new(key.clone()).id().short(),
                                api.name,
                                api.revision
                            ));
                        }
                    }
                }
                *s.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Self {
            violations,
            excuse,
            excused,
            samples,
            keys_seen,
            stop,
            thread,
        }
    }

    pub fn stop(self) -> (Vec<String>, u64, BTreeSet<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap();
        let v = self.violations.lock().unwrap().clone();
        let s = *self.samples.lock().unwrap();
        let k = self.keys_seen.lock().unwrap().clone();
        (v, s, k)
    }
}

/// Pods that become ready quickly, and retired pods that keep running (with the old key) a
/// while after their rollout completed, as on a real cluster.
pub fn checked_sim_options() -> kube_sim::SimOptions {
    kube_sim::SimOptions {
        pod_ready_after: Duration::from_millis(80),
        termination_grace: Duration::from_millis(300),
        tick: Duration::from_millis(10),
    }
}

/// The key a fresh install of each Sirius version starts with.
pub fn installed_key(model: AuthModel) -> RawKey {
    match model {
        // v1.1: the installer's root key, which has no Valkey record.
        AuthModel::RootKeyPlusValkey => RawKey::new("0123456789abcdef".repeat(4)),
        // v1.0: the API writes the root key's record when it starts.
        AuthModel::ValkeyOnly => RawKey::new(format!("sk_{}", "ab".repeat(32))),
    }
}
