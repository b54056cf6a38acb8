//! One CCS connection: direct TLS, a `jabber:client` stream, SASL PLAIN with the sender id and
//! server key (`<sender_id>@<domain>` as the identity), stream restart and resource bind as in
//! RFC 6120 (<https://www.rfc-editor.org/rfc/rfc6120>), then a reader task that routes
//! acks and nacks to the waiting sends, acks receipts and upstream messages, and notices
//! `CONNECTION_DRAINING`.
//!
//! Why it is written by hand: CCS (legacy; Google shut it down in 2024) only ever needs these few
//! element shapes, and tokio-xmpp's client cannot be used in this build (xml.rs). Flow control is
//! a semaphore of 100 permits per connection; a permit is held until the server acks or nacks
//! the message, even after the send gave up waiting, because CCS still counts it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::xml::{Element, Frame, XmlError, XmlReader, escape};

/// CCS's limit of unacknowledged downstream messages per connection.
pub(crate) const MAX_UNACKED: usize = 100;

const NS_CLIENT: &str = "jabber:client";
const NS_STREAMS: &str = "http://etherx.jabber.org/streams";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const NS_STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub(crate) const NS_GCM: &str = "google:mobile:data";

/// Where and as whom to connect.
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub domain: String,
    pub sender_id: String,
    pub server_key: String,
    pub tls: TlsConnector,
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("cannot connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Xml(#[from] XmlError),
    #[error("CCS refused the credentials (SASL {0}); check sender_id and server_key")]
    Auth(String),
    #[error("unexpected answer during the handshake: {0}")]
    Protocol(String),
}

/// How CCS answered one downstream message.
#[derive(Debug)]
pub(crate) enum Outcome {
    Ack,
    Nack {
        error: String,
        description: String,
    },
    /// `<message type='error'>`: the stanza error condition and text.
    StanzaError {
        condition: String,
        text: String,
    },
}

struct Waiting {
    answer: oneshot::Sender<Outcome>,
    _permit: OwnedSemaphorePermit,
    since: Instant,
}

/// An open, authenticated CCS connection.
pub(crate) struct Conn {
    pub id: u64,
    out: mpsc::UnboundedSender<String>,
    slots: Arc<Semaphore>,
    pending: Mutex<HashMap<String, Waiting>>,
    draining: AtomicBool,
    closed: AtomicBool,
    /// When the server last sent anything.
    last_heard: Mutex<Instant>,
    /// Wakes the reader to end the connection from our side.
    stop: Notify,
}

impl Conn {
    /// Opens and authenticates a connection and starts its reader and writer tasks.
    pub async fn open(id: u64, target: &Target) -> Result<Arc<Self>, ConnectError> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let tls = target.tls.connect(name, tcp).await?;
        let (read, mut write) = tokio::io::split(tls);
        let mut reader = XmlReader::new(read);

        open_stream(&mut write, &mut reader, &target.domain).await?;
        let features = expect_element(&mut reader).await?;
        let plain = features
            .child(NS_SASL, "mechanisms")
            .is_some_and(|m| m.children.iter().any(|c| c.text.trim() == "PLAIN"));
        if !features.is(NS_STREAMS, "features") || !plain {
            return Err(ConnectError::Protocol(
                "the server does not offer SASL PLAIN".to_owned(),
            ));
        }
        let credentials = format!(
            "\0{}@{}\0{}",
            target.sender_id, target.domain, target.server_key
        );
        let auth = format!(
            "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{}</auth>",
            B64.encode(credentials)
        );
        write.write_all(auth.as_bytes()).await?;
        write.flush().await?;
        let answer = expect_element(&mut reader).await?;
        if answer.is(NS_SASL, "failure") {
            let condition = answer
                .children
                .first()
                .map_or("failure", |c| c.name.as_str())
                .to_owned();
            return Err(ConnectError::Auth(condition));
        }
        if !answer.is(NS_SASL, "success") {
            return Err(ConnectError::Protocol(format!(
                "<{}> instead of SASL success",
                answer.name
            )));
        }

        reader.restart();
        open_stream(&mut write, &mut reader, &target.domain).await?;
        let features = expect_element(&mut reader).await?;
        if features.child(NS_BIND, "bind").is_none() {
            return Err(ConnectError::Protocol(
                "no resource binding offered".to_owned(),
            ));
        }
        let bind = format!("<iq type='set' id='bind-{id}'><bind xmlns='{NS_BIND}'/></iq>");
        write.write_all(bind.as_bytes()).await?;
        write.flush().await?;
        let bound = expect_element(&mut reader).await?;
        if !bound.is(NS_CLIENT, "iq") || bound.attr("type") != Some("result") {
            return Err(ConnectError::Protocol(format!(
                "resource binding failed: <{} type='{}'>",
                bound.name,
                bound.attr("type").unwrap_or("")
            )));
        }

        let (out, rx) = mpsc::unbounded_channel();
        let conn = Arc::new(Self {
            id,
            out,
            slots: Arc::new(Semaphore::new(MAX_UNACKED)),
            pending: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            last_heard: Mutex::new(Instant::now()),
            stop: Notify::new(),
        });
        tokio::spawn(write_loop(write, rx));
        tokio::spawn(read_loop(Arc::clone(&conn), reader));
        Ok(conn)
    }

    /// Takes new sends: open and not draining.
    pub fn usable(&self) -> bool {
        !self.closed.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }

    pub fn free_slots(&self) -> usize {
        self.slots.available_permits()
    }

    pub fn slots(&self) -> Arc<Semaphore> {
        Arc::clone(&self.slots)
    }

    /// True when a message has waited longer than `after` for its answer and the server has
    /// been silent as long: the connection is presumably dead (a half-open TCP connection).
    pub fn stalled(&self, after: Duration) -> bool {
        let silent = self.last_heard.lock().is_ok_and(|t| t.elapsed() > after);
        silent
            && self.pending.lock().is_ok_and(|p| {
                p.values()
                    .map(|w| w.since)
                    .min()
                    .is_some_and(|t| t.elapsed() > after)
            })
    }

    /// Ends the connection from our side; outstanding sends fail.
    pub fn shut(&self) {
        self.draining.store(true, Ordering::Release);
        self.stop.notify_one();
    }

    /// No new sends on this connection; it stays open for outstanding answers.
    pub fn set_draining(&self) {
        if !self.draining.swap(true, Ordering::AcqRel) {
            tracing::info!(connection = self.id, "CCS connection draining");
        }
    }

    /// Sends one downstream message (`json` holds `message_id`) using a flow-control `permit`;
    /// the answer arrives on the returned channel, which closes if the connection is lost.
    pub fn submit(
        &self,
        message_id: &str,
        json: &str,
        permit: OwnedSemaphorePermit,
    ) -> oneshot::Receiver<Outcome> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(
                message_id.to_owned(),
                Waiting {
                    answer: tx,
                    _permit: permit,
                    since: Instant::now(),
                },
            );
        }
        let stanza = gcm_stanza(message_id, json);
        if self.out.send(stanza).is_err() {
            // The writer is gone: the connection is closing; drop the waiter so the send sees it.
            self.forget(message_id);
        }
        rx
    }

    fn forget(&self, message_id: &str) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.remove(message_id);
        }
    }

    fn answer(&self, message_id: &str, outcome: Outcome) {
        let waiting = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.remove(message_id));
        match waiting {
            Some(w) => {
                let _ = w.answer.send(outcome);
            }
            None => tracing::debug!(
                connection = self.id,
                "CCS answered a message id that is not outstanding"
            ),
        }
    }

    /// Marks the connection closed and fails every outstanding send.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.slots.close();
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }

    /// Handles one stanza from CCS.
    fn handle(&self, stanza: &Element) {
        if !stanza.is(NS_CLIENT, "message") {
            tracing::debug!(connection = self.id, element = %stanza.name, "ignoring CCS element");
            return;
        }
        if stanza.attr("type") == Some("error") {
            let Some(id) = stanza.attr("id") else {
                tracing::debug!(connection = self.id, "CCS stanza error without an id");
                return;
            };
            let error = stanza.children.iter().find(|c| c.name == "error");
            let condition = error
                .and_then(|e| {
                    e.children
                        .iter()
                        .find(|c| c.ns == NS_STANZAS && c.name != "text")
                })
                .map_or_else(|| "undefined-condition".to_owned(), |c| c.name.clone());
            let text = error
                .and_then(|e| e.child(NS_STANZAS, "text"))
                .map(|t| t.text.clone())
                .unwrap_or_default();
            self.answer(id, Outcome::StanzaError { condition, text });
            return;
        }
        let Some(gcm) = stanza.child(NS_GCM, "gcm") else {
            return;
        };
        let Ok(json) = serde_json::from_str::<Value>(&gcm.text) else {
            tracing::debug!(
                connection = self.id,
                "CCS sent a gcm element that is not JSON"
            );
            return;
        };
        let field = |k: &str| json.get(k).and_then(Value::as_str);
        match field("message_type") {
            Some("ack") => {
                if let Some(id) = field("message_id") {
                    self.answer(id, Outcome::Ack);
                }
            }
            Some("nack") => {
                if let Some(id) = field("message_id") {
                    let error = field("error").unwrap_or("UNKNOWN").to_owned();
                    let description = field("error_description").unwrap_or("").to_owned();
                    self.answer(id, Outcome::Nack { error, description });
                }
            }
            Some("control") => {
                if field("control_type") == Some("CONNECTION_DRAINING") {
                    self.set_draining();
                }
            }
            // Receipts and upstream messages must be acked or CCS redelivers them.
            Some("receipt") | None => {
                if let (Some(from), Some(id)) = (field("from"), field("message_id")) {
                    let ack =
                        serde_json::json!({"to": from, "message_id": id, "message_type": "ack"});
                    let _ = self.out.send(gcm_stanza("", &ack.to_string()));
                }
            }
            Some(other) => {
                tracing::debug!(
                    connection = self.id,
                    message_type = other,
                    "ignoring CCS message"
                );
            }
        }
    }
}

/// `<message id='…'><gcm xmlns='google:mobile:data'>json</gcm></message>`.
fn gcm_stanza(id: &str, json: &str) -> String {
    format!(
        "<message id='{}'><gcm xmlns='{NS_GCM}'>{}</gcm></message>",
        escape(id),
        escape(json)
    )
}

async fn open_stream<W: AsyncWrite + Unpin, R: tokio::io::AsyncRead + Unpin>(
    write: &mut W,
    reader: &mut XmlReader<R>,
    domain: &str,
) -> Result<(), ConnectError> {
    let header = format!(
        "<?xml version='1.0'?><stream:stream to='{}' version='1.0' xmlns='{NS_CLIENT}' xmlns:stream='{NS_STREAMS}'>",
        escape(domain)
    );
    write.write_all(header.as_bytes()).await?;
    write.flush().await?;
    match reader.next().await? {
        Frame::Header => Ok(()),
        Frame::End => Err(ConnectError::Protocol(
            "the server closed the stream".to_owned(),
        )),
        Frame::Element(e) => Err(ConnectError::Protocol(format!(
            "<{}> instead of a stream header",
            e.name
        ))),
    }
}

async fn expect_element<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut XmlReader<R>,
) -> Result<Element, ConnectError> {
    match reader.next().await? {
        Frame::Element(e) if e.is(NS_STREAMS, "error") => Err(ConnectError::Protocol(format!(
            "stream error {}",
            e.children.first().map_or("", |c| c.name.as_str())
        ))),
        Frame::Element(e) => Ok(e),
        Frame::Header | Frame::End => Err(ConnectError::Protocol(
            "the server closed the stream during the handshake".to_owned(),
        )),
    }
}

type TlsWrite = tokio::io::WriteHalf<TlsStream<TcpStream>>;
type TlsRead = tokio::io::ReadHalf<TlsStream<TcpStream>>;

/// Writes queued stanzas in order; ends (closing our side) when the connection is dropped.
async fn write_loop(mut write: TlsWrite, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(stanza) = rx.recv().await {
        if write.write_all(stanza.as_bytes()).await.is_err() || write.flush().await.is_err() {
            return;
        }
    }
    let _ = write.shutdown().await;
}

/// Reads until the stream ends or fails, then fails outstanding sends.
async fn read_loop(conn: Arc<Conn>, mut reader: XmlReader<TlsRead>) {
    loop {
        let frame = tokio::select! {
            frame = reader.next() => frame,
            () = conn.stop.notified() => {
                tracing::info!(connection = conn.id, "closing the CCS connection");
                let _ = conn.out.send("</stream:stream>".to_owned());
                break;
            }
        };
        if let Ok(mut t) = conn.last_heard.lock() {
            *t = Instant::now();
        }
        match frame {
            Ok(Frame::Element(e)) => conn.handle(&e),
            Ok(Frame::Header) => {}
            Ok(Frame::End) => {
                tracing::info!(connection = conn.id, "CCS closed the connection");
                let _ = conn.out.send("</stream:stream>".to_owned());
                break;
            }
            Err(e) => {
                tracing::warn!(connection = conn.id, error = %e, "CCS connection lost");
                break;
            }
        }
    }
    conn.close();
}
