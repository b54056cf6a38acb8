//! pushgate's HTTP surface (Siskin's REST unregister, health checks, `/metrics`) served on a
//! loopback port for a test gateway, and a client for it.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::watch;

use super::{HttpConfig, HttpState, ServeLimits, TestGateway, http_router, serve_on};

/// The server, its gateway, and the switches a test turns.
pub struct HttpServer {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub gw: TestGateway,
    pub client: reqwest::Client,
    /// Whether the component stream counts as up (`/readyz`).
    pub connected: watch::Sender<bool>,
    pub shutdown: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<()>,
}

impl HttpServer {
    /// Serves `gw` with `http` on a free loopback port; busy connections get `shutdown_timeout`
    /// after shutdown.
    pub async fn start(gw: TestGateway, http: HttpConfig, shutdown_timeout: Duration) -> Self {
        let (connected, connected_rx) = watch::channel(false);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let limits = ServeLimits::new(&http, shutdown_timeout);
        let matrix = pushgate::fronts::matrix::Matrix::new(&gw.config.matrix);
        let router = http_router(
            HttpState::new(gw.gw.core.clone(), gw.gw.jid.clone(), http, connected_rx)
                .with_matrix(matrix)
                .with_component(gw.gw.clone())
                .with_sip(std::sync::Arc::new(pushgate::fronts::sip::Sip::new(
                    gw.config.sip.clone(),
                ))),
        );
        let task = tokio::spawn(serve_on(listener, router, limits, shutdown_rx));
        HttpServer {
            base: format!("http://{addr}"),
            addr,
            gw,
            // No kept-alive connections: the connection-cap tests count every open one.
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .expect("HTTP client"),
            connected,
            shutdown,
            task,
        }
    }

    /// POSTs `body` as JSON to `path`; the status and the JSON answer.
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (StatusCode, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let status = r.status();
        let text = r
            .text()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text:?}"));
        (status, json)
    }

    /// Siskin's unregister request to this component.
    pub async fn unregister(&self, body: &Value) -> (StatusCode, Value) {
        self.post(
            &format!("/unregister-device/{}", self.gw.jid),
            body.to_string(),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}
