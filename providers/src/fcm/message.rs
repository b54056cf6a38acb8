//! Maps a [`Notification`] onto one FCM HTTP v1 message: a data-only message with the keys
//! Tigase's Android client reads (`account`, `unread-messages`, `sender`, `body`, `nickname`, or
//! `encrypted` and `iv`, all strings), its Android priority and TTL.
//!
//! Why data-only: XMPP clients fetch the messages themselves and build their own notification,
//! and data messages always reach the app's handler (a `notification` block would be shown by
//! the OS while the app is in the background). Why it is apart from the transport: the mapping
//! is what clients depend on, so it lives in one place and is unit-tested without a network.
//! Keys whose source is missing are omitted; with an encrypted payload no plaintext sender,
//! body or nickname goes out.
//!
//! The notification's app data is the base of the data map and pushgate's keys (and `badge`) are
//! added only where it lacks them. FCM data values are strings, so other JSON values go as their
//! JSON text; keys FCM reserves for itself are dropped, as FCM would refuse the whole message.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::{Kind, Notification, Priority};

/// FCM's limit on the data payload (keys + values, in bytes).
pub(crate) const MAX_DATA_BYTES: usize = 4096;
const ELLIPSIS: &str = "…";
/// The longest a call is kept for an offline device unless it says otherwise.
pub(crate) const VOIP_TTL_SECS: u64 = 60;

/// The mapping's knobs, from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct MappingSettings {
    pub max_body_chars: usize,
    pub ttl_secs: u64,
    /// The operator's members under every message (`message_options`).
    pub options: Map<String, Value>,
}

/// The members of a message pushgate sets itself, as paths.
const OURS: &[&[&str]] = &[
    &["token"],
    &["topic"],
    &["condition"],
    &["data"],
    &["android", "priority"],
    &["android", "ttl"],
    &["android", "collapse_key"],
];

/// `Err(dotted path)` of the first member of `options` that pushgate sets itself.
pub(crate) fn check_options(options: &Map<String, Value>) -> Result<(), String> {
    for path in OURS {
        let mut at = options;
        for (i, member) in path.iter().enumerate() {
            match at.get(*member) {
                Some(_) if i + 1 == path.len() => return Err(path.join(".")),
                Some(Value::Object(inner)) => at = inner,
                _ => break,
            }
        }
    }
    Ok(())
}

/// `ours` merged over `base`: objects member by member, anything else replaced.
fn merge(base: &mut Map<String, Value>, ours: Map<String, Value>) {
    for (key, value) in ours {
        match (base.get_mut(&key), value) {
            (Some(Value::Object(b)), Value::Object(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// One message, ready for the transport.
#[derive(Debug)]
pub(crate) struct Planned {
    /// `android.priority`: `high` or `normal`.
    pub priority: &'static str,
    /// The request body, `{"message":{…}}`.
    pub body: Vec<u8>,
}

/// Builds the message for `n` to the registration token `token`; `Err` (our fault) when the data
/// cannot fit in FCM's 4096 bytes even with pushgate's body cut (the app's data is never cut).
pub(crate) fn plan(
    token: &str,
    n: &Notification,
    settings: &MappingSettings,
) -> Result<Planned, String> {
    let mut data = app_data(n);
    let body_is_ours = !data.contains_key("body");
    for (key, value) in data_for(n) {
        data.entry(key).or_insert(value);
    }
    if let Some(body) = data.get("body").filter(|_| body_is_ours).cloned() {
        let cut = cut(&body, settings.max_body_chars);
        let without_body = data_bytes(&data) - body.len();
        let room = MAX_DATA_BYTES.saturating_sub(without_body);
        let fitted = fit_bytes(&cut, room);
        data.insert("body".to_owned(), fitted);
    }
    let size = data_bytes(&data);
    if size > MAX_DATA_BYTES {
        return Err(format!(
            "the FCM data payload is {size} bytes, over FCM's limit of {MAX_DATA_BYTES} (app data, account, sender, nickname or encrypted payload too large)"
        ));
    }
    let priority = priority(n);
    let data: Map<String, Value> = data
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let mut android = json!({
        "priority": priority,
        "ttl": format!("{}s", ttl_secs(n, settings)),
    });
    if let Some(key) = &n.collapse_key {
        android["collapse_key"] = Value::String(key.clone());
    }
    let mut message = settings.options.clone();
    let ours = json!({ "token": token, "data": data, "android": android });
    if let Value::Object(ours) = ours {
        merge(&mut message, ours);
    }
    let message = json!({ "message": message });
    Ok(Planned {
        priority,
        body: message.to_string().into_bytes(),
    })
}

/// How long FCM keeps the message for an offline device: the notification's own time to live,
/// else at most [`VOIP_TTL_SECS`] for a call (ringing later is worse than not ringing), else the
/// app's.
fn ttl_secs(n: &Notification, settings: &MappingSettings) -> u64 {
    match (n.ttl_secs, n.kind) {
        (Some(ttl), _) => u64::from(ttl),
        (None, Kind::Voip) => settings.ttl_secs.min(VOIP_TTL_SECS),
        (None, _) => settings.ttl_secs,
    }
}

/// High wakes the device from Doze at once; Android demotes apps whose high-priority messages
/// never lead to a visible notification, so only what the user should see now is high: calls,
/// alerts unless their sender marked them low priority, and what is marked high.
fn priority(n: &Notification) -> &'static str {
    match (n.kind, n.priority) {
        (Kind::Voip, _) | (_, Priority::High) => "high",
        (Kind::Alert, Priority::Normal) => "high",
        (Kind::Alert, Priority::Low) | (Kind::Background | Kind::Clear, _) => "normal",
    }
}

/// Whether FCM keeps `key` for itself: a data message carrying one is refused as a whole.
fn is_reserved(key: &str) -> bool {
    matches!(key, "from" | "message_type" | "collapse_key")
        || key.starts_with("google.")
        || key.starts_with("gcm.")
}

/// The app data as FCM data: strings as they are, other values as their JSON text, keys FCM
/// reserves dropped.
fn app_data(n: &Notification) -> BTreeMap<String, String> {
    n.data
        .iter()
        .filter(|(key, _)| !is_reserved(key))
        .map(|(key, value)| {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (key.clone(), text)
        })
        .collect()
}

/// pushgate's own string→string data, in a stable order (BTreeMap) for tests and logs.
fn data_for(n: &Notification) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    let c = &n.content;
    let mut put = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            data.insert(key.to_owned(), v);
        }
    };
    put("account", c.account.clone());
    put("channel", c.channel.clone());
    put("badge", n.badge.map(|b| b.to_string()));
    if n.kind == Kind::Clear {
        put("unread-messages", Some("0".to_owned()));
        return data;
    }
    put("unread-messages", c.message_count.map(|m| m.to_string()));
    match &n.encrypted {
        Some(enc) => {
            put("encrypted", Some(enc.payload.clone()));
            put("iv", Some(enc.iv.clone()));
        }
        None => {
            put("sender", c.sender.clone());
            put("body", c.body.clone());
            put("nickname", c.nickname.clone());
        }
    }
    data
}

fn data_bytes(data: &BTreeMap<String, String>) -> usize {
    data.iter().map(|(k, v)| k.len() + v.len()).sum()
}

/// `text` cut to `max` characters, ending in "…" when cut.
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max).collect();
    out.push_str(ELLIPSIS);
    out
}

/// `text` cut further, on a character boundary, to at most `max` bytes including the "…".
fn fit_bytes(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let budget = max.saturating_sub(ELLIPSIS.len());
    let mut end = 0;
    for (i, ch) in text.char_indices() {
        if i + ch.len_utf8() > budget {
            break;
        }
        end = i + ch.len_utf8();
    }
    let mut out = text[..end].trim_end_matches(ELLIPSIS).to_owned();
    out.push_str(ELLIPSIS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Content, Encrypted};

    fn settings() -> MappingSettings {
        MappingSettings {
            max_body_chars: 500,
            ttl_secs: 86_400,
            options: Map::new(),
        }
    }

    #[test]
    fn message_options_are_merged_under_the_message() {
        let options = json!({
            "android": {"restricted_package_name": "org.example", "notification": {"tag": "t"}},
            "fcm_options": {"analytics_label": "matrix"},
        });
        let s = MappingSettings {
            options: options.as_object().unwrap().clone(),
            ..settings()
        };
        let planned = plan("t", &note(Kind::Alert, Priority::High, Some("hi")), &s).unwrap();
        let m: Value = serde_json::from_slice(&planned.body).unwrap();
        let m = &m["message"];
        assert_eq!(m["token"], "t");
        assert_eq!(m["android"]["priority"], "high");
        assert_eq!(m["android"]["restricted_package_name"], "org.example");
        assert_eq!(m["android"]["notification"]["tag"], "t");
        assert_eq!(m["fcm_options"]["analytics_label"], "matrix");
        assert_eq!(m["data"]["body"], "hi");
    }

    #[test]
    fn message_options_may_not_set_what_pushgate_sets() {
        let check = |v: Value| check_options(v.as_object().unwrap());
        assert_eq!(check(json!({"token": "x"})), Err("token".to_owned()));
        assert_eq!(check(json!({"data": {}})), Err("data".to_owned()));
        assert_eq!(
            check(json!({"android": {"priority": "normal"}})),
            Err("android.priority".to_owned())
        );
        assert_eq!(check(json!({"android": {"direct_boot_ok": true}})), Ok(()));
        assert_eq!(
            check(json!({"android": "x", "apns": {"headers": {}}})),
            Ok(())
        );
    }

    fn note(kind: Kind, priority: Priority, body: Option<&str>) -> Notification {
        Notification {
            content: Content {
                account: Some("juliet@capulet.example".into()),
                sender: Some("romeo@montague.example".into()),
                body: body.map(str::to_owned),
                message_count: Some(2),
                nickname: None,
                channel: None,
            },
            ..Notification::new(kind, priority)
        }
    }

    /// An alert with app data `data` (a JSON object) and `badge`.
    fn with_data(body: Option<&str>, data: Value, badge: Option<u32>) -> Notification {
        let Value::Object(data) = data else {
            panic!("app data must be an object: {data}")
        };
        Notification {
            data,
            badge,
            ..note(Kind::Alert, Priority::High, body)
        }
    }

    fn data_size(d: &Value) -> usize {
        d.as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| k.len() + v.as_str().unwrap().len())
            .sum()
    }

    fn data(p: &Planned) -> Value {
        serde_json::from_slice::<Value>(&p.body).unwrap()["message"]["data"].clone()
    }

    #[test]
    fn priorities() {
        let s = settings();
        let p = |k, pr| plan("t", &note(k, pr, None), &s).unwrap().priority;
        assert_eq!(p(Kind::Alert, Priority::Normal), "high");
        // A Matrix homeserver's `prio: low`: shown when the device wakes anyway.
        assert_eq!(p(Kind::Alert, Priority::Low), "normal");
        assert_eq!(p(Kind::Voip, Priority::Normal), "high");
        assert_eq!(p(Kind::Background, Priority::High), "high");
        assert_eq!(p(Kind::Background, Priority::Normal), "normal");
        assert_eq!(p(Kind::Clear, Priority::Low), "normal");
    }

    #[test]
    fn body_is_cut_by_chars_then_to_fit_the_limit() {
        let s = MappingSettings {
            max_body_chars: 3,
            ..settings()
        };
        let planned = plan("t", &note(Kind::Alert, Priority::High, Some("héllo")), &s).unwrap();
        assert_eq!(data(&planned)["body"], "hél…");

        let huge = "é".repeat(5000);
        let s = MappingSettings {
            max_body_chars: 100_000,
            ..settings()
        };
        let planned = plan("t", &note(Kind::Alert, Priority::High, Some(&huge)), &s).unwrap();
        let d = data(&planned);
        let total = data_size(&d);
        assert!(
            total <= MAX_DATA_BYTES && total > MAX_DATA_BYTES - 8,
            "{total}"
        );
        assert!(d["body"].as_str().unwrap().ends_with('…'));
    }

    #[test]
    fn encrypted_replaces_plaintext_and_oversize_is_refused() {
        let mut n = note(Kind::Alert, Priority::High, Some("secret"));
        n.content.nickname = Some("Romeo".into());
        n.encrypted = Some(Encrypted {
            payload: "Y2lwaGVy".into(),
            iv: "aXY=".into(),
        });
        let d = data(&plan("t", &n, &settings()).unwrap());
        assert_eq!(
            d,
            json!({"account":"juliet@capulet.example","unread-messages":"2","encrypted":"Y2lwaGVy","iv":"aXY="})
        );
        n.encrypted = Some(Encrypted {
            payload: "A".repeat(MAX_DATA_BYTES),
            iv: "aXY=".into(),
        });
        let err = plan("t", &n, &settings()).unwrap_err();
        assert!(err.contains("4096"), "{err}");
    }

    #[test]
    fn app_data_is_the_base_with_values_as_strings() {
        let n = with_data(
            Some("hi"),
            json!({
                "room_id": "!r:hs",
                "sender": "@alice:hs",
                "unread_count": 2,
                "prio": null,
                "content": {"msgtype": "m.text"},
            }),
            Some(3),
        );
        let d = data(&plan("t", &n, &settings()).unwrap());
        assert_eq!(
            d,
            json!({
                "room_id": "!r:hs",
                "sender": "@alice:hs",
                "unread_count": "2",
                "prio": "null",
                "content": "{\"msgtype\":\"m.text\"}",
                "account": "juliet@capulet.example",
                "unread-messages": "2",
                "body": "hi",
                "badge": "3",
            })
        );
    }

    #[test]
    fn app_badge_wins_and_reserved_keys_are_dropped() {
        let n = with_data(
            None,
            json!({
                "badge": "9+",
                "from": "x",
                "message_type": "x",
                "collapse_key": "x",
                "google.c.a.e": "1",
                "gcm.notification.title": "x",
                "googled": "kept",
            }),
            Some(3),
        );
        let d = data(&plan("t", &n, &settings()).unwrap());
        let keys: Vec<&str> = d.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["account", "badge", "googled", "sender", "unread-messages"]
        );
        assert_eq!(d["badge"], "9+");
    }

    #[test]
    fn only_pushgates_body_is_cut_around_large_app_data() {
        let s = MappingSettings {
            max_body_chars: 100_000,
            ..settings()
        };
        let filler = "x".repeat(3000);
        let n = with_data(Some(&"é".repeat(2000)), json!({"filler": filler}), None);
        let d = data(&plan("t", &n, &s).unwrap());
        let total = data_size(&d);
        assert!(
            total <= MAX_DATA_BYTES && total > MAX_DATA_BYTES - 8,
            "{total}"
        );
        assert_eq!(d["filler"], filler.as_str());
        assert!(d["body"].as_str().unwrap().ends_with('…'));

        // The app's own body is the app's: too large is refused, not cut.
        let n = with_data(Some("hi"), json!({"body": "é".repeat(2100)}), None);
        let err = plan("t", &n, &s).unwrap_err();
        assert!(err.contains("4096"), "{err}");
        let n = with_data(None, json!({"filler": "x".repeat(MAX_DATA_BYTES)}), None);
        assert!(plan("t", &n, &s).unwrap_err().contains("4096"));
    }
}
