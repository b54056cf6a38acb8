//! The SIP front's load (`--front sip`): a SIP server's side of the Sylk-Pushserver-style API
//! (`src/fronts/sip`). Every request is an incoming call (`event: incoming_session`) for a
//! Sylk-type Apple app whose provider is the bench's APNs sink, so each one must arrive there as
//! a PushKit push (`apns-push-type: voip`, topic `<bundle>.voip`) to the callee's VoIP token.
//!
//! - `--sip-route v1`: `POST /push` with the device's `<voip>-<background>` token pair in the
//!   request, as SylkServer sends it; `--devices` pairs in rotation.
//! - `--sip-route v2`: first one device per account stored through `POST /v2/tokens/{account}`
//!   (`--devices` accounts), then `POST /v2/tokens/{account}/push` with the event alone, so
//!   pushgate reads the account's devices from its store on every request.
//!
//! The SIP Call-ID is `bench-<seq>`: pushgate puts it in the APNs payload as `call-id`, which is
//! how the sink matches a push to its request. An answer counts as `200` only when the status,
//! the body's `code` and the device's `data.code` are all 200.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use hyper::Method;
use hyper::body::Bytes;
use serde_json::Value;

use crate::apns_sink::{self, TOPIC};
use crate::http_load::{self, Answer, Outgoing};
use crate::{BoxError, DOMAIN, MARK, SipRoute};

/// The Apple app's id is its bundle id, the APNs sink's topic.
const BUNDLE: &str = TOPIC;
/// The kind of an answer whose every code is 200 (`Report::replies`).
pub(crate) const OK: &str = "200";
/// The caller; nothing here contains the sequence marker.
const FROM: &str = "sip:alice@example.org";
/// A GET pushgate's listener answers 200 with this in the body: the pool's warm-up.
const DISCOVERY: (&str, &[u8]) = ("/healthz", b"ok");

/// The `[http]` and `[sip]` sections: one Sylk-type Apple app on the sink's APNs provider;
/// `allowed_networks` stays at its default, loopback.
pub(crate) fn config_toml(listen: SocketAddr, provider: &str) -> String {
    format!(
        "[http]\nlisten = \"{listen}\"\n[sip]\n\
         [sip.apps.\"{BUNDLE}\".apple]\ntype = \"sylk\"\nprovider = {}\n",
        crate::toml_str(provider)
    )
}

/// Device `i`'s PushKit token: the APNs sink's token `i`, which calls must go to.
pub(crate) fn voip_token(i: usize) -> String {
    apns_sink::device_token(i)
}

/// Device `i`'s other token (background and alert pushes); never a call's.
fn background_token(i: usize) -> String {
    format!("ba{i:062x}")
}

/// The token a Sylk app on iOS gives: `<voip>-<background>`.
fn token_pair(i: usize) -> String {
    format!("{}-{}", voip_token(i), background_token(i))
}

fn account(i: usize) -> String {
    format!("d{i}@{DOMAIN}")
}

/// The event part of a request: an incoming audio call whose Call-ID carries `seq`.
fn call_fields(seq: usize, device: usize) -> String {
    format!(
        r#""event":"incoming_session","call-id":"{MARK}{seq}","from":"{FROM}","from-display-name":"Alice","to":"sip:{}","media-type":"audio","silent":true"#,
        account(device)
    )
}

/// v1 `POST /push` body for request `seq` to device `device`.
fn v1_body(seq: usize, device: usize) -> String {
    format!(
        r#"{{"app-id":"{BUNDLE}","platform":"apple","token":"{}","device-id":"dev-{device}",{}}}"#,
        token_pair(device),
        call_fields(seq, device)
    )
}

/// v2 `POST /v2/tokens/{account}/push` body: the event only.
fn v2_body(seq: usize, device: usize) -> String {
    format!("{{{}}}", call_fields(seq, device))
}

/// v2 `POST /v2/tokens/{account}` body: device `i`, one per account.
fn store_body(i: usize) -> String {
    format!(
        r#"{{"app-id":"{BUNDLE}","platform":"apple","token":"{}","device-id":"dev-{i}","silent":true,"user-agent":"pushgate-bench"}}"#,
        token_pair(i)
    )
}

fn json_post(path: String, body: String) -> Outgoing {
    Outgoing {
        path,
        headers: vec![("content-type", "application/json".to_owned())],
        body: Bytes::from(body),
    }
}

/// `200` when the status, the body's `code` and the device's `data.code` (v1: `data` is the
/// device's object; v2: a list of one per device, here one) are all 200; otherwise the status
/// and what differs, e.g. `202`, `200 data.code 503`, `200 unparsable`.
fn kind_of(answer: &Answer) -> String {
    if answer.status != 200 {
        return answer.status.to_string();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&answer.body) else {
        return "200 unparsable".to_owned();
    };
    if body.get("code").and_then(Value::as_u64) != Some(200) {
        return "200 code not 200".to_owned();
    }
    let device = match body.get("data") {
        Some(Value::Array(devices)) if devices.len() == 1 => &devices[0],
        Some(Value::Array(devices)) => return format!("200 {} devices", devices.len()),
        Some(data) => data,
        None => return "200 no data".to_owned(),
    };
    match device.get("code").and_then(Value::as_u64) {
        Some(200) => OK.to_owned(),
        Some(code) => format!("200 data.code {code}"),
        None => "200 no data.code".to_owned(),
    }
}

/// The load: request `seq` is a call to device (or account) `seq % devices`.
pub(crate) fn front(route: SipRoute, devices: usize) -> http_load::Front {
    http_load::Front {
        discovery: DISCOVERY,
        request: Box::new(move |seq| {
            let device = seq % devices;
            match route {
                SipRoute::V1 => json_post("/push".to_owned(), v1_body(seq, device)),
                SipRoute::V2 => json_post(
                    format!("/v2/tokens/{}/push", account(device)),
                    v2_body(seq, device),
                ),
            }
        }),
        kind_of,
        ok: OK,
    }
}

/// What storing the v2 devices did.
pub(crate) struct Stored {
    pub(crate) devices: usize,
    pub(crate) secs: f64,
}

impl Stored {
    pub(crate) fn rate(&self) -> f64 {
        self.devices as f64 / self.secs.max(1e-9)
    }
}

/// Stores device `i` for account `i`, `i < devices`, through `POST /v2/tokens/{account}` over
/// `connections` keep-alive connections; any answer but 200 echoing the device id stops the run.
pub(crate) async fn store(
    addr: SocketAddr,
    devices: usize,
    connections: usize,
) -> Result<Stored, BoxError> {
    let host = addr.to_string();
    let pool = http_load::open_pool(addr, &host, connections, DISCOVERY).await?;
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for mut sender in pool {
        let (next, host) = (next.clone(), host.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= devices {
                    return Ok::<(), BoxError>(());
                }
                let post = json_post(format!("/v2/tokens/{}", account(i)), store_body(i));
                let answer = http_load::send(&mut sender, &host, Method::POST, post).await?;
                let echo = serde_json::from_slice::<Value>(&answer.body).ok();
                let device_id = echo.as_ref().and_then(|v| v.get("device-id")?.as_str());
                if answer.status != 200 || device_id != Some(format!("dev-{i}").as_str()) {
                    return Err(format!(
                        "storing {}'s device answered {}: {}",
                        account(i),
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    )
                    .into());
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(Stored {
        devices,
        secs: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webpush_sink::sequence_in;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: hyper::HeaderMap::new(),
            body: Bytes::from(body.to_owned()),
        }
    }

    /// Bodies pushgate's parser takes, whose only marker is the Call-ID's.
    #[test]
    fn bodies_are_sylk_shaped_with_one_marker() {
        let v1: Value = serde_json::from_str(&v1_body(42, 7)).unwrap();
        assert_eq!(v1["app-id"], BUNDLE);
        assert_eq!(v1["event"], "incoming_session");
        assert_eq!(v1["call-id"], "bench-42");
        let token = v1["token"].as_str().unwrap();
        let (voip, background) = token.split_once('-').unwrap();
        assert_eq!((voip.len(), background.len()), (64, 64));
        assert_eq!(voip, voip_token(7));
        assert!(background.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(voip, background);
        let v2: Value = serde_json::from_str(&v2_body(43, 7)).unwrap();
        assert_eq!(v2["call-id"], "bench-43");
        assert!(v2.get("token").is_none());
        assert_eq!(sequence_in(v1_body(42, 7).as_bytes()), Some(42));
        assert_eq!(v1_body(42, 7).matches(MARK).count(), 1);
        let stored: Value = serde_json::from_str(&store_body(7)).unwrap();
        assert_eq!(stored["token"], token);
        assert_eq!(stored["device-id"], "dev-7");
    }

    #[test]
    fn answers_count_as_200_only_when_every_code_is() {
        let v1 = r#"{"code":200,"description":"push notification response","data":{"code":200,"reason":"OK"}}"#;
        let v2 =
            r#"{"code":200,"description":"push notification responses","data":[{"code":200}]}"#;
        assert_eq!(kind_of(&answer(200, v1)), OK);
        assert_eq!(kind_of(&answer(200, v2)), OK);
        assert_eq!(
            kind_of(&answer(200, r#"{"code":200,"data":{"code":202}}"#)),
            "200 data.code 202"
        );
        assert_eq!(
            kind_of(&answer(
                200,
                r#"{"code":200,"data":[{"code":200},{"code":200}]}"#
            )),
            "200 2 devices"
        );
        assert_eq!(
            kind_of(&answer(200, r#"{"code":500,"data":{"code":200}}"#)),
            "200 code not 200"
        );
        assert_eq!(kind_of(&answer(200, "nope")), "200 unparsable");
        assert_eq!(kind_of(&answer(202, v1)), "202");
    }

    #[test]
    fn the_config_names_the_app_and_its_provider() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let toml = config_toml(addr, "apns");
        assert!(toml.contains("listen = \"127.0.0.1:9\""));
        assert!(toml.contains(&format!(
            "[sip.apps.\"{BUNDLE}\".apple]\ntype = \"sylk\"\nprovider = \"apns\""
        )));
    }
}
