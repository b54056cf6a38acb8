//! p2's `register-push-<provider>` / `unregister-push-<provider>` dialect (Conversations).
//!
//! Every registration gets a publish-options secret; re-registering the same device (and room)
//! keeps node and secret and only updates the token, as Conversations expects.

use std::str::FromStr;

use pushgate_providers::DeviceToken;

use super::limits::{
    self, MAX_DEVICE_ID_BYTES, MAX_JID_BYTES, MAX_PROVIDER_ID_BYTES, MAX_TOKEN_BYTES,
};
use super::{optional, register_device, required, submitted, unregister_device, webpush_keys};
use crate::adhoc::{CommandRequest, CommandResponse};
use crate::error::Fault;
use crate::forms::{Form, FormBuilder};
use crate::gateway::Gateway;
use crate::ids::{BareJid, Dialect};
use crate::storage::{NewRegistration, device_key};

fn blank_form(title: &str, with_token: bool) -> FormBuilder {
    let form = FormBuilder::new("form").title(title);
    let form = if with_token {
        form.input("token", "text-single", "Device token", true, [])
    } else {
        form
    };
    form.input("device-id", "text-single", "Device id", true, [])
        .input("muc", "jid-single", "Group chat (optional)", false, [])
}

/// The device id: `device-id`, or the legacy `android-id` Conversations still sends.
fn device_id(form: &Form) -> Result<&str, Fault> {
    match optional(form, "device-id", MAX_DEVICE_ID_BYTES)? {
        Some(id) => Ok(id),
        None => optional(form, "android-id", MAX_DEVICE_ID_BYTES)?
            .ok_or_else(|| Fault::BadRequest("field 'device-id' is required".into())),
    }
}

/// The room of a per-room registration: a bare JID. p2 reads `muc`; Conversations' unregister
/// sends `channel`. The length is checked before the JID is parsed.
fn muc(form: &Form) -> Result<Option<BareJid>, Fault> {
    let raw = match optional(form, "muc", MAX_JID_BYTES)? {
        Some(raw) => raw,
        None => match optional(form, "channel", MAX_JID_BYTES)? {
            Some(raw) => raw,
            None => return Ok(None),
        },
    };
    BareJid::from_str(raw)
        .map(Some)
        .map_err(|_| Fault::BadRequest("'muc' must be a bare JID".into()))
}

pub async fn register(
    gw: &Gateway,
    account: BareJid,
    id: &str,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    let (provider_id, provider) = gw
        .providers
        .get(limits::within("provider", id, MAX_PROVIDER_ID_BYTES)?)
        .ok_or(Fault::NotFound("no such command"))?;
    let Some(form) = submitted(req)? else {
        return Ok(CommandResponse::executing(
            req,
            blank_form("Register device", true).build(),
        ));
    };
    let new = NewRegistration {
        dialect: Dialect::P2,
        provider: provider_id.clone(),
        account,
        device_id: Some(device_id(form)?.to_owned()),
        muc: muc(form)?,
        token: DeviceToken::new(required(form, "token", MAX_TOKEN_BYTES)?),
        second_token: None,
        webpush_keys: webpush_keys(form)?,
    };
    let reg = register_device(gw, provider.as_ref(), new).await?;
    let Some(secret) = reg.secret.as_ref() else {
        return Err(Fault::Transient(
            "p2 registration stored without a secret".into(),
        ));
    };
    let result = FormBuilder::new("form")
        .field("jid", "jid-single", [gw.jid.to_string()])
        .field("node", "text-single", [reg.node.as_str()])
        .field("secret", "text-single", [secret.as_str()])
        .build();
    Ok(CommandResponse::completed(req, Some(result)))
}

pub async fn unregister(
    gw: &Gateway,
    account: BareJid,
    id: &str,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    let (provider_id, _) = gw
        .providers
        .get(limits::within("provider", id, MAX_PROVIDER_ID_BYTES)?)
        .ok_or(Fault::NotFound("no such command"))?;
    let Some(form) = submitted(req)? else {
        return Ok(CommandResponse::executing(
            req,
            blank_form("Unregister device", false).build(),
        ));
    };
    let muc = muc(form)?;
    let key = device_key(
        Dialect::P2,
        &DeviceToken::new(""),
        Some(device_id(form)?),
        muc.as_ref(),
    );
    unregister_device(gw, req, Dialect::P2, provider_id, &account, &key).await
}
