//! The HTTP server over real loopback HTTP: Siskin's REST unregister, rate limit, body limit,
//! health checks and `/metrics`, against a real `Gateway` on SQLite.

use std::sync::Arc;

use pushgate::config::{Config, HttpConfig};
use pushgate::gateway::Gateway;
use pushgate::http::{self, HttpState};
use pushgate::ids::{BareJid, DeviceToken, Dialect, ProviderId};
use pushgate::storage::{Admission, NewRegistration, Registration, Store};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::watch;

const PROVIDER: &str = "tigase:messenger:apns:1";
const CONFIG: &str = "[component]\njid = \"push.test\"\nsecret = \"s\"\n\
    [providers.\"tigase:messenger:apns:1\"]\nkind = \"apns\"\ntopic = \"org.example.app\"\n\
    environment = \"sandbox\"\nbase_url = \"https://127.0.0.1:9\"\n";

struct Server {
    base: String,
    gw: Arc<Gateway>,
    client: reqwest::Client,
    connected: watch::Sender<bool>,
    _shutdown: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

async fn start(http: HttpConfig) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(CONFIG).unwrap();
    let store = Store::open(&Store::sqlite_url_in(dir.path()).unwrap())
        .await
        .unwrap();
    let (gw, _outbox) = Gateway::new(&config, store).unwrap();
    let (connected, connected_rx) = watch::channel(false);
    let (shutdown, shutdown_rx) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = http::router(HttpState::new(gw.clone(), http, connected_rx));
    tokio::spawn(http::serve_on(listener, router, shutdown_rx));
    Server {
        base,
        gw,
        client: reqwest::Client::new(),
        connected,
        _shutdown: shutdown,
        _dir: dir,
    }
}

async fn register(gw: &Gateway, account: &str, token: &str) -> Registration {
    gw.store
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

impl Server {
    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"));
        (status, json)
    }

    async fn unregister(&self, body: &Value) -> (StatusCode, Value) {
        self.post("/unregister-device/push.test", body.to_string())
            .await
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }
}

async fn exists(gw: &Gateway, reg: &Registration) -> bool {
    gw.store
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
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(CONFIG).unwrap();
    let store = Store::open(&Store::sqlite_url_in(dir.path()).unwrap())
        .await
        .unwrap();
    let (gw, _outbox) = Gateway::new(&config, store).unwrap();
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
    let task = tokio::spawn(http::serve(gw, http, connected, shutdown));
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
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(ok, "serve() answered /healthz");
    shutdown_tx.send(true).unwrap();
    let res = tokio::time::timeout(std::time::Duration::from_secs(5), task)
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
