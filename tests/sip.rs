//! The SIP API over real HTTP, as SIP proxies and SylkServer call it: v1 `POST /push` and the
//! v2 token routes, through pushgate's HTTP listener, the core and the APNs and FCM providers to
//! local HTTP/2 APNs and FCM v1 endpoints. Sylk Pushserver's request and reply shapes
//! (../shared/reference/other-fronts.md §2, §7) in pushgate's terms.

mod common;

use std::time::Duration;

use common::{HttpServer, PushEndpoint, TestGateway};
use pushgate::config::HttpConfig;
use pushgate_test_support::apns::{MockApns, Reply};
use pushgate_test_support::fcm::MockFcm;
use pushgate_test_support::fixtures::fcm_token;
use reqwest::StatusCode;
use serde_json::{Value, json};

const BUNDLE: &str = "com.example.sylk";
const ANDROID: &str = "com.example.sylk.android";
const VOIP_TOKEN: &str = "aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11aa11";
const OTHER_TOKEN: &str = "bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22bb22";

/// pushgate with an APNs app (`BUNDLE`, Sylk type) and an FCM app (`ANDROID`), and `extra`.
struct Sip {
    s: HttpServer,
    apns: MockApns,
    fcm: MockFcm,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn sip(apple: &str, extra: &str) -> Sip {
    let (apns, apns_dir, apns_section) = common::apns_sink(BUNDLE).await;
    let (fcm, fcm_dir, fcm_section) = common::fcm_sink("").await;
    let toml = format!(
        "{}[http]\nlisten = \"127.0.0.1:0\"\n{apns_section}{fcm_section}{extra}\n\
         [sip.apps.\"{BUNDLE}\".apple]\ntype = \"sylk\"\nprovider = \"apns\"\n{apple}\n\
         [sip.apps.\"{ANDROID}\".firebase]\ntype = \"sylk\"\nprovider = \"fcm\"\n",
        common::COMPONENT
    );
    let s = HttpServer::start(
        TestGateway::sqlite(&toml).await,
        HttpConfig::default(),
        Duration::from_secs(5),
    )
    .await;
    Sip {
        s,
        apns,
        fcm,
        _dirs: (apns_dir, fcm_dir),
    }
}

/// A v1 push as SylkServer sends it.
fn call(app: &str, platform: &str, token: &str, event: &str) -> Value {
    json!({
        "app-id": app, "platform": platform, "token": token, "device-id": "dev-1",
        "call-id": "a84b4c76e66710@pc33.example.org", "from": "sip:alice@example.org",
        "from-display-name": "Alice", "to": "sip:bob@example.org", "media-type": "audio",
        "event": event, "silent": true, "reason": "timeout",
    })
}

async fn push(s: &HttpServer, body: &Value) -> (StatusCode, Value) {
    s.post("/push", body.to_string()).await
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Every answer is `{code, description, data}` with the HTTP status equal to `code`.
fn assert_shape(status: StatusCode, answer: &Value) {
    assert_eq!(answer["code"], status.as_u16(), "{answer}");
    assert!(answer["description"].is_string(), "{answer}");
    assert!(answer.get("data").is_some(), "{answer}");
}

#[tokio::test]
async fn an_incoming_call_is_a_pushkit_push_on_the_voip_topic() {
    let t = sip("", "").await;
    let token = format!("{VOIP_TOKEN}-{OTHER_TOKEN}");
    let (status, answer) = push(&t.s, &call(BUNDLE, "ios", &token, "incoming_session")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_shape(status, &answer);
    assert_eq!(answer["description"], "push notification response");
    assert_eq!(answer["data"]["code"], 200);
    assert_eq!(answer["data"]["platform"], "apple");
    assert_eq!(answer["data"]["call_id"], "a84b4c76e66710@pc33.example.org");

    let r = t.apns.only_request();
    assert_eq!(
        r.device_token(),
        VOIP_TOKEN,
        "calls go to the PushKit token"
    );
    assert_eq!(r.header("apns-push-type"), Some("voip"));
    assert_eq!(r.header("apns-topic"), Some("com.example.sylk.voip"));
    assert_eq!(r.header("apns-priority"), Some("10"));
    // An epoch time about call_ttl_secs (30 s) ahead, not Sylk's literal "120".
    let expiration: i64 = r.header("apns-expiration").unwrap().parse().unwrap();
    assert!(
        (now() + 20..=now() + 40).contains(&expiration),
        "{expiration}"
    );
    let payload = r.json();
    assert_eq!(payload["event"], "incoming_session");
    assert_eq!(payload["call-id"], "a84b4c76e66710@pc33.example.org");
    assert_eq!(payload["from_uri"], "sip:alice@example.org");
    assert_eq!(payload["from_display_name"], "Alice");
    assert_eq!(payload["to_uri"], "sip:bob@example.org");
    assert_eq!(payload["media-type"], "audio");
    assert_eq!(payload["session-id"].as_str().unwrap().len(), 36);
    assert!(
        payload.get("aps").is_none(),
        "PushKit pushes show nothing: {payload}"
    );
}

#[tokio::test]
async fn a_cancel_is_a_background_push_to_the_other_token_and_a_message_an_alert() {
    let t = sip("", "").await;
    let token = format!("{VOIP_TOKEN}-{OTHER_TOKEN}");
    let mut cancel = call(BUNDLE, "apple", &token, "cancel");
    cancel.as_object_mut().unwrap().remove("media-type");
    let (status, answer) = push(&t.s, &cancel).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let r = t.apns.only_request();
    assert_eq!(r.device_token(), OTHER_TOKEN);
    assert_eq!(r.header("apns-push-type"), Some("background"));
    assert_eq!(r.header("apns-topic"), Some(BUNDLE));
    assert_eq!(r.header("apns-priority"), Some("5"));
    let payload = r.json();
    assert_eq!(payload["aps"]["content-available"], 1);
    assert_eq!(payload["event"], "cancel");
    assert_eq!(payload["reason"], "timeout");
    assert_eq!(payload["call-id"], "a84b4c76e66710@pc33.example.org");

    let mut message = call(BUNDLE, "apple", &token, "message");
    message["media-type"] = json!("sms");
    message["content"] = json!("see you at noon");
    message["badge"] = json!(3);
    let (status, _) = push(&t.s, &message).await;
    assert_eq!(status, StatusCode::OK);
    let r = t.apns.requests().pop().unwrap();
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(r.header("apns-topic"), Some(BUNDLE));
    let payload = r.json();
    assert_eq!(payload["aps"]["mutable-content"], 1);
    assert_eq!(payload["aps"]["badge"], 3);
    assert_eq!(payload["aps"]["alert"]["title"], "Alice");
    assert_eq!(payload["aps"]["alert"]["body"], "see you at noon");
    assert_eq!(payload["event"], "message");
}

#[tokio::test]
async fn a_firebase_call_is_a_high_priority_data_message_with_a_short_ttl() {
    let t = sip("", "").await;
    let token = fcm_token("sylk", 140);
    let (status, answer) = push(&t.s, &call(ANDROID, "android", &token, "incoming_session")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"]["platform"], "firebase");
    let sent = t.fcm.only_send();
    assert_eq!(sent.device_token(), token);
    let message = &sent.json()["message"];
    assert_eq!(message["android"]["priority"], "high");
    assert_eq!(message["android"]["ttl"], "30s");
    assert!(
        message.get("notification").is_none(),
        "data only: {message}"
    );
    let data = &message["data"];
    assert_eq!(data["event"], "incoming_session");
    assert_eq!(data["call-id"], "a84b4c76e66710@pc33.example.org");
    assert_eq!(data["from_uri"], "sip:alice@example.org");
    assert_eq!(data["media-type"], "audio");
    // A cancel is high priority too: the phone must stop ringing now.
    let mut cancel = call(ANDROID, "fcm", &token, "cancel");
    cancel.as_object_mut().unwrap().remove("media-type");
    assert_eq!(push(&t.s, &cancel).await.0, StatusCode::OK);
    let message = &t.fcm.sends().pop().unwrap().json()["message"];
    assert_eq!(message["android"]["priority"], "high");
    assert_eq!(message["data"]["event"], "cancel");
}

#[tokio::test]
async fn bad_requests_name_the_field_and_unknown_apps_get_404() {
    let t = sip("", "").await;
    let ok = call(BUNDLE, "apple", VOIP_TOKEN, "incoming_session");
    // `ok` with `field` set to `value` (removed for null).
    let with = |field: &str, value: Value| {
        let mut b = ok.clone();
        match value {
            Value::Null => b.as_object_mut().unwrap().remove(field),
            v => b.as_object_mut().unwrap().insert(field.to_owned(), v),
        };
        b
    };
    let bad = StatusCode::BAD_REQUEST;
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (with("call-id", Value::Null), bad, "'call-id' is required"),
        (
            with("media-type", json!("fax")),
            bad,
            "'media-type' must be",
        ),
        (with("event", json!("ring")), bad, "'event' must be"),
        (
            with("platform", json!("symbian")),
            bad,
            "'platform' must be",
        ),
        (with("badge", json!("many")), bad, "'badge' must be"),
        (
            with("token", json!("not-hex-at-all")),
            bad,
            "'token' must be one APNs token",
        ),
        (with("token", json!("zz")), bad, "invalid token"),
        (
            with("app-id", json!("com.unknown")),
            StatusCode::NOT_FOUND,
            "Apple com.unknown app is not configured",
        ),
        (
            with("platform", json!("firebase")),
            StatusCode::NOT_FOUND,
            "Firebase com.example.sylk app is not configured",
        ),
        (json!([1, 2]), bad, "the body must be a JSON object"),
    ];
    for (body, status, description) in cases {
        let (got, answer) = push(&t.s, &body).await;
        assert_eq!(got, status, "{answer}");
        assert_shape(got, &answer);
        let d = answer["description"].as_str().unwrap_or_default();
        assert!(d.starts_with(description), "{d}");
    }
    // The invalid token got an answer naming it, not a provider round trip.
    let (got, answer) = t.s.post("/push", "{not json").await;
    assert_eq!(
        (got, answer["description"].clone()),
        (StatusCode::BAD_REQUEST, json!("the body is not JSON"))
    );
    let (got, answer) = t.s.post("/push", "x".repeat(20_000)).await;
    assert_eq!(got, StatusCode::PAYLOAD_TOO_LARGE);
    assert_shape(got, &answer);
    assert!(t.apns.requests().is_empty(), "nothing was pushed");
}

#[tokio::test]
async fn callers_outside_the_allowed_networks_get_403_on_every_route() {
    let t = sip(
        "",
        "[sip]\nallowed_networks = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
    )
    .await;
    let body = call(BUNDLE, "apple", VOIP_TOKEN, "incoming_session").to_string();
    for path in [
        "/push",
        "/v2/tokens/bob@example.org",
        "/v2/tokens/bob@example.org/push",
        "/v2/tokens/bob@example.org/push/dev-1",
    ] {
        let (status, answer) = t.s.post(path, body.clone()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(
            answer,
            json!({"code": 403, "description": "access denied by access list", "data": {}})
        );
    }
    assert!(t.apns.requests().is_empty());
}

#[tokio::test]
async fn a_dead_token_is_410_and_not_tried_again() {
    let t = sip("", "").await;
    t.apns
        .script(VOIP_TOKEN, vec![Reply::reason(410, "Unregistered")]);
    let body = call(BUNDLE, "apple", VOIP_TOKEN, "incoming_session");
    for _ in 0..2 {
        let (status, answer) = push(&t.s, &body).await;
        assert_eq!(status, StatusCode::GONE, "{answer}");
        assert_eq!(answer["data"]["code"], 410);
    }
    assert_eq!(
        t.apns.requests().len(),
        1,
        "the dead token was not tried again"
    );
}

/// A provider that fails for now: the push is in the retry queue (202), for no longer than a
/// call rings.
#[tokio::test]
async fn a_provider_failure_is_queued_for_the_life_of_the_call() {
    let t = sip("call_ttl_secs = 20\n", "").await;
    t.apns.script(
        VOIP_TOKEN,
        vec![Reply::reason(503, "ServiceUnavailable"); 5],
    );
    let (status, answer) = push(&t.s, &call(BUNDLE, "apple", VOIP_TOKEN, "incoming_session")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["data"]["code"], 202);
    let store = &t.s.gw.core.store;
    assert_eq!(store.queue_depth().await.unwrap().rows, 1);
    let queued = store.claim_due(i64::MAX, 0, 10).await.unwrap();
    let expires_in = queued[0].expires_at_ms / 1000 - now();
    assert!((10..=20).contains(&expires_in), "{expires_in}");
}

#[tokio::test]
async fn an_app_that_does_not_wait_is_answered_202_and_delivered_behind() {
    let t = sip("wait_for_delivery = false\n", "").await;
    t.apns
        .script(VOIP_TOKEN, vec![Reply::Slow(Duration::from_millis(300))]);
    let (status, answer) = push(&t.s, &call(BUNDLE, "apple", VOIP_TOKEN, "incoming_session")).await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::ACCEPTED,
            json!({"code": 202, "description": "accepted for delivery", "data": {}})
        )
    );
    for _ in 0..100 {
        if !t.apns.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(t.apns.only_request().header("apns-push-type"), Some("voip"));
}

#[tokio::test]
async fn an_app_at_its_concurrency_limit_gets_503() {
    let t = sip("max_concurrent = 1\n", "").await;
    t.apns
        .script(VOIP_TOKEN, vec![Reply::Slow(Duration::from_millis(800))]);
    let body = call(BUNDLE, "apple", VOIP_TOKEN, "incoming_session");
    let first = push(&t.s, &body);
    let second = async {
        // The first push holds the app's one slot until APNs answers.
        for _ in 0..100 {
            if !t.apns.requests().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        push(&t.s, &body).await
    };
    let ((s1, _), (s2, a2)) = tokio::join!(first, second);
    assert_eq!(s1, StatusCode::OK);
    assert_eq!(s2, StatusCode::SERVICE_UNAVAILABLE, "{a2}");
    assert_shape(s2, &a2);
}

/// v2: store (Apple token pair split, `<urn:uuid:…>` stripped), push to the account and to one
/// device, 404s as Sylk's, delete.
#[tokio::test]
async fn v2_tokens_are_stored_pushed_to_and_deleted() {
    let t = sip("", "").await;
    let account = "/v2/tokens/bob@example.org";
    let stored = json!({
        "app-id": BUNDLE, "platform": "ios", "token": format!("{VOIP_TOKEN}-{OTHER_TOKEN}"),
        "device-id": "<urn:uuid:5f0c-11aa>", "silent": true, "user-agent": "Sylk 3.4",
    });
    let (status, echo) = t.s.post(account, stored.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["device-id"], "5f0c-11aa");
    assert_eq!(echo["platform"], "apple");
    assert_eq!(echo["app-id"], BUNDLE);
    let android = json!({
        "app-id": ANDROID, "platform": "android", "token": fcm_token("bob", 140),
        "device-id": "phone-2",
    });
    assert_eq!(
        t.s.post(account, android.to_string()).await.0,
        StatusCode::OK
    );
    let devices =
        t.s.gw
            .core
            .store
            .sip_devices("bob@example.org", 10)
            .await
            .unwrap();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[0].voip_token.as_deref(), Some(VOIP_TOKEN));
    assert_eq!(devices[0].token, OTHER_TOKEN);

    let event = json!({
        "event": "incoming_session", "call-id": "c-77", "from": "sip:alice@example.org",
        "to": "sip:bob@example.org", "media-type": "video",
    });
    let (status, answer) =
        t.s.post(&format!("{account}/push"), event.to_string())
            .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["description"], "push notification responses");
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert!(data.iter().all(|d| d["code"] == 200), "{answer}");
    assert_eq!(t.apns.only_request().device_token(), VOIP_TOKEN);
    assert_eq!(
        t.fcm.only_send().json()["message"]["data"]["call-id"],
        "c-77"
    );

    // One device, by its id as stored or as the SIP instance.
    let (status, answer) =
        t.s.post(
            &format!("{account}/push/%3Curn:uuid:5f0c-11aa%3E"),
            event.to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["data"].as_array().unwrap().len(), 1);
    assert_eq!(t.apns.requests().len(), 2);
    assert_eq!(t.fcm.sends().len(), 1);

    let (status, answer) =
        t.s.post(&format!("{account}/push/nope"), event.to_string())
            .await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::NOT_FOUND,
            json!({"code": 404, "description": "Push request was not sent: device not found", "data": {"device_id": "nope"}})
        )
    );
    let (status, answer) =
        t.s.post("/v2/tokens/carol@example.org/push", event.to_string())
            .await;
    assert_eq!(
        (status, answer),
        (
            StatusCode::NOT_FOUND,
            json!({"code": 404, "description": "Push request was not sent: user not found", "data": {"account": "carol@example.org"}})
        )
    );

    let delete = |app: &str, device: &str| json!({"app-id": app, "device-id": device}).to_string();
    let r =
        t.s.client
            .delete(format!("{}{account}", t.s.base))
            .body(delete(BUNDLE, "other"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"result": "Not found"})
    );
    for (app, device) in [(BUNDLE, "<urn:uuid:5f0c-11aa>"), (ANDROID, "phone-2")] {
        let r =
            t.s.client
                .delete(format!("{}{account}", t.s.base))
                .body(delete(app, device))
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let r =
        t.s.client
            .delete(format!("{}{account}", t.s.base))
            .body(delete(ANDROID, "phone-2"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"result": "User not found"})
    );
}

/// A stored device whose token the provider calls dead is deleted and its code becomes 200, as
/// Sylk does; the other devices are pushed as usual.
#[tokio::test]
async fn v2_dead_tokens_delete_their_device() {
    let t = sip("", "").await;
    let account = "/v2/tokens/bob@example.org";
    let dead = fcm_token("dead", 140);
    t.fcm.script(
        &dead,
        vec![pushgate_test_support::fcm::Reply::google(
            404,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
        )],
    );
    for (token, device) in [(dead.as_str(), "old-phone"), (VOIP_TOKEN, "iphone")] {
        let (app, platform) = if device == "iphone" {
            (BUNDLE, "apple")
        } else {
            (ANDROID, "firebase")
        };
        let body =
            json!({"app-id": app, "platform": platform, "token": token, "device-id": device});
        assert_eq!(t.s.post(account, body.to_string()).await.0, StatusCode::OK);
    }
    let event = json!({"event": "incoming_session", "call-id": "c-1", "from": "sip:a@b", "to": "sip:bob@example.org", "media-type": "audio"});
    let (status, answer) =
        t.s.post(&format!("{account}/push"), event.to_string())
            .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let codes: Vec<_> = answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].clone())
        .collect();
    assert_eq!(codes, vec![json!(200), json!(200)], "{answer}");
    let left =
        t.s.gw
            .core
            .store
            .sip_devices("bob@example.org", 10)
            .await
            .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].device_id, "iphone");
}

#[tokio::test]
async fn v2_refuses_bad_tokens_bad_accounts_and_too_many_devices() {
    let t = sip("", "[sip]\nmax_devices_per_account = 2\n").await;
    let account = "/v2/tokens/bob@example.org";
    let device = |token: &str, id: &str| {
        json!({"app-id": BUNDLE, "platform": "apple", "token": token, "device-id": id}).to_string()
    };
    let (status, answer) = t.s.post(account, device("nothex", "d0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["description"]
            .as_str()
            .unwrap()
            .starts_with("'token'"),
        "{answer}"
    );
    let (status, answer) =
        t.s.post(
            account,
            json!({"app-id": BUNDLE, "platform": "apple", "token": VOIP_TOKEN}).to_string(),
        )
        .await;
    assert_eq!(
        (status, answer["description"].clone()),
        (StatusCode::BAD_REQUEST, json!("'device-id' is required"))
    );
    for id in ["d1", "d2"] {
        assert_eq!(
            t.s.post(account, device(VOIP_TOKEN, id)).await.0,
            StatusCode::OK
        );
    }
    // The same device again is an update, a third one too many.
    assert_eq!(
        t.s.post(account, device(OTHER_TOKEN, "d2")).await.0,
        StatusCode::OK
    );
    let (status, answer) = t.s.post(account, device(VOIP_TOKEN, "d3")).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert_shape(status, &answer);
    let (status, _) =
        t.s.post("/v2/tokens/bad%0Aaccount", device(VOIP_TOKEN, "d1"))
            .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Each push's request and answer go to the app's remote loggers.
#[tokio::test]
async fn pushes_are_logged_to_the_remote_urls() {
    let logger = PushEndpoint::start().await;
    let t = sip(
        &format!("log_remote_urls = [\"{}\"]\n", logger.url("log")),
        "",
    )
    .await;
    let (status, _) = push(&t.s, &call(BUNDLE, "apple", VOIP_TOKEN, "incoming_session")).await;
    assert_eq!(status, StatusCode::OK);
    for _ in 0..100 {
        if !logger.bodies_for("log").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bodies = logger.bodies_for("log");
    assert_eq!(bodies.len(), 1);
    let entry: Value = serde_json::from_slice(&bodies[0]).unwrap();
    assert_eq!(
        entry["request"]["call-id"],
        "a84b4c76e66710@pc33.example.org"
    );
    assert_eq!(entry["response"]["code"], 200);
    assert_eq!(entry["response"]["data"]["code"], 200);
}

#[tokio::test]
async fn pushes_are_counted_by_app_event_and_code() {
    let t = sip("", "").await;
    push(&t.s, &call(BUNDLE, "apple", VOIP_TOKEN, "incoming_session")).await;
    let text = t.s.get("/metrics").await.text().await.unwrap();
    let line = format!(
        "pushgate_sip_pushes_total{{app=\"{BUNDLE}\",code=\"200\",event=\"incoming_session\"}}"
    );
    assert!(text.contains(&line), "{line} missing");
}

/// The v2 store on PostgreSQL: store, update, push, delete.
#[tokio::test]
async fn v2_tokens_on_postgres() {
    let (apns, _apns_dir, apns_section) = common::apns_sink(BUNDLE).await;
    let toml = format!(
        "{}[http]\nlisten = \"127.0.0.1:0\"\n{apns_section}[sip.apps.\"{BUNDLE}\".apple]\ntype = \"linphone\"\nprovider = \"apns\"\n",
        common::COMPONENT
    );
    common::on_postgres_gateway("sip", &toml, |gw| async move {
        let s = HttpServer::start(gw, HttpConfig::default(), Duration::from_secs(5)).await;
        let account = "/v2/tokens/bob@example.org";
        for token in [OTHER_TOKEN, VOIP_TOKEN] {
            let body =
                json!({"app-id": BUNDLE, "platform": "apple", "token": token, "device-id": "d1"});
            assert_eq!(s.post(account, body.to_string()).await.0, StatusCode::OK);
        }
        let devices =
            s.gw.core
                .store
                .sip_devices("bob@example.org", 10)
                .await
                .unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].token, VOIP_TOKEN, "stored again: updated");
        // A Linphone app's push defaults to a call, always on the VoIP topic.
        let event = json!({"call-id": "c-9", "from": "sip:a@b", "media-type": "audio"});
        let (status, answer) = s.post(&format!("{account}/push"), event.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(
            apns.only_request().header("apns-topic"),
            Some("com.example.sylk.voip")
        );
        let r = s
            .client
            .delete(format!("{}{account}", s.base))
            .body(json!({"app-id": BUNDLE, "device-id": "d1"}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            s.gw.core
                .store
                .sip_devices("bob@example.org", 10)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

/// What a hostile or broken caller can send gets a JSON answer in the API's shape, and nothing
/// reaches a provider.
#[tokio::test]
async fn hostile_requests_get_json_answers() {
    let t = sip("", "").await;
    let nested = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let long_account = format!("/v2/tokens/{}", "a".repeat(300));
    let unknown_app =
        json!({"app-id": "com.other", "platform": "apple", "token": VOIP_TOKEN, "device-id": "d"});
    let cases: Vec<(&str, String, StatusCode)> = vec![
        ("/push", nested, StatusCode::BAD_REQUEST),
        ("/push", "\u{0}\u{1}".to_owned(), StatusCode::BAD_REQUEST),
        (
            "/v2/tokens/%FF%FE",
            "{}".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v2/tokens/%FF/push/x",
            "{}".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            &long_account,
            unknown_app.to_string(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/v2/tokens/bob@example.org",
            unknown_app.to_string(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/v2/tokens/bob@example.org/push",
            "{\"call-id\": 1}".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (path, body, status) in cases {
        let (got, answer) = t.s.post(path, body).await;
        assert_eq!(got, status, "{path}: {answer}");
        assert_shape(got, &answer);
    }
    let r = t.s.get("/push").await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.json::<Value>().await.is_ok(), "a JSON body");
    assert!(t.apns.requests().is_empty());
}

/// A v2 push is counted per device, with each device's own code. (Apps of their own: the
/// metrics are the process's, shared with the other tests.)
#[tokio::test]
async fn v2_pushes_are_counted_per_device() {
    const COUNTED: &str = "com.example.counted";
    const COUNTED_ANDROID: &str = "com.example.counted.android";
    let t = sip(
        "",
        &format!(
            "[sip.apps.\"{COUNTED}\".apple]\ntype = \"sylk\"\nprovider = \"apns\"\n\
             [sip.apps.\"{COUNTED_ANDROID}\".firebase]\ntype = \"sylk\"\nprovider = \"fcm\"\n"
        ),
    )
    .await;
    t.apns.script(
        VOIP_TOKEN,
        vec![Reply::reason(503, "ServiceUnavailable"); 5],
    );
    let account = "/v2/tokens/dave@example.org";
    let apple =
        json!({"app-id": COUNTED, "platform": "apple", "token": VOIP_TOKEN, "device-id": "a"});
    let android = json!({"app-id": COUNTED_ANDROID, "platform": "android", "token": fcm_token("dave", 140), "device-id": "b"});
    for body in [apple, android] {
        assert_eq!(t.s.post(account, body.to_string()).await.0, StatusCode::OK);
    }
    let event = json!({"event": "incoming_session", "call-id": "c-2", "from": "sip:a@b", "to": "sip:dave@example.org", "media-type": "audio"});
    let (status, answer) =
        t.s.post(&format!("{account}/push"), event.to_string())
            .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let text = t.s.get("/metrics").await.text().await.unwrap();
    for (app, code) in [(COUNTED, "202"), (COUNTED_ANDROID, "200")] {
        let line = format!(
            "pushgate_sip_pushes_total{{app=\"{app}\",code=\"{code}\",event=\"incoming_session\"}} 1"
        );
        assert!(text.contains(&line), "{line} missing");
    }
}
