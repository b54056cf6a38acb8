//! Just enough XML for a CCS client stream: an incremental reader that turns bytes into the
//! stream header, whole top-level elements and the stream end, and escaping for what we write.
//!
//! Why not xmpp-parsers/minidom: the workspace's `component` feature makes xmpp-parsers' default
//! namespace `jabber:component:accept` build-wide (rust-stack.md §3 pitfall 1), and CCS is a
//! `jabber:client` stream. rxml does the hard parts (well-formedness, namespaces, entities);
//! this file only builds small trees and bounds them, so bad or hostile input is an error,
//! never a panic or unbounded memory.

use rxml::Parse as _;
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// Largest top-level element accepted (CCS stanzas are a few KiB).
const MAX_ELEMENT_BYTES: usize = 256 * 1024;
/// Deepest nesting accepted inside a stanza.
const MAX_DEPTH: usize = 16;

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
    #[error("malformed XML: {0}")]
    Syntax(String),
    #[error("stanza too large or too deep")]
    TooLarge,
}

/// An incremental reader over one direction of a stream; [`Self::restart`] after SASL success.
pub(crate) struct XmlReader<R> {
    io: R,
    parser: rxml::Parser,
    buf: Vec<u8>,
    eof: bool,
    /// Open elements below the stream root.
    stack: Vec<Element>,
    in_stream: bool,
    element_bytes: usize,
}

impl<R: AsyncRead + Unpin> XmlReader<R> {
    pub fn new(io: R) -> Self {
        Self {
            io,
            parser: rxml::Parser::new(),
            buf: Vec::new(),
            eof: false,
            stack: Vec::new(),
            in_stream: false,
            element_bytes: 0,
        }
    }

    /// A new XML document begins (RFC 6120 stream restart); unread bytes are kept.
    pub fn restart(&mut self) {
        self.parser = rxml::Parser::new();
        self.stack.clear();
        self.in_stream = false;
        self.element_bytes = 0;
    }

    /// The next frame. Cancel-safe: all progress lives in `self`, and the only await is a read.
    pub async fn next(&mut self) -> Result<Frame, XmlError> {
        loop {
            let mut input: &[u8] = &self.buf;
            let result = self.parser.parse(&mut input, self.eof);
            let consumed = self.buf.len() - input.len();
            self.buf.drain(..consumed);
            match result {
                Ok(Some(event)) => {
                    if let Some(frame) = self.event(event)? {
                        return Ok(frame);
                    }
                }
                Ok(None) => return Ok(Frame::End),
                Err(rxml::error::EndOrError::NeedMoreData) => {
                    if self.eof {
                        return Ok(Frame::End);
                    }
                    let mut chunk = [0u8; 8192];
                    let n = self.io.read(&mut chunk).await?;
                    if n == 0 {
                        self.eof = true;
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                // Cut off mid-stream: the connection closed, whatever was unfinished.
                Err(rxml::error::EndOrError::Error(_)) if self.eof => return Ok(Frame::End),
                Err(rxml::error::EndOrError::Error(e)) => {
                    return Err(XmlError::Syntax(e.to_string()));
                }
            }
        }
    }

    fn event(&mut self, event: rxml::Event) -> Result<Option<Frame>, XmlError> {
        if !self.stack.is_empty() {
            self.element_bytes += event.metrics().len();
            if self.element_bytes > MAX_ELEMENT_BYTES {
                return Err(XmlError::TooLarge);
            }
        }
        match event {
            rxml::Event::XmlDeclaration(..) => Ok(None),
            rxml::Event::StartElement(_, (ns, name), attrs) => {
                if !self.in_stream {
                    self.in_stream = true;
                    return Ok(Some(Frame::Header));
                }
                if self.stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooLarge);
                }
                let attrs = attrs
                    .iter()
                    .filter(|((ns, _), _)| ns.is_none())
                    .map(|((_, k), v)| (k.to_string(), v.to_string()))
                    .collect();
                if self.stack.is_empty() {
                    self.element_bytes = 0;
                }
                self.stack.push(Element {
                    ns: ns.as_str().to_owned(),
                    name: name.to_string(),
                    attrs,
                    children: Vec::new(),
                    text: String::new(),
                });
                Ok(None)
            }
            rxml::Event::EndElement(_) => match self.stack.pop() {
                None => {
                    self.in_stream = false;
                    Ok(Some(Frame::End))
                }
                Some(done) => match self.stack.last_mut() {
                    Some(parent) => {
                        parent.children.push(done);
                        Ok(None)
                    }
                    None => Ok(Some(Frame::Element(done))),
                },
            },
            rxml::Event::Text(_, text) => {
                // Whitespace between stanzas (keepalives) is ignored.
                if let Some(open) = self.stack.last_mut() {
                    open.text.push_str(&text);
                }
                Ok(None)
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
    async fn bad_input_is_an_error_not_a_panic() {
        let f = frames(b"<stream:stream xmlns:stream='s'><a><b></a>").await;
        assert!(matches!(f.last(), Some(Err(_))), "{f:?}");
        let deep = format!("<s>{}", "<a>".repeat(40));
        let f = frames(deep.as_bytes()).await;
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
