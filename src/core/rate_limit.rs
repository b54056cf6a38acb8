//! Token buckets per key: registrations per account domain (the registration policy), and the
//! public HTTP routes per client IP (`fronts/http/limit.rs`).
//!
//! Each key may take `per_minute` tokens in a burst, and regains one every `60 / per_minute`
//! seconds. Buckets that have refilled completely carry no information and are dropped when the
//! table grows, which keeps memory bounded by the number of keys active in the last minute.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Prune full buckets once the table has this many entries (and again each time it doubles).
const PRUNE_AT: usize = 4096;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter<K = IpAddr> {
    capacity: f64,
    /// Tokens regained per second.
    rate: f64,
    state: Mutex<State<K>>,
}

struct State<K> {
    buckets: HashMap<K, Bucket>,
    prune_at: usize,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        RateLimiter {
            capacity,
            rate: capacity / 60.0,
            state: Mutex::new(State {
                buckets: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        }
    }

    /// Takes one token for `key`; `Err(retry_after)` when it has none left.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// Gives back a token taken for something that did not happen after all.
    pub fn refund(&self, key: &K) {
        if let Some(bucket) = self.state().buckets.get_mut(key) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.capacity);
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<K>> {
        // A panic while holding the lock cannot leave a bucket half-updated: recover it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn check_at(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut state = self.state();
        if state.buckets.len() >= state.prune_at {
            let (capacity, rate) = (self.capacity, self.rate);
            state.buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < capacity
            });
            state.prune_at = (state.buckets.len() * 2).max(PRUNE_AT);
        }
        let bucket = state.buckets.entry(key).or_insert(Bucket {
            tokens: self.capacity,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            // Positive and finite for any rate validate() allows; a minute (a whole refill) if not.
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::from_secs(60)))
        }
    }
}

/// Whole seconds to wait, at least 1 (what `Retry-After` carries).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refunds_give_back_one_token_up_to_the_burst() {
        let l: RateLimiter<String> = RateLimiter::new(2);
        let t0 = Instant::now();
        let d = || "example.org".to_owned();
        assert!(l.check_at(d(), t0).is_ok());
        assert!(l.check_at(d(), t0).is_ok());
        assert!(l.check_at(d(), t0).is_err());
        l.refund(&d());
        assert!(l.check_at(d(), t0).is_ok());
        assert!(l.check_at(d(), t0).is_err());
        // Never above the burst, and an unknown key is no error.
        for _ in 0..5 {
            l.refund(&d());
        }
        l.refund(&"other.example".to_owned());
        assert!(l.check_at(d(), t0).is_ok());
        assert!(l.check_at(d(), t0).is_ok());
        assert!(l.check_at(d(), t0).is_err());
    }

    #[test]
    fn full_buckets_are_pruned() {
        let l: RateLimiter<u32> = RateLimiter::new(60);
        let t0 = Instant::now();
        for i in 0..PRUNE_AT as u32 {
            let _ = l.check_at(i, t0);
        }
        let later = t0 + Duration::from_secs(120);
        assert!(l.check_at(u32::MAX, later).is_ok());
        assert_eq!(l.state.lock().unwrap().buckets.len(), 1);
    }
}
