//! A real push resource for the WebPush tests: an HTTP/1.1 server on 127.0.0.1 that records what
//! pushgate sends and answers what each test asks for, plus the user agent's side of RFC 8291
//! (key pair, auth secret, decryption) and an RFC 8292 VAPID verifier.
//!
//! Decryption and verification are written here from the RFCs, independently of
//! web-push-native, so the tests check pushgate's wire format rather than a library against
//! itself.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit, OsRng, rand_core::RngCore};
use aes_gcm::{Aes128Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use hkdf::Hkdf;
use hyper::body::Incoming;
use p256::ecdsa::signature::Verifier as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
use pushgate_providers::WebPushKeys;
use sha2::Sha256;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::jwt::{Jws, now_secs};
pub use crate::serve::Recorded;
use crate::serve::{self, Answer, Journal};

/// What the endpoint does with a request.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answer with this status, these headers and this body.
    Respond {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: &'static str,
    },
    /// Accept the connection and never answer.
    Hold,
}

impl Behaviour {
    pub fn status(status: u16) -> Self {
        Behaviour::Respond {
            status,
            headers: Vec::new(),
            body: "",
        }
    }
}

/// The running endpoint; stops when dropped.
pub struct Endpoint {
    addr: SocketAddr,
    requests: Arc<Journal<Recorded>>,
    connections: Arc<Mutex<usize>>,
    task: JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Endpoint {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Journal::default());
        let connections = Arc::new(Mutex::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            behaviour,
            requests.clone(),
            connections.clone(),
        ));
        Self {
            addr,
            requests,
            connections,
            task,
        }
    }

    /// A capability-style endpoint URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The VAPID audience pushgate must use for this server.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.all()
    }

    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }

    /// The single request this endpoint received (fails the test otherwise).
    pub fn only_request(&self) -> Recorded {
        self.requests.only("request")
    }
}

async fn accept_loop(
    listener: TcpListener,
    behaviour: Behaviour,
    requests: Arc<Journal<Recorded>>,
    connections: Arc<Mutex<usize>>,
) {
    let mut held: Vec<TcpStream> = Vec::new();
    while let Ok((stream, _)) = listener.accept().await {
        *connections.lock().unwrap() += 1;
        match &behaviour {
            Behaviour::Hold => held.push(stream),
            Behaviour::Respond {
                status,
                headers,
                body,
            } => {
                let answer = (*status, headers.clone(), *body);
                let requests = requests.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let answer = handle(req, answer.clone(), requests.clone());
                        async move { Ok::<_, std::convert::Infallible>(answer.await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

async fn handle(
    req: hyper::Request<Incoming>,
    (status, headers, body): (u16, Vec<(&'static str, String)>, &'static str),
    requests: Arc<Journal<Recorded>>,
) -> Answer {
    requests.push(Recorded::read(req).await);
    serve::answer(status, false, body, headers)
}

/// The user agent's subscription: its P-256 key pair and auth secret.
pub struct Subscriber {
    secret: p256::SecretKey,
    public: Vec<u8>,
    auth: [u8; 16],
}

impl Subscriber {
    pub fn generate() -> Self {
        let secret = p256::SecretKey::random(&mut OsRng);
        let public = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        let mut auth = [0u8; 16];
        OsRng.fill_bytes(&mut auth);
        Self {
            secret,
            public,
            auth,
        }
    }

    /// The keys as a browser or UnifiedPush distributor hands them out (unpadded base64url).
    pub fn keys(&self) -> WebPushKeys {
        WebPushKeys {
            p256dh: B64URL.encode(&self.public),
            auth: B64URL.encode(self.auth),
        }
    }

    /// RFC 8291 / RFC 8188 decryption of a single-record `aes128gcm` body.
    pub fn decrypt(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        if body.len() > 4096 {
            return Err(format!("body is {} bytes, more than 4096", body.len()));
        }
        if body.len() < 21 {
            return Err("body shorter than the aes128gcm header".into());
        }
        let salt = &body[..16];
        let rs = u32::from_be_bytes([body[16], body[17], body[18], body[19]]) as usize;
        let idlen = body[20] as usize;
        if idlen != 65 || body.len() < 21 + idlen {
            return Err(format!(
                "keyid must be the 65-byte sender key, idlen is {idlen}"
            ));
        }
        let sender_public = p256::PublicKey::from_sec1_bytes(&body[21..21 + idlen])
            .map_err(|_| "keyid is not a P-256 point".to_string())?;
        let record = &body[21 + idlen..];
        if rs < 18 || record.len() > rs {
            return Err(format!(
                "expected one record of at most rs={rs} bytes, got {}",
                record.len()
            ));
        }

        let shared =
            p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), sender_public.as_affine());
        let mut info = b"WebPush: info\0".to_vec();
        info.extend_from_slice(&self.public);
        info.extend_from_slice(sender_public.to_encoded_point(false).as_bytes());
        let mut ikm = [0u8; 32];
        Hkdf::<Sha256>::new(Some(&self.auth), shared.raw_secret_bytes().as_slice())
            .expand(&info, &mut ikm)
            .map_err(|e| e.to_string())?;

        let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
        let mut cek = [0u8; 16];
        let mut nonce = [0u8; 12];
        prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
            .map_err(|e| e.to_string())?;
        prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
            .map_err(|e| e.to_string())?;

        let padded = Aes128Gcm::new(&cek.into())
            .decrypt(Nonce::from_slice(&nonce), record)
            .map_err(|_| "AES-GCM authentication failed".to_string())?;
        let end = padded
            .iter()
            .rposition(|&b| b != 0)
            .ok_or("record is all padding")?;
        if padded[end] != 0x02 {
            return Err(format!(
                "last-record delimiter must be 0x02, found {:#04x}",
                padded[end]
            ));
        }
        Ok(padded[..end].to_vec())
    }
}

/// A VAPID key written to a PEM file, as an operator would configure it.
pub struct VapidFixture {
    pub file: tempfile::NamedTempFile,
    pub public_b64: String,
}

impl VapidFixture {
    pub fn pkcs8() -> Self {
        let secret = p256::SecretKey::random(&mut OsRng);
        let pem = secret.to_pkcs8_pem(LineEnding::LF).unwrap();
        Self::write(&secret, pem.as_bytes())
    }

    /// SEC1 PEM preceded by an EC PARAMETERS block, as `openssl ecparam -genkey` writes it.
    pub fn sec1_with_params() -> Self {
        let secret = p256::SecretKey::random(&mut OsRng);
        let pem = secret.to_sec1_pem(LineEnding::LF).unwrap();
        let text = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            pem.as_str()
        );
        Self::write(&secret, text.as_bytes())
    }

    fn write(secret: &p256::SecretKey, pem: &[u8]) -> Self {
        use std::io::Write as _;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(pem).unwrap();
        file.flush().unwrap();
        let public_b64 = B64URL.encode(secret.public_key().to_encoded_point(false).as_bytes());
        Self { file, public_b64 }
    }
}

/// The claims of a VAPID token that checked out.
#[derive(Debug)]
pub struct VapidClaims {
    pub aud: String,
    pub sub: String,
    pub exp: u64,
}

/// Verifies an RFC 8292 `Authorization: vapid t=…, k=…` value: ES256 signature over the key in
/// `k`, which must be `expected_key`; `aud`, `sub` and an `exp` no more than 24 h ahead.
pub fn verify_vapid(
    authorization: &str,
    expected_key: &str,
    expected_aud: &str,
    expected_sub: &str,
) -> Result<VapidClaims, String> {
    let params = authorization
        .strip_prefix("vapid ")
        .ok_or("scheme is not vapid")?;
    let mut token = None;
    let mut key = None;
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => token = Some(v),
            Some(("k", v)) => key = Some(v),
            _ => return Err(format!("unexpected parameter {param:?}")),
        }
    }
    let (token, key) = (token.ok_or("no t=")?, key.ok_or("no k=")?);
    if key != expected_key {
        return Err(format!(
            "k={key} is not the configured VAPID key {expected_key}"
        ));
    }

    let jws = Jws::parse(token)?;
    if jws.header["alg"] != "ES256" {
        return Err(format!("alg is {}, not ES256", jws.header["alg"]));
    }
    let verifying =
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&B64URL.decode(key).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let signature =
        p256::ecdsa::Signature::from_slice(&jws.signature).map_err(|e| e.to_string())?;
    verifying
        .verify(jws.signing_input.as_bytes(), &signature)
        .map_err(|_| "ES256 signature does not verify".to_string())?;

    let claims = jws.claims;
    let aud = claims["aud"].as_str().ok_or("no aud")?.to_owned();
    let sub = claims["sub"].as_str().ok_or("no sub")?.to_owned();
    let exp = claims["exp"].as_u64().ok_or("no numeric exp")?;
    if aud != expected_aud {
        return Err(format!("aud is {aud}, expected {expected_aud}"));
    }
    if sub != expected_sub {
        return Err(format!("sub is {sub}, expected {expected_sub}"));
    }
    let now = now_secs();
    if exp <= now || exp > now + 24 * 3600 {
        return Err(format!("exp {exp} is not within 24 h after now ({now})"));
    }
    Ok(VapidClaims { aud, sub, exp })
}
