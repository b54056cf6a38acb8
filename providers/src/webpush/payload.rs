//! What goes to the device: the JSON body (the end-to-end encrypted payload untouched, or the
//! summary with its body cut to fit one push message) and the RFC 8030 `Topic` and `Urgency`.
//!
//! The notification's app data is the base of the body and pushgate's keys (and `badge`) are
//! added only where it lacks them.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::{Kind, Notification};

/// Largest plaintext that still fits the 4096 bytes a push service must accept once RFC 8291
/// adds its 86-byte header, the padding delimiter and the 16-byte tag.
pub const MAX_PLAINTEXT_BYTES: usize = 3993;

/// RFC 8030 §5.4: a `Topic` is at most 32 characters of the base64url alphabet.
pub(super) fn is_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 32
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// RFC 8030 `Urgency`: calls always wake the device.
pub(super) fn urgency(n: &Notification) -> &'static str {
    if n.kind == Kind::Voip {
        "high"
    } else {
        n.priority.label()
    }
}

/// The body as it is written: pushgate's keys first, in the order they have always had (so a
/// notification without app data is written byte for byte as before), each only where the app
/// data lacks it, then the app data.
struct Merged<'a> {
    ours: Vec<(&'static str, Value)>,
    data: &'a Map<String, Value>,
}

impl Serialize for Merged<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in &self.ours {
            if !self.data.contains_key(*key) {
                map.serialize_entry(key, value)?;
            }
        }
        for (key, value) in self.data {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// `entries` without those whose value is missing.
fn present(
    entries: impl IntoIterator<Item = (&'static str, Option<Value>)>,
) -> Vec<(&'static str, Value)> {
    entries
        .into_iter()
        .filter_map(|(key, value)| Some((key, value?)))
        .collect()
}

/// Cuts `text` to `max_chars` characters plus "…" if it is longer.
fn cut_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((at, _)) => format!("{}{ELLIPSIS}", &text[..at]),
        None => text.to_owned(),
    }
}

/// The JSON that goes to the device: the end-to-end encrypted payload untouched, or the summary
/// with its body cut to `max_body_chars` and, if need be, further until it fits
/// [`MAX_PLAINTEXT_BYTES`]. The app data is never cut: if it does not fit, the push is refused.
pub(super) fn build_payload(n: &Notification, max_body_chars: usize) -> Result<Vec<u8>, String> {
    let too_large = |len: usize| {
        format!(
            "payload is {len} bytes, more than the {MAX_PLAINTEXT_BYTES} a push message can carry"
        )
    };
    let text = |s: &Option<String>| s.as_deref().map(Value::from);
    let badge = n.badge.map(Value::from);

    if let Some(enc) = &n.encrypted {
        let json = encode(&Merged {
            ours: present([
                ("encrypted", Some(enc.payload.as_str().into())),
                ("iv", Some(enc.iv.as_str().into())),
                ("kind", Some(n.kind.label().into())),
                ("badge", badge),
            ]),
            data: &n.data,
        })?;
        return if json.len() <= MAX_PLAINTEXT_BYTES {
            Ok(json)
        } else {
            Err(too_large(json.len()))
        };
    }

    let c = &n.content;
    let build = |body: Option<&str>| {
        encode(&Merged {
            ours: present([
                ("kind", Some(n.kind.label().into())),
                ("priority", Some(n.priority.label().into())),
                ("account", text(&c.account)),
                ("sender", text(&c.sender)),
                ("body", body.map(Value::from)),
                ("message-count", c.message_count.map(Value::from)),
                ("nickname", text(&c.nickname)),
                ("channel", text(&c.channel)),
                ("badge", badge.clone()),
            ]),
            data: &n.data,
        })
    };
    // An app body replaces pushgate's, so only pushgate's is there to cut.
    let mut body = c
        .body
        .as_deref()
        .filter(|_| !n.data.contains_key("body"))
        .map(|b| cut_chars(b, max_body_chars));
    loop {
        let json = build(body.as_deref())?;
        if json.len() <= MAX_PLAINTEXT_BYTES {
            return Ok(json);
        }
        let excess = json.len() - MAX_PLAINTEXT_BYTES;
        let Some(body) = body.as_mut() else {
            return Err(too_large(json.len()));
        };
        // Room left for the body inside its JSON string, then the longest prefix (in escaped
        // bytes) that fits there together with the ellipsis.
        let room = json_escaped_len(body).checked_sub(excess + ELLIPSIS.len());
        let text = body.strip_suffix(ELLIPSIS).unwrap_or(body);
        let Some(room) = room.filter(|_| !text.is_empty()) else {
            return Err(too_large(json.len()));
        };
        let mut used = 0;
        let mut keep = 0;
        for (at, c) in text.char_indices() {
            used += json_escaped_len_char(c);
            if used > room {
                break;
            }
            keep = at + c.len_utf8();
        }
        *body = format!("{}{ELLIPSIS}", &text[..keep]);
    }
}

const ELLIPSIS: &str = "…";

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_escaped_len_char(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

fn json_escaped_len(s: &str) -> usize {
    s.chars().map(json_escaped_len_char).sum()
}

fn encode<T: Serialize>(payload: &T) -> Result<Vec<u8>, String> {
    serde_json::to_vec(payload).map_err(|e| format!("cannot encode payload: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Content, Encrypted, Priority};

    fn note(body: Option<String>, encrypted: Option<Encrypted>) -> Notification {
        Notification {
            content: Content {
                account: Some("user@example.org".into()),
                sender: Some("friend@example.org".into()),
                body,
                message_count: Some(3),
                nickname: None,
                channel: None,
            },
            encrypted,
            ..Notification::new(Kind::Alert, Priority::High)
        }
    }

    /// `n` with app data `data` (a JSON object) and `badge`.
    fn with_data(n: Notification, data: Value, badge: Option<u32>) -> Notification {
        let Value::Object(data) = data else {
            panic!("app data must be an object: {data}")
        };
        Notification { data, badge, ..n }
    }

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn payload_cuts_body_and_fits_the_limit() {
        let json = build_payload(&note(Some("é".repeat(600)), None), 500).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let body = v["body"].as_str().unwrap();
        assert_eq!(body.chars().count(), 501);
        assert!(body.ends_with("é…"));
        assert_eq!(v["message-count"], 3);
        assert!(v.get("nickname").is_none());

        // A configured limit above what fits is cut further, down to the byte budget.
        let json = build_payload(&note(Some("\"ab".repeat(3000)), None), 100_000).unwrap();
        assert!(json.len() <= MAX_PLAINTEXT_BYTES);
        assert!(json.len() > MAX_PLAINTEXT_BYTES - 10, "{}", json.len());
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(v["body"].as_str().unwrap().ends_with('…'));

        let huge = Encrypted {
            payload: "A".repeat(5000),
            iv: "iv".into(),
        };
        let err = build_payload(&note(None, Some(huge)), 500).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn without_app_data_the_body_is_written_as_before() {
        let json = build_payload(&note(Some("hi \"you\"".into()), None), 500).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"kind":"alert","priority":"high","account":"user@example.org","sender":"friend@example.org","body":"hi \"you\"","message-count":3}"#
        );
        let enc = Encrypted {
            payload: "Y2lwaGVy".into(),
            iv: "aXY=".into(),
        };
        let json = build_payload(&note(None, Some(enc)), 500).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"encrypted":"Y2lwaGVy","iv":"aXY=","kind":"alert"}"#
        );
    }

    #[test]
    fn app_data_is_the_base_and_wins() {
        let n = with_data(
            note(Some("hi".into()), None),
            serde_json::json!({"room_id": "!r:hs", "sender": "@alice:hs", "counts": {"unread": 2}}),
            Some(4),
        );
        assert_eq!(
            json(&build_payload(&n, 500).unwrap()),
            serde_json::json!({
                "kind": "alert",
                "priority": "high",
                "account": "user@example.org",
                "sender": "@alice:hs",
                "body": "hi",
                "message-count": 3,
                "badge": 4,
                "room_id": "!r:hs",
                "counts": {"unread": 2},
            })
        );
        let n = with_data(
            n,
            serde_json::json!({"badge": "9+", "kind": "call"}),
            Some(4),
        );
        let v = json(&build_payload(&n, 500).unwrap());
        assert_eq!((&v["badge"], &v["kind"]), (&"9+".into(), &"call".into()));

        let enc = Encrypted {
            payload: "Y2lwaGVy".into(),
            iv: "aXY=".into(),
        };
        let n = with_data(
            note(None, Some(enc)),
            serde_json::json!({"event_id": "$e"}),
            Some(1),
        );
        assert_eq!(
            json(&build_payload(&n, 500).unwrap()),
            serde_json::json!({"encrypted": "Y2lwaGVy", "iv": "aXY=", "kind": "alert", "badge": 1, "event_id": "$e"})
        );
    }

    #[test]
    fn only_pushgates_body_is_cut_around_large_app_data() {
        let filler = "x".repeat(3000);
        let n = with_data(
            note(Some("é".repeat(2000)), None),
            serde_json::json!({"filler": filler}),
            None,
        );
        let bytes = build_payload(&n, 100_000).unwrap();
        assert!(bytes.len() <= MAX_PLAINTEXT_BYTES);
        assert!(bytes.len() > MAX_PLAINTEXT_BYTES - 10, "{}", bytes.len());
        let v = json(&bytes);
        assert_eq!(v["filler"], filler.as_str());
        assert!(v["body"].as_str().unwrap().ends_with("é…"));

        // The app's own body is the app's: too large is refused, not cut.
        let n = with_data(
            note(Some("hi".into()), None),
            serde_json::json!({"body": "é".repeat(2100)}),
            None,
        );
        let err = build_payload(&n, 100_000).unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }
}
