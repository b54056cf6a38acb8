//! mod_push_appserver's `v1-register-push` / `v1-unregister-push` dialect (Monal from 2020 to
//! 2022, yaxim): the client submits `type` (`apns` or `fcm`: a provider id or alias), `node` (its
//! own stable device id, e.g. iOS's identifierForVendor) and `token`, and gets back `jid`, `node`
//! (the one it sent) and `secret`.
//!
//! The node is the client's, as mod_push_appserver had it: the client enables and disables push
//! with it. So it is not the registration's credential: the secret is, and together they make
//! the lookup key, so one device can register the same node for several accounts (each getting a
//! secret of its own) and knowing somebody's device id lets nobody take over their
//! registration. Re-registering keeps the secret and updates the token.

use pushgate_providers::DeviceToken;

use super::fields::{required, staged};
use crate::core::limits::{MAX_DEVICE_ID_BYTES, MAX_PROVIDER_ID_BYTES, MAX_TOKEN_BYTES};
use crate::core::registry;
use crate::error::Fault;
use crate::fronts::xmpp::Component;
use crate::fronts::xmpp::adhoc::{CommandRequest, CommandResponse};
use crate::fronts::xmpp::forms::{Form, FormBuilder};
use crate::ids::{BareJid, DeviceIdentity, Dialect};
use crate::storage::NewRegistration;

pub const REGISTER: &str = "v1-register-push";
pub const UNREGISTER: &str = "v1-unregister-push";
const REGISTER_FORM_TYPE: &str =
    "https://github.com/tmolitor-stud-tu/mod_push_appserver/#v1-register-push";
const UNREGISTER_FORM_TYPE: &str =
    "https://github.com/tmolitor-stud-tu/mod_push_appserver/#v1-unregister-push";

fn blank_form(title: &str, form_type: &str, with_token: bool) -> FormBuilder {
    let form = FormBuilder::new("form")
        .title(title)
        .field("FORM_TYPE", "hidden", [form_type])
        .input("type", "text-single", "Push type (apns, fcm)", true, [])
        .input("node", "text-single", "Device id", true, []);
    if with_token {
        form.input("token", "text-single", "Device token", true, [])
    } else {
        form
    }
}

/// The fields both commands share; mod_push_appserver answers bad data `not-acceptable`.
fn type_and_node(form: &Form) -> Result<(String, String), Fault> {
    let kind = required(form, "type", MAX_PROVIDER_ID_BYTES)?;
    let node = required(form, "node", MAX_DEVICE_ID_BYTES)?;
    if node.chars().any(char::is_control) {
        return Err(Fault::NotAcceptable("'node' has control characters".into()));
    }
    Ok((kind.to_owned(), node.to_owned()))
}

/// The provider a `type` names; an unknown one is data the app server cannot accept.
fn provider<'a>(c: &'a Component, kind: &str) -> Result<&'a crate::ids::ProviderId, Fault> {
    match registry::provider(&c.core, kind) {
        Ok((provider, _)) => Ok(provider),
        Err(Fault::NotFound(_)) => Err(Fault::NotAcceptable(format!("unknown push type '{kind}'"))),
        Err(e) => Err(e),
    }
}

pub async fn register(
    c: &Component,
    account: BareJid,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    let blank = || blank_form("Register device", REGISTER_FORM_TYPE, true).build();
    staged(req, blank, async |form| {
        let (kind, node) = type_and_node(form)?;
        let token = required(form, "token", MAX_TOKEN_BYTES)?;
        let new = NewRegistration {
            dialect: Dialect::AppServer,
            provider: provider(c, &kind)?.clone(),
            account,
            device_id: Some(node),
            muc: None,
            token: DeviceToken::new(token),
            second_token: None,
            webpush_keys: None,
        };
        let reg = registry::register(&c.core, new).await?;
        let Some(secret) = reg.secret.as_ref() else {
            return Err(Fault::Transient(
                "mod_push_appserver registration stored without a secret".into(),
            ));
        };
        let result = FormBuilder::new("form")
            .field("jid", "jid-single", [c.jid.to_string()])
            .field("node", "text-single", [reg.node.as_str()])
            .field("secret", "text-single", [secret.as_str()])
            .build();
        Ok(CommandResponse::completed(req, Some(result)))
    })
    .await
}

pub async fn unregister(
    c: &Component,
    account: BareJid,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    let blank = || blank_form("Unregister device", UNREGISTER_FORM_TYPE, false).build();
    staged(req, blank, async |form| {
        let (kind, node) = type_and_node(form)?;
        let provider = provider(c, &kind)?;
        registry::unregister(
            &c.core,
            provider.as_str(),
            &account,
            &DeviceIdentity::Node(node.clone()),
        )
        .await?;
        let result = FormBuilder::new("form")
            .field("jid", "jid-single", [c.jid.to_string()])
            .field("node", "text-single", [node.as_str()])
            .build();
        Ok(CommandResponse::completed(req, Some(result)))
    })
    .await
}
