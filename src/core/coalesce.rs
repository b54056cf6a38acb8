//! Per-device coalescing of low-priority pushes.
//!
//! ejabberd publishes for every stanza while a session is smacks-pending, Prosody for every
//! offline message: a burst of chat states becomes a burst of pushes, which providers throttle
//! (iOS allows a few background pushes an hour) and which drain batteries. A low-priority push
//! only wakes the app to sync, and one wake syncs everything, so at most one goes out per device
//! per interval; the rest are answered `result` (never `resource-constraint`, on which Tigase
//! servers drop the registration). Important pushes are never held back. The state is per
//! process: with several instances a device may get one low-priority push per instance and
//! interval, which is still bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many tracked devices, entries older than the interval are dropped.
const PRUNE_ABOVE: usize = 100_000;

pub struct Coalescer {
    interval: Duration,
    last: Mutex<HashMap<i64, Instant>>,
}

impl Coalescer {
    /// `interval` zero turns coalescing off.
    pub fn new(interval: Duration) -> Self {
        Coalescer {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a low-priority push to `registration` may go out at `now`; if so, it is recorded.
    pub fn admit(&self, registration: i64, now: Instant) -> bool {
        if self.interval.is_zero() {
            return true;
        }
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = last.get(&registration)
            && now.saturating_duration_since(*t) < self.interval
        {
            return false;
        }
        if last.len() >= PRUNE_ABOVE {
            let interval = self.interval;
            last.retain(|_, t| now.saturating_duration_since(*t) < interval);
        }
        last.insert(registration, now);
        true
    }

    /// The push admitted at `at` was not delivered (a transient failure, no slot, no answer in
    /// time): give the interval back, so the next low-priority push goes out. A push admitted
    /// later keeps its own record.
    pub fn undo(&self, registration: i64, at: Instant) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.get(&registration) == Some(&at) {
            last.remove(&registration);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_low_priority_push_per_device_and_interval() {
        let c = Coalescer::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(c.admit(1, t0));
        assert!(!c.admit(1, t0 + Duration::from_secs(3)));
        assert!(
            c.admit(2, t0 + Duration::from_secs(3)),
            "other devices are independent"
        );
        assert!(!c.admit(1, t0 + Duration::from_millis(9_999)));
        assert!(c.admit(1, t0 + Duration::from_secs(10)));
    }

    #[test]
    fn an_undelivered_push_gives_the_interval_back() {
        let c = Coalescer::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(c.admit(1, t0));
        c.undo(1, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert!(
            c.admit(1, t1),
            "the failed push did not use up the interval"
        );
        assert!(!c.admit(1, t1 + Duration::from_secs(1)));
        // An undo for an older admission leaves a later one alone.
        c.undo(1, t0);
        assert!(!c.admit(1, t1 + Duration::from_secs(2)));
        c.undo(1, t1);
        assert!(c.admit(1, t1 + Duration::from_secs(3)));
    }

    #[test]
    fn zero_interval_admits_everything() {
        let c = Coalescer::new(Duration::ZERO);
        let t0 = Instant::now();
        assert!(c.admit(1, t0) && c.admit(1, t0) && c.admit(1, t0));
    }
}
