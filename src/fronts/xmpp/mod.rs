//! The XMPP front: pushgate as an XEP-0114 external component.
//!
//! A stanza travels `stream` (the component connection, framing and limits) → `router` (which
//! kind of request) → `commands` (XEP-0050 registration and admin commands), `publish`
//! (XEP-0357 publishes) or `disco` → the core → `error.rs` turns a refusal into a stanza error →
//! the stream sends the reply.

pub mod adhoc;
pub mod admin_alerts;
pub mod commands;
pub mod disco;
pub mod error;
pub mod forms;
pub mod pending;
pub mod publish;
pub mod removals;
pub mod router;
pub mod stream;
pub mod unifiedpush;
pub mod xml;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use xmpp_parsers::stanza::Stanza;

use pushgate_providers::host::HostPattern;

use crate::config::{Config, ConfigError, RegistrationConfig};
use crate::core::Core;
use crate::ids::BareJid;
use crate::storage::Store;

/// Stanzas waiting for the component stream: replies, and messages background tasks send.
pub type Outbox = mpsc::Receiver<Stanza>;
const OUTBOX_CAPACITY: usize = 1024;

/// What the XMPP front knows besides the core: who the component is, who its admins are, and
/// where stanzas to send go.
pub struct Component {
    pub core: Arc<Core>,
    pub jid: BareJid,
    pub admins: Vec<BareJid>,
    /// Where to put stanzas to send; the stream drains it while connected.
    pub outbox: mpsc::Sender<Stanza>,
    /// Promised to Tigase-dialect clients in the registration result.
    pub max_payload_size: u32,
    /// How long a publishing server is given for an answer.
    pub publish_timeout: Duration,
    /// Publishing servers whose notifications without a summary form are wake-ups
    /// (`registration.background_without_summary`).
    pub background_without_summary: Vec<HostPattern>,
    /// IQs sent and waiting for their answer.
    pub pending: pending::PendingIqs,
    /// Token-addressed publishes (`[fpush]`), when a module is configured.
    pub fpush: Option<publish::fpush::Fpush>,
}

impl Component {
    /// The component over a core of its own (tools and tests that run only this front).
    pub fn new(config: &Config, store: Store) -> Result<(Arc<Self>, Outbox), ConfigError> {
        Ok(Self::with_core(config, Arc::new(Core::new(config, store)?)))
    }

    /// The component over a core shared with the other fronts.
    pub fn with_core(config: &Config, core: Arc<Core>) -> (Arc<Self>, Outbox) {
        let (outbox, drain) = mpsc::channel(OUTBOX_CAPACITY);
        let component = Arc::new(Component {
            core,
            jid: config.component_jid(),
            admins: config.admins(),
            outbox,
            max_payload_size: config.registration.max_payload_size,
            publish_timeout: config.publish_timeout(),
            background_without_summary: RegistrationConfig::domain_patterns(
                &config.registration.background_without_summary,
            ),
            pending: pending::PendingIqs::default(),
            fpush: publish::fpush::Fpush::from_config(&config.fpush),
        });
        (component, drain)
    }

    pub fn is_admin(&self, jid: &xmpp_parsers::jid::Jid) -> bool {
        let bare = jid.to_bare();
        self.admins.contains(&bare)
    }
}
