//! Which configured app a pusher's `app_id` is, and how its pushkey becomes a provider token.
//!
//! App ids are matched as Sygnal does: an exact entry wins; otherwise the one glob entry (`*`
//! matching any run of characters) that matches; none or several → the pushkey is rejected, so
//! the homeserver deletes a pusher no app here can serve instead of retrying it forever.

use base64::Engine;
use pushgate_providers::{DeviceToken, ProviderId};

use crate::config::{MatrixConfig, PushkeyEncoding};
use crate::ids::hex;

/// One configured app.
#[derive(Debug, Clone)]
pub struct App {
    pub provider: ProviderId,
    pushkey: PushkeyEncoding,
    pub send_badge_counts: bool,
    /// Pushkeys are PushKit tokens: calls only.
    pub voip: bool,
    /// The base of every push's app data.
    pub default_payload: serde_json::Map<String, serde_json::Value>,
    /// Tweaks that make an event a call.
    pub call_tweaks: serde_json::Map<String, serde_json::Value>,
}

impl App {
    /// The provider token a pushkey stands for; `None` when it cannot be one (not base64 where
    /// base64 is configured, or empty).
    pub fn token(&self, pushkey: &str) -> Option<DeviceToken> {
        if pushkey.is_empty() {
            return None;
        }
        match self.pushkey {
            PushkeyEncoding::AsIs => Some(DeviceToken::new(pushkey)),
            PushkeyEncoding::Base64 => {
                let engines = [
                    &base64::engine::general_purpose::STANDARD,
                    &base64::engine::general_purpose::STANDARD_NO_PAD,
                ];
                engines
                    .iter()
                    .find_map(|e| e.decode(pushkey).ok())
                    .filter(|bytes| !bytes.is_empty())
                    .map(|bytes| DeviceToken::new(hex(&bytes)))
            }
        }
    }
}

/// Every configured app, exact ids apart from globs.
#[derive(Debug, Default, Clone)]
pub struct Apps {
    exact: std::collections::HashMap<String, App>,
    globs: Vec<(String, App)>,
}

impl Apps {
    pub fn from_config(config: &MatrixConfig) -> Self {
        let mut apps = Apps::default();
        for (id, c) in &config.apps {
            let app = App {
                provider: ProviderId::new(c.provider.clone()),
                pushkey: c.pushkey,
                send_badge_counts: c.send_badge_counts,
                voip: c.voip,
                default_payload: c.default_payload.clone(),
                call_tweaks: c.call_tweaks.clone(),
            };
            if id.contains('*') {
                apps.globs.push((id.clone(), app));
            } else {
                apps.exact.insert(id.clone(), app);
            }
        }
        apps
    }

    /// The app `app_id` names, if exactly one does.
    pub fn find(&self, app_id: &str) -> Option<&App> {
        if let Some(app) = self.exact.get(app_id) {
            return Some(app);
        }
        let mut matching = self
            .globs
            .iter()
            .filter(|(glob, _)| glob_match(glob, app_id));
        match (matching.next(), matching.next()) {
            (Some((_, app)), None) => Some(app),
            _ => None,
        }
    }
}

/// Whether `text` matches `glob`, where `*` stands for any run of characters (none included).
fn glob_match(glob: &str, text: &str) -> bool {
    let mut parts = glob.split('*');
    let Some(first) = parts.next() else {
        return text.is_empty();
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    let Some((last, middle)) = pieces.split_last() else {
        // No `*` at all: an exact comparison.
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MatrixAppConfig;

    fn apps(ids: &[&str]) -> Apps {
        let mut config = MatrixConfig::default();
        for (i, id) in ids.iter().enumerate() {
            config.apps.insert(
                (*id).to_owned(),
                MatrixAppConfig {
                    provider: format!("p{i}"),
                    pushkey: PushkeyEncoding::AsIs,
                    send_badge_counts: true,
                    voip: false,
                    default_payload: Default::default(),
                    call_tweaks: Default::default(),
                },
            );
        }
        Apps::from_config(&config)
    }

    #[test]
    fn globs_match_runs_of_characters() {
        assert!(glob_match("im.vector.*", "im.vector.app.ios"));
        assert!(glob_match("*.ios", "im.vector.app.ios"));
        assert!(glob_match("im.*.ios", "im.vector.app.ios"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(!glob_match("im.*.ios", "im.vector.app.android"));
        assert!(!glob_match("ab*ba", "aba"), "the ends may not overlap");
    }

    #[test]
    fn an_exact_app_wins_and_two_globs_match_nothing() {
        let a = apps(&["im.vector.app.ios", "im.vector.*", "*.ios", "org.example.*"]);
        assert_eq!(a.find("im.vector.app.ios").unwrap().provider.as_str(), "p0");
        assert!(a.find("im.vector.x.ios").is_none(), "two globs match");
        assert_eq!(a.find("org.example.app").unwrap().provider.as_str(), "p3");
        assert!(a.find("com.unknown").is_none());
    }

    #[test]
    fn base64_pushkeys_become_hex_tokens() {
        let app = App {
            provider: ProviderId::new("apns"),
            pushkey: PushkeyEncoding::Base64,
            send_badge_counts: true,
            voip: false,
            default_payload: Default::default(),
            call_tweaks: Default::default(),
        };
        assert_eq!(app.token("3q2+7w==").unwrap().as_str(), "deadbeef");
        assert_eq!(app.token("3q2+7w").unwrap().as_str(), "deadbeef");
        assert!(app.token("not base64!").is_none());
        assert!(app.token("").is_none());
        let raw = App {
            pushkey: PushkeyEncoding::AsIs,
            ..app
        };
        assert_eq!(raw.token("abc").unwrap().as_str(), "abc");
    }
}
