//! The operator's wall clock. In production it is the system clock; tests move it (an offset
//! that keeps running in real time) to reach a schedule's or window's edge without waiting for it.

use jiff::{SignedDuration, Timestamp};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        Timestamp::now() + SignedDuration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }

    /// From now on, `now()` reads `at` and runs on from there.
    pub fn set(&self, at: Timestamp) {
        let offset = at.duration_since(Timestamp::now()).as_millis() as i64;
        self.offset_ms.store(offset, Ordering::Relaxed);
    }
}
