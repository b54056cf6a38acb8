//! OAuth 2.0 access tokens for FCM from a Google service account (the JWT-bearer grant,
//! RFC 7523): an RS256 assertion signed with the account's key is exchanged at the account's
//! `token_uri` for a bearer token.
//!
//! Why it is written here rather than taken from gcp_auth or jsonwebtoken: the assertion is one
//! RS256 signature, which ring (already in the tree through rustls) does without the `rsa` crate
//! and its RUSTSEC-2023-0071; and pushgate needs control over the cache: one refresh shared by all
//! concurrent deliveries, renewal 5 minutes before expiry, and invalidation of exactly the token
//! FCM rejected with 401. Neither the key nor any token is ever logged.
//!
//! The endpoint's `expires_in` is a number from outside: whatever it says (nothing, 0, -5,
//! "abc", 2^64 − 1), a token is used for at least a minute, so a bogus answer cannot make every
//! delivery fetch a token, and for at most 55 minutes, so none is kept forever (a 401 still
//! forces a refresh at once).

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject as _;
use serde::Deserialize;

/// The one scope FCM sends need.
pub(crate) const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google's token endpoint, for service-account files without `token_uri`.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Lifetime of an assertion (Google's maximum).
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// A token is replaced this long before it expires, so no request goes out with a token that
/// expires on the way.
pub(crate) const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// Shortest use of a token, also for an `expires_in` that is missing or not a number.
const MIN_TOKEN_USE: Duration = Duration::from_secs(60);
/// Longest use of a token: Google's live an hour, less the renewal margin.
const MAX_TOKEN_USE: Duration = Duration::from_secs(3600 - 5 * 60);
/// How much of a token-endpoint error is kept for the reason.
const MAX_ERROR_CHARS: usize = 200;
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Why a service-account file cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ServiceAccountError {
    #[error("cannot read {path}: {message}")]
    Unreadable { path: String, message: String },
    #[error("{path} is not a service-account JSON file: {message}")]
    InvalidJson { path: String, message: String },
    #[error("{path}: `{field}` {message}")]
    InvalidField {
        path: String,
        field: &'static str,
        message: String,
    },
    #[error("{path}: `private_key` is not an RSA private key in PKCS#8 PEM: {message}")]
    NotRsaPkcs8 { path: String, message: String },
}

/// The fields of a Google service-account JSON file that pushgate uses.
#[derive(Deserialize)]
struct ServiceAccountFile {
    project_id: String,
    private_key: String,
    private_key_id: String,
    client_email: String,
    #[serde(default)]
    token_uri: Option<String>,
}

/// A loaded service account: who it is, where it gets tokens, and its signing key.
pub(crate) struct ServiceAccount {
    pub project_id: String,
    client_email: String,
    token_uri: String,
    /// base64url of `{"alg":"RS256","typ":"JWT","kid":…}`.
    header_b64: String,
    key: RsaKeyPair,
}

impl fmt::Debug for ServiceAccount {
    /// Never shows the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    pub(crate) fn load(path: &Path) -> Result<Self, ServiceAccountError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ServiceAccountError::Unreadable {
            path: shown.clone(),
            message: e.to_string(),
        })?;
        Self::from_json(&text, &shown)
    }

    /// `path` only names the source in errors.
    pub(crate) fn from_json(json: &str, path: &str) -> Result<Self, ServiceAccountError> {
        let file: ServiceAccountFile =
            serde_json::from_str(json).map_err(|e| ServiceAccountError::InvalidJson {
                path: path.to_owned(),
                // serde_json's message names the field and position, never the values.
                message: e.to_string(),
            })?;
        let field = |field: &'static str, message: &str| ServiceAccountError::InvalidField {
            path: path.to_owned(),
            field,
            message: message.to_owned(),
        };
        if file.project_id.is_empty()
            || !file
                .project_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b':' || b == b'.')
        {
            return Err(field(
                "project_id",
                "must be a Google Cloud project id (letters, digits, '-')",
            ));
        }
        if file.client_email.trim().is_empty() {
            return Err(field("client_email", "is empty"));
        }
        if file.private_key_id.trim().is_empty() {
            return Err(field("private_key_id", "is empty"));
        }
        let token_uri = file
            .token_uri
            .unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned());
        check_token_uri(&token_uri).map_err(|m| field("token_uri", &m))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(file.private_key.as_bytes()).map_err(|e| {
            ServiceAccountError::NotRsaPkcs8 {
                path: path.to_owned(),
                message: format!("no PKCS#8 PEM section ({e})"),
            }
        })?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).map_err(|e| {
            ServiceAccountError::NotRsaPkcs8 {
                path: path.to_owned(),
                message: e.to_string(),
            }
        })?;
        let header =
            serde_json::json!({ "alg": "RS256", "typ": "JWT", "kid": file.private_key_id });
        Ok(Self {
            project_id: file.project_id,
            client_email: file.client_email,
            token_uri,
            header_b64: B64URL.encode(header.to_string()),
            key,
        })
    }

    /// The signed assertion for a token request issued at `iat` (seconds since the epoch).
    pub(crate) fn assertion(&self, iat: u64) -> Result<String, String> {
        let claims = serde_json::json!({
            "iss": self.client_email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": iat,
            "exp": iat.saturating_add(ASSERTION_LIFETIME_SECS),
        });
        let input = format!("{}.{}", self.header_b64, B64URL.encode(claims.to_string()));
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "cannot sign the OAuth assertion".to_owned())?;
        Ok(format!("{input}.{}", B64URL.encode(signature)))
    }
}

/// `token_uri` must be https, or http to a loopback host (a local token endpoint in tests).
fn check_token_uri(uri: &str) -> Result<(), String> {
    let url = url::Url::parse(uri).map_err(|e| format!("is not a URL: {e}"))?;
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => Ok(()),
        ("http", Some(host)) if is_loopback(&host) => Ok(()),
        _ => Err("must be an https:// URL (http:// only for loopback hosts)".to_owned()),
    }
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Why no access token could be had; every case is transient for deliveries.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TokenError {
    #[error("cannot reach the OAuth token endpoint: {0}")]
    Unreachable(String),
    #[error("the OAuth token endpoint answered {status}: {detail}")]
    Refused { status: u16, detail: String },
    #[error("the OAuth token endpoint's answer is unusable: {0}")]
    BadAnswer(String),
    #[error("{0}")]
    Signing(String),
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// Read as any JSON value: its range is checked by [`token_use`], not by serde.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

/// How long a token with this `expires_in` is used: its lifetime less [`RENEW_BEFORE_EXPIRY`],
/// between [`MIN_TOKEN_USE`] and [`MAX_TOKEN_USE`]. Seconds may come as an integer, a float or a
/// string of digits; anything else counts as unknown (the minimum).
fn token_use(expires_in: Option<&serde_json::Value>) -> Duration {
    use serde_json::Value;
    let secs = match expires_in {
        // `as` saturates: a negative or NaN float is 0, a huge one u64::MAX.
        Some(Value::Number(n)) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match secs {
        Some(secs) => Duration::from_secs(secs)
            .saturating_sub(RENEW_BEFORE_EXPIRY)
            .clamp(MIN_TOKEN_USE, MAX_TOKEN_USE),
        None => {
            tracing::warn!(
                "the OAuth token endpoint gave no usable expires_in; renewing the FCM access token every minute"
            );
            MIN_TOKEN_USE
        }
    }
}

/// One access token and when it should be replaced.
struct Cached {
    token: Arc<str>,
    renew_at: Instant,
}

#[derive(Default)]
struct CacheState {
    current: Option<Cached>,
    /// The last failed refresh, shared with the callers that waited for it.
    failure: Option<(Instant, TokenError)>,
}

/// Access tokens for one service account, fetched when needed and shared by all deliveries.
pub(crate) struct TokenSource {
    account: ServiceAccount,
    client: reqwest::Client,
    timeout: Duration,
    /// An async lock held across the refresh, so concurrent deliveries wait for one request
    /// rather than each sending their own.
    state: tokio::sync::Mutex<CacheState>,
}

impl TokenSource {
    pub(crate) fn new(account: ServiceAccount, client: reqwest::Client, timeout: Duration) -> Self {
        Self {
            account,
            client,
            timeout,
            state: tokio::sync::Mutex::new(CacheState::default()),
        }
    }

    pub(crate) fn project_id(&self) -> &str {
        &self.account.project_id
    }

    /// The token to use now: the cached one unless it is due for renewal. A caller that waited
    /// while a refresh failed gets that failure instead of trying again at once.
    pub(crate) async fn get(&self) -> Result<Arc<str>, TokenError> {
        let asked = Instant::now();
        let mut state = self.state.lock().await;
        if let Some(c) = &state.current
            && Instant::now() < c.renew_at
        {
            return Ok(c.token.clone());
        }
        if let Some((at, err)) = &state.failure
            && *at >= asked
        {
            return Err(err.clone());
        }
        match self.fetch().await {
            Ok(cached) => {
                let token = cached.token.clone();
                state.current = Some(cached);
                state.failure = None;
                Ok(token)
            }
            Err(e) => {
                state.current = None;
                state.failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// Makes the cached token look `by` older (tests of the renewal rules).
    pub(crate) async fn backdate(&self, by: Duration) {
        if let Some(c) = self.state.lock().await.current.as_mut()
            && let Some(at) = c.renew_at.checked_sub(by)
        {
            c.renew_at = at;
        }
    }

    /// FCM answered 401 to `rejected`: forget it (unless another delivery already replaced it),
    /// so the next [`get`](Self::get) fetches a fresh one.
    pub(crate) async fn invalidate(&self, rejected: &str) {
        let mut state = self.state.lock().await;
        if state
            .current
            .as_ref()
            .is_some_and(|c| &*c.token == rejected)
        {
            state.current = None;
        }
    }

    async fn fetch(&self) -> Result<Cached, TokenError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| TokenError::Signing("system clock is before 1970".to_owned()))?
            .as_secs();
        let assertion = self.account.assertion(iat).map_err(TokenError::Signing)?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", GRANT_TYPE)
            .append_pair("assertion", &assertion)
            .finish();
        let sent_at = Instant::now();
        let response = self
            .client
            .post(&self.account.token_uri)
            .timeout(self.timeout)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(http::header::ACCEPT, "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| {
                TokenError::Unreachable(crate::transport::error_chain(&e.without_url()))
            })?;
        let status = response.status();
        let body = crate::transport::read_capped(response, MAX_RESPONSE_BYTES).await;
        if !status.is_success() {
            return Err(TokenError::Refused {
                status: status.as_u16(),
                detail: oauth_error(&body),
            });
        }
        let (token, used_for) = token_answer(&body)?;
        tracing::debug!(
            renew_after_secs = used_for.as_secs(),
            "fetched a new FCM access token"
        );
        Ok(Cached {
            token: token.into(),
            renew_at: sent_at.checked_add(used_for).unwrap_or(sent_at),
        })
    }
}

/// The access token of a successful token answer and how long to use it.
pub(crate) fn token_answer(body: &[u8]) -> Result<(String, Duration), TokenError> {
    let answer: TokenAnswer = serde_json::from_slice(body)
        // The message names the missing field; the body (holding a token) is not shown.
        .map_err(|e| TokenError::BadAnswer(e.to_string()))?;
    if answer.access_token.is_empty() || !answer.access_token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(TokenError::BadAnswer(
            "access_token is empty or not printable".to_owned(),
        ));
    }
    let used_for = token_use(answer.expires_in.as_ref());
    Ok((answer.access_token, used_for))
}

/// `error: error_description` of an OAuth error answer, else a printable excerpt.
pub(crate) fn oauth_error(body: &[u8]) -> String {
    crate::transport::error_reason(body, MAX_ERROR_CHARS, |v| {
        let error = v.get("error").and_then(|e| e.as_str()).unwrap_or("");
        let description = v
            .get("error_description")
            .and_then(|e| e.as_str())
            .unwrap_or("");
        match (error.is_empty(), description.is_empty()) {
            (false, false) => format!("{error}: {description}"),
            (false, true) => error.to_owned(),
            (true, false) => description.to_owned(),
            (true, true) => String::new(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_uri_must_be_https_or_loopback_http() {
        assert!(check_token_uri("https://oauth2.googleapis.com/token").is_ok());
        assert!(check_token_uri("http://127.0.0.1:8080/token").is_ok());
        assert!(check_token_uri("http://[::1]/token").is_ok());
        assert!(check_token_uri("http://localhost/token").is_ok());
        assert!(check_token_uri("http://oauth2.googleapis.com/token").is_err());
        assert!(check_token_uri("ftp://127.0.0.1/token").is_err());
        assert!(check_token_uri("not a url").is_err());
    }

    #[test]
    fn json_errors_name_the_problem_not_the_values() {
        let err = ServiceAccount::from_json(r#"{"project_id":"p"}"#, "sa.json").unwrap_err();
        assert!(
            matches!(&err, ServiceAccountError::InvalidJson { message, .. } if message.contains("private_key")),
            "{err}"
        );
        let err = ServiceAccount::from_json(
            r#"{"project_id":"p","private_key":"SECRET","private_key_id":"k","client_email":"a@b","token_uri":"https://x/token"}"#,
            "sa.json",
        )
        .unwrap_err();
        assert!(matches!(err, ServiceAccountError::NotRsaPkcs8 { .. }));
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn token_lifetimes_are_clamped() {
        let used = |v: serde_json::Value| token_use(Some(&v)).as_secs();
        assert_eq!(used(serde_json::json!(3599)), 3299);
        assert_eq!(used(serde_json::json!(3599.9)), 3299);
        assert_eq!(used(serde_json::json!("3599")), 3299);
        assert_eq!(used(serde_json::json!(302)), 60, "at least a minute");
        for short in [
            serde_json::json!(0),
            serde_json::json!(-5),
            serde_json::json!(-1e300),
            serde_json::json!("abc"),
            serde_json::json!(null),
            serde_json::json!([3599]),
        ] {
            assert_eq!(used(short.clone()), 60, "{short}");
        }
        assert_eq!(token_use(None).as_secs(), 60);
        for long in [
            serde_json::json!(u64::MAX),
            serde_json::json!(1e300),
            serde_json::json!(86_400),
        ] {
            assert_eq!(used(long.clone()), 3300, "at most 55 minutes: {long}");
        }
    }

    #[test]
    fn oauth_errors_are_summarised() {
        assert_eq!(
            oauth_error(br#"{"error":"invalid_grant","error_description":"Invalid JWT"}"#),
            "invalid_grant: Invalid JWT"
        );
        assert_eq!(oauth_error(b"<html>\nbad\n</html>"), "<html> bad </html>");
    }
}
