//! A publish IQ read straight from its bytes, without building a minidom tree (see
//! `fronts/xmpp/xml.rs` for why and what it declines).
//!
//! Only the plain shape servers send is taken here: `<iq type='set'>` in the component
//! namespace with `id`, `from`, an optional `to` and nothing else, and one `<pubsub/>` child. Any
//! other stanza, and any publish this reading is not sure to read exactly as the full parse
//! would, returns `None` and goes the full way, whose answers (errors included) stay the
//! reference.

use xmpp_parsers::jid::Jid;

use super::request::{NS_PUBSUB, PublishError, PublishRequest};
use crate::fronts::xmpp::xml::{Element as _, Tree};

const NS_COMPONENT: &str = "jabber:component:accept";

/// The parts of a publish IQ the router needs.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishIq {
    pub from: Jid,
    pub to: Option<Jid>,
    pub id: String,
    pub request: Result<PublishRequest, PublishError>,
}

impl PublishIq {
    pub fn read(xml: &[u8]) -> Option<PublishIq> {
        let tree = Tree::read(xml)?;
        let iq = tree.root();
        if !iq.is("iq", NS_COMPONENT) || iq.attr("type") != Some("set") {
            return None;
        }
        if iq
            .attrs()
            .any(|(k, _)| !matches!(k, "type" | "id" | "from" | "to"))
        {
            return None;
        }
        let mut children = iq.children();
        let pubsub = children.next()?;
        if children.next().is_some()
            || !pubsub.is("pubsub", NS_PUBSUB)
            || !iq.text().trim_matches([' ', '\t', '\n']).is_empty()
        {
            return None;
        }
        Some(PublishIq {
            from: iq.attr("from")?.parse().ok()?,
            to: match iq.attr("to") {
                Some(to) => Some(to.parse().ok()?),
                None => None,
            },
            id: iq.attr("id")?.to_owned(),
            request: PublishRequest::read(pubsub),
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use pushgate_providers::framing::{Frame, Framer, Limits};
    use xmpp_parsers::iq::Iq;
    use xmpp_parsers::stanza::Stanza;

    use super::*;

    const STREAM: &str = "<stream:stream xmlns='jabber:component:accept' \
                          xmlns:stream='http://etherx.jabber.org/streams' id='s1' from='push.example.org'>";

    /// `stanza` as the stream loop hands it on: framed, with the stream's declarations copied in.
    fn framed(stanza: &[u8]) -> Option<Vec<u8>> {
        let mut framer = Framer::new(Limits::default());
        let mut frames = Vec::new();
        framer.feed(STREAM.as_bytes(), &mut frames).ok()?;
        framer.feed(stanza, &mut frames).ok()?;
        frames.into_iter().find_map(|f| match f {
            Frame::Element { xml, .. } => Some(xml),
            _ => None,
        })
    }

    /// The reference: the full parse (xso, minidom) and the router's reading of it.
    fn full(xml: &[u8]) -> Option<PublishIq> {
        let Ok(Stanza::Iq(Iq::Set {
            from: Some(from),
            to,
            id,
            payload,
        })) = xso::from_bytes::<Stanza>(xml)
        else {
            return None;
        };
        Some(PublishIq {
            from,
            to,
            id,
            request: PublishRequest::try_from(&payload),
        })
    }

    fn summary(body: &str) -> String {
        format!(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>\
             <field var='message-count'><value>1</value></field>\
             <field var='last-message-sender'><value>juliet@capulet.example/balcony</value></field>\
             <field var='last-message-body'><value>{body}</value></field></x>"
        )
    }

    /// Publishes as Prosody, ejabberd, Tigase and mod_push_appserver's clients make them.
    fn samples() -> Vec<String> {
        let iq = |attrs: &str, inner: &str| {
            format!(
                "<iq type='set' {attrs}><pubsub xmlns='http://jabber.org/protocol/pubsub'>{inner}</pubsub></iq>"
            )
        };
        let publish = |notification: &str| {
            format!(
                "<publish node='n0de'><item><notification xmlns='urn:xmpp:push:0'>{notification}</notification></item></publish>"
            )
        };
        let options = "<publish-options><x xmlns='jabber:x:data' type='submit'>\
                       <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
                       <field var='secret'><value>s3cr&amp;t</value></field>\
                       <field var='pushModule'><value>monal</value></field></x></publish-options>";
        let prosody = "id='a1' from='example.org' to='push.example.org'";
        vec![
            iq(prosody, &publish(&summary("wherefore art thou"))),
            iq(
                prosody,
                &(publish(&summary("&lt;b&gt; &amp; &#x263A; &#65; \"q\" 'a' ünï")) + options),
            ),
            iq(
                "from=\"example.org\" id=\"x&quot;y\" to=\"push.example.org\"",
                &publish(""),
            ),
            iq(prosody, "<publish node='n'/>"),
            iq(prosody, "<publish-options/>"),
            iq(
                "id='a' from='example.org'",
                &publish("<x xmlns='jabber:x:data'/>"),
            ),
            iq(
                prosody,
                &publish(
                    "<encrypted xmlns='tigase:push:encrypt:0' iv='aXY=' type='voip'> Zm9v </encrypted>\
                     <priority xmlns='tigase:push:priority:0'>high</priority>\
                     <jingle xmlns='tigase:push:jingle:0' action='propose'/>\
                     <groupchat xmlns='http://tigase.org/protocol/muc#offline'><nickname> nick </nickname></groupchat>",
                ),
            ),
            iq(
                prosody,
                &format!(
                    "\n  {}\n",
                    publish(&format!(
                        "{}<unknown xmlns='x'><a>b</a></unknown>",
                        summary("")
                    ))
                ),
            ),
            iq(prosody, &publish(&summary("two\nlines\ttab &#10; &#13;"))),
            iq("id='' from='example.org'", &publish(&summary("empty id"))),
        ]
    }

    #[test]
    fn plain_publishes_are_read_without_a_tree_exactly_as_with_one() {
        for sample in samples() {
            let xml = framed(sample.as_bytes()).expect(&sample);
            let lean = PublishIq::read(&xml);
            assert!(lean.is_some(), "not read the lean way: {sample}");
            assert_eq!(lean, full(&xml), "{sample}");
        }
    }

    #[test]
    fn other_stanzas_go_the_full_way() {
        for stanza in [
            "<iq type='get' id='1' from='example.org'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>",
            "<iq type='set' id='1'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>",
            "<iq type='set' from='example.org'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>",
            "<iq type='set' id='1' from='example.org' xml:lang='en'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>",
            "<iq type='set' id='1' from='@'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>",
            "<iq type='set' id='1' from='example.org'><pubsub xmlns='http://jabber.org/protocol/pubsub'/><x/></iq>",
            "<iq type='set' id='1' from='example.org'>text<pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>",
            "<iq type='set' id='1' from='example.org'><command xmlns='http://jabber.org/protocol/commands'/></iq>",
            "<iq type='set' id='1' from='example.org'><ps:pubsub xmlns:ps='http://jabber.org/protocol/pubsub'/></iq>",
            "<message from='example.org' id='1'/>",
            "<iq type='set' id='1' from='example.org' xmlns:p='a' xmlns:p='b'><pubsub xmlns='http://jabber.org/protocol/pubsub'/></iq>",
        ] {
            let xml = framed(stanza.as_bytes()).expect(stanza);
            assert_eq!(PublishIq::read(&xml), None, "{stanza}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Whatever the lean reading takes, mangled or not, it reads as the full parse does.
        #[test]
        fn the_lean_reading_never_differs_from_the_full_parse(
            which in any::<prop::sample::Index>(),
            edits in proptest::collection::vec(
                (any::<prop::sample::Index>(), 0u8..3, prop::sample::select(vec![
                    "<", ">", "&", ";", "'", "\"", "/", "=", ":", " ", "\n", "\r", "\t", "!", "?",
                    "[", "]", "#", "x", "&amp;", "&#0;", "&#x41;", "</a>", "<a>", "<a/>",
                    "xmlns='q'", "xmlns:p='q'", "p:", "\u{0}", "\u{FFFE}", "é", "😀",
                ])),
                0..4,
            ),
        ) {
            let samples = samples();
            let mut bytes = samples[which.index(samples.len())].clone().into_bytes();
            for (at, op, text) in edits {
                let at = at.index(bytes.len() + 1);
                match op {
                    0 => { bytes.splice(at..at, text.bytes()); }
                    1 if at < bytes.len() => { bytes.remove(at); }
                    _ if at < bytes.len() => { bytes.splice(at..at + 1, text.bytes()); }
                    _ => {}
                }
            }
            if let Some(xml) = framed(&bytes)
                && let Some(lean) = PublishIq::read(&xml)
            {
                prop_assert_eq!(Some(lean), full(&xml), "{}", String::from_utf8_lossy(&xml));
            }
        }
    }
}
