//! Registrations that were removed (a dead token, an unregister command, the REST unregister),
//! announced to whichever front can tell the account's server: the XMPP component sends the
//! XEP-0357 remote-disable notification (`fronts/xmpp/removals.rs`), so servers that honour it
//! drop their push registration now instead of at the next publish.
//!
//! Best effort by design: nobody listening (the CLI) or a listener that fell behind loses
//! announcements, and the server then learns it at the next publish (`item-not-found`), as
//! before.

use tokio::sync::broadcast;

use crate::ids::{BareJid, NodeId};

/// Announcements a slow listener may lag behind before it skips some.
const BACKLOG: usize = 4096;

/// One removed registration: whose, and at which node.
#[derive(Debug, Clone)]
pub struct Removed {
    pub account: BareJid,
    pub node: NodeId,
}

pub struct Removals(broadcast::Sender<Removed>);

impl Default for Removals {
    fn default() -> Self {
        Removals(broadcast::channel(BACKLOG).0)
    }
}

impl Removals {
    pub fn announce(&self, account: &BareJid, node: &NodeId) {
        // No listener: nobody to tell.
        let _ = self.0.send(Removed {
            account: account.clone(),
            node: node.clone(),
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Removed> {
        self.0.subscribe()
    }
}
