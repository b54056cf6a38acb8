//! The Matrix front's routes: the body read within the HTTP limits (and the Matrix 512 KiB
//! cap), then `fronts/matrix` for everything the protocol says.

use axum::Json;
use axum::body::Body as RawBody;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::{BodyError, HttpState, read_body};
use crate::fronts::matrix::{self, Answer};

pub const NOTIFY_ROUTE: &str = "/_matrix/push/v1/notify";
/// Everything else under `/_matrix`.
pub const UNRECOGNIZED_ROUTE: &str = "/_matrix/{*rest}";

fn respond((status, body): Answer) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json::<Value>(body)).into_response()
}

pub async fn notify(State(state): State<HttpState>, body: RawBody) -> Response {
    let deadline = tokio::time::Instant::now() + matrix::ANSWER_WITHIN;
    let timeout = std::time::Duration::from_secs(state.config.body_timeout_secs);
    let bytes = match read_body(body, matrix::notify::MAX_BODY_BYTES, timeout).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            return respond((
                413,
                serde_json::json!({"errcode": "M_TOO_LARGE", "error": "request body too large"}),
            ));
        }
        Err(BodyError::Unreadable | BodyError::TimedOut) => {
            return respond((
                400,
                serde_json::json!({"errcode": "M_BAD_JSON", "error": "cannot read the request body"}),
            ));
        }
    };
    respond(state.matrix.notify(&state.core, &bytes, deadline).await)
}

pub async fn discovery() -> Response {
    respond(matrix::discovery())
}

pub async fn method_not_allowed() -> Response {
    respond(matrix::unrecognized(405))
}

pub async fn unrecognized() -> Response {
    respond(matrix::unrecognized(404))
}
