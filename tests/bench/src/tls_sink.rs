//! What the APNs and FCM sinks share: a throw-away CA and server certificate for 127.0.0.1
//! (the CA written to the run's temp dir, for the provider's `ca_file`), and an HTTP/2-over-TLS
//! server (ALPN `h2` only, as Apple and Google speak it) that hands each request to a handler.
//!
//! Why it exists: pushgate's APNs and FCM clients only talk HTTP/2 over TLS, so a sink that
//! measures them must too; the two sinks differ only in what they answer.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::Request;
use hyper::body::{Bytes, Incoming};
use pushgate_test_support::pki::Pki;
use pushgate_test_support::serve;

use crate::webpush_sink::sequence_in;
use crate::{BoxError, Times};

/// Request bodies above this are refused (APNs payloads are ≤ 5 KiB, FCM's ≤ 4 KiB of data).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// What APNs advertises once a connection is trusted; hyper's default is 200.
const MAX_CONCURRENT_STREAMS: u32 = 1000;

pub(crate) use serve::{Answer, empty, json};

/// A sink's request handler; one per sink, shared by all connections.
pub(crate) trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request<Incoming>) -> impl Future<Output = Answer> + Send;
}

/// Counters every TLS sink keeps.
#[derive(Default)]
pub(crate) struct Counts {
    /// Requests answered 2xx on the delivery path (not the token endpoint).
    pub(crate) accepted: AtomicU64,
    /// Requests refused (missing credentials, wrong path, …).
    pub(crate) refused: AtomicU64,
}

impl Counts {
    pub(crate) fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// A listening sink: where it is and the CA file that makes pushgate trust it.
pub(crate) struct Listening {
    pub(crate) base_url: String,
    pub(crate) ca_file: PathBuf,
}

/// Generates a CA and a server certificate for 127.0.0.1, writes the CA to `dir/<name>-ca.pem`,
/// binds 127.0.0.1:0 and serves `handler` there until the process ends.
pub(crate) async fn start<H: Handler>(
    dir: &Path,
    name: &str,
    handler: Arc<H>,
) -> Result<Listening, BoxError> {
    let pki = Pki::generate(&format!("pushgate-bench {name} CA"))?;
    let ca_file = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_file, &pki.ca_pem)?;
    let (listener, acceptor) = serve::bind_h2(&pki, false).await?;
    let base_url = format!("https://{}", listener.local_addr()?);
    tokio::spawn(serve::accept_tls(listener, acceptor, move || {
        let handler = handler.clone();
        move |tls| {
            serve::serve_h2(
                tls,
                move |req| {
                    let handler = handler.clone();
                    async move { handler.handle(req).await }
                },
                Some(MAX_CONCURRENT_STREAMS),
            )
        }
    }));
    Ok(Listening { base_url, ca_file })
}

/// The request body, at most [`MAX_BODY_BYTES`]; `None` if it is larger or the stream broke.
pub(crate) async fn body(incoming: Incoming) -> Option<Bytes> {
    serve::body(incoming, MAX_BODY_BYTES).await
}

/// Records when the body carrying `bench-<seq>` arrived.
pub(crate) fn mark_delivery(times: &Times, body: &[u8]) {
    if let Some(seq) = sequence_in(body) {
        Times::mark(&times.delivered, seq, times.now());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    /// An HTTP/2-only client that trusts the sink's CA, as pushgate's clients are.
    pub(crate) fn client(ca_file: &Path) -> reqwest::Client {
        pushgate_test_support::install_crypto_provider();
        let pem = std::fs::read(ca_file).unwrap();
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .build()
            .unwrap()
    }
}
