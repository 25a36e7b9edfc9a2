//! The back-off policy in one place: how long a failing rotation waits before its next attempt,
//! and the guard against a write that someone keeps undoing (a GitOps tool's self-heal, an
//! admission webhook, a controller that owns the same field).
//!
//! While a rotation backs off, no trigger gets a reconcile through: not a watch event, not
//! Valkey's change feed, not the rotation's own status write. Only a spec change (a new
//! generation, likely the fix) or a deletion ends the wait early.

use crate::rotation::Action;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What kind of failure decides the delay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Failure {
    /// A write lost a race (409): the next attempt reads afresh and usually succeeds.
    Conflict,
    /// Throttling, server errors, lost connections to the API server.
    Transient,
    /// Valkey unreachable or refusing the operator.
    Valkey,
    /// A write someone keeps undoing: wait as long as the guard says.
    Undone(Duration),
    /// Anything else (a spec the operator cannot act on, a corrupt vault...).
    Other,
}

struct Entry {
    failures: u32,
    retry_at: Instant,
    generation: Option<i64>,
    valkey: bool,
}

/// How often one write was performed lately, and when last.
struct Repeat {
    count: u32,
    last: Instant,
}

/// A write this rotation made was undone, again: it is not repeated before `retry_in`.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} keeps being undone by someone else (another manager of the same object: Helm, Argo CD or Flux self-heal, External Secrets, an admission webhook); the operator writes it again in {}s at the earliest",
    retry_in.as_secs().max(1)
)]
pub struct Undone {
    pub what: String,
    pub retry_in: Duration,
}

/// A write repeated within this long of the previous one counts as undone.
const REPEAT_HORIZON: Duration = Duration::from_secs(120);
/// Repeats allowed before the guard holds them back (a flush or a deleted Secret is repaired at
/// once, and even twice in a row).
const FREE_REPEATS: u32 = 3;
const MAX_DELAY: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Backoffs {
    entries: Mutex<HashMap<String, Entry>>,
    /// Per rotation, per write (of one rotation revision): counted apart, so that other steps in
    /// between (a roll that went ahead before the Secret was reverted) do not reset the count.
    repeats: Mutex<HashMap<String, HashMap<String, Repeat>>>,
}

impl Backoffs {
    /// Records a failed reconcile of `rotation` and returns how long it waits: exponential in the
    /// failures in a row, short for conflicts and transient API errors.
    pub fn failed(&self, rotation: &str, generation: Option<i64>, failure: Failure) -> Duration {
        let mut entries = self.entries.lock().unwrap();
        let e = entries.entry(rotation.to_string()).or_insert(Entry {
            failures: 0,
            retry_at: Instant::now(),
            generation,
            valkey: false,
        });
        e.failures = (e.failures + 1).min(16);
        let n = e.failures;
        let delay = match failure {
            // 20 ms, 40 ms, ... up to 500 ms.
            Failure::Conflict => Duration::from_millis((20u64 << (n - 1).min(5)).min(500)),
            // 100 ms, 200 ms, ... up to 5 s: a blip should not stall a rotation, nor be hammered.
            Failure::Transient => Duration::from_millis((100u64 << (n - 1).min(6)).min(5_000)),
            Failure::Undone(wait) => wait.max(Duration::from_secs(1)),
            // 2 s, 4 s, ... up to about 4 minutes.
            Failure::Valkey | Failure::Other => {
                Duration::from_secs((1u64 << n.min(8)).min(MAX_DELAY.as_secs()))
            }
        };
        e.retry_at = Instant::now() + delay;
        e.generation = generation;
        e.valkey = failure == Failure::Valkey;
        delay
    }

    /// How long `rotation` must still wait, if it is backing off. A new generation (the spec was
    /// edited, perhaps to fix the failure) or a deletion in progress does not wait.
    pub fn holding(
        &self,
        rotation: &str,
        generation: Option<i64>,
        deleting: bool,
    ) -> Option<Duration> {
        let entries = self.entries.lock().unwrap();
        let e = entries.get(rotation)?;
        if deleting || e.generation != generation {
            return None;
        }
        let left = e.retry_at.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }

    /// Failed reconciles in a row.
    pub fn failures(&self, rotation: &str) -> u32 {
        let entries = self.entries.lock().unwrap();
        entries.get(rotation).map_or(0, |e| e.failures)
    }

    /// Whether the last reconcile failed on Valkey (so the next one asks Valkey first, before
    /// reading anything from the API server).
    pub fn valkey_failed_last(&self, rotation: &str) -> bool {
        let entries = self.entries.lock().unwrap();
        entries.get(rotation).is_some_and(|e| e.valkey)
    }

    /// A reconcile (or a step) went through: earlier failures no longer count.
    pub fn succeeded(&self, rotation: &str) {
        self.entries.lock().unwrap().remove(rotation);
    }

    /// The rotation is gone.
    pub fn forget(&self, rotation: &str) {
        self.entries.lock().unwrap().remove(rotation);
        self.repeats.lock().unwrap().remove(rotation);
    }

    /// Before performing `action` (for rotation `revision`, if one is in flight): whether it is a
    /// write that keeps being undone. The first few repeats go through; after that each waits
    /// twice as long as the one before (1 s, 2 s, ... 5 minutes), so a tug of war with another
    /// manager never loops.
    pub fn guard(
        &self,
        rotation: &str,
        revision: Option<u64>,
        action: &Action,
        describe: impl FnOnce() -> String,
    ) -> Result<(), Undone> {
        let Some(what) = undoable(revision, action) else {
            return Ok(());
        };
        let repeats = self.repeats.lock().unwrap();
        let Some(r) = repeats.get(rotation).and_then(|writes| writes.get(&what)) else {
            return Ok(());
        };
        let since = r.last.elapsed();
        let wait = delay_after(r.count);
        if since < wait {
            return Err(Undone {
                what: describe(),
                retry_in: wait - since,
            });
        }
        Ok(())
    }

    /// `action` went through (a write that failed was not undone, so only these count).
    pub fn performed(&self, rotation: &str, revision: Option<u64>, action: &Action) {
        let Some(what) = undoable(revision, action) else {
            return;
        };
        let mut repeats = self.repeats.lock().unwrap();
        let writes = repeats.entry(rotation.to_string()).or_default();
        let now = Instant::now();
        let recent = |r: &Repeat| now.duration_since(r.last) <= horizon(r.count);
        writes.retain(|_, r| recent(r));
        let r = writes.entry(what).or_insert(Repeat {
            count: 0,
            last: now,
        });
        r.count += 1;
        r.last = now;
    }
}

/// A write repeated within this long of its previous performance counts as undone.
fn horizon(count: u32) -> Duration {
    REPEAT_HORIZON.max(delay_after(count) * 2)
}

/// How long the write waits after it was performed `count` times in a row.
fn delay_after(count: u32) -> Duration {
    if count < FREE_REPEATS {
        return Duration::ZERO;
    }
    let exp = (count - FREE_REPEATS).min(9);
    Duration::from_secs(1u64 << exp).min(MAX_DELAY)
}

/// Writes to API objects other managers may also write; the same one again (in the same
/// rotation) means it was undone. Valkey's records are not among them: writing back what a flush
/// took costs the API server nothing, and every millisecond it waits is a refused request.
fn undoable(revision: Option<u64>, action: &Action) -> Option<String> {
    match action {
        Action::WriteConsumer { .. } | Action::Roll { .. } | Action::RestoreVault { .. } => {
            Some(format!("{revision:?} {action:?}"))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_exponentially_and_a_success_resets() {
        let b = Backoffs::default();
        let d1 = b.failed("ns/a", Some(1), Failure::Valkey);
        let d2 = b.failed("ns/a", Some(1), Failure::Valkey);
        assert_eq!((d1, d2), (Duration::from_secs(2), Duration::from_secs(4)));
        assert!(b.valkey_failed_last("ns/a"));
        assert!(b.holding("ns/a", Some(1), false).is_some());
        assert_eq!(b.holding("ns/a", Some(2), false), None, "a spec edit");
        assert_eq!(b.holding("ns/a", Some(1), true), None, "a deletion");
        assert_eq!(b.holding("ns/b", Some(1), false), None);
        b.succeeded("ns/a");
        assert_eq!(b.holding("ns/a", Some(1), false), None);
        assert_eq!(b.failures("ns/a"), 0);
        for _ in 0..20 {
            b.failed("ns/a", Some(1), Failure::Other);
        }
        assert_eq!(
            b.failed("ns/a", Some(1), Failure::Other),
            Duration::from_secs(256)
        );
    }

    #[test]
    fn a_write_repeated_past_the_free_repeats_waits_ever_longer() {
        let b = Backoffs::default();
        let write = Action::WriteConsumer { pending: true };
        for _ in 0..FREE_REPEATS {
            assert!(b.guard("ns/a", Some(1), &write, || "w".into()).is_ok());
            b.performed("ns/a", Some(1), &write);
        }
        let held = b
            .guard("ns/a", Some(1), &write, || "the key".into())
            .unwrap_err();
        assert_eq!(held.what, "the key");
        assert!(held.retry_in <= Duration::from_secs(1) && !held.retry_in.is_zero());
        // Another rotation, and another write, are not held back.
        assert!(b.guard("ns/b", Some(1), &write, || "w".into()).is_ok());
        let roll = Action::Roll {
            index: 0,
            key_id: crate::key::KeyId("a".repeat(64)),
            rollback_of: None,
            secret_restores: None,
        };
        assert!(b.guard("ns/a", Some(1), &roll, || "r".into()).is_ok());
        // A roll that went ahead in between does not reset the count of the undone write...
        b.performed("ns/a", Some(1), &roll);
        assert!(b.guard("ns/a", Some(1), &write, || "w".into()).is_err());
        // ...while the same write in the next rotation is a new one.
        assert!(b.guard("ns/a", Some(2), &write, || "w".into()).is_ok());
        // Waits and status writes are never held back.
        let wait = Action::Wait {
            requeue_after: None,
        };
        for _ in 0..10 {
            assert!(b.guard("ns/a", Some(1), &wait, || "w".into()).is_ok());
            b.performed("ns/a", Some(1), &wait);
        }
        // A write that failed is not counted: attempts alone never hold it back.
        let other = Backoffs::default();
        for _ in 0..10 {
            assert!(other.guard("ns/a", Some(1), &write, || "w".into()).is_ok());
        }
        assert_eq!(delay_after(FREE_REPEATS + 1), Duration::from_secs(2));
        assert_eq!(delay_after(40), MAX_DELAY);
    }
}
