//! The configured providers by id: the one place a registration's provider is looked up.

use std::collections::BTreeMap;
use std::sync::Arc;

use pushgate_providers::{Provider, ProviderId};

use crate::config::{Config, ConfigError};

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
