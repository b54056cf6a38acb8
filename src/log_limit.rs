//! Log lines for events that can come by the thousand (failed deliveries in a provider outage,
//! refused publishes from a misconfigured server), at most one per kind per window: the lines
//! held back are counted in the next one. Counters and histograms carry the volume; a log line
//! says that something is happening, and what it looks like.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// At most one line per kind in this long.
const WINDOW: Duration = Duration::from_secs(10);

/// Per kind: when its last line was written, and how many were held back since.
pub struct LogLimit {
    window: Duration,
    kinds: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

/// The process's limiter; kinds are the outcome and verdict labels (a fixed set).
pub static LOG_LIMIT: LazyLock<LogLimit> = LazyLock::new(|| LogLimit::new(WINDOW));

impl LogLimit {
    pub fn new(window: Duration) -> Self {
        LogLimit {
            window,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(held back)` when a line of `kind` may be written now, with how many were not
    /// since the last one; `None` when it is to be held back.
    pub fn allow(&self, kind: &'static str) -> Option<u64> {
        self.allow_at(kind, Instant::now())
    }

    fn allow_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        match kinds.get_mut(kind) {
            Some((last, held)) if now.duration_since(*last) < self.window => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_kind_and_window_with_the_count_held_back() {
        let limit = LogLimit::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(limit.allow_at("transient", t), Some(0));
        for i in 1..=5 {
            assert_eq!(
                limit.allow_at("transient", t + Duration::from_secs(i)),
                None
            );
        }
        assert_eq!(limit.allow_at("our_fault", t), Some(0), "kinds are apart");
        assert_eq!(
            limit.allow_at("transient", t + Duration::from_secs(10)),
            Some(5)
        );
        assert_eq!(
            limit.allow_at("transient", t + Duration::from_secs(11)),
            None
        );
    }
}
