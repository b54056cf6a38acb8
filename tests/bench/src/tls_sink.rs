//! What the APNs and FCM sinks share: a throw-away CA and server certificate for 127.0.0.1
//! (the CA written to the run's temp dir, for the provider's `ca_file`), and an HTTP/2-over-TLS
//! server (ALPN `h2` only, as Apple and Google speak it) that hands each request to a handler.
//!
//! Why it exists: pushgate's APNs and FCM clients only talk HTTP/2 over TLS, so a sink that
//! measures them must too; the two sinks differ only in what they answer.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;

use crate::webpush_sink::sequence_in;
use crate::{BoxError, Times};

/// Request bodies above this are refused (APNs payloads are ≤ 5 KiB, FCM's ≤ 4 KiB of data).
const MAX_BODY_BYTES: usize = 64 * 1024;
/// What APNs advertises once a connection is trusted; hyper's default is 200.
const MAX_CONCURRENT_STREAMS: u32 = 1000;

/// One request's answer.
pub(crate) type Answer = Response<Full<Bytes>>;

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
    let (ca_pem, cert, key) = certificates(name)?;
    let ca_file = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&ca_file, ca_pem)?;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], PrivateKeyDer::Pkcs8(key))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base_url = format!("https://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(connection(tcp, acceptor.clone(), handler.clone()));
        }
    });
    Ok(Listening { base_url, ca_file })
}

async fn connection<H: Handler>(
    tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    handler: Arc<H>,
) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    let service = hyper::service::service_fn(move |req| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.handle(req).await) }
    });
    let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .auto_date_header(false)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await;
}

/// (CA PEM, server certificate, server key) for 127.0.0.1 and localhost.
fn certificates(
    name: &str,
) -> Result<(String, CertificateDer<'static>, PrivatePkcs8KeyDer<'static>), BoxError> {
    let dn = |cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn
    };
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = dn(&format!("pushgate-bench {name} CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
    params.distinguished_name = dn("localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.signed_by(&key, &ca)?;
    Ok((
        ca.pem(),
        cert.der().clone(),
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    ))
}

/// The request body, at most [`MAX_BODY_BYTES`]; `None` if it is larger or the stream broke.
pub(crate) async fn body(incoming: Incoming) -> Option<Bytes> {
    Limited::new(incoming, MAX_BODY_BYTES)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

/// Records when the body carrying `bench-<seq>` arrived.
pub(crate) fn mark_delivery(times: &Times, body: &[u8]) {
    if let Some(seq) = sequence_in(body) {
        Times::mark(&times.delivered, seq, times.now());
    }
}

/// An answer with a status and a JSON body.
pub(crate) fn json(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// An answer with a status and no body.
pub(crate) fn empty(status: StatusCode) -> Answer {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    /// An HTTP/2-only client that trusts the sink's CA, as pushgate's clients are.
    pub(crate) fn client(ca_file: &Path) -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pem = std::fs::read(ca_file).unwrap();
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
            .build()
            .unwrap()
    }
}
