//! Health checks and the Prometheus endpoint.
//!
//! `/healthz` answers as long as the process serves HTTP (liveness); `/readyz` only while the
//! component stream is up and the database answers (readiness: a gateway without either loses
//! pushes). Neither is rate limited, and neither says more than "up"/"down" about a failure.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::HttpState;

/// A database that takes longer than this to answer a ping counts as down.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub async fn readyz(State(state): State<HttpState>) -> Response {
    let xmpp_up = *state.connected.borrow();
    let storage_up = match tokio::time::timeout(PING_TIMEOUT, state.core.store.ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            tracing::warn!("readiness: database ping failed: {e}");
            false
        }
        Err(_) => {
            tracing::warn!("readiness: database ping timed out");
            false
        }
    };
    let word = |up: bool| if up { "up" } else { "down" };
    if xmpp_up && storage_up {
        Json(json!({"status": "ok", "xmpp": "up", "storage": "up"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "unavailable",
                "xmpp": word(xmpp_up),
                "storage": word(storage_up),
            })),
        )
            .into_response()
    }
}

pub async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}
