//! XEP-0030 answers: what this component is, which providers it serves, which commands exist.
//!
//! Siskin finds its push component by disco: identity `pubsub/push` plus one feature per
//! provider id it needs.

use minidom::Element;
use minidom::rxml::xml_ncname;
use xmpp_parsers::jid::Jid;
use xmpp_parsers::{minidom, ns};

use crate::error::Fault;
use crate::fronts::xmpp::Component;
use crate::fronts::xmpp::adhoc;
use crate::fronts::xmpp::commands;
use crate::fronts::xmpp::unifiedpush;

fn identity(category: &str, kind: &str, name: &str) -> Element {
    Element::builder("identity", ns::DISCO_INFO)
        .attr(xml_ncname!("category").into(), category)
        .attr(xml_ncname!("type").into(), kind)
        .attr(xml_ncname!("name").into(), name)
        .build()
}

fn feature(var: &str) -> Element {
    Element::builder("feature", ns::DISCO_INFO)
        .attr(xml_ncname!("var").into(), var)
        .build()
}

fn query(namespace: &str, node: Option<&str>) -> Element {
    let mut q = Element::bare("query", namespace);
    if let Some(node) = node {
        q.set_attr(
            minidom::rxml::Namespace::NONE,
            xml_ncname!("node").into(),
            node,
        );
    }
    q
}

pub fn info(component: &Component, requester: &Jid, node: Option<&str>) -> Result<Element, Fault> {
    let mut q = query(ns::DISCO_INFO, node);
    match node {
        None => {
            q.append_child(identity("pubsub", "push", "pushgate"));
            let fixed = [
                ns::PUSH,
                adhoc::NS,
                ns::DATA_FORMS,
                ns::DISCO_INFO,
                ns::DISCO_ITEMS,
                ns::PING,
            ];
            for var in fixed {
                q.append_child(feature(var));
            }
            for name in component.core.providers.names() {
                q.append_child(feature(name));
            }
            if component.core.unifiedpush.get().is_some() {
                q.append_child(feature(unifiedpush::register::NS_GENOFIRE));
                q.append_child(feature(unifiedpush::register::NS_CONVERSATIONS));
            }
        }
        Some(adhoc::NS) => {
            q.append_child(identity("automation", "command-list", "Commands"));
        }
        Some(n) if commands::exists(component, requester, n) => {
            q.append_child(identity("automation", "command-node", n));
            q.append_child(feature(adhoc::NS));
            q.append_child(feature(ns::DATA_FORMS));
        }
        Some(_) => return Err(Fault::NotFound("no such node")),
    }
    Ok(q)
}

pub fn items(component: &Component, requester: &Jid, node: Option<&str>) -> Result<Element, Fault> {
    let mut q = query(ns::DISCO_ITEMS, node);
    match node {
        None => {}
        Some(adhoc::NS) => {
            for c in commands::available(component, requester) {
                q.append_child(
                    Element::builder("item", ns::DISCO_ITEMS)
                        .attr(xml_ncname!("jid").into(), component.jid.to_string())
                        .attr(xml_ncname!("node").into(), c.node)
                        .attr(xml_ncname!("name").into(), c.name)
                        .build(),
                );
            }
        }
        Some(_) => return Err(Fault::NotFound("no such node")),
    }
    Ok(q)
}
