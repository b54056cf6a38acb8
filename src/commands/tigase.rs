//! Tigase's `register-device` / `unregister-device` dialect.
//!
//! Two-stage (execute → blank form → submit) and single-stage (Martin sends the submitted form
//! with the first execute) both work. The node is the registration's only credential here:
//! Siskin sends no publish-options secret.

use pushgate_providers::DeviceToken;

use super::limits::{MAX_PROVIDER_ID_BYTES, MAX_TOKEN_BYTES};
use super::{optional, register_device, required, submitted, unregister_device, webpush_keys};
use crate::adhoc::{CommandRequest, CommandResponse};
use crate::error::Fault;
use crate::forms::FormBuilder;
use crate::gateway::Gateway;
use crate::ids::{BareJid, Dialect};
use crate::storage::{NewRegistration, device_key};

/// What a pushgate registration can do, as Siskin reads it from the result form.
const FEATURES: [&str; 2] = ["tigase:push:encrypt:0", "tigase:push:priority:0"];

fn blank_form(gw: &Gateway, title: &str, with_second_token: bool) -> FormBuilder {
    let options: Vec<(&str, &str)> = gw
        .providers
        .ids()
        .map(|id| (id.as_str(), id.as_str()))
        .collect();
    let form = FormBuilder::new("form")
        .title(title)
        .input("provider", "list-single", "Provider", true, options)
        .input("device-token", "text-single", "Device token", true, []);
    if with_second_token {
        form.input(
            "device-second-token",
            "text-single",
            "Device second (VoIP) token",
            false,
            [],
        )
    } else {
        form
    }
}

pub async fn register(
    gw: &Gateway,
    account: BareJid,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    let Some(form) = submitted(req)? else {
        return Ok(CommandResponse::executing(
            req,
            blank_form(gw, "Register device", true).build(),
        ));
    };
    let (provider_id, provider) = gw
        .providers
        .get(required(form, "provider", MAX_PROVIDER_ID_BYTES)?)
        .ok_or(Fault::NotFound("unknown provider"))?;
    let new = NewRegistration {
        dialect: Dialect::Tigase,
        provider: provider_id.clone(),
        account,
        device_id: None,
        muc: None,
        token: DeviceToken::new(required(form, "device-token", MAX_TOKEN_BYTES)?),
        second_token: optional(form, "device-second-token", MAX_TOKEN_BYTES)?.map(DeviceToken::new),
        webpush_keys: webpush_keys(form)?,
    };
    let reg = register_device(gw, provider.as_ref(), new).await?;
    let result = FormBuilder::new("result")
        .field("node", "text-single", [reg.node.as_str()])
        .field("features", "list-multi", FEATURES)
        .field(
            "max-payload-size",
            "text-single",
            [gw.max_payload_size.to_string()],
        )
        .build();
    Ok(CommandResponse::completed(req, Some(result)))
}

pub async fn unregister(
    gw: &Gateway,
    account: BareJid,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    let Some(form) = submitted(req)? else {
        return Ok(CommandResponse::executing(
            req,
            blank_form(gw, "Unregister device", false).build(),
        ));
    };
    let (provider_id, _) = gw
        .providers
        .get(required(form, "provider", MAX_PROVIDER_ID_BYTES)?)
        .ok_or(Fault::NotFound("unknown provider"))?;
    let token = DeviceToken::new(required(form, "device-token", MAX_TOKEN_BYTES)?);
    let key = device_key(Dialect::Tigase, &token, None, None);
    unregister_device(gw, req, Dialect::Tigase, provider_id, &account, &key).await
}
