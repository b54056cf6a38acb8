//! A local APNs for the APNs provider tests: HTTP/2 over TLS (ALPN `h2`) on 127.0.0.1 with a
//! test CA, optionally requiring a client certificate (certificate auth), verifying provider
//! tokens (token auth), recording every request and TCP connection, and answering per device
//! token what each test scripts.
//!
//! The JWT check is written here from Apple's description (ES256 over `header.claims`, raw
//! r||s, `kid`, `iss`, recent `iat`), independently of the provider's signer:
//! <https://developer.apple.com/documentation/usernotifications/establishing-a-token-based-connection-to-apns>.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use p256::ecdsa::signature::Verifier as _;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::jwt::{Jws, now_secs};
use crate::pki::Pki;
use crate::serve::{self, Answer, Journal, Scripts};

/// What the provider token must look like.
#[derive(Clone)]
pub struct JwtCheck {
    pub key: p256::ecdsa::VerifyingKey,
    pub kid: String,
    pub iss: String,
}

#[derive(Clone, Default)]
pub struct Options {
    /// Require a client certificate signed by the test CA.
    pub mtls: bool,
    /// Require and verify a provider token.
    pub jwt: Option<JwtCheck>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS the server announces (hyper's default without).
    pub max_streams: Option<u32>,
}

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Reply {
    Answer {
        status: u16,
        /// The body: `{"reason":…}` JSON, raw text, or nothing.
        body: String,
        headers: Vec<(&'static str, String)>,
    },
    /// Close the TCP connection while this request is in flight.
    DropConnection,
    /// Never answer.
    Hold,
    /// Answer 200 after this long.
    Slow(std::time::Duration),
}

impl Reply {
    pub fn ok() -> Self {
        Reply::Answer {
            status: 200,
            body: String::new(),
            headers: Vec::new(),
        }
    }
    pub fn reason(status: u16, reason: &str) -> Self {
        Reply::Answer {
            status,
            body: format!(r#"{{"reason":"{reason}"}}"#),
            headers: Vec::new(),
        }
    }
    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        if let Reply::Answer { headers, .. } = &mut self {
            headers.push((name, value.to_owned()));
        }
        self
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub request: serve::Recorded,
    /// The provider token from `authorization: bearer …`.
    pub jwt: Option<String>,
    /// Its verified claims, when the server checks tokens and the token passed.
    pub jwt_claims: Option<serde_json::Value>,
    /// Why the token failed the check.
    pub jwt_error: Option<String>,
    /// DER of the TLS client certificate.
    pub client_cert: Option<Vec<u8>>,
    /// Which TCP connection (1-based) carried it.
    pub connection: usize,
}

/// The method, path, headers and body, as on any request.
impl Deref for Recorded {
    type Target = serve::Recorded;
    fn deref(&self) -> &serve::Recorded {
        &self.request
    }
}

impl Recorded {
    /// The device token from the path.
    pub fn device_token(&self) -> &str {
        self.path.strip_prefix("/3/device/").unwrap_or("")
    }
}

#[derive(Default)]
struct State {
    requests: Journal<Recorded>,
    scripts: Scripts<Reply>,
    connections: AtomicUsize,
    answered: AtomicUsize,
    kills: Mutex<Vec<Arc<Notify>>>,
    goaways: Mutex<Vec<Arc<Notify>>>,
    /// Requests being answered now, and the most there ever were.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// The running server; stops when dropped.
pub struct MockApns {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for MockApns {
    fn drop(&mut self) {
        self.task.abort();
        self.drop_connections();
    }
}

impl MockApns {
    pub async fn start(pki: &Pki, options: Options) -> Self {
        crate::install_crypto_provider();
        let (listener, acceptor) = serve::bind_h2(pki, options.mtls).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let accepting = state.clone();
        let task = tokio::spawn(serve::accept_tls(listener, acceptor, move || {
            let connection = accepting.connections.fetch_add(1, Ordering::SeqCst) + 1;
            let kill = Arc::new(Notify::new());
            accepting.kills.lock().unwrap().push(kill.clone());
            let goaway = Arc::new(Notify::new());
            accepting.goaways.lock().unwrap().push(goaway.clone());
            let state = accepting.clone();
            let options = options.clone();
            move |tls| async move {
                let client_cert = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let conn_kill = kill.clone();
                let max_streams = options.max_streams;
                let serving = serve::serve_h2_until(
                    tls,
                    move |req| {
                        handle(
                            req,
                            state.clone(),
                            options.clone(),
                            connection,
                            client_cert.clone(),
                            conn_kill.clone(),
                        )
                    },
                    max_streams,
                    async move { goaway.notified().await },
                );
                tokio::select! {
                    _ = serving => {}
                    _ = kill.notified() => {}
                }
            }
        }));
        Self { addr, state, task }
    }

    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Answers for `token`, in order; once used up (or without a script) the server answers 200.
    pub fn script(&self, token: &str, replies: Vec<Reply>) {
        self.state.scripts.set(token, replies);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.all()
    }

    pub fn requests_for(&self, token: &str) -> Vec<Recorded> {
        self.state.requests.matching(|r| r.device_token() == token)
    }

    /// The single request this server received (fails the test otherwise).
    pub fn only_request(&self) -> Recorded {
        self.state.requests.only("request")
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Sends GOAWAY on every open connection and closes it once its requests are answered, as
    /// an APNs node going out of service would.
    pub fn go_away(&self) {
        for goaway in self.state.goaways.lock().unwrap().drain(..) {
            goaway.notify_one();
        }
    }

    /// The most requests the server was answering at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Closes every open connection, as a restarting APNs node would.
    pub fn drop_connections(&self) {
        for kill in self.state.kills.lock().unwrap().drain(..) {
            kill.notify_one();
        }
    }
}

async fn handle(
    req: hyper::Request<Incoming>,
    state: Arc<State>,
    options: Options,
    connection: usize,
    client_cert: Option<Vec<u8>>,
    kill: Arc<Notify>,
) -> Answer {
    let request = serve::Recorded::read(req).await;
    let jwt = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("bearer "))
        .map(str::to_owned);
    let (jwt_claims, jwt_error) = match (&options.jwt, &jwt) {
        (Some(check), Some(token)) => match verify_jwt(token, check) {
            Ok(claims) => (Some(claims), None),
            Err(e) => (None, Some(e)),
        },
        (Some(_), None) => (None, Some("no provider token".to_owned())),
        (None, _) => (None, None),
    };
    let recorded = Recorded {
        request,
        jwt,
        jwt_claims,
        jwt_error: jwt_error.clone(),
        client_cert,
        connection,
    };
    let token = recorded.device_token().to_owned();
    state.requests.push(recorded);
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let _answering = InFlight(&state.in_flight);
    reply_to(&state, &token, jwt_error, kill).await
}

/// Counts a request out of `in_flight` when its answer is sent or given up.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn reply_to(
    state: &State,
    token: &str,
    jwt_error: Option<String>,
    kill: Arc<Notify>,
) -> Answer {
    let id = state.answered.fetch_add(1, Ordering::SeqCst);
    let apns_id = format!("00000000-0000-4000-8000-{id:012x}");
    let reply = match jwt_error {
        Some(_) => Reply::reason(403, "InvalidProviderToken"),
        None => state.scripts.next(token).unwrap_or_else(Reply::ok),
    };
    match reply {
        Reply::Answer {
            status,
            body,
            mut headers,
        } => {
            headers.insert(0, ("apns-id", apns_id));
            serve::answer(status, false, body, headers)
        }
        Reply::DropConnection => {
            kill.notify_one();
            std::future::pending().await
        }
        Reply::Hold => std::future::pending().await,
        Reply::Slow(after) => {
            tokio::time::sleep(after).await;
            serve::answer(200, false, String::new(), vec![("apns-id", apns_id)])
        }
    }
}

/// Verifies an APNs provider token: ES256, the expected `kid` and `iss`, `iat` within the hour.
fn verify_jwt(token: &str, check: &JwtCheck) -> Result<serde_json::Value, String> {
    let jws = Jws::parse(token)?;
    let (h, c) = (&jws.header, jws.claims.clone());
    if h["alg"] != "ES256" || h["kid"] != check.kid.as_str() {
        return Err(format!("bad header {h}"));
    }
    if c["iss"] != check.iss.as_str() {
        return Err(format!("bad iss in {c}"));
    }
    let now = now_secs();
    let iat = c["iat"].as_u64().ok_or("no iat")?;
    if iat + 3600 < now || iat > now + 60 {
        return Err(format!("iat {iat} is not recent (now {now})"));
    }
    let sig = p256::ecdsa::Signature::from_slice(&jws.signature)
        .map_err(|e| format!("signature: {e}"))?;
    check
        .key
        .verify(jws.signing_input.as_bytes(), &sig)
        .map_err(|_| "signature does not verify".to_owned())?;
    Ok(c)
}
