//! Tigase's `register-device` / `unregister-device` dialect.
//!
//! Two-stage (execute → blank form → submit) and single-stage (Martin sends the submitted form
//! with the first execute) both work. The node is the registration's only credential here:
//! Siskin sends no publish-options secret.

use pushgate_providers::{Device, DeviceToken};

use super::{validate, webpush_keys};
use crate::adhoc::{Action, CommandRequest, CommandResponse};
use crate::error::Fault;
use crate::forms::{Form, FormBuilder};
use crate::gateway::Gateway;
use crate::ids::{BareJid, Dialect};
use crate::storage::{NewRegistration, device_key};

/// What a pushgate registration can do, as Siskin reads it from the result form.
const FEATURES: [&str; 2] = ["tigase:push:encrypt:0", "tigase:push:priority:0"];

/// The submitted form, or `None` when the client is asking for the blank form.
fn submitted(req: &CommandRequest) -> Result<Option<&Form>, Fault> {
    match (&req.form, req.action) {
        (Some(form), _) if !form.fields.is_empty() => Ok(Some(form)),
        (_, Action::Execute | Action::Next | Action::Prev) => Ok(None),
        _ => Err(Fault::BadRequest(
            "the command needs a submitted form".into(),
        )),
    }
}

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

fn required<'a>(form: &'a Form, var: &str) -> Result<&'a str, Fault> {
    form.value(var)
        .ok_or_else(|| Fault::BadRequest(format!("field '{var}' is required")))
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
        .get(required(form, "provider")?)
        .ok_or(Fault::NotFound("unknown provider"))?;
    let token = DeviceToken::new(required(form, "device-token")?);
    let device = Device {
        provider: provider_id.clone(),
        token: token.clone(),
        second_token: form.value("device-second-token").map(DeviceToken::new),
        webpush_keys: webpush_keys(form)?,
    };
    validate(provider.as_ref(), &device)?;
    let reg = gw
        .store
        .register(NewRegistration {
            dialect: Dialect::Tigase,
            provider: device.provider,
            account,
            device_id: None,
            muc: None,
            token,
            second_token: device.second_token,
            webpush_keys: device.webpush_keys,
        })
        .await?;
    tracing::info!(registration = reg.id, provider = %reg.provider, "device registered (tigase)");
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
        .get(required(form, "provider")?)
        .ok_or(Fault::NotFound("unknown provider"))?;
    let token = DeviceToken::new(required(form, "device-token")?);
    let key = device_key(Dialect::Tigase, &token, None, None);
    if !gw
        .store
        .unregister(Dialect::Tigase, provider_id, &account, &key)
        .await?
    {
        return Err(Fault::NotFound("no such registration"));
    }
    tracing::info!(provider = %provider_id, "device unregistered (tigase)");
    Ok(CommandResponse::completed(req, None).with_note("Device unregistered"))
}
