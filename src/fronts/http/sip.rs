//! The SIP API's routes (`fronts/sip`): the caller's network checked against
//! `sip.allowed_networks`, the body read within the HTTP limits and the API's 16 KiB, then
//! `fronts/sip` for everything the protocol says.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{BodyError, HttpState, limit, read_body};
use crate::fronts::sip::{self, Answer, request::MAX_BODY_BYTES};

pub const PUSH_ROUTE: &str = "/push";
pub const TOKENS_ROUTE: &str = "/v2/tokens/{account}";
pub const ACCOUNT_PUSH_ROUTE: &str = "/v2/tokens/{account}/push";
pub const DEVICE_PUSH_ROUTE: &str = "/v2/tokens/{account}/push/{device}";

fn respond((status, body): Answer) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json::<Value>(body)).into_response()
}

/// 403 for callers outside `sip.allowed_networks`, before anything else is read.
pub async fn allowed(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    let ip = limit::client_ip(
        req.headers(),
        req.extensions().get::<ConnectInfo<SocketAddr>>(),
        state.config.trust_forwarded_for,
    );
    if !state.sip.config().allows(ip) {
        tracing::info!(%ip, "SIP API call from outside sip.allowed_networks: refused");
        return respond(sip::answer(403, "access denied by access list", json!({})));
    }
    next.run(req).await
}

async fn body(state: &HttpState, body: Body) -> Result<axum::body::Bytes, Response> {
    let timeout = std::time::Duration::from_secs(state.config.body_timeout_secs);
    let limit = MAX_BODY_BYTES.min(state.config.max_body_bytes.max(MAX_BODY_BYTES));
    read_body(body, limit, timeout).await.map_err(|e| {
        respond(match e {
            BodyError::TooLarge => sip::answer(413, "request body too large", json!({})),
            BodyError::Unreadable | BodyError::TimedOut => {
                sip::answer(400, "cannot read the request body", json!({}))
            }
        })
    })
}

/// A path that is not UTF-8 once decoded, in the API's answer shape.
fn bad_path(e: PathRejection) -> Response {
    tracing::debug!("SIP API path refused: {e}");
    respond(sip::answer(400, "the path is not valid UTF-8", json!({})))
}

// Handlers answer `Err` with the body-reading error's response.
type Answered = Result<Response, Response>;

pub async fn push(State(state): State<HttpState>, raw: Body) -> Answered {
    let bytes = body(&state, raw).await?;
    Ok(respond(state.sip.push(&state.core, &bytes).await))
}

pub async fn store(
    State(state): State<HttpState>,
    account: Result<Path<String>, PathRejection>,
    raw: Body,
) -> Answered {
    let Path(account) = account.map_err(bad_path)?;
    let bytes = body(&state, raw).await?;
    Ok(respond(
        state.sip.store(&state.core, &account, &bytes).await,
    ))
}

pub async fn remove(
    State(state): State<HttpState>,
    account: Result<Path<String>, PathRejection>,
    raw: Body,
) -> Answered {
    let Path(account) = account.map_err(bad_path)?;
    let bytes = body(&state, raw).await?;
    Ok(respond(
        state.sip.remove(&state.core, &account, &bytes).await,
    ))
}

pub async fn push_account(
    State(state): State<HttpState>,
    account: Result<Path<String>, PathRejection>,
    raw: Body,
) -> Answered {
    let Path(account) = account.map_err(bad_path)?;
    let bytes = body(&state, raw).await?;
    let sip = &state.sip;
    Ok(respond(
        sip.push_account(&state.core, &account, None, &bytes).await,
    ))
}

pub async fn push_device(
    State(state): State<HttpState>,
    path: Result<Path<(String, String)>, PathRejection>,
    raw: Body,
) -> Answered {
    let Path((account, device)) = path.map_err(bad_path)?;
    let bytes = body(&state, raw).await?;
    let sip = &state.sip;
    Ok(respond(
        sip.push_account(&state.core, &account, Some(&device), &bytes)
            .await,
    ))
}
