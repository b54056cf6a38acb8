//! XEP-0050 commands clients use to register devices, dispatched by command node.
//!
//! Two dialects exist in the wild (../shared/reference/xep0357-interop.md §1): Tigase's
//! `register-device` / `unregister-device` (Siskin, Snikket iOS, Tigase Messenger) and p2's
//! `register-push-<provider>` / `unregister-push-<provider>` (Conversations). Each lives in its
//! own module; both end in the same store.

mod p2;
mod tigase;

use xmpp_parsers::jid::Jid;

use crate::adhoc::{CommandRequest, CommandResponse};
use crate::error::Fault;
use crate::gateway::Gateway;
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

/// The commands `requester` may run, in a stable order.
pub fn available(gw: &Gateway) -> Vec<CommandInfo> {
    let mut list = vec![
        CommandInfo {
            node: REGISTER_DEVICE.into(),
            name: "Register device".into(),
        },
        CommandInfo {
            node: UNREGISTER_DEVICE.into(),
            name: "Unregister device".into(),
        },
    ];
    for id in gw.providers.ids() {
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

/// Whether `node` names one of our commands (for disco#info on a command node).
pub fn exists(gw: &Gateway, node: &str) -> bool {
    available(gw).iter().any(|c| c.node == node)
}

/// Runs one command request from `from` and returns the `<command/>` to answer with.
pub async fn execute(
    gw: &Gateway,
    from: &Jid,
    req: CommandRequest,
) -> Result<CommandResponse, Fault> {
    let account = account_of(from)?;
    if req.action == crate::adhoc::Action::Cancel {
        return Ok(CommandResponse::canceled(&req));
    }
    match req.node.as_str() {
        REGISTER_DEVICE => tigase::register(gw, account, &req).await,
        UNREGISTER_DEVICE => tigase::unregister(gw, account, &req).await,
        node => {
            if let Some(id) = node.strip_prefix(P2_REGISTER_PREFIX) {
                p2::register(gw, account, id, &req).await
            } else if let Some(id) = node.strip_prefix(P2_UNREGISTER_PREFIX) {
                p2::unregister(gw, account, id, &req).await
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

/// Reads the optional WebPush subscription keys; both or neither.
fn webpush_keys(
    form: &crate::forms::Form,
) -> Result<Option<pushgate_providers::WebPushKeys>, Fault> {
    match (form.value("p256dh"), form.value("auth")) {
        (Some(p256dh), Some(auth)) => Ok(Some(pushgate_providers::WebPushKeys {
            p256dh: p256dh.to_owned(),
            auth: auth.to_owned(),
        })),
        (None, None) => Ok(None),
        _ => Err(Fault::BadRequest("p256dh and auth go together".into())),
    }
}

/// Asks the provider whether it can deliver to this device before anything is stored.
fn validate(
    provider: &dyn pushgate_providers::Provider,
    device: &pushgate_providers::Device,
) -> Result<(), Fault> {
    provider
        .validate(device)
        .map_err(|e| Fault::NotAcceptable(e.to_string()))
}
