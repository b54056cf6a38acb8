//! The Matrix front's load (`--front matrix`): a homeserver's side of the push gateway API.
//! Synapse-shaped `POST /_matrix/push/v1/notify` requests, one device each, over
//! `http_load`'s pool of keep-alive HTTP/1.1 connections to pushgate's HTTP listener; answers
//! counted by status and `rejected`.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::body::Bytes;

use crate::http_load;
use crate::{BoxError, MARK, ProviderKind, ProviderSink, toml_str};

const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// The pushers' app id: one app, whose provider is the run's sink.
const APP_ID: &str = "im.pushgate.example.app";
/// What pushgate answers a notify it delivered (or queued) to every device.
const ACCEPTED: &[u8] = br#"{"rejected":[]}"#;
/// The reply kind of a delivered notify (`Report::replies`).
pub(crate) const OK: &str = "200";

/// The `[http]` and `[matrix.apps]` sections: the app's pushkeys are the sink's tokens, base64
/// for APNs as Matrix iOS apps send them.
pub(crate) fn config_toml(listen: SocketAddr, provider: ProviderKind, id: &str) -> String {
    let pushkey = match provider {
        ProviderKind::Apns => "base64",
        ProviderKind::Fcm | ProviderKind::Webpush => "as-is",
    };
    format!(
        "[http]\nlisten = \"{listen}\"\n\
         [matrix.apps.\"{APP_ID}\"]\nprovider = {}\npushkey = \"{pushkey}\"\n",
        toml_str(id)
    )
}

/// The pushkey of device `i`: what the homeserver holds for the sink's token `i`.
pub(crate) fn pushkey(provider: ProviderKind, token: &str) -> Result<String, BoxError> {
    match provider {
        ProviderKind::Apns => {
            let bytes = (0..token.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("x"), 16))
                .collect::<Result<Vec<u8>, _>>()?;
            Ok(STANDARD.encode(bytes))
        }
        ProviderKind::Fcm | ProviderKind::Webpush => Ok(token.to_owned()),
    }
}

/// The notify body Synapse's HTTP pusher sends for a message in a room, to one device. The
/// message body carries `bench-<seq>` for the sink; nothing before it in a provider's payload
/// may (ids and names here never contain the marker).
pub(crate) fn notify_body(seq: usize, run: u64, pushkey: &str) -> String {
    format!(
        r#"{{"notification":{{"event_id":"${run:016x}{seq:027}","room_id":"!OGEhHVWSdvArJzumhm:example.org","type":"m.room.message","sender":"@alice:example.org","sender_display_name":"Alice","room_name":"Lunch","user_is_target":false,"prio":"high","content":{{"msgtype":"m.text","body":"{MARK}{seq} are we still on for noon?"}},"counts":{{"unread":{},"missed_calls":0}},"devices":[{{"app_id":"{APP_ID}","pushkey":"{pushkey}","pushkey_ts":1764979200,"data":{{"default_payload":{{"client":"example"}}}},"tweaks":{{"sound":"default"}}}}]}}}}"#,
        1 + seq % 9
    )
}

/// The reply kind: `200`, `200 rejected` (pushkeys the homeserver would delete), another
/// status, or `error` (the connection failed).
fn kind_of(status: u16, body: &[u8]) -> String {
    if status != 200 {
        return status.to_string();
    }
    let rejected = if body == ACCEPTED {
        0
    } else {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("rejected")?.as_array().map(Vec::len))
            .unwrap_or(usize::MAX)
    };
    match rejected {
        0 => OK.to_owned(),
        usize::MAX => "200 unparsable".to_owned(),
        _ => "200 rejected".to_owned(),
    }
}

/// The load: one notify per request, for pushkey `seq % pushkeys.len()`.
pub(crate) fn front(pushkeys: &[String]) -> Result<http_load::Front, BoxError> {
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let pushkeys: Arc<[String]> = pushkeys.into();
    Ok(http_load::Front {
        discovery: (NOTIFY_PATH, b"gateway"),
        request: Box::new(move |seq| http_load::Outgoing {
            path: NOTIFY_PATH.to_owned(),
            headers: vec![
                ("user-agent", "Synapse/1.143.0".to_owned()),
                ("content-type", "application/json".to_owned()),
            ],
            body: Bytes::from(notify_body(seq, run, &pushkeys[seq % pushkeys.len()])),
        }),
        kind_of: |answer| kind_of(answer.status, &answer.body),
        ok: OK,
    })
}

/// The pushkeys of `devices` devices of the sink.
pub(crate) fn pushkeys(
    provider: ProviderKind,
    sink: &dyn ProviderSink,
    devices: usize,
) -> Result<Vec<String>, BoxError> {
    (0..devices)
        .map(|i| pushkey(provider, &sink.token(i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webpush_sink::sequence_in;

    #[test]
    fn apns_pushkeys_are_the_tokens_bytes_in_base64() {
        let token = format!("{:064x}", 0xfeed_u32);
        let key = pushkey(ProviderKind::Apns, &token).unwrap();
        let bytes = STANDARD.decode(&key).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[30..], &[0xfe, 0xed]);
        assert_eq!(pushkey(ProviderKind::Fcm, "abc:def").unwrap(), "abc:def");
        assert!(pushkey(ProviderKind::Apns, "zz").is_err());
    }

    /// A body pushgate's parser takes, whose only marker is the message's.
    #[test]
    fn notify_bodies_are_json_with_one_marker_and_unique_events() {
        let a = notify_body(42, 7, "a2V5");
        let b = notify_body(43, 7, "a2V5");
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        let n = &v["notification"];
        assert_eq!(n["devices"][0]["app_id"], APP_ID);
        assert_eq!(n["devices"].as_array().unwrap().len(), 1);
        assert_eq!(n["type"], "m.room.message");
        let w: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_ne!(n["event_id"], w["notification"]["event_id"]);
        assert_eq!(a.matches(MARK).count(), 1);
        assert_eq!(sequence_in(a.as_bytes()), Some(42));
    }

    #[test]
    fn answers_are_counted_by_status_and_rejections() {
        assert_eq!(kind_of(200, ACCEPTED), OK);
        assert_eq!(kind_of(200, br#"{ "rejected": [] }"#), OK);
        assert_eq!(kind_of(200, br#"{"rejected":["k"]}"#), "200 rejected");
        assert_eq!(kind_of(200, b"nope"), "200 unparsable");
        assert_eq!(kind_of(502, b"{}"), "502");
    }

    #[test]
    fn the_config_names_the_sinks_provider_and_pushkey_form() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let apns = config_toml(addr, ProviderKind::Apns, "apns");
        assert!(apns.contains("listen = \"127.0.0.1:9\""));
        assert!(apns.contains(&format!("[matrix.apps.\"{APP_ID}\"]\nprovider = \"apns\"")));
        assert!(apns.contains("pushkey = \"base64\""));
        assert!(config_toml(addr, ProviderKind::Fcm, "fcm").contains("pushkey = \"as-is\""));
    }
}
