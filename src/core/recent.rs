//! A bounded memory of what happened recently: keys remembered for a while, the oldest
//! forgotten first when it is full.
//!
//! The Matrix front remembers pushkeys found dead (named devices have no row to delete, and the
//! homeserver is told the next time it uses one) and the events it has pushed to a pushkey (a
//! homeserver that did not see our answer sends the same event again). Keys are SHA-256
//! digests of what the caller remembers, so tokens are not kept in the clear and every key is
//! the same size.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

type Key = [u8; 32];

pub struct Recent {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// When each key was last remembered, and that remembering's number.
    at: HashMap<Key, (Instant, u64)>,
    /// Rememberings in order, for forgetting the oldest; a key remembered again since has a
    /// newer number in `at`.
    order: VecDeque<(Key, u64)>,
    count: u64,
}

/// The key of `parts`, each length-prefixed so that no two lists share a key.
fn key(parts: &[&str]) -> Key {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

impl Recent {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Recent {
            capacity,
            ttl,
            inner: Mutex::default(),
        }
    }

    pub fn remember(&self, parts: &[&str]) {
        self.remember_at(parts, Instant::now());
    }

    pub fn contains(&self, parts: &[&str]) -> bool {
        self.contains_at(parts, Instant::now())
    }

    fn remember_at(&self, parts: &[&str], now: Instant) {
        let k = key(parts);
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.count += 1;
        let n = inner.count;
        inner.at.insert(k, (now, n));
        inner.order.push_back((k, n));
        while inner.at.len() > self.capacity || inner.order.len() > 2 * self.capacity.max(1) {
            let Some((old, n)) = inner.order.pop_front() else {
                break;
            };
            // Only forget it if it was not remembered again since.
            if inner.at.get(&old).is_some_and(|(_, last)| *last == n) {
                inner.at.remove(&old);
            }
        }
    }

    fn contains_at(&self, parts: &[&str], now: Instant) -> bool {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .at
            .get(&key(parts))
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_for_a_while_and_forgets_the_oldest_when_full() {
        let r = Recent::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        r.remember_at(&["a", "1"], t0);
        assert!(r.contains_at(&["a", "1"], t0));
        assert!(!r.contains_at(&["a1"], t0), "parts are kept apart");
        assert!(!r.contains_at(&["a", "1"], t0 + Duration::from_secs(61)));
        r.remember_at(&["b"], t0);
        r.remember_at(&["a", "1"], t0);
        r.remember_at(&["c"], t0);
        assert!(!r.contains_at(&["b"], t0), "the oldest went");
        assert!(r.contains_at(&["a", "1"], t0), "refreshed, so kept");
        assert!(r.contains_at(&["c"], t0));
    }
}
