//! The registrations gauge, kept current from the store: the one metric that is a count of
//! stored rows rather than of events in this process.

use std::time::Duration;

use tokio::sync::watch;

use crate::metrics::METRICS;
use crate::storage::{Store, StoreError};

/// Refreshes the registrations-by-provider gauge from the store.
pub async fn refresh_registrations(store: &Store) -> Result<(), StoreError> {
    let counts = store.count_by_provider().await?;
    METRICS.registrations.reset();
    for (provider, n) in counts {
        METRICS
            .registrations
            .with_label_values(&[&provider])
            .set(n as i64);
    }
    Ok(())
}

/// How often the registrations gauge is refreshed from the store.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Keeps the registrations gauge current until `shutdown` flips.
pub fn spawn_refresh(store: Store, mut shutdown: watch::Receiver<bool>) {
    tokio::spawn(async move {
        loop {
            if let Err(e) = refresh_registrations(&store).await {
                tracing::warn!("cannot count registrations: {e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    });
}
