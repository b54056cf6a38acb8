//! A local FCM for the FCM provider tests: HTTP/2 over TLS (ALPN `h2`) on 127.0.0.1 with a
//! generated CA, serving both Google's OAuth token endpoint (`/token`) and FCM's
//! `/v1/projects/{project}/messages:send`. It verifies the service-account assertion, issues
//! access tokens and accepts only those on sends, records every request and TCP connection, and
//! answers per device token what each test scripts.
//!
//! The assertion check is written here from Google's description (RS256 over `header.claims`,
//! `kid`, `iss`, `scope`, `aud` = token endpoint, `exp` = `iat` + at most an hour, the JWT-bearer
//! grant type), independently of the provider's signer; the public key comes from the `openssl`
//! CLI, not from ring's view of the private key.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A test CA with a server certificate for 127.0.0.1 / localhost.
pub struct Pki {
    pub ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn("pushgate FCM test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name = dn("localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params.signed_by(&server_key, &ca).unwrap();
        Self {
            ca_pem: ca.pem(),
            server_cert: server_cert.der().clone(),
            server_key: server_key.serialize_der(),
        }
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

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
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    /// The access token from `authorization: Bearer …`.
    pub bearer: Option<String>,
    /// Whether that token was issued here and not revoked.
    pub bearer_valid: bool,
    pub connection: usize,
}

impl Sent {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
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
    sends: Mutex<Vec<Sent>>,
    token_requests: Mutex<Vec<TokenRequest>>,
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
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
        let _ = rustls::crypto::ring::default_provider().install_default();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![pki.server_cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            check,
            project: project.to_owned(),
            token_uri: Mutex::new(format!("https://{addr}/token")),
            sends: Mutex::default(),
            token_requests: Mutex::default(),
            scripts: Mutex::default(),
            issued: Mutex::default(),
            expires_in: Mutex::new(serde_json::json!(3599)),
            token_delay_ms: AtomicU64::new(0),
            token_failure: AtomicU64::new(0),
            connections: AtomicUsize::new(0),
            counter: AtomicUsize::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor, state.clone()));
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
        self.state
            .scripts
            .lock()
            .unwrap()
            .insert(token.to_owned(), replies.into());
    }

    pub fn sends(&self) -> Vec<Sent> {
        self.state.sends.lock().unwrap().clone()
    }

    pub fn sends_for(&self, token: &str) -> Vec<Sent> {
        self.sends()
            .into_iter()
            .filter(|s| s.device_token() == token)
            .collect()
    }

    /// The single send this server received (fails the test otherwise).
    pub fn only_send(&self) -> Sent {
        let all = self.sends();
        assert_eq!(all.len(), 1, "expected exactly one send, got {all:?}");
        all.into_iter().next().unwrap()
    }

    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.state.token_requests.lock().unwrap().clone()
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

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let connection = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let acceptor = acceptor.clone();
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service =
                hyper::service::service_fn(move |req| handle(req, state.clone(), connection));
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

fn respond(status: u16, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    connection: usize,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let body = incoming
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    if parts.method == http::Method::POST && path == "/token" {
        return Ok(token_endpoint(&parts.headers, &body, &state).await);
    }
    let send_path = format!("/v1/projects/{}/messages:send", state.project);
    if parts.method != http::Method::POST || path != send_path {
        return Ok(respond(
            404,
            "<html><body>404 Not Found</body></html>".to_owned(),
        ));
    }
    let bearer = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let bearer_valid = bearer
        .as_ref()
        .is_some_and(|b| state.issued.lock().unwrap().contains(b));
    let sent = Sent {
        path,
        version: parts.version,
        headers: parts.headers,
        body,
        bearer,
        bearer_valid,
        connection,
    };
    let token = sent.device_token();
    state.sends.lock().unwrap().push(sent);
    if !bearer_valid {
        let body = serde_json::json!({"error": {"code": 401,
            "message": "Request had invalid authentication credentials.",
            "status": "UNAUTHENTICATED"}});
        return Ok(respond(401, body.to_string()));
    }
    let reply = state
        .scripts
        .lock()
        .unwrap()
        .get_mut(&token)
        .and_then(VecDeque::pop_front);
    match reply {
        None => {
            let n = state.counter.fetch_add(1, Ordering::SeqCst);
            let body =
                serde_json::json!({"name": format!("projects/{}/messages/0:{n}", state.project)});
            Ok(respond(200, body.to_string()))
        }
        Some(Reply::Answer {
            status,
            body,
            headers,
        }) => {
            let mut response = respond(status, body);
            for (name, value) in headers {
                response
                    .headers_mut()
                    .insert(name, http::HeaderValue::from_str(&value).unwrap());
            }
            Ok(response)
        }
        Some(Reply::Hold) => std::future::pending().await,
    }
}

async fn token_endpoint(
    headers: &http::HeaderMap,
    body: &[u8],
    state: &State,
) -> Response<Full<Bytes>> {
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
    state.token_requests.lock().unwrap().push(recorded);
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
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("not three parts".to_owned());
    };
    let decode = |part: &str| -> Result<serde_json::Value, String> {
        let bytes = B64URL.decode(part).map_err(|e| format!("base64url: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("json: {e}"))
    };
    let h = decode(header)?;
    if h["alg"] != "RS256" || h["kid"] != check.kid.as_str() {
        return Err(format!("bad header {h}"));
    }
    let c = decode(claims)?;
    if c["iss"] != check.iss.as_str() {
        return Err(format!("bad iss in {c}"));
    }
    if c["scope"] != SCOPE {
        return Err(format!("bad scope in {c}"));
    }
    if c["aud"] != token_uri {
        return Err(format!("bad aud in {c}"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = c["iat"].as_u64().ok_or("no iat")?;
    let exp = c["exp"].as_u64().ok_or("no exp")?;
    if iat + 60 < now || iat > now + 60 {
        return Err(format!("iat {iat} is not now ({now})"));
    }
    if exp <= now || exp > iat + 3600 {
        return Err(format!("exp {exp} is not within the hour after iat {iat}"));
    }
    let sig = B64URL
        .decode(signature)
        .map_err(|e| format!("signature base64url: {e}"))?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &check.public_key_der,
    )
    .verify(format!("{header}.{claims}").as_bytes(), &sig)
    .map_err(|_| "signature does not verify".to_owned())?;
    Ok((h, c))
}
