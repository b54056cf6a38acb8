//! The XEP-0114 connection to the XMPP server: handshake, read loop, keepalive, reconnection.
//!
//! The loop frames bytes (`wire`), hands each stanza to a worker (`dispatch`) and writes replies;
//! it never waits on a handler and no stanza can end it: one that breaks a limit is skipped and
//! answered, one that does not parse is answered by its worker. Silence gets an XEP-0199 ping,
//! and only a real disconnect ends the stream. Then we reconnect with backoff, because while we
//! are away Prosody bounces publishes (the notification is lost) and ejabberd deletes
//! registrations.

mod dispatch;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use pushgate_providers::framing::{Frame, FramingError, Limits};
use tokio::sync::watch;
use tokio::time::Instant;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::jid::{BareJid, Jid};
use xmpp_parsers::minidom::Element;
use xmpp_parsers::ns;
use xmpp_parsers::stanza::Stanza;

use crate::config::{Config, WhenReplaced};
use crate::core::backoff::jitter;
use crate::fronts::xmpp::{Component, Outbox};
use crate::metrics::METRICS;
use dispatch::Dispatcher;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server may stay silent after our ping (or during the handshake).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the stream is lost, retries come within a second (with jitter, so several instances do
/// not knock in step) for this long, then back off: a server restart is over in seconds, and
/// while pushgate is away Prosody bounces publishes and ejabberd deletes registrations.
const FAST_FOR: Duration = Duration::from_secs(300);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const FAST_RETRY_MIN: Duration = Duration::from_millis(500);
const FAST_RETRY_MAX: Duration = Duration::from_secs(1);
/// While the server refuses connections (it is restarting) knocking costs it nothing, and every
/// moment between its ports opening and our bind is one in which ejabberd deletes the
/// registration of any message's recipient (fault benchmark: 7 of 8 in 0.6 s): knock faster.
const REFUSED_RETRY_MIN: Duration = Duration::from_millis(200);
const REFUSED_RETRY_MAX: Duration = Duration::from_millis(400);

#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub jid: BareJid,
    pub secret: String,
    pub server: String,
    pub max_reconnect_delay: Duration,
    pub idle_ping: Duration,
    /// Bounds on each stanza, checked before it is parsed.
    pub limits: Limits,
    /// Stanzas handled at once, and the bytes they may hold between them; beyond either they
    /// are answered `wait` at once.
    pub max_in_flight: usize,
    pub max_in_flight_bytes: usize,
    /// Standby or exit when the server replaces this instance with another.
    pub when_replaced: WhenReplaced,
    /// How long stanzas in flight may take to finish when the stream ends for good.
    pub drain_within: Duration,
}

impl StreamConfig {
    pub fn new(config: &Config) -> Self {
        StreamConfig {
            jid: config.component_jid(),
            secret: config.component.secret.clone(),
            server: config.component.server.clone(),
            max_reconnect_delay: Duration::from_secs(config.component.max_reconnect_delay_secs),
            idle_ping: Duration::from_secs(config.component.idle_ping_secs),
            limits: config.limits.stanza_limits(),
            max_in_flight: config.limits.max_in_flight,
            max_in_flight_bytes: config.limits.max_in_flight_bytes,
            when_replaced: config.component.when_replaced,
            drain_within: config.limits.shutdown_timeout(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Framing(#[from] FramingError),
    #[error("server sent no stream id")]
    NoStreamId,
    #[error("handshake refused (wrong secret or unknown component JID?)")]
    HandshakeRefused,
    #[error("server closed the stream")]
    Closed,
    #[error("stream error from server: {0}")]
    StreamError(String),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("cannot serialise a stanza: {0}")]
    Serialize(String),
    #[error("timed out")]
    Timeout,
}

impl StreamError {
    /// Nothing listens at the server's address (yet): it is down or restarting.
    fn refused(&self) -> bool {
        matches!(self, StreamError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused)
    }

    /// The server replaced this connection with another one of the same component: another
    /// pushgate instance connected (Prosody's `component_conflict_resolve = "kick_old"`), or
    /// refused ours because one is connected.
    fn replaced(&self) -> bool {
        matches!(self, StreamError::StreamError(c) if c.split_whitespace().next() == Some("conflict"))
    }
}

/// When to try again: 250 ms after the loss, then every 0.5–1 s (0.2–0.4 s while the server
/// refuses connections) for `FAST_FOR`, then doubling up to the configured cap.
struct Backoff {
    /// When the stream was lost (or the first attempt failed); `None` while connected.
    lost_at: Option<Instant>,
    /// The next delay once past the fast phase.
    slow: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        Backoff {
            lost_at: None,
            slow: FAST_RETRY_MAX,
            max,
        }
    }

    fn reset(&mut self) {
        self.lost_at = None;
        self.slow = FAST_RETRY_MAX;
    }

    /// The delay before the next attempt, `now` being when the last one failed and `refused`
    /// whether nothing listened at the server's address.
    fn next_delay(&mut self, now: Instant, refused: bool) -> Duration {
        let Some(lost_at) = self.lost_at else {
            self.lost_at = Some(now);
            return FIRST_RETRY.min(self.max);
        };
        if now.saturating_duration_since(lost_at) < FAST_FOR {
            let (low, high) = if refused {
                (REFUSED_RETRY_MIN, REFUSED_RETRY_MAX)
            } else {
                (FAST_RETRY_MIN, FAST_RETRY_MAX)
            };
            return jitter(low, high).min(self.max);
        }
        self.slow = self.slow.saturating_mul(2).min(self.max);
        self.slow
    }
}

/// Why [`run`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// `shutdown` flipped.
    Shutdown,
    /// Another instance took the component over and `when_replaced` is `exit`.
    Replaced,
}

/// Keeps the component connected until `shutdown` flips to true, or until another instance
/// replaces this one and `cfg.when_replaced` says to exit. Either way the stanzas in flight are
/// handled to the end (within `cfg.drain_within`) before it returns; on shutdown they are also
/// answered before the stream is closed (see [`serve`]).
pub async fn run(
    component: Arc<Component>,
    cfg: StreamConfig,
    mut outbox: Outbox,
    mut shutdown: watch::Receiver<bool>,
    connected: watch::Sender<bool>,
) -> Ended {
    let mut backoff = Backoff::new(cfg.max_reconnect_delay);
    let mut pings = 0u64;
    // One dispatcher for the process: handlers of a dropped stream still finish and their
    // replies wait in the outbox for the next one.
    let dispatcher = Dispatcher::new(
        component.clone(),
        cfg.max_in_flight,
        cfg.max_in_flight_bytes,
        component.publish_timeout,
    );
    loop {
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            wire::connect(
                &cfg.server,
                &cfg.jid,
                &cfg.secret,
                cfg.limits,
                RESPONSE_TIMEOUT,
            ),
        )
        .await;
        // Whether the server said another instance of the component is connected, and whether
        // nothing listened at its address.
        let (replaced, refused) = match attempt {
            Ok(Ok(conn)) => {
                tracing::info!(server = %cfg.server, jid = %cfg.jid, "component connected");
                backoff.reset();
                let _ = connected.send(true);
                METRICS.xmpp_connected.set(1);
                let end = serve(
                    &cfg,
                    conn,
                    &dispatcher,
                    &mut outbox,
                    &mut shutdown,
                    &mut pings,
                )
                .await;
                let _ = connected.send(false);
                METRICS.xmpp_connected.set(0);
                match end {
                    Ok(()) => {
                        tracing::info!("component stream closed for shutdown");
                        drain(&dispatcher, cfg.drain_within).await;
                        return Ended::Shutdown;
                    }
                    Err(e) => {
                        tracing::warn!("component disconnected: {e}");
                        METRICS.xmpp_reconnects.inc();
                        (e.replaced(), false)
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(server = %cfg.server, "cannot connect: {e}");
                (e.replaced(), e.refused())
            }
            Err(_) => {
                tracing::warn!(server = %cfg.server, "cannot connect: {}", StreamError::Timeout);
                (false, false)
            }
        };
        if replaced && cfg.when_replaced == WhenReplaced::Exit {
            tracing::warn!(
                "another instance of this component took over: finishing the deliveries in \
                 flight, then exiting (component.when_replaced = \"exit\")"
            );
            drain(&dispatcher, cfg.drain_within).await;
            return Ended::Replaced;
        }
        let delay = if replaced {
            // Knocking at once would throw the other instance out in turn (with kick_old) and
            // the two would replace each other in a loop.
            tracing::warn!(
                delay_secs = cfg.max_reconnect_delay.as_secs(),
                "another instance of this component is connected to the server: standing by"
            );
            cfg.max_reconnect_delay
        } else {
            backoff.next_delay(Instant::now(), refused)
        };
        tracing::info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {
                drain(&dispatcher, cfg.drain_within).await;
                return Ended::Shutdown;
            }
        }
    }
}

/// Lets the stanzas in flight finish: their deliveries complete even though their replies can
/// no longer be sent.
async fn drain(dispatcher: &Dispatcher, within: Duration) {
    let left = dispatcher.drain(within).await;
    if left > 0 {
        tracing::warn!(
            left,
            "stanzas still in flight after {} s: abandoned",
            within.as_secs()
        );
    }
}

/// How often a closing stream looks whether everything taken on has been answered.
const CLOSING_CHECK: Duration = Duration::from_millis(10);

/// Reads stanzas and writes replies until the stream ends (`Err`) or we shut down (`Ok`).
///
/// On shutdown the stream stays open until every stanza taken on has been answered (or
/// `cfg.drain_within` has passed), and stanzas arriving meanwhile are served too: after our
/// `</stream:stream>` no reply can be sent. Closing when nothing is in flight leaves only the
/// stanzas already on the wire at that moment, and those are read and delivered after the close
/// ([`read_to_the_end`]).
async fn serve(
    cfg: &StreamConfig,
    conn: wire::Connection,
    dispatcher: &Dispatcher,
    outbox: &mut Outbox,
    shutdown: &mut watch::Receiver<bool>,
    pings: &mut u64,
) -> Result<(), StreamError> {
    let wire::Connection {
        mut reader,
        mut writer,
        early,
    } = conn;
    let mut frames = early;
    let mut last_heard = Instant::now();
    // Set while a ping is out: the server must say something before then.
    let mut answer_by: Option<Instant> = None;
    // Set once shutting down: the stream is closed when all is answered, or by then.
    let mut close_by: Option<Instant> = None;
    loop {
        let mut answered = false;
        for frame in frames.drain(..) {
            let immediate = match frame {
                Frame::Element { head, xml } => {
                    if wire::is_stream_error(&head) {
                        return Err(StreamError::StreamError(wire::stream_error_condition(&xml)));
                    }
                    dispatcher.admit(head, xml, last_heard)
                }
                Frame::Rejected { head, limit } => dispatch::refuse(head.as_ref(), limit),
                Frame::StreamClose => return Err(StreamError::Closed),
                Frame::StreamOpen(_) => return Err(StreamError::Protocol("second stream header")),
            };
            if let Some(reply) = immediate {
                writer.feed(&reply).await?;
                answered = true;
            }
        }
        if answered {
            writer.flush().await?;
        }
        if let Some(by) = close_by
            && ((dispatcher.in_flight() == 0 && outbox.is_empty()) || Instant::now() >= by)
        {
            let _ = tokio::time::timeout(CLOSE_GRACE, writer.close()).await;
            read_to_the_end(&mut reader, dispatcher, outbox).await;
            return Ok(());
        }
        let wake = answer_by.unwrap_or(last_heard + cfg.idle_ping);
        tokio::select! {
            read = reader.read(&mut frames) => {
                if !read? {
                    return Err(StreamError::Closed);
                }
                last_heard = Instant::now();
                answer_by = None;
            }
            Some(out) = outbox.recv() => send_batch(&mut writer, outbox, out).await?,
            _ = tokio::time::sleep_until(wake) => {
                if answer_by.is_some() {
                    return Err(StreamError::Timeout);
                }
                *pings += 1;
                writer.feed(&Stanza::from(ping(cfg, *pings))).await?;
                writer.flush().await?;
                answer_by = Some(Instant::now() + RESPONSE_TIMEOUT);
            }
            _ = shutdown.changed(), if close_by.is_none() => {
                tracing::info!("shutting down: answering what is in flight before closing the stream");
                close_by = Some(Instant::now() + cfg.drain_within);
            }
            _ = tokio::time::sleep(CLOSING_CHECK), if close_by.is_some() => {}
        }
    }
}

/// How long a closed stream waits for the server's end of stream: for writing our
/// `</stream:stream>` and for reading what the server sent before it read it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// After our `</stream:stream>`: what the server wrote before it read it is still ours. ejabberd
/// spreads publishes over every connection of a component and keeps routing to this one until
/// it has processed our end; what we left unread would be lost without a trace. A publish read
/// here is delivered though it can no longer be answered: a missing reply only costs a debug
/// line on ejabberd (after 32 s) and nothing on Prosody or Tigase. Reads until the server's own
/// end of stream, its close, or [`CLOSE_GRACE`].
async fn read_to_the_end(reader: &mut wire::Reader, dispatcher: &Dispatcher, outbox: &mut Outbox) {
    let by = Instant::now() + CLOSE_GRACE;
    let mut frames = Vec::new();
    let mut late = 0usize;
    loop {
        let read = tokio::select! {
            read = tokio::time::timeout_at(by, reader.read(&mut frames)) => read,
            // Replies can no longer be sent: drop them rather than let handlers wait for room.
            Some(_) = outbox.recv() => continue,
        };
        let more = matches!(read, Ok(Ok(true)));
        for frame in frames.drain(..) {
            match frame {
                Frame::Element { head, xml } if !wire::is_stream_error(&head) => {
                    late += 1;
                    let _ = dispatcher.admit(head, xml, Instant::now());
                }
                Frame::Element { .. } | Frame::StreamClose | Frame::StreamOpen(_) => {
                    return log_late(late);
                }
                Frame::Rejected { .. } => {}
            }
        }
        if !more {
            return log_late(late);
        }
    }
}

fn log_late(late: usize) {
    if late > 0 {
        tracing::info!(
            late,
            "stanzas sent by the server while the stream closed: handled, not answered"
        );
    }
}

/// Writes `first` and whatever else is already queued, then flushes once: under load one
/// write carries many replies instead of one system call each.
async fn send_batch(
    writer: &mut wire::Writer,
    outbox: &mut Outbox,
    first: Stanza,
) -> Result<(), StreamError> {
    const MAX_BATCH: usize = 64;
    writer.feed(&first).await?;
    for _ in 1..MAX_BATCH {
        let Ok(next) = outbox.try_recv() else { break };
        writer.feed(&next).await?;
    }
    writer.flush().await
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
    fn retries_within_a_second_for_minutes_then_back_off_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(b.next_delay(t0, false), FIRST_RETRY);
        // Four minutes of retries: every one within 0.5–1 s.
        let mut t = t0;
        while t.duration_since(t0) < Duration::from_secs(240) {
            let d = b.next_delay(t, false);
            assert!((FAST_RETRY_MIN..=FAST_RETRY_MAX).contains(&d), "{d:?}");
            t += d;
        }
        // Past the fast phase: doubling, capped.
        let late = t0 + FAST_FOR + Duration::from_secs(1);
        let delays: Vec<_> = (0..8).map(|_| b.next_delay(late, false)).collect();
        assert_eq!(delays[0], Duration::from_secs(2));
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), Duration::from_secs(30));
        // Connected again: the next loss starts fast.
        b.reset();
        assert_eq!(b.next_delay(late, false), FIRST_RETRY);
        // A cap below a second holds in the fast phase too.
        let mut tight = Backoff::new(Duration::from_millis(300));
        tight.next_delay(t0, false);
        assert!(tight.next_delay(t0, false) <= Duration::from_millis(300));
    }

    #[test]
    fn retries_are_spread() {
        let mut b = Backoff::new(Duration::from_secs(30));
        let t0 = Instant::now();
        b.next_delay(t0, false);
        let delays: std::collections::BTreeSet<_> =
            (0..50).map(|_| b.next_delay(t0, false)).collect();
        assert!(delays.len() > 5, "jittered: {delays:?}");
    }

    #[test]
    fn a_server_that_refuses_connections_is_knocked_at_faster() {
        let mut b = Backoff::new(Duration::from_secs(30));
        let t0 = Instant::now();
        b.next_delay(t0, true);
        for _ in 0..20 {
            let d = b.next_delay(t0, true);
            assert!(
                (REFUSED_RETRY_MIN..=REFUSED_RETRY_MAX).contains(&d),
                "{d:?}"
            );
        }
        let refused = StreamError::Io(std::io::ErrorKind::ConnectionRefused.into());
        assert!(refused.refused());
        assert!(!StreamError::HandshakeRefused.refused());
        assert!(!StreamError::Io(std::io::ErrorKind::TimedOut.into()).refused());
    }

    #[test]
    fn a_conflict_means_replaced_and_nothing_else_does() {
        assert!(StreamError::StreamError("conflict".into()).replaced());
        assert!(
            StreamError::StreamError("conflict text 'Replaced by new connection'".into())
                .replaced()
        );
        assert!(!StreamError::StreamError("host-unknown".into()).replaced());
        assert!(!StreamError::StreamError("not-authorized conflict".into()).replaced());
        assert!(!StreamError::Closed.replaced());
    }

    #[test]
    fn ping_goes_to_the_hosting_server() {
        let cfg = StreamConfig {
            jid: "push.example.org".parse().unwrap(),
            secret: "s".into(),
            server: "127.0.0.1:1".into(),
            max_reconnect_delay: Duration::from_secs(1),
            idle_ping: Duration::from_secs(5),
            limits: Limits::default(),
            max_in_flight: 16,
            max_in_flight_bytes: 1 << 20,
            when_replaced: WhenReplaced::Standby,
            drain_within: Duration::from_secs(1),
        };
        let Iq::Get { to, .. } = ping(&cfg, 1) else {
            panic!()
        };
        assert_eq!(to.unwrap().to_string(), "example.org");
    }
}
