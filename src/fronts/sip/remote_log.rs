//! Remote result logging (Sylk's `log_remote_urls`): each push's `{request, response}` is POSTed
//! to the app's configured URLs, so a customer can audit the pushes made for them.
//!
//! Bounded and off the push path: entries wait in a queue of [`QUEUED`]; when it is full they
//! are dropped and counted, never waited for. At most [`IN_FLIGHT`] posts run at once, each
//! within [`POST_TIMEOUT`], so a slow or dead logger costs memory that is bounded and no push
//! any time.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use crate::metrics::METRICS;

const QUEUED: usize = 10_000;
const IN_FLIGHT: usize = 16;
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where one app's entries go.
pub type Urls = Arc<[String]>;

/// The sending half; cheap to clone.
#[derive(Clone)]
pub struct RemoteLog {
    queue: mpsc::Sender<(Urls, Vec<u8>)>,
}

impl RemoteLog {
    /// Starts the poster; it ends when every `RemoteLog` is dropped.
    pub fn start() -> Self {
        let (queue, rx) = mpsc::channel(QUEUED);
        tokio::spawn(post_all(rx));
        RemoteLog { queue }
    }

    /// Queues `{request, response}` for `urls`, or drops it if the queue is full.
    pub fn log(&self, urls: &Urls, request: &Value, response: &Value) {
        if urls.is_empty() {
            return;
        }
        let body = serde_json::json!({ "request": request, "response": response }).to_string();
        if self
            .queue
            .try_send((urls.clone(), body.into_bytes()))
            .is_err()
        {
            METRICS.sip_remote_log.with_label_values(&["dropped"]).inc();
            tracing::debug!("remote log queue full: entry dropped");
        }
    }
}

async fn post_all(mut rx: mpsc::Receiver<(Urls, Vec<u8>)>) {
    let client = match pushgate_providers::http_client_builder(POST_TIMEOUT)
        .timeout(POST_TIMEOUT)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot build the remote log client: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some((urls, body)) = rx.recv().await {
        for url in urls.iter() {
            let Ok(pass) = slots.clone().acquire_owned().await else {
                return;
            };
            let request = client
                .post(url.as_str())
                .header("content-type", "application/json")
                .body(body.clone());
            tokio::spawn(async move {
                let outcome = match request.send().await {
                    Ok(r) if r.status().is_success() => "sent",
                    Ok(r) => {
                        tracing::debug!(
                            status = r.status().as_u16(),
                            "remote log refused an entry"
                        );
                        "failed"
                    }
                    Err(e) => {
                        tracing::debug!("remote log post failed: {e}");
                        "failed"
                    }
                };
                METRICS.sip_remote_log.with_label_values(&[outcome]).inc();
                drop(pass);
            });
        }
    }
}
