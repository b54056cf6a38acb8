//! What goes to the device: the JSON body (the end-to-end encrypted payload untouched, or the
//! summary with its body cut to fit one push message) and the RFC 8030 `Topic` and `Urgency`.

use serde::Serialize;

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

#[derive(Serialize)]
struct PlainPayload<'a> {
    kind: &'static str,
    priority: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(rename = "message-count", skip_serializing_if = "Option::is_none")]
    message_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nickname: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'a str>,
}

#[derive(Serialize)]
struct EncryptedPayload<'a> {
    encrypted: &'a str,
    iv: &'a str,
    kind: &'static str,
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
/// [`MAX_PLAINTEXT_BYTES`].
pub(super) fn build_payload(n: &Notification, max_body_chars: usize) -> Result<Vec<u8>, String> {
    let too_large = |len: usize| {
        format!(
            "payload is {len} bytes, more than the {MAX_PLAINTEXT_BYTES} a push message can carry"
        )
    };

    if let Some(enc) = &n.encrypted {
        let json = encode(&EncryptedPayload {
            encrypted: &enc.payload,
            iv: &enc.iv,
            kind: n.kind.label(),
        })?;
        return if json.len() <= MAX_PLAINTEXT_BYTES {
            Ok(json)
        } else {
            Err(too_large(json.len()))
        };
    }

    let c = &n.content;
    let mut payload = PlainPayload {
        kind: n.kind.label(),
        priority: n.priority.label(),
        account: c.account.as_deref(),
        sender: c.sender.as_deref(),
        body: c.body.as_deref().map(|b| cut_chars(b, max_body_chars)),
        message_count: c.message_count,
        nickname: c.nickname.as_deref(),
        channel: c.channel.as_deref(),
    };
    loop {
        let json = encode(&payload)?;
        if json.len() <= MAX_PLAINTEXT_BYTES {
            return Ok(json);
        }
        let excess = json.len() - MAX_PLAINTEXT_BYTES;
        let Some(body) = payload.body.as_mut() else {
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
            kind: Kind::Alert,
            priority: Priority::High,
            content: Content {
                account: Some("user@example.org".into()),
                sender: Some("friend@example.org".into()),
                body,
                message_count: Some(3),
                nickname: None,
                channel: None,
            },
            encrypted,
            collapse_key: None,
        }
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
}
