//! The delivery core: everything a front needs that is not its protocol.
//!
//! A front (the XMPP component in `fronts/xmpp`, the HTTP routes in `fronts/http`) parses its
//! protocol into calls on this module and formats what comes back. The core owns the
//! registrations ([`registry`]: register, unregister, look up, within the [`policy`] limits),
//! delivery through the providers ([`delivery`]: slots, coalescing, the verdict and what it does
//! to the registration; [`retry`]: the durable queue of deliveries that failed for now) and the upkeep of provider credentials ([`apns_credential_sync`]). It
//! knows no JID parsing, stanza or HTTP type; the only protocol facts it keeps are the ones
//! stored with a registration (its [`crate::ids::Dialect`] decides the device identity and what
//! the app is promised in a notification).
//!
//! Everything that must survive a restart or be shared by several instances is in the store;
//! `Core` holds configuration, connections and per-process bounds, so any instance can serve any
//! request.

pub mod apns_credential_sync;
pub mod backoff;
pub mod coalesce;
pub mod delivery;
pub mod limits;
pub mod policy;
pub mod providers;
pub mod rate_limit;
pub mod recent;
pub mod registry;
pub mod removals;
pub mod retry;
pub mod slots;
pub mod stats;
pub mod target;
pub mod unifiedpush;

use std::time::Duration;

pub use providers::Providers;

use crate::config::{Config, ConfigError};
use crate::storage::{DeliveryLog, Store};

/// Milliseconds since the Unix epoch: the clock of stored times (retry queue, UnifiedPush
/// endpoints, SIP devices), shared by every instance on the database.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// How many dead tokens of named devices are remembered, and for how long.
const DEAD_TOKENS_KEPT: usize = 100_000;
const DEAD_TOKENS_FOR: Duration = Duration::from_secs(24 * 3600);

pub struct Core {
    /// Who may register, and how many new devices (`[registration]` limits).
    pub registration: policy::RegistrationPolicy,
    /// Holds back low-priority pushes to a device that just got one.
    pub coalescer: coalesce::Coalescer,
    /// Delivery slots per provider and per endpoint host.
    pub slots: slots::Slots,
    pub store: Store,
    /// Delivery outcomes for operators, written to the store in batches by
    /// `storage::DeliveryLog::run`.
    pub delivery_log: DeliveryLog,
    pub providers: Providers,
    /// Failed deliveries kept for later attempts (`[retry]`).
    pub retry: retry::RetryQueue,
    /// Named devices (not registrations) whose provider called their token dead, by provider
    /// and token: the front reports them the next time they are named.
    pub dead_tokens: recent::Recent,
    /// Days before an APNs certificate expires that it counts as expiring.
    pub cert_expiry_warning_days: u32,
    pub cert_check_interval: Duration,
    /// UnifiedPush endpoints, when `[unifiedpush] enabled` (set once their key is loaded:
    /// [`Core::load_unifiedpush`]).
    pub unifiedpush: std::sync::OnceLock<unifiedpush::UnifiedPush>,
    /// Registrations removed, for the fronts that tell the account's server.
    pub removals: removals::Removals,
}

impl Core {
    pub fn new(config: &Config, store: Store) -> Result<Self, ConfigError> {
        Ok(Core {
            registration: policy::RegistrationPolicy::from_config(&config.registration),
            coalescer: coalesce::Coalescer::new(Duration::from_secs(
                config.registration.low_priority_interval_secs,
            )),
            slots: slots::Slots::new(
                slots::Bound {
                    concurrency: config.limits.provider_concurrency,
                    queue: config.limits.provider_queue,
                },
                slots::Bound {
                    concurrency: config.limits.host_concurrency,
                    queue: config.limits.host_queue,
                },
            ),
            store,
            delivery_log: DeliveryLog::default(),
            providers: Providers::from_config(config)?,
            retry: retry::RetryQueue::from_config(&config.retry),
            dead_tokens: recent::Recent::new(DEAD_TOKENS_KEPT, DEAD_TOKENS_FOR),
            cert_expiry_warning_days: config.admin.cert_expiry_warning_days,
            cert_check_interval: Duration::from_secs(config.admin.cert_check_interval_secs),
            unifiedpush: std::sync::OnceLock::new(),
            removals: removals::Removals::default(),
        })
    }

    /// Sets up UnifiedPush endpoints if configured: their key is made or read from the store.
    pub async fn load_unifiedpush(
        &self,
        config: &crate::config::UnifiedPushConfig,
    ) -> Result<(), crate::storage::StoreError> {
        if let Some(up) = unifiedpush::UnifiedPush::load(config, &self.store).await? {
            let _ = self.unifiedpush.set(up);
        }
        Ok(())
    }
}
