//! Reading a submitted command form: which stage the command is in, and its fields within their
//! length limits (`core/limits.rs`), checked as they are read.

use pushgate_providers::WebPushKeys;

use crate::core::limits::{self, MAX_WEBPUSH_KEY_BYTES};
use crate::error::Fault;
use crate::fronts::xmpp::adhoc::{Action, CommandRequest, CommandResponse};
use crate::fronts::xmpp::forms::Form;
use xmpp_parsers::minidom::Element;

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

/// Runs a command of one or two stages: without a submitted form the client gets `blank` to
/// fill in, with one `run` parses and applies it.
pub async fn staged(
    req: &CommandRequest,
    blank: impl FnOnce() -> Element,
    run: impl AsyncFnOnce(&Form) -> Result<CommandResponse, Fault>,
) -> Result<CommandResponse, Fault> {
    match submitted(req)? {
        None => Ok(CommandResponse::executing(req, blank())),
        Some(form) => run(form).await,
    }
}

/// The field's value, if sent, refused when longer than `max` bytes.
pub fn optional<'a>(
    form: &'a Form,
    var: &'static str,
    max: usize,
) -> Result<Option<&'a str>, Fault> {
    match form.value(var) {
        Some(v) => Ok(Some(limits::within(var, v, max)?)),
        None => Ok(None),
    }
}

pub fn required<'a>(form: &'a Form, var: &'static str, max: usize) -> Result<&'a str, Fault> {
    optional(form, var, max)?.ok_or_else(|| Fault::BadRequest(format!("field '{var}' is required")))
}

/// The optional WebPush subscription keys; both or neither.
pub fn webpush_keys(form: &Form) -> Result<Option<WebPushKeys>, Fault> {
    let key = |var| optional(form, var, MAX_WEBPUSH_KEY_BYTES);
    match (key("p256dh")?, key("auth")?) {
        (Some(p256dh), Some(auth)) => Ok(Some(WebPushKeys {
            p256dh: p256dh.to_owned(),
            auth: auth.to_owned(),
        })),
        (None, None) => Ok(None),
        _ => Err(Fault::BadRequest("p256dh and auth go together".into())),
    }
}
