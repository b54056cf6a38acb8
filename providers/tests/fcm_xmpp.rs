//! End-to-end tests of the LEGACY FCM XMPP (CCS) provider — Google shut CCS down in 2024; the
//! provider is kept for CCS-compatible servers — against a local CCS on 127.0.0.1 (ccs_server):
//! the handshake and the downstream JSON, how acks, nacks and stanza errors map onto verdicts,
//! timeouts, receipts, flow control, draining, reconnection and the configuration section.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pushgate_providers::fcm_xmpp::{FcmXmpp, FcmXmppConfig};
use pushgate_providers::{
    Content, Device, Encrypted, Kind, Notification, Priority, Provider, ProviderConfig,
    RegistrationError, Verdict,
};
use pushgate_test_support::ccs::{MockCcs, Reply, Script, always};
use pushgate_test_support::fixtures::{
    assert_documents_exactly, content, fcm_token, shipped_config, shipped_example,
};
use pushgate_test_support::pki::Pki;
use serde_json::{Value, json};
use tempfile::TempDir;

const SENDER: &str = "123456789012";
const KEY_VALUE: &str = "AAAAserverkey:APA91bTest";
const KEY: &str = "providers.fcm-xmpp-api";

fn token(n: u32) -> String {
    fcm_token(&format!("t{n:03}"), 100)
}

fn device(token: &str) -> Device {
    pushgate_test_support::fixtures::device("fcm-xmpp-api", token)
}

fn alert() -> Notification {
    Notification {
        content: content(),
        ..Notification::new(Kind::Alert, Priority::High)
    }
}

fn background() -> Notification {
    Notification {
        content: Content {
            account: Some("juliet@capulet.example".into()),
            message_count: Some(1),
            ..Default::default()
        },
        ..Notification::new(Kind::Background, Priority::Low)
    }
}

/// A CCS mock, a CA file for it and a configuration pointing at both.
struct Setup {
    mock: MockCcs,
    config: FcmXmppConfig,
    _dir: TempDir,
}

impl Setup {
    async fn new(server_key: &str, script: Script) -> Self {
        let pki = Pki::new();
        let mock = MockCcs::start(&pki, SENDER, server_key, script).await;
        let dir = TempDir::new().unwrap();
        let ca: PathBuf = dir.path().join("ca.pem");
        std::fs::write(&ca, &pki.ca_pem).unwrap();
        let mut config = FcmXmppConfig::new(SENDER, KEY_VALUE);
        config.server = mock.server();
        config.ca_file = Some(ca);
        config.request_timeout_secs = 3;
        Self {
            mock,
            config,
            _dir: dir,
        }
    }

    fn provider(&self) -> Arc<FcmXmpp> {
        Arc::new(FcmXmpp::new(KEY, &self.config).unwrap())
    }
}

/// `n` background sends at once, to devices 0 to n-1.
fn spawn_background_sends(fcm: &Arc<FcmXmpp>, n: u32) -> Vec<tokio::task::JoinHandle<Verdict>> {
    (0..n)
        .map(|n| {
            let fcm = Arc::clone(fcm);
            tokio::spawn(async move { fcm.send(&device(&token(n)), &background()).await })
        })
        .collect()
}

/// A script answering by device token.
fn by_token(replies: Vec<(String, Reply)>) -> Script {
    Arc::new(move |_, json: &Value| {
        replies
            .iter()
            .find(|(t, _)| json["to"] == t.as_str())
            .map_or(Reply::Ack, |(_, r)| r.clone())
    })
}

#[tokio::test]
async fn handshake_and_ack_deliver_the_tigase_data() {
    let s = Setup::new(KEY_VALUE, always(Reply::Ack)).await;
    let fcm = s.provider();
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
    assert_eq!(
        fcm.send(&device(&token(2)), &background()).await,
        Verdict::Sent
    );

    assert_eq!(s.mock.connections(), 1, "the connection is kept");
    s.mock.with(|c| {
        assert!(c[0].authenticated);
        assert_eq!(
            c[0].authcid.as_deref(),
            Some("123456789012@fcm.googleapis.com")
        );
        assert_eq!(c[0].stream_to.as_deref(), Some("fcm.googleapis.com"));
    });
    let m = s.mock.all_messages();
    assert_eq!(m.len(), 2);
    assert_eq!(m[0]["to"], token(1));
    assert_eq!(m[0]["priority"], "high");
    assert_eq!(m[0]["time_to_live"], 86_400);
    assert_eq!(
        m[0]["data"],
        json!({
            "account": "juliet@capulet.example",
            "sender": "romeo@montague.example/phone",
            "body": "wherefore art thou",
            "unread-messages": "3",
            "nickname": "Romeo",
        })
    );
    assert_eq!(m[1]["to"], token(2));
    assert_eq!(m[1]["priority"], "normal");
    assert_eq!(
        m[1]["data"],
        json!({"account": "juliet@capulet.example", "unread-messages": "1"})
    );
    let (a, b) = (
        m[0]["message_id"].as_str().unwrap(),
        m[1]["message_id"].as_str().unwrap(),
    );
    assert!(!a.is_empty() && a != b, "{a} {b}");
    for msg in &m {
        let keys: Vec<&String> = msg.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 5, "{msg}");
    }
}

/// CCS gets the FCM v1 mapping's data, so app data and the badge reach it by the same rule.
#[tokio::test]
async fn app_data_and_badge_reach_ccs_as_fcm_data() {
    let s = Setup::new(KEY_VALUE, always(Reply::Ack)).await;
    let fcm = s.provider();
    let Value::Object(data) = json!({"room_id": "!r:hs", "unread_count": 2, "from": "x"}) else {
        unreachable!()
    };
    let n = Notification {
        data,
        badge: Some(2),
        ..background()
    };
    assert_eq!(fcm.send(&device(&token(1)), &n).await, Verdict::Sent);
    let m = s.mock.all_messages();
    assert_eq!(
        m[0]["data"],
        json!({
            "room_id": "!r:hs",
            "unread_count": "2",
            "account": "juliet@capulet.example",
            "unread-messages": "1",
            "badge": "2",
        })
    );
}

#[tokio::test]
async fn wrong_server_key_is_transient() {
    let s = Setup::new("another key", always(Reply::Ack)).await;
    let fcm = s.provider();
    let v = fcm.send(&device(&token(1)), &alert()).await;
    assert!(
        matches!(&v, Verdict::Transient { reason, .. } if reason.contains("credentials")),
        "{v:?}"
    );
    s.mock.with(|c| {
        assert_eq!(c.len(), 1);
        assert!(!c[0].authenticated);
        assert!(c[0].messages.is_empty());
    });
}

#[tokio::test]
async fn nacks_and_stanza_errors_map_onto_verdicts() {
    let cases = [
        (1, Reply::Nack("BAD_REGISTRATION"), "dead_token"),
        (2, Reply::Nack("DEVICE_UNREGISTERED"), "dead_token"),
        (3, Reply::Nack("SERVICE_UNAVAILABLE"), "transient"),
        (4, Reply::Nack("DEVICE_MESSAGE_RATE_EXCEEDED"), "transient"),
        (5, Reply::Nack("SOMETHING_NEW"), "transient"),
        (6, Reply::Nack("INVALID_JSON"), "our_fault"),
        (7, Reply::Nack("BAD_ACK"), "our_fault"),
        (8, Reply::StanzaError("bad-request"), "our_fault"),
        (9, Reply::StanzaError("service-unavailable"), "transient"),
        (10, Reply::Ack, "sent"),
    ];
    let script = by_token(
        cases
            .iter()
            .map(|(n, r, _)| (token(*n), r.clone()))
            .collect(),
    );
    let s = Setup::new(KEY_VALUE, script).await;
    let fcm = s.provider();
    for (n, reply, label) in &cases {
        let v = fcm.send(&device(&token(*n)), &alert()).await;
        assert_eq!(v.label(), *label, "{reply:?} → {v:?}");
        if let Reply::Nack(code) = reply
            && *label != "sent"
        {
            let reason = match &v {
                Verdict::DeadToken { reason }
                | Verdict::OurFault { reason }
                | Verdict::Transient { reason, .. } => reason,
                Verdict::Sent => unreachable!(),
            };
            assert!(reason.contains(code), "{reason}");
        }
    }
    assert_eq!(s.mock.connections(), 1, "nacks do not cost the connection");
}

#[tokio::test]
async fn no_answer_is_transient_after_the_timeout() {
    let mut s = Setup::new(KEY_VALUE, always(Reply::Withhold)).await;
    s.config.request_timeout_secs = 1;
    let fcm = s.provider();
    let start = Instant::now();
    let v = fcm.send(&device(&token(1)), &alert()).await;
    let took = start.elapsed();
    assert!(matches!(v, Verdict::Transient { .. }), "{v:?}");
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(s.mock.all_messages().len(), 1);
}

#[tokio::test]
async fn receipts_and_upstream_messages_are_acked() {
    let s = Setup::new(KEY_VALUE, always(Reply::Ack)).await;
    let fcm = s.provider();
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
    s.mock.push_json(
        0,
        &json!({
            "message_type": "receipt", "message_id": "dr2:m-1", "from": "gcm.googleapis.com",
            "category": "com.example", "data": {"message_status": "MESSAGE_SENT_TO_DEVICE",
            "original_message_id": "m-1", "device_registration_id": token(1)}
        }),
    );
    s.mock.push_json(
        0,
        &json!({"message_id": "up-7", "from": token(3), "category": "com.example", "data": {"hello": "world"}}),
    );
    s.mock
        .wait_until("both are acked", |c| c[0].client_acks.len() == 2)
        .await;
    s.mock.with(|c| {
        assert_eq!(
            c[0].client_acks[0],
            json!({"to": "gcm.googleapis.com", "message_id": "dr2:m-1", "message_type": "ack"})
        );
        assert_eq!(
            c[0].client_acks[1],
            json!({"to": token(3), "message_id": "up-7", "message_type": "ack"})
        );
    });
    // The connection still works.
    assert_eq!(fcm.send(&device(&token(2)), &alert()).await, Verdict::Sent);
}

#[tokio::test]
async fn one_connection_never_has_more_than_100_unacknowledged() {
    let mut s = Setup::new(KEY_VALUE, always(Reply::Withhold)).await;
    s.config.pool_size = 1;
    s.config.request_timeout_secs = 2;
    let fcm = s.provider();
    let sends = spawn_background_sends(&fcm, 101);
    for send in sends {
        let v = send.await.unwrap();
        assert!(matches!(v, Verdict::Transient { .. }), "{v:?}");
    }
    s.mock.with(|c| {
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].messages.len(), 100, "the 101st waited for capacity");
        assert_eq!(c[0].max_outstanding, 100);
    });
    // Capacity returns with the acks, even for sends that gave up.
    s.mock.release(0);
    s.mock
        .wait_until("acks are out", |c| c[0].outstanding == 0)
        .await;
    let fcm2 = Arc::clone(&fcm);
    let late = tokio::spawn(async move { fcm2.send(&device(&token(500)), &alert()).await });
    s.mock
        .wait_until("the late message arrives", |c| c[0].messages.len() == 101)
        .await;
    s.mock.release(0);
    assert_eq!(late.await.unwrap(), Verdict::Sent);
}

#[tokio::test]
async fn a_full_connection_spills_onto_a_second_one() {
    let mut s = Setup::new(KEY_VALUE, always(Reply::Withhold)).await;
    s.config.pool_size = 2;
    s.config.request_timeout_secs = 10;
    let fcm = s.provider();
    let sends = spawn_background_sends(&fcm, 150);
    s.mock
        .wait_until("150 messages arrive", |c| {
            c.iter().map(|r| r.messages.len()).sum::<usize>() == 150
        })
        .await;
    s.mock.with(|c| {
        assert_eq!(c.len(), 2);
        for r in c {
            assert!(r.max_outstanding <= 100, "{}", r.max_outstanding);
        }
    });
    s.mock.release(0);
    s.mock.release(1);
    for send in sends {
        assert_eq!(send.await.unwrap(), Verdict::Sent);
    }
}

#[tokio::test]
async fn connection_draining_moves_new_sends_to_a_new_connection() {
    let held = token(1);
    let script = by_token(vec![(held.clone(), Reply::Withhold)]);
    let s = Setup::new(KEY_VALUE, script).await;
    let fcm = s.provider();
    let fcm2 = Arc::clone(&fcm);
    let outstanding = tokio::spawn(async move { fcm2.send(&device(&held), &alert()).await });
    s.mock
        .wait_until("the held message arrives", |c| {
            c.len() == 1 && c[0].messages.len() == 1
        })
        .await;
    s.mock.push_json(
        0,
        &json!({"message_type": "control", "control_type": "CONNECTION_DRAINING"}),
    );
    // The client reads stanzas in order: once it acks this upstream message, it has seen the
    // control message.
    s.mock.push_json(
        0,
        &json!({"message_id": "up-1", "from": token(9), "data": {}}),
    );
    s.mock
        .wait_until("the client acks", |c| c[0].client_acks.len() == 1)
        .await;
    assert_eq!(fcm.send(&device(&token(2)), &alert()).await, Verdict::Sent);
    assert_eq!(fcm.send(&device(&token(3)), &alert()).await, Verdict::Sent);
    s.mock.with(|c| {
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[0].messages.len(),
            1,
            "no new sends on the draining connection"
        );
        assert_eq!(c[1].messages.len(), 2);
        assert!(!c[0].closed);
    });
    s.mock.release(0);
    assert_eq!(
        outstanding.await.unwrap(),
        Verdict::Sent,
        "the old connection still acks"
    );
}

#[tokio::test]
async fn a_connection_draining_nack_is_resent_on_another_connection() {
    let script: Script = Arc::new(|conn, _| {
        if conn == 0 {
            Reply::Nack("CONNECTION_DRAINING")
        } else {
            Reply::Ack
        }
    });
    let s = Setup::new(KEY_VALUE, script).await;
    let fcm = s.provider();
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
    s.mock.with(|c| {
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].messages.len(), 1);
        assert_eq!(c[1].messages.len(), 1);
        assert_eq!(c[1].messages[0]["to"], token(1));
        assert_ne!(
            c[0].messages[0]["message_id"],
            c[1].messages[0]["message_id"]
        );
    });
}

#[tokio::test]
async fn a_closed_connection_fails_its_sends_and_the_next_send_reconnects() {
    let held = token(1);
    let script = by_token(vec![(held.clone(), Reply::Withhold)]);
    let s = Setup::new(KEY_VALUE, script).await;
    let fcm = s.provider();
    assert_eq!(fcm.send(&device(&token(2)), &alert()).await, Verdict::Sent);
    let fcm2 = Arc::clone(&fcm);
    let outstanding = tokio::spawn(async move { fcm2.send(&device(&held), &alert()).await });
    s.mock
        .wait_until("the held message arrives", |c| c[0].messages.len() == 2)
        .await;
    let start = Instant::now();
    s.mock.close(0);
    let v = outstanding.await.unwrap();
    assert!(
        matches!(&v, Verdict::Transient { reason, .. } if reason.contains("lost")),
        "{v:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(2), "not a timeout");
    assert_eq!(fcm.send(&device(&token(3)), &alert()).await, Verdict::Sent);
    s.mock.with(|c| {
        assert_eq!(c.len(), 2);
        assert!(c[0].closed);
        assert_eq!(c[1].messages[0]["to"], token(3));
    });
}

#[tokio::test]
async fn a_silent_connection_with_unanswered_messages_is_replaced() {
    let script: Script = Arc::new(|conn, _| {
        if conn == 0 {
            Reply::Withhold
        } else {
            Reply::Ack
        }
    });
    let mut s = Setup::new(KEY_VALUE, script).await;
    s.config.pool_size = 1;
    s.config.request_timeout_secs = 1;
    let fcm = s.provider();
    let v = fcm.send(&device(&token(1)), &alert()).await;
    assert!(matches!(v, Verdict::Transient { .. }), "{v:?}");
    // Silent for over two request timeouts since the message went out (before the send ended).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(fcm.send(&device(&token(2)), &alert()).await, Verdict::Sent);
    s.mock
        .wait_until("the silent connection is closed", |c| {
            c.len() == 2 && c[0].closed
        })
        .await;
    s.mock
        .with(|c| assert_eq!(c[1].messages[0]["to"], token(2)));
}

#[tokio::test]
async fn dropping_the_provider_closes_its_connections() {
    let s = Setup::new(KEY_VALUE, always(Reply::Ack)).await;
    let fcm = s.provider();
    assert_eq!(fcm.send(&device(&token(1)), &alert()).await, Verdict::Sent);
    assert!(s.mock.with(|c| !c[0].closed));
    drop(fcm);
    s.mock
        .wait_until("the connection is closed", |c| c[0].closed)
        .await;
}

#[tokio::test]
async fn oversize_payloads_and_bad_tokens_never_reach_ccs() {
    let s = Setup::new(KEY_VALUE, always(Reply::Ack)).await;
    let fcm = s.provider();
    let mut n = alert();
    n.encrypted = Some(Encrypted {
        payload: "A".repeat(5000),
        iv: "aXY=".into(),
    });
    let v = fcm.send(&device(&token(1)), &n).await;
    assert!(
        matches!(&v, Verdict::OurFault { reason } if reason.contains("4096")),
        "{v:?}"
    );
    let v = fcm.send(&device("a b"), &alert()).await;
    assert!(matches!(v, Verdict::DeadToken { .. }), "{v:?}");
    assert_eq!(s.mock.connections(), 0, "connections are opened lazily");

    assert!(fcm.validate(&device(&token(1))).is_ok());
    for bad in [String::new(), "a b".to_owned(), "a".repeat(4097)] {
        assert!(matches!(
            fcm.validate(&device(&bad)),
            Err(RegistrationError::InvalidToken(_))
        ));
    }
}

fn parse(toml_text: &str) -> Result<ProviderConfig, toml::de::Error> {
    toml::from_str(toml_text)
}

#[test]
fn config_errors_name_the_key() {
    let ok = FcmXmppConfig::new(SENDER, KEY_VALUE);
    assert!(FcmXmpp::new(KEY, &ok).is_ok());
    type Change = Box<dyn Fn(&mut FcmXmppConfig)>;
    let cases: Vec<(&str, Change)> = vec![
        ("sender_id", Box::new(|c| c.sender_id = String::new())),
        ("sender_id", Box::new(|c| c.sender_id = "12 34".into())),
        ("server_key", Box::new(|c| c.server_key = " ".into())),
        (
            "server",
            Box::new(|c| c.server = "fcm-xmpp.googleapis.com".into()),
        ),
        ("server", Box::new(|c| c.server = "host:99999".into())),
        ("domain", Box::new(|c| c.domain = "a b".into())),
        ("pool_size", Box::new(|c| c.pool_size = 0)),
        ("pool_size", Box::new(|c| c.pool_size = 17)),
        ("ttl_secs", Box::new(|c| c.ttl_secs = 2_419_201)),
        ("max_body_chars", Box::new(|c| c.max_body_chars = 0)),
        (
            "request_timeout_secs",
            Box::new(|c| c.request_timeout_secs = 0),
        ),
        (
            "ca_file",
            Box::new(|c| c.ca_file = Some("/nonexistent/ca.pem".into())),
        ),
    ];
    for (key, change) in cases {
        let mut c = ok.clone();
        change(&mut c);
        let err = FcmXmpp::new(KEY, &c).unwrap_err();
        assert_eq!(err.key, format!("{KEY}.{key}"), "{err}");
    }
    let dir = TempDir::new().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let mut c = ok.clone();
    c.ca_file = Some(not_pem);
    assert_eq!(
        FcmXmpp::new(KEY, &c).unwrap_err().key,
        format!("{KEY}.ca_file")
    );

    // The server key never shows in Debug output.
    assert!(!format!("{ok:?}").contains(KEY_VALUE));
    assert!(!format!("{:?}", FcmXmpp::new(KEY, &ok).unwrap()).contains(KEY_VALUE));
}

#[test]
fn the_section_parses_with_defaults_and_refuses_unknown_keys() {
    let config = parse("kind = \"fcm-xmpp\"\nsender_id = \"1\"\nserver_key = \"k\"\n").unwrap();
    let ProviderConfig::FcmXmpp(c) = config else {
        panic!("{config:?}")
    };
    assert_eq!(c.server, "fcm-xmpp.googleapis.com:5235");
    assert_eq!(c.domain, "fcm.googleapis.com");
    assert_eq!(c.pool_size, 2);
    assert_eq!(c.ttl_secs, 86_400);
    assert_eq!(c.max_body_chars, 500);
    assert_eq!(c.request_timeout_secs, 8);
    assert!(c.ca_file.is_none());
    let built = pushgate_providers::build(KEY, &ProviderConfig::FcmXmpp(c)).unwrap();
    // The built provider applies FCM's token rules.
    assert!(built.as_apns().is_none());
    assert!(built.validate(&device(&token(1))).is_ok());
    assert!(built.validate(&device("a b")).is_err());
    let err = parse("kind = \"fcm-xmpp\"\nsender_id = \"1\"\nserver_key = \"k\"\nport = 5\n")
        .unwrap_err();
    assert!(err.to_string().contains("port"), "{err}");
    assert!(parse("kind = \"fcm-xmpp\"\nsender_id = \"1\"\n").is_err());
}

/// The commented example in etc/pushgate.toml names every key and, uncommented, parses.
#[test]
fn shipped_example_section_is_complete_and_parses() {
    let section = format!(
        "[providers.\"fcm-xmpp-api\"]\n{}",
        shipped_example("# [providers.\"fcm-xmpp-api\"]")
    );
    let table: toml::Table = toml::from_str(&section).unwrap();
    let inner = table["providers"]["fcm-xmpp-api"]
        .as_table()
        .unwrap()
        .clone();
    let config: ProviderConfig = inner.clone().try_into().unwrap();
    let ProviderConfig::FcmXmpp(c) = config else {
        panic!("{config:?}")
    };
    assert_eq!(c.pool_size, 2);
    assert_documents_exactly(
        &inner,
        &[
            "kind",
            "sender_id",
            "server_key",
            "server",
            "domain",
            "ca_file",
            "pool_size",
            "ttl_secs",
            "max_body_chars",
            "request_timeout_secs",
        ],
    );
    assert!(
        shipped_config().contains("LEGACY"),
        "the example is marked legacy"
    );
}
