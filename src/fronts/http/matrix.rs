//! The Matrix front's routes: the body read within the HTTP limits (and the Matrix 512 KiB
//! cap), then `fronts/matrix` for everything the protocol says.

use axum::Json;
use axum::body::Body as RawBody;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::Value;

use super::HttpState;
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
    let limit = Limited::new(body, matrix::notify::MAX_BODY_BYTES);
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(state.config.body_timeout_secs),
        limit.collect(),
    )
    .await;
    let bytes = match read {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return respond((
                413,
                serde_json::json!({"errcode": "M_TOO_LARGE", "error": "request body too large"}),
            ));
        }
        Ok(Err(_)) | Err(_) => {
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
