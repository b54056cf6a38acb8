//! The state every handler shares: who we are, where registrations live, which providers exist.
//!
//! Everything that must survive a restart or be shared by several instances is in the store;
//! this struct holds only configuration and connections, so any instance can answer any stanza.

use std::collections::BTreeMap;
use std::sync::Arc;

use pushgate_providers::{Provider, ProviderId};

use crate::config::{Config, ConfigError};
use crate::ids::BareJid;
use crate::storage::Store;

pub struct Gateway {
    pub jid: BareJid,
    pub max_payload_size: u32,
    pub publish_timeout: std::time::Duration,
    pub store: Store,
    pub providers: Providers,
}

impl Gateway {
    pub fn new(config: &Config, store: Store) -> Result<Arc<Self>, ConfigError> {
        Ok(Arc::new(Gateway {
            jid: config.component_jid(),
            max_payload_size: config.registration.max_payload_size,
            publish_timeout: config.publish_timeout(),
            store,
            providers: Providers::from_config(config)?,
        }))
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

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
