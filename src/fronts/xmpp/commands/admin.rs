//! `set-apns-certificate`: admins replace an APNs app's credentials without a restart.
//!
//! APNs certificates expire every year. The command takes a .p12 (base64, with its password), a
//! PEM certificate and key, or a .p8 token key with its key id and team id; validates it before
//! anything is stored (parses, not expired, key matches certificate); stores it so every instance
//! sharing the database picks it up; and applies it here at once. Only JIDs in `admin.jids` may
//! run it.

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use pushgate_providers::apns::{CredentialError, CredentialInfo, Credentials};
use xmpp_parsers::jid::Jid;

use super::fields::{required, staged};
use crate::core::apns_credential_sync;
use crate::core::limits::{MAX_APNS_ID_BYTES, MAX_PROVIDER_ID_BYTES};
use crate::error::Fault;
use crate::fronts::xmpp::Component;
use crate::fronts::xmpp::adhoc::{CommandRequest, CommandResponse};
use crate::fronts::xmpp::forms::{Form, FormBuilder};
use xmpp_parsers::minidom::Element;

pub const SET_APNS_CERTIFICATE: &str = "set-apns-certificate";
pub const GET_STATISTICS: &str = "get-statistics";

fn blank_form(c: &Component) -> FormBuilder {
    let options: Vec<(&str, &str)> = c
        .core
        .providers
        .apns()
        .map(|(id, _)| (id.as_str(), id.as_str()))
        .collect();
    FormBuilder::new("form")
        .title("Set APNs credentials")
        .instructions(
            "Give one of: a .p12 file (base64) and its password; a PEM certificate and its \
             private key; or a .p8 token key with its key id and team id.",
        )
        .input("provider", "list-single", "APNs app", true, options)
        .input("p12", "text-multi", "PKCS#12 file, base64", false, [])
        .input("password", "text-private", "PKCS#12 password", false, [])
        .input("certificate", "text-multi", "Certificate (PEM)", false, [])
        .input("private-key", "text-multi", "Private key (PEM)", false, [])
        .input("p8", "text-multi", "Token key (.p8, PEM)", false, [])
        .input("key-id", "text-single", "Key id", false, [])
        .input("team-id", "text-single", "Team id", false, [])
}

fn refused(e: CredentialError) -> Fault {
    Fault::NotAcceptable(e.to_string())
}

/// Exactly one credential set from the form, parsed.
fn credentials(form: &Form) -> Result<Credentials, Fault> {
    let p12 = form.text("p12");
    let cert = form.text("certificate");
    let p8 = form.text("p8");
    match (p12, cert, p8) {
        (Some(p12), None, None) => {
            let der = STANDARD
                .decode(p12.split_whitespace().collect::<String>())
                .map_err(|_| Fault::BadRequest("'p12' is not base64".into()))?;
            let password = form.text("password").unwrap_or_default();
            Credentials::from_p12(&der, &password).map_err(refused)
        }
        (None, Some(cert), None) => {
            let key = form
                .text("private-key")
                .ok_or_else(|| Fault::BadRequest("field 'private-key' is required".into()))?;
            Credentials::from_pem(&cert, &key).map_err(refused)
        }
        (None, None, Some(p8)) => {
            let id = |var| required(form, var, MAX_APNS_ID_BYTES);
            Credentials::from_p8(&p8, id("key-id")?, id("team-id")?).map_err(refused)
        }
        (None, None, None) => Err(Fault::BadRequest(
            "give 'p12', 'certificate' + 'private-key', or 'p8' + 'key-id' + 'team-id'".into(),
        )),
        _ => Err(Fault::BadRequest(
            "give exactly one kind of credentials".into(),
        )),
    }
}

fn rfc3339(t: Option<SystemTime>) -> String {
    t.map(|t| DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
}

/// Admin commands answer `forbidden` to anyone else.
fn admin_only(c: &Component, from: &Jid) -> Result<(), Fault> {
    if c.is_admin(from) {
        Ok(())
    } else {
        Err(Fault::Forbidden("admins only"))
    }
}

/// `set-apns-certificate`, as submitted.
pub struct SetApnsCertificate {
    provider: String,
    credentials: Credentials,
}

impl SetApnsCertificate {
    pub fn parse(form: &Form) -> Result<Self, Fault> {
        Ok(SetApnsCertificate {
            provider: required(form, "provider", MAX_PROVIDER_ID_BYTES)?.to_owned(),
            credentials: credentials(form)?,
        })
    }

    /// Validates, stores (for every instance) and applies the credentials; `admin` is for the
    /// log.
    pub async fn apply(self, c: &Component, admin: &Jid) -> Result<(Element, String), Fault> {
        let (provider, apns) = c
            .core
            .providers
            .apns()
            .find(|(id, _)| id.as_str() == self.provider)
            .ok_or(Fault::NotFound("no such APNs app"))?;
        let credentials = self.credentials;
        let info: CredentialInfo = credentials.validate(SystemTime::now()).map_err(refused)?;
        let not_after = info.not_after.map(DateTime::<Utc>::from);
        c.core
            .store
            .save_credentials(provider, &credentials, not_after)
            .await?;
        apns.set_credentials(credentials).map_err(refused)?;
        apns_credential_sync::record(provider, &info, c.core.cert_expiry_warning_days);
        tracing::info!(%provider, kind = info.kind, admin = %admin.to_bare(), "APNs credentials replaced");
        let result = FormBuilder::new("result")
            .field("provider", "text-single", [provider.as_str()])
            .field("kind", "text-single", [info.kind])
            .field(
                "subject",
                "text-single",
                [info.subject.clone().unwrap_or_default()],
            )
            .field("not-after", "text-single", [rfc3339(info.not_after)])
            .build();
        let note = match info.not_after {
            Some(_) => format!(
                "Credentials for {provider} stored; valid until {}",
                rfc3339(info.not_after)
            ),
            None => format!("Token key for {provider} stored"),
        };
        Ok((result, note))
    }
}

pub async fn set_apns_certificate(
    c: &Component,
    from: &Jid,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    admin_only(c, from)?;
    staged(
        req,
        || blank_form(c).build(),
        async |form| {
            let (result, note) = SetApnsCertificate::parse(form)?.apply(c, from).await?;
            Ok(CommandResponse::completed(req, Some(result)).with_note(note))
        },
    )
    .await
}

/// `get-statistics`: the counters `/metrics` serves, as a result form, for admins who live in
/// their XMPP client (Tigase's statistics command does the same). Single stage: no input.
pub async fn get_statistics(
    c: &Component,
    from: &Jid,
    req: &CommandRequest,
) -> Result<CommandResponse, Fault> {
    admin_only(c, from)?;
    if let Err(e) = crate::core::stats::refresh_registrations(&c.core.store).await {
        tracing::warn!("cannot count registrations: {e}");
    }
    let mut form = FormBuilder::new("result").title("pushgate statistics");
    for (name, value) in crate::metrics::samples() {
        form = form.field(&name, "text-single", [value]);
    }
    Ok(CommandResponse::completed(req, Some(form.build())))
}
