//! Splits an XML stream into its top-level elements at the byte level, within limits, before any
//! parser sees them.
//!
//! Tree-building XML parsers recurse with depth (a stanza of 14,000 nested elements overflowed
//! the stack) and turn one oversized token into a fatal stream error (one 9,000-byte attribute
//! dropped the component stream). Every byte of an XMPP stream may come from a hostile user, so
//! this framer counts depth, sizes and counts itself, hands on each complete top-level element as
//! a self-contained document (the stream root's namespace declarations copied in, so any XML
//! parser can read it alone, on any thread), and skips an element that breaks a limit without
//! buffering it, reporting which limit and as much of its start tag as could be read, so that
//! the sender can still be answered. Only input that no XMPP server emits (a DOCTYPE, a
//! processing instruction inside the stream, broken tag syntax) is a stream-fatal error.

use std::borrow::Cow;
use std::fmt;

/// Bounds on one top-level element (stanza).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes from its `<` to its last `>`.
    pub max_bytes: usize,
    /// Nesting depth; the top-level element itself is depth 1.
    pub max_depth: usize,
    /// Length of an element or attribute name (with prefix).
    pub max_name_bytes: usize,
    /// Length of one attribute value, as written (escaped).
    pub max_attribute_bytes: usize,
    /// Attributes on one element (namespace declarations included).
    pub max_attributes: usize,
    /// Elements in one top-level element, itself included.
    pub max_elements: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 256 * 1024,
            max_depth: 64,
            max_name_bytes: 256,
            max_attribute_bytes: 4096,
            max_attributes: 32,
            max_elements: 1024,
        }
    }
}

/// Which bound a top-level element broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Limit {
    Bytes,
    Depth,
    NameBytes,
    AttributeBytes,
    Attributes,
    Elements,
}

impl Limit {
    /// The name used in metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Bytes => "stanza_bytes",
            Limit::Depth => "depth",
            Limit::NameBytes => "name_bytes",
            Limit::AttributeBytes => "attribute_bytes",
            Limit::Attributes => "attributes",
            Limit::Elements => "elements",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Bytes => "stanza too large",
            Limit::Depth => "elements nested too deeply",
            Limit::NameBytes => "element or attribute name too long",
            Limit::AttributeBytes => "attribute value too long",
            Limit::Attributes => "too many attributes on one element",
            Limit::Elements => "too many elements in one stanza",
        })
    }
}

/// The start tag of a top-level element: its name and the attributes that were within limits,
/// with entities decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub name: String,
    pub attrs: Vec<(String, String)>,
}

impl Head {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the framer found in the bytes fed to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The stream root's start tag.
    StreamOpen(Head),
    /// A complete top-level element within limits, as a self-contained XML document.
    Element { head: Head, xml: Vec<u8> },
    /// A top-level element that broke `limit` and was skipped. `head` is `None` when its own
    /// name was unreadable.
    Rejected { head: Option<Head>, limit: Limit },
    /// The stream root's end tag.
    StreamClose,
}

/// Input no XMPP peer sends; the stream cannot continue after it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("malformed XML: {0}")]
    Syntax(&'static str),
    #[error("restricted XML: {0}")]
    Restricted(&'static str),
    #[error("stream header: {0}")]
    Root(Limit),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lex {
    /// Character data between tags.
    Text,
    /// Just after `<`.
    Open,
    /// The name of a start tag.
    StartName,
    /// Inside a start tag, between attributes.
    Tag,
    AttrName,
    /// After an attribute name, before `=`.
    Equals,
    /// After `=`, before the opening quote.
    Quote,
    /// Inside an attribute value opened with this quote byte.
    Value(u8),
    /// After `/` in a start tag.
    EmptyEnd,
    /// Inside `</…>`.
    EndTag,
    /// Inside `<?…?>`; true after a `?`.
    Pi(bool),
    /// After `<!`.
    Bang,
    /// After `<!-`.
    BangDash,
    /// After `<!` and this many bytes of `[CDATA[`.
    BangCdata(u8),
    /// Inside a comment: how many `-` just passed.
    Comment(u8),
    /// Inside a CDATA section: how many `]` just passed.
    Cdata(u8),
    /// After the stream's end tag: nothing more is read.
    Done,
}

const CDATA_OPEN: &[u8] = b"[CDATA[";

/// An attribute as written: name, raw (escaped) value, quote byte.
type RawAttr = (Vec<u8>, Vec<u8>, u8);

/// The parts of a start tag that are kept (for the root and top-level elements only).
#[derive(Default)]
struct Capture {
    name: Vec<u8>,
    attr_name: Vec<u8>,
    attr_value: Vec<u8>,
    /// The current attribute broke a limit: leave it out of the head.
    attr_dropped: bool,
    attrs: Vec<RawAttr>,
}

/// The top-level element being read.
struct Element {
    /// Its bytes so far; emptied once rejected.
    xml: Vec<u8>,
    /// Bytes of `xml` that are namespace declarations we added, not bytes that arrived.
    added: usize,
    rejected: Option<Limit>,
    elements: usize,
    head: Option<Head>,
}

/// The incremental framer of one direction of one stream. Feed it bytes as they arrive.
pub struct Framer {
    limits: Limits,
    lex: Lex,
    /// Open elements, the stream root included.
    depth: usize,
    /// Length of the current name or value, counted even when its bytes are not kept.
    run: usize,
    /// Attributes seen on the current start tag.
    attrs: usize,
    capture: Option<Capture>,
    /// Namespace declarations of the stream root, written into every top-level element.
    root_ns: Vec<RawAttr>,
    element: Option<Element>,
    /// Within the input being fed: where the current element's bytes not yet in its buffer
    /// start.
    copy: Option<usize>,
    /// A `<` between top-level elements whose meaning the next byte decides.
    pending_open: bool,
}

impl Framer {
    pub fn new(limits: Limits) -> Self {
        Framer {
            limits,
            lex: Lex::Text,
            depth: 0,
            run: 0,
            attrs: 0,
            capture: None,
            root_ns: Vec::new(),
            element: None,
            copy: None,
            pending_open: false,
        }
    }

    /// Forgets everything read, for a stream restart (after SASL) or a new connection.
    pub fn reset(&mut self) {
        *self = Framer::new(self.limits);
    }

    /// Reads `input` and appends every frame it completes to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Frame>) -> Result<(), FramingError> {
        // Bytes of the current element from `copy` on go into its buffer in one piece.
        self.copy = self.copying().then_some(0);
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.lex {
                Lex::Done => return Ok(()),
                Lex::Text => match memchr::memchr(b'<', &input[i..]) {
                    Some(at) => {
                        i += at;
                        self.lex = Lex::Open;
                        self.pending_open = self.depth == 1;
                    }
                    None => break,
                },
                Lex::Open => {
                    let top = std::mem::take(&mut self.pending_open);
                    match b {
                        b'/' => self.lex = Lex::EndTag,
                        b'?' if self.depth == 0 => self.lex = Lex::Pi(false),
                        b'?' => return Err(FramingError::Restricted("processing instruction")),
                        b'!' => self.lex = Lex::Bang,
                        b'>' | b'<' | b'=' | b'"' | b'\'' => {
                            return Err(FramingError::Syntax("'<' not followed by a name"));
                        }
                        _ if is_space(b) => {
                            return Err(FramingError::Syntax("'<' not followed by a name"));
                        }
                        _ => {
                            if top {
                                self.element = Some(Element {
                                    xml: b"<".to_vec(),
                                    added: 0,
                                    rejected: None,
                                    elements: 0,
                                    head: None,
                                });
                                self.copy = Some(i);
                            }
                            self.begin_start_tag(i)?;
                            self.lex = Lex::StartName;
                            continue;
                        }
                    }
                }
                Lex::StartName => {
                    if is_space(b) || b == b'>' || b == b'/' {
                        self.lex = Lex::Tag;
                        continue;
                    }
                    self.run += 1;
                    if self.run > self.tag_limits().max_name_bytes {
                        // Without its name the element cannot be answered.
                        self.capture = None;
                        self.reject(Limit::NameBytes, i)?;
                    } else if let Some(c) = &mut self.capture {
                        c.name.push(b);
                    }
                }
                Lex::Tag => match b {
                    b'>' => {
                        self.lex = Lex::Text;
                        self.end_start_tag(input, i, false, out)?;
                    }
                    b'/' => self.lex = Lex::EmptyEnd,
                    _ if is_space(b) => {}
                    b'<' | b'=' | b'"' | b'\'' => {
                        return Err(FramingError::Syntax("unexpected byte in a start tag"));
                    }
                    _ => {
                        self.attrs += 1;
                        self.run = 0;
                        let too_many = self.attrs > self.tag_limits().max_attributes;
                        if too_many {
                            self.reject(Limit::Attributes, i)?;
                        }
                        if let Some(c) = &mut self.capture {
                            c.attr_name.clear();
                            c.attr_value.clear();
                            c.attr_dropped = too_many;
                        }
                        self.lex = Lex::AttrName;
                        continue;
                    }
                },
                Lex::AttrName => {
                    if b == b'=' {
                        self.lex = Lex::Quote;
                    } else if is_space(b) {
                        self.lex = Lex::Equals;
                    } else if matches!(b, b'>' | b'/' | b'<' | b'"' | b'\'') {
                        return Err(FramingError::Syntax("attribute without a value"));
                    } else {
                        self.run += 1;
                        if self.run > self.tag_limits().max_name_bytes {
                            self.reject(Limit::NameBytes, i)?;
                            if let Some(c) = &mut self.capture {
                                c.attr_dropped = true;
                            }
                        } else if let Some(c) = &mut self.capture
                            && !c.attr_dropped
                        {
                            c.attr_name.push(b);
                        }
                    }
                }
                Lex::Equals => match b {
                    b'=' => self.lex = Lex::Quote,
                    _ if is_space(b) => {}
                    _ => return Err(FramingError::Syntax("attribute without a value")),
                },
                Lex::Quote => match b {
                    b'"' | b'\'' => {
                        self.run = 0;
                        self.lex = Lex::Value(b);
                    }
                    _ if is_space(b) => {}
                    _ => return Err(FramingError::Syntax("unquoted attribute value")),
                },
                Lex::Value(quote) => {
                    let rest = &input[i..];
                    let (len, closed) = match memchr::memchr(quote, rest) {
                        Some(at) => (at, true),
                        None => (rest.len(), false),
                    };
                    let value = &rest[..len];
                    if memchr::memchr(b'<', value).is_some() {
                        return Err(FramingError::Syntax("'<' in an attribute value"));
                    }
                    let max = self.tag_limits().max_attribute_bytes;
                    if self.run + len > max {
                        // The first byte over the limit.
                        let over = i + max.saturating_sub(self.run);
                        self.reject(Limit::AttributeBytes, over)?;
                        if let Some(c) = &mut self.capture {
                            c.attr_dropped = true;
                            c.attr_value = Vec::new();
                        }
                    } else if let Some(c) = &mut self.capture
                        && !c.attr_dropped
                    {
                        c.attr_value.extend_from_slice(value);
                    }
                    self.run += len;
                    i += len;
                    if !closed {
                        break;
                    }
                    if let Some(c) = &mut self.capture
                        && !c.attr_dropped
                    {
                        let name = std::mem::take(&mut c.attr_name);
                        let value = std::mem::take(&mut c.attr_value);
                        c.attrs.push((name, value, quote));
                    }
                    self.lex = Lex::Tag;
                }
                Lex::EmptyEnd => {
                    if b != b'>' {
                        return Err(FramingError::Syntax("'/' not followed by '>' in a tag"));
                    }
                    self.lex = Lex::Text;
                    self.end_start_tag(input, i, true, out)?;
                }
                Lex::EndTag => match memchr::memchr(b'>', &input[i..]) {
                    Some(at) => {
                        i += at;
                        self.lex = Lex::Text;
                        self.end_tag(input, i, out)?;
                    }
                    None => break,
                },
                Lex::Pi(question) => {
                    self.lex = match b {
                        b'>' if question => Lex::Text,
                        b'?' => Lex::Pi(true),
                        _ => Lex::Pi(false),
                    };
                }
                Lex::Bang => {
                    self.lex = match b {
                        b'-' => Lex::BangDash,
                        b'[' => Lex::BangCdata(1),
                        _ => return Err(FramingError::Restricted("DOCTYPE or other declaration")),
                    };
                }
                Lex::BangDash => {
                    if b != b'-' {
                        return Err(FramingError::Syntax("malformed comment"));
                    }
                    self.lex = Lex::Comment(0);
                }
                Lex::BangCdata(n) => {
                    let n = usize::from(n);
                    if CDATA_OPEN.get(n) != Some(&b) {
                        return Err(FramingError::Syntax("malformed CDATA section"));
                    }
                    self.lex = if n + 1 == CDATA_OPEN.len() {
                        Lex::Cdata(0)
                    } else {
                        Lex::BangCdata((n + 1) as u8)
                    };
                }
                Lex::Comment(dashes) => {
                    self.lex = match b {
                        b'-' => Lex::Comment(dashes.saturating_add(1)),
                        b'>' if dashes >= 2 => Lex::Text,
                        _ => Lex::Comment(0),
                    };
                }
                Lex::Cdata(brackets) => {
                    self.lex = match b {
                        b']' => Lex::Cdata(brackets.saturating_add(1)),
                        b'>' if brackets >= 2 => Lex::Text,
                        _ => Lex::Cdata(0),
                    };
                }
            }
            i += 1;
        }
        if let Some(from) = self.copy.take() {
            self.append(&input[from.min(input.len())..]);
        }
        Ok(())
    }

    /// The stream root comes from the server, before any user's input: it is held to the
    /// defaults, so that a tight configuration cannot refuse every stream.
    fn tag_limits(&self) -> Limits {
        if self.depth == 0 {
            Limits::default()
        } else {
            self.limits
        }
    }

    fn copying(&self) -> bool {
        self.element.as_ref().is_some_and(|e| e.rejected.is_none())
    }

    /// Adds bytes to the current element, or rejects it when they would not fit.
    fn append(&mut self, bytes: &[u8]) {
        let max = self.limits.max_bytes;
        if let Some(el) = &mut self.element
            && el.rejected.is_none()
        {
            if (el.xml.len() - el.added).saturating_add(bytes.len()) > max {
                el.rejected = Some(Limit::Bytes);
                el.xml = Vec::new();
            } else {
                el.xml.extend_from_slice(bytes);
            }
        }
    }

    /// The current element breaks `limit` at input position `at`: stop keeping its bytes, keep
    /// counting its structure. If its size was already over the limit by then, that is the
    /// limit it broke first, so the answer does not depend on how the bytes arrived. At the
    /// stream root there is nothing to skip to.
    fn reject(&mut self, limit: Limit, at: usize) -> Result<(), FramingError> {
        let max = self.limits.max_bytes;
        let copy = self.copy;
        match &mut self.element {
            None => Err(FramingError::Root(limit)),
            Some(el) => {
                if el.rejected.is_none() {
                    let arrived = (el.xml.len() - el.added)
                        .saturating_add(copy.map_or(0, |from| (at + 1).saturating_sub(from)));
                    el.rejected = Some(if arrived > max { Limit::Bytes } else { limit });
                    el.xml = Vec::new();
                }
                Ok(())
            }
        }
    }

    fn begin_start_tag(&mut self, at: usize) -> Result<(), FramingError> {
        self.run = 0;
        self.attrs = 0;
        // Only the root's and the top-level elements' start tags are kept.
        self.capture = (self.depth <= 1).then(Capture::default);
        if let Some(el) = &mut self.element {
            el.elements += 1;
            let too_many = el.elements > self.limits.max_elements;
            // The new element's depth inside the top-level element is `self.depth` (the root
            // counts in `self.depth`, the new element not yet).
            let too_deep = self.depth > self.limits.max_depth;
            if too_many {
                self.reject(Limit::Elements, at)?;
            } else if too_deep {
                self.reject(Limit::Depth, at)?;
            }
        }
        Ok(())
    }

    fn end_start_tag(
        &mut self,
        input: &[u8],
        at: usize,
        empty: bool,
        out: &mut Vec<Frame>,
    ) -> Result<(), FramingError> {
        let capture = self.capture.take();
        if self.depth == 0 {
            let c = capture.unwrap_or_default();
            self.root_ns = c
                .attrs
                .iter()
                .filter(|(name, _, _)| is_ns_declaration(name))
                .cloned()
                .collect();
            out.push(Frame::StreamOpen(head_of(&c)));
            if empty {
                out.push(Frame::StreamClose);
                self.lex = Lex::Done;
            } else {
                self.depth = 1;
            }
            return Ok(());
        }
        if let Some(c) = capture {
            // The start tag of a top-level element.
            if let Some(from) = self.copy.take() {
                self.append(&input[from..=at]);
                self.copy = Some(at + 1);
            }
            let declarations = self.missing_declarations(&c);
            if let Some(el) = &mut self.element {
                el.head = Some(head_of(&c));
                if el.rejected.is_none() && !declarations.is_empty() {
                    let after_name = 1 + c.name.len();
                    el.added = declarations.len();
                    el.xml.splice(after_name..after_name, declarations);
                }
            }
        }
        if empty {
            if self.depth == 1 {
                self.finish_element(input, at, out);
            }
        } else {
            self.depth += 1;
        }
        Ok(())
    }

    /// The root's namespace declarations that the element's start tag does not make itself,
    /// written out as attributes.
    fn missing_declarations(&self, c: &Capture) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value, quote) in &self.root_ns {
            if c.attrs.iter().any(|(n, _, _)| n == name) {
                continue;
            }
            out.push(b' ');
            out.extend_from_slice(name);
            out.push(b'=');
            out.push(*quote);
            out.extend_from_slice(value);
            out.push(*quote);
        }
        out
    }

    fn end_tag(
        &mut self,
        input: &[u8],
        at: usize,
        out: &mut Vec<Frame>,
    ) -> Result<(), FramingError> {
        match self.depth {
            0 => Err(FramingError::Syntax("end tag without a start tag")),
            1 => {
                self.depth = 0;
                self.lex = Lex::Done;
                out.push(Frame::StreamClose);
                Ok(())
            }
            2 => {
                self.depth = 1;
                self.finish_element(input, at, out);
                Ok(())
            }
            _ => {
                self.depth -= 1;
                Ok(())
            }
        }
    }

    fn finish_element(&mut self, input: &[u8], at: usize, out: &mut Vec<Frame>) {
        if let Some(from) = self.copy.take() {
            self.append(&input[from..=at]);
        }
        let Some(el) = self.element.take() else {
            return;
        };
        out.push(match (el.rejected, el.head) {
            (None, Some(head)) => Frame::Element { head, xml: el.xml },
            (Some(limit), head) => Frame::Rejected { head, limit },
            // A kept element always has its head; be safe anyway.
            (None, None) => Frame::Rejected {
                head: None,
                limit: Limit::NameBytes,
            },
        });
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_ns_declaration(name: &[u8]) -> bool {
    name == b"xmlns" || name.starts_with(b"xmlns:")
}

/// The head with entities decoded; attributes that are not valid text are left out.
fn head_of(c: &Capture) -> Head {
    Head {
        name: String::from_utf8_lossy(&c.name).into_owned(),
        attrs: c
            .attrs
            .iter()
            .filter_map(|(name, value, _)| {
                let value = unescape(std::str::from_utf8(value).ok()?)?.into_owned();
                Some((String::from_utf8(name.clone()).ok()?, value))
            })
            .collect(),
    }
}

/// Text or an attribute value with its references resolved; `None` for any entity but the five
/// predefined ones, or a reference to a character XML forbids (the element's parser will refuse
/// it too).
pub fn unescape(raw: &str) -> Option<Cow<'_, str>> {
    if !raw.contains('&') {
        return Some(Cow::Borrowed(raw));
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after.find(';')?;
        let entity = &after[..semi];
        let c = match entity {
            "lt" => '<',
            "gt" => '>',
            "amp" => '&',
            "quot" => '"',
            "apos" => '\'',
            _ => {
                // Digits only: from_str_radix and parse also take a sign.
                if entity.contains(['+', '-']) {
                    return None;
                }
                let code = if let Some(hex) = entity.strip_prefix("#x") {
                    u32::from_str_radix(hex, 16).ok()?
                } else {
                    entity.strip_prefix('#')?.parse().ok()?
                };
                let c = char::from_u32(code)?;
                if !matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
                {
                    return None;
                }
                c
            }
        };
        out.push(c);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
        xmlns:stream='http://etherx.jabber.org/streams' from='push.example.org' id='s1'>";

    fn frames_of(limits: Limits, chunks: &[&[u8]]) -> Result<Vec<Frame>, FramingError> {
        let mut framer = Framer::new(limits);
        let mut out = Vec::new();
        for chunk in chunks {
            framer.feed(chunk, &mut out)?;
        }
        Ok(out)
    }

    fn frames(input: &[u8]) -> Vec<Frame> {
        frames_of(Limits::default(), &[HEADER, input]).unwrap()
    }

    /// The frames after the stream header.
    fn body(input: &[u8]) -> Vec<Frame> {
        let mut f = frames(input);
        assert!(matches!(f.remove(0), Frame::StreamOpen(_)));
        f
    }

    /// Parses a framed element alone with rxml and returns (namespace, local name) of its root.
    fn parse_alone(xml: &[u8]) -> (String, String) {
        use rxml::Parse as _;
        let mut parser = rxml::Parser::new();
        let mut buf = xml;
        let mut root = None;
        loop {
            match parser.parse(&mut buf, true) {
                Ok(Some(rxml::Event::StartElement(_, (ns, name), _))) if root.is_none() => {
                    root = Some((ns.to_string(), name.to_string()));
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => panic!("{e:?}: {}", String::from_utf8_lossy(xml)),
            }
        }
        root.expect("no root element")
    }

    #[test]
    fn stream_header_stanzas_and_end() {
        let mut f = frames(
            b"\n <iq type='get' id='a1' from='example.org' to='push.example.org'><ping xmlns='urn:xmpp:ping'/></iq>\
              <message from='a@b' id='m&amp;1'/></stream:stream>",
        );
        let Frame::StreamOpen(root) = f.remove(0) else {
            panic!("{f:?}")
        };
        assert_eq!(root.name, "stream:stream");
        assert_eq!(root.attr("id"), Some("s1"));
        let Frame::Element { head, xml } = f.remove(0) else {
            panic!("{f:?}")
        };
        assert_eq!((head.name.as_str(), head.attr("id")), ("iq", Some("a1")));
        assert_eq!(head.attr("from"), Some("example.org"));
        assert_eq!(
            parse_alone(&xml),
            ("jabber:component:accept".to_owned(), "iq".to_owned())
        );
        let Frame::Element { head, xml } = f.remove(0) else {
            panic!("{f:?}")
        };
        assert_eq!(
            head.attr("id"),
            Some("m&1"),
            "entities are decoded in the head"
        );
        assert!(xml.starts_with(b"<message xmlns='jabber:component:accept'"));
        assert_eq!(f, vec![Frame::StreamClose]);
    }

    #[test]
    fn stream_prefixed_elements_get_their_declaration() {
        let f = body(
            b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        );
        let Frame::Element { xml, .. } = &f[0] else {
            panic!("{f:?}")
        };
        assert_eq!(
            parse_alone(xml),
            (
                "http://etherx.jabber.org/streams".to_owned(),
                "error".to_owned()
            )
        );
    }

    #[test]
    fn own_namespace_declaration_is_kept() {
        let f = body(b"<iq xmlns='jabber:client' id='1'/>");
        let Frame::Element { xml, .. } = &f[0] else {
            panic!("{f:?}")
        };
        assert_eq!(parse_alone(xml).0, "jabber:client");
    }

    #[test]
    fn every_split_of_the_input_gives_the_same_frames() {
        let input: &[u8] =
            b"<iq type='set' id='x>y' from='a/b'><pubsub xmlns='p'><publish node=\"n'1\">\
            <item><x a='1' b = \"2\"><![CDATA[<not a tag>]]></x></item></publish></pubsub></iq>\
            <!-- a comment --><handshake/><message>t&lt;ext</message></stream:stream>";
        let whole = frames(input);
        assert_eq!(whole.len(), 5, "{whole:?}");
        for split in 0..input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(
                frames_of(Limits::default(), &[HEADER, a, b]).unwrap(),
                whole,
                "split at {split}"
            );
        }
        let mut framer = Framer::new(Limits::default());
        let mut out = Vec::new();
        for byte in HEADER.iter().chain(input) {
            framer.feed(std::slice::from_ref(byte), &mut out).unwrap();
        }
        assert_eq!(out, whole, "byte by byte");
    }

    #[test]
    fn deep_nesting_is_skipped_and_the_stream_goes_on() {
        let mut input = b"<message id='deep' from='u@example.org/r'>".to_vec();
        for _ in 0..14_000 {
            input.extend_from_slice(b"<a>");
        }
        for _ in 0..14_000 {
            input.extend_from_slice(b"</a>");
        }
        input.extend_from_slice(b"</message><iq id='next'/>");
        let f = body(&input);
        let Frame::Rejected { head, limit } = &f[0] else {
            panic!("{f:?}")
        };
        assert_eq!(*limit, Limit::Depth);
        assert_eq!(head.as_ref().and_then(|h| h.attr("id")), Some("deep"));
        assert!(matches!(&f[1], Frame::Element { head, .. } if head.attr("id") == Some("next")));
    }

    #[test]
    fn depth_limit_is_exact() {
        let limits = Limits {
            max_depth: 3,
            ..Limits::default()
        };
        let ok = frames_of(limits, &[HEADER, b"<a><b><c/></b></a>"]).unwrap();
        assert!(matches!(ok[1], Frame::Element { .. }), "{ok:?}");
        let deep = frames_of(limits, &[HEADER, b"<a><b><c><d/></c></b></a>"]).unwrap();
        assert!(
            matches!(
                deep[1],
                Frame::Rejected {
                    limit: Limit::Depth,
                    ..
                }
            ),
            "{deep:?}"
        );
    }

    #[test]
    fn a_long_attribute_is_rejected_but_the_sender_can_be_answered() {
        let mut input =
            b"<message to='push.example.org' from='u@example.org/r' id='m1' x='".to_vec();
        input.extend(std::iter::repeat_n(b'A', 9_000));
        input.extend_from_slice(b"'/><iq id='next'/>");
        let f = body(&input);
        let Frame::Rejected {
            head: Some(head),
            limit: Limit::AttributeBytes,
        } = &f[0]
        else {
            panic!("{f:?}")
        };
        assert_eq!(head.attr("from"), Some("u@example.org/r"));
        assert_eq!(head.attr("id"), Some("m1"));
        assert_eq!(head.attr("x"), None, "the offending value is not kept");
        assert!(matches!(&f[1], Frame::Element { .. }));
    }

    #[test]
    fn size_name_attribute_and_element_counts_are_bounded() {
        let limits = Limits {
            max_bytes: 100,
            max_name_bytes: 8,
            max_attributes: 2,
            max_elements: 3,
            ..Limits::default()
        };
        let cases: [(&[u8], Limit); 5] = [
            (&[b'x'; 200], Limit::Bytes),
            (b"<averyverylongname/>", Limit::NameBytes),
            (b"<a averyverylongname='1'/>", Limit::NameBytes),
            (b"<a b='1' c='2' d='3'/>", Limit::Attributes),
            (b"<a><b/><c/><d/></a>", Limit::Elements),
        ];
        for (stanza, limit) in cases {
            let stanza = if stanza[0] == b'x' {
                let mut s = b"<a>".to_vec();
                s.extend_from_slice(stanza);
                s.extend_from_slice(b"</a>");
                s
            } else {
                stanza.to_vec()
            };
            let mut input = stanza.clone();
            input.extend_from_slice(b"<ok/>");
            let f = frames_of(limits, &[HEADER, &input]).unwrap();
            assert!(
                matches!(&f[1], Frame::Rejected { limit: l, .. } if *l == limit),
                "{}: {f:?}",
                String::from_utf8_lossy(&stanza)
            );
            assert!(matches!(&f[2], Frame::Element { head, .. } if head.name == "ok"));
        }
        // A name too long to read leaves nothing to answer with.
        let f = frames_of(limits, &[HEADER, b"<averyverylongname id='1'/>"]).unwrap();
        assert_eq!(
            f[1],
            Frame::Rejected {
                head: None,
                limit: Limit::NameBytes
            }
        );
    }

    /// Found by the fuzzer: when a stanza breaks two limits, the one reported must not depend
    /// on how its bytes were cut into reads. The first one crossed, in byte order, wins.
    #[test]
    fn the_first_limit_crossed_is_reported_however_the_bytes_arrive() {
        let limits = Limits {
            max_bytes: 64,
            max_elements: 3,
            ..Limits::default()
        };
        let text = "x".repeat(100);
        for (stanza, first) in [
            (format!("<a>{text}<b/><c/><d/></a>"), Limit::Bytes),
            (format!("<a><b/><c/><d/>{text}</a>"), Limit::Elements),
        ] {
            let input = [HEADER, stanza.as_bytes()].concat();
            for split in 0..input.len() {
                let (x, y) = input.split_at(split);
                let f = frames_of(limits, &[x, y]).unwrap();
                assert!(
                    matches!(f[1], Frame::Rejected { limit, .. } if limit == first),
                    "{stanza} split at {split}: {f:?}"
                );
            }
        }
    }

    #[test]
    fn a_rejected_element_is_not_buffered() {
        let limits = Limits {
            max_bytes: 1024,
            ..Limits::default()
        };
        let mut framer = Framer::new(limits);
        let mut out = Vec::new();
        framer.feed(HEADER, &mut out).unwrap();
        framer.feed(b"<message><body>", &mut out).unwrap();
        for _ in 0..1000 {
            framer.feed(&[b'z'; 1000], &mut out).unwrap();
            let kept = framer.element.as_ref().map_or(0, |e| e.xml.capacity());
            assert!(kept <= 2 * 1024, "{kept} bytes kept");
        }
        framer.feed(b"</body></message>", &mut out).unwrap();
        assert!(matches!(
            out.last(),
            Some(Frame::Rejected {
                limit: Limit::Bytes,
                ..
            })
        ));
    }

    #[test]
    fn what_no_server_sends_ends_the_stream() {
        for bad in [
            &b"<!DOCTYPE x>"[..],
            b"<a><?pi x?></a>",
            b"< a/>",
            b"<a b/>",
            b"<a b=c/>",
            b"<a b='<'/>",
        ] {
            let result = frames_of(Limits::default(), &[HEADER, bad]);
            assert!(result.is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(frames_of(Limits::default(), &[b"</stream:stream>"]).is_err());
    }

    #[test]
    fn an_oversized_root_is_fatal() {
        let mut root = b"<stream:stream id='".to_vec();
        root.extend(std::iter::repeat_n(b'0', 5000));
        root.extend_from_slice(b"'>");
        assert_eq!(
            frames_of(Limits::default(), &[&root]),
            Err(FramingError::Root(Limit::AttributeBytes))
        );
    }

    #[test]
    fn reset_starts_a_new_stream() {
        let mut framer = Framer::new(Limits::default());
        let mut out = Vec::new();
        framer.feed(HEADER, &mut out).unwrap();
        framer.feed(b"<success xmlns='x'/>", &mut out).unwrap();
        framer.reset();
        framer.feed(HEADER, &mut out).unwrap();
        framer.feed(b"<a/>", &mut out).unwrap();
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(matches!(out[2], Frame::StreamOpen(_)));
    }
}
