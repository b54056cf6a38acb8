//! Tigase's `register-device` / `unregister-device` dialect (Siskin, Snikket iOS, Tigase
//! Messenger).
//!
//! Two-stage (execute → blank form → submit) and single-stage (Martin sends the submitted form
//! with the first execute) both work. The node is the registration's only credential here:
//! Siskin sends no publish-options secret.

use pushgate_providers::{DeviceToken, WebPushKeys};

use super::fields::{optional, required, staged, webpush_keys};
use crate::core::limits::{MAX_PROVIDER_ID_BYTES, MAX_TOKEN_BYTES};
use crate::core::registry;
use crate::error::Fault;
use crate::fronts::xmpp::Component;
use crate::fronts::xmpp::adhoc::{CommandRequest, CommandResponse};
use crate::fronts::xmpp::forms::{Form, FormBuilder};
use crate::ids::{BareJid, DeviceIdentity, Dialect};
use crate::storage::NewRegistration;
use xmpp_parsers::minidom::Element;

/// What a pushgate registration can do, as Siskin reads it from the result form.
const FEATURES: [&str; 2] = ["tigase:push:encrypt:0", "tigase:push:priority:0"];

fn blank_form(c: &Component, title: &str, with_second_token: bool) -> FormBuilder {
    let options: Vec<(&str, &str)> = c
        .core
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

/// `register-device`, as submitted.
pub struct RegisterDevice {
    provider: String,
    token: DeviceToken,
    second_token: Option<DeviceToken>,
    webpush_keys: Option<WebPushKeys>,
}

impl RegisterDevice {
    pub fn parse(form: &Form) -> Result<Self, Fault> {
        Ok(RegisterDevice {
            provider: required(form, "provider", MAX_PROVIDER_ID_BYTES)?.to_owned(),
            token: DeviceToken::new(required(form, "device-token", MAX_TOKEN_BYTES)?),
            second_token: optional(form, "device-second-token", MAX_TOKEN_BYTES)?
                .map(DeviceToken::new),
            webpush_keys: webpush_keys(form)?,
        })
    }

    /// Registers the device; the result form carries the node to enable push with.
    pub async fn apply(self, c: &Component, account: BareJid) -> Result<Element, Fault> {
        let (provider, _) = registry::provider(&c.core, &self.provider)?;
        let new = NewRegistration {
            dialect: Dialect::Tigase,
            provider: provider.clone(),
            account,
            device_id: None,
            muc: None,
            token: self.token,
            second_token: self.second_token,
            webpush_keys: self.webpush_keys,
        };
        let reg = registry::register(&c.core, new).await?;
        Ok(FormBuilder::new("result")
            .field("node", "text-single", [reg.node.as_str()])
            .field("features", "list-multi", FEATURES)
            .field(
                "max-payload-size",
                "text-single",
                [c.max_payload_size.to_string()],
            )
            .build())
    }
}

/// `unregister-device`, as submitted: the token names the device.
pub struct UnregisterDevice {
    provider: String,
    token: DeviceToken,
}

impl UnregisterDevice {
    pub fn parse(form: &Form) -> Result<Self, Fault> {
        Ok(UnregisterDevice {
            provider: required(form, "provider", MAX_PROVIDER_ID_BYTES)?.to_owned(),
            token: DeviceToken::new(required(form, "device-token", MAX_TOKEN_BYTES)?),
        })
    }

    /// `item-not-found` when there was no such registration (Siskin treats that as done).
    pub async fn apply(self, c: &Component, account: &BareJid) -> Result<(), Fault> {
        registry::provider(&c.core, &self.provider)?;
        registry::unregister(
            &c.core,
            &self.provider,
            account,
            &DeviceIdentity::Token(self.token),
        )
        .await
    }
}

pub async fn register(
    c: &Component,
    account: BareJid,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    let blank = || blank_form(c, "Register device", true).build();
    staged(req, blank, async |form| {
        let result = RegisterDevice::parse(form)?.apply(c, account).await?;
        Ok(CommandResponse::completed(req, Some(result)))
    })
    .await
}

pub async fn unregister(
    c: &Component,
    account: BareJid,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    let blank = || blank_form(c, "Unregister device", false).build();
    staged(req, blank, async |form| {
        UnregisterDevice::parse(form)?.apply(c, &account).await?;
        Ok(CommandResponse::completed(req, None).with_note("Device unregistered"))
    })
    .await
}
