//! What every HTTP-based provider does the same way: turning a failed request into a verdict,
//! showing the cause behind an error, and logging the verdict of a delivery.
//!
//! Kept in one place so the providers agree on what is transient (a timeout, a lost connection)
//! and what is pushgate's own fault (a request it could not even build).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Verdict;

static FD_EXHAUSTED: AtomicU64 = AtomicU64::new(0);

/// Provider requests that failed because the process had no file descriptor left
/// (EMFILE/ENFILE) since start. This crate knows nothing of Prometheus; the front exposes it.
pub fn fd_exhausted_total() -> u64 {
    FD_EXHAUSTED.load(Ordering::Relaxed)
}

/// Whether an I/O error somewhere in `err`'s chain is EMFILE or ENFILE.
fn out_of_descriptors(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A failure of the connection rather than of this request: another connection may work.
pub(crate) fn is_connection_error(err: &reqwest::Error) -> bool {
    !err.is_timeout() && !err.is_builder() && (err.is_connect() || err.is_request())
}

/// Maps a request that got no HTTP answer onto a verdict. reqwest errors carry the URL, which
/// can hold a token or a capability URL, so it is stripped. `service` names the peer in the
/// reason ("APNs", "FCM", "the push service").
pub(crate) fn classify_request_error(
    err: reqwest::Error,
    timeout: Duration,
    service: &str,
) -> Verdict {
    let err = err.without_url();
    if out_of_descriptors(&err) {
        FD_EXHAUSTED.fetch_add(1, Ordering::Relaxed);
    }
    if err.is_timeout() {
        return Verdict::Transient {
            retry_after: None,
            reason: format!("no answer from {service} within {} s", timeout.as_secs()),
        };
    }
    if err.is_builder() {
        return Verdict::OurFault {
            reason: format!(
                "cannot build the request to {service}: {}",
                error_chain(&err)
            ),
        };
    }
    let what = if err.is_connect() {
        "cannot connect to"
    } else {
        "request failed to"
    };
    Verdict::Transient {
        retry_after: None,
        reason: format!("{what} {service}: {}", error_chain(&err)),
    }
}

/// `err: cause: cause…`, so the underlying TLS or I/O error is visible.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

/// One log line per delivery, inside the provider's delivery span: our own faults are warnings,
/// everything else is the ordinary course of pushing.
pub(crate) fn log_verdict(what: &str, verdict: &Verdict) {
    match verdict {
        Verdict::Sent => tracing::info!(verdict = verdict.label(), "{what}"),
        Verdict::DeadToken { reason } | Verdict::Transient { reason, .. } => {
            tracing::info!(verdict = verdict.label(), reason, "{what}")
        }
        Verdict::OurFault { reason } => {
            tracing::warn!(verdict = verdict.label(), reason, "{what}")
        }
    }
}

/// Exponential backoff with jitter, per key: after the n-th failure in a row a key is held back
/// for `base · 2^(n−1)` (at most `max`) varied by ±20 %, or for as long as the service asked
/// (`Retry-After`) if that is longer. A success clears the key. Holding back answers the caller
/// at once instead of adding load to a service that said it is overloaded.
pub(crate) struct Backoff<K> {
    base: Duration,
    max: Duration,
    state: std::sync::Mutex<std::collections::HashMap<K, (std::time::Instant, u32)>>,
}

/// Above this many keys, keys whose hold has ended are forgotten.
const BACKOFF_PRUNE_ABOVE: usize = 10_000;

impl<K: std::hash::Hash + Eq + Clone> Backoff<K> {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            state: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<K, (std::time::Instant, u32)>> {
        // A poisoned lock only means a panic elsewhere mid-update; the map is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How much longer `key` is held back, if it is.
    pub(crate) fn blocked(&self, key: &K, now: std::time::Instant) -> Option<Duration> {
        let until = self.lock().get(key).map(|(until, _)| *until)?;
        let left = until.saturating_duration_since(now);
        (!left.is_zero()).then_some(left)
    }

    /// Records a failure; returns how long `key` is now held back.
    pub(crate) fn failed(
        &self,
        key: K,
        asked: Option<Duration>,
        now: std::time::Instant,
    ) -> Duration {
        let mut state = self.lock();
        if state.len() >= BACKOFF_PRUNE_ABOVE {
            state.retain(|_, (until, _)| *until > now);
        }
        let failures = state.get(&key).map_or(0, |(_, n)| *n).saturating_add(1);
        let exponential = self
            .base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(self.max);
        let hold = jitter(exponential).max(asked.unwrap_or_default());
        state.insert(key, (now + hold, failures));
        hold
    }

    pub(crate) fn succeeded(&self, key: &K) {
        self.lock().remove(key);
    }
}

/// `d` varied by up to ±20 %, so that many held-back senders do not return in step.
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh RandomState is randomly keyed: enough randomness for spreading retries.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.8 + (r % 401) as f64 / 1000.0;
    d.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// How hyper and reqwest wrap the socket error: an outer error whose source is the io::Error.
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Wrapped(#[source] std::io::Error);

    #[test]
    fn out_of_descriptors_is_found_anywhere_in_the_chain() {
        let emfile = Wrapped(std::io::Error::from_raw_os_error(libc::EMFILE));
        assert!(out_of_descriptors(&emfile));
        assert!(out_of_descriptors(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        let refused = Wrapped(std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert!(!out_of_descriptors(&refused));
    }

    #[test]
    fn backoff_doubles_with_jitter_honours_retry_after_and_resets() {
        let b = Backoff::new(Duration::from_secs(60), Duration::from_secs(3600));
        let t0 = Instant::now();
        assert_eq!(b.blocked(&"tok", t0), None);
        let first = b.failed("tok", None, t0);
        assert!((48..=72).contains(&first.as_secs()), "{first:?}");
        assert!(b.blocked(&"tok", t0).is_some());
        assert_eq!(b.blocked(&"other", t0), None, "keys are independent");
        let second = b.failed("tok", None, t0);
        assert!((96..=144).contains(&second.as_secs()), "{second:?}");
        let asked = b.failed("tok", Some(Duration::from_secs(7200)), t0);
        assert_eq!(
            asked,
            Duration::from_secs(7200),
            "Retry-After beyond the backoff wins"
        );
        assert_eq!(b.blocked(&"tok", t0 + Duration::from_secs(7201)), None);
        b.succeeded(&"tok");
        let again = b.failed("tok", None, t0);
        assert!(
            (48..=72).contains(&again.as_secs()),
            "a success starts over: {again:?}"
        );
    }

    #[test]
    fn backoff_is_capped() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let t0 = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..30 {
            last = b.failed((), None, t0);
        }
        assert!(last <= Duration::from_secs(72), "{last:?}");
    }
}
