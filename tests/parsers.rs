//! No input makes a parser panic: random element trees, built from the names and namespaces the
//! parsers look for, fed to every parser that reads what servers and clients send.
//!
//! The value-level property tests sit next to each parser; this one varies the *shape*: missing,
//! repeated, misplaced and foreign elements, odd attributes, text where children belong.

use proptest::prelude::*;
use pushgate::fronts::xmpp::adhoc::CommandRequest;
use pushgate::fronts::xmpp::forms::Form;
use pushgate::fronts::xmpp::publish::PublishRequest;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::minidom::rxml::xml_ncname;

const NAMES: &[&str] = &[
    "pubsub",
    "publish",
    "item",
    "notification",
    "publish-options",
    "x",
    "field",
    "value",
    "command",
    "encrypted",
    "priority",
    "jingle",
    "meet",
    "groupchat",
    "nickname",
    "other",
];
const NAMESPACES: &[&str] = &[
    "http://jabber.org/protocol/pubsub",
    "urn:xmpp:push:0",
    "jabber:x:data",
    "http://jabber.org/protocol/commands",
    "tigase:push:encrypt:0",
    "tigase:push:priority:0",
    "tigase:push:jingle:0",
    "http://tigase.org/protocol/muc#offline",
    "urn:example:unknown",
];

#[derive(Debug, Clone)]
struct Tree {
    name: usize,
    ns: usize,
    attrs: Vec<(usize, String)>,
    text: Option<String>,
    children: Vec<Tree>,
}

const ATTRS: &[&str] = &["node", "type", "var", "action", "sessionid", "iv", "label"];

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = (
        0..NAMES.len(),
        0..NAMESPACES.len(),
        prop::collection::vec((0..ATTRS.len(), ".{0,24}"), 0..3),
        prop::option::of(".{0,40}"),
    )
        .prop_map(|(name, ns, attrs, text)| Tree {
            name,
            ns,
            attrs,
            text,
            children: vec![],
        });
    leaf.prop_recursive(5, 64, 6, |inner| {
        (
            0..NAMES.len(),
            0..NAMESPACES.len(),
            prop::collection::vec((0..ATTRS.len(), ".{0,24}"), 0..3),
            prop::collection::vec(inner, 0..6),
        )
            .prop_map(|(name, ns, attrs, children)| Tree {
                name,
                ns,
                attrs,
                text: None,
                children,
            })
    })
}

fn build(t: &Tree) -> Element {
    let mut el = Element::bare(NAMES[t.name], NAMESPACES[t.ns]);
    for (a, v) in &t.attrs {
        let name = match ATTRS[*a] {
            "node" => xml_ncname!("node"),
            "type" => xml_ncname!("type"),
            "var" => xml_ncname!("var"),
            "action" => xml_ncname!("action"),
            "sessionid" => xml_ncname!("sessionid"),
            "iv" => xml_ncname!("iv"),
            _ => xml_ncname!("label"),
        };
        el.set_attr(
            xmpp_parsers::minidom::rxml::Namespace::NONE,
            name.into(),
            v.clone(),
        );
    }
    if let Some(text) = &t.text {
        el.append_text(text.clone());
    }
    for c in &t.children {
        el.append_child(build(c));
    }
    el
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn publish_parser_never_panics(t in tree()) {
        let el = build(&t);
        if let Ok(req) = PublishRequest::try_from(&el) {
            // Whatever it read must classify without panicking too.
            let n = req.notification(
                "user@example.org",
                pushgate::fronts::xmpp::publish::WithoutSummary::Message,
            );
            prop_assert_eq!(n.content.account.as_deref(), Some("user@example.org"));
        }
    }

    #[test]
    fn command_and_form_parsers_never_panic(t in tree()) {
        let el = build(&t);
        let _ = CommandRequest::try_from(&el);
        if let Ok(form) = Form::parse(&el) {
            for f in &form.fields {
                let _ = form.value(&f.var);
            }
        }
    }

    /// A publish wrapped around any notification content still finds its node and secret.
    #[test]
    fn envelope_survives_any_notification_content(t in tree(), node in "[A-Za-z0-9_-]{1,30}") {
        let notification = {
            let mut n = Element::bare("notification", "urn:xmpp:push:0");
            n.append_child(build(&t));
            n
        };
        let mut item = Element::bare("item", "http://jabber.org/protocol/pubsub");
        item.append_child(notification);
        let mut publish = Element::bare("publish", "http://jabber.org/protocol/pubsub");
        publish.set_attr(xmpp_parsers::minidom::rxml::Namespace::NONE, xml_ncname!("node").into(), node.clone());
        publish.append_child(item);
        let mut pubsub = Element::bare("pubsub", "http://jabber.org/protocol/pubsub");
        pubsub.append_child(publish);
        let req = PublishRequest::try_from(&pubsub).unwrap();
        prop_assert_eq!(req.node, Some(node));
    }
}
