//! A XEP-0357 publish as Prosody, ejabberd and Tigase send it, read into a typed request.
//!
//! Parsing is deliberately liberal, because the servers differ: Prosody sends the summary as a
//! `form` of type submit, ejabberd with `include_body: false` no form at all, and forms of type
//! form or none occur; so: summary form of type form, submit or none; empty fields; no form at all; no `node` attribute; unknown
//! children ignored. Only a payload that is not a publish at all is refused.

use minidom::Element;
use xmpp_parsers::minidom;

use pushgate_providers::{Content, Encrypted, Kind, Notification, Priority};

use crate::fronts::xmpp::forms::Form;
use crate::fronts::xmpp::xml;

pub const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
pub const NS_PUSH: &str = "urn:xmpp:push:0";
const NS_ENCRYPT: &str = "tigase:push:encrypt:0";
const NS_PRIORITY: &str = "tigase:push:priority:0";
const NS_JINGLE: &str = "tigase:push:jingle:0";
const NS_MEET: &str = "tigase:push:meet:0";
const NS_MUC_OFFLINE: &str = "http://tigase.org/protocol/muc#offline";
const PUBLISH_OPTIONS: &str = "http://jabber.org/protocol/pubsub#publish-options";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PublishError {
    #[error("not a pubsub request")]
    NotPubsub,
    #[error("pubsub request without <publish/>")]
    NoPublish,
}

/// What a notification without a summary form is: what the publishing server's configuration
/// means by it (`registration.background_without_summary` lists the servers whose are wakes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WithoutSummary {
    /// A message the server did not describe (ejabberd with `include_body: false`).
    Message,
    /// A wake-up for a stanza that is no message (ejabberd's chat states and keepalives when
    /// its `include_body` is a text).
    Background,
}

/// The sender's explicit priority hint (Tigase's and Prosody's priority extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriorityHint {
    High,
    Low,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub message_count: Option<u32>,
    pub sender: Option<String>,
    pub body: Option<String>,
}

/// A parsed publish: where it goes, what it says, and the secret that authorises it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PublishRequest {
    pub node: Option<String>,
    /// The publish-options `secret`, when the enabling client gave one.
    pub secret: Option<String>,
    /// The publish-options `pushModule`: the app a token-addressed (fpush-style) publish is
    /// for, when the enabling client named one (Monal).
    pub push_module: Option<String>,
    /// Whether the publish-options carry fields besides `FORM_TYPE`, `secret` and `pushModule`.
    pub other_options: bool,
    pub summary: Summary,
    /// Whether the notification carried a summary form at all. ejabberd sends none for a
    /// message when `include_body` is false, and none for a body-less stanza otherwise.
    pub has_summary: bool,
    pub priority: Option<PriorityHint>,
    pub encrypted: Option<Encrypted>,
    /// `<encrypted type='voip'>`, a Jingle propose or a Meet invitation: an incoming call.
    pub call: bool,
    pub nickname: Option<String>,
}

impl TryFrom<&Element> for PublishRequest {
    type Error = PublishError;

    fn try_from(pubsub: &Element) -> Result<Self, PublishError> {
        PublishRequest::read(pubsub)
    }
}

impl PublishRequest {
    /// Reads a `<pubsub/>` payload, from a minidom tree or straight from the stanza's bytes
    /// (`fronts/xmpp/xml.rs`): one reading for both.
    pub fn read<E: xml::Element>(pubsub: E) -> Result<Self, PublishError> {
        if !pubsub.is("pubsub", NS_PUBSUB) {
            return Err(PublishError::NotPubsub);
        }
        let publish = pubsub
            .child("publish", NS_PUBSUB)
            .ok_or(PublishError::NoPublish)?;
        let options = pubsub
            .child("publish-options", NS_PUBSUB)
            .and_then(Form::find_in)
            .filter(|f| f.form_type().is_none_or(|t| t == PUBLISH_OPTIONS));
        let option = |var: &str| {
            options
                .as_ref()
                .and_then(|f| f.value(var))
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let mut req = PublishRequest {
            node: publish
                .attr("node")
                .filter(|n| !n.is_empty())
                .map(str::to_owned),
            secret: option("secret"),
            push_module: option("pushModule"),
            other_options: options.as_ref().is_some_and(|f| {
                f.fields.iter().any(|field| {
                    !matches!(field.var.as_str(), "FORM_TYPE" | "secret" | "pushModule")
                })
            }),
            ..Default::default()
        };
        let notification = publish
            .child("item", NS_PUBSUB)
            .and_then(|item| item.child("notification", NS_PUSH));
        if let Some(n) = notification {
            req.read_notification(n);
        }
        Ok(req)
    }

    fn read_notification<E: xml::Element>(&mut self, n: E) {
        for child in n.children() {
            if let Ok(form) = Form::parse(child) {
                if form
                    .form_type()
                    .is_none_or(|t| t == "urn:xmpp:push:summary")
                {
                    self.has_summary = true;
                    self.summary = Summary {
                        message_count: form.value("message-count").and_then(|c| c.parse().ok()),
                        sender: form.value("last-message-sender").map(str::to_owned),
                        body: form.value("last-message-body").map(str::to_owned),
                    };
                    // mod_push_appserver's priority field (Prosody's
                    // mod_cloud_notify_priority_tag); the priority element wins if both come.
                    let hint = match form.value("last-message-priority") {
                        Some("high") => Some(PriorityHint::High),
                        Some("low") => Some(PriorityHint::Low),
                        _ => None,
                    };
                    self.priority = self.priority.or(hint);
                }
            } else if child.is("encrypted", NS_ENCRYPT) {
                self.call |= child.attr("type") == Some("voip");
                self.encrypted = Some(Encrypted {
                    payload: child.text().trim().to_owned(),
                    iv: child.attr("iv").unwrap_or_default().to_owned(),
                });
            } else if child.is("priority", NS_PRIORITY) {
                self.priority = match child.text().trim() {
                    "high" => Some(PriorityHint::High),
                    "low" => Some(PriorityHint::Low),
                    _ => self.priority,
                };
            } else if child.is("jingle", NS_JINGLE) {
                self.call |= child.attr("action").is_none_or(|a| a == "propose");
            } else if child.is("meet", NS_MEET) {
                self.call = true;
            } else if child.is("groupchat", NS_MUC_OFFLINE) {
                self.nickname = child
                    .children()
                    .find(|c| c.name() == "nickname")
                    .map(|c| c.text().trim().to_owned())
                    .filter(|s| !s.is_empty());
            }
        }
    }

    /// The provider-neutral notification for `account`, classified so that what must ring or
    /// show rings or shows and the rest only wakes the app: a call beats everything;
    /// `message-count` 0 with nothing else clears; a `low` hint only wakes the app; a body, an
    /// encrypted payload or a `high` hint is an alert; a notification without any summary form
    /// is what `without_summary` says (by default a message: an alert); a summary form with no
    /// body (Prosody's chat states) only wakes the app.
    pub fn notification(&self, account: &str, without_summary: WithoutSummary) -> Notification {
        let s = &self.summary;
        let (kind, priority) = if self.call {
            (Kind::Voip, Priority::High)
        } else if s.message_count == Some(0)
            && s.sender.is_none()
            && s.body.is_none()
            && self.encrypted.is_none()
        {
            (Kind::Clear, Priority::Normal)
        } else if self.priority == Some(PriorityHint::Low) {
            (Kind::Background, Priority::Low)
        } else if self.priority == Some(PriorityHint::High)
            || s.body.is_some()
            || self.encrypted.is_some()
            || (!self.has_summary && without_summary == WithoutSummary::Message)
        {
            (Kind::Alert, Priority::High)
        } else {
            (Kind::Background, Priority::Low)
        };
        Notification {
            content: Content {
                account: Some(account.to_owned()),
                sender: s.sender.clone(),
                body: s.body.clone(),
                message_count: s.message_count,
                nickname: self.nickname.clone(),
                channel: None,
            },
            encrypted: self.encrypted.clone(),
            ..Notification::new(kind, priority)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MESSAGE: WithoutSummary = WithoutSummary::Message;

    fn parse(xml: &str) -> Result<PublishRequest, PublishError> {
        PublishRequest::try_from(&xml.parse::<Element>().unwrap())
    }

    fn wrap(node_attr: &str, notification_inner: &str, options: &str) -> String {
        format!(
            "<pubsub xmlns='http://jabber.org/protocol/pubsub'>\
               <publish {node_attr}><item><notification xmlns='urn:xmpp:push:0'>{notification_inner}</notification></item></publish>\
               {options}</pubsub>"
        )
    }

    const SECRET_OPTIONS: &str = "<publish-options><x xmlns='jabber:x:data' type='submit'>\
        <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
        <field var='secret'><value>S3CR3T</value></field></x></publish-options>";

    // Captured shape: Prosody 0.12 mod_cloud_notify, default options.
    const PROSODY: &str = "<x xmlns='jabber:x:data' type='form'>\
        <field type='hidden' var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>\
        <field type='text-single' var='message-count'><value>1</value></field>\
        <field type='text-single' var='pending-subscription-count'/>\
        <field type='jid-single' var='last-message-sender'/>\
        <field type='text-single' var='last-message-body'><value>New Message!</value></field></x>";

    // Captured shape: ejabberd 23.01 mod_push, default options.
    const EJABBERD: &str = "<x xmlns='jabber:x:data' type='submit'>\
        <field var='FORM_TYPE' type='hidden'><value>urn:xmpp:push:summary</value></field>\
        <field var='last-message-body' type='text-single' label='The body text of the last received message'><value>New message</value></field></x>";

    #[test]
    fn prosody_default_publish_with_secret() {
        let r = parse(&wrap("node='N1'", PROSODY, SECRET_OPTIONS)).unwrap();
        assert_eq!(r.node.as_deref(), Some("N1"));
        assert_eq!(r.secret.as_deref(), Some("S3CR3T"));
        assert_eq!(r.summary.message_count, Some(1));
        assert_eq!(r.summary.sender, None);
        let n = r.notification("a@b", MESSAGE);
        assert_eq!((n.kind, n.priority), (Kind::Alert, Priority::High));
        assert_eq!(n.content.account.as_deref(), Some("a@b"));
    }

    #[test]
    fn ejabberd_submit_form_without_count() {
        let r = parse(&wrap("node='N'", EJABBERD, "")).unwrap();
        assert_eq!(r.summary.body.as_deref(), Some("New message"));
        assert_eq!(r.summary.message_count, None);
        assert_eq!(r.secret, None);
        assert_eq!(r.notification("a@b", MESSAGE).kind, Kind::Alert);
    }

    #[test]
    fn bare_notification_and_missing_node_are_accepted() {
        let r = parse(&wrap("", "", "")).unwrap();
        assert_eq!(r.node, None);
        assert!(!r.has_summary);
        // ejabberd with `include_body: false`: a message, unless the server is listed as
        // sending wakes without a summary.
        let n = r.notification("a@b", MESSAGE);
        assert_eq!((n.kind, n.priority), (Kind::Alert, Priority::High));
        let n = r.notification("a@b", WithoutSummary::Background);
        assert_eq!((n.kind, n.priority), (Kind::Background, Priority::Low));
        // A summary form without a body (Prosody's chat states) only wakes the app, whatever
        // the setting.
        let chat_state = "<x xmlns='jabber:x:data' type='form'>\
            <field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>\
            <field var='message-count'><value>1</value></field>\
            <field var='last-message-body'/></x>";
        let r = parse(&wrap("node='N'", chat_state, "")).unwrap();
        assert!(r.has_summary);
        assert_eq!(r.notification("a@b", MESSAGE).kind, Kind::Background);
        // A low hint wins over a missing summary.
        let low = "<priority xmlns='tigase:push:priority:0'>low</priority>";
        let r = parse(&wrap("node='N'", low, "")).unwrap();
        assert_eq!(r.notification("a@b", MESSAGE).kind, Kind::Background);
        // no <item> at all
        let r =
            parse("<pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='x'/></pubsub>")
                .unwrap();
        assert_eq!(r.node.as_deref(), Some("x"));
    }

    #[test]
    fn tigase_clear_and_sender_and_nickname() {
        let clear =
            "<x xmlns='jabber:x:data'><field var='message-count'><value>0</value></field></x>";
        let r = parse(&wrap("node='N'", clear, "")).unwrap();
        assert_eq!(r.notification("a@b", MESSAGE).kind, Kind::Clear);

        let msg = "<x xmlns='jabber:x:data'>\
            <field var='message-count'><value>3</value></field>\
            <field var='last-message-sender'><value>room@muc.example/nick</value></field>\
            <field var='last-message-body'><value>hi all</value></field></x>\
            <groupchat xmlns='http://tigase.org/protocol/muc#offline'><nickname>nick</nickname></groupchat>";
        let n = parse(&wrap("node='N'", msg, ""))
            .unwrap()
            .notification("a@b", MESSAGE);
        assert_eq!(n.content.sender.as_deref(), Some("room@muc.example/nick"));
        assert_eq!(n.content.message_count, Some(3));
        assert_eq!(n.content.nickname.as_deref(), Some("nick"));
    }

    #[test]
    fn priority_hints_and_encrypted_payloads() {
        let low = "<priority xmlns='tigase:push:priority:0'>low</priority>";
        let n = parse(&wrap("node='N'", &format!("{PROSODY}{low}"), ""))
            .unwrap()
            .notification("a", MESSAGE);
        assert_eq!(n.kind, Kind::Background);

        let high = "<priority xmlns='tigase:push:priority:0'>high</priority>";
        let n = parse(&wrap("node='N'", high, ""))
            .unwrap()
            .notification("a", MESSAGE);
        assert_eq!((n.kind, n.priority), (Kind::Alert, Priority::High));

        let enc = "<encrypted xmlns='tigase:push:encrypt:0' iv='SVY='>Q0lQSEVS</encrypted>";
        let r = parse(&wrap("node='N'", enc, "")).unwrap();
        let n = r.notification("a", MESSAGE);
        assert_eq!(n.kind, Kind::Alert);
        assert_eq!(
            n.encrypted,
            Some(Encrypted {
                payload: "Q0lQSEVS".into(),
                iv: "SVY=".into()
            })
        );

        let voip =
            "<encrypted xmlns='tigase:push:encrypt:0' iv='SVY=' type='voip'>Q0lQSEVS</encrypted>";
        assert_eq!(
            parse(&wrap("node='N'", voip, ""))
                .unwrap()
                .notification("a", MESSAGE)
                .kind,
            Kind::Voip
        );
        let jingle = "<jingle xmlns='tigase:push:jingle:0' action='propose' sid='s'><media>audio</media></jingle>";
        assert_eq!(
            parse(&wrap("node='N'", jingle, ""))
                .unwrap()
                .notification("a", MESSAGE)
                .kind,
            Kind::Voip
        );
    }

    #[test]
    fn refuses_what_is_not_a_publish() {
        assert_eq!(
            parse(
                "<pubsub xmlns='http://jabber.org/protocol/pubsub'><subscribe node='x' jid='a@b'/></pubsub>"
            ),
            Err(PublishError::NoPublish)
        );
        assert_eq!(
            parse("<query xmlns='jabber:iq:roster'/>"),
            Err(PublishError::NotPubsub)
        );
    }

    #[test]
    fn garbage_counts_are_ignored() {
        let f = "<x xmlns='jabber:x:data'><field var='message-count'><value>-7</value></field></x>";
        assert_eq!(
            parse(&wrap("node='N'", f, ""))
                .unwrap()
                .summary
                .message_count,
            None
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(node in ".{0,30}", count in ".{0,12}", body in ".{0,200}", sender in ".{0,40}", prio in ".{0,8}") {
            use minidom::rxml::xml_ncname;
            let field = |var: &str, v: &str| Element::builder("field", crate::fronts::xmpp::forms::NS)
                .attr(xml_ncname!("var").into(), var)
                .append(Element::builder("value", crate::fronts::xmpp::forms::NS).append(v).build())
                .build();
            let form = Element::builder("x", crate::fronts::xmpp::forms::NS)
                .append(field("message-count", &count))
                .append(field("last-message-body", &body))
                .append(field("last-message-sender", &sender))
                .build();
            let notif = Element::builder("notification", NS_PUSH)
                .append(form)
                .append(Element::builder("priority", NS_PRIORITY).append(prio).build())
                .build();
            let el = Element::builder("pubsub", NS_PUBSUB)
                .append(Element::builder("publish", NS_PUBSUB)
                    .attr(xml_ncname!("node").into(), node)
                    .append(Element::builder("item", NS_PUBSUB).append(notif).build())
                    .build())
                .build();
            let r = PublishRequest::try_from(&el).unwrap();
            let n = r.notification("a@b", MESSAGE);
            prop_assert_eq!(n.content.body.is_some(), !body.trim().is_empty());
        }
    }
}
