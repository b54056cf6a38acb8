//! APNs credentials at run time: apply what admins upload on any instance, and watch expiry.
//!
//! An upload (by the XMPP admin command or the CLI) is stored in the database; every instance polls for rows newer than the last it
//! applied, so a certificate replaced on one instance reaches all of them within
//! `SYNC_INTERVAL`, without a restart. Expiring certificates are the most common way APNs
//! delivery silently stops, so a periodic check warns in the log, in a metric and (through a
//! front: the XMPP component sends a chat message) to each admin well before the day.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use pushgate_providers::ProviderId;
use pushgate_providers::apns::CredentialInfo;
use tokio::sync::{mpsc, watch};

use super::Core;
use crate::metrics::METRICS;
use crate::storage::StoreError;

/// How often instances look for credentials uploaded elsewhere.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(10);
/// A warning is repeated at most this often per app.
const WARN_EVERY: Duration = Duration::from_secs(24 * 60 * 60);
const DAY: u64 = 24 * 60 * 60;

/// Applies stored credentials newer than `since` to this instance's APNs apps; returns the
/// newest `updated_at` seen, to pass as `since` next time.
pub async fn apply_stored(
    core: &Core,
    since: Option<DateTime<Utc>>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let mut newest = since;
    for stored in core.store.credentials_changed_since(since).await? {
        newest = newest.max(Some(stored.updated_at));
        let Some((id, apns)) = core
            .providers
            .apns()
            .find(|(id, _)| **id == stored.provider)
        else {
            tracing::debug!(provider = %stored.provider, "stored credentials for an app not configured here");
            continue;
        };
        match apns.set_credentials(stored.credentials) {
            Ok(info) => {
                record(id, &info, core.cert_expiry_warning_days);
                tracing::info!(provider = %id, kind = info.kind, "applied stored APNs credentials");
            }
            Err(e) => tracing::error!(provider = %id, "stored APNs credentials refused: {e}"),
        }
    }
    Ok(newest)
}

/// Updates the expiry metrics of one app.
pub fn record(provider: &ProviderId, info: &CredentialInfo, warning_days: u32) {
    let labels = [provider.as_str()];
    let Some(not_after) = info.not_after else {
        for g in [
            &METRICS.apns_certificate_expiry,
            &METRICS.apns_certificate_expiring,
            &METRICS.apns_certificate_expired,
        ] {
            let _ = g.remove_label_values(&labels);
        }
        return;
    };
    let secs = not_after
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    METRICS
        .apns_certificate_expiry
        .with_label_values(&labels)
        .set(i64::try_from(secs).unwrap_or(i64::MAX));
    let left = not_after.duration_since(SystemTime::now()).ok();
    let expired = left.is_none();
    let expiring = left.is_none_or(|l| l.as_secs() < u64::from(warning_days) * DAY);
    METRICS
        .apns_certificate_expiring
        .with_label_values(&labels)
        .set(i64::from(expiring));
    METRICS
        .apns_certificate_expired
        .with_label_values(&labels)
        .set(i64::from(expired));
}

/// A certificate that expires soon or has expired, in words for an admin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiryWarning {
    pub provider: ProviderId,
    pub text: String,
}

/// Checks every app's certificate against `now`; logs, updates metrics, and returns the
/// warnings for admins (at most one per app per `WARN_EVERY`, tracked in `warned`).
pub fn check_expiry(
    core: &Core,
    now: SystemTime,
    warned: &mut HashMap<ProviderId, SystemTime>,
) -> Vec<ExpiryWarning> {
    let mut warnings = Vec::new();
    for (id, apns) in core.providers.apns() {
        let Some(info) = apns.credential_info() else {
            continue;
        };
        record(id, &info, core.cert_expiry_warning_days);
        let Some(not_after) = info.not_after else {
            continue;
        };
        let until = DateTime::<Utc>::from(not_after).format("%Y-%m-%d %H:%M UTC");
        let text = match not_after.duration_since(now) {
            Err(_) => {
                tracing::error!(provider = %id, %until, "APNs certificate has expired: deliveries fail until it is replaced");
                format!(
                    "The APNs certificate of {id} expired on {until}. Replace it with the set-apns-certificate command."
                )
            }
            Ok(left) if left.as_secs() < u64::from(core.cert_expiry_warning_days) * DAY => {
                let days = left.as_secs().div_ceil(DAY);
                tracing::warn!(provider = %id, %until, days, "APNs certificate expires soon");
                format!(
                    "The APNs certificate of {id} expires on {until} (in {days} days). Replace it with the set-apns-certificate command."
                )
            }
            Ok(_) => continue,
        };
        let recently = warned
            .get(id)
            .is_some_and(|t| now.duration_since(*t).is_ok_and(|d| d < WARN_EVERY));
        if recently {
            continue;
        }
        warned.insert(id.clone(), now);
        warnings.push(ExpiryWarning {
            provider: id.clone(),
            text,
        });
    }
    warnings
}

/// Applies the stored credentials, then starts credential sync and the expiry watch (both stop
/// with `shutdown`); expiry warnings go to `warnings`, for a front to pass on to the admins.
/// Awaited before any front starts, so no publish arrives while an app still lacks the
/// credentials the database holds for it.
pub async fn start(
    core: Arc<Core>,
    warnings: mpsc::Sender<ExpiryWarning>,
    shutdown: watch::Receiver<bool>,
) {
    if core.providers.apns().next().is_none() {
        return;
    }
    let mut since = match apply_stored(&core, None).await {
        Ok(newest) => newest,
        Err(e) => {
            tracing::warn!("cannot read stored credentials: {e}");
            None
        }
    };
    let (c, mut stop) = (core.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SYNC_INTERVAL) => {}
                _ = stop.changed() => return,
            }
            match apply_stored(&c, since).await {
                Ok(newest) => since = newest,
                Err(e) => tracing::warn!("cannot read stored credentials: {e}"),
            }
        }
    });
    let mut stop = shutdown;
    tokio::spawn(async move {
        let mut warned = HashMap::new();
        loop {
            for w in check_expiry(&core, SystemTime::now(), &mut warned) {
                if warnings.send(w).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(core.cert_check_interval) => {}
                _ = stop.changed() => return,
            }
        }
    });
}
