//! The stanzas clients and servers send the component, written as XML text the way they send
//! it (so a test reads like the wire), and readers for the answers.
//!
//! Commands follow XEP-0050 (https://xmpp.org/extensions/xep-0050.html), publishes XEP-0357
//! (https://xmpp.org/extensions/xep-0357.html) with the XEP-0004 data forms both carry.

use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

use super::{Component, route};

/// Where the test requests go: the component the test gateways are configured as.
const COMPONENT_JID: &str = "push.test";
const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";
const NS_DATA: &str = "jabber:x:data";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";

/// One request as XML text: sent as is on a raw stream, or routed in-process as a [`Stanza`].
#[derive(Clone, Debug)]
pub struct Request(String);

impl Request {
    pub fn as_xml(&self) -> &str {
        &self.0
    }
}

impl From<Request> for Stanza {
    fn from(r: Request) -> Stanza {
        let el: Element =
            r.0.parse()
                .unwrap_or_else(|e| panic!("test stanza is not XML ({e}): {}", r.0));
        Iq::try_from(el)
            .unwrap_or_else(|e| panic!("test stanza is not an IQ ({e:?}): {}", r.0))
            .into()
    }
}

/// Who sends the requests (any JID: a user's full or bare JID, a server's domain), and under
/// which stanza id.
pub struct Requester {
    jid: String,
    id: String,
}

pub fn requester(jid: &str) -> Requester {
    Requester {
        jid: jid.to_owned(),
        id: "t1".to_owned(),
    }
}

/// Escapes text for an attribute value or element content.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

/// A data form of `kind` with a `<value/>` per line of each field's value (a PEM certificate is
/// a text-multi field).
fn form(kind: &str, fields: &[(&str, &str)]) -> String {
    let fields: String = fields
        .iter()
        .map(|(var, value)| {
            let values: String = value
                .lines()
                .map(|l| format!("<value>{}</value>", escape(l)))
                .collect();
            format!("<field var='{}'>{values}</field>", escape(var))
        })
        .collect();
    format!("<x xmlns='{NS_DATA}' type='{kind}'>{fields}</x>")
}

impl Requester {
    pub fn with_id(mut self, id: &str) -> Self {
        self.id = id.to_owned();
        self
    }

    fn iq(&self, kind: &str, payload: &str) -> Request {
        Request(format!(
            "<iq xmlns='jabber:component:accept' type='{kind}' id='{}' from='{}' to='{COMPONENT_JID}'>{payload}</iq>",
            escape(&self.id),
            escape(&self.jid),
        ))
    }

    fn command(&self, node: &str, attrs: &str, inner: &str) -> Request {
        self.iq(
            "set",
            &format!(
                "<command xmlns='{NS_COMMANDS}' node='{}'{attrs}>{inner}</command>",
                escape(node)
            ),
        )
    }

    /// The first stage of a two-stage command: `execute` without a form, asking for the blank
    /// one.
    pub fn execute(&self, node: &str) -> Request {
        self.command(node, " action='execute'", "")
    }

    /// A single-stage command: `execute` with the submitted form (as Siskin and Conversations
    /// send it).
    pub fn submit(&self, node: &str, fields: &[(&str, &str)]) -> Request {
        self.command(node, " action='execute'", &form("submit", fields))
    }

    /// The second stage of a two-stage command: `complete` in the session the first stage
    /// opened, with the filled-in form.
    pub fn complete(&self, node: &str, sessionid: &str, fields: &[(&str, &str)]) -> Request {
        self.command(
            node,
            &format!(" action='complete' sessionid='{}'", escape(sessionid)),
            &form("submit", fields),
        )
    }

    /// A XEP-0357 publish to `node` (none: the attribute is left out), with the publish-options
    /// `secret` if given and a summary form of `summary` if not empty.
    pub fn publish(
        &self,
        node: Option<&str>,
        secret: Option<&str>,
        summary: &[(&str, &str)],
    ) -> Request {
        let options: Vec<(&str, &str)> = secret.map(|s| vec![("secret", s)]).unwrap_or_default();
        self.publish_with(node, &options, summary)
    }

    /// A XEP-0357 publish with the publish-options fields `options` (none: no publish-options),
    /// as Monal's server sends `pushModule`.
    pub fn publish_with(
        &self,
        node: Option<&str>,
        options: &[(&str, &str)],
        summary: &[(&str, &str)],
    ) -> Request {
        let node = node
            .map(|n| format!(" node='{}'", escape(n)))
            .unwrap_or_default();
        let summary = if summary.is_empty() {
            String::new()
        } else {
            let mut fields = vec![("FORM_TYPE", "urn:xmpp:push:summary")];
            fields.extend_from_slice(summary);
            form("form", &fields)
        };
        let options = if options.is_empty() {
            String::new()
        } else {
            let mut fields = vec![(
                "FORM_TYPE",
                "http://jabber.org/protocol/pubsub#publish-options",
            )];
            fields.extend_from_slice(options);
            format!(
                "<publish-options>{}</publish-options>",
                form("submit", &fields)
            )
        };
        self.iq(
            "set",
            &format!(
                "<pubsub xmlns='{NS_PUBSUB}'><publish{node}><item>\
                 <notification xmlns='urn:xmpp:push:0'>{summary}</notification>\
                 </item></publish>{options}</pubsub>"
            ),
        )
    }

    /// disco#items of `node`.
    pub fn disco_items(&self, node: &str) -> Request {
        self.iq(
            "get",
            &format!(
                "<query xmlns='http://jabber.org/protocol/disco#items' node='{}'/>",
                escape(node)
            ),
        )
    }

    /// disco#info of the component itself.
    pub fn disco_info(&self) -> Request {
        self.iq(
            "get",
            "<query xmlns='http://jabber.org/protocol/disco#info'/>",
        )
    }

    /// A XEP-0199 ping.
    pub fn ping(&self) -> Request {
        self.iq("get", "<ping xmlns='urn:xmpp:ping'/>")
    }
}

/// Routes `request` and answers the IQ that came back.
pub async fn ask(gw: &Component, request: impl Into<Stanza>) -> Iq {
    match route(gw, request).await {
        Some(Stanza::Iq(reply)) => reply,
        other => panic!("expected an IQ answer, got {other:?}"),
    }
}

/// The error of an error answer: type, condition and text.
pub fn error_of(iq: &Iq) -> (ErrorType, DefinedCondition, String) {
    match iq {
        Iq::Error { error, .. } => (
            error.type_.clone(),
            error.defined_condition.clone(),
            error.texts.values().cloned().collect(),
        ),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The payload of a result answer (`None`: an empty result).
pub fn result_of(iq: &Iq) -> Option<&Element> {
    match iq {
        Iq::Result { payload, .. } => payload.as_ref(),
        other => panic!("expected a result, got {other:?}"),
    }
}

pub fn is_result(iq: &Iq) -> bool {
    matches!(iq, Iq::Result { .. })
}

/// The values of field `var` in the data form a command answer carries.
pub fn form_values(command: &Element, var: &str) -> Vec<String> {
    command
        .get_child("x", NS_DATA)
        .into_iter()
        .flat_map(|x| x.children())
        .filter(|f| f.is("field", NS_DATA) && f.attr("var") == Some(var))
        .flat_map(|f| f.children())
        .filter(|v| v.is("value", NS_DATA))
        .map(Element::text)
        .collect()
}
