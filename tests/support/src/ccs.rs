//! A local FCM XMPP connection server (CCS; legacy, Google shut it down in 2024) for the
//! `fcm-xmpp` provider tests: direct TLS on 127.0.0.1 with a test CA, the real handshake
//! (stream header and features, SASL PLAIN checked against `<sender>@fcm.googleapis.com` and the
//! server key, stream restart, resource bind), then downstream messages answered as each test
//! scripts, with per-connection records (messages, outstanding count, acks from the client) and
//! commands (push a stanza, release withheld acks, close).
//!
//! Its XML handling is written here on rxml, independently of the provider's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rxml::Parse as _;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::pki::Pki;

pub const DOMAIN: &str = "fcm.googleapis.com";
const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
const GCM: &str = "google:mobile:data";

/// How the mock answers one downstream message.
#[derive(Clone, Debug)]
pub enum Reply {
    Ack,
    Nack(&'static str),
    /// `<message type='error'>` with this stanza error condition.
    StanzaError(&'static str),
    /// No answer until [`MockCcs::release`].
    Withhold,
}

/// Chooses the reply from the connection's index and the downstream JSON.
pub type Script = Arc<dyn Fn(usize, &Value) -> Reply + Send + Sync>;

pub fn always(reply: Reply) -> Script {
    Arc::new(move |_, _| reply.clone())
}

/// What one connection did.
#[derive(Default)]
pub struct ConnRecord {
    pub authenticated: bool,
    /// The authcid the client logged in with, right or wrong.
    pub authcid: Option<String>,
    pub stream_to: Option<String>,
    /// Downstream JSON, in arrival order.
    pub messages: Vec<Value>,
    pub outstanding: usize,
    pub max_outstanding: usize,
    /// `message_type: ack` messages the client sent (for receipts and upstream).
    pub client_acks: Vec<Value>,
    pub closed: bool,
    commands: Option<mpsc::UnboundedSender<Cmd>>,
}

enum Cmd {
    Raw(String),
    Release,
    Close,
}

pub struct MockCcs {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<ConnRecord>>>,
    task: JoinHandle<()>,
}

impl Drop for MockCcs {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockCcs {
    pub async fn start(pki: &Pki, sender_id: &str, server_key: &str, script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<ConnRecord>>> = Arc::default();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config(false, &[]).unwrap());
        let expected = (format!("{sender_id}@{DOMAIN}"), server_key.to_owned());
        let state = Arc::clone(&conns);
        let task = tokio::spawn(async move {
            let mut handlers = Vec::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (tx, rx) = mpsc::unbounded_channel();
                let index = {
                    let mut c = state.lock().unwrap();
                    c.push(ConnRecord {
                        commands: Some(tx),
                        ..Default::default()
                    });
                    c.len() - 1
                };
                let acceptor = acceptor.clone();
                let state = Arc::clone(&state);
                let expected = expected.clone();
                let script = Arc::clone(&script);
                handlers.push(AbortOnDrop(tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let _ = serve(tls, index, &state, &expected, &script, rx).await;
                    }
                    state.lock().unwrap()[index].closed = true;
                })));
            }
        });
        Self { addr, conns, task }
    }

    pub fn server(&self) -> String {
        self.addr.to_string()
    }

    /// Inspects the connection records.
    pub fn with<T>(&self, f: impl FnOnce(&[ConnRecord]) -> T) -> T {
        f(&self.conns.lock().unwrap())
    }

    pub fn connections(&self) -> usize {
        self.with(|c| c.len())
    }

    pub fn all_messages(&self) -> Vec<Value> {
        self.with(|c| c.iter().flat_map(|r| r.messages.clone()).collect())
    }

    /// Waits (up to 5 s) until `cond` holds.
    pub async fn wait_until(&self, what: &str, cond: impl Fn(&[ConnRecord]) -> bool) {
        for _ in 0..500 {
            if self.with(&cond) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting until {what}");
    }

    fn command(&self, conn: usize, cmd: Cmd) {
        let tx = self.with(|c| c[conn].commands.clone()).unwrap();
        let _ = tx.send(cmd);
    }

    /// Sends a raw stanza on connection `conn`.
    pub fn push(&self, conn: usize, stanza: &str) {
        self.command(conn, Cmd::Raw(stanza.to_owned()));
    }

    /// Sends `json` inside a prefixed `<data:gcm>` element, as CCS sends control messages.
    pub fn push_json(&self, conn: usize, json: &Value) {
        let text = escape(&json.to_string());
        self.push(
            conn,
            &format!("<message><data:gcm xmlns:data='{GCM}'>{text}</data:gcm></message>"),
        );
    }

    /// Acks every withheld message on `conn`.
    pub fn release(&self, conn: usize) {
        self.command(conn, Cmd::Release);
    }

    /// Ends the stream and closes the connection.
    pub fn close(&self, conn: usize) {
        self.command(conn, Cmd::Close);
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

fn stream_header(id: usize) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream from='{DOMAIN}' id='s{id}' version='1.0' \
         xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
    )
}

fn gcm_message(json: &Value) -> String {
    format!(
        "<message id=''><gcm xmlns='{GCM}'>{}</gcm></message>",
        escape(&json.to_string())
    )
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    tls: S,
    index: usize,
    state: &Mutex<Vec<ConnRecord>>,
    expected: &(String, String),
    script: &Script,
    mut commands: mpsc::UnboundedReceiver<Cmd>,
) -> Option<()> {
    let (read, mut write) = tokio::io::split(tls);
    let mut reader = Reader::new(read);

    let Ev::Header(to) = reader.next().await? else {
        return None;
    };
    state.lock().unwrap()[index].stream_to = to;
    let features = format!(
        "{}<stream:features><mechanisms xmlns='{SASL}'><mechanism>X-OAUTH2</mechanism>\
         <mechanism>X-GOOGLE-TOKEN</mechanism><mechanism>PLAIN</mechanism></mechanisms></stream:features>",
        stream_header(index)
    );
    write.write_all(features.as_bytes()).await.ok()?;
    let Ev::Element(auth) = reader.next().await? else {
        return None;
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.text.trim())
        .unwrap_or_default();
    let parts: Vec<&[u8]> = decoded.split(|b| *b == 0).collect();
    let ok = auth.name == "auth"
        && auth.ns == SASL
        && auth.attrs.get("mechanism").map(String::as_str) == Some("PLAIN")
        && parts.len() == 3
        && parts[1] == expected.0.as_bytes()
        && parts[2] == expected.1.as_bytes();
    state.lock().unwrap()[index].authcid = parts
        .get(1)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    if !ok {
        let failure =
            format!("<failure xmlns='{SASL}'><not-authorized/></failure></stream:stream>");
        write.write_all(failure.as_bytes()).await.ok()?;
        let _ = write.shutdown().await;
        return None;
    }
    write
        .write_all(format!("<success xmlns='{SASL}'/>").as_bytes())
        .await
        .ok()?;

    reader.restart();
    let Ev::Header(_) = reader.next().await? else {
        return None;
    };
    let features = format!(
        "{}<stream:features><bind xmlns='{BIND}'/><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></stream:features>",
        stream_header(index)
    );
    write.write_all(features.as_bytes()).await.ok()?;
    let Ev::Element(iq) = reader.next().await? else {
        return None;
    };
    if iq.name != "iq" || !iq.children.iter().any(|c| c.name == "bind" && c.ns == BIND) {
        return None;
    }
    let id = escape(iq.attrs.get("id").map(String::as_str).unwrap_or(""));
    let bound = format!(
        "<iq type='result' id='{id}'><bind xmlns='{BIND}'><jid>{}/R{index}</jid></bind></iq>",
        expected.0
    );
    write.write_all(bound.as_bytes()).await.ok()?;
    state.lock().unwrap()[index].authenticated = true;

    let mut withheld: Vec<(String, String)> = Vec::new();
    loop {
        tokio::select! {
            ev = reader.next() => {
                let Some(Ev::Element(message)) = ev else { return None };
                let Some(gcm) = message.children.iter().find(|c| c.name == "gcm" && c.ns == GCM) else {
                    continue;
                };
                let json: Value = serde_json::from_str(&gcm.text).unwrap_or(Value::Null);
                if json["message_type"] == "ack" {
                    state.lock().unwrap()[index].client_acks.push(json);
                    continue;
                }
                let id = json["message_id"].as_str().unwrap_or("").to_owned();
                let to = json["to"].as_str().unwrap_or("").to_owned();
                {
                    let mut c = state.lock().unwrap();
                    let r = &mut c[index];
                    r.messages.push(json.clone());
                    r.outstanding += 1;
                    r.max_outstanding = r.max_outstanding.max(r.outstanding);
                }
                let answer = match script(index, &json) {
                    Reply::Ack => gcm_message(&json!({"message_type": "ack", "message_id": id, "from": to})),
                    Reply::Nack(code) => gcm_message(&json!({
                        "message_type": "nack", "message_id": id, "from": to,
                        "error": code, "error_description": format!("mock says {code}")
                    })),
                    Reply::StanzaError(condition) => format!(
                        "<message type='error' id='{}'><error type='cancel'><{condition} \
                         xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text \
                         xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>mock error</text></error></message>",
                        escape(&id)
                    ),
                    Reply::Withhold => {
                        withheld.push((id, to));
                        continue;
                    }
                };
                state.lock().unwrap()[index].outstanding -= 1;
                write.write_all(answer.as_bytes()).await.ok()?;
            }
            cmd = commands.recv() => match cmd? {
                Cmd::Raw(s) => write.write_all(s.as_bytes()).await.ok()?,
                Cmd::Release => {
                    for (id, to) in withheld.drain(..) {
                        state.lock().unwrap()[index].outstanding -= 1;
                        let ack = gcm_message(&json!({"message_type": "ack", "message_id": id, "from": to}));
                        write.write_all(ack.as_bytes()).await.ok()?;
                    }
                }
                Cmd::Close => {
                    let _ = write.write_all(b"</stream:stream>").await;
                    let _ = write.shutdown().await;
                    return None;
                }
            }
        }
    }
}

/// A parsed element: namespace, local name, unprefixed attributes, children, text.
#[derive(Debug, Default)]
struct El {
    ns: String,
    name: String,
    attrs: HashMap<String, String>,
    children: Vec<El>,
    text: String,
}

enum Ev {
    /// Stream header with its `to`.
    Header(Option<String>),
    Element(El),
}

struct Reader<R> {
    io: R,
    parser: rxml::Parser,
    buf: Vec<u8>,
    stack: Vec<El>,
    root_open: bool,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(io: R) -> Self {
        Self {
            io,
            parser: rxml::Parser::new(),
            buf: Vec::new(),
            stack: Vec::new(),
            root_open: false,
        }
    }

    fn restart(&mut self) {
        self.parser = rxml::Parser::new();
        self.stack.clear();
        self.root_open = false;
    }

    /// The next header or top-level element; `None` at the end or on bad input.
    async fn next(&mut self) -> Option<Ev> {
        loop {
            let mut input: &[u8] = &self.buf;
            let result = self.parser.parse(&mut input, false);
            let used = self.buf.len() - input.len();
            self.buf.drain(..used);
            match result {
                Ok(Some(rxml::Event::StartElement(_, (ns, name), attrs))) => {
                    let attrs: HashMap<String, String> = attrs
                        .iter()
                        .filter(|((ns, _), _)| ns.is_none())
                        .map(|((_, k), v)| (k.to_string(), v.to_string()))
                        .collect();
                    if !self.root_open {
                        self.root_open = true;
                        return Some(Ev::Header(attrs.get("to").cloned()));
                    }
                    self.stack.push(El {
                        ns: ns.to_string(),
                        name: name.to_string(),
                        attrs,
                        ..Default::default()
                    });
                }
                Ok(Some(rxml::Event::EndElement(_))) => {
                    let done = self.stack.pop()?;
                    match self.stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => return Some(Ev::Element(done)),
                    }
                }
                Ok(Some(rxml::Event::Text(_, t))) => {
                    if let Some(open) = self.stack.last_mut() {
                        open.text.push_str(&t);
                    }
                }
                Ok(Some(rxml::Event::XmlDeclaration(..))) => {}
                Ok(None) | Err(rxml::error::EndOrError::Error(_)) => return None,
                Err(rxml::error::EndOrError::NeedMoreData) => {
                    let mut chunk = [0u8; 4096];
                    let n = self.io.read(&mut chunk).await.ok()?;
                    if n == 0 {
                        return None;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}
