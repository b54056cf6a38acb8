//! Token buckets per key: the public HTTP routes per client IP, registrations per account domain.
//!
//! Each key may take `per_minute` tokens in a burst, and regains one every `60 / per_minute`
//! seconds. IPv6 clients are counted per /64 ([`bucket_key`]: what one subscriber usually gets),
//! so hopping through addresses of one prefix does not multiply the allowance. Buckets that have
//! refilled completely carry no information and are dropped when the table grows, which keeps
//! memory bounded by the number of keys active in the last minute.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;

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

/// A client's bucket: IPv4 (and IPv4-mapped IPv6) addresses as they are; other IPv6 addresses
/// by their /64.
pub fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The client's IP: the TCP peer, or with `trust_forwarded_for` the last `X-Forwarded-For` hop
/// (what the proxy in front of us appended). An unparsable header falls back to the peer.
pub fn client_ip(
    headers: &HeaderMap,
    peer: Option<&ConnectInfo<SocketAddr>>,
    trust_forwarded_for: bool,
) -> IpAddr {
    let peer_ip = peer
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    if !trust_forwarded_for {
        return peer_ip;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|hop| parse_hop(hop.trim()))
        .unwrap_or(peer_ip)
}

/// A hop is an IP, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

/// Whole seconds to wait, at least 1 (what `Retry-After` carries).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the HTTP middleware does with a client's address.
    fn check_ip(l: &RateLimiter, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        l.check_at(bucket_key(ip), now)
    }

    #[test]
    fn bucket_empties_then_refills() {
        let l: RateLimiter = RateLimiter::new(60);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(check_ip(&l, ip, t0).is_ok());
        }
        let wait = check_ip(&l, ip, t0).unwrap_err();
        assert_eq!(retry_after_secs(wait), 1);
        assert!(check_ip(&l, "192.0.2.2".parse().unwrap(), t0).is_ok());
        assert!(check_ip(&l, ip, t0 + Duration::from_millis(1100)).is_ok());
        assert!(check_ip(&l, ip, t0 + Duration::from_millis(1100)).is_err());
    }

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
    fn ipv6_counts_per_64() {
        let l: RateLimiter = RateLimiter::new(1);
        let t0 = Instant::now();
        assert!(check_ip(&l, "2001:db8::1".parse().unwrap(), t0).is_ok());
        assert!(check_ip(&l, "2001:db8::2".parse().unwrap(), t0).is_err());
        assert!(check_ip(&l, "2001:db8:0:1::1".parse().unwrap(), t0).is_ok());
    }

    #[test]
    fn full_buckets_are_pruned() {
        let l: RateLimiter = RateLimiter::new(60);
        let t0 = Instant::now();
        for i in 0..PRUNE_AT as u32 {
            let _ = check_ip(&l, IpAddr::V4(i.into()), t0);
        }
        let later = t0 + Duration::from_secs(120);
        assert!(check_ip(&l, "192.0.2.9".parse().unwrap(), later).is_ok());
        assert_eq!(l.state.lock().unwrap().buckets.len(), 1);
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "203.0.113.7, 198.51.100.2".parse().unwrap(),
        );
        let peer = ConnectInfo("127.0.0.1:4000".parse::<SocketAddr>().unwrap());
        assert_eq!(
            client_ip(&h, Some(&peer), true),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&h, Some(&peer), false),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        h.append("x-forwarded-for", "[2001:db8::5]:443".parse().unwrap());
        assert_eq!(
            client_ip(&h, Some(&peer), true),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
        let mut bad = HeaderMap::new();
        bad.append("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(
            client_ip(&bad, Some(&peer), true),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
