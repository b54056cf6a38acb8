//! The state every handler shares: who we are, where registrations live, which providers exist.
//!
//! Everything that must survive a restart or be shared by several instances is in the store;
//! this struct holds only configuration and connections, so any instance can answer any stanza.

use std::collections::BTreeMap;
use std::sync::Arc;

use pushgate_providers::{Provider, ProviderId};
use tokio::sync::mpsc;
use xmpp_parsers::stanza::Stanza;

use crate::config::{Config, ConfigError};
use crate::ids::BareJid;
use crate::storage::{Store, SuccessLog};

/// Stanzas waiting for the component stream: replies, and messages background tasks send.
pub type Outbox = mpsc::Receiver<Stanza>;
const OUTBOX_CAPACITY: usize = 1024;

pub struct Gateway {
    pub jid: BareJid,
    pub admins: Vec<BareJid>,
    pub cert_expiry_warning_days: u32,
    pub cert_check_interval: std::time::Duration,
    /// Where to put stanzas to send; the stream drains it while connected.
    pub outbox: mpsc::Sender<Stanza>,
    pub max_payload_size: u32,
    /// Who may register, and how many new devices (`[registration]` limits).
    pub registration: crate::commands::RegistrationPolicy,
    /// Holds back low-priority pushes to a device that just got one.
    pub coalescer: crate::publish::coalesce::Coalescer,
    pub publish_timeout: std::time::Duration,
    /// Delivery slots per provider and per endpoint host.
    pub slots: crate::slots::Slots,
    pub store: Store,
    /// Accepted deliveries, written to the store in batches by `storage::SuccessLog::run`.
    pub successes: SuccessLog,
    pub providers: Providers,
}

impl Gateway {
    pub fn new(config: &Config, store: Store) -> Result<(Arc<Self>, Outbox), ConfigError> {
        let (outbox, drain) = mpsc::channel(OUTBOX_CAPACITY);
        let gw = Arc::new(Gateway {
            jid: config.component_jid(),
            admins: config.admins(),
            cert_expiry_warning_days: config.admin.cert_expiry_warning_days,
            cert_check_interval: std::time::Duration::from_secs(
                config.admin.cert_check_interval_secs,
            ),
            outbox,
            max_payload_size: config.registration.max_payload_size,
            registration: crate::commands::RegistrationPolicy::from_config(&config.registration),
            coalescer: crate::publish::coalesce::Coalescer::new(std::time::Duration::from_secs(
                config.registration.low_priority_interval_secs,
            )),
            publish_timeout: config.publish_timeout(),
            slots: crate::slots::Slots::new(
                crate::slots::Bound {
                    concurrency: config.limits.provider_concurrency,
                    queue: config.limits.provider_queue,
                },
                crate::slots::Bound {
                    concurrency: config.limits.host_concurrency,
                    queue: config.limits.host_queue,
                },
            ),
            store,
            successes: SuccessLog::default(),
            providers: Providers::from_config(config)?,
        });
        Ok((gw, drain))
    }

    pub fn is_admin(&self, jid: &xmpp_parsers::jid::Jid) -> bool {
        let bare = jid.to_bare();
        self.admins.contains(&bare)
    }
}

/// The configured providers by id, in a stable order (for forms and disco).
pub struct Providers(BTreeMap<ProviderId, Arc<dyn Provider>>);

impl Providers {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        let mut map = BTreeMap::new();
        for (id, section) in &config.providers {
            let provider =
                pushgate_providers::build(&format!("providers.{id}"), section).map_err(|e| {
                    ConfigError::Invalid {
                        key: e.key,
                        message: e.message,
                    }
                })?;
            map.insert(ProviderId::new(id.clone()), provider);
        }
        Ok(Providers(map))
    }

    pub fn get(&self, id: &str) -> Option<(&ProviderId, &Arc<dyn Provider>)> {
        self.0.get_key_value(&ProviderId::new(id))
    }

    pub fn ids(&self) -> impl Iterator<Item = &ProviderId> {
        self.0.keys()
    }

    /// The APNs apps, for credential upload and expiry checks.
    pub fn apns(&self) -> impl Iterator<Item = (&ProviderId, &pushgate_providers::apns::Apns)> {
        self.0
            .iter()
            .filter_map(|(id, p)| p.as_apns().map(|a| (id, a)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
