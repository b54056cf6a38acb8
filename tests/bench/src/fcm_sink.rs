//! A local FCM: Google's OAuth token endpoint (`POST /token`, the JWT-bearer grant) and the
//! HTTP v1 send endpoint (`POST /v1/projects/<project>/messages:send`), both HTTP/2 over TLS,
//! recording when each publish's message arrived.
//!
//! Why it exists: to measure pushgate's real FCM path (service-account OAuth, the multiplexed
//! HTTP/2 client, the data-message mapping) without Google. Sends must carry the access token
//! this sink issued, or they get Google's 401 `UNAUTHENTICATED`. The assertion's shape and grant
//! type are checked, not its RS256 signature. The service account's RSA key comes from the
//! `openssl` CLI, because ring (rcgen's backend here) cannot generate RSA keys.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, StatusCode};
use pushgate_test_support::fcm::GRANT_TYPE;
use pushgate_test_support::fixtures::RsaKey;

use crate::tls_sink::{self, Answer, Counts, Handler};
use crate::{BoxError, ProviderSink, Times, path_str, toml_str};

const PROJECT: &str = "pushgate-bench";
const UNAUTHENTICATED: &str = r#"{"error":{"code":401,"message":"Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.","status":"UNAUTHENTICATED"}}"#;
const NOT_FOUND: &str =
    r#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}"#;
const BAD_GRANT: &str =
    r#"{"error":"invalid_grant","error_description":"Invalid JWT-bearer assertion."}"#;

pub(crate) struct FcmSink {
    toml: String,
    counts: Arc<Counts>,
    tokens_issued: Arc<AtomicU64>,
}

struct Fcm {
    times: Arc<Times>,
    counts: Arc<Counts>,
    tokens_issued: Arc<AtomicU64>,
    send_path: String,
    /// `Bearer <access token>`, as the send requests must carry it.
    authorization: Bytes,
    /// The token endpoint's answer.
    token_answer: Bytes,
    next_message: AtomicU64,
}

impl FcmSink {
    /// Starts the sink and writes its CA and a service-account JSON pointing at it into `dir`.
    pub(crate) async fn start(dir: &Path, times: Arc<Times>) -> Result<Self, BoxError> {
        // Two openssl runs: off the runtime's threads.
        let private_key = tokio::task::spawn_blocking(RsaKey::generate).await??.pem;
        let access_token = format!(
            "ya29.bench-{:x}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        let counts = Arc::new(Counts::default());
        let tokens_issued = Arc::new(AtomicU64::new(0));
        let handler = Arc::new(Fcm {
            times,
            counts: counts.clone(),
            tokens_issued: tokens_issued.clone(),
            send_path: format!("/v1/projects/{PROJECT}/messages:send"),
            authorization: Bytes::from(format!("Bearer {access_token}")),
            token_answer: Bytes::from(
                serde_json::json!({
                    "access_token": access_token,
                    "expires_in": 3600,
                    "token_type": "Bearer",
                })
                .to_string(),
            ),
            next_message: AtomicU64::new(0),
        });
        let at = tls_sink::start(dir, "fcm", handler).await?;
        let account_file = dir.join("fcm-service-account.json");
        let account = serde_json::json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "bench0000000000000000000000000000000001",
            "private_key": private_key,
            "client_email": format!("bench@{PROJECT}.iam.gserviceaccount.com"),
            "client_id": "100000000000000000001",
            "token_uri": format!("{}/token", at.base_url),
        });
        std::fs::write(&account_file, account.to_string())?;
        let toml = format!(
            "[providers.fcm]\nkind = \"fcm\"\nservice_account_file = {}\nbase_url = {}\nca_file = {}\n",
            toml_str(path_str(&account_file)?),
            toml_str(&at.base_url),
            toml_str(path_str(&at.ca_file)?),
        );
        Ok(Self {
            toml,
            counts,
            tokens_issued,
        })
    }

    /// Access tokens handed out (pushgate should need one per hour).
    pub(crate) fn tokens_issued(&self) -> u64 {
        self.tokens_issued.load(Ordering::Relaxed)
    }
}

impl ProviderSink for FcmSink {
    fn provider_id(&self) -> &'static str {
        "fcm"
    }
    fn provider_toml(&self) -> String {
        self.toml.clone()
    }
    /// Opaque, FCM-looking registration tokens.
    fn token(&self, i: usize) -> String {
        format!("bench{i:08}:APA91b-pushgate-bench-registration-token")
    }
    fn requests(&self) -> u64 {
        self.counts.accepted()
    }
    fn refused(&self) -> u64 {
        self.counts.refused()
    }
    fn note(&self) -> String {
        format!("{} access token(s) issued", self.tokens_issued())
    }
}

impl Handler for Fcm {
    async fn handle(&self, req: Request<Incoming>) -> Answer {
        let (parts, incoming) = req.into_parts();
        let refuse = |status: StatusCode, body: &'static str| {
            self.counts.refused.fetch_add(1, Ordering::Relaxed);
            tls_sink::json(status, Bytes::from(body))
        };
        if parts.method != Method::POST {
            return refuse(StatusCode::NOT_FOUND, NOT_FOUND);
        }
        let path = parts.uri.path();
        if path == "/token" {
            let Some(body) = tls_sink::body(incoming).await else {
                return refuse(StatusCode::BAD_REQUEST, BAD_GRANT);
            };
            if !is_jwt_bearer_grant(&body) {
                return refuse(StatusCode::BAD_REQUEST, BAD_GRANT);
            }
            self.tokens_issued.fetch_add(1, Ordering::Relaxed);
            return tls_sink::json(StatusCode::OK, self.token_answer.clone());
        }
        if path != self.send_path {
            return refuse(StatusCode::NOT_FOUND, NOT_FOUND);
        }
        let authorized = parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == &self.authorization[..]);
        if !authorized {
            return refuse(StatusCode::UNAUTHORIZED, UNAUTHENTICATED);
        }
        let Some(body) = tls_sink::body(incoming).await else {
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, NOT_FOUND);
        };
        tls_sink::mark_delivery(&self.times, &body);
        self.counts.accepted.fetch_add(1, Ordering::Relaxed);
        let n = self.next_message.fetch_add(1, Ordering::Relaxed);
        tls_sink::json(
            StatusCode::OK,
            format!(r#"{{"name":"projects/{PROJECT}/messages/0:{n}"}}"#),
        )
    }
}

/// Whether a form-encoded token request asks for the JWT-bearer grant with a three-part
/// assertion.
fn is_jwt_bearer_grant(form: &[u8]) -> bool {
    let mut grant_ok = false;
    let mut assertion_ok = false;
    for pair in form.split(|&b| b == b'&') {
        let mut kv = pair.splitn(2, |&b| b == b'=');
        let (Some(key), Some(value)) = (kv.next(), kv.next()) else {
            continue;
        };
        match key {
            b"grant_type" => grant_ok = percent_decoded_eq(value, GRANT_TYPE.as_bytes()),
            // base64url and dots: nothing a form encoder escapes.
            b"assertion" => {
                assertion_ok = value.iter().filter(|&&b| b == b'.').count() == 2
                    && value
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b));
            }
            _ => {}
        }
    }
    grant_ok && assertion_ok
}

/// Whether form-encoded `encoded` decodes to `expected`.
fn percent_decoded_eq(encoded: &[u8], expected: &[u8]) -> bool {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = expected.iter();
    let mut i = 0;
    while i < encoded.len() {
        let byte = match encoded[i] {
            b'%' => {
                let (Some(&h), Some(&l)) = (encoded.get(i + 1), encoded.get(i + 2)) else {
                    return false;
                };
                let (Some(h), Some(l)) = (hex(h), hex(l)) else {
                    return false;
                };
                i += 2;
                h << 4 | l
            }
            b'+' => b' ',
            b => b,
        };
        if out.next() != Some(&byte) {
            return false;
        }
        i += 1;
    }
    out.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_is_checked_after_form_decoding() {
        let grant = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
        assert!(is_jwt_bearer_grant(
            format!("{grant}&assertion=aGVhZA.Y2xhaW1z.c2ln").as_bytes()
        ));
        assert!(!is_jwt_bearer_grant(
            format!("{grant}&assertion=a.b").as_bytes()
        ));
        assert!(!is_jwt_bearer_grant(
            b"grant_type=client_credentials&assertion=a.b.c"
        ));
        assert!(!is_jwt_bearer_grant(b"assertion=a.b.c"));
        assert!(percent_decoded_eq(b"a%20b+c", b"a b c"));
        assert!(!percent_decoded_eq(b"a%2", b"a"));
        assert!(!percent_decoded_eq(b"ab", b"abc"));
    }

    /// The sink as pushgate meets it: a token first, then sends with and without it.
    #[tokio::test]
    async fn issues_a_token_and_accepts_only_sends_carrying_it() {
        let dir = tempfile::tempdir().unwrap();
        let times = Arc::new(Times::new(10));
        let sink = FcmSink::start(dir.path(), times.clone()).await.unwrap();
        let base = sink.toml.split("base_url = \"").nth(1).unwrap();
        let base = &base[..base.find('"').unwrap()];
        let client = crate::tls_sink::tests::client(&dir.path().join("fcm-ca.pem"));

        let token = client
            .post(format!("{base}/token"))
            .body(
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=a.b.c",
            )
            .send()
            .await
            .unwrap();
        assert_eq!(token.status(), 200);
        let token: serde_json::Value = token.json().await.unwrap();
        let access = token["access_token"].as_str().unwrap().to_owned();
        assert_eq!(token["expires_in"], 3600);

        let send = format!("{base}/v1/projects/{PROJECT}/messages:send");
        let body = r#"{"message":{"token":"t","data":{"body":"bench-7 hi"}}}"#;
        let refused = client.post(&send).body(body).send().await.unwrap();
        assert_eq!(refused.status(), 401);
        let ok = client
            .post(&send)
            .bearer_auth(&access)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        let name: serde_json::Value = ok.json().await.unwrap();
        assert!(
            name["name"]
                .as_str()
                .unwrap()
                .starts_with("projects/pushgate-bench/messages/")
        );
        assert_eq!(
            (sink.requests(), sink.refused(), sink.tokens_issued()),
            (1, 1, 1)
        );
        assert_ne!(times.delivered[7].load(Ordering::Relaxed), 0);
    }
}
