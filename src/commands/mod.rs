//! XEP-0050 commands clients use to register devices, dispatched by command node.
//!
//! Two dialects exist in the wild (../shared/reference/xep0357-interop.md §1): Tigase's
//! `register-device` / `unregister-device` (Siskin, Snikket iOS, Tigase Messenger) and p2's
//! `register-push-<provider>` / `unregister-push-<provider>` (Conversations). Each lives in its
//! own module; both end in the same store. Every registration passes the same gate
//! ([`register_device`]): field lengths as the form is read (`limits.rs`), then the domain lists,
//! the provider, and the new-device limits (`policy.rs`).

mod admin;
pub mod limits;
mod p2;
mod policy;
mod tigase;

pub use policy::RegistrationPolicy;

use xmpp_parsers::jid::Jid;

use pushgate_providers::{Device, Provider, ProviderId, WebPushKeys};

use crate::adhoc::{Action, CommandRequest, CommandResponse};
use crate::error::Fault;
use crate::forms::Form;
use crate::gateway::Gateway;
use crate::ids::{BareJid, Dialect};
use crate::storage::{NewRegistration, Registration, StoreError};

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
pub fn available(gw: &Gateway, requester: &Jid) -> Vec<CommandInfo> {
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
    if gw.is_admin(requester) {
        list.push(CommandInfo {
            node: admin::GET_STATISTICS.into(),
            name: "Get statistics".into(),
        });
    }
    if gw.is_admin(requester) && gw.providers.apns().next().is_some() {
        list.push(CommandInfo {
            node: admin::SET_APNS_CERTIFICATE.into(),
            name: "Set APNs certificate".into(),
        });
    }
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

/// Whether `node` names one of the commands `requester` may run (disco#info on a command node).
pub fn exists(gw: &Gateway, requester: &Jid, node: &str) -> bool {
    available(gw, requester).iter().any(|c| c.node == node)
}

/// Runs one command request from `from` and returns the `<command/>` to answer with.
pub async fn execute(
    gw: &Gateway,
    from: &Jid,
    req: CommandRequest,
) -> Result<CommandResponse, Fault> {
    let account = account_of(from)?;
    if req.action == Action::Cancel {
        return Ok(CommandResponse::canceled(&req));
    }
    match req.node.as_str() {
        REGISTER_DEVICE => tigase::register(gw, account, &req).await,
        UNREGISTER_DEVICE => tigase::unregister(gw, account, &req).await,
        admin::SET_APNS_CERTIFICATE => admin::set_apns_certificate(gw, from, &req).await,
        admin::GET_STATISTICS => admin::get_statistics(gw, from, &req).await,
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

/// The submitted form, or `None` when the client asks for the blank form (the first stage of a
/// two-stage command). Finishing a command without a form is an error.
fn submitted(req: &CommandRequest) -> Result<Option<&Form>, Fault> {
    match (&req.form, req.action) {
        (Some(form), _) if !form.fields.is_empty() => Ok(Some(form)),
        (_, Action::Execute | Action::Next | Action::Prev) => Ok(None),
        _ => Err(Fault::BadRequest(
            "the command needs a submitted form".into(),
        )),
    }
}

/// The field's value, if sent, refused when longer than `max` bytes.
fn optional<'a>(form: &'a Form, var: &'static str, max: usize) -> Result<Option<&'a str>, Fault> {
    match form.value(var) {
        Some(v) => Ok(Some(limits::within(var, v, max)?)),
        None => Ok(None),
    }
}

fn required<'a>(form: &'a Form, var: &'static str, max: usize) -> Result<&'a str, Fault> {
    optional(form, var, max)?.ok_or_else(|| Fault::BadRequest(format!("field '{var}' is required")))
}

/// Reads the optional WebPush subscription keys; both or neither.
fn webpush_keys(form: &Form) -> Result<Option<WebPushKeys>, Fault> {
    let key = |var| optional(form, var, limits::MAX_WEBPUSH_KEY_BYTES);
    match (key("p256dh")?, key("auth")?) {
        (Some(p256dh), Some(auth)) => Ok(Some(WebPushKeys {
            p256dh: p256dh.to_owned(),
            auth: auth.to_owned(),
        })),
        (None, None) => Ok(None),
        _ => Err(Fault::BadRequest("p256dh and auth go together".into())),
    }
}

/// Checks the account's domain, asks the provider whether it can deliver to this device (a bad
/// token is refused here, not discovered at the first push), then stores it within the
/// new-device limits. The fields' lengths were checked as the form was read.
async fn register_device(
    gw: &Gateway,
    provider: &dyn Provider,
    new: NewRegistration,
) -> Result<Registration, Fault> {
    gw.registration.check_domain(&new.account)?;
    let device = Device {
        provider: new.provider.clone(),
        token: new.token.clone(),
        second_token: new.second_token.clone(),
        webpush_keys: new.webpush_keys.clone(),
    };
    provider.admit(&device).await?;
    let dialect = new.dialect;
    let mut slot = gw.registration.new_device(&new.account);
    let registered = match gw.store.register(new, slot.admission).await {
        // Only a paused slot pauses: its refusal says why.
        Err(e @ StoreError::AddingPaused) => {
            return Err(slot.paused.take().map_or(Fault::from(e), Fault::from));
        }
        other => other?,
    };
    if registered.added {
        slot.spend();
    }
    let reg = registered.registration;
    tracing::info!(registration = reg.id, provider = %reg.provider, dialect = dialect.as_str(), added = registered.added, "device registered");
    Ok(reg)
}

/// Removes a registration; `item-not-found` when there was none (Siskin treats that as done).
async fn unregister_device(
    gw: &Gateway,
    req: &CommandRequest,
    dialect: Dialect,
    provider: &ProviderId,
    account: &BareJid,
    key: &str,
) -> Result<CommandResponse, Fault> {
    if !gw.store.unregister(dialect, provider, account, key).await? {
        return Err(Fault::NotFound("no such registration"));
    }
    tracing::info!(%provider, dialect = dialect.as_str(), "device unregistered");
    Ok(CommandResponse::completed(req, None).with_note("Device unregistered"))
}
