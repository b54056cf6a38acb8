//! End-to-end tests of the FCM HTTP v1 provider against a local HTTP/2-over-TLS FCM and OAuth
//! token endpoint on 127.0.0.1: the message JSON of every kind of push, how every class of answer
//! maps onto a verdict, access-token reuse, renewal and single-flight refresh, connection reuse,
//! service-account checks and the configuration section.
//!
//! Service-account RSA keys are made with the `openssl` CLI (ring cannot generate RSA keys).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use pushgate_providers::fcm::{Fcm, FcmConfig};
use pushgate_providers::{
    Content, Device, Encrypted, Kind, Notification, Priority, Provider, ProviderConfig,
    RegistrationError, Verdict,
};
use pushgate_test_support::fcm::{AssertionCheck, MockFcm, Reply, SCOPE, Sent};
use pushgate_test_support::fixtures::{
    RsaKey, assert_documents_exactly, assert_held_back, content, fcm_token, openssl,
    shipped_example, write,
};
use pushgate_test_support::pki::Pki;
use tempfile::TempDir;

const PROJECT: &str = "pushgate-test-1234";
const KEY_ID: &str = "0123456789abcdef0123456789abcdef01234567";
const CLIENT_EMAIL: &str = "pushgate@pushgate-test-1234.iam.gserviceaccount.com";
const KEY: &str = "providers.fcm-http-v1";

/// An FCM-looking registration token.
fn token(n: u8) -> String {
    fcm_token(&format!("d{n:02}"), 140)
}

fn device(token: &str) -> Device {
    pushgate_test_support::fixtures::device("fcm-http-v1", token)
}

fn note(kind: Kind, priority: Priority, content: Content) -> Notification {
    Notification {
        content,
        ..Notification::new(kind, priority)
    }
}

fn alert() -> Notification {
    note(Kind::Alert, Priority::High, content())
}

fn generate_rsa_key() -> RsaKey {
    RsaKey::generate().unwrap()
}

/// Key generation takes a moment: one key (and one stranger's key) per test binary.
fn rsa_key() -> &'static RsaKey {
    static KEY: OnceLock<RsaKey> = OnceLock::new();
    KEY.get_or_init(generate_rsa_key)
}

fn other_rsa_key() -> &'static RsaKey {
    static KEY: OnceLock<RsaKey> = OnceLock::new();
    KEY.get_or_init(generate_rsa_key)
}

fn service_account_json(private_key: &str, token_uri: &str) -> String {
    serde_json::json!({
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": KEY_ID,
        "private_key": private_key,
        "client_email": CLIENT_EMAIL,
        "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/pushgate",
        "universe_domain": "googleapis.com",
    })
    .to_string()
}

/// A test setup: CA, server, service-account file in a temporary directory.
struct Setup {
    pki: Pki,
    server: MockFcm,
    dir: TempDir,
}

impl Setup {
    async fn new() -> Self {
        let key = rsa_key();
        let pki = Pki::new();
        let server = MockFcm::start(
            &pki,
            PROJECT,
            AssertionCheck {
                public_key_der: key.public_der.clone(),
                kid: KEY_ID.to_owned(),
                iss: CLIENT_EMAIL.to_owned(),
            },
        )
        .await;
        Self {
            pki,
            server,
            dir: TempDir::new().unwrap(),
        }
    }

    fn config_with_key(&self, key_pem: &str) -> FcmConfig {
        let sa = write(
            self.dir.path(),
            "service-account.json",
            service_account_json(key_pem, &self.server.token_uri()),
        );
        FcmConfig {
            base_url: self.server.base_url(),
            ca_file: Some(write(self.dir.path(), "ca.pem", &self.pki.ca_pem)),
            ..FcmConfig::new(sa)
        }
    }

    fn config(&self) -> FcmConfig {
        self.config_with_key(&rsa_key().pem)
    }

    fn provider(&self, config: &FcmConfig) -> Fcm {
        Fcm::new(KEY, config).unwrap()
    }
}

fn data(sent: &Sent) -> serde_json::Value {
    sent.json()["message"]["data"].clone()
}

fn assert_transient(v: &Verdict, retry_after: Option<Duration>, contains: &str) {
    match v {
        Verdict::Transient {
            retry_after: r,
            reason,
        } => {
            assert_eq!(*r, retry_after, "{v:?}");
            assert!(reason.contains(contains), "{reason}");
        }
        other => panic!("expected transient, got {other:?}"),
    }
}

// --- mapping ------------------------------------------------------------------------------------

#[tokio::test]
async fn alert_carries_all_data_keys_high_priority_and_ttl() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    let dev = device(&token(1));
    fcm.validate(&dev).unwrap();
    assert_eq!(fcm.send(&dev, &alert()).await, Verdict::Sent);

    let sent = s.server.only_send();
    assert_eq!(sent.version, http::Version::HTTP_2);
    assert_eq!(sent.path, format!("/v1/projects/{PROJECT}/messages:send"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert!(sent.bearer_valid, "{:?}", sent.bearer);
    assert_eq!(
        sent.json(),
        serde_json::json!({"message": {
            "token": token(1),
            "data": {
                "account": "juliet@capulet.example",
                "sender": "romeo@montague.example/phone",
                "body": "wherefore art thou",
                "unread-messages": "3",
                "nickname": "Romeo",
            },
            "android": {"priority": "high", "ttl": "86400s"},
        }})
    );

    // The one token request carried a valid assertion with the service account's claims.
    let requests = s.server.token_requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let t = &requests[0];
    assert!(t.error.is_none(), "{:?}", t.error);
    assert_eq!(
        t.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(
        t.grant_type.as_deref(),
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    );
    let header = t.header.as_ref().unwrap();
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], KEY_ID);
    let claims = t.claims.as_ref().unwrap();
    assert_eq!(claims["iss"], CLIENT_EMAIL);
    assert_eq!(claims["scope"], SCOPE);
    assert_eq!(claims["aud"], s.server.token_uri().as_str());
    assert_eq!(
        claims["exp"].as_u64().unwrap(),
        claims["iat"].as_u64().unwrap() + 3600
    );
}

#[tokio::test]
async fn background_is_normal_priority_with_the_configured_ttl() {
    let s = Setup::new().await;
    let fcm = s.provider(&FcmConfig {
        ttl_secs: 60,
        ..s.config()
    });
    let n = note(
        Kind::Background,
        Priority::Low,
        Content {
            account: Some("juliet@capulet.example".into()),
            message_count: Some(1),
            ..Content::default()
        },
    );
    assert_eq!(fcm.send(&device(&token(2)), &n).await, Verdict::Sent);
    let sent = s.server.only_send();
    assert_eq!(
        sent.json()["message"]["android"],
        serde_json::json!({"priority": "normal", "ttl": "60s"})
    );
    assert_eq!(
        data(&sent),
        serde_json::json!({"account": "juliet@capulet.example", "unread-messages": "1"})
    );
    assert!(sent.json()["message"].get("notification").is_none());
}

#[tokio::test]
async fn voip_and_high_background_are_high_priority() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    let voip = note(Kind::Voip, Priority::Normal, content());
    let urgent = note(Kind::Background, Priority::High, Content::default());
    assert_eq!(fcm.send(&device(&token(3)), &voip).await, Verdict::Sent);
    assert_eq!(fcm.send(&device(&token(4)), &urgent).await, Verdict::Sent);
    for t in [token(3), token(4)] {
        let sent = s.server.sends_for(&t);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].json()["message"]["android"]["priority"], "high");
    }
    // Nothing known: an empty data map, not absent keys with empty values.
    assert_eq!(
        data(&s.server.sends_for(&token(4))[0]),
        serde_json::json!({})
    );
}

/// A Conversations-style notification carries hashes only, and its collapse key reaches Android.
#[tokio::test]
async fn channel_and_collapse_key_reach_the_message() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    let mut n = note(
        Kind::Alert,
        Priority::High,
        Content {
            account: Some("a".repeat(40)),
            channel: Some("c".repeat(40)),
            ..Content::default()
        },
    );
    n.collapse_key = Some("cccccc".into());
    assert_eq!(fcm.send(&device(&token(9)), &n).await, Verdict::Sent);
    let sent = s.server.only_send();
    assert_eq!(
        data(&sent),
        serde_json::json!({"account": "a".repeat(40), "channel": "c".repeat(40)})
    );
    assert_eq!(sent.json()["message"]["android"]["collapse_key"], "cccccc");
}

#[tokio::test]
async fn clear_sends_zero_unread_and_no_content() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    let n = note(Kind::Clear, Priority::Low, content());
    assert_eq!(fcm.send(&device(&token(5)), &n).await, Verdict::Sent);
    let sent = s.server.only_send();
    assert_eq!(
        data(&sent),
        serde_json::json!({"account": "juliet@capulet.example", "unread-messages": "0"})
    );
    assert_eq!(sent.json()["message"]["android"]["priority"], "normal");
}

#[tokio::test]
async fn encrypted_payload_passes_through_without_plaintext() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    let mut n = alert();
    n.encrypted = Some(Encrypted {
        payload: "q83vEjRWeJA=".into(),
        iv: "AAECAwQFBgcICQoL".into(),
    });
    assert_eq!(fcm.send(&device(&token(6)), &n).await, Verdict::Sent);
    let sent = s.server.only_send();
    assert_eq!(
        data(&sent),
        serde_json::json!({
            "account": "juliet@capulet.example",
            "unread-messages": "3",
            "encrypted": "q83vEjRWeJA=",
            "iv": "AAECAwQFBgcICQoL",
        })
    );
    assert_eq!(sent.json()["message"]["android"]["priority"], "high");
}

#[tokio::test]
async fn long_body_is_cut_with_an_ellipsis() {
    let s = Setup::new().await;
    let fcm = s.provider(&FcmConfig {
        max_body_chars: 9,
        ..s.config()
    });
    assert_eq!(fcm.send(&device(&token(7)), &alert()).await, Verdict::Sent);
    assert_eq!(data(&s.server.only_send())["body"], "wherefore…");
}

#[tokio::test]
async fn oversize_payload_is_our_fault_without_a_request() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    let mut n = alert();
    n.encrypted = Some(Encrypted {
        payload: "A".repeat(5000),
        iv: "AAECAwQFBgcICQoL".into(),
    });
    let v = fcm.send(&device(&token(8)), &n).await;
    assert!(
        matches!(&v, Verdict::OurFault { reason } if reason.contains("4096")),
        "{v:?}"
    );
    assert!(s.server.sends().is_empty());
    assert!(s.server.token_requests().is_empty());
}

// --- verdicts -----------------------------------------------------------------------------------

#[tokio::test]
async fn dead_tokens() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    s.server.script(
        &token(10),
        vec![Reply::google(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
        )],
    );
    s.server.script(
        &token(11),
        vec![Reply::google(
            403,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            Some("SENDER_ID_MISMATCH"),
        )],
    );
    s.server.script(
        &token(12),
        vec![Reply::google(
            400,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            Some("INVALID_ARGUMENT"),
        )],
    );
    for (n, code) in [
        (10, "UNREGISTERED"),
        (11, "SENDER_ID_MISMATCH"),
        (12, "not a valid FCM registration token"),
    ] {
        let v = fcm.send(&device(&token(n)), &alert()).await;
        assert!(
            matches!(&v, Verdict::DeadToken { reason } if reason.contains(code)),
            "{n}: {v:?}"
        );
        assert_eq!(s.server.sends_for(&token(n)).len(), 1, "no retry for {n}");
    }
}

#[tokio::test]
async fn other_invalid_argument_is_our_fault_naming_the_field() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    let body = serde_json::json!({"error": {
        "code": 400,
        "message": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
        "status": "INVALID_ARGUMENT",
        "details": [{
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{
                "field": "message.data[0].value",
                "description": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
            }],
        }],
    }});
    s.server
        .script(&token(13), vec![Reply::status(400, &body.to_string())]);
    let v = fcm.send(&device(&token(13)), &alert()).await;
    assert!(
        matches!(&v, Verdict::OurFault { reason } if reason.contains("message.data[0].value") && reason.contains("INVALID_ARGUMENT")),
        "{v:?}"
    );
    assert_eq!(s.server.sends().len(), 1);
}

#[tokio::test]
async fn quota_exceeded_backs_off_at_least_a_minute_or_as_told() {
    let s = Setup::new().await;
    // A fresh provider per send: this test is about classification, not the backoff gate.
    let quota = || {
        Reply::google(
            429,
            "RESOURCE_EXHAUSTED",
            "Quota exceeded",
            Some("QUOTA_EXCEEDED"),
        )
    };
    s.server.script(
        &token(14),
        vec![quota(), quota().with_header("retry-after", "120")],
    );
    let v = s
        .provider(&s.config())
        .send(&device(&token(14)), &alert())
        .await;
    assert_transient(&v, Some(Duration::from_secs(60)), "QUOTA_EXCEEDED");
    let v = s
        .provider(&s.config())
        .send(&device(&token(14)), &alert())
        .await;
    assert_transient(&v, Some(Duration::from_secs(120)), "QUOTA_EXCEEDED");
}

/// After FCM asks to slow down, pushgate holds back instead of sending: a 429 holds that device
/// (others still go), a 5xx holds the whole service briefly; a success starts over.
#[tokio::test]
async fn slow_down_answers_hold_back_the_next_sends() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    let quota = Reply::google(
        429,
        "RESOURCE_EXHAUSTED",
        "Quota exceeded",
        Some("QUOTA_EXCEEDED"),
    );
    s.server.script(&token(30), vec![quota]);
    assert!(matches!(
        fcm.send(&device(&token(30)), &alert()).await,
        Verdict::Transient { .. }
    ));
    let held = fcm.send(&device(&token(30)), &alert()).await;
    assert_held_back(&held, Duration::from_secs(72));
    assert_eq!(
        s.server.sends().len(),
        1,
        "the held-back send never reached FCM"
    );
    assert_eq!(
        fcm.send(&device(&token(31)), &alert()).await,
        Verdict::Sent,
        "other devices go on"
    );

    // A 5xx holds every device for about a second, then sending resumes.
    s.server
        .script(&token(32), vec![Reply::status(503, "overloaded")]);
    assert!(matches!(
        fcm.send(&device(&token(32)), &alert()).await,
        Verdict::Transient { .. }
    ));
    let sends = s.server.sends().len();
    let held = fcm.send(&device(&token(33)), &alert()).await;
    assert_held_back(&held, Duration::from_secs(2));
    assert_eq!(s.server.sends().len(), sends);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(fcm.send(&device(&token(33)), &alert()).await, Verdict::Sent);
}

/// The attacks of issue 11: FCM (or a relay) answering `Retry-After: 1000000000`. A 429 holds
/// back that device only, and for at most an hour; other devices' sends go out.
#[tokio::test]
async fn a_huge_retry_after_holds_back_only_that_device_for_at_most_an_hour() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    let hour = Duration::from_secs(3600);
    s.server.script(
        &token(40),
        vec![
            Reply::google(
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded",
                Some("QUOTA_EXCEEDED"),
            )
            .with_header("retry-after", "1000000000"),
        ],
    );
    let v = fcm.send(&device(&token(40)), &alert()).await;
    assert_transient(&v, Some(hour), "QUOTA_EXCEEDED");
    assert_held_back(&fcm.send(&device(&token(40)), &alert()).await, hour);
    assert_eq!(s.server.sends_for(&token(40)).len(), 1, "held back");
    assert_eq!(fcm.send(&device(&token(41)), &alert()).await, Verdict::Sent);
    assert_eq!(
        s.server.sends_for(&token(41)).len(),
        1,
        "other devices go on"
    );
}

/// `Retry-After: 18446744073709551615` (2^64 − 1) once panicked a worker: now it is a transient
/// verdict asking for an hour. On a 429 that holds the device, on a 5xx the whole service
/// (FCM's own trouble), and on a 429 whose details say the project's quota is spent, too.
#[tokio::test]
async fn retry_after_of_u64_max_is_an_hour_and_holds_what_it_concerns() {
    let hour = Duration::from_secs(3600);
    let project_quota = serde_json::json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
        "message": "Quota exceeded for quota metric 'Send requests'",
        "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"subject": "project:1234", "description": "per-project quota"}]}]}})
    .to_string();
    for (reply, whole_service) in [
        (
            Reply::google(429, "RESOURCE_EXHAUSTED", "q", Some("QUOTA_EXCEEDED")),
            false,
        ),
        (Reply::status(503, "overloaded"), true),
        (Reply::status(429, &project_quota), true),
    ] {
        let s = Setup::new().await;
        let fcm = s.provider(&s.config());
        s.server.script(
            &token(42),
            vec![reply.with_header("retry-after", "18446744073709551615")],
        );
        let v = fcm.send(&device(&token(42)), &alert()).await;
        assert!(
            matches!(&v, Verdict::Transient { retry_after: Some(d), .. } if *d == hour),
            "{v:?}"
        );
        let other = fcm.send(&device(&token(43)), &alert()).await;
        if whole_service {
            assert!(
                matches!(&other, Verdict::Transient { retry_after: Some(left), reason }
                    if *left <= hour && reason.contains("holding back")),
                "{other:?}"
            );
            assert!(s.server.sends_for(&token(43)).is_empty());
        } else {
            assert_eq!(other, Verdict::Sent);
        }
    }
}

#[tokio::test]
async fn server_errors_are_transient_and_honour_retry_after() {
    let s = Setup::new().await;
    // A fresh provider per send: this test is about classification, not the backoff gate.
    s.server.script(
        &token(15),
        vec![
            Reply::google(500, "INTERNAL", "Internal error", Some("INTERNAL"))
                .with_header("retry-after", "30"),
            Reply::google(503, "UNAVAILABLE", "Unavailable", Some("UNAVAILABLE"))
                .with_header("retry-after", "5"),
            Reply::status(503, "overloaded"),
        ],
    );
    let v = s
        .provider(&s.config())
        .send(&device(&token(15)), &alert())
        .await;
    assert_transient(&v, Some(Duration::from_secs(30)), "500 INTERNAL");
    let v = s
        .provider(&s.config())
        .send(&device(&token(15)), &alert())
        .await;
    assert_transient(&v, Some(Duration::from_secs(5)), "503 UNAVAILABLE");
    let v = s
        .provider(&s.config())
        .send(&device(&token(15)), &alert())
        .await;
    assert_transient(&v, None, "503");
}

#[tokio::test]
async fn unauthenticated_refreshes_the_token_once_and_retries() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    assert_eq!(fcm.send(&device(&token(16)), &alert()).await, Verdict::Sent);
    assert_eq!(s.server.token_requests().len(), 1);

    // Google stops accepting the cached token: one refresh, one retry, delivered.
    s.server.revoke_access_tokens();
    assert_eq!(fcm.send(&device(&token(16)), &alert()).await, Verdict::Sent);
    assert_eq!(s.server.token_requests().len(), 2);
    let sends = s.server.sends_for(&token(16));
    assert_eq!(sends.len(), 3);
    assert!(!sends[1].bearer_valid);
    assert!(sends[2].bearer_valid);
    assert_ne!(sends[1].bearer, sends[2].bearer);

    // Still 401 with the fresh token: transient (credentials trouble), no third attempt.
    let unauth = || {
        Reply::google(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            None,
        )
    };
    s.server.script(&token(17), vec![unauth(), unauth()]);
    let v = fcm.send(&device(&token(17)), &alert()).await;
    assert_transient(&v, None, "401");
    assert_eq!(s.server.sends_for(&token(17)).len(), 2);
    assert_eq!(s.server.token_requests().len(), 3);
}

#[tokio::test]
async fn permission_problems_are_transient_and_keep_the_device() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    s.server.script(
        &token(18),
        vec![
            Reply::google(
                403,
                "PERMISSION_DENIED",
                "Permission 'cloudmessaging.messages.create' denied",
                None,
            ),
            Reply::google(
                401,
                "UNAUTHENTICATED",
                "Auth error from APNS or Web Push Service",
                Some("THIRD_PARTY_AUTH_ERROR"),
            ),
        ],
    );
    let v = fcm.send(&device(&token(18)), &alert()).await;
    assert_transient(&v, None, "PERMISSION_DENIED");
    let v = fcm.send(&device(&token(18)), &alert()).await;
    assert_transient(&v, None, "THIRD_PARTY_AUTH_ERROR");
    // THIRD_PARTY_AUTH_ERROR is not about the access token: no refresh.
    assert_eq!(s.server.token_requests().len(), 1);
    assert_eq!(s.server.sends_for(&token(18)).len(), 2);
}

#[tokio::test]
async fn unknown_answers_are_classed_by_status() {
    let s = Setup::new().await;
    // A fresh provider per send: this test is about classification, not the backoff gate.
    s.server.script(
        &token(19),
        vec![
            Reply::status(418, "I'm a teapot"),
            Reply::google(502, "UNKNOWN", "Bad gateway", Some("UNSPECIFIED_ERROR")),
            Reply::status(404, "<html>Not Found</html>"),
        ],
    );
    let v = s
        .provider(&s.config())
        .send(&device(&token(19)), &alert())
        .await;
    assert!(
        matches!(&v, Verdict::OurFault { reason } if reason.contains("418")),
        "{v:?}"
    );
    let v = s
        .provider(&s.config())
        .send(&device(&token(19)), &alert())
        .await;
    assert_transient(&v, None, "UNSPECIFIED_ERROR");
    // A 404 that is not Google's error object: a wrong base_url, not a dead device.
    let v = s
        .provider(&s.config())
        .send(&device(&token(19)), &alert())
        .await;
    assert!(
        matches!(&v, Verdict::OurFault { reason } if reason.contains("base_url")),
        "{v:?}"
    );
}

#[tokio::test]
async fn unreachable_and_silent_fcm_are_transient() {
    let s = Setup::new().await;
    let fcm = s.provider(&FcmConfig {
        request_timeout_secs: 1,
        ..s.config()
    });
    s.server.script(&token(20), vec![Reply::Hold]);
    let started = Instant::now();
    let v = fcm.send(&device(&token(20)), &alert()).await;
    assert_transient(&v, None, "within 1 s");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let fcm = s.provider(&FcmConfig {
        base_url: format!("https://127.0.0.1:{port}"),
        ..s.config()
    });
    let v = fcm.send(&device(&token(21)), &alert()).await;
    assert!(
        matches!(&v, Verdict::Transient { reason, .. } if reason.contains("connect")),
        "{v:?}"
    );
}

// --- access tokens and connections --------------------------------------------------------------

#[tokio::test]
async fn access_token_is_reused_across_sends_on_one_connection() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    for i in 0..20 {
        assert_eq!(fcm.send(&device(&token(i)), &alert()).await, Verdict::Sent);
    }
    assert_eq!(s.server.token_requests().len(), 1);
    let sends = s.server.sends();
    assert_eq!(sends.len(), 20);
    assert!(sends.iter().all(|r| r.bearer == sends[0].bearer));
    assert!(sends.iter().all(|r| r.connection == sends[0].connection));
    // One connection to the token endpoint, one for the sends.
    assert_eq!(s.server.connections(), 2);
}

#[tokio::test]
async fn concurrent_sends_share_one_token_request_and_one_connection() {
    let s = Setup::new().await;
    s.server.set_token_delay(Duration::from_millis(300));
    let fcm = Arc::new(s.provider(&s.config()));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let fcm = fcm.clone();
        tasks.spawn(async move { fcm.send(&device(&token(i)), &alert()).await });
    }
    while let Some(v) = tasks.join_next().await {
        assert_eq!(v.unwrap(), Verdict::Sent);
    }
    assert_eq!(s.server.token_requests().len(), 1);
    assert_eq!(s.server.sends().len(), 20);
    assert_eq!(s.server.connections(), 2);

    // A failed refresh is shared too: those waiting for it do not each try again.
    s.server.fail_token_requests(500);
    let fcm = Arc::new(s.provider(&s.config()));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let fcm = fcm.clone();
        tasks.spawn(async move { fcm.send(&device(&token(i)), &alert()).await });
    }
    while let Some(v) = tasks.join_next().await {
        assert_transient(&v.unwrap(), None, "500");
    }
    assert_eq!(s.server.token_requests().len(), 2);
    assert_eq!(s.server.sends().len(), 20);
}

#[tokio::test]
async fn access_token_is_renewed_five_minutes_before_expiry() {
    let s = Setup::new().await;
    // Google's usual answer: 3599 s, so the token is renewed after 3299 s.
    let fcm = s.provider(&s.config());
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
    assert_eq!(s.server.token_requests().len(), 1);
    fcm.backdate_access_token(Duration::from_secs(3299 - 30))
        .await;
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
    assert_eq!(s.server.token_requests().len(), 1, "30 s before renewal");
    fcm.backdate_access_token(Duration::from_secs(31)).await;
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
    assert_eq!(s.server.token_requests().len(), 2);
    let sends = s.server.sends();
    assert_eq!(sends[0].bearer, sends[2].bearer);
    assert_ne!(sends[2].bearer, sends[3].bearer);

    // A token that expires within the margin is still used for a minute, not fetched per send.
    s.server.set_expires_in(300);
    let fcm = s.provider(&s.config());
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
    assert_eq!(s.server.token_requests().len(), 3);
    fcm.backdate_access_token(Duration::from_secs(61)).await;
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
    assert_eq!(s.server.token_requests().len(), 4);
}

/// A token endpoint answering `expires_in` 2^64 − 1 once panicked a worker. Whatever it says
/// (huge, zero, negative, not a number, nothing), the send completes, one token serves several
/// sends, and none is kept longer than 55 minutes.
#[tokio::test]
async fn any_expires_in_neither_panics_nor_refreshes_per_send_nor_lasts_forever() {
    let s = Setup::new().await;
    let mut fetched = 0;
    for expires_in in [
        serde_json::json!(u64::MAX),
        serde_json::json!(1e300),
        serde_json::json!(0),
        serde_json::json!(-5),
        serde_json::json!("abc"),
        serde_json::json!(null),
    ] {
        s.server.set_expires_in(expires_in.clone());
        let fcm = s.provider(&s.config());
        for _ in 0..3 {
            assert_eq!(
                fcm.send(&device(&token(2)), &alert()).await,
                Verdict::Sent,
                "expires_in {expires_in}"
            );
        }
        fetched += 1;
        assert_eq!(
            s.server.token_requests().len(),
            fetched,
            "one token for three sends: expires_in {expires_in}"
        );
        fcm.backdate_access_token(Duration::from_secs(55 * 60 + 1))
            .await;
        assert_eq!(fcm.send(&device(&token(2)), &alert()).await, Verdict::Sent);
        fetched += 1;
        assert_eq!(
            s.server.token_requests().len(),
            fetched,
            "renewed within 55 minutes: expires_in {expires_in}"
        );
    }
}

#[tokio::test]
async fn token_endpoint_failures_are_transient_and_nothing_is_sent() {
    let s = Setup::new().await;
    // Signed with a key the token endpoint does not know.
    let fcm = s.provider(&s.config_with_key(&other_rsa_key().pem));
    let v = fcm.send(&device(&token(1)), &alert()).await;
    assert_transient(&v, None, "invalid_grant");
    let requests = s.server.token_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].error.as_deref(),
        Some("signature does not verify")
    );
    assert!(s.server.sends().is_empty());

    // The right key, but the endpoint is down.
    let fcm = s.provider(&s.config());
    s.server.fail_token_requests(503);
    let v = fcm.send(&device(&token(1)), &alert()).await;
    assert_transient(&v, None, "503");
    assert!(s.server.sends().is_empty());
    // Back up: the next delivery fetches a token and goes out.
    s.server.fail_token_requests(0);
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
}

// --- registration, service account and configuration --------------------------------------------

#[tokio::test]
async fn validate_refuses_empty_long_and_spaced_tokens() {
    let s = Setup::new().await;
    let fcm = s.provider(&s.config());
    assert!(fcm.validate(&device(&token(1))).is_ok());
    for bad in [
        String::new(),
        "a".repeat(4097),
        "abc def".to_owned(),
        "abc\ndef".to_owned(),
        "abc\u{0}".to_owned(),
    ] {
        assert!(
            matches!(
                fcm.validate(&device(&bad)),
                Err(RegistrationError::InvalidToken(_))
            ),
            "{bad:?}"
        );
    }
    // A stored token that could never work is dead without asking FCM.
    let v = fcm.send(&device("a b"), &alert()).await;
    assert!(matches!(v, Verdict::DeadToken { .. }), "{v:?}");
    assert!(s.server.sends().is_empty());
}

#[test]
fn service_account_errors_name_the_key() {
    let dir = TempDir::new().unwrap();
    let build = |path: PathBuf| Fcm::new(KEY, &FcmConfig::new(path)).unwrap_err();
    let sa_key = format!("{KEY}.service_account_file");

    let err = build(dir.path().join("missing.json"));
    assert_eq!(err.key, sa_key, "{err}");
    assert!(err.message.contains("missing.json"), "{err}");

    let err = build(write(dir.path(), "bad.json", "{ not json"));
    assert_eq!(err.key, sa_key, "{err}");
    assert!(err.message.contains("not a service-account JSON"), "{err}");

    // A JSON file without the key.
    let err = build(write(
        dir.path(),
        "partial.json",
        r#"{"type":"service_account","project_id":"p"}"#,
    ));
    assert_eq!(err.key, sa_key, "{err}");
    assert!(err.message.contains("private_key"), "{err}");

    // A P-256 key is not an RSA key.
    let ec = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let err = build(write(
        dir.path(),
        "ec.json",
        service_account_json(&ec, "https://oauth2.googleapis.com/token"),
    ));
    assert_eq!(err.key, sa_key, "{err}");
    assert!(err.message.contains("RSA"), "{err}");
    assert!(
        !err.message.contains("PRIVATE KEY"),
        "the key leaked: {err}"
    );

    // A traditional (PKCS#1) RSA key is not PKCS#8.
    let pkcs1_path = write(dir.path(), "pkcs8.pem", &rsa_key().pem);
    let pkcs1 = String::from_utf8(
        openssl(&["rsa", "-in", pkcs1_path.to_str().unwrap(), "-traditional"]).unwrap(),
    )
    .unwrap();
    assert!(pkcs1.contains("BEGIN RSA PRIVATE KEY"));
    let err = build(write(
        dir.path(),
        "pkcs1.json",
        service_account_json(&pkcs1, "https://oauth2.googleapis.com/token"),
    ));
    assert_eq!(err.key, sa_key, "{err}");
    assert!(err.message.contains("PKCS#8"), "{err}");

    // Plain http to a public host would send the assertion in clear.
    let err = build(write(
        dir.path(),
        "http.json",
        service_account_json(&rsa_key().pem, "http://oauth2.googleapis.com/token"),
    ));
    assert_eq!(err.key, sa_key, "{err}");
    assert!(err.message.contains("token_uri"), "{err}");

    // And a good one builds.
    let good = write(
        dir.path(),
        "good.json",
        service_account_json(&rsa_key().pem, "https://oauth2.googleapis.com/token"),
    );
    assert!(Fcm::new(KEY, &FcmConfig::new(good)).is_ok());
}

fn parse(toml_text: &str) -> Result<ProviderConfig, String> {
    toml::from_str::<ProviderConfig>(toml_text).map_err(|e| e.to_string())
}

#[test]
fn config_section_parses_with_defaults_builds_and_names_bad_keys() {
    let dir = TempDir::new().unwrap();
    let sa = write(
        dir.path(),
        "sa.json",
        service_account_json(&rsa_key().pem, "https://oauth2.googleapis.com/token"),
    );
    let config = parse(&format!(
        "kind = \"fcm\"\nservice_account_file = {:?}\n",
        sa.to_str().unwrap()
    ))
    .unwrap();
    let ProviderConfig::Fcm(c) = &config else {
        panic!("{config:?}")
    };
    assert_eq!(c.base_url, "https://fcm.googleapis.com");
    assert_eq!(c.ca_file, None);
    assert_eq!(c.ttl_secs, 86_400);
    assert_eq!(c.max_body_chars, 500);
    assert_eq!(c.request_timeout_secs, 8);
    let provider = pushgate_providers::build(KEY, &config).unwrap();
    // The built provider applies FCM's token rules.
    assert!(provider.as_apns().is_none());
    assert!(provider.validate(&device(&token(1))).is_ok());
    assert!(provider.validate(&device("a b")).is_err());

    let err = parse("kind = \"fcm\"\nservice_account_file = \"x\"\nttl = 5\n").unwrap_err();
    assert!(err.contains("ttl"), "{err}");
    let err = parse("kind = \"fcm\"\n").unwrap_err();
    assert!(err.contains("service_account_file"), "{err}");

    let build = |c: FcmConfig| Fcm::new(KEY, &c).unwrap_err();
    let base = || FcmConfig::new(&sa);
    let err = build(FcmConfig {
        base_url: "http://fcm.googleapis.com".into(),
        ..base()
    });
    assert_eq!(err.key, format!("{KEY}.base_url"));
    let err = build(FcmConfig {
        ttl_secs: 29 * 86_400,
        ..base()
    });
    assert_eq!(err.key, format!("{KEY}.ttl_secs"));
    let err = build(FcmConfig {
        request_timeout_secs: 0,
        ..base()
    });
    assert_eq!(err.key, format!("{KEY}.request_timeout_secs"));
    let err = build(FcmConfig {
        ca_file: Some(write(dir.path(), "notca.pem", "hello")),
        ..base()
    });
    assert_eq!(err.key, format!("{KEY}.ca_file"));
    let options: toml::Table = toml::from_str("android = { ttl = \"5s\" }").unwrap();
    let err = build(FcmConfig {
        message_options: serde_json::to_value(options)
            .unwrap()
            .as_object()
            .unwrap()
            .clone(),
        ..base()
    });
    assert_eq!(err.key, format!("{KEY}.message_options.android.ttl"));
}

/// The commented example in etc/pushgate.toml names every key and, uncommented, parses.
#[test]
fn shipped_example_section_is_complete_and_parses() {
    let section = shipped_example("# [providers.\"fcm-http-v1\"]");
    let config = parse(&section).unwrap();
    let ProviderConfig::Fcm(c) = config else {
        panic!("{config:?}")
    };
    assert_eq!(c.ttl_secs, 86_400);
    let table: toml::Table = toml::from_str(&section).unwrap();
    assert_documents_exactly(
        &table,
        &[
            "kind",
            "service_account_file",
            "base_url",
            "ca_file",
            "ttl_secs",
            "max_body_chars",
            "request_timeout_secs",
            "message_options",
        ],
    );
}
