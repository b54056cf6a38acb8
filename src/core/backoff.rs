//! Waiting between attempts: random spread so that many waiters do not come back in step (the
//! component's reconnects, the retry queue's attempts), and the retry queue's doubling schedule.

use std::time::Duration;

/// A uniformly random duration in `[low, high]` (millisecond steps).
pub fn jitter(low: Duration, high: Duration) -> Duration {
    let span = u64::try_from(high.saturating_sub(low).as_millis()).unwrap_or(u64::MAX);
    // Without randomness from the OS the upper bound is as good as any.
    let r = getrandom::u64().map_or(span, |r| r % span.saturating_add(1));
    low + Duration::from_millis(r)
}

/// The wait after the `failed`-th failed attempt of a queued notification: 1 s, 2 s, 4 s, …
/// up to `max`, each drawn from its upper half so that retries of one outage spread out, and
/// never sooner than the provider asked (`retry_after`).
pub fn retry_delay(failed: u32, max: Duration, retry_after: Option<Duration>) -> Duration {
    let full = Duration::from_secs(1)
        .saturating_mul(1u32 << failed.saturating_sub(1).min(20))
        .min(max);
    jitter(full / 2, full).max(retry_after.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_the_cap_and_honour_retry_after() {
        let max = Duration::from_secs(60);
        for (failed, full) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (40, 60)] {
            let d = retry_delay(failed, max, None);
            let full = Duration::from_secs(full);
            assert!(full / 2 <= d && d <= full, "after {failed}: {d:?}");
        }
        let asked = Duration::from_secs(120);
        assert_eq!(retry_delay(1, max, Some(asked)), asked);
        assert!(retry_delay(0, max, None) <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_bounds_and_spreads() {
        let (lo, hi) = (Duration::from_millis(500), Duration::from_secs(1));
        let seen: std::collections::BTreeSet<_> = (0..50).map(|_| jitter(lo, hi)).collect();
        assert!(seen.iter().all(|d| lo <= *d && *d <= hi));
        assert!(seen.len() > 5, "{seen:?}");
        assert_eq!(jitter(hi, lo), hi);
    }
}
