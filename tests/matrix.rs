//! The Matrix push gateway front over real HTTP: `POST /_matrix/push/v1/notify` as a homeserver
//! sends it, through pushgate's HTTP listener, the core and the WebPush provider to local push
//! services whose answers the test sets (a UnifiedPush-style app: the pushkey is the endpoint
//! URL). Sygnal's black-box cases (../shared/reference/other-fronts.md §1.4) in pushgate's terms.

mod common;

use std::time::Duration;

use common::{HttpServer, PushEndpoint, TestGateway};
use pushgate::config::HttpConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

const NOTIFY: &str = "/_matrix/push/v1/notify";
const APP: &str = "org.example.unifiedpush";

fn config(extra: &str) -> String {
    format!(
        "{}[providers.webpush]\nkind = \"webpush\"\nallow_http = true\n\
         allow_private_addresses = true\n\
         [matrix.apps.\"{APP}\"]\nprovider = \"webpush\"\n\
         [matrix.apps.\"org.example.*\"]\nprovider = \"webpush\"\n\
         [matrix.apps.\"org.*\"]\nprovider = \"webpush\"\n{extra}",
        common::COMPONENT
    )
}

async fn server(extra: &str) -> HttpServer {
    HttpServer::start(
        TestGateway::sqlite(&config(extra)).await,
        HttpConfig::default(),
        Duration::from_secs(5),
    )
    .await
}

fn device(app_id: &str, pushkey: &str) -> Value {
    json!({"app_id": app_id, "pushkey": pushkey, "pushkey_ts": 1_700_000_000, "data": {}})
}

/// A message notification for `devices`, as Synapse sends it.
fn message(devices: Vec<Value>) -> Value {
    json!({"notification": {
        "event_id": "$event", "room_id": "!room:example.org", "type": "m.room.message",
        "sender": "@bob:example.org", "sender_display_name": "Bob",
        "room_name": "Lunch", "prio": "high",
        "content": {"msgtype": "m.text", "body": "noon?"},
        "counts": {"unread": 2},
        "devices": devices,
    }})
}

async fn notify(s: &HttpServer, body: &Value) -> (StatusCode, Value) {
    s.post(NOTIFY, body.to_string()).await
}

#[tokio::test]
async fn a_message_is_pushed_and_nothing_rejected() {
    let s = server("").await;
    let endpoint = PushEndpoint::start().await;
    let (status, answer) = notify(&s, &message(vec![device(APP, &endpoint.url("d1"))])).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"rejected": []})));
    assert_eq!(endpoint.accepted_for("d1"), 1);
}

/// The app gets the content, and the event's room, id and counts on top of the pusher's
/// `default_payload`; a `default_payload` that is no object, or too large for any provider,
/// gets the pushkey rejected.
#[tokio::test]
async fn the_app_gets_its_default_payload_and_the_event() {
    let s = server("").await;
    let endpoint = PushEndpoint::start().await;
    let mut with_payload = device(APP, &endpoint.url("d1"));
    with_payload["data"] = json!({"default_payload": {"app": "x", "room_id": "forged"}});
    let mut bad = device(APP, &endpoint.url("d2"));
    bad["data"] = json!({"default_payload": ["not", "an", "object"]});
    let bad_key = bad["pushkey"].clone();
    // Larger than any provider carries: it could never be sent, so it is not queued either.
    let mut huge = device(APP, &endpoint.url("d3"));
    huge["data"] = json!({"default_payload": {"pad": "x".repeat(5000)}});
    let huge_key = huge["pushkey"].clone();
    let (status, answer) = notify(&s, &message(vec![with_payload, bad, huge])).await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({"rejected": [bad_key, huge_key]}))
    );
    assert_eq!(s.gw.core.store.queue_depth().await.unwrap().rows, 0);
    let bodies = endpoint.bodies_for("d1");
    assert_eq!(bodies.len(), 1);
    let got: Value = serde_json::from_slice(&bodies[0]).unwrap();
    assert_eq!(got["app"], "x");
    assert_eq!(got["room_id"], "!room:example.org", "{got}");
    assert_eq!(got["event_id"], "$event");
    assert_eq!(got["unread_count"], 2);
    assert_eq!(got["badge"], 2);
    assert_eq!(got["body"], "noon?");
    assert_eq!(got["kind"], "alert");
}

/// A homeserver that missed our answer sends the event again: it is not pushed twice. A
/// pushkey found dead is rejected again the next time, without a push.
#[tokio::test]
async fn a_repeated_event_is_pushed_once_and_a_dead_pushkey_stays_rejected() {
    let s = server("").await;
    let endpoint = PushEndpoint::start().await;
    let key = endpoint.url("d1");
    for _ in 0..2 {
        assert_eq!(
            notify(&s, &message(vec![device(APP, &key)])).await,
            (StatusCode::OK, json!({"rejected": []}))
        );
    }
    assert_eq!(endpoint.received(), 1);

    endpoint.answer_with(410);
    let mut next = message(vec![device(APP, &key)]);
    next["notification"]["event_id"] = json!("$next");
    assert_eq!(
        notify(&s, &next).await,
        (StatusCode::OK, json!({"rejected": [key.clone()]}))
    );
    next["notification"]["event_id"] = json!("$after");
    assert_eq!(
        notify(&s, &next).await,
        (StatusCode::OK, json!({"rejected": [key]}))
    );
    assert_eq!(
        endpoint.received(),
        2,
        "the dead pushkey was not tried again"
    );
}

#[tokio::test]
async fn a_dead_token_is_rejected_and_only_that_one() {
    let s = server("").await;
    let alive = PushEndpoint::start().await;
    let dead = PushEndpoint::start().await;
    dead.answer_with(410);
    let gone = dead.url("gone");
    let (status, answer) = notify(
        &s,
        &message(vec![device(APP, &alive.url("d1")), device(APP, &gone)]),
    )
    .await;
    assert_eq!(
        (status, answer),
        (StatusCode::OK, json!({"rejected": [gone]}))
    );
    assert_eq!(alive.accepted_for("d1"), 1);
}

#[tokio::test]
async fn an_app_id_no_app_or_two_globs_match_is_rejected() {
    let s = server("").await;
    let endpoint = PushEndpoint::start().await;
    let unknown = endpoint.url("unknown");
    let ambiguous = endpoint.url("ambiguous");
    let globbed = endpoint.url("globbed");
    let (status, answer) = notify(
        &s,
        &message(vec![
            device("com.nobody", &unknown),
            // "org.example.*" and "org.*" both match.
            device("org.example.other", &ambiguous),
            // Only "org.*" matches.
            device("org.other", &globbed),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!({"rejected": [unknown, ambiguous]}));
    assert_eq!(endpoint.received(), 1);
    assert_eq!(endpoint.accepted_for("globbed"), 1);
}

/// Synapse holds every later push for a pusher behind a failed one, retrying it for up to an
/// hour: a failure the retry queue took is answered 200, and the queue delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_trouble_is_queued_answered_200_and_delivered_later() {
    let s = server("").await;
    let endpoint = PushEndpoint::start().await;
    endpoint.answer_with(503);
    let (status, answer) = notify(&s, &message(vec![device(APP, &endpoint.url("d1"))])).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({"rejected": []})));
    let store = &s.gw.core.store;
    assert_eq!(store.queue_depth().await.unwrap().rows, 1);

    let (_stop, stop) = tokio::sync::watch::channel(false);
    pushgate::core::retry::spawn(s.gw.core.clone(), stop);
    endpoint.answer_with(201);
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while endpoint.accepted_for("d1") == 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "not retried within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Never 200 with a silent drop: what could be neither delivered nor queued is a 502, which
/// the homeserver retries.
#[tokio::test]
async fn provider_trouble_that_cannot_be_queued_is_a_502() {
    let s = server("[retry]\nmax_queued = 0\n").await;
    let endpoint = PushEndpoint::start().await;
    endpoint.answer_with(503);
    let (status, answer) = notify(&s, &message(vec![device(APP, &endpoint.url("d1"))])).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer["errcode"], "M_UNKNOWN");
}

#[tokio::test]
async fn counts_alone_update_the_badge_and_an_empty_notification_pushes_nothing() {
    let s = server("").await;
    let endpoint = PushEndpoint::start().await;
    let key = endpoint.url("d1");
    let badge = json!({"notification": {"counts": {"unread": 0}, "devices": [device(APP, &key)]}});
    assert_eq!(
        notify(&s, &badge).await,
        (StatusCode::OK, json!({"rejected": []}))
    );
    assert_eq!(endpoint.accepted_for("d1"), 1);
    let nothing = json!({"notification": {"devices": [device(APP, &key)]}});
    assert_eq!(
        notify(&s, &nothing).await,
        (StatusCode::OK, json!({"rejected": []}))
    );
    assert_eq!(
        endpoint.received(),
        1,
        "no push for neither an event nor counts"
    );
}

#[tokio::test]
async fn malformed_requests_get_400_with_a_matrix_errcode() {
    let s = server("").await;
    for (body, errcode) in [
        ("not json".to_owned(), "M_NOT_JSON"),
        ("{}".to_owned(), "M_MISSING_PARAM"),
        (r#"{"notification":{}}"#.to_owned(), "M_MISSING_PARAM"),
        (
            r#"{"notification":{"devices":"x"}}"#.to_owned(),
            "M_BAD_JSON",
        ),
        (
            r#"{"notification":{"devices":[{"app_id":"a"}]}}"#.to_owned(),
            "M_BAD_JSON",
        ),
    ] {
        let (status, answer) = s.post(NOTIFY, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(answer["errcode"], errcode, "{body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    let huge = format!(
        r#"{{"notification":{{"devices":[],"pad":"{}"}}}}"#,
        "x".repeat(600 * 1024)
    );
    let (status, answer) = s.post(NOTIFY, huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["errcode"], "M_TOO_LARGE");
}

#[tokio::test]
async fn discovery_and_unknown_paths_answer_as_matrix_does() {
    let s = server("").await;
    let r = s.get(NOTIFY).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"unifiedpush": {"gateway": "matrix"}})
    );
    let r = s.get("/_matrix/push/v2/other").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errcode"],
        "M_UNRECOGNIZED"
    );
    let r = s
        .client
        .put(format!("{}{NOTIFY}", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errcode"],
        "M_UNRECOGNIZED"
    );
}

/// pushgate with an APNs provider on a local HTTP/2 APNs, and `apps` (Matrix app sections
/// naming provider `apns`).
async fn with_apns(
    apps: &str,
) -> (
    HttpServer,
    pushgate_test_support::apns::MockApns,
    tempfile::TempDir,
) {
    let (apns, dir, section) = common::apns_sink("org.example.matrix").await;
    let s = server(&format!("{section}{apps}")).await;
    (s, apns, dir)
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// An APNs app as Matrix apps send it: the pushkey is the base64 of the token, which goes to
/// APNs as hex; the badge is unread plus missed calls; `prio: low` is APNs priority 5.
#[tokio::test]
async fn an_apns_app_gets_hex_tokens_its_badge_and_priority() {
    let (s, apns, _dir) =
        with_apns("[matrix.apps.\"org.example.ios\"]\nprovider = \"apns\"\npushkey = \"base64\"\n")
            .await;
    let pushkey = base64(&[0xab_u8; 32]);
    let mut body = message(vec![device("org.example.ios", &pushkey)]);
    body["notification"]["counts"] = json!({"unread": 2, "missed_calls": 1});
    assert_eq!(
        notify(&s, &body).await,
        (StatusCode::OK, json!({"rejected": []}))
    );
    let r = apns.only_request();
    assert_eq!(r.device_token(), "ab".repeat(32));
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(r.header("apns-priority"), Some("10"));
    let payload: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(payload["aps"]["badge"], 3, "{payload}");
    assert_eq!(payload["room_id"], "!room:example.org", "{payload}");
    assert_eq!(payload["event_id"], "$event", "{payload}");

    body["notification"]["prio"] = json!("low");
    body["notification"]["event_id"] = json!("$low");
    assert_eq!(
        notify(&s, &body).await,
        (StatusCode::OK, json!({"rejected": []}))
    );
    let low = apns.requests().pop().unwrap();
    assert_eq!(low.header("apns-priority"), Some("5"));
}

/// An app whose pushers carry PushKit tokens (`voip = true`) gets call invites as VoIP pushes
/// and nothing else.
#[tokio::test]
async fn a_voip_app_gets_calls_only_as_voip_pushes() {
    let (s, apns, _dir) = with_apns(
        "[matrix.apps.\"org.example.ios.voip\"]\nprovider = \"apns\"\npushkey = \"base64\"\n\
         voip = true\n",
    )
    .await;
    let pushkey = base64(&[0xcd_u8; 32]);
    let devices = vec![device("org.example.ios.voip", &pushkey)];
    assert_eq!(
        notify(&s, &message(devices.clone())).await,
        (StatusCode::OK, json!({"rejected": []}))
    );
    assert!(
        apns.requests().is_empty(),
        "a message is not for a PushKit token"
    );
    let mut call = message(devices);
    call["notification"]["type"] = json!("m.call.invite");
    call["notification"]["event_id"] = json!("$call");
    assert_eq!(
        notify(&s, &call).await,
        (StatusCode::OK, json!({"rejected": []}))
    );
    let r = apns.only_request();
    assert_eq!(r.device_token(), "cd".repeat(32));
    assert_eq!(r.header("apns-push-type"), Some("voip"));
    assert_eq!(r.header("apns-topic"), Some("org.example.matrix.voip"));
}

/// An FCM app: the pushkey is the registration token; the app gets the room, event and counts
/// as data strings, and `prio: low` is Android priority normal.
#[tokio::test]
async fn an_fcm_app_gets_data_strings_and_priority() {
    use pushgate_test_support::fixtures::fcm_token;

    let (fcm, _dir, section) = common::fcm_sink(
        "message_options = { android = { restricted_package_name = \"org.example\" } }\n",
    )
    .await;
    let s = server(&format!(
        "{section}[matrix.apps.\"org.example.android\"]\nprovider = \"fcm\"\n"
    ))
    .await;
    let token = fcm_token("matrix", 140);
    let mut body = message(vec![device("org.example.android", &token)]);
    body["notification"]["prio"] = json!("low");
    assert_eq!(
        notify(&s, &body).await,
        (StatusCode::OK, json!({"rejected": []}))
    );
    let sent = fcm.only_send();
    assert_eq!(sent.device_token(), token);
    let m: Value = serde_json::from_slice(&sent.body).unwrap();
    let data = &m["message"]["data"];
    assert_eq!(data["room_id"], "!room:example.org", "{m}");
    assert_eq!(data["event_id"], "$event", "{m}");
    assert_eq!(data["unread_count"], "2", "{m}");
    assert_eq!(m["message"]["android"]["priority"], "normal", "{m}");
    assert_eq!(
        m["message"]["android"]["restricted_package_name"], "org.example",
        "the provider's message_options: {m}"
    );
}

/// The pushkey comes from whoever sends the request: one that is no valid token of the app's
/// provider (a path for an APNs app, an address the endpoint policy refuses for a WebPush app)
/// is rejected, and nothing is sent anywhere.
#[tokio::test]
async fn hostile_pushkeys_are_rejected_without_a_request() {
    let (s, apns, _dir) = with_apns(
        "[matrix.apps.\"org.example.ios\"]\nprovider = \"apns\"\n\
         [matrix.apps.\"org.example.web\"]\nprovider = \"strict\"\n\
         [providers.strict]\nkind = \"webpush\"\n",
    )
    .await;
    let keys = [
        ("org.example.ios", "../../3/device/other"),
        ("org.example.ios", "not hex at all"),
        ("org.example.web", "http://127.0.0.1:9/internal"),
        (
            "org.example.web",
            "https://169.254.169.254/latest/meta-data",
        ),
        ("org.example.web", "file:///etc/passwd"),
    ];
    let devices = keys.iter().map(|(app, key)| device(app, key)).collect();
    let (status, answer) = notify(&s, &message(devices)).await;
    assert_eq!(status, StatusCode::OK);
    let rejected: Vec<&str> = keys.iter().map(|(_, k)| *k).collect();
    assert_eq!(answer, json!({ "rejected": rejected }));
    assert!(apns.requests().is_empty());
}

/// WebPush `Urgency` (RFC 8030 §5.3): a message (`prio: high`, the default) is normal, `prio:
/// low` low, and only a call high.
#[tokio::test]
async fn webpush_urgency_is_normal_for_messages_low_for_low_and_high_for_calls() {
    let s = server("").await;
    let endpoint = PushEndpoint::start().await;
    let devices = || vec![device(APP, &endpoint.url("d1"))];
    let mut low = message(devices());
    low["notification"]["prio"] = json!("low");
    low["notification"]["event_id"] = json!("$low");
    let mut call = message(devices());
    call["notification"]["type"] = json!("m.call.invite");
    call["notification"]["event_id"] = json!("$call");
    for body in [message(devices()), low, call] {
        assert_eq!(
            notify(&s, &body).await,
            (StatusCode::OK, json!({"rejected": []}))
        );
    }
    assert_eq!(endpoint.urgencies_for("d1"), ["normal", "low", "high"]);
}

/// The UnifiedPush Matrix gateway rule: an endpoint that answers 401–404 (or 410) to the plain
/// POST takes no more pushes, and its pushkey is rejected.
#[tokio::test]
async fn a_unifiedpush_endpoint_refusing_with_401_to_404_is_rejected() {
    let s = server("").await;
    for status in [401, 403, 404] {
        let endpoint = PushEndpoint::start().await;
        endpoint.answer_with(status);
        let key = endpoint.url("d1");
        assert_eq!(
            notify(&s, &message(vec![device(APP, &key)])).await,
            (StatusCode::OK, json!({"rejected": [key]})),
            "{status}"
        );
        assert_eq!(endpoint.received(), 1, "{status}");
    }
    assert_eq!(s.gw.core.store.queue_depth().await.unwrap().rows, 0);
}

/// An app with `call_tweaks`: an event whose tweaks ring (a group call, a call not typed
/// `m.call.invite`) is a call for it, a VoIP push to its PushKit token; other events are not.
/// The app's configured `default_payload` is under every push.
#[tokio::test]
async fn call_tweaks_make_a_ringing_event_a_call_with_the_apps_payload() {
    let (s, apns, _dir) = with_apns(
        "[matrix.apps.\"org.example.ios.voip\"]\nprovider = \"apns\"\npushkey = \"base64\"\n\
         voip = true\ncall_tweaks = { sound = \"ring\" }\n\
         default_payload = { app = \"configured\", event_id = \"forged\" }\n",
    )
    .await;
    let pushkey = base64(&[0xee_u8; 32]);
    let mut ringing = device("org.example.ios.voip", &pushkey);
    ringing["tweaks"] = json!({"sound": "ring"});
    let mut plain = device("org.example.ios.voip", &pushkey);
    plain["tweaks"] = json!({"sound": "default"});
    let mut body = message(vec![plain]);
    body["notification"]["type"] = json!("org.matrix.msc4075.call.notify");
    assert_eq!(
        notify(&s, &body).await,
        (StatusCode::OK, json!({"rejected": []}))
    );
    assert!(apns.requests().is_empty(), "no ring tweak: not a call");
    body["notification"]["devices"] = json!([ringing]);
    body["notification"]["event_id"] = json!("$ring");
    assert_eq!(
        notify(&s, &body).await,
        (StatusCode::OK, json!({"rejected": []}))
    );
    let r = apns.only_request();
    assert_eq!(r.header("apns-push-type"), Some("voip"));
    let payload: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(payload["app"], "configured", "{payload}");
    assert_eq!(payload["event_id"], "$ring", "{payload}");
}

/// Whatever a homeserver may send within the spec fits every provider: the largest app data,
/// ids at the spec's limit and names and a body made of the characters JSON writes longest
/// are delivered, to APNs (alert and badge-only), FCM and a UnifiedPush endpoint, never a 502
/// the homeserver would retry for a day.
#[tokio::test]
async fn the_largest_request_within_the_limits_fits_every_provider() {
    use pushgate_test_support::fixtures::fcm_token;

    let (apns, _apns_dir, apns_section) = common::apns_sink("org.example.matrix").await;
    let (fcm, _fcm_dir, fcm_section) = common::fcm_sink("").await;
    let half = pushgate::fronts::matrix::notify::MAX_DEFAULT_PAYLOAD_BYTES / 2 - 16;
    let s = server(&format!(
        "{apns_section}{fcm_section}\
         [matrix.apps.\"org.example.ios\"]\nprovider = \"apns\"\n\
         default_payload = {{ app = \"{}\" }}\n\
         [matrix.apps.\"org.example.android\"]\nprovider = \"fcm\"\n\
         default_payload = {{ app = \"{}\" }}\n\
         [matrix.apps.\"org.example.web\"]\nprovider = \"webpush\"\n\
         default_payload = {{ app = \"{}\" }}\n",
        "a".repeat(half),
        "a".repeat(half),
        "a".repeat(half)
    ))
    .await;
    let endpoint = PushEndpoint::start().await;
    let apns_token = "ab".repeat(32);
    let fcm_token = fcm_token("matrix", 140);
    let pusher = json!({"default_payload": {"pusher": {"nested": "p".repeat(half - 30)}}});
    let devices: Vec<Value> = [
        ("org.example.ios", apns_token.clone()),
        ("org.example.android", fcm_token.clone()),
        ("org.example.web", endpoint.url("d1")),
    ]
    .into_iter()
    .map(|(app, key)| {
        let mut d = device(app, &key);
        d["data"] = pusher.clone();
        d
    })
    .collect();
    let name = "\"\u{1}😀".repeat(400);
    let body = json!({"notification": {
        "event_id": format!("${}", "e".repeat(254)),
        "room_id": format!("!{}", "r".repeat(254)),
        "type": "m.room.message",
        "sender": format!("@{}", "s".repeat(254)),
        "sender_display_name": name, "room_name": name,
        "content": {"msgtype": "m.text", "body": "\"\u{1}😀".repeat(2000)},
        "counts": {"unread": u32::MAX, "missed_calls": u32::MAX},
        "devices": devices,
    }});
    assert_eq!(
        notify(&s, &body).await,
        (StatusCode::OK, json!({"rejected": []}))
    );
    let mut badge_only = body.clone();
    for member in ["event_id", "type", "content", "sender_display_name"] {
        badge_only["notification"]
            .as_object_mut()
            .unwrap()
            .remove(member);
    }
    assert_eq!(
        notify(&s, &badge_only).await,
        (StatusCode::OK, json!({"rejected": []}))
    );
    assert_eq!(apns.requests_for(&apns_token).len(), 2);
    assert_eq!(fcm.sends().len(), 2);
    assert_eq!(endpoint.accepted_for("d1"), 2);
    assert_eq!(s.gw.core.store.queue_depth().await.unwrap().rows, 0);
}
