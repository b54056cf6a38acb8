//! Just enough XML for a CCS client stream: an incremental reader that turns bytes into the
//! stream header, whole top-level elements and the stream end, and escaping for what we write.
//!
//! Why not xmpp-parsers/minidom: the workspace's `component` feature makes xmpp-parsers' default
//! namespace `jabber:component:accept` build-wide (a `jabber:client` stanza then fails to
//! parse), and CCS is a `jabber:client` stream. The stream is cut into stanzas by pushgate's
//! framer (crate::framing), which bounds size and depth before anything is parsed and skips a
//! stanza that breaks a limit instead of ending the stream; rxml then parses each stanza alone
//! (well-formedness, namespaces, entities) into a small tree.

use std::collections::VecDeque;

use rxml::Parse as _;
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::framing::{self, Framer, Limits};

/// Bounds on one CCS stanza (they are a few KiB).
const LIMITS: Limits = Limits {
    max_bytes: 256 * 1024,
    max_depth: 16,
    max_name_bytes: 256,
    max_attribute_bytes: 4096,
    max_attributes: 32,
    max_elements: 256,
};

/// One element with its namespace, unprefixed attributes, children and text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Element {
    pub ns: String,
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first child named `name` in namespace `ns`.
    pub fn child(&self, ns: &str, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.ns == ns && c.name == name)
    }

    pub fn is(&self, ns: &str, name: &str) -> bool {
        self.ns == ns && self.name == name
    }

    /// Parses one framed stanza, a complete document of bounded depth.
    fn parse(xml: &[u8]) -> Result<Self, String> {
        let mut parser = rxml::Parser::new();
        let mut input = xml;
        let mut stack: Vec<Element> = Vec::new();
        loop {
            match parser.parse(&mut input, true) {
                Ok(Some(rxml::Event::StartElement(_, (ns, name), attrs))) => {
                    stack.push(Element {
                        ns: ns.as_str().to_owned(),
                        name: name.to_string(),
                        attrs: attrs
                            .iter()
                            .filter(|((ns, _), _)| ns.is_none())
                            .map(|((_, k), v)| (k.to_string(), v.to_string()))
                            .collect(),
                        children: Vec::new(),
                        text: String::new(),
                    });
                }
                Ok(Some(rxml::Event::EndElement(_))) => {
                    let done = stack.pop().ok_or("end without start")?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(done),
                        None => return Ok(done),
                    }
                }
                Ok(Some(rxml::Event::Text(_, text))) => {
                    if let Some(open) = stack.last_mut() {
                        open.text.push_str(&text);
                    }
                }
                Ok(Some(rxml::Event::XmlDeclaration(..))) => {}
                Ok(None) | Err(rxml::error::EndOrError::NeedMoreData) => {
                    return Err("stanza ends early".to_owned());
                }
                Err(rxml::error::EndOrError::Error(e)) => return Err(e.to_string()),
            }
        }
    }
}

/// What the reader yields.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// `<stream:stream …>` opened.
    Header,
    /// A complete top-level element (stanza, features, SASL answer).
    Element(Element),
    /// `</stream:stream>` or the end of the connection.
    End,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum XmlError {
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Framing(#[from] framing::FramingError),
}

/// An incremental reader over one direction of a stream; [`Self::restart`] after SASL success.
pub(crate) struct XmlReader<R> {
    io: R,
    framer: Framer,
    ready: VecDeque<framing::Frame>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> XmlReader<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            framer: Framer::new(LIMITS),
            ready: VecDeque::new(),
            eof: false,
        }
    }

    /// A new XML document begins (RFC 6120 stream restart).
    pub fn restart(&mut self) {
        self.framer.reset();
    }

    /// The next frame. Cancel-safe: all progress lives in `self`, and the only await is a read.
    pub async fn next(&mut self) -> Result<Frame, XmlError> {
        loop {
            match self.ready.pop_front() {
                Some(framing::Frame::StreamOpen(_)) => return Ok(Frame::Header),
                Some(framing::Frame::StreamClose) => return Ok(Frame::End),
                Some(framing::Frame::Element { head, xml }) => match Element::parse(&xml) {
                    Ok(element) => return Ok(Frame::Element(element)),
                    Err(e) => {
                        tracing::warn!(stanza = %head.name, "CCS: unparsable stanza skipped: {e}")
                    }
                },
                Some(framing::Frame::Rejected { head, limit }) => {
                    let name = head.map(|h| h.name).unwrap_or_default();
                    tracing::warn!(stanza = %name, limit = limit.label(), "CCS: stanza skipped: {limit}");
                }
                None => {
                    if self.eof {
                        return Ok(Frame::End);
                    }
                    let mut chunk = [0u8; 8192];
                    let n = self.io.read(&mut chunk).await?;
                    if n == 0 {
                        // Cut off mid-stream: the connection closed, whatever was unfinished.
                        self.eof = true;
                        continue;
                    }
                    let mut frames = Vec::new();
                    self.framer.feed(&chunk[..n], &mut frames)?;
                    self.ready.extend(frames);
                }
            }
        }
    }
}

/// `text` escaped for character data or a single- or double-quoted attribute.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8]) -> Vec<Result<Frame, String>> {
        let mut reader = XmlReader::new(input);
        let mut out = Vec::new();
        loop {
            match reader.next().await {
                Ok(Frame::End) => {
                    out.push(Ok(Frame::End));
                    return out;
                }
                Ok(f) => out.push(Ok(f)),
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn reads_stanzas_with_prefixed_namespaces_and_entities() {
        let input = b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'> \
            <message id='a'><data:gcm xmlns:data='google:mobile:data'>{&quot;x&quot;:1}</data:gcm></message></stream:stream>";
        let f = frames(input).await;
        assert_eq!(f[0], Ok(Frame::Header));
        let Ok(Frame::Element(m)) = &f[1] else {
            panic!("{f:?}")
        };
        assert!(m.is("jabber:client", "message"));
        assert_eq!(m.attr("id"), Some("a"));
        assert_eq!(
            m.child("google:mobile:data", "gcm").unwrap().text,
            "{\"x\":1}"
        );
        assert_eq!(f[2], Ok(Frame::End));
    }

    #[tokio::test]
    async fn bad_input_is_skipped_or_an_error_never_a_panic() {
        // A stanza that does not parse, and one nested too deeply, are skipped; the next is read.
        let deep = format!(
            "<s xmlns='jabber:client'><a><b></a></c>{}{}<m x='{}'/><ok/></s>",
            "<a>".repeat(40),
            "</a>".repeat(40),
            "A".repeat(9000)
        );
        let f = frames(deep.as_bytes()).await;
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(
            matches!(&f[1], Ok(Frame::Element(e)) if e.name == "ok"),
            "{f:?}"
        );
        // Syntax no server sends ends the stream with an error.
        let f = frames(b"<s><!DOCTYPE x>").await;
        assert!(matches!(f.last(), Some(Err(_))), "{f:?}");
        let f = frames(b"").await;
        assert_eq!(f, vec![Ok(Frame::End)]);
        // A connection cut mid-stanza is the end of the stream, not a half element.
        let f = frames(b"<s><message id='x'><gcm>{").await;
        assert_eq!(f, vec![Ok(Frame::Header), Ok(Frame::End)]);
    }

    #[test]
    fn escapes() {
        assert_eq!(escape("a<b&'\">"), "a&lt;b&amp;&apos;&quot;&gt;");
    }
}
