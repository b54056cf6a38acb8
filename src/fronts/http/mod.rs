//! The HTTP side of pushgate (`[http]`): Siskin's REST unregister, health checks, `/metrics`.
//!
//! | Route | What |
//! |---|---|
//! | `POST /unregister-device/{component-jid}`, `POST /rest/push/unregister-device/{component-jid}` | [`unregister`] (rate limited per client IP, body ≤ `max_body_bytes`) |
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 while the component stream is up and the database answers, else 503 |
//! | `GET /metrics` | Prometheus text format |
//! | `POST /_matrix/push/v1/notify` | the Matrix push gateway front (`fronts/matrix`), body ≤ 512 KiB |
//! | `GET /_matrix/push/v1/notify` | `{"unifiedpush":{"gateway":"matrix"}}` (UnifiedPush discovery) |
//! | `POST /up/{token}` | a UnifiedPush endpoint ([`unifiedpush`]), body ≤ 4096 bytes |
//! | `GET /up`, `GET /up/{token}` | `{"unifiedpush":{"version":1}}` |
//! | `POST /push`, `POST`/`DELETE /v2/tokens/{account}`, `POST /v2/tokens/{account}/push[/{device}]` | the SIP API (`fronts/sip`), from `sip.allowed_networks` only, body ≤ 16 KiB |
//!
//! Under `/_matrix` unknown paths and methods are answered as Matrix does (`M_UNRECOGNIZED`).
//!
//! Every answer is JSON except `/metrics`; unknown routes get 404, a wrong method 405. Each
//! request runs in a `http` tracing span (method, route template, status) and is counted in
//! `pushgate_http_requests_total{route,status}`, where `route` is the matched template (never
//! the raw path, which a client chooses) or `unmatched`.
//!
//! Connections are served by [`server`] (not `axum::serve`), which bounds how long a client may
//! take over its request head, body and idle keep-alive, caps open connections, and bounds
//! shutdown; its module doc says what happens at the cap.

mod conns;
mod health;
pub mod limit;
mod matrix;
pub mod server;
mod sip;
mod unifiedpush;
pub(crate) mod unregister;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::HttpConfig;
use crate::core::Core;
use crate::core::rate_limit::{RateLimiter, retry_after_secs};
use crate::ids::BareJid;
use crate::metrics::METRICS;
pub use server::{ServeLimits, serve_on};

/// The unregister route templates (also the `route` label values).
pub const UNREGISTER_ROUTE: &str = "/unregister-device/{component}";
pub const REST_UNREGISTER_ROUTE: &str = "/rest/push/unregister-device/{component}";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("http.listen: '{0}' is not ip:port")]
    BadListen(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct HttpState {
    pub core: Arc<Core>,
    /// The XMPP component's JID, which the REST unregister paths carry.
    pub component_jid: BareJid,
    pub config: Arc<HttpConfig>,
    /// Whether the component stream is up (readiness).
    pub connected: watch::Receiver<bool>,
    /// The Matrix front (`[matrix]`).
    pub matrix: Arc<crate::fronts::matrix::Matrix>,
    /// The XMPP component, for UnifiedPush endpoints (`[unifiedpush]`).
    pub component: Option<Arc<crate::fronts::xmpp::Component>>,
    /// The SIP API (`[sip]`).
    pub sip: Arc<crate::fronts::sip::Sip>,
    limiter: Arc<RateLimiter>,
}

impl HttpState {
    pub fn new(
        core: Arc<Core>,
        component_jid: BareJid,
        config: HttpConfig,
        connected: watch::Receiver<bool>,
    ) -> Self {
        let limiter = Arc::new(RateLimiter::new(config.rate_limit_per_minute));
        HttpState {
            core,
            component_jid,
            config: Arc::new(config),
            connected,
            matrix: Arc::default(),
            component: None,
            sip: Arc::default(),
            limiter,
        }
    }

    /// Serves the Matrix push gateway with `matrix`'s apps.
    pub fn with_matrix(mut self, matrix: crate::fronts::matrix::Matrix) -> Self {
        self.matrix = Arc::new(matrix);
        self
    }

    /// Serves the SIP API with `sip`'s apps.
    pub fn with_sip(mut self, sip: Arc<crate::fronts::sip::Sip>) -> Self {
        self.sip = sip;
        self
    }

    /// Serves UnifiedPush endpoints through `component` (when its `unifiedpush` is set).
    pub fn with_component(mut self, component: Arc<crate::fronts::xmpp::Component>) -> Self {
        self.component = Some(component);
        self
    }
}

/// Why a request body could not be read.
pub(crate) enum BodyError {
    TooLarge,
    Unreadable,
    TimedOut,
}

/// The whole body, at most `limit` bytes, within `timeout` of the head: a client that trickles
/// its body holds a connection and a handler for no longer than that. Each route answers the
/// error in its own API's form.
pub(crate) async fn read_body(
    body: axum::body::Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<axum::body::Bytes, BodyError> {
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Ok(Err(e)) => {
            tracing::debug!("cannot read request body: {e}");
            Err(BodyError::Unreadable)
        }
        Err(_) => {
            tracing::debug!("request body not complete within {} s", timeout.as_secs());
            Err(BodyError::TimedOut)
        }
    }
}

/// `{"result":"failure","reason":…}` with `status`.
pub(crate) fn failure(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({"result": "failure", "reason": reason}))).into_response()
}

/// All routes, with state, limits, tracing and metrics. Serve it with [`serve_on`], which
/// gives each request its peer address (`ConnectInfo<SocketAddr>`): without it every client
/// shares one rate-limit bucket.
pub fn router(state: HttpState) -> Router {
    let unregister = Router::new()
        .route(UNREGISTER_ROUTE, post(unregister::unregister))
        .route(REST_UNREGISTER_ROUTE, post(unregister::unregister))
        .route_layer(middleware::from_fn_with_state(state.clone(), rate_limit));
    let sip_routes = Router::new()
        .route(sip::PUSH_ROUTE, post(sip::push))
        .route(sip::TOKENS_ROUTE, post(sip::store).delete(sip::remove))
        .route(sip::ACCOUNT_PUSH_ROUTE, post(sip::push_account))
        .route(sip::DEVICE_PUSH_ROUTE, post(sip::push_device))
        .route_layer(middleware::from_fn_with_state(state.clone(), sip::allowed));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route(
            matrix::NOTIFY_ROUTE,
            post(matrix::notify)
                .get(matrix::discovery)
                .fallback(matrix::method_not_allowed),
        )
        .route(
            matrix::UNRECOGNIZED_ROUTE,
            axum::routing::any(matrix::unrecognized),
        )
        .route(
            unifiedpush::PUSH_ROUTE,
            post(unifiedpush::push).get(unifiedpush::discovery),
        )
        .route(unifiedpush::DISCOVERY_ROUTE, get(unifiedpush::discovery))
        .merge(unregister)
        .merge(sip_routes)
        .fallback(|| async { failure(StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn(observe))
        .with_state(state)
}

/// The other fronts whose HTTP routes the listener serves.
#[derive(Default)]
pub struct Fronts {
    pub matrix: crate::fronts::matrix::Matrix,
    /// The XMPP component, for UnifiedPush endpoints.
    pub component: Option<Arc<crate::fronts::xmpp::Component>>,
    /// The SIP API.
    pub sip: Arc<crate::fronts::sip::Sip>,
}

/// Binds `config.listen` and serves until `shutdown` turns true (then busy connections get
/// `shutdown_timeout`). Without `listen` there is no server: this just waits for shutdown, so
/// callers can run it unconditionally.
pub async fn serve(
    core: Arc<Core>,
    component_jid: BareJid,
    config: HttpConfig,
    fronts: Fronts,
    shutdown_timeout: std::time::Duration,
    connected: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), HttpError> {
    let Some(listen) = config.listen.clone() else {
        let _ = shutdown.wait_for(|stop| *stop).await;
        return Ok(());
    };
    let addr: SocketAddr = listen.parse().map_err(|_| HttpError::BadListen(listen))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    tracing::info!(
        max_connections = config.max_connections,
        "HTTP server listening on {addr}"
    );
    let limits = ServeLimits::new(&config, shutdown_timeout);
    let mut state = HttpState::new(core, component_jid, config, connected)
        .with_matrix(fronts.matrix)
        .with_sip(fronts.sip);
    if let Some(component) = fronts.component {
        state = state.with_component(component);
    }
    let router = router(state);
    serve_on(listener, router, limits, shutdown).await;
    Ok(())
}

/// Outermost layer: tracing span, request counter, JSON body for 405.
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let span = tracing::info_span!(
        "http",
        method = %req.method(),
        route = %route,
        status = tracing::field::Empty
    );
    let mut response = next.run(req).instrument(span.clone()).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        // axum answers 405 with an empty body (and an Allow header, which we keep).
        let allow = response.headers().get(header::ALLOW).cloned();
        response = failure(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        if let Some(allow) = allow {
            response.headers_mut().insert(header::ALLOW, allow);
        }
    }
    let status = response.status();
    span.record("status", status.as_u16());
    span.in_scope(|| tracing::debug!("answered"));
    METRICS
        .http_requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    response
}

/// Per-client-IP token bucket on the public routes; 429 with `Retry-After` when empty.
async fn rate_limit(State(state): State<HttpState>, req: Request, next: Next) -> Response {
    let ip = limit::client_ip(
        req.headers(),
        req.extensions().get::<ConnectInfo<SocketAddr>>(),
        state.config.trust_forwarded_for,
    );
    match state.limiter.check(limit::bucket_key(ip)) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            tracing::debug!("rate limited");
            let mut response = failure(StatusCode::TOO_MANY_REQUESTS, "too many requests");
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
            response
        }
    }
}
