//! What the HTTP mocks and sinks share: the TLS accept loop, HTTP/2 service of one connection
//! (ALPN `h2` only, as Apple and Google speak it), bounded body reads, answers, the record of a
//! request, and per-device scripted answers.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Mutex;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::SupportError;
use crate::pki::Pki;

/// One request's answer.
pub type Answer = Response<Full<Bytes>>;

/// A listener on 127.0.0.1 and an acceptor offering HTTP/2 only with `pki`'s server certificate
/// (and, with `client_auth`, requiring a client certificate from its CA).
pub async fn bind_h2(
    pki: &Pki,
    client_auth: bool,
) -> Result<(TcpListener, TlsAcceptor), SupportError> {
    let acceptor = TlsAcceptor::from(pki.server_config(client_auth, &[b"h2"])?);
    Ok((TcpListener::bind("127.0.0.1:0").await?, acceptor))
}

/// Accepts TCP connections until the listener fails. For each, `on_accept` runs at once (to
/// count or register the connection) and returns what to do with it once the TLS handshake is
/// done; that runs on its own task. Connections that fail the handshake are dropped.
pub async fn accept_tls<F, G, Fut>(listener: TcpListener, acceptor: TlsAcceptor, mut on_accept: F)
where
    F: FnMut() -> G,
    G: FnOnce(TlsStream<TcpStream>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    while let Ok((tcp, _)) = listener.accept().await {
        let _ = tcp.set_nodelay(true);
        let serve = on_accept();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(tls) = acceptor.accept(tcp).await {
                serve(tls).await;
            }
        });
    }
}

/// Serves HTTP/2 on `io` until the connection ends, answering each request with `handle`;
/// `max_streams` overrides hyper's limit on concurrent streams. No `date` header: nothing
/// reads it, and it costs a clock read per answer.
pub async fn serve_h2<I, F, Fut>(io: I, handle: F, max_streams: Option<u32>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(hyper::Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    serve_h2_until(io, handle, max_streams, std::future::pending()).await
}

/// [`serve_h2`] that shuts the connection down gracefully (GOAWAY, then the streams in
/// flight finish) once `shutdown` is ready.
pub async fn serve_h2_until<I, F, Fut>(
    io: I,
    handle: F,
    max_streams: Option<u32>,
    shutdown: impl Future<Output = ()>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(hyper::Request<Incoming>) -> Fut + Send + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let answer = handle(req);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.auto_date_header(false);
    if let Some(n) = max_streams {
        builder.max_concurrent_streams(n);
    }
    let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::pin!(shutdown);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = shutdown => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

/// The request body, at most `limit` bytes; `None` if it is larger or the stream broke.
pub async fn body(incoming: Incoming, limit: usize) -> Option<Bytes> {
    Limited::new(incoming, limit)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

/// An answer with a status and a JSON body.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut response = empty(status);
    *response.body_mut() = Full::new(body.into());
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

/// An answer with a status and no body.
pub fn empty(status: StatusCode) -> Answer {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A scripted answer: a status given as a number (the tests script any), a body, and the
/// headers, after `content-type: application/json` with `json_type`.
pub fn answer(
    status: u16,
    json_type: bool,
    body: impl Into<Bytes>,
    headers: Vec<(&'static str, String)>,
) -> Answer {
    let status = StatusCode::from_u16(status).expect("a scripted status is 100-999");
    let mut response = if json_type {
        json(status, body)
    } else {
        let mut response = empty(status);
        *response.body_mut() = Full::new(body.into());
        response
    };
    for (name, value) in headers {
        let value = http::HeaderValue::from_str(&value).expect("a scripted header value");
        response.headers_mut().insert(name, value);
    }
    response
}

/// One request as a mock saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

impl Recorded {
    /// Reads the whole request (an unreadable body counts as empty).
    pub async fn read(req: hyper::Request<Incoming>) -> Self {
        let (parts, incoming) = req.into_parts();
        let body = body(incoming, usize::MAX)
            .await
            .map(|b| b.to_vec())
            .unwrap_or_default();
        Self {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            version: parts.version,
            headers: parts.headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Scripted answers per device token, each used once, in order.
pub struct Scripts<R>(Mutex<HashMap<String, VecDeque<R>>>);

impl<R> Default for Scripts<R> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<R> Scripts<R> {
    pub fn set(&self, token: &str, replies: Vec<R>) {
        self.0
            .lock()
            .unwrap()
            .insert(token.to_owned(), replies.into());
    }

    /// The next answer scripted for `token`, if any is left.
    pub fn next(&self, token: &str) -> Option<R> {
        self.0
            .lock()
            .unwrap()
            .get_mut(token)
            .and_then(VecDeque::pop_front)
    }
}

/// What a mock received, in arrival order.
pub struct Journal<T>(Mutex<Vec<T>>);

impl<T> Default for Journal<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T: Clone + Debug> Journal<T> {
    pub fn push(&self, item: T) {
        self.0.lock().unwrap().push(item);
    }

    pub fn all(&self) -> Vec<T> {
        self.0.lock().unwrap().clone()
    }

    /// The items `keep` selects (say, those for one device).
    pub fn matching(&self, keep: impl Fn(&T) -> bool) -> Vec<T> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|t| keep(t))
            .cloned()
            .collect()
    }

    /// The single item (fails the test otherwise); `what` names it in the failure.
    pub fn only(&self, what: &str) -> T {
        let all = self.all();
        assert_eq!(all.len(), 1, "expected exactly one {what}, got {all:?}");
        all[0].clone()
    }
}
