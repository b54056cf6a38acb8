//! The SIP API's request bodies, parsed and bounded: JSON objects with Sylk Pushserver's dashed
//! keys. Every refusal names its field, as Sylk's validation errors do, so the operator of the
//! SIP server sees which part of the script to fix. Keys this API does not know are ignored
//! (Sylk ignores them too, and SIP servers send their own extras).

use serde_json::{Map, Value};

/// The most a request body may be: every field together stays far below it.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// A refused request: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl Invalid {
    fn field(name: &str, problem: &str) -> Self {
        Invalid(format!("'{name}' {problem}"))
    }
}

/// Where the device's pushes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Apple,
    Firebase,
}

impl Platform {
    /// Sylk's names and aliases.
    fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "apple" | "ios" | "apns" => Some(Platform::Apple),
            "firebase" | "fcm" | "android" => Some(Platform::Firebase),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Platform::Apple => "apple",
            Platform::Firebase => "firebase",
        }
    }
}

/// What happened on the SIP side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    IncomingSession,
    IncomingConferenceRequest,
    Cancel,
    Message,
    Transfer,
}

impl Event {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "incoming_session" => Event::IncomingSession,
            "incoming_conference_request" => Event::IncomingConferenceRequest,
            "cancel" => Event::Cancel,
            "message" => Event::Message,
            "transfer" => Event::Transfer,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Event::IncomingSession => "incoming_session",
            Event::IncomingConferenceRequest => "incoming_conference_request",
            Event::Cancel => "cancel",
            Event::Message => "message",
            Event::Transfer => "transfer",
        }
    }

    /// A call rings on the phone: a PushKit push on Apple, a high-priority one everywhere.
    pub fn is_call(self) -> bool {
        matches!(
            self,
            Event::IncomingSession | Event::IncomingConferenceRequest
        )
    }
}

const MEDIA_TYPES: &[&str] = &["audio", "video", "chat", "sms", "file-transfer", "image"];

/// The event part of a push, the same in v1 and v2 requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `None` only before the app's type gave the default (Linphone apps).
    pub event: Option<Event>,
    pub call_id: String,
    pub from: String,
    pub from_display_name: Option<String>,
    pub to: Option<String>,
    pub media_type: Option<String>,
    pub silent: bool,
    pub reason: Option<String>,
    pub badge: Option<u32>,
    /// Messages and file transfers.
    pub account: Option<String>,
    pub content: Option<String>,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub filetype: Option<String>,
}

/// The device part of a v1 push, or of a v2 device to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressed {
    pub app_id: String,
    pub platform: Platform,
    pub token: String,
    pub device_id: Option<String>,
}

/// v1 `POST /push`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub device: Addressed,
    pub call: Call,
}

/// v2 `POST /v2/tokens/{account}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    pub device: Addressed,
    pub device_id: String,
    pub silent: bool,
    pub user_agent: Option<String>,
}

/// v2 `DELETE /v2/tokens/{account}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remove {
    pub app_id: String,
    pub device_id: String,
}

/// The JSON object of a body, read field by field.
struct Fields(Map<String, Value>);

impl Fields {
    fn parse(body: &[u8]) -> Result<Self, Invalid> {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => Ok(Fields(map)),
            Ok(_) => Err(Invalid("the body must be a JSON object".into())),
            Err(_) => Err(Invalid("the body is not JSON".into())),
        }
    }

    /// A string field of at most `max` bytes; empty counts as absent, as it does for Sylk.
    fn text(&self, name: &str, max: usize) -> Result<Option<String>, Invalid> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) if s.len() > max => Err(Invalid::field(
                name,
                &format!("must be at most {max} bytes"),
            )),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(Invalid::field(name, "must be a string")),
        }
    }

    fn required(&self, name: &str, max: usize) -> Result<String, Invalid> {
        self.text(name, max)?
            .ok_or_else(|| Invalid::field(name, "is required"))
    }

    /// A boolean, also as the strings and numbers SIP scripts send (`"true"`, `"0"`, 1).
    fn flag(&self, name: &str, default: bool) -> Result<bool, Invalid> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(true),
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(false),
            Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(Invalid::field(name, "must be true or false")),
            },
            Some(_) => Err(Invalid::field(name, "must be true or false")),
        }
    }

    /// A count from 0 to 1,000,000, also as a string of digits.
    fn count(&self, name: &str) -> Result<Option<u32>, Invalid> {
        let bad = || Invalid::field(name, "must be a number from 0 to 1000000");
        let n = match self.0.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.as_u64().ok_or_else(bad)?,
            Some(Value::String(s)) => s.parse::<u64>().map_err(|_| bad())?,
            Some(_) => return Err(bad()),
        };
        u32::try_from(n)
            .ok()
            .filter(|n| *n <= 1_000_000)
            .map(Some)
            .ok_or_else(bad)
    }

    fn platform(&self) -> Result<Platform, Invalid> {
        let raw = self.required("platform", 32)?;
        Platform::parse(&raw)
            .ok_or_else(|| Invalid::field("platform", "must be 'apple' or 'firebase'"))
    }

    fn addressed(&self) -> Result<Addressed, Invalid> {
        Ok(Addressed {
            app_id: self.required("app-id", 256)?,
            platform: self.platform()?,
            token: self.required("token", MAX_TOKEN_BYTES)?,
            device_id: self.text("device-id", 256)?,
        })
    }

    fn call(&self) -> Result<Call, Invalid> {
        let call_id = self.required("call-id", 512)?;
        let from = self.required("from", 512)?;
        let event = match self.text("event", 64)? {
            None => None,
            Some(e) => Some(Event::parse(&e).ok_or_else(|| {
                Invalid::field(
                    "event",
                    "must be 'incoming_session', 'incoming_conference_request', 'cancel', 'message' or 'transfer'",
                )
            })?),
        };
        let media_type = self.text("media-type", 32)?;
        // One type or several, as Sylk's OpenSIPS script sends them ("audio, video").
        if let Some(media) = &media_type
            && !media.split(',').all(|m| MEDIA_TYPES.contains(&m.trim()))
        {
            return Err(Invalid::field(
                "media-type",
                "must be 'audio', 'video', 'chat', 'sms', 'file-transfer' or 'image'",
            ));
        }
        if media_type.is_none() && event.is_some_and(|e| e != Event::Cancel) {
            return Err(Invalid::field("media-type", "is required"));
        }
        Ok(Call {
            event,
            call_id,
            from,
            from_display_name: self.text("from-display-name", 256)?,
            to: self.text("to", 512)?,
            media_type,
            silent: self.flag("silent", true)?,
            reason: self.text("reason", 256)?,
            badge: self.count("badge")?,
            account: self.text("account", 512)?,
            content: self.text("content", 2048)?,
            content_type: self.text("content-type", 128)?,
            filename: self.text("filename", 256)?,
            filetype: self.text("filetype", 128)?,
        })
    }
}

/// Tokens are at most a few hundred bytes (an FCM token, or two APNs tokens joined).
const MAX_TOKEN_BYTES: usize = 1024;

pub fn push(body: &[u8]) -> Result<Push, Invalid> {
    let fields = Fields::parse(body)?;
    Ok(Push {
        device: fields.addressed()?,
        call: fields.call()?,
    })
}

/// A v2 push: the event only, the devices are stored.
pub fn call(body: &[u8]) -> Result<Call, Invalid> {
    Fields::parse(body)?.call()
}

pub fn store(body: &[u8]) -> Result<Store, Invalid> {
    let fields = Fields::parse(body)?;
    let device = fields.addressed()?;
    let device_id = device_id(&fields.required("device-id", 256)?)
        .ok_or_else(|| Invalid::field("device-id", "is required"))?;
    Ok(Store {
        device,
        device_id,
        silent: fields.flag("silent", true)?,
        user_agent: fields.text("user-agent", 256)?,
    })
}

pub fn remove(body: &[u8]) -> Result<Remove, Invalid> {
    let fields = Fields::parse(body)?;
    Ok(Remove {
        app_id: fields.required("app-id", 256)?,
        device_id: device_id(&fields.required("device-id", 256)?)
            .ok_or_else(|| Invalid::field("device-id", "is required"))?,
    })
}

/// The device id without the `<urn:uuid:…>` wrapper of a SIP `+sip.instance` (Sylk strips it
/// so that both forms name one device); `None` if nothing is left.
pub fn device_id(raw: &str) -> Option<String> {
    let inner = raw
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(raw);
    let inner = inner
        .strip_prefix("urn:uuid:")
        .or_else(|| inner.strip_prefix("urn:"))
        .unwrap_or(inner);
    (!inner.is_empty()).then(|| inner.to_owned())
}

/// A SIP account as the v2 routes name it: non-empty, at most 256 bytes, no control characters
/// (it is a key, and it goes into logs).
pub fn account(raw: &str) -> Result<&str, Invalid> {
    if raw.is_empty() || raw.len() > 256 || raw.chars().any(char::is_control) {
        return Err(Invalid(
            "the account must be 1 to 256 bytes without control characters".into(),
        ));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: serde_json::Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    fn call_body() -> serde_json::Value {
        serde_json::json!({
            "app-id": "com.example.sylk", "platform": "ios", "token": "ab12",
            "device-id": "dev1", "call-id": "c1@host", "from": "sip:alice@example.org",
            "to": "sip:bob@example.org", "media-type": "audio", "event": "incoming_session",
            "silent": "true", "badge": "3", "x-unknown": 1
        })
    }

    #[test]
    fn a_sylk_push_parses_with_aliases_and_string_flags() {
        let p = push(&body(call_body())).unwrap();
        assert_eq!(p.device.platform, Platform::Apple);
        assert_eq!(p.call.event, Some(Event::IncomingSession));
        assert_eq!(p.call.call_id, "c1@host");
        assert!(p.call.silent);
        assert_eq!(p.call.badge, Some(3));
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            ("call-id", serde_json::Value::Null, "'call-id' is required"),
            ("call-id", 5.into(), "'call-id' must be a string"),
            ("platform", "blackberry".into(), "'platform' must be"),
            ("event", "ring".into(), "'event' must be"),
            ("media-type", "fax".into(), "'media-type' must be"),
            (
                "media-type",
                serde_json::Value::Null,
                "'media-type' is required",
            ),
            ("silent", "maybe".into(), "'silent' must be true or false"),
            ("badge", (-1).into(), "'badge' must be a number"),
            ("badge", 2_000_000.into(), "'badge' must be a number"),
            ("token", "x".repeat(2000).into(), "'token' must be at most"),
            ("app-id", "".into(), "'app-id' is required"),
        ];
        for (field, value, expected) in cases {
            let mut b = call_body();
            b[field] = value;
            let err = push(&body(b)).unwrap_err();
            assert!(err.0.starts_with(expected), "{field}: {}", err.0);
        }
        assert_eq!(
            push(b"[1]").unwrap_err().0,
            "the body must be a JSON object"
        );
        assert_eq!(push(b"{").unwrap_err().0, "the body is not JSON");
    }

    #[test]
    fn media_types_may_be_listed() {
        let mut b = call_body();
        b["media-type"] = "audio, video".into();
        assert_eq!(
            push(&body(b.clone())).unwrap().call.media_type.as_deref(),
            Some("audio, video")
        );
        b["media-type"] = "audio, fax".into();
        assert!(push(&body(b)).is_err());
    }

    #[test]
    fn a_cancel_needs_no_media_type() {
        let mut b = call_body();
        b["event"] = "cancel".into();
        b.as_object_mut().unwrap().remove("media-type");
        assert_eq!(push(&body(b)).unwrap().call.event, Some(Event::Cancel));
    }

    #[test]
    fn device_ids_lose_their_urn_wrapper_only() {
        assert_eq!(device_id("<urn:uuid:0a1b-2c>").as_deref(), Some("0a1b-2c"));
        assert_eq!(device_id("urn:uuid:xy").as_deref(), Some("xy"));
        // Sylk strips any of `<urn:id>` at both ends; "dinner" stays "dinner" here.
        assert_eq!(device_id("dinner").as_deref(), Some("dinner"));
        assert_eq!(device_id("<>"), None);
    }

    #[test]
    fn accounts_are_bounded() {
        assert!(account("alice@example.org").is_ok());
        assert!(account("").is_err());
        assert!(account("a\nb").is_err());
        assert!(account(&"a".repeat(300)).is_err());
    }
}
