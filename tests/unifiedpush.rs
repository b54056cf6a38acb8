//! UnifiedPush over XMPP through the component and the HTTP listener: a distributor registers
//! an app instance with an IQ in either dialect, an app server POSTs to the endpoint, and the
//! push reaches the distributor's full JID as a `<message>` (genofire) or an `<iq><push/></iq>`
//! (Conversations), whose answer decides what the app server is told
//! (../shared/reference/other-fronts.md §3).

mod common;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{COMPONENT, HttpServer, TestGateway, route};
use pushgate::config::HttpConfig;
use pushgate::fronts::xmpp::Outbox;
use reqwest::StatusCode;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::DefinedCondition;

const NS_C: &str = "http://gultsch.de/xmpp/drafts/unified-push";
const NS_G: &str = "unifiedpush.org";
const PHONE: &str = "alice@example.org/phone";

fn toml(extra: &str) -> String {
    format!(
        "{COMPONENT}[http]\nlisten = \"127.0.0.1:0\"\n[unifiedpush]\nenabled = true\n\
         endpoint_base_url = \"https://up.example.org/\"\nanswer_timeout_secs = 1\n{extra}"
    )
}

fn iq(xml: &str) -> Stanza {
    let el: Element = xml.parse().unwrap();
    Iq::try_from(el).unwrap().into()
}

async fn ask(
    gw: &TestGateway,
    from: &str,
    payload: &str,
) -> Result<Option<Element>, (DefinedCondition, Option<Element>)> {
    let request = iq(&format!(
        "<iq xmlns='jabber:component:accept' type='set' id='r1' from='{from}' to='push.test'>{payload}</iq>"
    ));
    match route(gw, request).await {
        Some(Stanza::Iq(Iq::Result { payload, .. })) => Ok(payload),
        Some(Stanza::Iq(Iq::Error { error, payload, .. })) => {
            Err((error.defined_condition, payload))
        }
        other => panic!("unexpected answer {other:?}"),
    }
}

fn conversations(application: &str, instance: &str) -> String {
    format!("<register xmlns='{NS_C}' application='{application}' instance='{instance}'/>")
}

async fn register_conversations(gw: &TestGateway, from: &str, instance: &str) -> String {
    let answer = ask(gw, from, &conversations("YXBw", instance))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.name(), "registered");
    assert!(
        answer.attr("expiration").is_some_and(|e| e.ends_with('Z')),
        "{answer:?}"
    );
    answer.attr("endpoint").unwrap().to_owned()
}

/// The endpoint's path on our listener (the configured base is the public URL).
fn path_of(endpoint: &str) -> String {
    endpoint
        .strip_prefix("https://up.example.org")
        .unwrap()
        .to_owned()
}

async fn next_stanza(outbox: &mut Outbox) -> Stanza {
    tokio::time::timeout(Duration::from_secs(5), outbox.recv())
        .await
        .expect("a stanza within 5 s")
        .expect("outbox open")
}

async fn post(s: &HttpServer, path: &str, body: Vec<u8>) -> reqwest::Response {
    s.client
        .post(format!("{}{path}", s.base))
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn server(extra: &str) -> (HttpServer, Outbox) {
    let mut gw = TestGateway::sqlite(&toml(extra)).await;
    let outbox = gw.take_outbox();
    let s = HttpServer::start(gw, HttpConfig::default(), Duration::from_secs(5)).await;
    (s, outbox)
}

/// Conversations' dialect end to end: the same app instance gets the same endpoint again; a
/// push goes to the full JID as base64 in an IQ; `result` is a 201 with `TTL: 0`; the
/// distributor's `item-not-found` revokes the endpoint, which then answers 404 at once.
async fn conversations_round_trip(mut gw: TestGateway) {
    let mut outbox = gw.take_outbox();
    let s = HttpServer::start(gw, HttpConfig::default(), Duration::from_secs(5)).await;
    let endpoint = register_conversations(&s.gw, PHONE, "aW5zdA==").await;
    assert!(
        endpoint.starts_with("https://up.example.org/up/"),
        "{endpoint}"
    );
    assert_eq!(
        register_conversations(&s.gw, "alice@example.org/tablet", "aW5zdA==").await,
        endpoint,
        "the same instance, registered again from another resource, keeps its endpoint"
    );
    assert_ne!(
        register_conversations(&s.gw, PHONE, "b3RoZXI=").await,
        endpoint
    );
    let path = path_of(&endpoint);

    let body = vec![0u8, 159, 146, 150, 1, 2, 3];
    let push = tokio::spawn({
        let (client, url) = (s.client.clone(), format!("{}{path}", s.base));
        let body = body.clone();
        async move { client.post(url).body(body).send().await.unwrap() }
    });
    let Stanza::Iq(Iq::Set {
        to, id, payload, ..
    }) = next_stanza(&mut outbox).await
    else {
        panic!("not an IQ set");
    };
    assert_eq!(
        to.unwrap().to_string(),
        "alice@example.org/tablet",
        "the latest resource"
    );
    assert_eq!((payload.name(), payload.ns().as_str()), ("push", NS_C));
    assert_eq!(payload.attr("instance"), Some("aW5zdA=="));
    assert_eq!(STANDARD.decode(payload.text()).unwrap(), body);
    // Someone else answering for the distributor does not count …
    let forged = format!(
        "<iq xmlns='jabber:component:accept' type='result' id='{id}' from='mallory@example.org/x' to='push.test'/>"
    );
    assert!(route(&s.gw, iq(&forged)).await.is_none());
    // … the distributor's answer does.
    let answer = format!(
        "<iq xmlns='jabber:component:accept' type='result' id='{id}' from='alice@example.org/tablet' to='push.test'/>"
    );
    assert!(route(&s.gw, iq(&answer)).await.is_none());
    let r = push.await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["ttl"], "0");
    assert!(r.headers()["location"].to_str().unwrap().starts_with(&path));

    let push = tokio::spawn({
        let (client, url) = (s.client.clone(), format!("{}{path}", s.base));
        async move { client.post(url).body("again").send().await.unwrap() }
    });
    let Stanza::Iq(Iq::Set { id, .. }) = next_stanza(&mut outbox).await else {
        panic!("not an IQ set");
    };
    let gone = format!(
        "<iq xmlns='jabber:component:accept' type='error' id='{id}' from='alice@example.org/tablet' to='push.test'>\
         <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    );
    assert!(route(&s.gw, iq(&gone)).await.is_none());
    assert_eq!(push.await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(
        post(&s, &path, b"x".to_vec()).await.status(),
        StatusCode::NOT_FOUND
    );
    assert!(
        outbox.try_recv().is_err(),
        "a revoked endpoint sends nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_round_trip_sqlite() {
    conversations_round_trip(TestGateway::sqlite(&toml("")).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_round_trip_postgres() {
    common::on_postgres_gateway("up", &toml(""), conversations_round_trip).await
}

/// A distributor that does not answer, or answers with another error, did not take the push:
/// 503 with `Retry-After`, and the endpoint stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_failing_distributor_is_a_503_and_keeps_its_endpoint() {
    let (s, mut outbox) = server("").await;
    let path = path_of(&register_conversations(&s.gw, PHONE, "aQ==").await);
    let r = post(&s, &path, b"hello".to_vec()).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "30");
    assert!(matches!(
        next_stanza(&mut outbox).await,
        Stanza::Iq(Iq::Set { .. })
    ));
    assert_eq!(s.gw.pending.len(), 0, "the timed-out wait freed its place");

    let push = tokio::spawn({
        let (client, url) = (s.client.clone(), format!("{}{path}", s.base));
        async move { client.post(url).body("x").send().await.unwrap() }
    });
    let Stanza::Iq(Iq::Set { id, .. }) = next_stanza(&mut outbox).await else {
        panic!("not an IQ set");
    };
    let busy = format!(
        "<iq xmlns='jabber:component:accept' type='error' id='{id}' from='{PHONE}' to='push.test'>\
         <error type='wait'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    );
    route(&s.gw, iq(&busy)).await;
    assert_eq!(
        push.await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let push = tokio::spawn({
        let (client, url) = (s.client.clone(), format!("{}{path}", s.base));
        async move { client.post(url).body("x").send().await.unwrap() }
    });
    let Stanza::Iq(Iq::Set { id, .. }) = next_stanza(&mut outbox).await else {
        panic!("not an IQ set");
    };
    route(&s.gw, iq(&format!("<iq xmlns='jabber:component:accept' type='result' id='{id}' from='{PHONE}' to='push.test'/>"))).await;
    assert_eq!(
        push.await.unwrap().status(),
        StatusCode::CREATED,
        "the endpoint stayed"
    );
}

/// genofire's dialect: the push is a `<message>` with the public token as subject and the body
/// as text (base64 when it is not UTF-8); unregistering removes the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genofire_pushes_are_messages_and_unregistering_ends_them() {
    let (s, mut outbox) = server("").await;
    let register = format!("<register xmlns='{NS_G}'><token>pub-1</token></register>");
    let answer = ask(&s.gw, PHONE, &register).await.unwrap().unwrap();
    let endpoint = answer.get_child("endpoint", NS_G).unwrap().text();
    let path = path_of(&endpoint);
    for (body, expected) in [
        (b"{\"hello\":1}".to_vec(), "{\"hello\":1}".to_owned()),
        (vec![0xff, 0x00, 0x10], STANDARD.encode([0xff, 0x00, 0x10])),
    ] {
        let r = post(&s, &path, body).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let Stanza::Message(m) = next_stanza(&mut outbox).await else {
            panic!("not a message");
        };
        assert_eq!(m.to.unwrap().to_string(), PHONE);
        assert_eq!(
            m.subjects.values().next().map(String::as_str),
            Some("pub-1")
        );
        assert_eq!(m.bodies.values().next(), Some(&expected));
    }
    let unregister = format!("<unregister xmlns='{NS_G}'><token>pub-1</token></unregister>");
    assert_eq!(ask(&s.gw, PHONE, &unregister).await, Ok(None));
    assert_eq!(
        post(&s, &path, b"x".to_vec()).await.status(),
        StatusCode::NOT_FOUND
    );
}

/// Malformed registrations get a real condition (and genofire's own error text element);
/// unknown tokens and large bodies get 404 and 413; an account holds a bounded number of
/// endpoints; discovery answers as UnifiedPush servers do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_answer() {
    let (s, _outbox) = server("max_endpoints_per_account = 2\n").await;
    let (condition, payload) = ask(&s.gw, PHONE, &format!("<register xmlns='{NS_G}'/>"))
        .await
        .unwrap_err();
    assert_eq!(condition, DefinedCondition::BadRequest);
    let payload = payload.expect("genofire's error element");
    assert!(
        payload
            .get_child("error", NS_G)
            .is_some_and(|e| e.text().contains("token")),
        "{payload:?}"
    );
    let (condition, _) = ask(&s.gw, "alice@example.org", &conversations("a", "i"))
        .await
        .unwrap_err();
    assert_eq!(
        condition,
        DefinedCondition::BadRequest,
        "a bare JID cannot take pushes"
    );
    let (condition, _) = ask(
        &s.gw,
        PHONE,
        &format!("<register xmlns='{NS_C}' application='a'/>"),
    )
    .await
    .unwrap_err();
    assert_eq!(condition, DefinedCondition::BadRequest);

    let path = path_of(&register_conversations(&s.gw, PHONE, "MQ==").await);
    register_conversations(&s.gw, PHONE, "Mg==").await;
    let (condition, _) = ask(&s.gw, PHONE, &conversations("YXBw", "Mw=="))
        .await
        .unwrap_err();
    assert_eq!(condition, DefinedCondition::PolicyViolation);
    register_conversations(&s.gw, PHONE, "MQ==").await;

    let r = post(&s, &path, vec![b'x'; 4097]).await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    for unknown in [
        "/up/nope",
        "/up/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        assert_eq!(
            post(&s, unknown, b"x".to_vec()).await.status(),
            StatusCode::NOT_FOUND
        );
    }
    for discovery in ["/up", path.as_str()] {
        let r = s.get(discovery).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v, serde_json::json!({"unifiedpush": {"version": 1}}));
    }
}

/// Off unless configured: registrations are refused and disco does not offer the features.
#[tokio::test]
async fn without_the_section_there_is_no_unifiedpush() {
    let gw = TestGateway::sqlite(COMPONENT).await;
    let (condition, _) = ask(&gw, PHONE, &conversations("a", "i")).await.unwrap_err();
    assert_eq!(condition, DefinedCondition::ServiceUnavailable);
    let on = TestGateway::sqlite(&toml("")).await;
    for (gw, offered) in [(&gw, false), (&on, true)] {
        let info = iq(
            "<iq xmlns='jabber:component:accept' type='get' id='d' from='alice@example.org/phone' to='push.test'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        );
        let Some(Stanza::Iq(Iq::Result {
            payload: Some(q), ..
        })) = route(gw, info).await
        else {
            panic!("no disco answer");
        };
        let features: Vec<String> = q
            .children()
            .filter_map(|f| f.attr("var").map(str::to_owned))
            .collect();
        assert_eq!(features.iter().any(|f| f == NS_C), offered, "{features:?}");
        assert_eq!(features.iter().any(|f| f == NS_G), offered, "{features:?}");
    }
}

/// Answers the next push IQ in the outbox with `answer` (`result`, or an error condition), as
/// the distributor (or its server, for a distributor that is away) would; its payload.
async fn answer_next(gw: &TestGateway, outbox: &mut Outbox, condition: Option<&str>) -> Element {
    let Stanza::Iq(Iq::Set {
        id, to, payload, ..
    }) = next_stanza(outbox).await
    else {
        panic!("not an IQ set");
    };
    let to = to.unwrap();
    let xml = match condition {
        None => format!(
            "<iq xmlns='jabber:component:accept' type='result' id='{id}' from='{to}' to='push.test'/>"
        ),
        Some(c) => format!(
            "<iq xmlns='jabber:component:accept' type='error' id='{id}' from='{to}' to='push.test'>\
             <error type='cancel'><{c} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        ),
    };
    assert!(route(gw, iq(&xml)).await.is_none());
    payload
}

async fn post_with(
    s: &HttpServer,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> tokio::task::JoinHandle<reqwest::Response> {
    let mut request = s
        .client
        .post(format!("{}{path}", s.base))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    tokio::spawn(async move { request.send().await.unwrap() })
}

/// A distributor that is away (its server answers the push `service-unavailable`): a push with
/// a `TTL` is kept (201, the `TTL` it is kept for, at most `max_ttl_secs`), a newer one with the
/// same `Topic` replaces it, an endpoint holds a bounded number; the distributor's directed
/// presence flushes them, oldest first, and they are gone once taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_for_a_distributor_that_is_away_are_kept_and_flushed_on_presence() {
    let (s, mut outbox) = server("max_kept_per_endpoint = 2\nmax_ttl_secs = 3600\n").await;
    let path = path_of(&register_conversations(&s.gw, PHONE, "aw==").await);
    let kept = [
        ("first", vec![("ttl", "60"), ("topic", "room1")]),
        (
            "second",
            vec![("ttl", "86400"), ("topic", "room1"), ("urgency", "high")],
        ),
        ("third", vec![("ttl", "60")]),
    ];
    for (body, headers) in &kept {
        let push = post_with(&s, &path, body, headers).await;
        answer_next(&s.gw, &mut outbox, Some("service-unavailable")).await;
        let r = push.await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{body}");
        let ttl = if *body == "second" { "3600" } else { "60" };
        assert_eq!(r.headers()["ttl"], ttl, "{body}");
    }
    assert_eq!(
        s.gw.core.store.up_messages_kept().await.unwrap(),
        2,
        "second replaced first"
    );
    // The gauges operators see count them, and the endpoints by dialect.
    pushgate::core::stats::refresh_registrations(&s.gw.core.store)
        .await
        .unwrap();
    let metrics = &pushgate::metrics::METRICS;
    assert_eq!(metrics.unifiedpush_kept.get(), 2);
    assert_eq!(
        metrics
            .unifiedpush_endpoints
            .with_label_values(&["conversations"])
            .get(),
        1
    );
    let push = post_with(&s, &path, "fourth", &[("ttl", "60")]).await;
    answer_next(&s.gw, &mut outbox, Some("service-unavailable")).await;
    let r = push.await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));

    // Back: its presence flushes what was kept.
    let presence =
        "<presence xmlns='jabber:component:accept' from='alice@example.org/phone' to='push.test'/>";
    let el: Element = presence.parse().unwrap();
    let presence = xmpp_parsers::presence::Presence::try_from(el).unwrap();
    let gw = s.gw.gw.clone();
    let flush = tokio::spawn(async move { common::route(&gw, presence).await });
    let mut flushed = Vec::new();
    for _ in 0..2 {
        let payload = answer_next(&s.gw, &mut outbox, None).await;
        flushed.push(String::from_utf8(STANDARD.decode(payload.text()).unwrap()).unwrap());
    }
    assert!(flush.await.unwrap().is_none());
    assert_eq!(flushed, ["second", "third"]);
    assert_eq!(s.gw.core.store.up_messages_kept().await.unwrap(), 0);
}

/// `TTL`, `Urgency` and `Topic` that RFC 8030 does not allow are refused with 400, before
/// anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_push_headers_are_refused() {
    let (s, mut outbox) = server("").await;
    let path = path_of(&register_conversations(&s.gw, PHONE, "aA==").await);
    for headers in [
        vec![("ttl", "-1")],
        vec![("ttl", "soon")],
        vec![("urgency", "urgent")],
        vec![("topic", "has spaces")],
        vec![("topic", "x123456789012345678901234567890123")],
    ] {
        let r = post_with(&s, &path, "x", &headers).await.await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{headers:?}");
    }
    assert!(outbox.try_recv().is_err(), "nothing was sent");
}

/// Each endpoint, and each source address over all endpoints, may push a bounded number per
/// minute: beyond, 429 with `Retry-After`, before anything is looked up or sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_rate_limited_per_endpoint_and_per_source() {
    let (s, mut outbox) =
        server("pushes_per_minute_per_endpoint = 2\npushes_per_minute_per_ip = 5\n").await;
    let path = path_of(&register_conversations(&s.gw, PHONE, "cg==").await);
    for _ in 0..2 {
        let push = post_with(&s, &path, "x", &[]).await;
        answer_next(&s.gw, &mut outbox, None).await;
        assert_eq!(push.await.unwrap().status(), StatusCode::CREATED);
    }
    let r = post(&s, &path, b"x".to_vec()).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert!(outbox.try_recv().is_err(), "the limited push was not sent");
    // The endpoint's refusal did not spend the sender's share: three more to other endpoints.
    for i in 0..3 {
        let r = post(&s, &format!("/up/unknown{i}"), b"x".to_vec()).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    let r = post(&s, "/up/unknown9", b"x".to_vec()).await;
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the source's share is spent"
    );
}

/// An operator revokes an endpoint by its URL, or every endpoint of an account, from the
/// command line: they answer 404 from then on; naming one that does not exist exits 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_revokes_endpoints_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let url = pushgate::storage::Store::sqlite_url_in(&data_dir).unwrap();
    let text = format!(
        "{}[storage]\ndata_dir = {:?}\n",
        toml(""),
        data_dir.to_str().unwrap()
    );
    let config = dir.path().join("pushgate.toml");
    std::fs::write(&config, &text).unwrap();
    let mut gw = TestGateway::at(&url, &text).await;
    let _outbox = gw.take_outbox();
    let s = HttpServer::start(gw, HttpConfig::default(), Duration::from_secs(5)).await;
    let first = register_conversations(&s.gw, PHONE, "MQ==").await;
    let second = path_of(&register_conversations(&s.gw, PHONE, "Mg==").await);
    let third = path_of(&register_conversations(&s.gw, PHONE, "Mw==").await);

    let pushgate = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .env_remove("PUSHGATE_CONFIG")
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let revoke = |args: &[&str]| {
        let mut all = vec!["unifiedpush", "revoke"];
        all.extend_from_slice(args);
        pushgate(&all)
    };

    // `devices list` shows the endpoints (and no token), with their distributor and dialect.
    let (code, out) = tokio::task::block_in_place(|| pushgate(&["devices", "list", "--json"]));
    assert_eq!(code, Some(0), "{out}");
    let listed: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 3, "{out}");
    assert!(listed.iter().all(|e| e["dialect"] == "conversations"
        && e["distributor"] == PHONE
        && e["account"] == "alice@example.org"));
    assert!(
        !out.contains(first.rsplit('/').next().unwrap()),
        "no token is shown"
    );
    let (code, _) =
        tokio::task::block_in_place(|| pushgate(&["devices", "list", "--provider", "apns"]));
    assert_eq!(code, Some(3), "another provider selects no endpoint");
    let (code, out) = tokio::task::block_in_place(|| pushgate(&["devices", "list"]));
    assert_eq!(code, Some(0));
    assert!(out.contains("UnifiedPush endpoints"), "{out}");

    let (code, out) = tokio::task::block_in_place(|| revoke(&[&first]));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        post(&s, &path_of(&first), b"x".to_vec()).await.status(),
        StatusCode::NOT_FOUND
    );
    let (code, _) = tokio::task::block_in_place(|| revoke(&[&first]));
    assert_eq!(code, Some(3), "already revoked");
    let first_id = listed[0]["unifiedpush_endpoint"].to_string();
    let (code, _) = tokio::task::block_in_place(|| revoke(&["--id", &first_id]));
    assert_eq!(code, Some(3), "already revoked, by id");
    let second_id = listed[1]["unifiedpush_endpoint"].to_string();
    let (code, _) = tokio::task::block_in_place(|| revoke(&["--id", &second_id]));
    assert_eq!(code, Some(0), "revoked by id");
    let (code, _) = tokio::task::block_in_place(|| revoke(&["not-a-token"]));
    assert_eq!(code, Some(2));
    let (code, out) = tokio::task::block_in_place(|| revoke(&["--account", "alice@example.org"]));
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 endpoint"), "{out}");
    for path in [second, third] {
        assert_eq!(
            post(&s, &path, b"x".to_vec()).await.status(),
            StatusCode::NOT_FOUND
        );
    }
}

/// An RFC 8292 `Authorization: vapid t=…, k=…` header for `aud`, signed by `key`, and the key.
fn vapid(key: &ring::signature::EcdsaKeyPair, aud: &str) -> (String, String) {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::signature::KeyPair;
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let exp = chrono::Utc::now().timestamp() + 3600;
    let signed = format!(
        "{}.{}",
        b64(br#"{"typ":"JWT","alg":"ES256"}"#),
        b64(format!(r#"{{"aud":"{aud}","exp":{exp},"sub":"mailto:ops@example.org"}}"#).as_bytes())
    );
    let sig = key
        .sign(&ring::rand::SystemRandom::new(), signed.as_bytes())
        .unwrap();
    let k = b64(key.public_key().as_ref());
    (format!("vapid t={signed}.{}, k={k}", b64(sig.as_ref())), k)
}

fn vapid_key() -> ring::signature::EcdsaKeyPair {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
}

/// VAPID: an endpoint whose registration pinned the app server's key takes pushes signed by
/// that key for this push service only (401 without or with a bad token, 403 for another key);
/// an endpoint without a pinned key takes unsigned pushes, but a signature that is there must
/// verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vapid_is_checked_and_a_pinned_key_enforced() {
    let (s, mut outbox) = server("").await;
    let key = vapid_key();
    let (good, k) = vapid(&key, "https://up.example.org");
    let register =
        format!("<register xmlns='{NS_C}' application='YXBw' instance='dg==' vapid='{k}'/>");
    let answer = ask(&s.gw, PHONE, &register).await.unwrap().unwrap();
    let pinned = path_of(answer.attr("endpoint").unwrap());
    let (other, _) = vapid(&vapid_key(), "https://up.example.org");
    let (elsewhere, _) = vapid(&key, "https://push.other.example");
    for (auth, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(other.as_str()), StatusCode::FORBIDDEN),
        (Some(elsewhere.as_str()), StatusCode::UNAUTHORIZED),
        (Some("vapid t=x.y.z, k=abc"), StatusCode::FORBIDDEN),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let r = post_with(&s, &pinned, "x", &headers).await.await.unwrap();
        assert_eq!(r.status(), status, "{auth:?}");
    }
    assert!(outbox.try_recv().is_err(), "nothing refused was sent");
    let push = post_with(&s, &pinned, "signed", &[("authorization", good.as_str())]).await;
    answer_next(&s.gw, &mut outbox, None).await;
    assert_eq!(push.await.unwrap().status(), StatusCode::CREATED);

    let open = path_of(&register_conversations(&s.gw, PHONE, "bw==").await);
    let r = post_with(&s, &open, "x", &[("authorization", elsewhere.as_str())])
        .await
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "a signature there must verify"
    );
    let push = post_with(&s, &open, "unsigned", &[]).await;
    answer_next(&s.gw, &mut outbox, None).await;
    assert_eq!(push.await.unwrap().status(), StatusCode::CREATED);
    let (condition, _) = ask(
        &s.gw,
        PHONE,
        &format!("<register xmlns='{NS_C}' application='YXBw' instance='dw==' vapid='AAAA'/>"),
    )
    .await
    .unwrap_err();
    assert_eq!(condition, DefinedCondition::BadRequest);
}

/// A kept push whose `TTL` ran out is not delivered: it is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_push_past_its_ttl_is_dropped_and_counted() {
    let (s, mut outbox) = server("").await;
    let path = path_of(&register_conversations(&s.gw, PHONE, "ZQ==").await);
    let push = post_with(&s, &path, "stale soon", &[("ttl", "1")]).await;
    answer_next(&s.gw, &mut outbox, Some("service-unavailable")).await;
    assert_eq!(push.await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(s.gw.core.store.up_messages_kept().await.unwrap(), 1);
    let expired_before = pushgate::metrics::METRICS.unifiedpush_expired.get();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let el: Element =
        "<presence xmlns='jabber:component:accept' from='alice@example.org/phone' to='push.test'/>"
            .parse()
            .unwrap();
    let presence = xmpp_parsers::presence::Presence::try_from(el).unwrap();
    assert!(route(&s.gw, presence).await.is_none());
    assert!(outbox.try_recv().is_err(), "nothing stale was delivered");
    assert_eq!(s.gw.core.store.up_messages_kept().await.unwrap(), 0);
    assert!(pushgate::metrics::METRICS.unifiedpush_expired.get() > expired_before);
}

/// An endpoint past its expiry (the distributor did not register the instance again within
/// `expiration_days`, at least a day, so its row is moved into the past here) answers 404,
/// sends nothing to the distributor and is removed; another endpoint is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_endpoint_is_404_and_removed() {
    let (s, mut outbox) = server("").await;
    let endpoint = register_conversations(&s.gw, PHONE, "eA==").await;
    let live = path_of(&register_conversations(&s.gw, PHONE, "eQ==").await);
    let hash = pushgate::fronts::xmpp::unifiedpush::endpoint_hash(&endpoint).unwrap();
    let store = &s.gw.core.store;
    let mut row = store.up_endpoint(&hash).await.unwrap().unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    assert!(row.expires_at_ms > now, "{row:?}");
    row.expires_at_ms = now - 1000;
    store.save_up_endpoint(&hash, &row, now, 100).await.unwrap();
    assert_eq!(
        store
            .up_endpoint(&hash)
            .await
            .unwrap()
            .unwrap()
            .expires_at_ms,
        now - 1000
    );

    let r = post(&s, &path_of(&endpoint), b"too late".to_vec()).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        outbox.try_recv().is_err(),
        "nothing went to the distributor"
    );
    assert!(
        store.up_endpoint(&hash).await.unwrap().is_none(),
        "the expired row is removed"
    );

    let push = post_with(&s, &live, "still here", &[]).await;
    answer_next(&s.gw, &mut outbox, None).await;
    assert_eq!(push.await.unwrap().status(), StatusCode::CREATED);
}
