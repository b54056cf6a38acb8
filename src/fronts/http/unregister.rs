//! Siskin's HTTP unregister (Tigase REST API): `POST /unregister-device/{component-jid}` and
//! `POST /rest/push/unregister-device/{component-jid}` with
//! `{"account": "user@example.org", "provider": "…", "device-token": "…"}`.
//!
//! Siskin calls this when the app can no longer log in (account deleted, password changed), so
//! the request carries no credential but the device token itself: whoever knows the token of a
//! registration may remove it, exactly as with the `unregister-device` command.
//!
//! **Failures are 404 `{"result":"failure","reason":…}`**, as in Tigase, so an outsider cannot
//! tell a wrong component JID from an unknown account, provider or token. The reason is the
//! generic `"not found"` for all of those (wrong component JID, account not a JID, unknown
//! provider, no such registration, already removed); only a malformed request (body not JSON,
//! a field missing, empty, not a string or longer than its limit in `core::limits`) gets a
//! specific reason, because that reveals nothing about what is stored and helps whoever wrote
//! the client. Siskin itself only looks at `result`.
//! Bodies over `http.max_body_bytes` get 413, bodies not complete within
//! `http.body_timeout_secs` 408, a storage failure 503 (retry later); the `Content-Type` is not
//! checked and unknown extra fields are ignored.

use std::time::Duration;

use axum::Json;
use axum::body::Body as RawBody;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{BodyError, HttpState, failure, read_body};
use crate::core::limits::{self, MAX_JID_BYTES, MAX_PROVIDER_ID_BYTES, MAX_TOKEN_BYTES};
use crate::core::registry;
use crate::error::Fault;
use crate::ids::{BareJid, DeviceIdentity, DeviceToken};

/// The request body. Fields are optional here so that a missing one is named in the answer.
#[derive(Deserialize)]
struct Body {
    account: Option<String>,
    provider: Option<String>,
    #[serde(rename = "device-token")]
    device_token: Option<String>,
}

fn not_found() -> Response {
    failure(StatusCode::NOT_FOUND, "not found")
}

/// A required, non-empty string field of at most `max` bytes; `Err` is the reason to answer
/// with.
fn field<'a>(value: &'a Option<String>, name: &'static str, max: usize) -> Result<&'a str, String> {
    // Not trimmed: the token must match what `register-device` stored, byte for byte.
    match value.as_deref() {
        Some(v) if !v.trim().is_empty() => limits::within(name, v, max).map_err(|r| r.to_string()),
        Some(_) => Err(format!("field '{name}' is empty")),
        None => Err(format!("field '{name}' is missing")),
    }
}

/// What a well-formed unregister request asks for.
pub(crate) struct Request {
    pub account: BareJid,
    pub provider: String,
    pub token: String,
}

/// Why a request is refused: malformed (a reason that reveals nothing stored), or the generic
/// "not found".
pub(crate) enum Refused {
    Malformed(String),
    NotFound,
}

/// Reads a request body: JSON, the three fields, then the account JID.
pub(crate) fn parse(body: &[u8]) -> Result<Request, Refused> {
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        Refused::Malformed(format!("malformed JSON body: {}", json_error_class(&e)))
    })?;
    let (account, provider, token) = match (
        field(&body.account, "account", MAX_JID_BYTES),
        field(&body.provider, "provider", MAX_PROVIDER_ID_BYTES),
        field(&body.device_token, "device-token", MAX_TOKEN_BYTES),
    ) {
        (Ok(a), Ok(p), Ok(t)) => (a, p, t),
        (Err(reason), _, _) | (_, Err(reason), _) | (_, _, Err(reason)) => {
            return Err(Refused::Malformed(reason));
        }
    };
    let account = BareJid::new(account).map_err(|_| Refused::NotFound)?;
    Ok(Request {
        account,
        provider: provider.to_owned(),
        token: token.to_owned(),
    })
}

pub async fn unregister(
    State(state): State<HttpState>,
    Path(component): Path<String>,
    body: RawBody,
) -> Response {
    let body = match read_body(
        body,
        state.config.max_body_bytes,
        Duration::from_secs(state.config.body_timeout_secs),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => return body_failure(e),
    };
    if BareJid::new(&component).ok().as_ref() != Some(&state.component_jid) {
        return not_found();
    }
    let Request {
        account,
        provider,
        token,
    } = match parse(&body) {
        Ok(request) => request,
        Err(Refused::Malformed(reason)) => return failure(StatusCode::NOT_FOUND, &reason),
        Err(Refused::NotFound) => return not_found(),
    };
    let device = DeviceIdentity::Token(DeviceToken::new(token));
    match registry::unregister(&state.core, &provider, &account, &device).await {
        Ok(()) => Json(json!({"result": "success"})).into_response(),
        Err(Fault::Transient(e)) => {
            tracing::error!("HTTP unregister: {e}");
            failure(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable")
        }
        Err(_) => not_found(),
    }
}

/// The answer to a body [`read_body`] could not read, in this API's `failure` form.
fn body_failure(e: BodyError) -> Response {
    match e {
        BodyError::TooLarge => failure(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
        BodyError::Unreadable => failure(StatusCode::BAD_REQUEST, "cannot read request body"),
        BodyError::TimedOut => {
            let mut answer = failure(StatusCode::REQUEST_TIMEOUT, "request body timeout");
            // The rest of the body may never come: do not wait for it to reuse the connection.
            answer
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            answer
        }
    }
}

/// What kind of JSON error, without echoing any of the input.
fn json_error_class(e: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax => "syntax error",
        Category::Eof => "unexpected end of input",
        Category::Data => "expected an object of strings",
        Category::Io => "cannot read",
    }
}
