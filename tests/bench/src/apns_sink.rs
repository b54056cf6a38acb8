//! A local APNs: Apple's provider API (`POST /3/device/<token>`, HTTP/2 over TLS) with token
//! auth, answering 200 and an `apns-id` like Apple, and recording when each publish's push
//! arrived.
//!
//! Why it exists: to measure pushgate's real APNs path (its HTTP/2 pool, JWT header, payload
//! mapping) without Apple. Requests without `authorization: bearer <jwt>` or `apns-topic` are
//! refused as Apple refuses them (403 / 400 with a JSON `reason`), so a broken client shows up
//! as refusals rather than as speed. The JWT's shape is checked, not its signature. A VoIP push
//! (`apns-push-type: voip`) must name the app's VoIP topic, `<topic>.voip`, and any other push
//! the app's topic, else `DeviceTokenNotForTopic`.
//!
//! For `--front sip` ([`ApnsSink::start`] with `calls`), every push must also be an incoming
//! call: a VoIP push to the VoIP token of the device its request went to; the others are
//! counted as wrong.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use rcgen::KeyPair;

use crate::tls_sink::{self, Answer, Counts, Handler};
use crate::webpush_sink::sequence_in;
use crate::{BoxError, ProviderSink, Times, path_str, toml_str};

/// The app's bundle id.
pub(crate) const TOPIC: &str = "example.pushgate.bench";
/// Where its PushKit (VoIP) pushes go.
const VOIP_TOPIC: &str = "example.pushgate.bench.voip";
const KEY_ID: &str = "BENCHKEY01";
const TEAM_ID: &str = "BENCHTEAM1";
const DEVICE_PATH: &str = "/3/device/";

pub(crate) struct ApnsSink {
    toml: String,
    counts: Arc<Counts>,
    calls: Option<Arc<Calls>>,
}

struct Apns {
    times: Arc<Times>,
    counts: Arc<Counts>,
    next_id: AtomicU64,
    calls: Option<Arc<Calls>>,
}

/// `--front sip`: request `seq` is a call to device `seq % devices`, whose push must be a VoIP
/// push on the VoIP topic to that device's token (`device_token(seq % devices)`).
struct Calls {
    devices: usize,
    right: AtomicU64,
    wrong: AtomicU64,
}

/// Device `i`'s token: 64 hex characters, as a device token is.
pub(crate) fn device_token(i: usize) -> String {
    format!("{i:064x}")
}

impl ApnsSink {
    /// Starts the sink and writes its CA and the team's `.p8` key into `dir`. With `calls`
    /// (the number of devices), every push is checked as an incoming call's (see [`Calls`]).
    pub(crate) async fn start(
        dir: &Path,
        times: Arc<Times>,
        calls: Option<usize>,
    ) -> Result<Self, BoxError> {
        let key_file = dir.join("apns-key.p8");
        // rcgen's default key is P-256; its PEM is PKCS#8, as Apple's .p8 files are.
        std::fs::write(&key_file, KeyPair::generate()?.serialize_pem())?;
        let counts = Arc::new(Counts::default());
        let calls = calls.map(|devices| {
            Arc::new(Calls {
                devices: devices.max(1),
                right: AtomicU64::new(0),
                wrong: AtomicU64::new(0),
            })
        });
        let handler = Arc::new(Apns {
            times,
            counts: counts.clone(),
            next_id: AtomicU64::new(0),
            calls: calls.clone(),
        });
        let at = tls_sink::start(dir, "apns", handler).await?;
        let toml = format!(
            "[providers.apns]\nkind = \"apns\"\ntopic = \"{TOPIC}\"\nenvironment = \"sandbox\"\n\
             base_url = {}\nca_file = {}\nkey_file = {}\nkey_id = \"{KEY_ID}\"\n\
             team_id = \"{TEAM_ID}\"\npool_size = 2\n",
            toml_str(&at.base_url),
            toml_str(path_str(&at.ca_file)?),
            toml_str(path_str(&key_file)?),
        );
        Ok(Self {
            toml,
            counts,
            calls,
        })
    }
}

impl ProviderSink for ApnsSink {
    fn provider_id(&self) -> &'static str {
        "apns"
    }
    fn provider_toml(&self) -> String {
        self.toml.clone()
    }
    fn token(&self, i: usize) -> String {
        device_token(i)
    }
    fn requests(&self) -> u64 {
        self.counts.accepted()
    }
    fn refused(&self) -> u64 {
        self.counts.refused()
    }
    fn mismatched(&self) -> u64 {
        self.calls
            .as_ref()
            .map_or(0, |c| c.wrong.load(Ordering::Relaxed))
    }
    fn note(&self) -> String {
        match &self.calls {
            Some(c) => format!(
                "{} VoIP pushes on {VOIP_TOPIC} to the callee's VoIP token, {} other pushes",
                c.right.load(Ordering::Relaxed),
                c.wrong.load(Ordering::Relaxed)
            ),
            None => String::new(),
        }
    }
}

impl Handler for Apns {
    async fn handle(&self, req: Request<Incoming>) -> Answer {
        let (parts, incoming) = req.into_parts();
        let refuse = |status: StatusCode, reason: &'static str| {
            self.counts.refused.fetch_add(1, Ordering::Relaxed);
            tls_sink::json(status, Bytes::from(reason))
        };
        let Some(token) = parts.uri.path().strip_prefix(DEVICE_PATH) else {
            return refuse(StatusCode::NOT_FOUND, r#"{"reason":"BadPath"}"#);
        };
        if parts.method != Method::POST {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"reason":"MethodNotAllowed"}"#,
            );
        }
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return refuse(StatusCode::BAD_REQUEST, r#"{"reason":"BadDeviceToken"}"#);
        }
        let jwt = parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"bearer "));
        match jwt {
            None => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    r#"{"reason":"MissingProviderToken"}"#,
                );
            }
            Some(jwt) if jwt.iter().filter(|&&b| b == b'.').count() != 2 => {
                return refuse(
                    StatusCode::FORBIDDEN,
                    r#"{"reason":"InvalidProviderToken"}"#,
                );
            }
            Some(_) => {}
        }
        let voip = parts
            .headers
            .get("apns-push-type")
            .is_some_and(|t| t == "voip");
        let topic = if voip { VOIP_TOPIC } else { TOPIC };
        match parts.headers.get("apns-topic") {
            None => return refuse(StatusCode::BAD_REQUEST, r#"{"reason":"MissingTopic"}"#),
            Some(t) if t.as_bytes() != topic.as_bytes() => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    r#"{"reason":"DeviceTokenNotForTopic"}"#,
                );
            }
            Some(_) => {}
        }
        let Some(body) = tls_sink::body(incoming).await else {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                r#"{"reason":"PayloadTooLarge"}"#,
            );
        };
        tls_sink::mark_delivery(&self.times, &body);
        if let Some(calls) = &self.calls {
            // The topic matched the push type above.
            let right = voip
                && sequence_in(&body).is_some_and(|seq| token == device_token(seq % calls.devices));
            let counter = if right { &calls.right } else { &calls.wrong };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.counts.accepted.fetch_add(1, Ordering::Relaxed);
        let mut answer = tls_sink::empty(StatusCode::OK);
        answer
            .headers_mut()
            .insert("apns-id", apns_id(&self.next_id));
        answer
    }
}

/// A fresh UUID-shaped `apns-id`, as APNs assigns one to each push that carries none.
fn apns_id(next: &AtomicU64) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = next.fetch_add(1, Ordering::Relaxed);
    let mut id = *b"00000000-0000-4000-8000-000000000000";
    for (i, slot) in id[24..].iter_mut().rev().enumerate() {
        *slot = HEX[((n >> (4 * i)) & 0xf) as usize];
    }
    // Only hex digits and dashes: always a valid header value.
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apns_ids_are_uuid_shaped_and_distinct() {
        let next = AtomicU64::new(0xabc);
        let a = apns_id(&next);
        let b = apns_id(&next);
        assert_eq!(a.to_str().unwrap(), "00000000-0000-4000-8000-000000000abc");
        assert_eq!(b.to_str().unwrap(), "00000000-0000-4000-8000-000000000abd");
    }

    /// Refusals as Apple words them, and a delivery marked by its `bench-<seq>`.
    #[tokio::test]
    async fn refuses_like_apple_and_marks_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let times = Arc::new(Times::new(10));
        let sink = ApnsSink::start(dir.path(), times.clone(), None)
            .await
            .unwrap();
        let base = sink.toml.split("base_url = \"").nth(1).unwrap();
        let base = &base[..base.find('"').unwrap()];
        let client = crate::tls_sink::tests::client(&dir.path().join("apns-ca.pem"));
        let url = format!("{base}/3/device/{}", sink.token(3));
        let body = r#"{"aps":{"alert":{"body":"bench-3 hi"}}}"#;
        let reason = |r: reqwest::Response| async move {
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap()["reason"].clone(),
            )
        };

        let post = |url: &str, headers: &[(&'static str, &'static str)]| {
            let mut request = client.post(url).body(body);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            request.send()
        };
        let bearer = ("authorization", "bearer a.b.c");
        let topic = ("apns-topic", TOPIC);

        let r = post(&url, &[topic]).await.unwrap();
        assert_eq!(reason(r).await, (403, "MissingProviderToken".into()));
        let r = post(&url, &[bearer]).await.unwrap();
        assert_eq!(reason(r).await, (400, "MissingTopic".into()));
        let bad = format!("{base}/3/device/not-hex");
        let r = post(&bad, &[bearer, topic]).await.unwrap();
        assert_eq!(reason(r).await, (400, "BadDeviceToken".into()));
        assert_eq!(times.delivered[3].load(Ordering::Relaxed), 0);

        let r = post(&url, &[bearer, topic]).await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("apns-id"));
        assert_eq!((sink.requests(), sink.refused()), (1, 3));
        assert_ne!(times.delivered[3].load(Ordering::Relaxed), 0);
        let p8 = std::fs::read_to_string(dir.path().join("apns-key.p8")).unwrap();
        assert!(p8.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    /// `--front sip`: VoIP pushes must name the VoIP topic, and count as right only when they
    /// go to the VoIP token of the device their request went to.
    #[tokio::test]
    async fn checks_calls_by_push_type_topic_and_token() {
        assert_eq!(VOIP_TOPIC, format!("{TOPIC}.voip"));
        let dir = tempfile::tempdir().unwrap();
        let times = Arc::new(Times::new(20));
        let sink = ApnsSink::start(dir.path(), times.clone(), Some(4))
            .await
            .unwrap();
        let base = sink.toml.split("base_url = \"").nth(1).unwrap();
        let base = &base[..base.find('"').unwrap()];
        let client = crate::tls_sink::tests::client(&dir.path().join("apns-ca.pem"));
        let post = |device: usize, seq: usize, push_type: &'static str, topic: &'static str| {
            client
                .post(format!("{base}/3/device/{}", device_token(device)))
                .header("authorization", "bearer a.b.c")
                .header("apns-push-type", push_type)
                .header("apns-topic", topic)
                .body(format!(r#"{{"call-id":"bench-{seq}"}}"#))
                .send()
        };
        // Request 9 goes to device 9 % 4 = 1.
        assert_eq!(post(1, 9, "voip", VOIP_TOPIC).await.unwrap().status(), 200);
        assert_eq!(post(2, 10, "voip", TOPIC).await.unwrap().status(), 400);
        assert_eq!(
            post(3, 11, "alert", VOIP_TOPIC).await.unwrap().status(),
            400
        );
        // Accepted, but not a call, or not to the callee's token.
        assert_eq!(post(0, 12, "alert", TOPIC).await.unwrap().status(), 200);
        assert_eq!(post(0, 13, "voip", VOIP_TOPIC).await.unwrap().status(), 200);
        assert_eq!((sink.requests(), sink.refused()), (3, 2));
        assert_eq!(sink.mismatched(), 2);
        assert!(sink.note().starts_with("1 VoIP pushes"), "{}", sink.note());
    }
}
