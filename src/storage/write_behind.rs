//! Delivery bookkeeping written behind the reply: `last_success_at`, `last_error_at` and
//! `last_error` for many registrations in a few statements a second, instead of one database
//! write per publish before its answer.
//!
//! The benchmark (docs/performance.md) showed the success write to be the largest single cost of
//! a publish and half of its latency; and an error write on the reply path made a publish wait
//! for a database that is away (SQLite's lock timeout, PostgreSQL's pool) when only the retry
//! queue's row needs to be written before the answer. These columns are for operators
//! (`devices list`), so they may lag by a flush interval and, if pushgate dies, the last
//! interval's are lost; nothing a server or device relies on is.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::Store;

/// Most ids one UPDATE names; keeps statements far below bind-parameter limits.
const IDS_PER_STATEMENT: usize = 1024;
/// Failures kept between flushes; more (a database away for long under load) are not noted.
const MAX_PENDING_FAILURES: usize = 100_000;

#[derive(Default)]
struct Pending {
    successes: Vec<i64>,
    /// The last failure reason of each registration.
    failures: HashMap<i64, String>,
}

/// Registrations whose provider accepted or refused a push since the last flush.
#[derive(Clone, Default)]
pub struct DeliveryLog {
    pending: Arc<Mutex<Pending>>,
}

impl DeliveryLog {
    pub fn success(&self, id: i64) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .successes
            .push(id);
    }

    pub fn failure(&self, id: i64, reason: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.failures.len() < MAX_PENDING_FAILURES || pending.failures.contains_key(&id) {
            pending.failures.insert(id, reason.to_owned());
        }
    }

    /// Writes what is pending; returns how many registrations were updated.
    pub async fn flush(&self, store: &Store) -> usize {
        let Pending {
            mut successes,
            failures,
        } = std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        successes.sort_unstable();
        successes.dedup();
        let mut written = 0;
        for chunk in successes.chunks(IDS_PER_STATEMENT) {
            match store.record_successes(chunk).await {
                Ok(()) => written += chunk.len(),
                // Informational only: dropping a batch beats an ever-growing backlog.
                Err(e) => tracing::warn!(count = chunk.len(), "cannot record deliveries: {e}"),
            }
        }
        // An outage fails many deliveries for one reason: one statement per reason.
        let mut by_reason: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (id, reason) in failures {
            by_reason.entry(reason).or_default().push(id);
        }
        for (reason, ids) in by_reason {
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                match store.record_errors(chunk, &reason).await {
                    Ok(()) => written += chunk.len(),
                    Err(e) => tracing::warn!(count = chunk.len(), "cannot record failures: {e}"),
                }
            }
        }
        written
    }

    /// Flushes every `interval` until `shutdown`, then once more.
    pub async fn run(self, store: Store, interval: Duration, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.flush(&store).await;
                }
                _ = shutdown.changed() => break,
            }
        }
        self.flush(&store).await;
    }
}
