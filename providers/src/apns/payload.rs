//! Maps a [`Notification`] onto one APNs push: which token, push type, priority, expiration and
//! the JSON payload with the keys Tigase clients (Siskin) read.
//!
//! Why it exists: the mapping is the part of APNs that clients depend on (Siskin reads these
//! keys to show a notification or wake the app), so it lives in one place, apart from the transport, and is unit-tested
//! without a network. Keys whose source is missing are omitted; an encrypted payload is passed
//! through untouched and then no plaintext sender or body goes out.
//!
//! The notification's app data is the base of every payload and pushgate's keys are added only
//! where it lacks them (inside its `aps`, key by key), so an app's own `aps.alert` or `badge` is
//! what the device gets.

use serde_json::{Map, Value, json};

use crate::{Device, DeviceToken, Kind, Notification, Priority};

/// APNs refuses larger payloads (413 `PayloadTooLarge`).
pub(crate) const MAX_PAYLOAD_BYTES: usize = 4096;
/// VoIP (PushKit) pushes may be a little larger.
pub(crate) const MAX_VOIP_PAYLOAD_BYTES: usize = 5120;

/// The text shown when there is nothing better (no sender, no body, or an encrypted payload).
const GENERIC_TEXT: &str = "New message";
/// The body of a call notification sent as an ordinary alert (no PushKit token).
const CALL_TEXT: &str = "Incoming call";
const ELLIPSIS: &str = "…";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PushType {
    Alert,
    Background,
    Voip,
}

impl PushType {
    /// The `apns-push-type` value.
    pub(crate) fn header(self) -> &'static str {
        match self {
            PushType::Alert => "alert",
            PushType::Background => "background",
            PushType::Voip => "voip",
        }
    }

    /// `apns-priority`: immediate for calls, and for alerts unless the notification is low
    /// priority (then 5: delivered when the device is awake anyway, to save its battery);
    /// background pushes must use 5.
    pub(crate) fn priority(self, priority: Priority) -> &'static str {
        match (self, priority) {
            (PushType::Voip, _) => "10",
            (PushType::Alert, Priority::Normal | Priority::High) => "10",
            (PushType::Alert, Priority::Low) | (PushType::Background, _) => "5",
        }
    }
}

/// The mapping's knobs, from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct MappingSettings {
    pub max_body_chars: usize,
    pub expiration_secs: u64,
    pub voip_expiration_secs: u64,
}

/// One push, ready for the transport.
#[derive(Debug)]
pub(crate) struct Planned<'a> {
    pub token: &'a DeviceToken,
    pub push_type: PushType,
    /// The notification's priority, for `apns-priority`.
    pub priority: Priority,
    /// `apns-expiration` relative to now; 0 means "now or never" (the header is then `0`).
    pub expiration_secs: u64,
    /// `apns-collapse-id` asked for by the notification (the app's configured one otherwise).
    pub collapse_id: Option<String>,
    pub body: Vec<u8>,
}

/// Builds the push for `n` to `device`; `Err` (our fault) when the payload cannot fit.
pub(crate) fn plan<'a>(
    device: &'a Device,
    n: &Notification,
    settings: &MappingSettings,
) -> Result<Planned<'a>, String> {
    let c = &n.content;
    match (n.kind, &device.second_token) {
        (Kind::Voip, Some(voip_token)) => {
            let mut payload = Map::new();
            insert_opt(&mut payload, "account", c.account.as_deref());
            match &n.encrypted {
                Some(enc) => {
                    payload.insert("encrypted".into(), enc.payload.clone().into());
                    payload.insert("iv".into(), enc.iv.clone().into());
                }
                None => insert_opt(&mut payload, "sender", c.sender.as_deref()),
            }
            // PushKit shows nothing itself; an `aps` only if there is a badge for the app to set.
            if n.badge.is_some() {
                payload.insert("aps".into(), aps(n, json!({})));
            }
            let body = encode(&merged(n, payload))?;
            check_size(&body, MAX_VOIP_PAYLOAD_BYTES)?;
            Ok(Planned {
                priority: n.priority,
                collapse_id: n.collapse_key.clone().filter(|k| k.len() <= 64),
                token: voip_token,
                push_type: PushType::Voip,
                expiration_secs: expiry(n, settings.voip_expiration_secs),
                body,
            })
        }
        (Kind::Alert | Kind::Voip, _) => {
            let default_body = if n.kind == Kind::Voip {
                CALL_TEXT
            } else {
                GENERIC_TEXT
            };
            let body = alert_payload(n, default_body, settings.max_body_chars)?;
            Ok(Planned {
                priority: n.priority,
                collapse_id: n.collapse_key.clone().filter(|k| k.len() <= 64),
                token: &device.token,
                push_type: PushType::Alert,
                // A call that falls back to an alert is just as useless once stale.
                expiration_secs: expiry(
                    n,
                    if n.kind == Kind::Voip {
                        settings.voip_expiration_secs
                    } else {
                        settings.expiration_secs
                    },
                ),
                body,
            })
        }
        (Kind::Background | Kind::Clear, _) => {
            let mut payload = Map::new();
            payload.insert("aps".into(), aps(n, json!({ "content-available": 1 })));
            insert_opt(&mut payload, "account", c.account.as_deref());
            let unread = if n.kind == Kind::Clear {
                Some(0)
            } else {
                c.message_count
            };
            if let Some(count) = unread {
                payload.insert("unread-messages".into(), count.into());
            }
            if let Some(enc) = &n.encrypted {
                payload.insert("encrypted".into(), enc.payload.clone().into());
                payload.insert("iv".into(), enc.iv.clone().into());
            }
            let body = encode(&merged(n, payload))?;
            check_size(&body, MAX_PAYLOAD_BYTES)?;
            Ok(Planned {
                priority: n.priority,
                collapse_id: n.collapse_key.clone().filter(|k| k.len() <= 64),
                token: &device.token,
                push_type: PushType::Background,
                expiration_secs: expiry(n, settings.expiration_secs),
                body,
            })
        }
    }
}

/// The notification's own time to live where it has one, else the app's for its kind.
fn expiry(n: &Notification, default_secs: u64) -> u64 {
    n.ttl_secs.map_or(default_secs, u64::from)
}

/// An alert push: `aps.alert` for the banner (`mutable-content` so Siskin's Notification
/// Service Extension can rewrite it) plus the custom keys. The body is cut to `max_body_chars`
/// and further, if need be, until the payload fits; the app data is never cut, so a payload
/// whose app data alone is too large is refused.
fn alert_payload(
    n: &Notification,
    default_body: &str,
    max_body_chars: usize,
) -> Result<Vec<u8>, String> {
    let c = &n.content;
    let build = |body: Option<&str>| -> Result<Vec<u8>, String> {
        let mut payload = Map::new();
        let mut alert = Map::new();
        match &n.encrypted {
            Some(enc) => {
                alert.insert("title".into(), GENERIC_TEXT.into());
                insert_opt(&mut payload, "account", c.account.as_deref());
                payload.insert("encrypted".into(), enc.payload.clone().into());
                payload.insert("iv".into(), enc.iv.clone().into());
            }
            None => {
                alert.insert(
                    "title".into(),
                    c.sender.as_deref().unwrap_or(GENERIC_TEXT).into(),
                );
                alert.insert("body".into(), body.unwrap_or(default_body).into());
                insert_opt(&mut payload, "account", c.account.as_deref());
                insert_opt(&mut payload, "sender", c.sender.as_deref());
                insert_opt(&mut payload, "body", body);
                insert_opt(&mut payload, "nickname", c.nickname.as_deref());
            }
        }
        if let Some(count) = c.message_count {
            payload.insert("unread-messages".into(), count.into());
        }
        payload.insert(
            "aps".into(),
            aps(
                n,
                json!({ "alert": alert, "mutable-content": 1, "sound": "default" }),
            ),
        );
        encode(&merged(n, payload))
    };

    let full = c
        .body
        .as_deref()
        .filter(|_| n.encrypted.is_none())
        .map(|b| cut_chars(b, max_body_chars));
    let json = build(full.as_deref())?;
    if json.len() <= MAX_PAYLOAD_BYTES {
        return Ok(json);
    }
    let Some(text) = c.body.as_deref().filter(|_| n.encrypted.is_none()) else {
        return Err(too_large(json.len(), MAX_PAYLOAD_BYTES));
    };
    // The body appears twice (banner and custom key): find the longest prefix that fits.
    let limit = text.chars().count().min(max_body_chars);
    let (mut lo, mut hi) = (0usize, limit);
    let mut best = None;
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        let candidate = build(Some(&cut_to(text, mid)))?;
        if candidate.len() <= MAX_PAYLOAD_BYTES {
            best = Some(candidate);
            lo = mid + 1;
        } else if mid == 0 {
            break;
        } else {
            hi = mid - 1;
        }
    }
    best.ok_or_else(|| too_large(json.len(), MAX_PAYLOAD_BYTES))
}

/// pushgate's `aps` object `fields` plus the notification's badge.
fn aps(n: &Notification, mut fields: Value) -> Value {
    if let (Some(badge), Value::Object(map)) = (n.badge, &mut fields) {
        map.insert("badge".into(), badge.into());
    }
    fields
}

/// The payload that goes out: the notification's app data, with pushgate's keys `ours` added
/// where it lacks them. An app `aps` object gets pushgate's `aps` keys only where it lacks them;
/// an app `aps` that is not an object cannot carry them (and APNs would refuse it), so pushgate's
/// replaces it.
fn merged(n: &Notification, ours: Map<String, Value>) -> Value {
    let mut payload = n.data.clone();
    for (key, value) in ours {
        match payload.get_mut(&key) {
            Some(Value::Object(theirs)) if key == "aps" => {
                if let Value::Object(fields) = value {
                    for (k, v) in fields {
                        theirs.entry(k).or_insert(v);
                    }
                }
            }
            Some(theirs) if key == "aps" => *theirs = value,
            Some(_) => {}
            None => {
                payload.insert(key, value);
            }
        }
    }
    Value::Object(payload)
}

fn insert_opt(map: &mut Map<String, Value>, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        map.insert(key.to_owned(), v.into());
    }
}

/// `text` cut to `max_chars` characters plus "…" if it is longer.
fn cut_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some(_) => cut_to(text, max_chars),
        None => text.to_owned(),
    }
}

/// The first `chars` characters of `text` and "…".
fn cut_to(text: &str, chars: usize) -> String {
    let end = text
        .char_indices()
        .nth(chars)
        .map_or(text.len(), |(at, _)| at);
    format!("{}{ELLIPSIS}", &text[..end])
}

fn encode(v: &Value) -> Result<Vec<u8>, String> {
    serde_json::to_vec(v).map_err(|e| format!("cannot encode the APNs payload: {e}"))
}

fn too_large(len: usize, limit: usize) -> String {
    format!("APNs payload is {len} bytes, more than the {limit} APNs accepts")
}

fn check_size(body: &[u8], limit: usize) -> Result<(), String> {
    if body.len() > limit {
        Err(too_large(body.len(), limit))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Content, Encrypted, ProviderId};

    fn settings() -> MappingSettings {
        MappingSettings {
            max_body_chars: 500,
            expiration_secs: 86_400,
            voip_expiration_secs: 30,
        }
    }

    fn device(second: bool) -> Device {
        Device {
            provider: ProviderId::new("apns"),
            token: DeviceToken::new("ab".repeat(32)),
            second_token: second.then(|| DeviceToken::new("cd".repeat(32))),
            webpush_keys: None,
        }
    }

    fn note(kind: Kind, body: Option<&str>) -> Notification {
        Notification {
            content: Content {
                account: Some("juliet@example.org".into()),
                sender: Some("romeo@example.org/phone".into()),
                body: body.map(Into::into),
                message_count: Some(2),
                nickname: None,
                channel: None,
            },
            ..Notification::new(kind, Priority::High)
        }
    }

    /// `note` with app data `data` (a JSON object) and `badge`.
    fn with_data(mut n: Notification, data: Value, badge: Option<u32>) -> Notification {
        let Value::Object(data) = data else {
            panic!("app data must be an object: {data}")
        };
        n.data = data;
        n.badge = badge;
        n
    }

    fn json(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[test]
    fn low_priority_alerts_go_at_priority_5_and_calls_always_at_10() {
        assert_eq!(PushType::Alert.priority(Priority::High), "10");
        assert_eq!(PushType::Alert.priority(Priority::Low), "5");
        assert_eq!(PushType::Voip.priority(Priority::Low), "10");
        assert_eq!(PushType::Background.priority(Priority::High), "5");
    }

    #[test]
    fn bare_alert_uses_generic_text_and_omits_missing_keys() {
        let mut n = note(Kind::Alert, None);
        n.content = Content::default();
        let d = device(false);
        let p = plan(&d, &n, &settings()).unwrap();
        assert_eq!(
            json(&p.body),
            json!({"aps":{"alert":{"title":"New message","body":"New message"},"mutable-content":1,"sound":"default"}})
        );
    }

    #[test]
    fn oversized_body_is_cut_to_fit_both_copies() {
        let d = device(false);
        let s = MappingSettings {
            max_body_chars: 100_000,
            ..settings()
        };
        let p = plan(&d, &note(Kind::Alert, Some(&"é".repeat(5000))), &s).unwrap();
        assert!(p.body.len() <= MAX_PAYLOAD_BYTES);
        assert!(p.body.len() > MAX_PAYLOAD_BYTES - 8, "{}", p.body.len());
        let v = json(&p.body);
        assert!(v["body"].as_str().unwrap().ends_with("é…"));
        assert_eq!(v["body"], v["aps"]["alert"]["body"]);
    }

    #[test]
    fn voip_payload_is_minimal_and_may_be_larger() {
        let mut n = note(Kind::Voip, None);
        n.encrypted = Some(Encrypted {
            payload: "A".repeat(4500),
            iv: "IV".into(),
        });
        let d = device(true);
        let p = plan(&d, &n, &settings()).unwrap();
        assert_eq!(p.push_type, PushType::Voip);
        assert_eq!(p.token, d.second_token.as_ref().unwrap());
        let v = json(&p.body);
        assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
        n.encrypted = Some(Encrypted {
            payload: "A".repeat(5200),
            iv: "IV".into(),
        });
        assert!(plan(&d, &n, &settings()).unwrap_err().contains("5120"));
    }

    #[test]
    fn app_data_is_the_base_and_pushgate_adds_what_it_lacks() {
        let d = device(false);
        let n = with_data(
            note(Kind::Alert, Some("hi")),
            json!({"room_id": "!r:hs", "sender": "@alice:hs", "counts": {"unread": 2}}),
            Some(3),
        );
        let v = json(&plan(&d, &n, &settings()).unwrap().body);
        assert_eq!(
            v,
            json!({
                "room_id": "!r:hs",
                "sender": "@alice:hs",
                "counts": {"unread": 2},
                "account": "juliet@example.org",
                "body": "hi",
                "unread-messages": 2,
                "aps": {
                    "alert": {"title": "romeo@example.org/phone", "body": "hi"},
                    "mutable-content": 1,
                    "sound": "default",
                    "badge": 3,
                },
            })
        );
    }

    #[test]
    fn app_aps_object_is_merged_key_by_key() {
        let d = device(false);
        let alert = json!({"loc-key": "MSG_FROM_USER", "loc-args": ["Alice"]});
        let n = with_data(
            note(Kind::Alert, Some("hi")),
            json!({"aps": {"alert": alert, "badge": 7, "category": "MSG"}}),
            Some(3),
        );
        let v = json(&plan(&d, &n, &settings()).unwrap().body);
        assert_eq!(
            v["aps"],
            json!({"alert": alert, "badge": 7, "category": "MSG", "mutable-content": 1, "sound": "default"})
        );

        let n = with_data(
            note(Kind::Background, None),
            json!({"aps": {"sound": "ping.caf"}}),
            Some(0),
        );
        let p = plan(&d, &n, &settings()).unwrap();
        assert_eq!(p.push_type, PushType::Background);
        assert_eq!(
            json(&p.body)["aps"],
            json!({"sound": "ping.caf", "content-available": 1, "badge": 0})
        );
    }

    #[test]
    fn app_aps_that_is_not_an_object_is_replaced() {
        let d = device(false);
        let n = with_data(note(Kind::Background, None), json!({"aps": "nope"}), None);
        let v = json(&plan(&d, &n, &settings()).unwrap().body);
        assert_eq!(v["aps"], json!({"content-available": 1}));
    }

    #[test]
    fn voip_merges_app_data_and_puts_a_badge_in_aps() {
        let d = device(true);
        let n = with_data(
            note(Kind::Voip, None),
            json!({"call_id": "c1", "sender": "@alice:hs"}),
            Some(1),
        );
        let p = plan(&d, &n, &settings()).unwrap();
        assert_eq!(p.push_type, PushType::Voip);
        assert_eq!(
            json(&p.body),
            json!({"call_id": "c1", "sender": "@alice:hs", "account": "juliet@example.org", "aps": {"badge": 1}})
        );
        // Without a badge the VoIP payload has no `aps` of pushgate's.
        let n = with_data(note(Kind::Voip, None), json!({"call_id": "c1"}), None);
        assert!(
            json(&plan(&d, &n, &settings()).unwrap().body)
                .get("aps")
                .is_none()
        );
    }

    #[test]
    fn body_is_cut_around_large_app_data_which_itself_is_never_cut() {
        let d = device(false);
        let s = MappingSettings {
            max_body_chars: 100_000,
            ..settings()
        };
        let filler = "x".repeat(3000);
        let n = with_data(
            note(Kind::Alert, Some(&"é".repeat(2000))),
            json!({"filler": filler}),
            None,
        );
        let p = plan(&d, &n, &s).unwrap();
        assert!(p.body.len() <= MAX_PAYLOAD_BYTES, "{}", p.body.len());
        let v = json(&p.body);
        assert_eq!(v["filler"], filler.as_str());
        assert!(v["body"].as_str().unwrap().ends_with("é…"));

        let n = with_data(
            note(Kind::Alert, Some("hi")),
            json!({"filler": "x".repeat(MAX_PAYLOAD_BYTES)}),
            None,
        );
        assert!(plan(&d, &n, &s).unwrap_err().contains("4096"));
        let n = with_data(
            note(Kind::Background, None),
            json!({"filler": "x".repeat(MAX_PAYLOAD_BYTES)}),
            None,
        );
        assert!(plan(&d, &n, &s).unwrap_err().contains("4096"));
    }
}
