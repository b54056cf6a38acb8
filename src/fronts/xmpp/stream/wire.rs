//! The bytes of one XEP-0114 connection: stream header, handshake, framed reads, batched writes.
//!
//! Reading goes through pushgate's own framer (`pushgate_providers::framing`), not an XML
//! library's stream reader: those build trees recursively and treat one oversized token as a
//! fatal stream error, so a single hostile stanza from any user could end the stream or the
//! process. Here the loop only frames bytes; each stanza is parsed later, on a worker, as a
//! document of its own.

use std::time::Duration;

use pushgate_providers::framing::{Frame, Framer, Head, Limits};
use rxml::writer::TrackNamespace as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use xmpp_parsers::component::Handshake;
use xmpp_parsers::jid::BareJid;

use super::StreamError;

const NS_COMPONENT: &str = "jabber:component:accept";
const NS_STREAM: &str = "http://etherx.jabber.org/streams";
/// One read's worth; the framer copies out what belongs to a stanza.
const READ_CHUNK: usize = 64 * 1024;

/// The read half: bytes in, frames out.
pub struct Reader {
    io: OwnedReadHalf,
    framer: Framer,
    buf: Vec<u8>,
}

impl Reader {
    /// Reads once and frames what arrived into `out`. Cancel-safe: a read that did not finish
    /// consumed nothing. `Ok(false)` when the server closed the connection.
    pub async fn read(&mut self, out: &mut Vec<Frame>) -> Result<bool, StreamError> {
        self.buf.clear();
        let n = self.io.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Ok(false);
        }
        self.framer.feed(&self.buf[..n], out)?;
        Ok(true)
    }

    /// Reads until a frame arrives; for the handshake, where nothing else can happen.
    async fn next(&mut self, pending: &mut Vec<Frame>) -> Result<Frame, StreamError> {
        loop {
            if !pending.is_empty() {
                return Ok(pending.remove(0));
            }
            if !self.read(pending).await? {
                return Err(StreamError::Closed);
            }
        }
    }
}

/// The write half, buffered: replies are fed, then flushed together. Its encoder has written
/// the stream header, so stanzas inherit the stream's namespaces instead of repeating them.
pub struct Writer {
    io: BufWriter<OwnedWriteHalf>,
    encoder: rxml::writer::Encoder<rxml::writer::SimpleNamespaces>,
    buf: Vec<u8>,
}

impl Writer {
    fn new(io: OwnedWriteHalf) -> Self {
        let mut encoder = rxml::writer::Encoder::new();
        encoder
            .ns_tracker_mut()
            .declare_fixed(Some(rxml::xml_ncname!("stream")), NS_STREAM.into());
        encoder
            .ns_tracker_mut()
            .declare_fixed(None, NS_COMPONENT.into());
        Writer {
            io: BufWriter::new(io),
            encoder,
            buf: Vec::new(),
        }
    }

    /// Serialises one stanza into the buffer; `flush` sends it.
    pub async fn feed<T: xso::AsXml>(&mut self, xso: &T) -> Result<(), StreamError> {
        self.buf.clear();
        let serialize = |e: xso::error::Error| StreamError::Serialize(e.to_string());
        for item in xso.as_xml_iter().map_err(serialize)? {
            let item = item.map_err(serialize)?;
            self.encoder
                .encode(item.as_rxml_item(), &mut self.buf)
                .map_err(|e| StreamError::Serialize(e.to_string()))?;
        }
        self.io.write_all(&self.buf).await?;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), StreamError> {
        self.io.flush().await?;
        Ok(())
    }

    /// Ends the stream politely.
    pub async fn close(&mut self) -> Result<(), StreamError> {
        self.io.write_all(b"</stream:stream>").await?;
        self.io.flush().await?;
        self.io.get_mut().shutdown().await?;
        Ok(())
    }

    /// `<?xml?><stream:stream xmlns=… xmlns:stream=… to=jid>`, through the encoder, which
    /// then knows the stream's namespaces.
    async fn open(&mut self, jid: &BareJid) -> Result<(), StreamError> {
        use rxml::writer::Item;
        self.buf.clear();
        let items = [
            Item::XmlDeclaration(rxml::XmlVersion::V1_0),
            Item::ElementHeadStart(NS_STREAM.into(), rxml::xml_ncname!("stream")),
            Item::Attribute(rxml::Namespace::NONE, rxml::xml_ncname!("to"), jid.as_str()),
            Item::ElementHeadEnd,
        ];
        for item in items {
            self.encoder
                .encode(item, &mut self.buf)
                .map_err(|e| StreamError::Serialize(e.to_string()))?;
        }
        self.io.write_all(&self.buf).await?;
        self.io.flush().await?;
        Ok(())
    }
}

/// An authenticated stream, and whatever the server sent right behind its handshake answer.
pub struct Connection {
    pub reader: Reader,
    pub writer: Writer,
    pub early: Vec<Frame>,
}

/// Connects to `server`, opens the stream for `jid` and authenticates with `secret`.
/// `response_timeout` bounds each wait for the server.
pub async fn connect(
    server: &str,
    jid: &BareJid,
    secret: &str,
    limits: Limits,
    response_timeout: Duration,
) -> Result<Connection, StreamError> {
    let socket = TcpStream::connect(server).await?;
    // Replies are batched per write already; Nagle would hold the next small write until the
    // server ACKs the previous one, adding up to a delayed-ACK period.
    socket.set_nodelay(true)?;
    let (read, write) = socket.into_split();
    let mut reader = Reader {
        io: read,
        framer: Framer::new(limits),
        buf: Vec::with_capacity(READ_CHUNK),
    };
    let mut writer = Writer::new(write);
    writer.open(jid).await?;
    let mut pending = Vec::new();
    let stream_id = match tokio::time::timeout(response_timeout, reader.next(&mut pending)).await {
        Ok(Ok(Frame::StreamOpen(head))) => head.attr("id").map(str::to_owned),
        Ok(Ok(_)) => return Err(StreamError::Protocol("no stream header")),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(StreamError::Timeout),
    }
    .ok_or(StreamError::NoStreamId)?;
    writer
        .feed(&Handshake::from_stream_id_and_password(stream_id, secret))
        .await?;
    writer.flush().await?;
    loop {
        match tokio::time::timeout(response_timeout, reader.next(&mut pending)).await {
            Ok(Ok(Frame::Element { head, .. })) if head.name == "handshake" => break,
            Ok(Ok(Frame::Element { head, xml })) if is_stream_error(&head) => {
                return Err(StreamError::StreamError(stream_error_condition(&xml)));
            }
            Ok(Ok(Frame::Element { .. } | Frame::Rejected { .. })) => continue,
            Ok(Ok(Frame::StreamOpen(_))) => return Err(StreamError::Protocol("second header")),
            Ok(Ok(Frame::StreamClose)) | Ok(Err(StreamError::Closed)) => {
                return Err(StreamError::HandshakeRefused);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(StreamError::Timeout),
        }
    }
    Ok(Connection {
        reader,
        writer,
        early: pending,
    })
}

/// `<stream:error>`, under whatever prefix the server bound to the streams namespace (stanzas
/// are never prefixed).
pub fn is_stream_error(head: &Head) -> bool {
    head.name
        .split_once(':')
        .is_some_and(|(_, local)| local == "error")
}

/// The defined condition (and text) of a `<stream:error>`, for the log.
pub fn stream_error_condition(xml: &[u8]) -> String {
    let Ok(el) = xmpp_parsers::minidom::Element::from_reader(xml) else {
        return "unreadable stream error".to_owned();
    };
    let mut parts: Vec<String> = el.children().map(|c| c.name().to_owned()).collect();
    if let Some(text) = el.children().find(|c| c.name() == "text") {
        parts.push(format!("'{}'", text.text()));
    }
    parts.join(" ")
}
