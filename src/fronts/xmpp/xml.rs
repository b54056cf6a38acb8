//! A stanza read straight from its bytes into a compact tree, and the element view that the
//! publish and form readers share with minidom.
//!
//! Publishes are pushgate's volume, and building minidom trees through rxml and xso cost ~40 %
//! of pushgate's CPU per publish (docs/performance.md, "Performance, round two"). [`Tree::read`]
//! reads the plain XML that servers send (default namespaces, the five predefined entities,
//! character references) into one vector of nodes borrowing from the input, and declines
//! everything else: prefixed names, comments, CDATA, processing instructions, carriage
//! returns, names outside ASCII, characters XML forbids. A declined stanza goes the full way
//! (xso, which enforces all of XML), so what this reader accepts it must read exactly as that
//! way does; the differential tests check it. The framer has already bounded depth, element
//! and attribute counts and sizes.

use std::borrow::Cow;

use pushgate_providers::framing::unescape;
use xmpp_parsers::minidom;

/// What the publish and form readers need of an element, from a minidom element or a [`Node`].
pub trait Element: Copy {
    fn is(&self, name: &str, ns: &str) -> bool;
    fn name(&self) -> &str;
    fn attr<'s>(&'s self, name: &'s str) -> Option<&'s str>;
    fn children(&self) -> impl Iterator<Item = Self>;
    /// The text directly inside the element (not in its children), as minidom's `text()`.
    fn text(&self) -> Cow<'_, str>;

    /// The first child called `name` in `ns`.
    fn child(&self, name: &str, ns: &str) -> Option<Self> {
        self.children().find(|c| c.is(name, ns))
    }
}

impl<'a> Element for &'a minidom::Element {
    fn is(&self, name: &str, ns: &str) -> bool {
        minidom::Element::is(self, name, ns)
    }
    fn name(&self) -> &str {
        minidom::Element::name(self)
    }
    fn attr<'s>(&'s self, name: &'s str) -> Option<&'s str> {
        minidom::Element::attr(self, name)
    }
    fn children(&self) -> impl Iterator<Item = Self> {
        let el: &'a minidom::Element = self;
        el.children()
    }
    fn text(&self) -> Cow<'_, str> {
        Cow::Owned(minidom::Element::text(self))
    }
}

/// Sentinel for "no node" in the links between nodes.
const NONE: u32 = u32::MAX;

struct NodeData<'a> {
    ns: &'a str,
    name: &'a str,
    /// Range into `Tree::attrs`.
    attrs: (u32, u32),
    text: Cow<'a, str>,
    first_child: u32,
    last_child: u32,
    next_sibling: u32,
}

/// A whole stanza as nodes in document order; node 0 is the root.
pub struct Tree<'a> {
    nodes: Vec<NodeData<'a>>,
    attrs: Vec<(&'a str, Cow<'a, str>)>,
}

/// One element of a [`Tree`].
#[derive(Clone, Copy)]
pub struct Node<'t, 'a> {
    tree: &'t Tree<'a>,
    at: u32,
}

impl<'a> Tree<'a> {
    /// The tree of `xml`, or `None` when it is not within the plain XML this reader takes (or
    /// not well-formed at all).
    pub fn read(xml: &'a [u8]) -> Option<Tree<'a>> {
        let text = std::str::from_utf8(xml).ok()?;
        if !allowed_chars(xml) {
            return None;
        }
        Reader {
            s: text,
            at: 0,
            tree: Tree {
                nodes: Vec::with_capacity(24),
                attrs: Vec::with_capacity(32),
            },
            open: Vec::with_capacity(8),
        }
        .read()
    }

    pub fn root(&self) -> Node<'_, 'a> {
        Node { tree: self, at: 0 }
    }
}

impl<'t, 'a> Node<'t, 'a> {
    fn data(&self) -> &'t NodeData<'a> {
        &self.tree.nodes[self.at as usize]
    }

    /// The attributes as written, namespace declarations excluded.
    pub fn attrs(&self) -> impl Iterator<Item = (&'t str, &'t str)> {
        let (from, to) = self.data().attrs;
        self.tree.attrs[from as usize..to as usize]
            .iter()
            .map(|(k, v)| (*k, v.as_ref()))
    }
}

impl<'t, 'a> Element for Node<'t, 'a> {
    fn is(&self, name: &str, ns: &str) -> bool {
        let d = self.data();
        d.name == name && d.ns == ns
    }
    fn name(&self) -> &str {
        self.data().name
    }
    fn attr<'s>(&'s self, name: &'s str) -> Option<&'s str> {
        self.attrs().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
    fn children(&self) -> impl Iterator<Item = Self> {
        let tree = self.tree;
        let mut next = self.data().first_child;
        std::iter::from_fn(move || {
            let at = next;
            let node = tree.nodes.get(at as usize)?;
            next = node.next_sibling;
            Some(Node { tree, at })
        })
    }
    fn text(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.data().text.as_ref())
    }
}

/// No C0 controls but tab and line feed (a carriage return would be normalised by a full
/// parser: declined rather than copied), no U+FFFE or U+FFFF.
fn allowed_chars(xml: &[u8]) -> bool {
    xml.iter().enumerate().all(|(i, &b)| match b {
        b'\t' | b'\n' => true,
        0..0x20 => false,
        0xEF => !(xml.get(i + 1) == Some(&0xBF) && matches!(xml.get(i + 2), Some(0xBE | 0xBF))),
        _ => true,
    })
}

struct Open<'a> {
    node: u32,
    name: &'a str,
}

struct Reader<'a> {
    s: &'a str,
    at: usize,
    tree: Tree<'a>,
    open: Vec<Open<'a>>,
}

impl<'a> Reader<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn read(mut self) -> Option<Tree<'a>> {
        if self.peek()? != b'<' {
            return None;
        }
        loop {
            match self.peek() {
                None => return None,
                Some(b'<') => {
                    self.at += 1;
                    match self.peek()? {
                        b'/' => {
                            self.at += 1;
                            self.end_tag()?;
                            if self.open.is_empty() {
                                // The framer ends a frame at the root's end tag.
                                return (self.at == self.s.len()).then_some(self.tree);
                            }
                        }
                        b'!' | b'?' => return None,
                        _ => {
                            if self.start_tag()? && self.open.is_empty() {
                                return (self.at == self.s.len()).then_some(self.tree);
                            }
                        }
                    }
                }
                Some(_) => {
                    let parent = self.open.last()?.node;
                    let end = self.s[self.at..]
                        .find('<')
                        .map_or(self.s.len(), |n| self.at + n);
                    let raw = &self.s[self.at..end];
                    // "]]>" may not appear in text.
                    if raw.contains("]]>") {
                        return None;
                    }
                    let text = unescape(raw)?;
                    self.at = end;
                    let node = &mut self.tree.nodes[parent as usize];
                    node.text = match std::mem::take(&mut node.text) {
                        Cow::Borrowed("") => text,
                        before => Cow::Owned(before.into_owned() + &text),
                    };
                }
            }
        }
    }

    fn name(&mut self) -> Option<&'a str> {
        let b = self.bytes();
        let start = self.at;
        match b.get(start)? {
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {}
            _ => return None,
        }
        let mut end = start + 1;
        while let Some(c) = b.get(end)
            && matches!(c, b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.')
        {
            end += 1;
        }
        self.at = end;
        Some(&self.s[start..end])
    }

    fn space(&mut self) -> bool {
        let start = self.at;
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n')) {
            self.at += 1;
        }
        self.at > start
    }

    /// After `<`; `Some(true)` for an empty-element tag (`/>`).
    fn start_tag(&mut self) -> Option<bool> {
        let name = self.name()?;
        let parent_ns = match self.open.last() {
            Some(o) => self.tree.nodes[o.node as usize].ns,
            None => "",
        };
        let first_attr = self.tree.attrs.len();
        let mut ns = parent_ns;
        let mut declared_ns = false;
        // Prefixes declared on this element: each at most once, like any attribute.
        let mut prefixes: Vec<&'a str> = Vec::new();
        let empty = loop {
            let spaced = self.space();
            match self.peek()? {
                b'>' => {
                    self.at += 1;
                    break false;
                }
                b'/' => {
                    self.at += 1;
                    if self.peek()? != b'>' {
                        return None;
                    }
                    self.at += 1;
                    break true;
                }
                _ if !spaced => return None,
                _ => {}
            }
            let key = self.name()?;
            let prefixed = self.peek()? == b':';
            if prefixed {
                // Only `xmlns:prefix` declarations, which bind prefixes nothing here uses.
                if key != "xmlns" {
                    return None;
                }
                self.at += 1;
                let prefix = self.name()?;
                // `xml` and `xmlns` have fixed bindings; leave them to the full parser.
                if prefixes.contains(&prefix) || prefix == "xml" || prefix == "xmlns" {
                    return None;
                }
                prefixes.push(prefix);
            }
            self.space();
            if self.peek()? != b'=' {
                return None;
            }
            self.at += 1;
            self.space();
            let quote = self.peek()?;
            if quote != b'\'' && quote != b'"' {
                return None;
            }
            self.at += 1;
            let len = self.bytes()[self.at..].iter().position(|&c| c == quote)?;
            let raw = &self.s[self.at..self.at + len];
            self.at += len + 1;
            // `<` is not allowed in values; tabs and newlines would be normalised to spaces.
            if raw.bytes().any(|c| matches!(c, b'<' | b'\t' | b'\n')) {
                return None;
            }
            if prefixed {
                // An empty value would undeclare the prefix, which Namespaces 1.0 forbids.
                if raw.is_empty() {
                    return None;
                }
                continue;
            }
            if key == "xmlns" {
                if declared_ns || raw.contains('&') || raw.is_empty() {
                    return None;
                }
                declared_ns = true;
                ns = raw;
                continue;
            }
            if self.tree.attrs[first_attr..].iter().any(|(k, _)| *k == key) {
                return None;
            }
            self.tree.attrs.push((key, unescape(raw)?));
        };
        let tree = &mut self.tree;
        let node = u32::try_from(tree.nodes.len()).ok()?;
        tree.nodes.push(NodeData {
            ns,
            name,
            attrs: (
                u32::try_from(first_attr).ok()?,
                u32::try_from(tree.attrs.len()).ok()?,
            ),
            text: Cow::Borrowed(""),
            first_child: NONE,
            last_child: NONE,
            next_sibling: NONE,
        });
        if let Some(parent) = self.open.last() {
            let p = parent.node as usize;
            match tree.nodes[p].last_child {
                NONE => tree.nodes[p].first_child = node,
                last => tree.nodes[last as usize].next_sibling = node,
            }
            tree.nodes[p].last_child = node;
        }
        if !empty {
            self.open.push(Open { node, name });
        }
        Some(empty)
    }

    /// After `</`.
    fn end_tag(&mut self) -> Option<()> {
        let name = self.name()?;
        self.space();
        if self.peek()? != b'>' {
            return None;
        }
        self.at += 1;
        (self.open.pop()?.name == name).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(xml: &str) -> Option<Tree<'_>> {
        Tree::read(xml.as_bytes())
    }

    #[test]
    fn reads_elements_attributes_text_and_namespaces() {
        let xml = "<iq xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' type=\"set\" id='a&amp;b'>\
                   <pubsub xmlns='p'><publish node='n'/>  <x>1 &lt; 2 &#x263A;&#65;</x></pubsub></iq>";
        let tree = read(xml).unwrap();
        let iq = tree.root();
        assert!(iq.is("iq", "jabber:component:accept"));
        assert_eq!(iq.attr("id"), Some("a&b"));
        assert_eq!(iq.attrs().count(), 2);
        let pubsub = iq.children().next().unwrap();
        assert!(pubsub.is("pubsub", "p"));
        assert_eq!(
            pubsub.child("publish", "p").unwrap().attr("node"),
            Some("n")
        );
        let x = pubsub.child("x", "p").unwrap();
        assert_eq!(x.text(), "1 < 2 ☺A");
        assert_eq!(pubsub.text(), "  ");
        assert_eq!(pubsub.children().count(), 2);
    }

    #[test]
    fn declines_what_it_does_not_read_exactly() {
        for xml in [
            "<iq><a></b></iq>",
            "<iq><!-- c --></iq>",
            "<iq><![CDATA[x]]></iq>",
            "<iq><?pi?></iq>",
            "<iq><s:a xmlns:s='x'/></iq>",
            "<iq a='1' a='2'/>",
            "<iq a='1'b='2'/>",
            "<iq>&nbsp;</iq>",
            "<iq>&#0;</iq>",
            "<iq>&#xD800;</iq>",
            "<iq>&#-65;</iq>",
            "<iq>a]]>b</iq>",
            "<iq>a\rb</iq>",
            "<iq a='x\ny'/>",
            "<iq a='<'/>",
            "<iq>\u{1}</iq>",
            "<iq>\u{FFFE}</iq>",
            "<iq/> ",
            "<iq></iq><iq/>",
            "<iq>",
            "<ïq/>",
            "<iq xml:lang='en'/>",
            "<iq xmlns='' />",
            "<iq xmlns:p='a' xmlns:p='b'/>",
            "<iq xmlns:p=''/>",
            "<iq xmlns:xml='x'/>",
            "<iq xmlns:xmlns='x'/>",
            "<iq",
            "",
        ] {
            assert!(read(xml).is_none(), "{xml:?}");
        }
    }
}
