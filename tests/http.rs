//! The HTTP server over real loopback HTTP: Siskin's REST unregister, rate limit, body limit,
//! health checks and `/metrics`, against a real `Component` on SQLite.

use std::time::Duration;

mod common;

use common::TestGateway;
use pushgate::config::{Config, HttpConfig};
use pushgate::fronts::http;
use pushgate::fronts::xmpp::Component;
use pushgate::ids::{BareJid, DeviceToken, Dialect, ProviderId};
use pushgate::storage::{Admission, NewRegistration, Registration};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

const PROVIDER: &str = "tigase:messenger:apns:1";
const CONFIG: &str = "[component]\njid = \"push.test\"\nsecret = \"s\"\n\
    [providers.\"tigase:messenger:apns:1\"]\nkind = \"apns\"\ntopic = \"org.example.app\"\n\
    environment = \"sandbox\"\nbase_url = \"https://127.0.0.1:9\"\n";

type Server = common::HttpServer;

async fn start(http: HttpConfig) -> Server {
    start_with(http, Duration::from_secs(5)).await
}

async fn start_with(http: HttpConfig, shutdown_timeout: Duration) -> Server {
    Server::start(TestGateway::sqlite(CONFIG).await, http, shutdown_timeout).await
}

async fn register(gw: &Component, account: &str, token: &str) -> Registration {
    gw.core
        .store
        .register(
            NewRegistration {
                dialect: Dialect::Tigase,
                provider: ProviderId::new(PROVIDER),
                account: BareJid::new(account).unwrap(),
                device_id: None,
                muc: None,
                token: DeviceToken::new(token),
                second_token: None,
                webpush_keys: None,
            },
            Admission {
                max_per_account: 20,
                may_add: true,
            },
        )
        .await
        .unwrap()
        .registration
}

fn body(account: &str, provider: &str, token: &str) -> Value {
    json!({"account": account, "provider": provider, "device-token": token})
}

async fn exists(gw: &Component, reg: &Registration) -> bool {
    gw.core
        .store
        .find_by_node(reg.node.as_str())
        .await
        .unwrap()
        .is_some()
}

#[tokio::test]
async fn unregister_on_both_paths_removes_the_registration() {
    let s = start(HttpConfig::default()).await;
    let a = register(&s.gw, "alice@example.org", "AAAA01").await;
    let b = register(&s.gw, "bob@example.org", "BBBB02").await;
    let other = register(&s.gw, "carol@example.org", "CCCC03").await;

    let (status, reply) = s
        .post(
            "/unregister-device/push.test",
            body("alice@example.org", PROVIDER, "AAAA01").to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply, json!({"result": "success"}));
    assert!(!exists(&s.gw, &a).await);
    assert!(exists(&s.gw, &b).await);

    let (status, reply) = s
        .post(
            "/rest/push/unregister-device/push.test",
            body("bob@example.org", PROVIDER, "BBBB02").to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply["result"], "success");
    assert!(!exists(&s.gw, &b).await);
    assert!(exists(&s.gw, &other).await, "only the named device goes");
}

#[tokio::test]
async fn every_failure_is_a_404_with_a_json_reason() {
    let s = start(HttpConfig::default()).await;
    let reg = register(&s.gw, "alice@example.org", "AAAA01").await;
    let good = body("alice@example.org", PROVIDER, "AAAA01");

    let not_found = |(status, reply): (StatusCode, Value)| {
        assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
        assert_eq!(reply["result"], "failure", "{reply}");
        reply["reason"].as_str().unwrap().to_owned()
    };

    // Wrong component JID, on both paths.
    let r = s
        .post("/unregister-device/push.other", good.to_string())
        .await;
    assert_eq!(not_found(r), "not found");
    let r = s
        .post("/rest/push/unregister-device/other.test", good.to_string())
        .await;
    assert_eq!(not_found(r), "not found");
    // Malformed JSON and fields: the reason says what is wrong.
    let r = s.post("/unregister-device/push.test", "{not json").await;
    assert!(not_found(r).contains("malformed JSON"));
    let r = s.post("/unregister-device/push.test", "").await;
    assert!(not_found(r).contains("malformed JSON"));
    let r = s
        .unregister(&json!({"account": "alice@example.org", "provider": PROVIDER}))
        .await;
    assert!(not_found(r).contains("'device-token' is missing"));
    let r = s.unregister(&body("alice@example.org", "", "AAAA01")).await;
    assert!(not_found(r).contains("'provider' is empty"));
    let r = s
        .unregister(&json!({"account": 5, "provider": PROVIDER, "device-token": "AAAA01"}))
        .await;
    assert!(not_found(r).contains("malformed JSON"));
    // Nothing about what is stored leaks: all "not found".
    let r = s.unregister(&body("not a jid@@", PROVIDER, "AAAA01")).await;
    assert_eq!(not_found(r), "not found");
    let r = s
        .unregister(&body("alice@example.org", "carrier-pigeon", "AAAA01"))
        .await;
    assert_eq!(not_found(r), "not found");
    let r = s
        .unregister(&body("alice@example.org", PROVIDER, "ZZZZ99"))
        .await;
    assert_eq!(not_found(r), "not found");
    let r = s
        .unregister(&body("mallory@example.org", PROVIDER, "AAAA01"))
        .await;
    assert_eq!(not_found(r), "not found");
    assert!(exists(&s.gw, &reg).await, "no failed request removed it");

    let (status, _) = s.unregister(&good).await;
    assert_eq!(status, StatusCode::OK);
    let r = s.unregister(&good).await;
    assert_eq!(not_found(r), "not found", "already removed");
}

#[tokio::test]
async fn fields_longer_than_their_limits_are_refused_whatever_the_body_limit() {
    let s = start(HttpConfig {
        max_body_bytes: 1024 * 1024,
        ..HttpConfig::default()
    })
    .await;
    let token = "A".repeat(4096);
    let reg = register(&s.gw, "alice@example.org", &token).await;
    let good = body("alice@example.org", PROVIDER, &token);
    for (field, len, limit) in [
        ("account", 3072, 3071),
        ("provider", 257, 256),
        ("device-token", 4097, 4096),
        ("device-token", 500_000, 4096),
    ] {
        let mut b = good.clone();
        b[field] = json!("a".repeat(len));
        let (status, reply) = s.unregister(&b).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");
        assert_eq!(
            reply["reason"],
            format!("field '{field}' is too long (limit {limit} bytes)")
        );
    }
    assert!(exists(&s.gw, &reg).await);
    // At the limit: accepted.
    assert_eq!(s.unregister(&good).await.0, StatusCode::OK);
    assert!(!exists(&s.gw, &reg).await);
}

#[tokio::test]
async fn oversize_body_is_413_and_wrong_method_405_and_unknown_route_404() {
    let s = start(HttpConfig {
        max_body_bytes: 256,
        ..HttpConfig::default()
    })
    .await;
    let reg = register(&s.gw, "alice@example.org", "AAAA01").await;
    let big = json!({"account": "alice@example.org", "provider": PROVIDER,
        "device-token": "AAAA01", "padding": "x".repeat(300)});
    let (status, reply) = s.unregister(&big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply["result"], "failure");
    assert!(exists(&s.gw, &reg).await);
    // Under the limit, unknown extra fields are ignored.
    let small = json!({"account": "alice@example.org", "provider": PROVIDER,
        "device-token": "AAAA01", "padding": "x"});
    assert_eq!(s.unregister(&small).await.0, StatusCode::OK);

    let r = s.get("/unregister-device/push.test").await;
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.headers().get("allow").is_some());
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["result"], "failure");

    let r = s.get("/nothing/here").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["result"], "failure");
}

/// Sends `n` unregister requests (which fail with 404) with an optional X-Forwarded-For.
async fn burst(s: &Server, n: usize, forwarded: Option<&str>) -> Vec<reqwest::Response> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut req = s
            .client
            .post(format!("{}/unregister-device/push.test", s.base))
            .body(body("alice@example.org", PROVIDER, "NOPE").to_string());
        if let Some(ip) = forwarded {
            req = req.header("x-forwarded-for", format!("198.51.100.1, {ip}"));
        }
        out.push(req.send().await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_61st_request_in_a_minute_is_429_per_forwarded_ip() {
    let s = start(HttpConfig {
        trust_forwarded_for: true,
        ..HttpConfig::default()
    })
    .await;
    let first = burst(&s, 60, Some("203.0.113.1")).await;
    assert!(first.iter().all(|r| r.status() == StatusCode::NOT_FOUND));
    let over = burst(&s, 1, Some("203.0.113.1")).await.pop().unwrap();
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = over.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let reply: Value = over.json().await.unwrap();
    assert_eq!(reply["result"], "failure");
    // Another client (the last hop counts, not the first) is still allowed.
    let other = burst(&s, 1, Some("203.0.113.2")).await.pop().unwrap();
    assert_eq!(other.status(), StatusCode::NOT_FOUND);
    // Health checks are not limited.
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn forwarded_for_is_ignored_unless_trusted() {
    let s = start(HttpConfig::default()).await;
    let first = burst(&s, 60, Some("203.0.113.1")).await;
    assert!(first.iter().all(|r| r.status() == StatusCode::NOT_FOUND));
    // A different forwarded IP does not help: the peer (127.0.0.1) is what counts.
    let over = burst(&s, 1, Some("203.0.113.2")).await.pop().unwrap();
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(over.headers().contains_key("retry-after"));
    let over = burst(&s, 1, None).await.pop().unwrap();
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn healthz_and_readyz_follow_the_stream() {
    let s = start(HttpConfig::default()).await;
    let r = s.get("/healthz").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));

    let r = s.get("/readyz").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["xmpp"], "down");
    assert_eq!(reply["storage"], "up");

    s.connected.send(true).unwrap();
    let r = s.get("/readyz").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "ok");

    s.connected.send(false).unwrap();
    assert_eq!(
        s.get("/readyz").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// The value of the sample `name{labels}` whose labels include all of `want`.
fn sample(text: &str, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            series.split('{').next() == Some(name)
                && want
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v.parse().unwrap())
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_requests_by_route() {
    let s = start(HttpConfig::default()).await;
    let route = [("route", http::UNREGISTER_ROUTE), ("status", "404")];
    let before = {
        let text = s.get("/metrics").await.text().await.unwrap();
        sample(&text, "pushgate_http_requests_total", &route).unwrap_or(0.0)
    };
    register(&s.gw, "alice@example.org", "AAAA01").await;
    for _ in 0..3 {
        s.unregister(&body("alice@example.org", PROVIDER, "NOPE"))
            .await;
    }
    s.unregister(&body("alice@example.org", PROVIDER, "AAAA01"))
        .await;

    let r = s.get("/metrics").await;
    assert_eq!(r.status(), StatusCode::OK);
    let ctype = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    let text = r.text().await.unwrap();
    // Every line is a comment or `series value` with a numeric value.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect(line);
        assert!(!series.is_empty() && value.parse::<f64>().is_ok(), "{line}");
    }
    assert!(text.contains("# TYPE pushgate_http_requests_total counter"));
    let after = sample(&text, "pushgate_http_requests_total", &route).unwrap();
    assert!(after - before >= 3.0, "{before} → {after}");
    assert!(
        sample(
            &text,
            "pushgate_http_requests_total",
            &[("route", http::UNREGISTER_ROUTE), ("status", "200")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &text,
            "pushgate_http_requests_total",
            &[("route", "/metrics"), ("status", "200")]
        )
        .is_some()
    );
    // The raw path (which holds a JID a client chose) never becomes a label.
    assert!(!text.contains("route=\"/unregister-device/push.test\""));
}

#[tokio::test]
async fn serve_binds_listen_and_stops_on_shutdown() {
    let gw = TestGateway::sqlite(CONFIG).await;
    // Find a free port, then let serve() bind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = HttpConfig {
        listen: Some(format!("127.0.0.1:{port}")),
        ..HttpConfig::default()
    };
    let (_connected_tx, connected) = watch::channel(true);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let task = tokio::spawn(http::serve(
        gw.gw.core.clone(),
        gw.gw.jid.clone(),
        http,
        http::Fronts::default(),
        Duration::from_secs(5),
        connected,
        shutdown,
    ));
    let client = reqwest::Client::new();
    let mut ok = false;
    for _ in 0..50 {
        if let Ok(r) = client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            ok = r.status() == StatusCode::OK;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "serve() answered /healthz");
    shutdown_tx.send(true).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve() stops on shutdown")
        .unwrap();
    assert!(res.is_ok(), "{res:?}");
}

#[test]
fn http_config_errors_name_the_key() {
    let base = "[component]\njid = \"push.test\"\nsecret = \"s\"\n";
    let e =
        Config::from_toml_str(&format!("{base}[http]\nlisen = \"127.0.0.1:5281\"\n")).unwrap_err();
    assert!(e.to_string().contains("lisen"), "{e}");
    let e = Config::from_toml_str(&format!("{base}[http]\nlisten = \"127.0.0.1\"\n")).unwrap_err();
    assert!(e.to_string().contains("http.listen"), "{e}");
    let c = Config::from_toml_str(&format!("{base}[http]\nlisten = \"127.0.0.1:5281\"\n")).unwrap();
    assert_eq!(c.http.listen_addr().unwrap().to_string(), "127.0.0.1:5281");
}

// --- Slow and many clients -------------------------------------------------------------------

/// Generous slack over a configured bound: the sweep runs every 250 ms and CI machines are busy.
const MARGIN: Duration = Duration::from_secs(4);

/// A raw connection that has sent `bytes`.
async fn raw(s: &Server, bytes: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(bytes.as_bytes()).await.unwrap();
    c
}

/// Everything the server sends until it closes the connection; `None` if it is still open
/// after `within`.
async fn until_closed(c: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let read_all = async {
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.ok()?;
    Some(String::from_utf8_lossy(&got).into_owned())
}

async fn closed_count(s: &Server, reason: &str) -> f64 {
    let text = s.get("/metrics").await.text().await.unwrap();
    sample(
        &text,
        "pushgate_http_connections_closed_total",
        &[("reason", reason)],
    )
    .unwrap_or(0.0)
}

const HALF_HEAD: &str = "GET /healthz HTTP/1.1\r\nHost: pushgate\r\nUser-Agent: slow";

#[tokio::test]
async fn a_half_sent_head_is_disconnected_after_the_header_timeout() {
    let s = start(HttpConfig {
        header_timeout_secs: 1,
        idle_timeout_secs: 300,
        ..HttpConfig::default()
    })
    .await;
    let before = closed_count(&s, "header_timeout").await;
    let mut slow = raw(&s, HALF_HEAD).await;
    let answer = until_closed(&mut slow, Duration::from_secs(1) + MARGIN)
        .await
        .expect("disconnected within the header timeout");
    assert_eq!(answer, "", "closed without an answer");
    // Nothing sent at all counts as an unfinished head too.
    let mut silent = raw(&s, "").await;
    assert!(
        until_closed(&mut silent, Duration::from_secs(1) + MARGIN)
            .await
            .is_some()
    );
    assert!(closed_count(&s, "header_timeout").await - before >= 2.0);
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(HttpConfig {
        header_timeout_secs: 300,
        idle_timeout_secs: 1,
        ..HttpConfig::default()
    })
    .await;
    let before = closed_count(&s, "idle_timeout").await;
    let mut c = raw(&s, "GET /healthz HTTP/1.1\r\nHost: pushgate\r\n\r\n").await;
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        first.ends_with(r#"{"status":"ok"}"#),
        "one whole answer: {first}"
    );
    // Still usable: a second request on the same connection.
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: pushgate\r\n\r\n")
        .await
        .unwrap();
    let n = c.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        until_closed(&mut c, Duration::from_secs(1) + MARGIN).await,
        Some(String::new()),
        "closed once idle"
    );
    assert!(closed_count(&s, "idle_timeout").await - before >= 1.0);
}

#[tokio::test]
async fn a_body_that_does_not_arrive_in_time_is_408_with_a_json_reason() {
    let s = start(HttpConfig {
        body_timeout_secs: 1,
        ..HttpConfig::default()
    })
    .await;
    let mut c = raw(
        &s,
        "POST /unregister-device/push.test HTTP/1.1\r\nHost: pushgate\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"account\":",
    )
    .await;
    let answer = until_closed(&mut c, Duration::from_secs(1) + MARGIN)
        .await
        .expect("answered and closed within the body timeout");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let json: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["result"], "failure");
    assert_eq!(json["reason"], "request body timeout");
}

#[tokio::test]
async fn healthz_answers_while_more_slow_clients_than_the_cap_hold_connections() {
    const CAP: usize = 8;
    let s = start(HttpConfig {
        max_connections: CAP,
        header_timeout_secs: 300,
        ..HttpConfig::default()
    })
    .await;
    let before = closed_count(&s, "evicted").await;
    let mut slow = Vec::new();
    for _ in 0..3 * CAP {
        slow.push(raw(&s, HALF_HEAD).await);
    }
    for _ in 0..3 {
        let r = s.get("/healthz").await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    // The crowd made room for itself and for /healthz: no more than CAP are open.
    let mut closed = 0;
    for c in &mut slow {
        if until_closed(c, Duration::from_millis(200)).await.is_some() {
            closed += 1;
        }
    }
    assert!(closed >= 2 * CAP, "only {closed} of {} closed", slow.len());
    assert!(closed_count(&s, "evicted").await - before >= (2 * CAP) as f64);
}

#[tokio::test]
async fn at_the_cap_with_every_connection_busy_new_ones_are_closed_until_one_finishes() {
    const CAP: usize = 8;
    let s = start(HttpConfig {
        max_connections: CAP,
        body_timeout_secs: 2,
        ..HttpConfig::default()
    })
    .await;
    let before = closed_count(&s, "refused").await;
    let head = "POST /unregister-device/push.test HTTP/1.1\r\nHost: pushgate\r\n\
                Content-Length: 100\r\n\r\n";
    let mut busy = Vec::new();
    for _ in 0..CAP {
        busy.push(raw(&s, head).await);
    }
    // Let the server read the heads and start the handlers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut extra = raw(&s, "").await;
    assert_eq!(
        until_closed(&mut extra, MARGIN).await,
        Some(String::new()),
        "closed at once"
    );
    // The busy ones are bounded by the body timeout; then there is room again.
    for c in &mut busy {
        let answer = until_closed(c, Duration::from_secs(2) + MARGIN)
            .await
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
    assert!(closed_count(&s, "refused").await - before >= 1.0);
}

#[tokio::test]
async fn shutdown_closes_waiting_connections_and_drops_busy_ones_after_the_timeout() {
    let shutdown_timeout = Duration::from_secs(1);
    let s = start_with(
        HttpConfig {
            header_timeout_secs: 300,
            body_timeout_secs: 300,
            ..HttpConfig::default()
        },
        shutdown_timeout,
    )
    .await;
    let mut half = raw(&s, HALF_HEAD).await;
    let mut busy = raw(
        &s,
        "POST /unregister-device/push.test HTTP/1.1\r\nHost: pushgate\r\n\
         Content-Length: 100\r\n\r\n{",
    )
    .await;
    assert_eq!(s.get("/healthz").await.status(), StatusCode::OK);
    s.shutdown.send(true).unwrap();
    tokio::time::timeout(shutdown_timeout + MARGIN, s.task)
        .await
        .expect("serve_on returns within the shutdown timeout")
        .unwrap();
    assert!(until_closed(&mut half, MARGIN).await.is_some());
    assert!(until_closed(&mut busy, MARGIN).await.is_some());
    assert!(
        tokio::net::TcpStream::connect(s.addr).await.is_err(),
        "no longer accepting"
    );
}

#[test]
fn limit_keys_are_checked_and_errors_name_them() {
    let base = "[component]\njid = \"push.test\"\nsecret = \"s\"\n";
    let c = Config::from_toml_str(base).unwrap();
    assert_eq!(
        (
            c.http.header_timeout_secs,
            c.http.body_timeout_secs,
            c.http.idle_timeout_secs,
            c.http.max_connections,
            c.limits.shutdown_timeout_secs,
        ),
        (10, 10, 60, 512, 10)
    );
    for (section, key, bad) in [
        ("http", "header_timeout_secs", "0"),
        ("http", "header_timeout_secs", "301"),
        ("http", "body_timeout_secs", "0"),
        ("http", "idle_timeout_secs", "3601"),
        ("http", "max_connections", "7"),
        ("http", "max_connections", "65537"),
        ("limits", "shutdown_timeout_secs", "0"),
        ("limits", "shutdown_timeout_secs", "301"),
    ] {
        let e = Config::from_toml_str(&format!("{base}[{section}]\n{key} = {bad}\n")).unwrap_err();
        let e = e.to_string();
        assert!(e.contains(&format!("{section}.{key}")), "{e}");
        assert!(e.contains("must be between"), "{e}");
    }
    let e = Config::from_toml_str(&format!("{base}[limits]\nshutdown_timeout = 3\n")).unwrap_err();
    assert!(e.to_string().contains("shutdown_timeout"), "{e}");
    let c = Config::from_toml_str(&format!(
        "{base}[http]\nheader_timeout_secs = 1\nmax_connections = 8\n[limits]\nshutdown_timeout_secs = 300\n"
    ))
    .unwrap();
    assert_eq!(c.http.header_timeout_secs, 1);
    assert_eq!(c.limits.shutdown_timeout(), Duration::from_secs(300));
}
