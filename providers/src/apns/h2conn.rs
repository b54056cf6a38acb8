//! A pool of long-lived HTTP/2-over-TLS connections to one origin, spoken to with the `h2` crate
//! directly: one connection per slot, used round-robin by the caller.
//!
//! Why it exists: on the APNs send path reqwest cost more CPU than the push itself (a URL parse
//! per push, a pool checkout, tower services, boxed bodies and futures, timeout wrappers). Here
//! the origin (scheme, authority, TLS settings) is worked out once, a request is an
//! `http::Request<()>` plus a `Bytes` body on an existing `h2::client::SendRequest`, and the
//! deadline is one timer. Nothing in here knows about APNs, so another HTTP/2 provider could
//! use it.
//!
//! What a connection does: TCP connect and TLS (ALPN `h2` only, the platform's roots plus
//! `ca_file`'s, the client certificate for certificate auth) within the connect timeout; its
//! task drives the connection and, with a PING interval, PINGs it so a connection that died
//! silently is noticed. A connection whose task ended (closed by the peer, GOAWAY, failed PING)
//! or that refused a new stream is replaced on the next send through its slot, by one connect at
//! a time: senders that arrive meanwhile wait for that connect (and share its failure) instead
//! of opening connections of their own. The peer's SETTINGS_MAX_CONCURRENT_STREAMS is respected
//! (`SendRequest::ready`, and h2 queues streams beyond it). Response bodies are read up to a cap,
//! releasing flow-control capacity as they go.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// How the connections are made and kept.
#[derive(Clone)]
pub(crate) struct Settings {
    /// Trusted on top of the platform's roots (`ca_file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Bound on TCP connect, TLS and the HTTP/2 handshake; also how long a PING may go
    /// unanswered.
    pub connect_timeout: Duration,
    /// PING interval; `None` sends no PINGs.
    pub ping_interval: Option<Duration>,
}

/// Why a pool cannot be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error("not an https:// URL with a host")]
    NotHttps,
    #[error("unusable host: {0}")]
    Host(String),
    #[error("cannot configure TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("unusable client certificate: {0}")]
    Identity(String),
}

/// Why no connection could be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("TCP connect failed: {0}")]
    Tcp(#[source] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error("the server did not agree to HTTP/2 (ALPN {0:?})")]
    NotH2(String),
    #[error("HTTP/2 handshake failed: {0}")]
    Handshake(#[source] h2::Error),
    #[error("no connection within the connect timeout")]
    Timeout,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection (shared by the senders that waited for the same connect).
    #[error("{0}")]
    Connect(#[source] Arc<ConnectError>),
    /// The connection or the stream failed after it was opened.
    #[error("{0}")]
    Request(#[source] h2::Error),
    /// The deadline passed before the response head arrived.
    #[error("deadline passed")]
    Timeout,
}

impl SendError {
    /// Whether the peer or the network failed (another connection may work), rather than the
    /// deadline.
    pub(crate) fn is_connection_error(&self) -> bool {
        match self {
            SendError::Connect(e) => !matches!(**e, ConnectError::Timeout),
            SendError::Request(_) => true,
            SendError::Timeout => false,
        }
    }

    /// Whether the deadline (of the request or of the connect) passed.
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, SendError::Timeout)
            || matches!(self, SendError::Connect(e) if matches!(**e, ConnectError::Timeout))
    }
}

/// An answer: the head and at most `max_body` bytes of the body.
pub(crate) struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// What every connection of a pool shares.
struct Origin {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The base URL's path without the trailing `/`, put before every request path.
    path_prefix: String,
    /// Where to connect: the host without IPv6 brackets, and the port.
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    ping_interval: Option<Duration>,
}

/// A connection in use.
struct Live {
    send: SendRequest<Bytes>,
    /// Set when its task ended or it refused a new stream.
    closed: Arc<AtomicBool>,
}

#[derive(Default)]
struct Slot {
    live: Mutex<Option<Live>>,
    /// Held while connecting; keeps the last connect failure for those who waited for it.
    connecting: tokio::sync::Mutex<Option<Arc<ConnectError>>>,
    /// Connects that failed so far, so a waiter can tell that the one it waited for failed.
    failures: AtomicU64,
}

/// `size` connection slots to one origin, connected lazily.
pub(crate) struct Pool {
    origin: Arc<Origin>,
    slots: Box<[Slot]>,
    next: AtomicUsize,
}

impl Pool {
    /// A pool to `base_url` (`https://host[:port][/prefix]`); `identity_pem` is the TLS client
    /// certificate (PEM private key and certificate chain) for certificate auth.
    pub(crate) fn build(
        size: usize,
        base_url: &str,
        settings: &Settings,
        identity_pem: Option<&str>,
    ) -> Result<Self, BuildError> {
        let url = url::Url::parse(base_url).map_err(|_| BuildError::NotHttps)?;
        if url.scheme() != "https" {
            return Err(BuildError::NotHttps);
        }
        let (host, server_name) = match url.host() {
            Some(url::Host::Domain(d)) => (
                d.to_owned(),
                ServerName::try_from(d.to_owned()).map_err(|e| BuildError::Host(e.to_string()))?,
            ),
            Some(url::Host::Ipv4(ip)) => {
                (ip.to_string(), ServerName::from(std::net::IpAddr::V4(ip)))
            }
            Some(url::Host::Ipv6(ip)) => {
                (ip.to_string(), ServerName::from(std::net::IpAddr::V6(ip)))
            }
            None => return Err(BuildError::NotHttps),
        };
        let port = url.port().unwrap_or(443);
        let authority_text = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let authority = http::uri::Authority::try_from(authority_text.as_str())
            .map_err(|e| BuildError::Host(e.to_string()))?;
        let origin = Origin {
            scheme: http::uri::Scheme::HTTPS,
            authority,
            path_prefix: url.path().trim_end_matches('/').to_owned(),
            host,
            port,
            server_name,
            tls: tls_connector(settings, identity_pem)?,
            connect_timeout: settings.connect_timeout,
            ping_interval: settings.ping_interval,
        };
        Ok(Self {
            origin: Arc::new(origin),
            slots: (0..size.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// The slot for the next request (round-robin).
    pub(crate) fn next_slot(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()
    }

    /// The URI of `path` (which starts with `/`) on the pool's origin.
    pub(crate) fn uri(&self, path: &str) -> Result<http::Uri, http::Error> {
        let mut full = String::with_capacity(self.origin.path_prefix.len() + path.len());
        full.push_str(&self.origin.path_prefix);
        full.push_str(path);
        http::Uri::builder()
            .scheme(self.origin.scheme.clone())
            .authority(self.origin.authority.clone())
            .path_and_query(full)
            .build()
    }

    /// Sends `head` with `body` through the connection in `slot` (wrapping around) and reads
    /// the answer: its head before `deadline`, then at most `max_body` bytes of its body, as
    /// many as arrive before `deadline`.
    pub(crate) async fn send(
        &self,
        slot: usize,
        head: http::Request<()>,
        body: Bytes,
        deadline: Instant,
        max_body: usize,
    ) -> Result<Answer, SendError> {
        let slot = &self.slots[slot % self.slots.len()];
        let deadline = tokio::time::Instant::from_std(deadline);
        let response = tokio::time::timeout_at(deadline, self.open(slot, head, body))
            .await
            .map_err(|_| SendError::Timeout)??;
        let (parts, mut stream) = response.into_parts();
        let mut buf = Vec::new();
        if stream.is_end_stream() {
            // No body (APNs's 200): no second timer.
            return Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body: buf,
            });
        }
        let _ = tokio::time::timeout_at(deadline, async {
            while buf.len() < max_body {
                match stream.data().await {
                    Some(Ok(chunk)) => {
                        let _ = stream.flow_control().release_capacity(chunk.len());
                        buf.extend_from_slice(&chunk);
                    }
                    Some(Err(_)) | None => break,
                }
            }
        })
        .await;
        // Dropping the stream unread resets it and gives its window back to the connection.
        buf.truncate(max_body);
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: buf,
        })
    }

    /// Opens the stream and waits for the response head. A connection that cannot take a new
    /// stream (it is closing, or got GOAWAY) has not seen the request: it is replaced and the
    /// request goes out on the new one.
    async fn open(
        &self,
        slot: &Slot,
        head: http::Request<()>,
        body: Bytes,
    ) -> Result<http::Response<h2::RecvStream>, SendError> {
        let mut fresh = false;
        let mut tries = 0;
        let (mut send, closed) = loop {
            let (send, closed) = self.connection(slot, &mut fresh).await?;
            tries += 1;
            match send.ready().await {
                Ok(send) => break (send, closed),
                Err(e) => {
                    closed.store(true, Ordering::Release);
                    if fresh || tries >= 2 {
                        return Err(SendError::Request(e));
                    }
                }
            }
        };
        let (response, mut stream) = send
            .send_request(head, false)
            .map_err(|e| failed(&closed, e))?;
        stream
            .send_data(body, true)
            .map_err(|e| failed(&closed, e))?;
        response.await.map_err(|e| failed(&closed, e))
    }

    /// The slot's connection, connecting first if it has none (one connect at a time: who
    /// comes meanwhile waits for it, and shares its failure); `fresh` is set when this call
    /// made it.
    async fn connection(
        &self,
        slot: &Slot,
        fresh: &mut bool,
    ) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>), SendError> {
        if let Some(send) = usable(slot) {
            return Ok(send);
        }
        let failures = slot.failures.load(Ordering::Acquire);
        let mut gate = slot.connecting.lock().await;
        if let Some(send) = usable(slot) {
            return Ok(send);
        }
        if slot.failures.load(Ordering::Acquire) != failures
            && let Some(failure) = gate.as_ref()
        {
            return Err(SendError::Connect(failure.clone()));
        }
        match connect(&self.origin).await {
            Ok((send, closed)) => {
                *slot.live.lock().unwrap_or_else(|p| p.into_inner()) = Some(Live {
                    send: send.clone(),
                    closed: closed.clone(),
                });
                *gate = None;
                *fresh = true;
                Ok((send, closed))
            }
            Err(e) => {
                let e = Arc::new(e);
                *gate = Some(e.clone());
                slot.failures.fetch_add(1, Ordering::AcqRel);
                Err(SendError::Connect(e))
            }
        }
    }
}

/// The slot's connection, unless it has none or it is closed (then it is forgotten).
fn usable(slot: &Slot) -> Option<(SendRequest<Bytes>, Arc<AtomicBool>)> {
    let mut live = slot.live.lock().unwrap_or_else(|p| p.into_inner());
    match &*live {
        Some(l) if !l.closed.load(Ordering::Acquire) => Some((l.send.clone(), l.closed.clone())),
        Some(_) => {
            *live = None;
            None
        }
        None => None,
    }
}

/// A request failed on an open connection: unless only its stream was reset, the connection
/// is retired.
fn failed(closed: &AtomicBool, e: h2::Error) -> SendError {
    if !e.is_reset() {
        closed.store(true, Ordering::Release);
    }
    SendError::Request(e)
}

/// TLS for the pool: ALPN `h2` only, the platform's verifier with `extra_roots` added (what
/// reqwest used before), and the client certificate if there is one.
fn tls_connector(
    settings: &Settings,
    identity_pem: Option<&str>,
) -> Result<tokio_rustls::TlsConnector, BuildError> {
    let provider = match rustls::crypto::CryptoProvider::get_default() {
        Some(p) => p.clone(),
        None => Arc::new(rustls::crypto::ring::default_provider()),
    };
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(
        settings.extra_roots.iter().cloned(),
        provider.clone(),
    )?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match identity_pem {
        Some(pem) => {
            let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| BuildError::Identity(format!("no private key: {e}")))?;
            let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| BuildError::Identity(format!("bad certificate: {e}")))?;
            if chain.is_empty() {
                return Err(BuildError::Identity("no certificate".to_owned()));
            }
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| BuildError::Identity(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// One new connection with its task running.
async fn connect(origin: &Origin) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>), ConnectError> {
    let handshake = async {
        let tcp = TcpStream::connect((origin.host.as_str(), origin.port))
            .await
            .map_err(ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let tls = origin
            .tls
            .connect(origin.server_name.clone(), tcp)
            .await
            .map_err(ConnectError::Tls)?;
        match tls.get_ref().1.alpn_protocol() {
            Some(b"h2") | None => {}
            Some(other) => {
                return Err(ConnectError::NotH2(
                    String::from_utf8_lossy(other).into_owned(),
                ));
            }
        }
        h2::client::Builder::new()
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(ConnectError::Handshake)
    };
    let (send, mut connection) = tokio::time::timeout(origin.connect_timeout, handshake)
        .await
        .map_err(|_| ConnectError::Timeout)??;
    let closed = Arc::new(AtomicBool::new(false));
    let ended = closed.clone();
    let pings = origin
        .ping_interval
        .and_then(|every| connection.ping_pong().map(|p| (p, every)));
    let pong_timeout = origin.connect_timeout;
    tokio::spawn(async move {
        let outcome = match pings {
            Some((pings, every)) => tokio::select! {
                r = &mut connection => r.map_err(|e| crate::transport::error_chain(&e)),
                r = keep_alive(pings, every, pong_timeout) => Err(r),
            },
            None => (&mut connection)
                .await
                .map_err(|e| crate::transport::error_chain(&e)),
        };
        ended.store(true, Ordering::Release);
        match outcome {
            Ok(()) => tracing::debug!("HTTP/2 connection closed"),
            Err(error) => tracing::debug!(%error, "HTTP/2 connection ended"),
        }
    });
    Ok((send, closed))
}

/// PINGs every `every`; returns why the connection is to be given up (a PING unanswered within
/// `timeout`, or the connection gone).
async fn keep_alive(mut pings: h2::PingPong, every: Duration, timeout: Duration) -> String {
    loop {
        tokio::time::sleep(every).await;
        match tokio::time::timeout(timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("PING failed: {}", crate::transport::error_chain(&e)),
            Err(_) => return format!("no PING answer within {} s", timeout.as_secs()),
        }
    }
}
