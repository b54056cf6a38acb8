//! The configured providers by id: the one place a registration's provider is looked up.
//!
//! A provider may also answer to legacy names (`[provider_aliases]`: Tigase's `fcm-xmpp-api`,
//! mod_push_appserver's `apns` / `fcm` types), so that clients and servers configured for the
//! service pushgate replaces keep working unchanged. An alias resolves to the provider's id,
//! which is what registrations store.

use std::collections::BTreeMap;
use std::sync::Arc;

use pushgate_providers::{Provider, ProviderId};

use crate::config::{Config, ConfigError};

/// The configured providers by id, in a stable order (for forms and disco).
pub struct Providers {
    by_id: BTreeMap<ProviderId, Arc<dyn Provider>>,
    /// Legacy name → provider id.
    aliases: BTreeMap<String, ProviderId>,
}

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
        let aliases = config
            .provider_aliases
            .iter()
            .map(|(alias, id)| (alias.clone(), ProviderId::new(id.clone())))
            .collect();
        Ok(Providers {
            by_id: map,
            aliases,
        })
    }

    /// The provider `id` names, directly or as an alias, with its own id.
    pub fn get(&self, id: &str) -> Option<(&ProviderId, &Arc<dyn Provider>)> {
        let id = ProviderId::new(id);
        if let Some(found) = self.by_id.get_key_value(&id) {
            return Some(found);
        }
        self.by_id.get_key_value(self.aliases.get(id.as_str())?)
    }

    pub fn ids(&self) -> impl Iterator<Item = &ProviderId> {
        self.by_id.keys()
    }

    /// Every name a client may use: the ids, then the aliases (for disco and command lists).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_id
            .keys()
            .map(ProviderId::as_str)
            .chain(self.aliases.keys().map(String::as_str))
    }

    /// The APNs apps, for credential upload and expiry checks.
    pub fn apns(&self) -> impl Iterator<Item = (&ProviderId, &pushgate_providers::apns::Apns)> {
        self.by_id
            .iter()
            .filter_map(|(id, p)| p.as_apns().map(|a| (id, a)))
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
