//! A local FCM for the FCM provider tests: HTTP/2 over TLS (ALPN `h2`) on 127.0.0.1 with a
//! test CA, serving both Google's OAuth token endpoint (`/token`) and FCM's
//! `/v1/projects/{project}/messages:send`. It verifies the service-account assertion, issues
//! access tokens and accepts only those on sends, records every request and TCP connection, and
//! answers per device token what each test scripts.
//!
//! The assertion check is written here from Google's description (RS256 over `header.claims`,
//! `kid`, `iss`, `scope`, `aud` = token endpoint, `exp` = `iat` + at most an hour, the JWT-bearer
//! grant type: <https://developers.google.com/identity/protocols/oauth2/service-account>),
//! independently of the provider's signer; the public key comes from the `openssl` CLI, not from
//! ring's view of the private key.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use tokio::task::JoinHandle;

use crate::jwt::{Jws, now_secs};
use crate::pki::Pki;
use crate::serve::{self, Answer, Journal, Scripts};

pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The OAuth 2.0 JWT-bearer grant (RFC 7523 §2.1).
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// What the service-account assertion must look like.
#[derive(Clone)]
pub struct AssertionCheck {
    /// PKCS#1 RSAPublicKey DER of the service account's key.
    pub public_key_der: Vec<u8>,
    pub kid: String,
    pub iss: String,
}

/// One scripted answer to a send.
#[derive(Clone, Debug)]
pub enum Reply {
    Answer {
        status: u16,
        body: String,
        headers: Vec<(&'static str, String)>,
    },
    /// Never answer.
    Hold,
}

impl Reply {
    pub fn status(status: u16, body: &str) -> Self {
        Reply::Answer {
            status,
            body: body.to_owned(),
            headers: Vec::new(),
        }
    }

    /// A Google API error; `error_code` becomes an `FcmError` detail.
    pub fn google(status: u16, canonical: &str, message: &str, error_code: Option<&str>) -> Self {
        let details = match error_code {
            Some(c) => serde_json::json!([{
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": c,
            }]),
            None => serde_json::json!([]),
        };
        let body = serde_json::json!({"error": {
            "code": status, "message": message, "status": canonical, "details": details,
        }});
        Self::status(status, &body.to_string())
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        if let Reply::Answer { headers, .. } = &mut self {
            headers.push((name, value.to_owned()));
        }
        self
    }
}

/// One send as the server saw it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub request: serve::Recorded,
    /// The access token from `authorization: Bearer …`.
    pub bearer: Option<String>,
    /// Whether that token was issued here and not revoked.
    pub bearer_valid: bool,
    pub connection: usize,
}

/// The path, headers and body, as on any request.
impl Deref for Sent {
    type Target = serve::Recorded;
    fn deref(&self) -> &serve::Recorded {
        &self.request
    }
}

impl Sent {
    pub fn device_token(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["message"]["token"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// One token request as the server saw it.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    pub content_type: Option<String>,
    pub grant_type: Option<String>,
    /// The verified claims, when the assertion passed.
    pub claims: Option<serde_json::Value>,
    /// The JOSE header, when it decoded.
    pub header: Option<serde_json::Value>,
    pub error: Option<String>,
}

struct State {
    check: AssertionCheck,
    project: String,
    token_uri: Mutex<String>,
    sends: Journal<Sent>,
    token_requests: Journal<TokenRequest>,
    scripts: Scripts<Reply>,
    issued: Mutex<HashSet<String>>,
    /// Any JSON: the provider must survive what a token endpoint says; null leaves it out.
    expires_in: Mutex<serde_json::Value>,
    token_delay_ms: AtomicU64,
    /// Answer token requests with this status (500, …) instead; 0 = normally.
    token_failure: AtomicU64,
    connections: AtomicUsize,
    counter: AtomicUsize,
}

/// The running server; stops when dropped.
pub struct MockFcm {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for MockFcm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockFcm {
    pub async fn start(pki: &Pki, project: &str, check: AssertionCheck) -> Self {
        crate::install_crypto_provider();
        let (listener, acceptor) = serve::bind_h2(pki, false).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            check,
            project: project.to_owned(),
            token_uri: Mutex::new(format!("https://{addr}/token")),
            sends: Journal::default(),
            token_requests: Journal::default(),
            scripts: Scripts::default(),
            issued: Mutex::default(),
            expires_in: Mutex::new(serde_json::json!(3599)),
            token_delay_ms: AtomicU64::new(0),
            token_failure: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            counter: AtomicUsize::new(0),
        });
        let accepting = state.clone();
        let task = tokio::spawn(serve::accept_tls(listener, acceptor, move || {
            let connection = accepting.connections.fetch_add(1, Ordering::SeqCst) + 1;
            let state = accepting.clone();
            move |tls| serve::serve_h2(tls, move |req| handle(req, state.clone(), connection), None)
        }));
        Self { addr, state, task }
    }

    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The `token_uri` service accounts should name (and the `aud` the server expects).
    pub fn token_uri(&self) -> String {
        self.state.token_uri.lock().unwrap().clone()
    }

    /// Answers for the device `token`, in order; once used up (or without a script) the server
    /// answers 200 with a message name.
    pub fn script(&self, token: &str, replies: Vec<Reply>) {
        self.state.scripts.set(token, replies);
    }

    pub fn sends(&self) -> Vec<Sent> {
        self.state.sends.all()
    }

    pub fn sends_for(&self, token: &str) -> Vec<Sent> {
        self.state.sends.matching(|s| s.device_token() == token)
    }

    /// The single send this server received (fails the test otherwise).
    pub fn only_send(&self) -> Sent {
        self.state.sends.only("send")
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.token_requests.all()
    }

    /// `expires_in` of the access tokens issued from now on: any JSON value (a number of
    /// seconds, or nonsense); null leaves the field out.
    pub fn set_expires_in(&self, value: impl Into<serde_json::Value>) {
        *self.state.expires_in.lock().unwrap() = value.into();
    }

    /// Delay token answers, so concurrent deliveries pile up behind one refresh.
    pub fn set_token_delay(&self, delay: Duration) {
        self.state
            .token_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Answer token requests with `status` (0 = normally again).
    pub fn fail_token_requests(&self, status: u16) {
        self.state
            .token_failure
            .store(u64::from(status), Ordering::SeqCst);
    }

    /// Every issued access token stops working (as after a key rotation on Google's side).
    pub fn revoke_access_tokens(&self) {
        self.state.issued.lock().unwrap().clear();
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

/// A JSON answer, as Google's endpoints give.
fn respond(status: u16, body: String) -> Answer {
    serve::answer(status, true, body, Vec::new())
}

async fn handle(req: hyper::Request<Incoming>, state: Arc<State>, connection: usize) -> Answer {
    let request = serve::Recorded::read(req).await;
    if request.method == "POST" && request.path == "/token" {
        return token_endpoint(&request.headers, &request.body, &state).await;
    }
    let send_path = format!("/v1/projects/{}/messages:send", state.project);
    if request.method != "POST" || request.path != send_path {
        return respond(404, "<html><body>404 Not Found</body></html>".to_owned());
    }
    let bearer = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let bearer_valid = bearer
        .as_ref()
        .is_some_and(|b| state.issued.lock().unwrap().contains(b));
    let sent = Sent {
        request,
        bearer,
        bearer_valid,
        connection,
    };
    let token = sent.device_token();
    state.sends.push(sent);
    if !bearer_valid {
        let body = serde_json::json!({"error": {"code": 401,
            "message": "Request had invalid authentication credentials.",
            "status": "UNAUTHENTICATED"}});
        return respond(401, body.to_string());
    }
    match state.scripts.next(&token) {
        None => {
            let n = state.counter.fetch_add(1, Ordering::SeqCst);
            let body =
                serde_json::json!({"name": format!("projects/{}/messages/0:{n}", state.project)});
            respond(200, body.to_string())
        }
        Some(Reply::Answer {
            status,
            body,
            headers,
        }) => serve::answer(status, true, body, headers),
        Some(Reply::Hold) => std::future::pending().await,
    }
}

async fn token_endpoint(headers: &http::HeaderMap, body: &[u8], state: &State) -> Answer {
    let delay = state.token_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let mut recorded = TokenRequest {
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        grant_type: form.get("grant_type").cloned(),
        claims: None,
        header: None,
        error: None,
    };
    let verdict = match (form.get("grant_type"), form.get("assertion")) {
        (Some(g), Some(a)) if g == GRANT_TYPE => {
            verify_assertion(a, &state.check, &state.token_uri.lock().unwrap())
        }
        _ => Err("grant_type or assertion missing or wrong".to_owned()),
    };
    match verdict {
        Ok((header, claims)) => {
            recorded.header = Some(header);
            recorded.claims = Some(claims);
        }
        Err(e) => recorded.error = Some(e),
    }
    let error = recorded.error.clone();
    state.token_requests.push(recorded);
    let failure = state.token_failure.load(Ordering::SeqCst);
    if failure != 0 {
        return respond(
            failure as u16,
            r#"{"error":"internal_failure","error_description":"try later"}"#.to_owned(),
        );
    }
    if let Some(e) = error {
        let body = serde_json::json!({"error": "invalid_grant", "error_description": e});
        return respond(400, body.to_string());
    }
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    let token = format!("ya29.test-access-token-{n}");
    state.issued.lock().unwrap().insert(token.clone());
    let mut body = serde_json::json!({"access_token": token, "token_type": "Bearer"});
    let expires_in = state.expires_in.lock().unwrap().clone();
    if !expires_in.is_null() {
        body["expires_in"] = expires_in;
    }
    respond(200, body.to_string())
}

/// Verifies a service-account assertion: RS256, the expected `kid`, `iss`, `scope`, `aud`, a
/// recent `iat` and `exp` at most an hour later. Returns the header and the claims.
fn verify_assertion(
    jwt: &str,
    check: &AssertionCheck,
    token_uri: &str,
) -> Result<(serde_json::Value, serde_json::Value), String> {
    let jws = Jws::parse(jwt)?;
    let (h, c) = (jws.header.clone(), jws.claims.clone());
    if h["alg"] != "RS256" || h["kid"] != check.kid.as_str() {
        return Err(format!("bad header {h}"));
    }
    if c["iss"] != check.iss.as_str() {
        return Err(format!("bad iss in {c}"));
    }
    if c["scope"] != SCOPE {
        return Err(format!("bad scope in {c}"));
    }
    if c["aud"] != token_uri {
        return Err(format!("bad aud in {c}"));
    }
    let now = now_secs();
    let iat = c["iat"].as_u64().ok_or("no iat")?;
    let exp = c["exp"].as_u64().ok_or("no exp")?;
    if iat + 60 < now || iat > now + 60 {
        return Err(format!("iat {iat} is not now ({now})"));
    }
    if exp <= now || exp > iat + 3600 {
        return Err(format!("exp {exp} is not within the hour after iat {iat}"));
    }
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &check.public_key_der,
    )
    .verify(jws.signing_input.as_bytes(), &jws.signature)
    .map_err(|_| "signature does not verify".to_owned())?;
    Ok((h, c))
}
