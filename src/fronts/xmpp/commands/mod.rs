//! XEP-0050 commands clients use to register devices, dispatched by command node.
//!
//! Three registration dialects exist in the wild: Tigase's `register-device` /
//! `unregister-device` (Siskin, Snikket iOS, Tigase Messenger), p2's
//! `register-push-<provider>` / `unregister-push-<provider>` (Conversations) and
//! mod_push_appserver's `v1-register-push` / `v1-unregister-push` (older Monal, yaxim). (Current
//! Monal registers nothing: see `publish/fpush.rs`.) Each lives in its
//! own module, one type per command that parses its form and then applies it through the core
//! (`core::registry`), where every registration passes the same gate. `admin.rs` holds the
//! commands only admins may run.

mod admin;
mod appserver;
mod fields;
mod p2;
mod tigase;

pub use admin::SetApnsCertificate;
pub use p2::{RegisterPush, UnregisterPush};
pub use tigase::{RegisterDevice, UnregisterDevice};

use xmpp_parsers::jid::Jid;

use super::Component;
use super::adhoc::{Action, CommandRequest, CommandResponse};
use crate::error::Fault;
use crate::ids::BareJid;

pub const REGISTER_DEVICE: &str = "register-device";
pub const UNREGISTER_DEVICE: &str = "unregister-device";
const P2_REGISTER_PREFIX: &str = "register-push-";
const P2_UNREGISTER_PREFIX: &str = "unregister-push-";

/// A command we offer: its node and a human-readable name, for disco#items.
pub struct CommandInfo {
    pub node: String,
    pub name: String,
}

/// The commands `requester` may run, in a stable order: admin commands only for admins.
pub fn available(c: &Component, requester: &Jid) -> Vec<CommandInfo> {
    let mut list = vec![
        CommandInfo {
            node: REGISTER_DEVICE.into(),
            name: "Register device".into(),
        },
        CommandInfo {
            node: UNREGISTER_DEVICE.into(),
            name: "Unregister device".into(),
        },
        CommandInfo {
            node: appserver::REGISTER.into(),
            name: "Register device (mod_push_appserver v1)".into(),
        },
        CommandInfo {
            node: appserver::UNREGISTER.into(),
            name: "Unregister device (mod_push_appserver v1)".into(),
        },
    ];
    if c.is_admin(requester) {
        list.push(CommandInfo {
            node: admin::GET_STATISTICS.into(),
            name: "Get statistics".into(),
        });
    }
    if c.is_admin(requester) && c.core.providers.apns().next().is_some() {
        list.push(CommandInfo {
            node: admin::SET_APNS_CERTIFICATE.into(),
            name: "Set APNs certificate".into(),
        });
    }
    for id in c.core.providers.names() {
        list.push(CommandInfo {
            node: format!("{P2_REGISTER_PREFIX}{id}"),
            name: format!("Register device for {id}"),
        });
        list.push(CommandInfo {
            node: format!("{P2_UNREGISTER_PREFIX}{id}"),
            name: format!("Unregister device for {id}"),
        });
    }
    list
}

/// Whether `node` names one of the commands `requester` may run (disco#info on a command node).
pub fn exists(c: &Component, requester: &Jid, node: &str) -> bool {
    available(c, requester).iter().any(|c| c.node == node)
}

/// Runs one command request from `from` and returns the `<command/>` to answer with.
pub async fn execute(
    c: &Component,
    from: &Jid,
    req: CommandRequest,
) -> Result<CommandResponse, Fault> {
    let account = account_of(from)?;
    if req.action == Action::Cancel {
        return Ok(CommandResponse::canceled(&req));
    }
    match req.node.as_str() {
        REGISTER_DEVICE => tigase::register(c, account, &req).await,
        UNREGISTER_DEVICE => tigase::unregister(c, account, &req).await,
        appserver::REGISTER => appserver::register(c, account, &req).await,
        appserver::UNREGISTER => appserver::unregister(c, account, &req).await,
        admin::SET_APNS_CERTIFICATE => admin::set_apns_certificate(c, from, &req).await,
        admin::GET_STATISTICS => admin::get_statistics(c, from, &req).await,
        node => {
            if let Some(id) = node.strip_prefix(P2_REGISTER_PREFIX) {
                p2::register(c, account, p2::provider(c, id)?, &req).await
            } else if let Some(id) = node.strip_prefix(P2_UNREGISTER_PREFIX) {
                p2::unregister(c, account, p2::provider(c, id)?, &req).await
            } else {
                Err(Fault::NotFound("no such command"))
            }
        }
    }
}

/// Registrations belong to user accounts: a bare JID with a local part.
fn account_of(from: &Jid) -> Result<BareJid, Fault> {
    let bare = from.to_bare();
    if bare.node().is_none() {
        return Err(Fault::Forbidden("only user accounts can register devices"));
    }
    Ok(bare)
}
