//! p2's `register-push-<provider>` / `unregister-push-<provider>` dialect (Conversations).
//!
//! Every registration gets a publish-options secret; re-registering the same device (and room)
//! keeps node and secret and only updates the token, as Conversations expects. The provider is
//! part of the command node, so an unknown one is an unknown command.

use std::str::FromStr;

use pushgate_providers::{DeviceToken, WebPushKeys};

use super::fields::{optional, required, staged, webpush_keys};
use crate::core::limits::{MAX_DEVICE_ID_BYTES, MAX_JID_BYTES, MAX_TOKEN_BYTES};
use crate::core::registry;
use crate::error::Fault;
use crate::fronts::xmpp::Component;
use crate::fronts::xmpp::adhoc::{CommandRequest, CommandResponse};
use crate::fronts::xmpp::forms::{Form, FormBuilder};
use crate::ids::{BareJid, DeviceIdentity, Dialect, ProviderId};
use crate::storage::NewRegistration;
use xmpp_parsers::minidom::Element;

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
fn device_id(form: &Form) -> Result<String, Fault> {
    match optional(form, "device-id", MAX_DEVICE_ID_BYTES)? {
        Some(id) => Ok(id.to_owned()),
        None => optional(form, "android-id", MAX_DEVICE_ID_BYTES)?
            .map(str::to_owned)
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

/// The provider a command node names; an unknown one means the command does not exist.
pub fn provider<'a>(c: &'a Component, id: &str) -> Result<&'a ProviderId, Fault> {
    match registry::provider(&c.core, id) {
        Ok((provider, _)) => Ok(provider),
        Err(Fault::NotFound(_)) => Err(Fault::NotFound("no such command")),
        Err(e) => Err(e),
    }
}

/// `register-push-<provider>`, as submitted.
pub struct RegisterPush {
    device_id: String,
    muc: Option<BareJid>,
    token: DeviceToken,
    webpush_keys: Option<WebPushKeys>,
}

impl RegisterPush {
    pub fn parse(form: &Form) -> Result<Self, Fault> {
        Ok(RegisterPush {
            device_id: device_id(form)?,
            muc: muc(form)?,
            token: DeviceToken::new(required(form, "token", MAX_TOKEN_BYTES)?),
            webpush_keys: webpush_keys(form)?,
        })
    }

    /// Registers the device; the result form carries where to publish and with which secret.
    pub async fn apply(
        self,
        c: &Component,
        account: BareJid,
        provider: &ProviderId,
    ) -> Result<Element, Fault> {
        let new = NewRegistration {
            dialect: Dialect::P2,
            provider: provider.clone(),
            account,
            device_id: Some(self.device_id),
            muc: self.muc,
            token: self.token,
            second_token: None,
            webpush_keys: self.webpush_keys,
        };
        let reg = registry::register(&c.core, new).await?;
        let Some(secret) = reg.secret.as_ref() else {
            return Err(Fault::Transient(
                "p2 registration stored without a secret".into(),
            ));
        };
        Ok(FormBuilder::new("form")
            .field("jid", "jid-single", [c.jid.to_string()])
            .field("node", "text-single", [reg.node.as_str()])
            .field("secret", "text-single", [secret.as_str()])
            .build())
    }
}

/// `unregister-push-<provider>`, as submitted: device id and room name the device, no token.
pub struct UnregisterPush {
    device: DeviceIdentity,
}

impl UnregisterPush {
    pub fn parse(form: &Form) -> Result<Self, Fault> {
        let muc = muc(form)?;
        Ok(UnregisterPush {
            device: DeviceIdentity::Device {
                id: device_id(form)?,
                muc,
            },
        })
    }

    pub async fn apply(
        self,
        c: &Component,
        account: &BareJid,
        provider: &ProviderId,
    ) -> Result<(), Fault> {
        registry::unregister(&c.core, provider.as_str(), account, &self.device).await
    }
}

pub async fn register(
    c: &Component,
    account: BareJid,
    provider: &ProviderId,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    let blank = || blank_form("Register device", true).build();
    staged(req, blank, async |form| {
        let result = RegisterPush::parse(form)?
            .apply(c, account, provider)
            .await?;
        Ok(CommandResponse::completed(req, Some(result)))
    })
    .await
}

pub async fn unregister(
    c: &Component,
    account: BareJid,
    provider: &ProviderId,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    let blank = || blank_form("Unregister device", false).build();
    staged(req, blank, async |form| {
        UnregisterPush::parse(form)?
            .apply(c, &account, provider)
            .await?;
        Ok(CommandResponse::completed(req, None).with_note("Device unregistered"))
    })
    .await
}
