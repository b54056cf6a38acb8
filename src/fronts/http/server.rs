//! The accept loop and the connections: HTTP/1.1 (hyper) under limits that slow and numerous
//! clients cannot get around.
//!
//! `axum::serve` has no timeouts and no connection cap: a client that sends half a request head
//! keeps its descriptor forever, a thousand of them exhaust the process's descriptors (deliveries
//! then fail with "Too many open files"), and graceful shutdown waits on them forever. Here:
//!
//! * **Head**: a connection must complete its request head within `http.header_timeout_secs`
//!   of connecting (or of its first byte after an idle period), else it is closed.
//! * **Body**: the unregister handler reads its body within `http.body_timeout_secs`, else
//!   answers 408 (JSON failure body, `Connection: close`). Routes that take no body answer at
//!   once; hyper then discards the body, and bytes that keep trickling in count as a new head.
//! * **Idle**: a kept-alive connection with no new request for `http.idle_timeout_secs` is closed.
//! * **Cap**: at most `http.max_connections` are open. A new connection beyond the cap is still
//!   accepted (the kernel backlog would only delay the decision), and the longest-stalled
//!   unfinished head is closed to make room, else the longest-idle kept-alive connection. A
//!   working client completes its head within milliseconds, so a slowloris crowd evicts itself and
//!   `/healthz` keeps answering. Only if every open connection is busy (a request being handled)
//!   is the new one closed at once; busy connections are bounded by the body timeout, the handler
//!   and the per-IP rate limit, which runs before a body is read.
//! * **Shutdown**: stop accepting, close connections with no request in flight at once, let the
//!   others finish their answer, and after the shutdown timeout drop what is left.
//! * **Accept errors** never end the server. Out of descriptors (EMFILE/ENFILE) is counted in
//!   `pushgate_fd_exhausted_total{where="http_accept"}`, logged at most every 10 s, and the loop
//!   pauses 100 ms instead of spinning on a listener that stays readable.
//!
//! hyper's own `header_read_timeout` is not used: it also runs while a kept-alive connection is
//! idle, so it cannot tell the head bound from the idle bound. The phases live in `conns.rs`; a
//! sweep every [`SWEEP_EVERY`] closes what is overdue.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::conns::{Conn, ConnState, ConnTable, Phase};
use crate::config::HttpConfig;
use crate::metrics::METRICS;

/// How often overdue connections are looked for: the precision of the head and idle bounds.
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// The pause after an accept error that may persist (no descriptors, no memory).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per this long about running out of descriptors.
const FD_LOG_EVERY: Duration = Duration::from_secs(10);
/// A request head (and what hyper buffers of a connection) larger than this is refused; bounds
/// the memory a crowd of slow clients can pin (hyper's default is ~400 KiB a connection).
const MAX_BUF: usize = 64 * 1024;

/// The bounds [`serve_on`] enforces (the body bound is the handler's: `HttpConfig`).
#[derive(Clone, Debug)]
pub struct ServeLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    /// After shutdown, how long busy connections may take to finish.
    pub shutdown_timeout: Duration,
}

impl ServeLimits {
    pub fn new(http: &HttpConfig, shutdown_timeout: Duration) -> Self {
        ServeLimits {
            header_timeout: Duration::from_secs(http.header_timeout_secs),
            idle_timeout: Duration::from_secs(http.idle_timeout_secs),
            max_connections: http.max_connections,
            shutdown_timeout,
        }
    }
}

/// Serves `router` on an already bound listener (with peer addresses for the rate limit) until
/// `shutdown` turns true; in-flight requests get `limits.shutdown_timeout` to finish.
pub async fn serve_on(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let table = ConnTable::new(
        limits.max_connections,
        limits.header_timeout,
        limits.idle_timeout,
    );
    let service = TowerToHyperService::new(router);
    let (drain_tx, drain) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Labelled here, so that the series exists (at 0) before the first failure.
    let fd_exhausted = METRICS.fd_exhausted.with_label_values(&["http_accept"]);
    let mut fd_log = Throttle::new(FD_LOG_EVERY);
    loop {
        tokio::select! {
            _ = raised(&mut shutdown) => break,
            _ = sweep.tick() => table.sweep(Instant::now()),
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // None: full of busy connections; dropping the stream closes it.
                    if let Some(conn) = table.admit(Instant::now()) {
                        conns.spawn(serve_connection(
                            stream,
                            peer,
                            service.clone(),
                            conn,
                            drain.clone(),
                        ));
                    }
                }
                Err(e) => on_accept_error(&e, &fd_exhausted, &mut fd_log).await,
            },
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(limits.shutdown_timeout, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "HTTP: {} connection(s) still busy {} s after shutdown; closing them",
            conns.len(),
            limits.shutdown_timeout.as_secs()
        );
        conns.abort_all();
    }
}

/// Drives one connection until it ends, the table closes it, or shutdown leaves it nothing to do.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: TowerToHyperService<Router>,
    conn: Conn,
    mut drain: watch::Receiver<bool>,
) {
    let state = conn.state.clone();
    let io = TokioIo::new(Tracked {
        stream,
        state: state.clone(),
    });
    let service = ConnService {
        router,
        peer,
        state: state.clone(),
    };
    let mut builder = http1::Builder::new();
    builder.header_read_timeout(None).max_buf_size(MAX_BUF);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut draining = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, "HTTP connection ended: {e}");
                }
                break;
            }
            _ = state.closed() => break,
            _ = raised(&mut drain), if !draining => {
                draining = true;
                if state.get().0 != Phase::Busy {
                    break;
                }
                // Finish the answer in flight, then close.
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    drop(conn);
}

/// Resolves once `flag` is true or its sender is gone (without holding a borrow of it, which
/// would make the future `!Send`).
async fn raised(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|up| *up).await;
}

/// What to do about a failed `accept()`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AcceptFailure {
    /// EMFILE/ENFILE: count, log (throttled), pause.
    NoDescriptors,
    /// The pending connection went away before we took it: just go on.
    PeerGone,
    /// Anything else (ENOBUFS, ENOMEM, firewall refusals…): log, pause, go on.
    Other,
}

pub(crate) fn classify_accept_error(e: &io::Error) -> AcceptFailure {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => AcceptFailure::NoDescriptors,
        _ => match e.kind() {
            io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock => AcceptFailure::PeerGone,
            _ => AcceptFailure::Other,
        },
    }
}

async fn on_accept_error(e: &io::Error, fd_exhausted: &IntCounter, fd_log: &mut Throttle) {
    match classify_accept_error(e) {
        AcceptFailure::PeerGone => tracing::debug!("HTTP accept: {e}"),
        AcceptFailure::NoDescriptors => {
            fd_exhausted.inc();
            if let Some(suppressed) = fd_log.ready(Instant::now()) {
                tracing::warn!(
                    suppressed,
                    "HTTP accept: out of file descriptors ({e}); raise the open-file limit or \
                     lower http.max_connections"
                );
            }
            tokio::time::sleep(ACCEPT_PAUSE).await;
        }
        AcceptFailure::Other => {
            tracing::warn!("HTTP accept failed: {e}");
            tokio::time::sleep(ACCEPT_PAUSE).await;
        }
    }
}

/// Lets through one event per period and counts the ones it held back.
pub(crate) struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    pub(crate) fn new(every: Duration) -> Self {
        Throttle {
            every,
            last: None,
            held_back: 0,
        }
    }

    /// `Some(events held back since the last one let through)` if this one may be logged.
    pub(crate) fn ready(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

/// The router for one connection: marks the phases and adds the peer address that
/// `into_make_service_with_connect_info::<SocketAddr>` would (the rate limit needs it).
#[derive(Clone)]
struct ConnService {
    router: TowerToHyperService<Router>,
    peer: SocketAddr,
    state: Arc<ConnState>,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, mut req: Request<Incoming>) -> Answer {
        self.state.set(Phase::Busy, Instant::now());
        req.extensions_mut().insert(ConnectInfo(self.peer));
        let answer = self.router.call(req);
        let state = self.state.clone();
        Box::pin(async move {
            let response = answer.await;
            state.set(Phase::Idle, Instant::now());
            response
        })
    }
}

/// The socket, telling the connection's state when bytes arrive.
struct Tracked {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.state.on_read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_are_sorted_and_none_is_fatal() {
        let os = io::Error::from_raw_os_error;
        assert_eq!(
            classify_accept_error(&os(libc::EMFILE)),
            AcceptFailure::NoDescriptors
        );
        assert_eq!(
            classify_accept_error(&os(libc::ENFILE)),
            AcceptFailure::NoDescriptors
        );
        assert_eq!(
            classify_accept_error(&os(libc::ECONNABORTED)),
            AcceptFailure::PeerGone
        );
        assert_eq!(
            classify_accept_error(&os(libc::ENOBUFS)),
            AcceptFailure::Other
        );
        assert_eq!(
            classify_accept_error(&os(libc::ENOMEM)),
            AcceptFailure::Other
        );
    }

    #[tokio::test]
    async fn running_out_of_descriptors_is_counted_and_pauses() {
        let counter = METRICS.fd_exhausted.with_label_values(&["http_accept"]);
        let before = counter.get();
        let mut throttle = Throttle::new(FD_LOG_EVERY);
        let started = Instant::now();
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        on_accept_error(&emfile, &counter, &mut throttle).await;
        assert!(started.elapsed() >= ACCEPT_PAUSE, "no busy loop");
        assert!(counter.get() > before);
    }

    #[test]
    fn throttle_lets_one_through_per_period_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(t.ready(t0), Some(0));
        assert_eq!(t.ready(t0 + Duration::from_secs(1)), None);
        assert_eq!(t.ready(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.ready(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(t.ready(t0 + Duration::from_secs(11)), None);
    }
}
