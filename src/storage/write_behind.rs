//! Delivery bookkeeping written behind the reply: `last_success_at` for many registrations in
//! one statement a second, instead of one database write per publish before its answer.
//!
//! The benchmark (docs/performance.md) showed that write to be the largest single cost of a
//! publish and half of its latency. The timestamp is only for operators (`devices list`), so it
//! may lag by a flush interval and, if pushgate dies, the last interval's timestamps are lost;
//! nothing a server or device relies on is.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use super::Store;

/// Most ids one UPDATE names; keeps statements far below bind-parameter limits.
const IDS_PER_STATEMENT: usize = 1000;

/// Registrations whose provider accepted a push since the last flush.
#[derive(Clone, Default)]
pub struct SuccessLog {
    pending: Arc<Mutex<Vec<i64>>>,
}

impl SuccessLog {
    pub fn record(&self, id: i64) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id);
    }

    /// Writes what is pending; returns how many registrations were updated.
    pub async fn flush(&self, store: &Store) -> usize {
        let mut ids =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if ids.is_empty() {
            return 0;
        }
        ids.sort_unstable();
        ids.dedup();
        let mut written = 0;
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            match store.record_successes(chunk).await {
                Ok(()) => written += chunk.len(),
                // Informational only: dropping a batch beats an ever-growing backlog.
                Err(e) => tracing::warn!(count = chunk.len(), "cannot record deliveries: {e}"),
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
