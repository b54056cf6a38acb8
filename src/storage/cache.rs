//! A small, bounded, short-lived cache of registrations by node, in front of the per-publish
//! lookup.
//!
//! The benchmark (docs/performance.md) showed the lookup (sea-orm, sqlx's SQLite worker thread)
//! to be the largest cost of a publish once the write behind it was batched. Devices that get
//! pushes tend to get many in a row (a chat burst), so even a small cache answers most lookups.
//!
//! What a cache means with several instances on one database: this process drops an entry
//! whenever it changes or deletes that registration, but a change made by another instance (or
//! by `pushgate devices remove`) is seen here only when the entry expires (`ttl`). A device
//! unregistered elsewhere may therefore get pushes for up to `ttl`; a token replaced elsewhere is
//! never deleted by mistake, because removing a dead token is conditional on the token
//! ([`super::Store::delete_if_token`]).
//!
//! Two generations instead of an LRU list: inserts go to `young`; when it is full it becomes
//! `old` and the previous `old` is dropped. A hit in `old` moves the entry back to `young`. So at
//! most `2 × capacity / 2` entries are held, and recently used ones survive a turnover.
//!
//! "Full" is by entries and by bytes (an estimate of each registration's footprint), whichever
//! comes first: registrations differ tenfold in size (an APNs token against a WebPush endpoint
//! with its keys), and with a million devices in rotation the cache is full all the time, so
//! only a byte bound keeps its memory predictable (docs/performance.md, "Performance, round two").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::Registration;

/// SHA-256 of the node: the key, so the map never compares nodes (credentials) byte by byte.
pub type NodeHash = [u8; 32];

struct Entry {
    registration: Arc<Registration>,
    expires: Instant,
    bytes: usize,
}

#[derive(Default)]
struct Generations {
    young: HashMap<NodeHash, Entry>,
    /// The footprint of `young`'s entries.
    young_bytes: usize,
    old: HashMap<NodeHash, Entry>,
}

pub struct RegistrationCache {
    ttl: Duration,
    /// Entries per generation.
    per_generation: usize,
    /// Bytes per generation.
    bytes_per_generation: usize,
    maps: Mutex<Generations>,
}

/// Roughly what one entry holds: the registration and its strings, the `Arc`, the map slot.
fn footprint(r: &Registration) -> usize {
    const FIXED: usize = size_of::<Registration>()
        + size_of::<NodeHash>()
        + size_of::<Entry>()
        + 2 * size_of::<usize>();
    let opt = |s: Option<&str>| s.map_or(0, str::len);
    FIXED
        + r.provider.as_str().len()
        + r.account.as_str().len()
        + r.domain.len()
        + r.device_key.len()
        + opt(r.device_id.as_deref())
        + opt(r.muc.as_ref().map(|m| m.as_str()))
        + r.token.as_str().len()
        + opt(r.second_token.as_ref().map(|t| t.as_str()))
        + r.webpush_keys
            .as_ref()
            .map_or(0, |k| k.p256dh.len() + k.auth.len())
        + r.node.as_str().len()
        + opt(r.secret.as_ref().map(|s| s.as_str()))
        + opt(r.last_error.as_deref())
}

impl RegistrationCache {
    /// `None` when caching is off (`capacity`, `max_bytes` or `ttl` zero).
    pub fn new(capacity: usize, max_bytes: usize, ttl: Duration) -> Option<Self> {
        (capacity > 0 && max_bytes > 0 && !ttl.is_zero()).then(|| RegistrationCache {
            ttl,
            per_generation: capacity.div_ceil(2),
            bytes_per_generation: max_bytes.div_ceil(2),
            maps: Mutex::default(),
        })
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Generations> {
        self.maps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn get(&self, key: &NodeHash, now: Instant) -> Option<Arc<Registration>> {
        let mut maps = self.maps();
        if let Some(e) = maps.young.get(key) {
            if e.expires > now {
                return Some(e.registration.clone());
            }
            Self::remove_young(&mut maps, key);
            return None;
        }
        let e = maps.old.remove(key)?;
        if e.expires <= now {
            return None;
        }
        let registration = e.registration.clone();
        self.insert_young(&mut maps, *key, e);
        Some(registration)
    }

    pub fn put(&self, key: NodeHash, registration: Arc<Registration>, now: Instant) {
        // A ttl too long for the clock (storage.cache_ttl_secs is bounded, but this cache does
        // not rely on it) caches nothing rather than panicking on every publish.
        let Some(expires) = now.checked_add(self.ttl) else {
            return;
        };
        let entry = Entry {
            bytes: footprint(&registration),
            registration,
            expires,
        };
        let mut maps = self.maps();
        maps.old.remove(&key);
        self.insert_young(&mut maps, key, entry);
    }

    fn insert_young(&self, maps: &mut Generations, key: NodeHash, entry: Entry) {
        Self::remove_young(maps, &key);
        if maps.young.len() >= self.per_generation
            || maps.young_bytes + entry.bytes > self.bytes_per_generation
        {
            maps.old = std::mem::take(&mut maps.young);
            maps.young_bytes = 0;
        }
        maps.young_bytes += entry.bytes;
        maps.young.insert(key, entry);
    }

    fn remove_young(maps: &mut Generations, key: &NodeHash) {
        if let Some(e) = maps.young.remove(key) {
            maps.young_bytes -= e.bytes;
        }
    }

    pub fn remove(&self, key: &NodeHash) {
        let mut maps = self.maps();
        Self::remove_young(&mut maps, key);
        maps.old.remove(key);
    }

    /// For changes that do not say which nodes they touched (unregister by device, bulk
    /// removal): rare next to publishes, so forgetting everything is cheap enough.
    pub fn clear(&self) {
        let mut maps = self.maps();
        maps.young.clear();
        maps.young_bytes = 0;
        maps.old.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let maps = self.maps();
        maps.young.len() + maps.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> NodeHash {
        [n; 32]
    }

    fn cache(capacity: usize) -> RegistrationCache {
        RegistrationCache::new(capacity, 1 << 20, Duration::from_secs(30)).unwrap()
    }

    #[test]
    fn off_when_capacity_bytes_or_ttl_is_zero() {
        assert!(RegistrationCache::new(0, 1 << 20, Duration::from_secs(30)).is_none());
        assert!(RegistrationCache::new(10, 0, Duration::from_secs(30)).is_none());
        assert!(RegistrationCache::new(10, 1 << 20, Duration::ZERO).is_none());
    }

    #[test]
    fn holds_at_most_its_bytes() {
        let reg = Arc::new(crate::storage::registration::tests::registration());
        let size = footprint(&reg);
        assert!(size > size_of::<Registration>(), "{size}");
        // Room for three entries per generation, by bytes; entries would allow 1,000.
        let c =
            RegistrationCache::new(2_000, 6 * size + size / 2, Duration::from_secs(30)).unwrap();
        let now = Instant::now();
        for n in 0..20 {
            c.put(key(n), reg.clone(), now);
            assert!(c.len() <= 6, "{}", c.len());
        }
        assert!(c.get(&key(19), now).is_some());
        assert!(c.get(&key(0), now).is_none());
        // Putting the same key again does not count it twice.
        for _ in 0..10 {
            c.put(key(19), reg.clone(), now);
        }
        assert!(c.get(&key(18), now).is_some());
    }

    #[test]
    fn a_ttl_beyond_the_clock_neither_panics_nor_caches() {
        let c = RegistrationCache::new(4, 1 << 20, Duration::from_secs(9_223_372_036_854_775_807))
            .unwrap();
        let now = Instant::now();
        c.put(
            key(1),
            Arc::new(crate::storage::registration::tests::registration()),
            now,
        );
        assert!(c.get(&key(1), now).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn holds_at_most_its_capacity_and_keeps_what_is_used() {
        let c = cache(4);
        let now = Instant::now();
        let reg = Arc::new(crate::storage::registration::tests::registration());
        for n in 0..4 {
            c.put(key(n), reg.clone(), now);
        }
        // 0 was used recently: it survives the turnover that drops 1.
        assert!(c.get(&key(0), now).is_some());
        for n in 4..6 {
            c.put(key(n), reg.clone(), now);
        }
        assert!(c.len() <= 4);
        assert!(c.get(&key(0), now).is_some());
        assert!(c.get(&key(1), now).is_none());
        assert!(c.get(&key(5), now).is_some());
    }

    #[test]
    fn entries_expire_and_can_be_removed() {
        let c = cache(8);
        let now = Instant::now();
        let reg = Arc::new(crate::storage::registration::tests::registration());
        c.put(key(1), reg.clone(), now);
        c.put(key(2), reg.clone(), now);
        assert!(c.get(&key(1), now + Duration::from_secs(29)).is_some());
        assert!(c.get(&key(1), now + Duration::from_secs(31)).is_none());
        c.remove(&key(2));
        assert!(c.get(&key(2), now).is_none());
        c.put(key(3), reg, now);
        c.clear();
        assert_eq!(c.len(), 0);
    }
}
