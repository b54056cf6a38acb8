//! The HTTP side of the benchmark's HTTP fronts (`--front matrix`, `unifiedpush`, `sip`): a
//! small pool of keep-alive HTTP/1.1 connections to pushgate's listener, each with one request
//! outstanding, sending at a fixed rate or as fast as answers come back; answers counted by the
//! kind the front makes of them.
//!
//! Why a pool and no pipelining: Synapse sends each request on a pooled persistent connection
//! and waits for its answer; app servers posting to push endpoints, and SIP servers calling
//! the SIP API, do the same, so the requests outstanding are at most the connections open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::load::{Report, Usage};
use crate::{Args, BoxError, Mode, Times};

/// One request of the load: path, headers besides `Host`, body.
pub(crate) struct Outgoing {
    pub(crate) path: String,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Bytes,
}

/// An answer as the load sees it.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: hyper::HeaderMap,
    pub(crate) body: Bytes,
}

/// What a front does with the HTTP load: how to check the listener is up, what to send, and
/// what an answer counts as.
pub(crate) struct Front {
    /// A GET answered 200 whose body holds `discovery.1`, on every connection before the load.
    pub(crate) discovery: (&'static str, &'static [u8]),
    pub(crate) request: Box<dyn Fn(usize) -> Outgoing + Send + Sync>,
    pub(crate) kind_of: fn(&Answer) -> String,
    /// The kind of a successful answer, whose push must have reached its destination.
    pub(crate) ok: &'static str,
}

/// Per-request outcome, for checking that every success reached its destination.
const ANSWERED_OK: u8 = 1;

/// One keep-alive HTTP/1.1 connection to pushgate.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one request and reads the whole answer.
pub(crate) async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    host: &str,
    method: Method,
    outgoing: Outgoing,
) -> Result<Answer, BoxError> {
    sender.ready().await?;
    let mut request = Request::builder()
        .method(method)
        .uri(outgoing.path)
        .header(hyper::header::HOST, host);
    for (name, value) in outgoing.headers {
        request = request.header(name, value);
    }
    let response = sender
        .send_request(request.body(Full::new(outgoing.body))?)
        .await?;
    let status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status,
        headers: parts.headers,
        body,
    })
}

/// Opens `n` connections once pushgate listens, each warmed by the front's discovery GET.
pub(crate) async fn open_pool(
    addr: SocketAddr,
    host: &str,
    n: usize,
    discovery: (&'static str, &'static [u8]),
) -> Result<Vec<SendRequest<Full<Bytes>>>, BoxError> {
    let started = Instant::now();
    let mut pool = Vec::with_capacity(n);
    while pool.is_empty() {
        match connect(addr).await {
            Ok(s) => pool.push(s),
            Err(e) if started.elapsed() >= Duration::from_secs(30) => {
                return Err(format!("pushgate's HTTP listener {addr}: {e}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    while pool.len() < n {
        pool.push(connect(addr).await?);
    }
    let (path, expect) = discovery;
    for sender in &mut pool {
        let get = Outgoing {
            path: path.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
        };
        let answer = send(sender, host, Method::GET, get).await?;
        if answer.status != 200 || !answer.body.windows(expect.len()).any(|w| w == expect) {
            return Err(format!("discovery GET {path} answered {}", answer.status).into());
        }
    }
    Ok(pool)
}

/// Runs the load and reads pushgate's CPU and memory around it, as `load::drive` does for
/// the XMPP front. `ok_not_delivered` in the report: successes whose push never arrived
/// (`times.delivered` unset).
pub(crate) async fn drive(
    args: &Args,
    addr: SocketAddr,
    pid: u32,
    front: Front,
    times: Arc<Times>,
    total: usize,
) -> Result<Report, BoxError> {
    let host = addr.to_string();
    let pool = open_pool(addr, &host, args.connections, front.discovery).await?;

    let usage = Usage::start(pid)?;

    let next = Arc::new(AtomicUsize::new(0));
    let kinds = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let outcome: Arc<Vec<AtomicU8>> = Arc::new((0..total).map(|_| AtomicU8::new(0)).collect());
    let last_reply = Arc::new(AtomicU64::new(0));
    let first_sent = times.now();
    // Rate mode: request `seq` is due at `first_sent + seq / rate`.
    let interval_ns = match args.mode {
        Mode::Rate => 1e9 / args.rate as f64,
        Mode::Fast | Mode::Register => 0.0,
    };
    let (ok, kind_of) = (front.ok, front.kind_of);
    let request = Arc::new(front.request);

    let mut tasks = tokio::task::JoinSet::new();
    for mut sender in pool {
        let (times, next, kinds, outcome, last, request, host) = (
            times.clone(),
            next.clone(),
            kinds.clone(),
            outcome.clone(),
            last_reply.clone(),
            request.clone(),
            host.clone(),
        );
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    return;
                }
                let outgoing = request(seq);
                let due = first_sent + (seq as f64 * interval_ns) as u64;
                // A request already due waited for a free connection: that wait is latency
                // too. One not yet due is stamped when the timer actually woke us, so the
                // timer's millisecond granularity is not counted against pushgate.
                let sent = if due > times.now() {
                    tokio::time::sleep_until((times.epoch + Duration::from_nanos(due)).into())
                        .await;
                    times.now()
                } else if interval_ns > 0.0 {
                    due
                } else {
                    times.now()
                };
                Times::mark(&times.sent, seq, sent);
                let kind = match send(&mut sender, &host, Method::POST, outgoing).await {
                    Ok(answer) => {
                        let at = times.now();
                        Times::mark(&times.replied, seq, at);
                        last.fetch_max(at, Ordering::Relaxed);
                        kind_of(&answer)
                    }
                    Err(_) => {
                        // Counted; the pool carries on over a fresh connection.
                        match connect(addr).await {
                            Ok(s) => sender = s,
                            Err(_) => return,
                        }
                        "error".to_owned()
                    }
                };
                if kind == ok {
                    outcome[seq].store(ANSWERED_OK, Ordering::Relaxed);
                }
                *kinds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(kind)
                    .or_default() += 1;
            }
        });
    }
    let deadline = Duration::from_secs(args.timeout_secs);
    let timed_out = timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err();
    tasks.abort_all();

    let ok_not_delivered = (0..total)
        .filter(|&seq| {
            outcome[seq].load(Ordering::Relaxed) == ANSWERED_OK
                && times.delivered[seq].load(Ordering::Relaxed) == 0
        })
        .count() as u64;
    let replies = kinds.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let last_reply = last_reply.load(Ordering::Relaxed);
    let mut report = usage.finish(pid, &times, replies, first_sent, last_reply, timed_out)?;
    report.ok_not_delivered = Some(ok_not_delivered);
    Ok(report)
}
