//! A local APNs for the APNs provider tests: HTTP/2 over TLS (ALPN `h2`) on 127.0.0.1 with a
//! generated CA, optionally requiring a client certificate (certificate auth), verifying provider
//! tokens (token auth), recording every request and TCP connection, and answering per device
//! token what each test scripts.
//!
//! The JWT check is written here from Apple's description (ES256 over `header.claims`, raw
//! r||s, `kid`, `iss`, recent `iat`), independently of the provider's signer.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use p256::ecdsa::signature::Verifier as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// A test CA with a server certificate for 127.0.0.1 / localhost.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

/// A certificate and key as files on disk would hold them.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn("pushgate test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let ca_pem = ca.pem();

        let server_key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        params.distinguished_name = dn("localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params.signed_by(&server_key, &ca).unwrap();
        Self {
            ca,
            ca_pem,
            server_cert: server_cert.der().clone(),
            server_key: server_key.serialize_der(),
        }
    }

    /// A client certificate (APNs certificate auth) named `cn`, valid between the given dates
    /// (year, month, day).
    pub fn client_cert(
        &self,
        cn: &str,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        }
    }

    /// A client certificate valid from 2020 to 2099.
    pub fn valid_client_cert(&self, cn: &str) -> Issued {
        self.client_cert(cn, (2020, 1, 1), (2099, 12, 31))
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

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
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
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

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    /// The device token from the path.
    pub fn device_token(&self) -> &str {
        self.path.strip_prefix("/3/device/").unwrap_or("")
    }
}

#[derive(Default)]
struct State {
    requests: Mutex<Vec<Recorded>>,
    scripts: Mutex<HashMap<String, VecDeque<Reply>>>,
    connections: AtomicUsize,
    answered: AtomicUsize,
    kills: Mutex<Vec<Arc<Notify>>>,
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
        let _ = rustls::crypto::ring::default_provider().install_default();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = if options.mtls {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(pki.ca.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder
            .with_single_cert(
                vec![pki.server_cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.clone())),
            )
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let task = tokio::spawn(accept_loop(listener, acceptor, state.clone(), options));
        Self { addr, state, task }
    }

    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Answers for `token`, in order; once used up (or without a script) the server answers 200.
    pub fn script(&self, token: &str, replies: Vec<Reply>) {
        self.state
            .scripts
            .lock()
            .unwrap()
            .insert(token.to_owned(), replies.into());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn requests_for(&self, token: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.device_token() == token)
            .collect()
    }

    /// The single request this server received (fails the test otherwise).
    pub fn only_request(&self) -> Recorded {
        let all = self.requests();
        assert_eq!(all.len(), 1, "expected exactly one request, got {all:?}");
        all.into_iter().next().unwrap()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Closes every open connection, as a restarting APNs node would.
    pub fn drop_connections(&self) {
        for kill in self.state.kills.lock().unwrap().drain(..) {
            kill.notify_one();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<State>,
    options: Options,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let connection = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let kill = Arc::new(Notify::new());
        state.kills.lock().unwrap().push(kill.clone());
        let acceptor = acceptor.clone();
        let state = state.clone();
        let options = options.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            let conn_kill = kill.clone();
            let service = hyper::service::service_fn(move |req| {
                handle(
                    req,
                    state.clone(),
                    options.clone(),
                    connection,
                    client_cert.clone(),
                    conn_kill.clone(),
                )
            });
            let conn =
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {}
            }
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    options: Options,
    connection: usize,
    client_cert: Option<Vec<u8>>,
    kill: Arc<Notify>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let body = incoming
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let jwt = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
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
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        version: parts.version,
        headers: parts.headers,
        body,
        jwt,
        jwt_claims,
        jwt_error: jwt_error.clone(),
        client_cert,
        connection,
    };
    let token = recorded.device_token().to_owned();
    state.requests.lock().unwrap().push(recorded);

    let id = state.answered.fetch_add(1, Ordering::SeqCst);
    let apns_id = format!("00000000-0000-4000-8000-{id:012x}");
    let reply = match jwt_error {
        Some(_) => Reply::reason(403, "InvalidProviderToken"),
        None => state
            .scripts
            .lock()
            .unwrap()
            .get_mut(&token)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(Reply::ok),
    };
    match reply {
        Reply::Answer {
            status,
            body,
            headers,
        } => {
            let mut response = Response::builder()
                .status(status)
                .header("apns-id", apns_id);
            for (name, value) in headers {
                response = response.header(name, value);
            }
            Ok(response.body(Full::new(Bytes::from(body))).unwrap())
        }
        Reply::DropConnection => {
            kill.notify_one();
            std::future::pending().await
        }
        Reply::Hold => std::future::pending().await,
    }
}

/// Verifies an APNs provider token: ES256, the expected `kid` and `iss`, `iat` within the hour.
fn verify_jwt(token: &str, check: &JwtCheck) -> Result<serde_json::Value, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err("not three parts".to_owned());
    };
    let decode = |part: &str| -> Result<serde_json::Value, String> {
        let bytes = B64URL.decode(part).map_err(|e| format!("base64url: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("json: {e}"))
    };
    let h = decode(header)?;
    if h["alg"] != "ES256" || h["kid"] != check.kid.as_str() {
        return Err(format!("bad header {h}"));
    }
    let c = decode(claims)?;
    if c["iss"] != check.iss.as_str() {
        return Err(format!("bad iss in {c}"));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = c["iat"].as_u64().ok_or("no iat")?;
    if iat + 3600 < now || iat > now + 60 {
        return Err(format!("iat {iat} is not recent (now {now})"));
    }
    let sig = B64URL
        .decode(signature)
        .map_err(|e| format!("signature base64url: {e}"))?;
    let sig = p256::ecdsa::Signature::from_slice(&sig).map_err(|e| format!("signature: {e}"))?;
    check
        .key
        .verify(format!("{header}.{claims}").as_bytes(), &sig)
        .map_err(|_| "signature does not verify".to_owned())?;
    Ok(c)
}
