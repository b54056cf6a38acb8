//! The XEP-0114 connection to the XMPP server: handshake, read loop, keepalive, reconnection.
//!
//! tokio-xmpp's `Component` reports a quiet period and a single malformed stanza as end of
//! stream, so this module drives its lower layer instead (../shared/reference/rust-stack.md §3):
//! silence gets an XEP-0199 ping, a malformed request gets a `bad-request` answer, and only a
//! real disconnect ends the stream. Then we reconnect with backoff, because while we are away
//! Prosody bounces publishes (the notification is lost) and ejabberd deletes registrations.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, watch};
use tokio_xmpp::connect::{DnsConfig, ServerConnector, TcpServerConnector};
use tokio_xmpp::xmlstream::{
    FallibleStreamElement, ReadError, StreamElementError, Timeouts, XmlStream, XmppStreamElement,
};
use xmpp_parsers::component::Handshake;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::stanza::Stanza;

use crate::error::Fault;
use crate::gateway::{Gateway, Outbox};
use crate::metrics::METRICS;
use crate::router;

type Stream = XmlStream<BufStream<TcpStream>, FallibleStreamElement>;

/// At most this many stanzas are handled at once; beyond it we stop reading, which pushes back
/// on the server instead of piling up tasks. 256 keeps 25,000 publishes/s going at 10 ms
/// provider latency; 1,024 only doubled peak memory under overload (docs/performance.md).
const MAX_IN_FLIGHT: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub jid: BareJid,
    pub secret: String,
    pub server: String,
    pub max_reconnect_delay: Duration,
    pub idle_ping: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("connection: {0}")]
    Connect(#[from] tokio_xmpp::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("server sent no stream id")]
    NoStreamId,
    #[error("handshake refused (wrong secret or unknown component JID?)")]
    HandshakeRefused,
    #[error("server closed the stream")]
    Closed,
    #[error("stream error from server: {0}")]
    StreamError(String),
    #[error("timed out")]
    Timeout,
}

/// Doubling delays from `FIRST_RETRY` up to the configured cap.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            next: FIRST_RETRY,
            max,
        }
    }
    fn reset(&mut self) {
        self.next = FIRST_RETRY;
    }
    fn next_delay(&mut self) -> Duration {
        let d = self.next.min(self.max);
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }
}

/// Whether the component stream is up, for health checks and tests.
pub type Connected = watch::Receiver<bool>;

/// Keeps the component connected until `shutdown` flips to true.
pub async fn run(
    gw: Arc<Gateway>,
    cfg: StreamConfig,
    mut outbox: Outbox,
    mut shutdown: watch::Receiver<bool>,
    connected: watch::Sender<bool>,
) {
    let mut backoff = Backoff::new(cfg.max_reconnect_delay);
    let pings = AtomicU64::new(0);
    loop {
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(&cfg)).await;
        match attempt {
            Ok(Ok(stream)) => {
                tracing::info!(server = %cfg.server, jid = %cfg.jid, "component connected");
                backoff.reset();
                let _ = connected.send(true);
                METRICS.xmpp_connected.set(1);
                let end = serve(&gw, &cfg, stream, &mut outbox, &mut shutdown, &pings).await;
                let _ = connected.send(false);
                METRICS.xmpp_connected.set(0);
                match end {
                    Ok(()) => {
                        tracing::info!("component stream closed for shutdown");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!("component disconnected: {e}");
                        METRICS.xmpp_reconnects.inc();
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(server = %cfg.server, "cannot connect: {e}"),
            Err(_) => {
                tracing::warn!(server = %cfg.server, "cannot connect: {}", StreamError::Timeout)
            }
        }
        let delay = backoff.next_delay();
        tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Opens the TCP stream and performs the XEP-0114 handshake.
async fn connect(cfg: &StreamConfig) -> Result<Stream, StreamError> {
    let connector = TcpServerConnector::from(DnsConfig::addr(&cfg.server));
    let timeouts = Timeouts {
        read_timeout: cfg.idle_ping,
        response_timeout: Duration::from_secs(30),
    };
    let jid = Jid::from(cfg.jid.clone());
    let (mut pending, _) = connector.connect(&jid, ns::COMPONENT, timeouts).await?;
    let stream_id = pending
        .take_header()
        .id
        .ok_or(StreamError::NoStreamId)?
        .into_owned();
    let mut stream: Stream = pending.skip_features();
    // Replies are already batched per write (send_batch); Nagle would hold the next small
    // write until the server ACKs the previous one, adding up to a delayed-ACK period.
    stream.get_stream().get_ref().set_nodelay(true)?;
    stream
        .send(&Handshake::from_stream_id_and_password(
            stream_id,
            &cfg.secret,
        ))
        .await?;
    loop {
        match stream.next().await {
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::ComponentHandshake(_)))) => {
                return Ok(stream);
            }
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                return Err(StreamError::StreamError(format!("{e:?}")));
            }
            Some(Err(ReadError::SoftTimeout)) => continue,
            Some(Err(ReadError::HardError(e))) => return Err(e.into()),
            None | Some(Err(ReadError::StreamFooterReceived)) => {
                return Err(StreamError::HandshakeRefused);
            }
            Some(_) => return Err(StreamError::HandshakeRefused),
        }
    }
}

/// Reads stanzas and writes replies until the stream ends (`Err`) or we shut down (`Ok`).
async fn serve(
    gw: &Arc<Gateway>,
    cfg: &StreamConfig,
    mut stream: Stream,
    outbox: &mut Outbox,
    shutdown: &mut watch::Receiver<bool>,
    pings: &AtomicU64,
) -> Result<(), StreamError> {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Wakes the loop when a handler finishes, so reading resumes even if it sent no reply.
    let freed = Arc::new(Notify::new());
    loop {
        // Read only while another stanza may be in flight, but always drain the outbox: handlers
        // hold their permit until their reply is queued, so a loop that waited for a permit
        // without draining would deadlock against a full outbox.
        let reading = permits.available_permits() > 0;
        tokio::select! {
            _ = freed.notified(), if !reading => {}
            item = stream.next(), if reading => match item {
                None | Some(Err(ReadError::StreamFooterReceived)) => return Err(StreamError::Closed),
                Some(Err(ReadError::HardError(e))) => return Err(e.into()),
                Some(Err(ReadError::SoftTimeout)) => {
                    let ping = ping(cfg, pings.fetch_add(1, Ordering::Relaxed));
                    stream.send(&Stanza::from(ping)).await?;
                }
                Some(Err(ReadError::ParseError(e))) => tracing::warn!("unparsable element ignored: {e}"),
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(stanza)))) => {
                    // Only this loop acquires, and `reading` saw a free permit.
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        return Err(StreamError::Closed);
                    };
                    let freed = freed.clone();
                    let gw = gw.clone();
                    // The router opens a span per stanza; nothing is inherited from here.
                    // The handler's future is large and spawning copies it; boxed, it is built
                    // on the worker that runs it, not on this loop, which is the one thread
                    // every stanza passes through (docs/performance.md).
                    tokio::spawn(async move {
                        if let Some(reply) = Box::pin(router::handle(&gw, stanza)).await {
                            let _ = gw.outbox.send(reply).await;
                        }
                        drop(permit);
                        freed.notify_one();
                    });
                }
                Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::StreamError(e)))) => {
                    return Err(StreamError::StreamError(format!("{e:?}")));
                }
                Some(Ok(FallibleStreamElement::Ok(other))) => tracing::debug!("ignored nonza: {other:?}"),
                Some(Ok(FallibleStreamElement::Err(e))) => {
                    tracing::warn!("invalid element: {e}");
                    if let Some(reply) = answer_invalid(e) {
                        stream.send(&Stanza::from(reply)).await?;
                    }
                }
            },
            Some(out) = outbox.recv() => send_batch(&mut stream, outbox, out).await?,
            _ = shutdown.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), stream.shutdown()).await;
                return Ok(());
            }
        }
    }
}

/// Writes `first` and whatever else is already queued, then flushes once: under load one
/// write carries many replies instead of one system call each.
async fn send_batch(
    stream: &mut Stream,
    outbox: &mut Outbox,
    first: Stanza,
) -> Result<(), StreamError> {
    const MAX_BATCH: usize = 64;
    stream.feed(&first).await?;
    for _ in 1..MAX_BATCH {
        let Ok(next) = outbox.try_recv() else { break };
        stream.feed(&next).await?;
    }
    SinkExt::<&Stanza>::flush(stream).await?;
    Ok(())
}

/// A request we could not parse still deserves an answer, when it says who asked.
fn answer_invalid(e: StreamElementError) -> Option<Iq> {
    let StreamElementError::InvalidStanza { header, error, .. } = e else {
        return None;
    };
    if !matches!(header.type_.as_deref(), Some("get" | "set")) {
        return None;
    }
    let requester: Jid = header.from.as_deref()?.parse().ok()?;
    let our_jid = header.to.as_deref().and_then(|t| t.parse().ok());
    let id = header.id?;
    Some(router::reply(
        our_jid,
        requester,
        id,
        Err(Fault::BadRequest(format!("malformed request: {error}"))),
    ))
}

/// An XEP-0199 ping to the server that hosts us, so the stream carries traffic during quiet
/// periods. The host is the component JID minus its first label (push.example.org →
/// example.org); any answer, even an error, proves the stream is alive.
fn ping(cfg: &StreamConfig, n: u64) -> Iq {
    let domain = cfg.jid.domain().as_str();
    let host = domain
        .split_once('.')
        .map(|(_, rest)| rest)
        .filter(|r| !r.is_empty())
        .unwrap_or(domain);
    Iq::Get {
        from: Some(Jid::from(cfg.jid.clone())),
        to: host.parse().ok(),
        id: format!("pushgate-ping-{n}"),
        payload: Element::bare("ping", ns::PING),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_fast_and_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(30));
        let delays: Vec<_> = (0..10).map(|_| b.next_delay()).collect();
        assert!(delays[0] < Duration::from_secs(1));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.next_delay(), FIRST_RETRY);
    }

    #[test]
    fn ping_goes_to_the_hosting_server() {
        let cfg = StreamConfig {
            jid: "push.example.org".parse().unwrap(),
            secret: "s".into(),
            server: "127.0.0.1:1".into(),
            max_reconnect_delay: Duration::from_secs(1),
            idle_ping: Duration::from_secs(5),
        };
        let Iq::Get { to, .. } = ping(&cfg, 1) else {
            panic!()
        };
        assert_eq!(to.unwrap().to_string(), "example.org");
    }
}
