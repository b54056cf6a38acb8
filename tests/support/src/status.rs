//! A local push service for WebPush registrations (RFC 8030,
//! https://www.rfc-editor.org/rfc/rfc8030): an HTTP server on 127.0.0.1 that counts the pushes
//! it gets and answers each with the status the test sets, optionally only once the test
//! releases it, so a test can act while a delivery is in flight (a token declared dead while
//! the device re-registers). It also keeps, per device, the pushes it accepted, and can ask
//! for a Retry-After, for the retry queue's tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode, Uri, header};
use tokio::sync::Notify;

#[derive(Default)]
struct Shared {
    status: AtomicU16,
    /// Seconds sent as `Retry-After` with every error answer; 0: none.
    retry_after: AtomicU64,
    hold: AtomicBool,
    received: AtomicUsize,
    /// `Urgency` and body of the pushes answered 2xx, by the last segment of the path (the
    /// device).
    accepted: Mutex<HashMap<String, Vec<Accepted>>>,
    arrived: Notify,
    release: Notify,
}

/// One accepted push: its `Urgency` header (empty if none) and body.
type Accepted = (String, Vec<u8>);

/// The running endpoint; it stops with the test's runtime.
pub struct PushEndpoint {
    base: String,
    shared: Arc<Shared>,
}

async fn answer(
    axum::extract::State(shared): axum::extract::State<Arc<Shared>>,
    uri: Uri,
    request_headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, HeaderMap) {
    shared.received.fetch_add(1, Ordering::SeqCst);
    // Either wakes a waiting test or leaves a permit for its next wait.
    shared.arrived.notify_one();
    if shared.hold.load(Ordering::SeqCst) {
        shared.release.notified().await;
    }
    let status = StatusCode::from_u16(shared.status.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    if status.is_success() {
        let device = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
        let urgency = request_headers
            .get("urgency")
            .and_then(|u| u.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        shared
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(device)
            .or_default()
            .push((urgency, body.to_vec()));
    } else {
        let after = shared.retry_after.load(Ordering::SeqCst);
        if after > 0 {
            headers.insert(header::RETRY_AFTER, after.into());
        }
    }
    (status, headers)
}

impl PushEndpoint {
    /// Answers `201 Created` (a push accepted) until told otherwise.
    pub async fn start() -> PushEndpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared::default());
        shared.status.store(201, Ordering::SeqCst);
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        PushEndpoint {
            base: format!("http://{addr}"),
            shared,
        }
    }

    /// A subscription URL on this endpoint (the device token of a WebPush registration).
    pub fn url(&self, device: &str) -> String {
        format!("{}/push/{device}", self.base)
    }

    /// The status every following push is answered with.
    pub fn answer_with(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Error answers from now on carry `Retry-After: secs` (0: none).
    pub fn retry_after(&self, secs: u64) {
        self.shared.retry_after.store(secs, Ordering::SeqCst);
    }

    /// Pushes to `device` (the name given to [`PushEndpoint::url`]) answered 2xx.
    pub fn accepted_for(&self, device: &str) -> usize {
        self.bodies_for(device).len()
    }

    /// The bodies of the pushes to `device` answered 2xx, oldest first (encrypted unless the
    /// registration has no WebPush keys).
    pub fn bodies_for(&self, device: &str) -> Vec<Vec<u8>> {
        self.accepted(device).into_iter().map(|(_, b)| b).collect()
    }

    /// The `Urgency` headers (empty when there was none) of the pushes to `device` answered
    /// 2xx, oldest first.
    pub fn urgencies_for(&self, device: &str) -> Vec<String> {
        self.accepted(device).into_iter().map(|(u, _)| u).collect()
    }

    fn accepted(&self, device: &str) -> Vec<Accepted> {
        self.shared
            .accepted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned()
            .unwrap_or_default()
    }

    /// Pushes wait for [`PushEndpoint::release`] before they are answered.
    pub fn hold(&self) {
        self.shared.hold.store(true, Ordering::SeqCst);
    }

    /// Answers one held push.
    pub fn release(&self) {
        self.shared.release.notify_one();
    }

    /// Waits until a push has arrived (one not waited for before).
    pub async fn arrived(&self) {
        self.shared.arrived.notified().await;
    }

    /// How many pushes arrived.
    pub fn received(&self) -> usize {
        self.shared.received.load(Ordering::SeqCst)
    }
}
