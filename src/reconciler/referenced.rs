//! Watches of the Secrets a rotation reads but does not own: the Valkey password and the TLS
//! material (`spec.valkey.passwordSecretRef`, `spec.valkey.tls`). They carry no label of this
//! operator, so its Secret watch does not see them; each gets a metadata-only watch of its own
//! (field selector `metadata.name`), started when a rotation first names it and stopped once no
//! rotation does. What the watch shows lets [`super::world`] reuse a copy read once, so that a
//! resync of an unchanged rotation reads none of them.

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

pub type SecretKey = (String, String);

/// Each watch is a connection to the API server held open: past this many distinct Secrets
/// (rotations in many namespaces, each with its own Valkey), the others are read at each
/// reconcile instead.
const MAX_WATCHES: usize = 64;

/// What one Secret's watch has shown.
#[derive(Default)]
struct Seen {
    /// Listed and not failed since: `rv` is what the API server holds.
    in_step: bool,
    rv: Option<String>,
    /// The version a list under way found.
    listing: Option<String>,
}

impl Seen {
    fn follow(&mut self, event: Result<watcher::Event<PartialObjectMeta<Secret>>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Init) => {
                self.in_step = false;
                self.listing = None;
            }
            Ok(watcher::Event::InitApply(s)) => self.listing = s.resource_version(),
            Ok(watcher::Event::InitDone) => {
                self.rv = self.listing.take();
                self.in_step = true;
            }
            Ok(watcher::Event::Apply(s)) => self.rv = s.resource_version(),
            Ok(watcher::Event::Delete(_)) => self.rv = None,
            // Events may have been missed: nothing is vouched for until the next list.
            Err(_) => self.in_step = false,
        }
    }
}

struct Watch {
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    /// Per rotation, the Secrets it reads.
    users: HashMap<String, BTreeSet<SecretKey>>,
    watches: HashMap<SecretKey, Watch>,
}

/// The watches of referenced Secrets. Without a client (unit tests) nothing is watched and
/// every read goes to the API.
#[derive(Default)]
pub struct Referenced {
    client: Option<Client>,
    inner: Mutex<Inner>,
}

impl Referenced {
    pub fn new(client: Client) -> Self {
        Self {
            client: Some(client),
            inner: Mutex::default(),
        }
    }

    /// `rotation` reads exactly the Secrets `names` in `ns`: their watches start, and those it
    /// read before and no rotation reads now stop.
    pub fn uses(
        &self,
        rotation: &str,
        ns: &str,
        names: impl IntoIterator<Item = String>,
    ) -> Vec<SecretKey> {
        let Some(client) = &self.client else {
            return Vec::new();
        };
        let wanted: BTreeSet<SecretKey> = names.into_iter().map(|n| (ns.to_string(), n)).collect();
        let mut inner = self.inner.lock().unwrap();
        let watched = |inner: &Inner| wanted.iter().all(|k| inner.watches.contains_key(k));
        if inner.users.get(rotation) == Some(&wanted) && watched(&inner) {
            return Vec::new();
        }
        for key in &wanted {
            if !inner.watches.contains_key(key) && inner.watches.len() < MAX_WATCHES {
                let watch = start(client.clone(), key);
                inner.watches.insert(key.clone(), watch);
            }
        }
        let before = if wanted.is_empty() {
            inner.users.remove(rotation)
        } else {
            inner.users.insert(rotation.to_string(), wanted)
        };
        inner.stop_unused(before.unwrap_or_default())
    }

    /// `rotation` is gone. Gives the Secrets no longer watched.
    pub fn release(&self, rotation: &str) -> Vec<SecretKey> {
        let mut inner = self.inner.lock().unwrap();
        let before = inner.users.remove(rotation).unwrap_or_default();
        inner.stop_unused(before)
    }

    /// The rotations that read a Secret through these watches.
    pub fn rotations(&self) -> Vec<String> {
        self.inner.lock().unwrap().users.keys().cloned().collect()
    }

    /// The resourceVersion the watch of `ns/name` shows, if it is in step and the Secret exists.
    pub fn rv(&self, ns: &str, name: &str) -> Option<String> {
        let inner = self.inner.lock().unwrap();
        let watch = inner.watches.get(&(ns.to_string(), name.to_string()))?;
        let seen = watch.seen.lock().unwrap();
        seen.in_step.then(|| seen.rv.clone()).flatten()
    }

    /// How many Secrets are watched.
    pub fn watching(&self) -> usize {
        self.inner.lock().unwrap().watches.len()
    }
}

impl Inner {
    fn stop_unused(&mut self, candidates: BTreeSet<SecretKey>) -> Vec<SecretKey> {
        let mut stopped = Vec::new();
        for key in candidates {
            if !self.users.values().any(|keys| keys.contains(&key))
                && let Some(watch) = self.watches.remove(&key)
            {
                watch.task.abort();
                stopped.push(key);
            }
        }
        stopped
    }
}

impl Drop for Referenced {
    fn drop(&mut self) {
        for watch in self.inner.lock().unwrap().watches.values() {
            watch.task.abort();
        }
    }
}

fn start(client: Client, (ns, name): &SecretKey) -> Watch {
    let api: Api<PartialObjectMeta<Secret>> = Api::namespaced(client, ns);
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={name}"))
        .any_semantic();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let follow = seen.clone();
    let task = tokio::spawn(async move {
        use futures::StreamExt;
        let events = crate::relist::relisting_watcher(api, config);
        let mut events = std::pin::pin!(events);
        while let Some(event) = events.next().await {
            follow.lock().unwrap().follow(event);
        }
    });
    Watch { seen, task }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(rv: &str) -> PartialObjectMeta<Secret> {
        let mut s = PartialObjectMeta::<Secret>::default();
        s.metadata.name = Some("valkey-auth".into());
        s.metadata.resource_version = Some(rv.into());
        s
    }

    #[test]
    fn a_watch_vouches_only_between_a_finished_list_and_its_next_error() {
        let mut seen = Seen::default();
        let vouched = |s: &Seen| s.in_step.then(|| s.rv.clone()).flatten();
        seen.follow(Ok(watcher::Event::Init));
        seen.follow(Ok(watcher::Event::InitApply(secret("5"))));
        assert_eq!(vouched(&seen), None, "a list under way vouches for nothing");
        seen.follow(Ok(watcher::Event::InitDone));
        assert_eq!(vouched(&seen).as_deref(), Some("5"));
        seen.follow(Ok(watcher::Event::Apply(secret("7"))));
        assert_eq!(vouched(&seen).as_deref(), Some("7"));
        seen.follow(Err(watcher::Error::NoResourceVersion));
        assert_eq!(vouched(&seen), None, "after an error, until the next list");
        seen.follow(Ok(watcher::Event::Init));
        seen.follow(Ok(watcher::Event::InitDone));
        assert_eq!(vouched(&seen), None, "listed and not found");
        seen.follow(Ok(watcher::Event::Apply(secret("9"))));
        seen.follow(Ok(watcher::Event::Delete(secret("9"))));
        assert_eq!(vouched(&seen), None, "deleted");
    }
}
