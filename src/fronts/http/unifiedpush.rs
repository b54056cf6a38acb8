//! The UnifiedPush push resource (RFC 8030 as UnifiedPush profiles it): app servers POST a
//! message of at most 4096 bytes to `/up/<token>`, and `fronts/xmpp/unifiedpush` passes it to
//! the distributor.
//!
//! Answers: 201 with `Location` and `TTL: 0` once the distributor has it, or with the `TTL` it
//! is kept for when the distributor is away (the app server's `TTL`, at most `max_ttl_secs`);
//! 404 for an endpoint that does not exist (never did, unregistered, revoked, expired: the app
//! server must stop); 400 for a malformed `TTL`, `Urgency` or `Topic`; 413 over 4096 bytes; 429
//! with `Retry-After` when the endpoint has the most pushes kept it may; 503 with `Retry-After`
//! when the distributor did not take it now and it could not be kept (`TTL: 0`, or pushgate
//! keeps the most it may). `GET` on the resource or on `/up`
//! answers `{"unifiedpush":{"version":1}}`, which distributors use to recognise the server.

use axum::Json;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{BodyError, HttpState, failure, read_body};
use crate::core::unifiedpush::{MAX_BODY_BYTES, PushOptions, PushOutcome};

pub const PUSH_ROUTE: &str = "/up/{token}";
pub const DISCOVERY_ROUTE: &str = "/up";
/// What an app server is asked to wait after a push the distributor did not take.
const RETRY_AFTER_SECS: u32 = 30;

pub async fn discovery() -> Response {
    Json(json!({"unifiedpush": {"version": 1}})).into_response()
}

pub async fn push(
    State(state): State<HttpState>,
    Path(token): Path<String>,
    request: Request,
) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .cloned();
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let Some(component) = state.component.as_ref() else {
        return failure(StatusCode::NOT_FOUND, "not found");
    };
    let Some(up) = component.core.unifiedpush.get() else {
        return failure(StatusCode::NOT_FOUND, "not found");
    };
    let timeout = std::time::Duration::from_secs(state.config.body_timeout_secs);
    let bytes = match read_body(body, MAX_BODY_BYTES, timeout).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            return failure(
                StatusCode::PAYLOAD_TOO_LARGE,
                "a push message is at most 4096 bytes",
            );
        }
        Err(BodyError::Unreadable | BodyError::TimedOut) => {
            return failure(StatusCode::BAD_REQUEST, "cannot read the request body");
        }
    };
    let ip = super::limit::bucket_key(super::limit::client_ip(
        &headers,
        peer.as_ref(),
        state.config.trust_forwarded_for,
    ));
    if let Err(wait) = up.admit(ip, &token) {
        let mut response = failure(StatusCode::TOO_MANY_REQUESTS, "too many pushes");
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(crate::core::rate_limit::retry_after_secs(wait)),
        );
        return response;
    }
    let options = match options(&headers) {
        Ok(o) => o,
        Err(reason) => return failure(StatusCode::BAD_REQUEST, reason),
    };
    let stream = crate::fronts::xmpp::unifiedpush::Stream(component);
    match up
        .push(&component.core.store, &stream, &token, &bytes, &options)
        .await
    {
        Ok(PushOutcome::Delivered) => created(&token, 0),
        Ok(PushOutcome::Kept(ttl)) => created(&token, ttl),
        Ok(PushOutcome::Gone) => failure(StatusCode::NOT_FOUND, "no such endpoint"),
        Ok(PushOutcome::Unauthorized(why)) => failure(
            StatusCode::from_u16(why.status()).unwrap_or(StatusCode::UNAUTHORIZED),
            &why.to_string(),
        ),
        Ok(PushOutcome::EndpointFull) => retry_later(
            StatusCode::TOO_MANY_REQUESTS,
            "too many pushes kept for this endpoint",
        ),
        Ok(PushOutcome::Unavailable) | Err(_) => retry_later(
            StatusCode::SERVICE_UNAVAILABLE,
            "the distributor did not take it now",
        ),
    }
}

/// 201 for a push taken (by the distributor, or kept for `ttl` seconds).
fn created(token: &str, ttl: u32) -> Response {
    let location = format!("/up/{token}/{}", crate::ids::random_b64(12));
    let mut response = StatusCode::CREATED.into_response();
    let headers = response.headers_mut();
    headers.insert("ttl", HeaderValue::from(ttl));
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    response
}

fn retry_later(status: StatusCode, reason: &str) -> Response {
    let mut response = failure(status, reason);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

/// `TTL` (absent: 0, now or never), `Urgency` (absent: normal) and `Topic` (at most 32
/// base64url characters), RFC 8030 §5.2–5.4; `Err` names what is wrong.
fn options(headers: &HeaderMap) -> Result<PushOptions, &'static str> {
    let text = |name: &str| headers.get(name).map(|v| v.to_str().map(str::trim));
    let ttl_secs = match text("ttl") {
        None => 0,
        Some(Ok(t)) => t
            .parse::<u64>()
            .map(|t| u32::try_from(t).unwrap_or(u32::MAX))
            .map_err(|_| "TTL is not a number of seconds")?,
        Some(Err(_)) => return Err("TTL is not a number of seconds"),
    };
    let urgency = match text("urgency") {
        None => "normal".to_owned(),
        Some(Ok(u @ ("very-low" | "low" | "normal" | "high"))) => u.to_owned(),
        Some(_) => return Err("Urgency is one of very-low, low, normal, high"),
    };
    let topic = match text("topic") {
        None => None,
        Some(Ok(t))
            if !t.is_empty()
                && t.len() <= 32
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            Some(t.to_owned())
        }
        Some(_) => return Err("Topic is at most 32 base64url characters"),
    };
    let authorization = match text("authorization") {
        None => None,
        Some(Ok(a)) => Some(a.to_owned()),
        Some(Err(_)) => return Err("Authorization is not text"),
    };
    Ok(PushOptions {
        ttl_secs,
        authorization,
        urgency,
        topic,
    })
}
