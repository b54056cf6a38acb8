//! The configured (app id, platform) pairs, and what each app type makes of an event: which
//! token, which kind of push, which data (Sylk Pushserver's rules, ../shared/reference/
//! other-fronts.md §2.3–2.4).
//!
//! | Event | Apple | Firebase |
//! |---|---|---|
//! | `incoming_session`, `incoming_conference_request` | PushKit (`voip`, `<bundle>.voip`, priority 10) to the VoIP token | data, `android.priority` high |
//! | `cancel` | background (`content-available`) to the other token | data, high |
//! | `message`, `transfer` | alert with `mutable-content` | data, high |
//!
//! Calls and cancels live for the app's `call_ttl_secs` (APNs expiration, FCM TTL and the retry
//! window alike): a call rings for about that long, and a push after it is noise. Linphone apps
//! take calls only. A generic app sends a call as PushKit only to a device that gave a VoIP token
//! (`<voip>-<other>`), else as an alert.

use std::collections::HashMap;
use std::sync::Arc;

use pushgate_providers::{Content, Device, DeviceToken, Kind, Notification, Priority, ProviderId};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::remote_log::Urls;
use super::request::{Call, Event, Invalid, Platform};
use crate::config::{SipAppConfig, SipAppType, SipConfig};

/// One configured (app id, platform).
#[derive(Debug)]
pub struct App {
    pub id: String,
    pub platform: Platform,
    pub app_type: SipAppType,
    pub provider: ProviderId,
    pub wait_for_delivery: bool,
    pub call_ttl_secs: u32,
    /// Permits for the app's pushes in flight.
    pub in_flight: Arc<Semaphore>,
    pub max_concurrent: u32,
    pub log_urls: Urls,
}

/// A device's tokens: Apple devices of Sylk's apps give two, `<voip>-<other>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// The token for everything but calls, or the only one.
    pub token: String,
    pub voip: Option<String>,
}

impl App {
    fn new(id: &str, platform: Platform, c: &SipAppConfig) -> Self {
        App {
            id: id.to_owned(),
            platform,
            app_type: c.app_type,
            provider: ProviderId::new(c.provider.clone()),
            wait_for_delivery: c.wait_for_delivery,
            call_ttl_secs: c.call_ttl_secs,
            in_flight: Arc::new(Semaphore::new(c.max_concurrent as usize)),
            max_concurrent: c.max_concurrent,
            log_urls: c.log_remote_urls.clone().into(),
        }
    }

    /// The event of `call` for this app: Linphone apps take calls only and default to one.
    pub fn event(&self, call: &Call) -> Result<Event, Invalid> {
        match (self.app_type, call.event) {
            (SipAppType::Linphone, None | Some(Event::IncomingSession)) => {
                Ok(Event::IncomingSession)
            }
            (SipAppType::Linphone, Some(_)) => Err(Invalid(
                "'event' must be 'incoming_session' for a Linphone app".into(),
            )),
            (_, Some(event)) => Ok(event),
            (_, None) => Err(Invalid("'event' is required".into())),
        }
    }

    /// The tokens in `raw`: an Apple `<voip>-<other>` pair is split (APNs tokens are hex, so
    /// a dash only ever joins two); anything else is one token.
    pub fn tokens(&self, raw: &str) -> Result<Tokens, Invalid> {
        if self.platform == Platform::Apple
            && let Some((voip, other)) = raw.split_once('-')
        {
            if voip.is_empty() || other.is_empty() || other.contains('-') {
                return Err(Invalid(
                    "'token' must be one APNs token or '<voip>-<background>'".into(),
                ));
            }
            return Ok(Tokens {
                token: other.to_owned(),
                voip: Some(voip.to_owned()),
            });
        }
        Ok(Tokens {
            token: raw.to_owned(),
            voip: None,
        })
    }

    /// Where `event` goes on the device, and whether a dead verdict there means the device is
    /// gone: not when a cancel or message went to the one token a device gave, which is a
    /// PushKit token APNs refuses on the app's other topic but still takes calls.
    pub fn device(&self, tokens: &Tokens, event: Event) -> (Device, bool) {
        let call = event.is_call() && self.platform == Platform::Apple;
        let voip = match (call, self.app_type) {
            (false, _) => None,
            // Sylk and Linphone devices give their PushKit token alone.
            (true, SipAppType::Sylk | SipAppType::Linphone) => {
                Some(tokens.voip.clone().unwrap_or_else(|| tokens.token.clone()))
            }
            (true, SipAppType::Generic) => tokens.voip.clone(),
        };
        let owns_its_token = event.is_call()
            || self.platform == Platform::Firebase
            || tokens.voip.is_some()
            || self.app_type == SipAppType::Generic;
        let device = Device {
            provider: self.provider.clone(),
            token: DeviceToken::new(tokens.token.clone()),
            second_token: voip.map(DeviceToken::new),
            webpush_keys: None,
        };
        (device, owns_its_token)
    }

    /// The notification for `event`: the call's fields as app data under Sylk's names.
    pub fn notification(&self, event: Event, call: &Call) -> Notification {
        let mut data = Map::new();
        let mut put = |key: &str, value: Option<&str>| {
            if let Some(v) = value {
                data.insert(key.to_owned(), Value::String(v.to_owned()));
            }
        };
        put("event", Some(event.label()));
        put("call-id", Some(&call.call_id));
        put("session-id", Some(&session_id(&call.call_id)));
        put("media-type", call.media_type.as_deref());
        put("from_uri", Some(&call.from));
        put("from_display_name", call.from_display_name.as_deref());
        put("to_uri", call.to.as_deref());
        let (kind, ttl) = match event {
            Event::IncomingSession | Event::IncomingConferenceRequest => {
                (Kind::Voip, Some(self.call_ttl_secs))
            }
            Event::Cancel => {
                put("reason", call.reason.as_deref());
                (Kind::Background, Some(self.call_ttl_secs))
            }
            Event::Message | Event::Transfer => {
                put("account", call.account.as_deref());
                put("content", call.content.as_deref());
                put("content-type", call.content_type.as_deref());
                put("filename", call.filename.as_deref());
                put("filetype", call.filetype.as_deref());
                (Kind::Alert, None)
            }
        };
        let mut n = Notification::new(kind, Priority::High);
        if kind == Kind::Alert {
            n.content = Content {
                sender: Some(
                    call.from_display_name
                        .clone()
                        .unwrap_or_else(|| call.from.clone()),
                ),
                body: match event {
                    Event::Transfer => call.filename.clone(),
                    _ => call.content.clone(),
                },
                ..Content::default()
            };
            n.badge = call.badge;
        }
        n.data = data;
        n.ttl_secs = ttl;
        n
    }
}

/// A UUID-shaped id, the same for every push of one SIP call (Sylk's `session-id`), so the app
/// matches a cancel to its call without the provider seeing the Call-ID's structure twice.
pub fn session_id(call_id: &str) -> String {
    let d = Sha256::digest(call_id.as_bytes());
    let h = crate::ids::hex(&d[..16]);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The bundle id in an Apple `pn-param`: without the ten-character team id in front and the
/// `.voip` behind.
fn from_pn_param(param: &str) -> Option<&str> {
    let (team, rest) = param.split_once('.')?;
    let is_team = team.len() == 10
        && team
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !is_team {
        return None;
    }
    Some(rest.strip_suffix(".voip").unwrap_or(rest))
}

/// Every configured app by (app id, platform).
#[derive(Debug, Default)]
pub struct Apps(HashMap<(String, Platform), Arc<App>>);

impl Apps {
    pub fn from_config(config: &SipConfig) -> Self {
        let mut apps = HashMap::new();
        for (id, platforms) in &config.apps {
            for (platform, c) in [
                (Platform::Apple, &platforms.apple),
                (Platform::Firebase, &platforms.firebase),
            ] {
                if let Some(c) = c {
                    apps.insert((id.clone(), platform), Arc::new(App::new(id, platform, c)));
                }
            }
        }
        Apps(apps)
    }

    /// The app `id` names on `platform`. An Apple app id may also be given as RFC 8599's
    /// `pn-param` (`<TeamID>.<bundle id>[.voip]`, what Linphone and Sylk clients register), so
    /// that a SIP proxy can pass the contact's parameter as it is.
    pub fn get(&self, id: &str, platform: Platform) -> Option<&Arc<App>> {
        if let Some(app) = self.0.get(&(id.to_owned(), platform)) {
            return Some(app);
        }
        let bundle = match platform {
            Platform::Apple => from_pn_param(id)?,
            Platform::Firebase => return None,
        };
        self.0.get(&(bundle.to_owned(), platform))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.0.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(app_type: SipAppType, platform: Platform) -> App {
        App::new(
            "com.example.app",
            platform,
            &SipAppConfig {
                app_type,
                provider: "p".into(),
                wait_for_delivery: true,
                max_concurrent: 10,
                call_ttl_secs: 30,
                log_remote_urls: Vec::new(),
            },
        )
    }

    fn call(event: Option<Event>) -> Call {
        Call {
            event,
            call_id: "abc@host".into(),
            from: "sip:alice@example.org".into(),
            from_display_name: Some("Alice".into()),
            to: Some("sip:bob@example.org".into()),
            media_type: Some("audio".into()),
            silent: true,
            reason: None,
            badge: Some(2),
            account: None,
            content: Some("hi".into()),
            content_type: None,
            filename: None,
            filetype: None,
        }
    }

    #[test]
    fn apple_token_pairs_split_and_firebase_tokens_do_not() {
        let apple = app(SipAppType::Sylk, Platform::Apple);
        let t = apple.tokens("aa11-bb22").unwrap();
        assert_eq!(
            (t.voip.as_deref(), t.token.as_str()),
            (Some("aa11"), "bb22")
        );
        assert!(apple.tokens("aa-").is_err());
        assert!(apple.tokens("a-b-c").is_err());
        let fcm = app(SipAppType::Sylk, Platform::Firebase);
        let t = fcm.tokens("abc:APA91-x_y").unwrap();
        assert_eq!((t.voip, t.token.as_str()), (None, "abc:APA91-x_y"));
    }

    #[test]
    fn sylk_calls_go_to_the_voip_token_and_cancels_to_the_other() {
        let a = app(SipAppType::Sylk, Platform::Apple);
        let pair = a.tokens("aa11-bb22").unwrap();
        let (d, owns) = a.device(&pair, Event::IncomingSession);
        assert_eq!(d.second_token.unwrap().as_str(), "aa11");
        assert!(owns);
        let (d, owns) = a.device(&pair, Event::Cancel);
        assert_eq!((d.token.as_str(), d.second_token.is_none()), ("bb22", true));
        assert!(owns);
        // One token: calls use it as the VoIP token; a cancel refused on it deletes nothing.
        let single = a.tokens("aa11").unwrap();
        let (d, _) = a.device(&single, Event::IncomingSession);
        assert_eq!(d.second_token.unwrap().as_str(), "aa11");
        assert!(!a.device(&single, Event::Cancel).1);
        // A generic app's single token is an ordinary one: the call goes as an alert.
        let g = app(SipAppType::Generic, Platform::Apple);
        assert!(
            g.device(&single, Event::IncomingSession)
                .0
                .second_token
                .is_none()
        );
    }

    #[test]
    fn events_map_to_kinds_with_the_call_fields() {
        let a = app(SipAppType::Sylk, Platform::Apple);
        let c = call(Some(Event::IncomingSession));
        let n = a.notification(Event::IncomingSession, &c);
        assert_eq!((n.kind, n.ttl_secs, n.badge), (Kind::Voip, Some(30), None));
        assert_eq!(n.data["call-id"], "abc@host");
        assert_eq!(n.data["from_uri"], "sip:alice@example.org");
        assert_eq!(n.data["session-id"], session_id("abc@host"));
        let n = a.notification(Event::Cancel, &c);
        assert_eq!((n.kind, n.ttl_secs), (Kind::Background, Some(30)));
        let n = a.notification(Event::Message, &c);
        assert_eq!((n.kind, n.ttl_secs, n.badge), (Kind::Alert, None, Some(2)));
        assert_eq!(n.content.sender.as_deref(), Some("Alice"));
        assert_eq!(n.content.body.as_deref(), Some("hi"));
    }

    #[test]
    fn linphone_apps_take_calls_only() {
        let l = app(SipAppType::Linphone, Platform::Apple);
        assert_eq!(l.event(&call(None)).unwrap(), Event::IncomingSession);
        assert!(l.event(&call(Some(Event::Cancel))).is_err());
        let s = app(SipAppType::Sylk, Platform::Apple);
        assert!(s.event(&call(None)).is_err());
    }

    #[test]
    fn apple_apps_are_found_by_their_pn_param_too() {
        let mut config = SipConfig::default();
        config.apps.insert(
            "com.example.app".into(),
            crate::config::SipAppPlatforms {
                apple: Some(SipAppConfig {
                    app_type: SipAppType::Linphone,
                    provider: "p".into(),
                    wait_for_delivery: true,
                    max_concurrent: 1,
                    call_ttl_secs: 30,
                    log_remote_urls: Vec::new(),
                }),
                firebase: None,
            },
        );
        let apps = Apps::from_config(&config);
        for id in [
            "com.example.app",
            "ABCDE12345.com.example.app.voip",
            "ABCDE12345.com.example.app",
        ] {
            assert!(apps.get(id, Platform::Apple).is_some(), "{id}");
        }
        for id in [
            "abcde12345.com.example.app",
            "ABC.com.example.app",
            "com.example.app.voip",
        ] {
            assert!(apps.get(id, Platform::Apple).is_none(), "{id}");
        }
        assert!(apps.get("com.example.app", Platform::Firebase).is_none());
    }

    #[test]
    fn session_ids_are_stable_and_uuid_shaped() {
        let a = session_id("x@y");
        assert_eq!(a, session_id("x@y"));
        assert_ne!(a, session_id("x@z"));
        assert_eq!(a.len(), 36);
        assert_eq!(a.matches('-').count(), 4);
    }
}
