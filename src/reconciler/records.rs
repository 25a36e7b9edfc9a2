//! The short-lived cache of each rotation's Valkey record view, kept true to the operator's own
//! writes and dropped when Valkey's change feed reports a loss.
//!
//! A read that was under way when a loss was reported carries what Valkey held before it: that
//! answer is returned to its reconcile (which read it honestly) but never cached, or the reconcile
//! the loss triggered would decide on it and leave the loss unrepaired until the entry expired.

use crate::key::KeyId;
use crate::rotation::{Action, RecordView};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What was last read from (or written to) Valkey for one rotation's keys.
#[derive(Clone)]
struct Entry {
    read_at: Instant,
    current: KeyId,
    pending: Option<KeyId>,
    view: RecordView,
}

/// The losses reported before a read began, so that a read begun before a later one is known to
/// be older. Counted over all rotations: a loss elsewhere only costs a read in flight its caching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ReadTicket(u64);

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    losses: u64,
}

#[derive(Default)]
pub(super) struct RecordCache(Mutex<Inner>);

impl RecordCache {
    /// The cached view of `rotation`'s keys `current` and `pending`, if read less than `ttl` ago.
    pub fn get(
        &self,
        rotation: &str,
        current: &KeyId,
        pending: Option<&KeyId>,
        ttl: Duration,
    ) -> Option<RecordView> {
        let inner = self.0.lock().unwrap();
        let e = inner.entries.get(rotation)?;
        (&e.current == current && e.pending.as_ref() == pending && e.read_at.elapsed() < ttl)
            .then_some(e.view)
    }

    /// Taken before reading Valkey; [`Self::insert`] needs it.
    pub fn ticket(&self) -> ReadTicket {
        ReadTicket(self.0.lock().unwrap().losses)
    }

    /// Caches what a read begun at `ticket` found, unless a loss was reported since.
    pub fn insert(
        &self,
        rotation: &str,
        ticket: ReadTicket,
        current: KeyId,
        pending: Option<KeyId>,
        view: RecordView,
    ) {
        let mut inner = self.0.lock().unwrap();
        if inner.losses != ticket.0 {
            return;
        }
        let entry = Entry {
            read_at: Instant::now(),
            current,
            pending,
            view,
        };
        inner.entries.insert(rotation.to_string(), entry);
    }

    /// Valkey may have lost `rotation`'s records: its next reconcile reads them afresh, and
    /// reads under way now are not cached.
    pub fn lost(&self, rotation: &str) {
        let mut inner = self.0.lock().unwrap();
        inner.entries.remove(rotation);
        inner.losses += 1;
    }

    /// The rotation is gone.
    pub fn forget(&self, rotation: &str) {
        self.0.lock().unwrap().entries.remove(rotation);
    }

    /// Keeps the cached view true to what this operator just wrote for `rotation`.
    pub fn wrote(&self, rotation: &str, action: &Action) {
        let mut inner = self.0.lock().unwrap();
        let Some(entry) = inner.entries.get_mut(rotation) else {
            return;
        };
        match action {
            Action::Register { current, pending } => {
                entry.view.current |= *current;
                entry.view.current_marked |= *current;
                entry.view.pending |= *pending && entry.pending.is_some();
            }
            Action::Revoke { key_id } => {
                if *key_id == entry.current {
                    entry.view.current = false;
                    entry.view.current_marked = false;
                }
                if Some(key_id) == entry.pending.as_ref() {
                    entry.view.pending = false;
                }
            }
            Action::SetBootstrapFlag => entry.view.bootstrap_flag = true,
            Action::CreateVault { .. }
            | Action::RestoreVault { .. }
            | Action::MintPending { .. }
            | Action::Promote
            | Action::DropPending => {
                // The keys change: the next observation reads Valkey again.
                inner.entries.remove(rotation);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::RawKey;

    const TTL: Duration = Duration::from_secs(5);

    fn ids() -> (KeyId, KeyId) {
        let old = RawKey::new("0123456789abcdef".repeat(4)).id();
        let new = RawKey::new("fedcba9876543210".repeat(4)).id();
        (old, new)
    }

    fn all_present() -> RecordView {
        RecordView {
            current: true,
            current_marked: true,
            pending: true,
            ..RecordView::default()
        }
    }

    #[test]
    fn a_read_is_reused_for_the_same_keys_only() {
        let cache = RecordCache::default();
        let (old, new) = ids();
        let ticket = cache.ticket();
        cache.insert(
            "ns/a",
            ticket,
            old.clone(),
            Some(new.clone()),
            all_present(),
        );
        assert!(cache.get("ns/a", &old, Some(&new), TTL).is_some());
        assert!(cache.get("ns/a", &old, None, TTL).is_none());
        assert!(cache.get("ns/a", &new, Some(&new), TTL).is_none());
        assert!(cache.get("ns/b", &old, Some(&new), TTL).is_none());
        assert!(
            cache
                .get("ns/a", &old, Some(&new), Duration::ZERO)
                .is_none()
        );
    }

    #[test]
    fn a_read_that_was_under_way_when_a_loss_was_reported_is_not_cached() {
        let cache = RecordCache::default();
        let (old, new) = ids();
        // A reconcile reads Valkey; before its answer is cached, Valkey is flushed and the change
        // feed reports it.
        let ticket = cache.ticket();
        cache.lost("ns/a");
        cache.insert(
            "ns/a",
            ticket,
            old.clone(),
            Some(new.clone()),
            all_present(),
        );
        // The reconcile the loss triggered must read Valkey, not the answer from before it.
        assert!(cache.get("ns/a", &old, Some(&new), TTL).is_none());
        // A read begun after the loss is cached again.
        let ticket = cache.ticket();
        cache.insert(
            "ns/a",
            ticket,
            old.clone(),
            Some(new.clone()),
            all_present(),
        );
        assert!(cache.get("ns/a", &old, Some(&new), TTL).is_some());
    }

    #[test]
    fn own_writes_keep_the_view_true_and_key_changes_drop_it() {
        let cache = RecordCache::default();
        let (old, new) = ids();
        let ticket = cache.ticket();
        cache.insert(
            "ns/a",
            ticket,
            old.clone(),
            Some(new.clone()),
            RecordView::default(),
        );
        let register = Action::Register {
            current: true,
            pending: true,
        };
        cache.wrote("ns/a", &register);
        let view = cache.get("ns/a", &old, Some(&new), TTL).unwrap();
        assert!(view.current && view.current_marked && view.pending);
        cache.wrote(
            "ns/a",
            &Action::Revoke {
                key_id: old.clone(),
            },
        );
        let view = cache.get("ns/a", &old, Some(&new), TTL).unwrap();
        assert!(!view.current && !view.current_marked && view.pending);
        cache.wrote("ns/a", &Action::Promote);
        assert!(cache.get("ns/a", &old, Some(&new), TTL).is_none());
    }
}
