//! The gauges that count stored rows rather than events in this process, kept current from
//! the store: registrations by provider, UnifiedPush endpoints by dialect and pushes kept, SIP devices.

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
    let (endpoints, kept) = store.count_up().await?;
    METRICS.unifiedpush_endpoints.reset();
    for (dialect, n) in endpoints {
        METRICS
            .unifiedpush_endpoints
            .with_label_values(&[&dialect])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    METRICS
        .unifiedpush_kept
        .set(i64::try_from(kept).unwrap_or(i64::MAX));
    METRICS.sip_devices.set(store.count_sip().await?);
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
