//! End-to-end tests of the APNs provider against a local HTTP/2-over-TLS APNs on 127.0.0.1: the
//! headers and payload of every kind of push, how every class of answer maps onto a verdict,
//! provider-token reuse and renewal, the connection pool, certificate auth over mTLS (PEM, modern
//! and legacy .p12), credential checks, hot-swapped credentials and the configuration section.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use p256::pkcs8::DecodePrivateKey as _;
use pushgate_providers::apns::{Apns, ApnsConfig, CredentialError, Credentials, Environment};
use pushgate_providers::{
    Content, Device, DeviceToken, Encrypted, Kind, Notification, Priority, Provider,
    ProviderConfig, RegistrationError, Verdict,
};
use pushgate_test_support::apns::{JwtCheck, MockApns, Options, Reply};
use pushgate_test_support::fixtures::{
    assert_documents_exactly, assert_held_back, content, shipped_example, write,
};
use pushgate_test_support::jwt::now_secs;
use pushgate_test_support::pki::{Issued, Pki};
use tempfile::TempDir;

const TOPIC: &str = "org.example.messenger";
const KEY_ID: &str = "KEY1234567";
const TEAM_ID: &str = "TEAM765432";
const KEY: &str = "providers.apns";

/// A 64-hex-character device token.
fn token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn device(main: &str, second: Option<&str>) -> Device {
    Device {
        second_token: second.map(DeviceToken::new),
        ..pushgate_test_support::fixtures::device("tigase:messenger:apns:1", main)
    }
}

fn note(kind: Kind, content: Content, encrypted: Option<Encrypted>) -> Notification {
    Notification {
        content,
        encrypted,
        ..Notification::new(kind, Priority::High)
    }
}

fn alert() -> Notification {
    note(Kind::Alert, content(), None)
}

/// A .p8-style key (PKCS#8 P-256) and the public key the server verifies tokens with.
struct TokenKey {
    pem: String,
    check: JwtCheck,
}

impl TokenKey {
    fn generate() -> Self {
        let pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let secret = p256::SecretKey::from_pkcs8_pem(&pem).unwrap();
        Self {
            check: JwtCheck {
                key: p256::ecdsa::VerifyingKey::from(secret.public_key()),
                kid: KEY_ID.to_owned(),
                iss: TEAM_ID.to_owned(),
            },
            pem,
        }
    }
}

/// A test setup: CA, server, key files in a temporary directory.
struct Setup {
    pki: Pki,
    server: MockApns,
    dir: TempDir,
    key: TokenKey,
}

impl Setup {
    async fn token_auth() -> Self {
        Self::token_auth_with(None).await
    }

    /// Token auth against a server that announces `max_streams` concurrent streams.
    async fn token_auth_with(max_streams: Option<u32>) -> Self {
        let pki = Pki::new();
        let key = TokenKey::generate();
        let server = MockApns::start(
            &pki,
            Options {
                mtls: false,
                jwt: Some(key.check.clone()),
                max_streams,
            },
        )
        .await;
        Self {
            pki,
            server,
            dir: TempDir::new().unwrap(),
            key,
        }
    }

    async fn mtls() -> Self {
        let pki = Pki::new();
        let server = MockApns::start(
            &pki,
            Options {
                mtls: true,
                jwt: None,
                max_streams: None,
            },
        )
        .await;
        Self {
            pki,
            server,
            dir: TempDir::new().unwrap(),
            key: TokenKey::generate(),
        }
    }

    /// Points at the local server, trusts the test CA, no credentials.
    fn bare_config(&self) -> ApnsConfig {
        ApnsConfig {
            base_url: Some(self.server.base_url()),
            ca_file: Some(write(self.dir.path(), "ca.pem", &self.pki.ca_pem)),
            ..ApnsConfig::new(TOPIC, Environment::Production)
        }
    }

    fn token_config(&self) -> ApnsConfig {
        ApnsConfig {
            key_file: Some(write(self.dir.path(), "AuthKey.p8", &self.key.pem)),
            key_id: Some(KEY_ID.to_owned()),
            team_id: Some(TEAM_ID.to_owned()),
            ..self.bare_config()
        }
    }

    fn provider(&self, config: &ApnsConfig) -> Apns {
        Apns::new(KEY, config).unwrap()
    }
}

// --- mapping ------------------------------------------------------------------------------------

#[tokio::test]
async fn alert_carries_all_headers_and_payload_keys() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&ApnsConfig {
        collapse_id: Some("chat-juliet".into()),
        max_body_chars: 10,
        ..s.token_config()
    });
    let dev = device(&token(1), None);
    apns.validate(&dev).unwrap();
    let before = now_secs();
    assert_eq!(apns.send(&dev, &alert()).await, Verdict::Sent);

    let req = s.server.only_request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.version, http::Version::HTTP_2);
    assert_eq!(req.path, format!("/3/device/{}", token(1)));
    assert_eq!(req.header("apns-topic"), Some(TOPIC));
    assert_eq!(req.header("apns-push-type"), Some("alert"));
    assert_eq!(req.header("apns-priority"), Some("10"));
    assert_eq!(req.header("apns-collapse-id"), Some("chat-juliet"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    let expiration: u64 = req.header("apns-expiration").unwrap().parse().unwrap();
    assert!(
        (before + 86_400..=now_secs() + 86_400).contains(&expiration),
        "{expiration}"
    );
    assert!(req.jwt_error.is_none(), "{:?}", req.jwt_error);
    assert_eq!(req.jwt_claims.as_ref().unwrap()["iss"], TEAM_ID);
    assert_eq!(
        req.json(),
        serde_json::json!({
            "aps": {
                "alert": {"title": "romeo@montague.example/phone", "body": "wherefore …"},
                "mutable-content": 1,
                "sound": "default"
            },
            "account": "juliet@capulet.example",
            "sender": "romeo@montague.example/phone",
            "body": "wherefore …",
            "unread-messages": 3,
            "nickname": "Romeo"
        })
    );
}

#[tokio::test]
async fn alert_omits_missing_keys_and_has_no_collapse_id_unless_configured() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    let n = note(
        Kind::Alert,
        Content {
            account: Some("juliet@capulet.example".into()),
            ..Content::default()
        },
        None,
    );
    assert_eq!(apns.send(&device(&token(1), None), &n).await, Verdict::Sent);
    let req = s.server.only_request();
    assert!(req.header("apns-collapse-id").is_none());
    assert_eq!(
        req.json(),
        serde_json::json!({
            "aps": {"alert": {"title": "New message", "body": "New message"}, "mutable-content": 1, "sound": "default"},
            "account": "juliet@capulet.example"
        })
    );
}

#[tokio::test]
async fn the_notifications_collapse_key_becomes_the_collapse_id() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    let mut n = alert();
    n.collapse_key = Some("abc123".into());
    assert_eq!(apns.send(&device(&token(3), None), &n).await, Verdict::Sent);
    assert_eq!(
        s.server.only_request().header("apns-collapse-id"),
        Some("abc123")
    );
}

#[tokio::test]
async fn background_push_is_priority_5_with_content_available() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    let mut n = note(Kind::Background, content(), None);
    n.priority = Priority::Low;
    assert_eq!(apns.send(&device(&token(2), None), &n).await, Verdict::Sent);
    let req = s.server.only_request();
    assert_eq!(req.header("apns-push-type"), Some("background"));
    assert_eq!(req.header("apns-priority"), Some("5"));
    assert_eq!(req.header("apns-topic"), Some(TOPIC));
    assert_eq!(
        req.json(),
        serde_json::json!({
            "aps": {"content-available": 1},
            "account": "juliet@capulet.example",
            "unread-messages": 3
        })
    );
}

#[tokio::test]
async fn clear_push_sends_zero_unread_messages() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    let n = note(
        Kind::Clear,
        Content {
            account: Some("juliet@capulet.example".into()),
            message_count: Some(0),
            ..Content::default()
        },
        None,
    );
    assert_eq!(apns.send(&device(&token(3), None), &n).await, Verdict::Sent);
    let req = s.server.only_request();
    assert_eq!(req.header("apns-push-type"), Some("background"));
    assert_eq!(req.header("apns-priority"), Some("5"));
    let v = req.json();
    assert_eq!(v["unread-messages"], 0);
    assert_eq!(v["aps"], serde_json::json!({"content-available": 1}));
    assert!(v.get("sender").is_none() && v.get("body").is_none(), "{v}");
}

#[tokio::test]
async fn encrypted_payload_passes_through_without_plaintext() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    let enc = Encrypted {
        payload: "q83vEjRWeJA=+/ciphertext==".into(),
        iv: "AAECAwQFBgcICQoL".into(),
    };
    let n = note(Kind::Alert, content(), Some(enc));
    assert_eq!(apns.send(&device(&token(4), None), &n).await, Verdict::Sent);
    let req = s.server.only_request();
    assert_eq!(req.header("apns-push-type"), Some("alert"));
    let v = req.json();
    assert_eq!(v["encrypted"], "q83vEjRWeJA=+/ciphertext==");
    assert_eq!(v["iv"], "AAECAwQFBgcICQoL");
    assert_eq!(v["account"], "juliet@capulet.example");
    assert_eq!(v["aps"]["alert"]["title"], "New message");
    assert_eq!(v["aps"]["mutable-content"], 1);
    let text = String::from_utf8(req.body.clone()).unwrap();
    for secret in ["romeo", "wherefore", "Romeo"] {
        assert!(
            !text.contains(secret),
            "plaintext {secret:?} leaked: {text}"
        );
    }
}

#[tokio::test]
async fn voip_goes_to_the_pushkit_token_with_voip_topic_and_short_expiration() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    let dev = device(&token(5), Some(&token(6)));
    apns.validate(&dev).unwrap();
    let enc = Encrypted {
        payload: "Y2FsbA==".into(),
        iv: "aXY=".into(),
    };
    let before = now_secs();
    let n = note(Kind::Voip, content(), Some(enc));
    assert_eq!(apns.send(&dev, &n).await, Verdict::Sent);
    let req = s.server.only_request();
    assert_eq!(req.device_token(), token(6));
    assert_eq!(
        req.header("apns-topic"),
        Some(format!("{TOPIC}.voip").as_str())
    );
    assert_eq!(req.header("apns-push-type"), Some("voip"));
    assert_eq!(req.header("apns-priority"), Some("10"));
    let expiration: u64 = req.header("apns-expiration").unwrap().parse().unwrap();
    assert!(
        (before + 30..=now_secs() + 30).contains(&expiration),
        "{expiration}"
    );
    assert_eq!(
        req.json(),
        serde_json::json!({"account": "juliet@capulet.example", "encrypted": "Y2FsbA==", "iv": "aXY="})
    );

    // Unencrypted: account and sender only.
    let plain = note(Kind::Voip, content(), None);
    assert_eq!(apns.send(&dev, &plain).await, Verdict::Sent);
    let req = s.server.requests().pop().unwrap();
    assert_eq!(
        req.json(),
        serde_json::json!({"account": "juliet@capulet.example", "sender": "romeo@montague.example/phone"})
    );
}

#[tokio::test]
async fn voip_without_second_token_falls_back_to_an_alert() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&ApnsConfig {
        voip_expiration_secs: 0,
        ..s.token_config()
    });
    let n = note(
        Kind::Voip,
        Content {
            body: None,
            ..content()
        },
        None,
    );
    assert_eq!(apns.send(&device(&token(7), None), &n).await, Verdict::Sent);
    let req = s.server.only_request();
    assert_eq!(req.device_token(), token(7));
    assert_eq!(req.header("apns-topic"), Some(TOPIC));
    assert_eq!(req.header("apns-push-type"), Some("alert"));
    assert_eq!(req.header("apns-priority"), Some("10"));
    assert_eq!(req.header("apns-expiration"), Some("0"), "now or never");
    assert_eq!(req.json()["aps"]["alert"]["body"], "Incoming call");
}

#[tokio::test]
async fn payload_too_large_is_our_fault_and_never_sent() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    let enc = Encrypted {
        payload: "A".repeat(5000),
        iv: "aXY=".into(),
    };
    let verdict = apns
        .send(
            &device(&token(8), None),
            &note(Kind::Alert, content(), Some(enc)),
        )
        .await;
    match verdict {
        Verdict::OurFault { reason } => assert!(reason.contains("4096"), "{reason}"),
        other => panic!("expected OurFault, got {other:?}"),
    }
    assert!(s.server.requests().is_empty());

    // A long plain body is cut until it fits instead.
    let s2 = MockApns::start(&s.pki, Options::default()).await;
    let apns = s.provider(&ApnsConfig {
        base_url: Some(s2.base_url()),
        max_body_chars: 4096,
        ..s.token_config()
    });
    let mut n = alert();
    n.content.body = Some("x".repeat(10_000));
    assert_eq!(apns.send(&device(&token(8), None), &n).await, Verdict::Sent);
    let req = s2.only_request();
    assert!(req.body.len() <= 4096, "{}", req.body.len());
    assert!(req.json()["body"].as_str().unwrap().ends_with('…'));
}

// --- verdicts -----------------------------------------------------------------------------------

/// Sends one alert to a token scripted with `reply`; returns the verdict.
async fn verdict_for(s: &Setup, apns: &Apns, n: u8, reply: Reply) -> Verdict {
    s.server.script(&token(n), vec![reply]);
    apns.send(&device(&token(n), None), &alert()).await
}

#[tokio::test]
async fn dead_token_answers() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    for (n, status, reason) in [
        (10, 410, "Unregistered"),
        (11, 410, "ExpiredToken"),
        (12, 400, "BadDeviceToken"),
        (13, 400, "DeviceTokenNotForTopic"),
    ] {
        match verdict_for(&s, &apns, n, Reply::reason(status, reason)).await {
            Verdict::DeadToken { reason: r } => assert!(r.contains(reason), "{r}"),
            other => panic!("{status} {reason}: expected DeadToken, got {other:?}"),
        }
    }
    // BadDeviceToken names the environment (a sandbox token sent to production?).
    s.server
        .script(&token(12), vec![Reply::reason(400, "BadDeviceToken")]);
    match apns.send(&device(&token(12), None), &alert()).await {
        Verdict::DeadToken { reason } => assert!(reason.contains("production"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn transient_answers() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    match verdict_for(
        &s,
        &apns,
        20,
        Reply::reason(429, "TooManyRequests").with_header("retry-after", "30"),
    )
    .await
    {
        Verdict::Transient {
            retry_after,
            reason,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(30)));
            assert!(reason.contains("TooManyRequests"), "{reason}");
        }
        other => panic!("429: {other:?}"),
    }
    for (n, status, reason) in [
        (21, 500, "InternalServerError"),
        (22, 503, "ServiceUnavailable"),
        (23, 503, "Shutdown"),
        (24, 403, "BadCertificateEnvironment"),
        (25, 403, "InvalidProviderToken"),
        (26, 502, "SomethingNewFromApple"),
    ] {
        // 500 and 503 are retried once: script the failure twice.
        s.server.script(
            &token(n),
            vec![Reply::reason(status, reason), Reply::reason(status, reason)],
        );
        match apns.send(&device(&token(n), None), &alert()).await {
            Verdict::Transient { reason: r, .. } => assert!(r.contains(reason), "{r}"),
            other => panic!("{status} {reason}: expected Transient, got {other:?}"),
        }
    }
}

/// Apple's guidance: a 500 or 503 is retried, on another connection. One retry fits the bound.
#[tokio::test]
async fn a_passing_server_error_is_retried_once() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    s.server
        .script(&token(27), vec![Reply::reason(503, "Shutdown")]);
    assert_eq!(
        apns.send(&device(&token(27), None), &alert()).await,
        Verdict::Sent
    );
    assert_eq!(s.server.requests_for(&token(27)).len(), 2);
    // Told to wait: no retry.
    s.server.script(
        &token(28),
        vec![Reply::reason(503, "ServiceUnavailable").with_header("retry-after", "5")],
    );
    assert!(matches!(
        apns.send(&device(&token(28), None), &alert()).await,
        Verdict::Transient { .. }
    ));
    assert_eq!(s.server.requests_for(&token(28)).len(), 1);
}

/// Asked to wait (here for 10^9 s or 2^64 − 1 s): a transient verdict, and for at most an hour
/// 429 `TooManyRequests` holds back that token only, while a 503 or 429
/// `TooManyProviderTokenUpdates` holds back the whole provider.
#[tokio::test]
async fn slow_down_answers_hold_the_token_or_the_provider_for_at_most_an_hour() {
    let s = Setup::token_auth().await;
    let hour = Duration::from_secs(3600);

    let apns = s.provider(&s.token_config());
    let v = verdict_for(
        &s,
        &apns,
        50,
        Reply::reason(429, "TooManyRequests").with_header("retry-after", "1000000000"),
    )
    .await;
    assert!(
        matches!(v, Verdict::Transient { retry_after: Some(d), .. } if d == hour),
        "{v:?}"
    );
    assert_held_back(&apns.send(&device(&token(50), None), &alert()).await, hour);
    assert_eq!(s.server.requests_for(&token(50)).len(), 1);
    assert_eq!(
        apns.send(&device(&token(51), None), &alert()).await,
        Verdict::Sent,
        "other devices go on"
    );

    for (n, status, reason) in [
        (52, 503, "ServiceUnavailable"),
        (54, 429, "TooManyProviderTokenUpdates"),
    ] {
        let apns = s.provider(&s.token_config());
        let v = verdict_for(
            &s,
            &apns,
            n,
            Reply::reason(status, reason).with_header("retry-after", "18446744073709551615"),
        )
        .await;
        assert!(
            matches!(&v, Verdict::Transient { retry_after: Some(d), .. } if *d == hour),
            "{reason}: {v:?}"
        );
        assert_held_back(
            &apns.send(&device(&token(n + 1), None), &alert()).await,
            hour,
        );
        assert!(s.server.requests_for(&token(n + 1)).is_empty(), "{reason}");
    }
}

#[tokio::test]
async fn our_fault_answers() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    for (n, status, reason) in [
        (30, 400, "BadTopic"),
        (31, 400, "TopicDisallowed"),
        (32, 400, "BadCollapseId"),
        (33, 413, "PayloadTooLarge"),
        (34, 404, "BadPath"),
        (35, 400, "AReasonAppleAddsLater"),
    ] {
        match verdict_for(&s, &apns, n, Reply::reason(status, reason)).await {
            Verdict::OurFault { reason: r } => assert!(r.contains(reason), "{r}"),
            other => panic!("{status} {reason}: expected OurFault, got {other:?}"),
        }
    }
    // A body that is not JSON is kept as text; the status still decides.
    let garbage = Reply::Answer {
        status: 400,
        body: "<html>oops</html>".into(),
        headers: Vec::new(),
    };
    match verdict_for(&s, &apns, 36, garbage).await {
        Verdict::OurFault { reason } => assert!(reason.contains("oops"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn unanswered_request_times_out_as_transient() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&ApnsConfig {
        request_timeout_secs: 1,
        ..s.token_config()
    });
    let started = std::time::Instant::now();
    match verdict_for(&s, &apns, 37, Reply::Hold).await {
        Verdict::Transient { reason, .. } => assert!(reason.contains("no answer"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(s.server.requests().len(), 1, "a timeout is not retried");
}

// --- provider token -----------------------------------------------------------------------------

#[tokio::test]
async fn provider_token_is_reused_across_sends() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    // Spread over more than a second: a token signed per request would change its `iat` (ES256
    // signatures are deterministic, so only a new `iat` shows a new token).
    for i in 0..20u8 {
        assert_eq!(
            apns.send(&device(&token(40 + i), None), &alert()).await,
            Verdict::Sent
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let requests = s.server.requests();
    assert_eq!(requests.len(), 20);
    let first = requests[0].jwt.clone().unwrap();
    assert!(requests.iter().all(|r| r.jwt.as_deref() == Some(&*first)));
    assert!(requests.iter().all(|r| r.jwt_error.is_none()));
}

#[tokio::test]
async fn expired_provider_token_is_renewed_and_retried_once() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    assert_eq!(
        apns.send(&device(&token(60), None), &alert()).await,
        Verdict::Sent
    );
    // Signatures are deterministic: the renewed token needs a later `iat` to differ.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apns.backdate_provider_token(Duration::from_secs(30 * 60));

    s.server.script(
        &token(61),
        vec![Reply::reason(403, "ExpiredProviderToken"), Reply::ok()],
    );
    assert_eq!(
        apns.send(&device(&token(61), None), &alert()).await,
        Verdict::Sent
    );
    let tries = s.server.requests_for(&token(61));
    assert_eq!(tries.len(), 2, "exactly one retry");
    let (old, new) = (tries[0].jwt.clone().unwrap(), tries[1].jwt.clone().unwrap());
    assert_ne!(old, new, "the retry carries a new token");
    assert!(tries[1].jwt_error.is_none());
    // And the new token is the one used from now on.
    assert_eq!(
        apns.send(&device(&token(62), None), &alert()).await,
        Verdict::Sent
    );
    assert_eq!(
        s.server.requests_for(&token(62))[0].jwt.as_deref(),
        Some(&*new)
    );

    // Refused again after the renewal: transient, no further retries.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    apns.backdate_provider_token(Duration::from_secs(30 * 60));
    s.server.script(
        &token(63),
        vec![
            Reply::reason(403, "ExpiredProviderToken"),
            Reply::reason(403, "ExpiredProviderToken"),
            Reply::ok(),
        ],
    );
    assert!(matches!(
        apns.send(&device(&token(63), None), &alert()).await,
        Verdict::Transient { .. }
    ));
    assert_eq!(s.server.requests_for(&token(63)).len(), 2);
}

#[tokio::test]
async fn young_provider_token_is_not_renewed_when_called_expired() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.token_config());
    s.server
        .script(&token(64), vec![Reply::reason(403, "ExpiredProviderToken")]);
    match apns.send(&device(&token(64), None), &alert()).await {
        Verdict::Transient { reason, .. } => assert!(reason.contains("20 minutes"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.server.requests_for(&token(64)).len(),
        1,
        "renewing within 20 minutes would earn TooManyProviderTokenUpdates"
    );
}

// --- connections --------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_sends_use_at_most_pool_size_connections() {
    for pool_size in [1usize, 3] {
        let s = Setup::token_auth().await;
        let apns = Arc::new(s.provider(&ApnsConfig {
            pool_size,
            ..s.token_config()
        }));
        // Spawned all at once (collected), so they race for the cold connections.
        let sends: Vec<_> = (0..30u8)
            .map(|i| {
                let apns = apns.clone();
                tokio::spawn(async move { apns.send(&device(&token(i), None), &alert()).await })
            })
            .collect();
        for verdict in futures_join(sends.into_iter()).await {
            assert_eq!(verdict, Verdict::Sent);
        }
        assert_eq!(s.server.requests().len(), 30);
        let connections = s.server.connections();
        assert!(
            (1..=pool_size).contains(&connections),
            "pool_size {pool_size}: {connections} connections"
        );
        // All of them used, round-robin.
        let used: std::collections::BTreeSet<usize> =
            s.server.requests().iter().map(|r| r.connection).collect();
        assert_eq!(used.len(), connections);
    }
}

async fn futures_join(
    handles: impl Iterator<Item = tokio::task::JoinHandle<Verdict>>,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn connection_dropped_mid_request_is_retried_on_a_new_connection() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&ApnsConfig {
        pool_size: 1,
        ..s.token_config()
    });
    assert_eq!(
        apns.send(&device(&token(70), None), &alert()).await,
        Verdict::Sent
    );
    assert_eq!(s.server.connections(), 1);

    s.server
        .script(&token(71), vec![Reply::DropConnection, Reply::ok()]);
    assert_eq!(
        apns.send(&device(&token(71), None), &alert()).await,
        Verdict::Sent
    );
    assert_eq!(s.server.requests_for(&token(71)).len(), 2);
    assert_eq!(s.server.connections(), 2, "reconnected once");

    // The server closes everything between two pushes: the next one reconnects.
    s.server.drop_connections();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        apns.send(&device(&token(72), None), &alert()).await,
        Verdict::Sent
    );
    assert_eq!(s.server.connections(), 3);
}

#[tokio::test]
async fn goaway_between_pushes_costs_no_push() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&ApnsConfig {
        pool_size: 1,
        ..s.token_config()
    });
    assert_eq!(
        apns.send(&device(&token(73), None), &alert()).await,
        Verdict::Sent
    );
    s.server.go_away();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Scripted to fail a second try: the push must go out once, on a new connection.
    s.server.script(
        &token(74),
        vec![Reply::ok(), Reply::reason(400, "BadDeviceToken")],
    );
    assert_eq!(
        apns.send(&device(&token(74), None), &alert()).await,
        Verdict::Sent
    );
    assert_eq!(s.server.requests_for(&token(74)).len(), 1);
    assert_eq!(s.server.connections(), 2);
}

#[tokio::test]
async fn goaway_while_a_push_is_in_flight_lets_it_finish() {
    let s = Setup::token_auth().await;
    let apns = Arc::new(s.provider(&ApnsConfig {
        pool_size: 1,
        ..s.token_config()
    }));
    assert_eq!(
        apns.send(&device(&token(75), None), &alert()).await,
        Verdict::Sent
    );
    s.server
        .script(&token(76), vec![Reply::Slow(Duration::from_millis(300))]);
    let slow = {
        let apns = apns.clone();
        tokio::spawn(async move { apns.send(&device(&token(76), None), &alert()).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.server.go_away();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        apns.send(&device(&token(77), None), &alert()).await,
        Verdict::Sent,
        "a push after GOAWAY goes out on a new connection"
    );
    assert_eq!(
        slow.await.unwrap(),
        Verdict::Sent,
        "the stream in flight is answered"
    );
    assert_eq!(s.server.requests_for(&token(76)).len(), 1);
    assert_eq!(s.server.requests_for(&token(77)).len(), 1);
    assert_eq!(s.server.connections(), 2);
}

#[tokio::test]
async fn the_servers_concurrent_stream_limit_is_respected() {
    let s = Setup::token_auth_with(Some(2)).await;
    let apns = Arc::new(s.provider(&ApnsConfig {
        pool_size: 1,
        ..s.token_config()
    }));
    // Connected, so the server's SETTINGS are known.
    assert_eq!(
        apns.send(&device(&token(90), None), &alert()).await,
        Verdict::Sent
    );
    let started = std::time::Instant::now();
    let sends: Vec<_> = (0..6u8)
        .map(|i| {
            s.server.script(
                &token(91 + i),
                vec![Reply::Slow(Duration::from_millis(200))],
            );
            let apns = apns.clone();
            tokio::spawn(async move { apns.send(&device(&token(91 + i), None), &alert()).await })
        })
        .collect();
    for verdict in futures_join(sends.into_iter()).await {
        assert_eq!(verdict, Verdict::Sent);
    }
    assert_eq!(
        s.server.max_in_flight(),
        2,
        "never more than the server allows"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "six 200 ms answers two at a time: {:?}",
        started.elapsed()
    );
    assert_eq!(s.server.requests().len(), 7, "none refused and sent again");
    assert_eq!(s.server.connections(), 1);
}

#[tokio::test]
async fn a_server_that_stalls_the_handshake_is_bounded_by_the_request_timeout() {
    let s = Setup::token_auth().await;
    // Accepts TCP connections and never says a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let apns = s.provider(&ApnsConfig {
        base_url: Some(format!("https://{addr}")),
        request_timeout_secs: 1,
        ..s.token_config()
    });
    let started = std::time::Instant::now();
    match apns.send(&device(&token(78), None), &alert()).await {
        Verdict::Transient { reason, .. } => assert!(reason.contains("no answer"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    accepted.abort();
}

#[tokio::test]
async fn a_huge_error_body_is_read_only_up_to_the_cap() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&ApnsConfig {
        pool_size: 1,
        ..s.token_config()
    });
    // 4 MiB: more than the connection's flow-control window, so unless the rest is given back
    // or the stream reset, the connection would stall.
    let huge = Reply::Answer {
        status: 400,
        body: "x".repeat(4 << 20),
        headers: Vec::new(),
    };
    match verdict_for(&s, &apns, 79, huge).await {
        Verdict::OurFault { reason } => assert!(reason.len() < 300, "{}", reason.len()),
        other => panic!("{other:?}"),
    }
    for i in 0..3u8 {
        assert_eq!(
            tokio::time::timeout(
                Duration::from_secs(2),
                apns.send(&device(&token(100 + i), None), &alert())
            )
            .await
            .unwrap(),
            Verdict::Sent
        );
    }
    assert_eq!(s.server.connections(), 1, "the connection stays usable");
}

// --- certificate auth ---------------------------------------------------------------------------

#[tokio::test]
async fn certificate_auth_with_pem_files_presents_the_client_certificate() {
    let s = Setup::mtls().await;
    let client = s
        .pki
        .valid_client_cert("Apple Push Services: org.example.messenger");
    let apns = s.provider(&ApnsConfig {
        cert_file: Some(write(s.dir.path(), "cert.pem", &client.cert_pem)),
        private_key_file: Some(write(s.dir.path(), "key.pem", &client.key_pem)),
        ..s.bare_config()
    });
    let info = apns.credential_info().unwrap();
    assert_eq!(info.kind, "certificate");
    assert!(
        info.subject
            .as_deref()
            .unwrap()
            .contains("Apple Push Services: org.example.messenger"),
        "{info:?}"
    );
    assert!(info.not_after.unwrap() > SystemTime::now());

    assert_eq!(
        apns.send(&device(&token(80), None), &alert()).await,
        Verdict::Sent
    );
    let req = s.server.only_request();
    assert_eq!(req.client_cert.as_deref(), Some(client.cert_der.as_slice()));
    assert!(
        req.header("authorization").is_none(),
        "no JWT with certificate auth"
    );
}

#[tokio::test]
async fn without_a_client_certificate_the_mtls_server_is_unreachable() {
    let s = Setup::mtls().await;
    let apns = s.provider(&s.token_config());
    assert!(matches!(
        apns.send(&device(&token(81), None), &alert()).await,
        Verdict::Transient { .. }
    ));
    assert!(s.server.requests().is_empty());
}

/// Makes a .p12 of `issued` with the openssl CLI; `extra` selects the encryption.
fn openssl_p12(dir: &Path, name: &str, issued: &Issued, password: &str, extra: &[&str]) -> Vec<u8> {
    let cert = write(dir, &format!("{name}.crt"), &issued.cert_pem);
    let key = write(dir, &format!("{name}.key"), &issued.key_pem);
    let out = dir.join(format!("{name}.p12"));
    let result = Command::new("openssl")
        .args(["pkcs12", "-export"])
        .args(extra)
        .arg("-in")
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-out")
        .arg(&out)
        .args(["-passout", &format!("pass:{password}")])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the openssl CLI is needed to make .p12 test files (apt-get install openssl): {e}"
            )
        });
    assert!(
        result.status.success(),
        "openssl pkcs12 {extra:?} failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    std::fs::read(out).unwrap()
}

#[tokio::test]
async fn certificate_auth_with_modern_and_legacy_p12() {
    let s = Setup::mtls().await;
    let client = s
        .pki
        .valid_client_cert("Apple Push Services: org.example.messenger");
    let modern = openssl_p12(s.dir.path(), "modern", &client, "s3cret", &[]);
    let legacy = openssl_p12(
        s.dir.path(),
        "legacy",
        &client,
        "s3cret",
        &[
            "-legacy",
            "-certpbe",
            "PBE-SHA1-RC2-40",
            "-keypbe",
            "PBE-SHA1-3DES",
        ],
    );
    // The legacy bundle really is RC2-40 (OpenSSL 3 without the legacy provider cannot read it).
    let info = Command::new("openssl")
        .args([
            "pkcs12",
            "-info",
            "-noout",
            "-legacy",
            "-passin",
            "pass:s3cret",
            "-in",
        ])
        .arg(s.dir.path().join("legacy.p12"))
        .output()
        .unwrap();
    let described =
        String::from_utf8_lossy(&info.stderr).to_string() + &String::from_utf8_lossy(&info.stdout);
    assert!(described.contains("40BitRC2"), "{described}");

    for (name, bundle) in [("modern", &modern), ("legacy", &legacy)] {
        let path = write(s.dir.path(), &format!("{name}-in.p12"), bundle);
        let apns = s.provider(&ApnsConfig {
            p12_file: Some(path),
            p12_password: Some("s3cret".into()),
            ..s.bare_config()
        });
        assert_eq!(
            apns.credential_info().unwrap().kind,
            "certificate",
            "{name}"
        );
        assert_eq!(
            apns.send(&device(&token(82), None), &alert()).await,
            Verdict::Sent,
            "{name}"
        );
        let req = s.server.requests().pop().unwrap();
        assert_eq!(
            req.client_cert.as_deref(),
            Some(client.cert_der.as_slice()),
            "{name}"
        );

        // The wrong password is named as such, from the API and from the configuration.
        assert_eq!(
            Credentials::from_p12(bundle, "wrong").unwrap_err(),
            CredentialError::WrongPassword,
            "{name}"
        );
        let err = Apns::new(
            KEY,
            &ApnsConfig {
                p12_file: Some(s.dir.path().join(format!("{name}-in.p12"))),
                p12_password: Some("wrong".into()),
                ..s.bare_config()
            },
        )
        .unwrap_err();
        assert_eq!(err.key, "providers.apns.p12_password", "{err}");
    }
}

#[tokio::test]
async fn credential_validation_refuses_bad_certificates() {
    let pki = Pki::new();
    let now = SystemTime::now();

    let expired = pki.client_cert("old", (2019, 1, 1), (2020, 1, 1));
    let creds = Credentials::from_pem(&expired.cert_pem, &expired.key_pem).unwrap();
    match creds.validate(now) {
        Err(CredentialError::Expired { not_after }) => {
            assert!(not_after.contains("2020"), "{not_after}")
        }
        other => panic!("{other:?}"),
    }

    let future = pki.client_cert("future", (2090, 1, 1), (2099, 1, 1));
    let creds = Credentials::from_pem(&future.cert_pem, &future.key_pem).unwrap();
    assert!(matches!(
        creds.validate(now),
        Err(CredentialError::NotYetValid { .. })
    ));

    let a = pki.valid_client_cert("a");
    let b = pki.valid_client_cert("b");
    let mixed = Credentials::from_pem(&a.cert_pem, &b.key_pem).unwrap();
    assert_eq!(mixed.validate(now), Err(CredentialError::KeyMismatch));
    let good = Credentials::from_pem(&a.cert_pem, &a.key_pem).unwrap();
    assert_eq!(good.validate(now).unwrap().kind, "certificate");

    // Messages never carry key material.
    let message = CredentialError::KeyMismatch.to_string();
    assert!(!message.contains("PRIVATE"));
    assert!(!format!("{mixed:?}").contains("PRIVATE KEY"));

    assert!(matches!(
        Credentials::from_pem("not pem", &a.key_pem),
        Err(CredentialError::Unreadable(_))
    ));
    assert!(matches!(
        Credentials::from_p12(b"not a p12", "x"),
        Err(CredentialError::Unreadable(_))
    ));

    // An expired certificate in the configuration stops the start, naming the key.
    let dir = TempDir::new().unwrap();
    let err = Apns::new(
        KEY,
        &ApnsConfig {
            cert_file: Some(write(dir.path(), "c.pem", &expired.cert_pem)),
            private_key_file: Some(write(dir.path(), "k.pem", &expired.key_pem)),
            ..ApnsConfig::new(TOPIC, Environment::Sandbox)
        },
    )
    .unwrap_err();
    assert_eq!(err.key, "providers.apns.cert_file");
    assert!(err.message.contains("expired"), "{err}");
}

// --- credentials lifecycle ----------------------------------------------------------------------

#[tokio::test]
async fn no_credentials_is_transient_until_some_are_set() {
    let s = Setup::token_auth().await;
    let apns = s.provider(&s.bare_config());
    assert_eq!(apns.credential_info(), None);
    match apns.send(&device(&token(90), None), &alert()).await {
        Verdict::Transient { reason, .. } => assert_eq!(reason, "no APNs credentials configured"),
        other => panic!("{other:?}"),
    }
    assert!(s.server.requests().is_empty());

    // Bad credentials are refused and leave the provider as it was.
    assert_eq!(
        apns.set_credentials(Credentials::Token {
            key_pem: "garbage".into(),
            key_id: KEY_ID.into(),
            team_id: TEAM_ID.into(),
        })
        .unwrap_err(),
        CredentialError::NotP256Key
    );
    assert_eq!(apns.credential_info(), None);

    let info = apns
        .set_credentials(Credentials::from_p8(&s.key.pem, KEY_ID, TEAM_ID).unwrap())
        .unwrap();
    assert_eq!(info.kind, "token");
    assert_eq!(apns.credential_info(), Some(info));
    assert_eq!(
        apns.send(&device(&token(90), None), &alert()).await,
        Verdict::Sent
    );
    let req = s.server.only_request();
    assert!(req.jwt_error.is_none(), "{:?}", req.jwt_error);
}

#[tokio::test]
async fn credentials_swap_while_sending() {
    let s = Setup::token_auth().await;
    let apns = Arc::new(s.provider(&s.token_config()));
    let sender = {
        let apns = apns.clone();
        tokio::spawn(async move {
            let mut verdicts = Vec::new();
            for i in 0..20u8 {
                verdicts.push(apns.send(&device(&token(i), None), &alert()).await);
            }
            verdicts
        })
    };
    for _ in 0..5 {
        apns.set_credentials(Credentials::from_p8(&s.key.pem, KEY_ID, TEAM_ID).unwrap())
            .unwrap();
        tokio::task::yield_now().await;
    }
    assert!(sender.await.unwrap().iter().all(|v| *v == Verdict::Sent));
}

// --- validation and configuration ---------------------------------------------------------------

#[tokio::test]
async fn device_tokens_are_validated() {
    let apns = Apns::new(KEY, &ApnsConfig::new(TOPIC, Environment::Sandbox)).unwrap();
    assert_eq!(apns.topic(), TOPIC);
    assert_eq!(apns.environment(), Environment::Sandbox);
    assert!(
        apns.validate(&device(&token(1), Some(&"AB".repeat(50))))
            .is_ok()
    );
    for bad in [
        "abc".to_owned(),
        "zz".repeat(32),
        "a".repeat(201),
        format!("{}/..", "a".repeat(64)),
    ] {
        assert!(
            matches!(
                apns.validate(&device(&bad, None)),
                Err(RegistrationError::InvalidToken(_))
            ),
            "{bad}"
        );
        assert!(
            apns.validate(&device(&token(1), Some(&bad))).is_err(),
            "second {bad}"
        );
    }
}

fn parse(toml_text: &str) -> Result<ProviderConfig, String> {
    toml::from_str::<ProviderConfig>(toml_text).map_err(|e| e.to_string())
}

#[tokio::test]
async fn config_section_parses_with_defaults_and_builds() {
    let config = parse(&format!(
        "kind = \"apns\"\ntopic = \"{TOPIC}\"\nenvironment = \"sandbox\"\n"
    ))
    .unwrap();
    let ProviderConfig::Apns(c) = &config else {
        panic!("{config:?}")
    };
    assert_eq!(c.pool_size, 2);
    assert_eq!(c.ping_interval_secs, 60);
    assert_eq!(c.request_timeout_secs, 8);
    assert_eq!(c.expiration_secs, 86_400);
    assert_eq!(c.voip_expiration_secs, 30);
    assert_eq!(c.max_body_chars, 500);
    assert_eq!(c.environment, Environment::Sandbox);
    let provider = pushgate_providers::build(KEY, &config).unwrap();
    assert_eq!(provider.as_apns().unwrap().topic(), TOPIC);
}

#[test]
fn config_errors_name_the_key() {
    let err = parse(&format!(
        "kind = \"apns\"\ntopic = \"{TOPIC}\"\nenvironment = \"production\"\ncolapse_id = \"x\"\n"
    ))
    .unwrap_err();
    assert!(err.contains("colapse_id"), "{err}");
    let err = parse("kind = \"apns\"\ntopic = \"t\"\nenvironment = \"staging\"\n").unwrap_err();
    assert!(err.contains("staging"), "{err}");

    let build = |c: ApnsConfig| Apns::new(KEY, &c).unwrap_err();
    let base = || ApnsConfig::new(TOPIC, Environment::Production);

    let err = build(ApnsConfig {
        collapse_id: Some("c".repeat(65)),
        ..base()
    });
    assert_eq!(err.key, "providers.apns.collapse_id", "{err}");

    let err = build(ApnsConfig {
        key_id: Some(KEY_ID.into()),
        team_id: Some(TEAM_ID.into()),
        ..base()
    });
    assert_eq!(err.key, "providers.apns.key_file", "{err}");

    let dir = TempDir::new().unwrap();
    let err = build(ApnsConfig {
        key_file: Some(dir.path().join("missing.p8")),
        key_id: Some(KEY_ID.into()),
        team_id: Some(TEAM_ID.into()),
        ..base()
    });
    assert_eq!(err.key, "providers.apns.key_file", "{err}");
    assert!(err.message.contains("missing.p8"), "{err}");

    // A P-384 key is not an ES256 key.
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
        .unwrap()
        .serialize_pem();
    let err = build(ApnsConfig {
        key_file: Some(write(dir.path(), "p384.p8", p384)),
        key_id: Some(KEY_ID.into()),
        team_id: Some(TEAM_ID.into()),
        ..base()
    });
    assert_eq!(err.key, "providers.apns.key_file", "{err}");
    assert!(err.message.contains("P-256"), "{err}");

    let err = build(ApnsConfig {
        base_url: Some("http://api.push.apple.com".into()),
        ..base()
    });
    assert_eq!(err.key, "providers.apns.base_url");
    let err = build(ApnsConfig {
        pool_size: 0,
        ..base()
    });
    assert_eq!(err.key, "providers.apns.pool_size");
    let err = build(ApnsConfig {
        ca_file: Some(write(dir.path(), "notca.pem", "hello")),
        ..base()
    });
    assert_eq!(err.key, "providers.apns.ca_file");
    let err = build(ApnsConfig {
        cert_file: Some(dir.path().join("c.pem")),
        ..base()
    });
    assert_eq!(err.key, "providers.apns.private_key_file");
}

/// The commented example in etc/pushgate.toml names every key and, uncommented, parses.
#[test]
fn shipped_example_section_is_complete_and_parses() {
    let section = shipped_example("# [providers.\"tigase:messenger:apns:1\"]");
    let config = parse(&section).unwrap();
    let ProviderConfig::Apns(c) = config else {
        panic!("{config:?}")
    };
    assert_eq!(c.topic, "org.example.messenger");
    let table: toml::Table = toml::from_str(&section).unwrap();
    assert_documents_exactly(
        &table,
        &[
            "kind",
            "topic",
            "environment",
            "base_url",
            "ca_file",
            "key_file",
            "key_id",
            "team_id",
            "p12_file",
            "p12_password",
            "cert_file",
            "private_key_file",
            "pool_size",
            "ping_interval_secs",
            "request_timeout_secs",
            "expiration_secs",
            "voip_expiration_secs",
            "collapse_id",
            "max_body_chars",
        ],
    );
}
