//! The UnifiedPush push resource (RFC 8030 as UnifiedPush profiles it): app servers POST a
//! message of at most 4096 bytes to `/up/<token>`, and `fronts/xmpp/unifiedpush` passes it to
//! the distributor.
//!
//! Answers: 201 with `Location` and `TTL: 0` once the distributor has it (pushgate keeps no
//! message for a distributor that is away, and says so with `TTL: 0`, as RFC 8030 §5.2 asks of
//! a push service that does not store); 404 for an endpoint that does not exist (never did,
//! unregistered, revoked, expired: the app server must stop); 413 over 4096 bytes; 503 with
//! `Retry-After` when the distributor did not take it now. `GET` on the resource or on `/up`
//! answers `{"unifiedpush":{"version":1}}`, which distributors use to recognise the server.

use axum::Json;
use axum::body::Body as RawBody;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{BodyError, HttpState, failure, read_body};
use crate::fronts::xmpp::unifiedpush::{MAX_BODY_BYTES, PushOutcome};

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
    body: RawBody,
) -> Response {
    let Some(component) = state.component.as_ref() else {
        return failure(StatusCode::NOT_FOUND, "not found");
    };
    let Some(up) = component.unifiedpush.get() else {
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
    match up.push(component, &token, &bytes).await {
        Ok(PushOutcome::Delivered) => {
            let location = format!("/up/{token}/{}", crate::ids::random_b64(12));
            let mut response = StatusCode::CREATED.into_response();
            let headers = response.headers_mut();
            headers.insert("ttl", HeaderValue::from(0));
            if let Ok(location) = HeaderValue::from_str(&location) {
                headers.insert(header::LOCATION, location);
            }
            response
        }
        Ok(PushOutcome::Gone) => failure(StatusCode::NOT_FOUND, "no such endpoint"),
        Ok(PushOutcome::Unavailable) | Err(_) => {
            let mut response = failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "the distributor did not take it now",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            response
        }
    }
}
