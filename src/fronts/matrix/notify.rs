//! `POST /_matrix/push/v1/notify` as the Matrix push gateway API defines it: the request parsed
//! into types (only `notification.devices` is required; every other member is optional and of a
//! fixed type), and the notification the core delivers.
//!
//! What each field means for the push (spec, and Sygnal's behaviour where the spec is silent):
//! `type` `m.call.invite` is a call (and, for an app configured with `call_tweaks`, an event
//! whose tweaks say it rings); no `event_id` means a badge-only update (counts, no event): a
//! wake-up, or "clear" when nothing is unread; `prio: low` is a low-priority push and `high`
//! (the default) a normal one: a message, which wakes the device (APNs 10, FCM high) but is not
//! a call (WebPush `Urgency: normal`, RFC 8030 §5.3); the sender's display name (else its user
//! id), the message body and the room name are the content an app may show.
//!
//! Sizes: what pushgate adds to the app's data is bounded as written in JSON (ids at the spec's
//! 255 bytes and without characters JSON escapes, names cut to 256 bytes counting escapes, the
//! body cut by the providers to what is left), and the app's data to
//! [`MAX_DEFAULT_PAYLOAD_BYTES`], so every accepted request fits every provider's payload. A
//! push that can never be built would be a 502, and the homeserver would hold every later push
//! for that pusher behind it for a day: a display name full of quotes must not do that.

use pushgate_providers::{Content, Kind, Notification, Priority};
use serde::Deserialize;
use serde_json::Value;

/// Longest accepted body (Sygnal's limit): Synapse sends one device a request, a few KiB.
pub const MAX_BODY_BYTES: usize = 512 * 1024;
/// Most devices in one request (Synapse sends one).
pub const MAX_DEVICES: usize = 64;
/// Longest message body taken from the event into a push; providers cut it further to fit.
const MAX_BODY_CHARS: usize = 1024;
/// Longest sender or room name taken into a push, in bytes as written in JSON: a title.
const MAX_NAME_BYTES: usize = 256;
/// The Matrix spec's limit on room and event ids (appendices, "Identifier grammar").
const MAX_ID_BYTES: usize = 255;

#[derive(Debug, Deserialize)]
pub struct Request {
    pub notification: Body,
}

#[derive(Debug, Deserialize)]
pub struct Body {
    pub event_id: Option<String>,
    pub room_id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub sender: Option<String>,
    pub sender_display_name: Option<String>,
    pub room_name: Option<String>,
    pub room_alias: Option<String>,
    pub user_is_target: Option<bool>,
    pub prio: Option<Prio>,
    pub content: Option<serde_json::Map<String, Value>>,
    pub counts: Option<Counts>,
    pub devices: Vec<Device>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Prio {
    High,
    Low,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
pub struct Counts {
    pub unread: Option<u32>,
    pub missed_calls: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct Device {
    pub app_id: String,
    pub pushkey: String,
    pub pushkey_ts: Option<u64>,
    pub data: Option<serde_json::Map<String, Value>>,
    pub tweaks: Option<serde_json::Map<String, Value>>,
}

/// A pusher's `default_payload` that cannot be sent: not a JSON object, or larger than any
/// provider's payload (a push that can never go out must not wait in the retry queue either).
#[derive(Debug, PartialEq, Eq)]
pub enum BadDefaultPayload {
    NotAnObject,
    TooLarge,
}

pub use crate::config::MAX_DEFAULT_PAYLOAD_BYTES;

/// Why a body is refused, as the Matrix error code and a reason that quotes nothing of it.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed {
    pub errcode: &'static str,
    pub error: String,
}

/// Parses a request body: straight into the types, which is all a well-formed request costs;
/// only a refused one is looked at again, to say what is wrong with it.
pub fn parse(body: &[u8]) -> Result<Request, Malformed> {
    let request: Request = serde_json::from_slice(body).map_err(|_| malformed(body))?;
    let n = &request.notification;
    if n.devices.len() > MAX_DEVICES {
        return Err(bad_json(format!("more than {MAX_DEVICES} devices")));
    }
    for (name, id) in [("event_id", &n.event_id), ("room_id", &n.room_id)] {
        let Some(id) = id else { continue };
        if id.len() > MAX_ID_BYTES {
            return Err(bad_json(format!(
                "'{name}' is longer than {MAX_ID_BYTES} bytes"
            )));
        }
        if id.chars().any(|c| json_bytes(c) != c.len_utf8()) {
            return Err(bad_json(format!("'{name}' is no Matrix id")));
        }
    }
    Ok(request)
}

fn bad_json(error: String) -> Malformed {
    Malformed {
        errcode: "M_BAD_JSON",
        error,
    }
}

/// What is wrong with a body that does not parse into a [`Request`].
fn malformed(body: &[u8]) -> Malformed {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            return Malformed {
                errcode: "M_NOT_JSON",
                error: "the body is not JSON".into(),
            };
        }
    };
    let Some(notification) = value.get("notification") else {
        return Malformed {
            errcode: "M_MISSING_PARAM",
            error: "'notification' is missing".into(),
        };
    };
    if notification.get("devices").is_none() {
        return Malformed {
            errcode: "M_MISSING_PARAM",
            error: "'notification.devices' is missing".into(),
        };
    }
    // serde's own message would quote the offending value.
    bad_json("a member of 'notification' has the wrong type or value".into())
}

impl Body {
    /// The notification for its devices; `None` when there is nothing to push (neither an event
    /// nor counts).
    pub fn notification(&self) -> Option<Notification> {
        let kind = match (&self.event_id, self.counts) {
            (Some(_), _) if self.kind.as_deref() == Some("m.call.invite") => Kind::Voip,
            (Some(_), _) => Kind::Alert,
            (None, Some(counts)) if counts.unread.unwrap_or(0) == 0 => Kind::Clear,
            (None, Some(_)) => Kind::Background,
            (None, None) => return None,
        };
        let priority = match self.prio {
            Some(Prio::Low) => Priority::Low,
            Some(Prio::High) | None => Priority::Normal,
        };
        let name = |s: &String| cut_json(s, MAX_NAME_BYTES);
        let body = self
            .content
            .as_ref()
            .and_then(|c| c.get("body"))
            .and_then(Value::as_str)
            .map(|b| b.chars().take(MAX_BODY_CHARS).collect());
        Some(Notification {
            content: Content {
                account: None,
                sender: self
                    .sender_display_name
                    .as_ref()
                    .or(self.sender.as_ref())
                    .map(name),
                body,
                message_count: self.counts.and_then(|c| c.unread),
                nickname: None,
                channel: self.room_name.as_ref().map(name),
            },
            ..Notification::new(kind, priority)
        })
    }

    /// What the app gets besides the content: the event's room and id and the counts (as
    /// Sygnal sends them, so apps written for it find them), on top of the pusher's
    /// `default_payload`, on top of the app's configured one (`app`): each overrides the keys of
    /// the one below, the event's facts last. `Err` when the pusher's `default_payload` is there
    /// but not an object (the pushkey is then rejected, as in Sygnal) or the two together are
    /// larger than [`MAX_DEFAULT_PAYLOAD_BYTES`].
    pub fn app_data(
        &self,
        device: &Device,
        app: &serde_json::Map<String, Value>,
    ) -> Result<serde_json::Map<String, Value>, BadDefaultPayload> {
        let mut data = app.clone();
        match device.data.as_ref().and_then(|d| d.get("default_payload")) {
            Some(Value::Object(pusher)) => {
                data.extend(pusher.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            Some(_) => return Err(BadDefaultPayload::NotAnObject),
            None => {}
        }
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |b| b.len());
        if size > MAX_DEFAULT_PAYLOAD_BYTES {
            return Err(BadDefaultPayload::TooLarge);
        }
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(v) = value {
                data.insert(key.to_owned(), v);
            }
        };
        put("room_id", self.room_id.clone().map(Value::from));
        put("event_id", self.event_id.clone().map(Value::from));
        let counts = self.counts.unwrap_or_default();
        put("unread_count", counts.unread.map(Value::from));
        put("missed_calls", counts.missed_calls.map(Value::from));
        Ok(data)
    }

    /// The app icon badge: unread messages and missed calls.
    pub fn badge(&self) -> Option<u32> {
        let counts = self.counts?;
        match (counts.unread, counts.missed_calls) {
            (None, None) => None,
            (u, m) => Some(u.unwrap_or(0).saturating_add(m.unwrap_or(0))),
        }
    }
}

/// The bytes `c` takes in a JSON string.
fn json_bytes(c: char) -> usize {
    match c {
        '"' | '\\' => 2,
        c if u32::from(c) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// The longest start of `s` that takes at most `max` bytes in a JSON string.
fn cut_json(s: &str, max: usize) -> String {
    let mut used = 0;
    s.chars()
        .take_while(|&c| {
            used += json_bytes(c);
            used <= max
        })
        .collect()
}

impl Device {
    /// Whether the pusher's tweaks have every one of `wanted` (none wanted: never).
    pub fn has_tweaks(&self, wanted: &serde_json::Map<String, Value>) -> bool {
        !wanted.is_empty()
            && self
                .tweaks
                .as_ref()
                .is_some_and(|t| wanted.iter().all(|(k, v)| t.get(k) == Some(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's example request (push_notifier.yaml).
    const SPEC_EXAMPLE: &str = r##"{
      "notification": {
        "event_id": "$3957tyerfgewrf384",
        "room_id": "!slw48wfj34rtnrf:example.org",
        "type": "m.room.message",
        "sender": "@exampleuser:matrix.org",
        "sender_display_name": "Major Tom",
        "room_name": "Mission Control",
        "room_alias": "#exampleroom:matrix.org",
        "prio": "high",
        "content": {"msgtype": "m.text", "body": "I'm floating in a most peculiar way."},
        "counts": {"unread": 2, "missed_calls": 1},
        "devices": [{
          "app_id": "org.matrix.matrixConsole.ios",
          "pushkey": "V2h5IG9uIGVhcnRoIGRpZCB5b3UgZGVjb2RlIHRoaXM/",
          "pushkey_ts": 12345678,
          "data": {},
          "tweaks": {"sound": "bing"}
        }]
      }
    }"##;

    #[test]
    fn the_spec_example_is_a_normal_priority_alert() {
        let r = parse(SPEC_EXAMPLE.as_bytes()).unwrap();
        let n = r.notification.notification().unwrap();
        assert_eq!(n.kind, Kind::Alert);
        assert_eq!(n.priority, Priority::Normal, "a message, not a call");
        assert_eq!(n.content.sender.as_deref(), Some("Major Tom"));
        assert_eq!(
            n.content.body.as_deref(),
            Some("I'm floating in a most peculiar way.")
        );
        assert_eq!(n.content.channel.as_deref(), Some("Mission Control"));
        assert_eq!(n.content.message_count, Some(2));
        assert_eq!(r.notification.devices.len(), 1);
    }

    #[test]
    fn only_devices_is_required() {
        let r = parse(br#"{"notification":{"devices":[{"app_id":"a","pushkey":"k"}]}}"#).unwrap();
        assert!(
            r.notification.notification().is_none(),
            "no event, no counts: nothing to push"
        );
    }

    #[test]
    fn counts_without_an_event_update_the_badge() {
        let badge = |unread| {
            let body =
                format!(r#"{{"notification":{{"counts":{{"unread":{unread}}},"devices":[]}}}}"#);
            parse(body.as_bytes())
                .unwrap()
                .notification
                .notification()
                .unwrap()
                .kind
        };
        assert_eq!(badge(0), Kind::Clear);
        assert_eq!(badge(3), Kind::Background);
    }

    #[test]
    fn a_call_invite_is_a_call_and_low_prio_is_low() {
        let r = parse(
            br#"{"notification":{"event_id":"$e","type":"m.call.invite","prio":"low","devices":[]}}"#,
        )
        .unwrap();
        let n = r.notification.notification().unwrap();
        assert_eq!((n.kind, n.priority), (Kind::Voip, Priority::Low));
    }

    #[test]
    fn the_app_gets_room_event_and_counts_over_its_default_payload() {
        let r = parse(
            br#"{"notification":{"event_id":"$e","room_id":"!r","counts":{"unread":2,"missed_calls":1},
                "devices":[{"app_id":"a","pushkey":"k","data":{"default_payload":
                    {"aps":{"mutable-content":1},"room_id":"forged","extra":true}}},
                  {"app_id":"a","pushkey":"k2","data":{"default_payload":"not an object"}}]}}"#,
        )
        .unwrap();
        let n = &r.notification;
        let app = serde_json::json!({"extra": false, "app": 1});
        let app = app.as_object().unwrap();
        let data = n.app_data(&n.devices[0], app).unwrap();
        assert_eq!(
            Value::Object(data),
            serde_json::json!({"aps": {"mutable-content": 1}, "room_id": "!r", "event_id": "$e",
                               "unread_count": 2, "missed_calls": 1, "extra": true, "app": 1})
        );
        assert_eq!(
            n.app_data(&n.devices[1], app),
            Err(BadDefaultPayload::NotAnObject)
        );
        assert_eq!(n.badge(), Some(3));
    }

    #[test]
    fn a_default_payload_no_provider_can_carry_is_refused() {
        let pad = "x".repeat(MAX_DEFAULT_PAYLOAD_BYTES);
        let body = format!(
            r#"{{"notification":{{"event_id":"$e","devices":[{{"app_id":"a","pushkey":"k",
                "data":{{"default_payload":{{"pad":"{pad}"}}}}}}]}}}}"#
        );
        let r = parse(body.as_bytes()).unwrap();
        let n = &r.notification;
        let none = serde_json::Map::new();
        assert_eq!(
            n.app_data(&n.devices[0], &none),
            Err(BadDefaultPayload::TooLarge)
        );
        let half = "x".repeat(MAX_DEFAULT_PAYLOAD_BYTES / 2);
        let app = serde_json::json!({ "app": half });
        let pusher = format!(
            r#"{{"notification":{{"devices":[{{"app_id":"a","pushkey":"k",
                "data":{{"default_payload":{{"pusher":"{half}"}}}}}}]}}}}"#
        );
        let r = parse(pusher.as_bytes()).unwrap();
        let n = &r.notification;
        assert_eq!(
            n.app_data(&n.devices[0], app.as_object().unwrap()),
            Err(BadDefaultPayload::TooLarge),
            "the app's and the pusher's payloads count together"
        );
    }

    #[test]
    fn names_are_cut_at_a_character_and_ids_longer_than_the_spec_refused() {
        let long = "é".repeat(300);
        let quotes = r#"\""#.repeat(300);
        let body = format!(
            r#"{{"notification":{{"event_id":"$e","sender_display_name":"{long}",
                "room_name":"{quotes}","devices":[]}}}}"#
        );
        let n = parse(body.as_bytes())
            .unwrap()
            .notification
            .notification()
            .unwrap();
        assert_eq!(n.content.sender.as_deref(), Some("é".repeat(128).as_str()));
        assert_eq!(
            n.content.channel.as_deref(),
            Some("\"".repeat(128).as_str())
        );
        for member in ["event_id", "room_id"] {
            for id in ["x".repeat(MAX_ID_BYTES + 1), r"$a\u0001b".to_owned()] {
                let body = format!(r#"{{"notification":{{"{member}":"{id}","devices":[]}}}}"#);
                assert_eq!(parse(body.as_bytes()).unwrap_err().errcode, "M_BAD_JSON");
            }
        }
    }

    #[test]
    fn a_pusher_rings_when_it_has_every_wanted_tweak() {
        let r = parse(
            br#"{"notification":{"devices":[{"app_id":"a","pushkey":"k",
                "tweaks":{"sound":"ring","highlight":false}},{"app_id":"a","pushkey":"k2",
                "tweaks":{"sound":"default"}},{"app_id":"a","pushkey":"k3"}]}}"#,
        )
        .unwrap();
        let wanted = serde_json::json!({"sound": "ring"});
        let wanted = wanted.as_object().unwrap();
        let rings: Vec<bool> = r
            .notification
            .devices
            .iter()
            .map(|d| d.has_tweaks(wanted))
            .collect();
        assert_eq!(rings, [true, false, false]);
        assert!(!r.notification.devices[0].has_tweaks(&serde_json::Map::new()));
    }

    #[test]
    fn malformed_bodies_get_matrix_error_codes() {
        let code = |body: &[u8]| parse(body).unwrap_err().errcode;
        assert_eq!(code(b"not json"), "M_NOT_JSON");
        assert_eq!(code(b"{}"), "M_MISSING_PARAM");
        assert_eq!(code(br#"{"notification":{}}"#), "M_MISSING_PARAM");
        assert_eq!(code(br#"{"notification":{"devices":{}}}"#), "M_BAD_JSON");
        assert_eq!(
            code(br#"{"notification":{"devices":[{"app_id":1,"pushkey":"k"}]}}"#),
            "M_BAD_JSON"
        );
        assert_eq!(
            code(br#"{"notification":{"prio":"urgent","devices":[]}}"#),
            "M_BAD_JSON"
        );
        assert_eq!(
            code(br#"{"notification":{"counts":{"unread":-1},"devices":[]}}"#),
            "M_BAD_JSON"
        );
        let many = format!(
            r#"{{"notification":{{"devices":[{}]}}}}"#,
            vec![r#"{"app_id":"a","pushkey":"k"}"#; MAX_DEVICES + 1].join(",")
        );
        assert_eq!(code(many.as_bytes()), "M_BAD_JSON");
    }
}
