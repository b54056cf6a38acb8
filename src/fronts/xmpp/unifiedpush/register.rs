//! UnifiedPush-over-XMPP registration requests, in both dialects, read into types, and the
//! replies each dialect's distributors expect.
//!
//! genofire's `unifiedpush.org`: `<register><token>PUBLIC</token></register>` → `<register>
//! <endpoint>URL</endpoint></register>`; errors carry `<register><error>text</error></register>`
//! beside the stanza error, which its distributors show. Conversations'
//! `http://gultsch.de/xmpp/drafts/unified-push`: `<register application=… instance=…/>` →
//! `<registered endpoint=… expiration=…/>`. (../shared/reference/other-fronts.md §3.)

use minidom::Element;
use minidom::rxml::xml_ncname;
use xmpp_parsers::minidom;

pub const NS_GENOFIRE: &str = "unifiedpush.org";
pub const NS_CONVERSATIONS: &str = "http://gultsch.de/xmpp/drafts/unified-push";

/// Longest public token, application or instance accepted: Conversations sends 44-character
/// base64 hashes, genofire's distributors UUID-like tokens.
const MAX_ID_CHARS: usize = 256;

pub use crate::core::unifiedpush::{Dialect, Instance};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// With the app server's VAPID public key if the app pinned one (a pushgate extension:
    /// Conversations' `vapid` attribute, genofire's `<vapid>` child; base64url of the
    /// uncompressed P-256 point, as the app server sends it in `k=`).
    Register(Instance, Option<String>),
    Unregister(Instance),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("not a UnifiedPush request")]
    NotUnifiedPush,
    #[error("'{0}' is missing")]
    Missing(&'static str),
    #[error("'{0}' is empty, longer than 256 characters or not printable")]
    Invalid(&'static str),
    #[error("'vapid' is not a base64url uncompressed P-256 public key")]
    BadVapidKey,
}

/// A VAPID public key as RFC 8292 `k=` carries it: base64url of a 65-byte uncompressed point.
fn vapid_key(value: Option<String>) -> Result<Option<String>, RequestError> {
    use base64::Engine;
    let Some(value) = value else { return Ok(None) };
    let value = value.trim().trim_end_matches('=').to_owned();
    let point = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&value)
        .map_err(|_| RequestError::BadVapidKey)?;
    if point.len() != 65 || point.first() != Some(&4) {
        return Err(RequestError::BadVapidKey);
    }
    Ok(Some(value))
}

fn checked(value: Option<&str>, name: &'static str) -> Result<String, RequestError> {
    let value = value.ok_or(RequestError::Missing(name))?.trim();
    let printable = value.chars().all(|c| !c.is_control() && !c.is_whitespace());
    if value.is_empty() || value.chars().count() > MAX_ID_CHARS || !printable {
        return Err(RequestError::Invalid(name));
    }
    Ok(value.to_owned())
}

impl TryFrom<&Element> for Request {
    type Error = RequestError;

    fn try_from(el: &Element) -> Result<Self, RequestError> {
        let register = match el.name() {
            "register" => true,
            "unregister" => false,
            _ => return Err(RequestError::NotUnifiedPush),
        };
        let (instance, vapid) = match el.ns().as_str() {
            NS_GENOFIRE => {
                let token = el.get_child("token", NS_GENOFIRE).map(Element::text);
                let instance = Instance::Genofire {
                    token: checked(token.as_deref(), "token")?,
                };
                (
                    instance,
                    el.get_child("vapid", NS_GENOFIRE).map(Element::text),
                )
            }
            NS_CONVERSATIONS => {
                let instance = Instance::Conversations {
                    application: checked(el.attr("application"), "application")?,
                    instance: checked(el.attr("instance"), "instance")?,
                };
                (instance, el.attr("vapid").map(str::to_owned))
            }
            _ => return Err(RequestError::NotUnifiedPush),
        };
        Ok(if register {
            Request::Register(instance, vapid_key(vapid)?)
        } else {
            Request::Unregister(instance)
        })
    }
}

/// The answer to a registration: the endpoint app servers push to, valid until `expires`.
pub fn registered(
    dialect: Dialect,
    endpoint: &str,
    expires: chrono::DateTime<chrono::Utc>,
) -> Element {
    match dialect {
        Dialect::Genofire => Element::builder("register", NS_GENOFIRE)
            .append(
                Element::builder("endpoint", NS_GENOFIRE)
                    .append(endpoint)
                    .build(),
            )
            .build(),
        Dialect::Conversations => Element::builder("registered", NS_CONVERSATIONS)
            .attr(xml_ncname!("endpoint").into(), endpoint)
            .attr(
                xml_ncname!("expiration").into(),
                expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
            .build(),
    }
}

/// genofire's error payload, shown by its distributors beside the stanza error.
pub fn genofire_error(text: &str) -> Element {
    Element::builder("register", NS_GENOFIRE)
        .append(Element::builder("error", NS_GENOFIRE).append(text).build())
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Result<Request, RequestError> {
        let el: Element = xml.parse().unwrap();
        Request::try_from(&el)
    }

    #[test]
    fn both_dialects_register_and_unregister() {
        assert_eq!(
            parse("<register xmlns='unifiedpush.org'><token> t-1 </token></register>"),
            Ok(Request::Register(
                Instance::Genofire {
                    token: "t-1".into()
                },
                None
            ))
        );
        assert_eq!(
            parse("<unregister xmlns='unifiedpush.org'><token>t-1</token></unregister>"),
            Ok(Request::Unregister(Instance::Genofire {
                token: "t-1".into()
            }))
        );
        assert_eq!(
            parse(
                "<register xmlns='http://gultsch.de/xmpp/drafts/unified-push' application='YQ==' instance='aQ=='/>"
            ),
            Ok(Request::Register(
                Instance::Conversations {
                    application: "YQ==".into(),
                    instance: "aQ==".into()
                },
                None
            ))
        );
    }

    #[test]
    fn malformed_requests_say_what_is_wrong() {
        assert_eq!(
            parse("<register xmlns='unifiedpush.org'/>"),
            Err(RequestError::Missing("token"))
        );
        assert_eq!(
            parse("<register xmlns='unifiedpush.org'><token/></register>"),
            Err(RequestError::Invalid("token"))
        );
        let long = "x".repeat(MAX_ID_CHARS + 1);
        assert_eq!(
            parse(&format!(
                "<register xmlns='http://gultsch.de/xmpp/drafts/unified-push' application='{long}' instance='i'/>"
            )),
            Err(RequestError::Invalid("application"))
        );
        assert_eq!(
            parse("<register xmlns='http://gultsch.de/xmpp/drafts/unified-push' application='a'/>"),
            Err(RequestError::Missing("instance"))
        );
        assert_eq!(
            parse("<register xmlns='urn:other'/>"),
            Err(RequestError::NotUnifiedPush)
        );
        assert_eq!(
            parse(&format!(
                "<register xmlns='{NS_CONVERSATIONS}' application='a' instance='i' vapid='AAAA'/>"
            )),
            Err(RequestError::BadVapidKey)
        );
    }

    #[test]
    fn replies_have_each_dialects_shape() {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let g = registered(Dialect::Genofire, "https://up.example/up/abc", at);
        assert_eq!(
            g.get_child("endpoint", NS_GENOFIRE)
                .map(Element::text)
                .as_deref(),
            Some("https://up.example/up/abc")
        );
        let c = registered(Dialect::Conversations, "https://up.example/up/abc", at);
        assert_eq!(c.name(), "registered");
        assert_eq!(c.attr("endpoint"), Some("https://up.example/up/abc"));
        assert_eq!(c.attr("expiration"), Some("2027-01-15T08:00:00Z"));
    }
}
