//! End-to-end tests of the WebPush provider against a real push resource on 127.0.0.1: what goes
//! over the wire (RFC 8291 ciphertext, VAPID, TTL, Urgency, JSON), how every kind of answer maps
//! onto a verdict, the endpoint policy, and the `[providers.<id>]` configuration.

use std::path::Path;
use std::time::{Duration, Instant};

use pushgate_providers::webpush::{WebPush, WebPushConfig};
use pushgate_providers::{
    Content, Device, Encrypted, Kind, Notification, Priority, Provider, ProviderConfig,
    RegistrationError, Verdict, WebPushKeys,
};
use pushgate_test_support::fixtures::{assert_held_back, shipped_config};
use pushgate_test_support::webpush::{Behaviour, Endpoint, Subscriber, VapidFixture, verify_vapid};

const SUBJECT: &str = "mailto:ops@example.org";
const KEY: &str = "providers.webpush";

/// The setup every delivery test uses: a local http endpoint is allowed.
fn local_config(vapid: Option<&Path>) -> WebPushConfig {
    WebPushConfig {
        vapid_private_key_file: vapid.map(Path::to_path_buf),
        vapid_subject: SUBJECT.to_owned(),
        ttl_secs: 3600,
        allow_http: true,
        allow_private_addresses: true,
        ..WebPushConfig::default()
    }
}

fn provider(config: &WebPushConfig) -> WebPush {
    WebPush::new(KEY, config).unwrap()
}

fn device(endpoint: &str, keys: Option<WebPushKeys>) -> Device {
    Device {
        webpush_keys: keys,
        ..pushgate_test_support::fixtures::device("webpush", endpoint)
    }
}

fn alert(priority: Priority, body: &str) -> Notification {
    Notification {
        content: Content {
            account: Some("juliet@capulet.example".into()),
            sender: Some("romeo@montague.example".into()),
            body: Some(body.into()),
            message_count: Some(2),
            nickname: None,
            channel: None,
        },
        ..Notification::new(Kind::Alert, priority)
    }
}

fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).unwrap()
}

/// Sends one notification to a fresh endpoint answering `behaviour`; returns the verdict and
/// the endpoint (for its recorded requests).
async fn send_to(behaviour: Behaviour, n: &Notification) -> (Verdict, Endpoint) {
    let endpoint = Endpoint::start(behaviour).await;
    let sub = Subscriber::generate();
    let push = provider(&local_config(None));
    let verdict = push
        .send(&device(&endpoint.url("/push/abc"), Some(sub.keys())), n)
        .await;
    (verdict, endpoint)
}

// --- deliveries -------------------------------------------------------------------------------

#[tokio::test]
async fn encrypted_alert_is_decryptable_and_signed() {
    let endpoint = Endpoint::start(Behaviour::status(201)).await;
    let vapid = VapidFixture::pkcs8();
    let push = provider(&local_config(Some(vapid.file.path())));
    assert_eq!(push.vapid_public_key(), Some(vapid.public_b64.as_str()));
    let sub = Subscriber::generate();
    let dev = device(
        &endpoint.url("/push/v1/gAAAAABk-capability"),
        Some(sub.keys()),
    );
    push.validate(&dev).unwrap();

    let verdict = push
        .send(&dev, &alert(Priority::High, "wherefore art thou"))
        .await;
    assert_eq!(verdict, Verdict::Sent);

    let req = endpoint.only_request();
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/push/v1/gAAAAABk-capability");
    assert_eq!(req.header("content-encoding"), Some("aes128gcm"));
    assert_eq!(req.header("ttl"), Some("3600"));
    assert_eq!(req.header("urgency"), Some("high"));
    let claims = verify_vapid(
        req.header("authorization").unwrap(),
        &vapid.public_b64,
        &endpoint.origin(),
        SUBJECT,
    )
    .unwrap();
    assert!(claims.aud.ends_with(&format!(":{}", endpoint.port())));

    let plain = sub.decrypt(&req.body).unwrap();
    let v = json(&plain);
    assert_eq!(v["kind"], "alert");
    assert_eq!(v["priority"], "high");
    assert_eq!(v["account"], "juliet@capulet.example");
    assert_eq!(v["sender"], "romeo@montague.example");
    assert_eq!(v["body"], "wherefore art thou");
    assert_eq!(v["message-count"], 2);
    assert!(
        v.get("nickname").is_none(),
        "absent fields are omitted: {v}"
    );
    // Compact JSON (same length as serde_json's compact form), nothing else in the plaintext.
    assert_eq!(plain.len(), serde_json::to_vec(&v).unwrap().len());
}

#[tokio::test]
async fn collapse_key_becomes_the_topic_and_channel_is_in_the_body() {
    let mut n = alert(Priority::High, "hi");
    n.collapse_key = Some("a1b2c3".into());
    n.content.channel = Some("f".repeat(40));
    let endpoint = Endpoint::start(Behaviour::status(201)).await;
    let sub = Subscriber::generate();
    let push = provider(&local_config(None));
    let verdict = push
        .send(&device(&endpoint.url("/push/abc"), Some(sub.keys())), &n)
        .await;
    assert_eq!(verdict, Verdict::Sent);
    let req = endpoint.only_request();
    assert_eq!(req.header("topic"), Some("a1b2c3"));
    assert_eq!(
        json(&sub.decrypt(&req.body).unwrap())["channel"],
        "f".repeat(40)
    );

    // Not a valid RFC 8030 topic: no header rather than a refused request.
    n.collapse_key = Some("room@conference.example".into());
    let (_, endpoint) = send_to(Behaviour::status(201), &n).await;
    assert_eq!(endpoint.only_request().header("topic"), None);
}

#[tokio::test]
async fn low_priority_background_gets_urgency_low() {
    let n = Notification {
        content: Content {
            message_count: Some(0),
            ..Content::default()
        },
        ..Notification::new(Kind::Background, Priority::Low)
    };
    let (verdict, endpoint) = send_to(Behaviour::status(201), &n).await;
    assert_eq!(verdict, Verdict::Sent);
    let req = endpoint.only_request();
    assert_eq!(req.header("urgency"), Some("low"));
    assert_eq!(req.header("ttl"), Some("3600"));
    assert!(
        req.header("authorization").is_none(),
        "no VAPID key configured"
    );
}

#[tokio::test]
async fn normal_priority_gets_urgency_normal_and_voip_high_with_short_ttl() {
    let (_, endpoint) = send_to(Behaviour::status(201), &alert(Priority::Normal, "hi")).await;
    assert_eq!(endpoint.only_request().header("urgency"), Some("normal"));

    let call = Notification {
        content: Content::default(),
        ..Notification::new(Kind::Voip, Priority::Normal)
    };
    let (verdict, endpoint) = send_to(Behaviour::status(201), &call).await;
    assert_eq!(verdict, Verdict::Sent);
    let req = endpoint.only_request();
    assert_eq!(req.header("urgency"), Some("high"));
    assert_eq!(req.header("ttl"), Some("60"));
}

#[tokio::test]
async fn long_body_is_cut_with_ellipsis() {
    let endpoint = Endpoint::start(Behaviour::status(201)).await;
    let sub = Subscriber::generate();
    let push = provider(&WebPushConfig {
        max_body_chars: 10,
        ..local_config(None)
    });
    let body = "ÄÖÜ ".repeat(50);
    let verdict = push
        .send(
            &device(&endpoint.url("/p"), Some(sub.keys())),
            &alert(Priority::High, &body),
        )
        .await;
    assert_eq!(verdict, Verdict::Sent);
    let v = json(&sub.decrypt(&endpoint.only_request().body).unwrap());
    assert_eq!(v["body"], "ÄÖÜ ÄÖÜ ÄÖ…");
}

#[tokio::test]
async fn body_that_cannot_fit_is_cut_to_the_byte_budget() {
    let endpoint = Endpoint::start(Behaviour::status(201)).await;
    let sub = Subscriber::generate();
    let push = provider(&WebPushConfig {
        max_body_chars: 4096,
        ..local_config(None)
    });
    let verdict = push
        .send(
            &device(&endpoint.url("/p"), Some(sub.keys())),
            &alert(Priority::High, &"x".repeat(10_000)),
        )
        .await;
    assert_eq!(verdict, Verdict::Sent);
    let req = endpoint.only_request();
    assert!(
        req.body.len() <= 4096,
        "{} bytes on the wire",
        req.body.len()
    );
    let plain = sub.decrypt(&req.body).unwrap();
    assert!(plain.len() <= 3993 && plain.len() > 3900, "{}", plain.len());
    assert!(json(&plain)["body"].as_str().unwrap().ends_with("x…"));
}

#[tokio::test]
async fn end_to_end_encrypted_payload_is_passed_through() {
    let n = Notification {
        content: Content {
            account: Some("juliet@capulet.example".into()),
            body: Some("must not leak".into()),
            ..Content::default()
        },
        encrypted: Some(Encrypted {
            payload: "c2VjcmV0IGNpcGhlcnRleHQ=".into(),
            iv: "aXZpdml2aXZpdg==".into(),
        }),
        ..Notification::new(Kind::Alert, Priority::High)
    };
    let endpoint = Endpoint::start(Behaviour::status(201)).await;
    let sub = Subscriber::generate();
    let push = provider(&local_config(None));
    let verdict = push
        .send(&device(&endpoint.url("/p"), Some(sub.keys())), &n)
        .await;
    assert_eq!(verdict, Verdict::Sent);
    let v = json(&sub.decrypt(&endpoint.only_request().body).unwrap());
    assert_eq!(
        v,
        serde_json::json!({
            "encrypted": "c2VjcmV0IGNpcGhlcnRleHQ=",
            "iv": "aXZpdml2aXZpdg==",
            "kind": "alert",
        })
    );
}

#[tokio::test]
async fn without_keys_the_json_goes_in_the_clear_with_vapid() {
    let endpoint = Endpoint::start(Behaviour::status(200)).await;
    // SEC1 with an EC PARAMETERS block, the other accepted key format.
    let vapid = VapidFixture::sec1_with_params();
    // A week of TTL: the header says so, while the VAPID token still expires within 24 h.
    let push = provider(&WebPushConfig {
        ttl_secs: 7 * 86_400,
        ..local_config(Some(vapid.file.path()))
    });
    let dev = device(&endpoint.url("/up/xyz"), None);
    push.validate(&dev).unwrap();
    let verdict = push.send(&dev, &alert(Priority::High, "plain")).await;
    assert_eq!(verdict, Verdict::Sent);

    let req = endpoint.only_request();
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert!(req.header("content-encoding").is_none());
    let v = json(&req.body);
    assert_eq!(v["body"], "plain");
    assert_eq!(v["account"], "juliet@capulet.example");
    assert_eq!(req.header("ttl"), Some("604800"));
    let claims = verify_vapid(
        req.header("authorization").unwrap(),
        &vapid.public_b64,
        &endpoint.origin(),
        SUBJECT,
    )
    .unwrap();
    assert_eq!(claims.sub, SUBJECT);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        claims.exp <= now + 24 * 3600,
        "exp {} now {now}",
        claims.exp
    );
}

// --- verdicts ---------------------------------------------------------------------------------

#[tokio::test]
async fn gone_subscriptions_are_dead_tokens() {
    for status in [404, 410] {
        let (verdict, endpoint) =
            send_to(Behaviour::status(status), &alert(Priority::High, "x")).await;
        assert!(
            matches!(verdict, Verdict::DeadToken { .. }),
            "{status}: {verdict:?}"
        );
        assert_eq!(endpoint.requests().len(), 1);
    }
}

#[tokio::test]
async fn too_many_requests_is_transient_with_retry_after() {
    let behaviour = Behaviour::Respond {
        status: 429,
        headers: vec![("retry-after", "120".into())],
        body: "",
    };
    let (verdict, _) = send_to(behaviour, &alert(Priority::High, "x")).await;
    match verdict {
        Verdict::Transient { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(120)))
        }
        other => panic!("expected Transient, got {other:?}"),
    }
}

#[tokio::test]
async fn server_errors_are_transient() {
    let (verdict, _) = send_to(Behaviour::status(503), &alert(Priority::High, "x")).await;
    assert!(
        matches!(
            verdict,
            Verdict::Transient {
                retry_after: None,
                ..
            }
        ),
        "{verdict:?}"
    );

    // Retry-After as an HTTP date, however far ahead, is waited for at most an hour.
    let behaviour = Behaviour::Respond {
        status: 500,
        headers: vec![("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT".into())],
        body: "",
    };
    let (verdict, _) = send_to(behaviour, &alert(Priority::High, "x")).await;
    match verdict {
        Verdict::Transient {
            retry_after: Some(d),
            ..
        } => assert_eq!(d, Duration::from_secs(3600)),
        other => panic!("expected Transient with a delay, got {other:?}"),
    }
}

/// A push service answering 503 with a Retry-After of 2^64 − 1 seconds: a transient verdict, and
/// for at most an hour only that push service is left alone; other services' subscriptions and
/// a fresh start are unaffected.
#[tokio::test]
async fn a_huge_retry_after_holds_back_only_that_push_service() {
    let busy = Endpoint::start(Behaviour::Respond {
        status: 503,
        headers: vec![("retry-after", "18446744073709551615".into())],
        body: "",
    })
    .await;
    let other = Endpoint::start(Behaviour::status(201)).await;
    let sub = Subscriber::generate();
    let push = provider(&local_config(None));
    let send = |url: String| {
        let (push, keys) = (&push, sub.keys());
        async move {
            push.send(&device(&url, Some(keys)), &alert(Priority::High, "x"))
                .await
        }
    };
    let hour = Duration::from_secs(3600);

    let verdict = send(busy.url("/sub/1")).await;
    assert!(
        matches!(verdict, Verdict::Transient { retry_after: Some(d), .. } if d == hour),
        "{verdict:?}"
    );
    // Another subscription at the same service is not even tried…
    let held = send(busy.url("/sub/2")).await;
    let reason = assert_held_back(&held, hour);
    assert!(!reason.contains("/sub/"), "no capability URL: {reason}");
    assert_eq!(busy.requests().len(), 1);
    // …while other push services are.
    assert_eq!(send(other.url("/sub/3")).await, Verdict::Sent);
    assert_eq!(other.requests().len(), 1);
}

#[tokio::test]
async fn an_endpoint_that_never_answers_times_out_as_transient() {
    let endpoint = Endpoint::start(Behaviour::Hold).await;
    let sub = Subscriber::generate();
    let push = provider(&WebPushConfig {
        request_timeout_secs: 1,
        ..local_config(None)
    });
    let started = Instant::now();
    let verdict = push
        .send(
            &device(&endpoint.url("/p"), Some(sub.keys())),
            &alert(Priority::High, "x"),
        )
        .await;
    let elapsed = started.elapsed();
    assert!(matches!(verdict, Verdict::Transient { .. }), "{verdict:?}");
    assert!(endpoint.connections() >= 1, "the endpoint was reached");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn a_closed_port_is_transient() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let sub = Subscriber::generate();
    let push = provider(&local_config(None));
    let verdict = push
        .send(
            &device(&format!("http://127.0.0.1:{port}/p"), Some(sub.keys())),
            &alert(Priority::High, "x"),
        )
        .await;
    match verdict {
        Verdict::Transient { reason, .. } => {
            assert!(
                !reason.contains("/p"),
                "reason must not carry the URL: {reason}"
            )
        }
        other => panic!("expected Transient, got {other:?}"),
    }
}

#[tokio::test]
async fn redirects_are_our_fault_and_not_followed() {
    let sub = Subscriber::generate();
    let push = provider(&local_config(None));
    for status in [302, 307] {
        // Following the redirect would show up as a request on `target`.
        let target = Endpoint::start(Behaviour::status(201)).await;
        let redirecting = Endpoint::start(Behaviour::Respond {
            status,
            headers: vec![("location", target.url("/followed"))],
            body: "",
        })
        .await;
        let verdict = push
            .send(
                &device(&redirecting.url("/p"), Some(sub.keys())),
                &alert(Priority::High, "x"),
            )
            .await;
        assert!(
            matches!(verdict, Verdict::OurFault { .. }),
            "{status}: {verdict:?}"
        );
        assert_eq!(redirecting.only_request().path, "/p");
        assert!(
            target.requests().is_empty(),
            "{status}: redirect was followed"
        );
        assert_eq!(target.connections(), 0);
    }
}

#[tokio::test]
async fn client_errors_are_our_fault_with_the_services_reason() {
    let behaviour = Behaviour::Respond {
        status: 400,
        headers: vec![("content-type", "application/json".into())],
        body: r#"{"errno":110,"message":"bad crypto-key"}"#,
    };
    let (verdict, _) = send_to(behaviour, &alert(Priority::High, "x")).await;
    match verdict {
        Verdict::OurFault { reason } => assert!(reason.contains("bad crypto-key"), "{reason}"),
        other => panic!("expected OurFault, got {other:?}"),
    }
    for status in [401, 403, 413, 418] {
        let (verdict, _) = send_to(Behaviour::status(status), &alert(Priority::High, "x")).await;
        assert!(
            matches!(verdict, Verdict::OurFault { .. }),
            "{status}: {verdict:?}"
        );
    }
}

/// A plain push (a UnifiedPush endpoint taking the JSON as it is, as for a Matrix pushkey) has
/// no VAPID key of ours to blame: 401–404 mean the endpoint takes no more, as 410 does.
#[tokio::test]
async fn a_plain_endpoint_refusing_with_401_to_404_is_dead() {
    let push = provider(&local_config(None));
    for (status, dead) in [
        (401, true),
        (402, true),
        (403, true),
        (404, true),
        (413, false),
    ] {
        let endpoint = Endpoint::start(Behaviour::status(status)).await;
        let verdict = push
            .send(
                &device(&endpoint.url("/up/abc"), None),
                &alert(Priority::High, "x"),
            )
            .await;
        assert_eq!(
            matches!(verdict, Verdict::DeadToken { .. }),
            dead,
            "{status}: {verdict:?}"
        );
        assert_eq!(endpoint.requests().len(), 1, "{status}");
    }
}

#[tokio::test]
async fn names_resolving_only_to_private_addresses_are_refused_and_dead() {
    let endpoint = Endpoint::start(Behaviour::status(201)).await;
    let sub = Subscriber::generate();
    let push = provider(&WebPushConfig {
        allow_private_addresses: false,
        ..local_config(None)
    });
    // `localhost` passes the offline checks (it is a name, not an IP literal) …
    let dev = device(
        &format!("http://localhost:{}/p", endpoint.port()),
        Some(sub.keys()),
    );
    push.validate(&dev).unwrap();
    // … but registration resolves it and finds only loopback addresses …
    match push.admit(&dev).await {
        Err(RegistrationError::NotPublic(reason)) => {
            assert!(reason.contains("non-public"), "{reason}")
        }
        other => panic!("expected NotPublic, got {other:?}"),
    }
    // … and a delivery to it (a name that turned inward after registering) is a dead token.
    let verdict = push.send(&dev, &alert(Priority::High, "x")).await;
    match verdict {
        Verdict::DeadToken { reason } => assert!(reason.contains("non-public"), "{reason}"),
        other => panic!("expected DeadToken, got {other:?}"),
    }
    assert_eq!(endpoint.connections(), 0);

    // Where private addresses are allowed, the same name is admitted.
    provider(&local_config(None)).admit(&dev).await.unwrap();
    // Public IP literals need no lookup.
    provider(&strict())
        .admit(&device("https://93.184.216.34/p", keys()))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_endpoint_policy_is_checked_again_at_send_time() {
    let endpoint = Endpoint::start(Behaviour::status(201)).await;
    let sub = Subscriber::generate();
    let dev = device(&endpoint.url("/p"), Some(sub.keys()));
    provider(&local_config(None)).validate(&dev).unwrap();

    for config in [
        WebPushConfig {
            allow_private_addresses: false,
            ..local_config(None)
        },
        WebPushConfig {
            denied_hosts: vec!["127.0.0.1".into()],
            ..local_config(None)
        },
    ] {
        let verdict = provider(&config)
            .send(&dev, &alert(Priority::High, "x"))
            .await;
        assert!(matches!(verdict, Verdict::OurFault { .. }), "{verdict:?}");
    }
    assert_eq!(endpoint.connections(), 0);
}

// --- validate() -------------------------------------------------------------------------------

fn strict() -> WebPushConfig {
    WebPushConfig::default()
}

fn keys() -> Option<WebPushKeys> {
    Some(Subscriber::generate().keys())
}

#[test]
fn http_endpoints_need_allow_http() {
    let dev = device("http://push.example.org/p", keys());
    assert!(matches!(
        provider(&strict()).validate(&dev),
        Err(RegistrationError::Refused(_))
    ));
    let allowed = WebPushConfig {
        allow_http: true,
        ..strict()
    };
    provider(&allowed).validate(&dev).unwrap();
    provider(&strict())
        .validate(&device("https://push.example.org/p", keys()))
        .unwrap();
    assert!(matches!(
        provider(&strict()).validate(&device("ftp://push.example.org/p", keys())),
        Err(RegistrationError::InvalidToken(_))
    ));
    assert!(matches!(
        provider(&strict()).validate(&device("not a url", keys())),
        Err(RegistrationError::InvalidToken(_))
    ));
}

/// `push` refuses a subscription at `url` by its policy.
fn assert_refused(push: &WebPush, url: &str) {
    assert!(
        matches!(
            push.validate(&device(url, keys())),
            Err(RegistrationError::Refused(_))
        ),
        "{url}"
    );
}

#[test]
fn private_address_literals_need_allow_private_addresses() {
    let lenient = provider(&WebPushConfig {
        allow_private_addresses: true,
        ..strict()
    });
    for url in [
        "https://127.0.0.1/p",
        "https://10.1.2.3/p",
        "https://[::1]/p",
        "https://169.254.169.254/latest",
        "https://[fd00::1]:8443/p",
        "https://[::ffff:192.168.0.1]/p",
        "https://2130706433/p", // 127.0.0.1 spelled as a number
    ] {
        assert_refused(&provider(&strict()), url);
        lenient.validate(&device(url, keys())).unwrap();
    }
    provider(&strict())
        .validate(&device("https://93.184.216.34/p", keys()))
        .unwrap();
}

#[test]
fn denied_hosts_are_refused() {
    let push = provider(&WebPushConfig {
        denied_hosts: vec!["evil.example".into(), "*.internal.example".into()],
        ..strict()
    });
    for url in [
        "https://evil.example/p",
        "https://EVIL.example./p",
        "https://a.b.internal.example/p",
    ] {
        assert_refused(&push, url);
    }
    push.validate(&device("https://good.example/p", keys()))
        .unwrap();
}

#[test]
fn allowed_hosts_restrict_endpoints() {
    let push = provider(&WebPushConfig {
        allowed_hosts: vec!["*.example.org".into(), "ntfy.sh".into()],
        ..strict()
    });
    push.validate(&device("https://push.example.org/p", keys()))
        .unwrap();
    push.validate(&device("https://a.b.example.org:8443/p", keys()))
        .unwrap();
    push.validate(&device("https://ntfy.sh/upABC", keys()))
        .unwrap();
    for url in [
        "https://example.org/p",
        "https://example.org.evil.com/p",
        "https://notexample.org/p",
        "https://x.ntfy.sh/p",
    ] {
        assert_refused(&push, url);
    }
}

#[test]
fn bad_subscription_keys_are_refused() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let good = Subscriber::generate().keys();
    let push = provider(&strict());
    let url = "https://push.example.org/p";

    let mut off_curve = vec![0x04];
    off_curve.extend_from_slice(&[0x11; 64]);
    let compressed = {
        let raw = b64.decode(&good.p256dh).unwrap();
        let mut c = vec![0x02 | (raw[64] & 1)];
        c.extend_from_slice(&raw[1..33]);
        c
    };
    for (p256dh, auth) in [
        ("not base64!".to_owned(), good.auth.clone()),
        (b64.encode([0x04; 64]), good.auth.clone()),
        (b64.encode(&off_curve), good.auth.clone()),
        (b64.encode(&compressed), good.auth.clone()),
        (good.p256dh.clone(), b64.encode([7u8; 15])),
        (good.p256dh.clone(), b64.encode([7u8; 17])),
        (good.p256dh.clone(), "%%%".to_owned()),
        ("A".repeat(5_000_000), good.auth.clone()),
        (
            good.p256dh.clone(),
            format!("{}{}", good.auth, " ".repeat(200)),
        ),
    ] {
        let dev = device(url, Some(WebPushKeys { p256dh, auth }));
        assert!(
            matches!(push.validate(&dev), Err(RegistrationError::InvalidKeys(_))),
            "{:?}",
            dev.webpush_keys
        );
    }

    // Padded base64url is accepted as well.
    let padded = WebPushKeys {
        p256dh: format!("{}=", good.p256dh),
        auth: format!("{}==", good.auth),
    };
    push.validate(&device(url, Some(padded))).unwrap();
}

#[test]
fn over_long_endpoints_are_refused() {
    let push = provider(&strict());
    let base = "https://push.example.org/";
    let fits = format!("{base}{}", "a".repeat(1000 - base.len()));
    push.validate(&device(&fits, keys())).unwrap();
    let too_long = format!("{fits}a");
    assert!(matches!(
        push.validate(&device(&too_long, keys())),
        Err(RegistrationError::InvalidToken(_))
    ));
}

// --- configuration ----------------------------------------------------------------------------

#[test]
fn missing_vapid_file_names_the_key() {
    let config = WebPushConfig {
        vapid_private_key_file: Some("/nonexistent/pushgate/vapid.pem".into()),
        ..strict()
    };
    let err = WebPush::new(KEY, &config).unwrap_err();
    assert_eq!(err.key, "providers.webpush.vapid_private_key_file");
    assert!(
        err.message.contains("/nonexistent/pushgate/vapid.pem"),
        "{err}"
    );
}

#[test]
fn garbage_vapid_pem_names_the_key() {
    use std::io::Write as _;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(b"-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n")
        .unwrap();
    let config = WebPushConfig {
        vapid_private_key_file: Some(file.path().to_path_buf()),
        ..strict()
    };
    let err = WebPush::new(KEY, &config).unwrap_err();
    assert_eq!(err.key, "providers.webpush.vapid_private_key_file");
    assert!(
        err.to_string()
            .starts_with("providers.webpush.vapid_private_key_file: ")
    );
}

#[test]
fn other_bad_settings_name_their_key() {
    let cases = [
        (
            WebPushConfig {
                vapid_subject: "admin@example.org".into(),
                ..strict()
            },
            "providers.webpush.vapid_subject",
        ),
        (
            WebPushConfig {
                request_timeout_secs: 0,
                ..strict()
            },
            "providers.webpush.request_timeout_secs",
        ),
        (
            WebPushConfig {
                allowed_hosts: vec!["*".into()],
                ..strict()
            },
            "providers.webpush.allowed_hosts",
        ),
        (
            WebPushConfig {
                denied_hosts: vec!["a.*.org".into()],
                ..strict()
            },
            "providers.webpush.denied_hosts",
        ),
    ];
    for (config, key) in cases {
        assert_eq!(WebPush::new(KEY, &config).unwrap_err().key, key);
    }
}

#[test]
fn config_section_parses_with_its_kind_tag_and_defaults() {
    let config: ProviderConfig = toml::from_str(
        r#"
        kind = "webpush"
        vapid_subject = "https://example.org/contact"
        allowed_hosts = ["*.example.org"]
        "#,
    )
    .unwrap();
    let ProviderConfig::Webpush(c) = config else {
        panic!("not a webpush section")
    };
    assert_eq!(c.vapid_subject, "https://example.org/contact");
    assert_eq!(c.allowed_hosts, vec!["*.example.org".to_owned()]);
    assert_eq!(c.ttl_secs, 86_400);
    assert_eq!(c.max_body_chars, 500);
    assert_eq!(c.request_timeout_secs, 8);
    assert!(!c.allow_http && !c.allow_private_addresses);
    assert!(c.vapid_private_key_file.is_none());
    assert!(c.denied_hosts.is_empty());
}

#[test]
fn unknown_config_key_is_an_error_naming_it() {
    let err = toml::from_str::<ProviderConfig>(
        r#"
        kind = "webpush"
        ttl_secs = 60
        vapid_key_file = "/etc/pushgate/vapid.pem"
        "#,
    )
    .unwrap_err();
    assert!(err.to_string().contains("vapid_key_file"), "{err}");
}

#[test]
fn shipped_example_config_section_is_accepted() {
    let text = shipped_config();
    let doc: toml::Table = toml::from_str(&text).unwrap();
    let section = doc["providers"]["webpush"].clone();
    let ProviderConfig::Webpush(c) = section.try_into::<ProviderConfig>().unwrap() else {
        panic!("not a webpush section")
    };
    assert_eq!(c.ttl_secs, WebPushConfig::default().ttl_secs);
    assert_eq!(c.max_body_chars, WebPushConfig::default().max_body_chars);
    assert_eq!(
        c.request_timeout_secs,
        WebPushConfig::default().request_timeout_secs
    );
    provider(&c);
}
