//! VAPID (RFC 8292): the signing key from its PEM file and the `Authorization` header per push
//! service origin.
//!
//! Signed here rather than by web-push-native: its `aud` claim drops the port of the push
//! resource's origin, and it ties the JWT's `exp` to the `TTL` header, while `exp` must stay
//! within 24 h and `TTL` defaults to a day.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use p256::pkcs8::DecodePrivateKey as _;
use serde::Serialize;

/// Lifetime of a VAPID token; RFC 8292 allows at most 24 h, half of that leaves room for clock skew.
const VAPID_VALIDITY: Duration = Duration::from_secs(12 * 60 * 60);
/// A signed VAPID header is reused this long, well inside its validity.
const VAPID_REUSE: Duration = Duration::from_secs(60 * 60);
/// Distinct push services whose VAPID headers are kept; beyond it the cache starts over.
const VAPID_CACHED_ORIGINS: usize = 1024;

/// JWS header of every VAPID token, base64url of `{"typ":"JWT","alg":"ES256"}`.
const VAPID_JWT_HEADER: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9";

/// Why the VAPID key file was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum VapidKeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} holds no P-256 private key in PKCS#8 (PRIVATE KEY) or SEC1 (EC PRIVATE KEY) PEM"
    )]
    NotAKey { path: String },
}

/// The VAPID signing key and its public half as it goes into the `k=` parameter.
pub(super) struct VapidKey {
    signing: p256::ecdsa::SigningKey,
    pub(super) public_b64: String,
    /// Signed headers by origin with when they were signed: an ES256 signature costs more CPU
    /// than the rest of a delivery, and a token is valid for `VAPID_VALIDITY`, so one per
    /// origin is reused for `VAPID_REUSE`.
    signed: std::sync::Mutex<HashMap<String, (String, SystemTime)>>,
}

impl VapidKey {
    pub(super) fn load(path: &Path) -> Result<Self, VapidKeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|source| VapidKeyError::Read {
            path: shown.clone(),
            source,
        })?;
        // `openssl ecparam -genkey` writes an EC PARAMETERS block first: pick the key block.
        let secret = pem_block(&pem, "PRIVATE KEY")
            .and_then(|b| p256::SecretKey::from_pkcs8_pem(&b).ok())
            .or_else(|| {
                pem_block(&pem, "EC PRIVATE KEY")
                    .and_then(|b| p256::SecretKey::from_sec1_pem(&b).ok())
            })
            .ok_or(VapidKeyError::NotAKey { path: shown })?;
        let public = secret.public_key().to_encoded_point(false);
        Ok(Self {
            signing: p256::ecdsa::SigningKey::from(&secret),
            public_b64: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public.as_bytes()),
            signed: std::sync::Mutex::default(),
        })
    }

    /// The `Authorization` value for a request to `origin`: a recent one if there is one.
    pub(super) fn authorization_for(
        &self,
        origin: &str,
        subject: &str,
        now: SystemTime,
    ) -> Result<String, String> {
        let lock = || {
            self.signed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        if let Some((header, at)) = lock().get(origin)
            && now.duration_since(*at).is_ok_and(|age| age < VAPID_REUSE)
        {
            return Ok(header.clone());
        }
        let header = self.authorization(origin, subject, now)?;
        let mut signed = lock();
        if signed.len() >= VAPID_CACHED_ORIGINS {
            signed.clear();
        }
        signed.insert(origin.to_owned(), (header.clone(), now));
        Ok(header)
    }

    /// The `Authorization` value for one request to `origin`.
    fn authorization(
        &self,
        origin: &str,
        subject: &str,
        now: SystemTime,
    ) -> Result<String, String> {
        #[derive(Serialize)]
        struct Claims<'a> {
            aud: &'a str,
            exp: u64,
            sub: &'a str,
        }
        let exp = now
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "system clock is before 1970".to_owned())?
            .saturating_add(VAPID_VALIDITY)
            .as_secs();
        let claims = serde_json::to_vec(&Claims {
            aud: origin,
            exp,
            sub: subject,
        })
        .map_err(|e| format!("cannot encode VAPID claims: {e}"))?;
        let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signing_input = format!("{VAPID_JWT_HEADER}.{}", b64.encode(claims));
        let signature: p256::ecdsa::Signature = self.signing.sign(signing_input.as_bytes());
        Ok(format!(
            "vapid t={signing_input}.{}, k={}",
            b64.encode(signature.to_bytes()),
            self.public_b64
        ))
    }
}

/// The first `-----BEGIN {label}-----` … `-----END {label}-----` block of `pem`, markers included.
fn pem_block(pem: &str, label: &str) -> Option<String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin)?;
    let stop = pem[start..].find(&end)? + start + end.len();
    Some(format!("{}\n", &pem[start..stop]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vapid_headers_are_reused_per_origin_then_renewed() {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let key = VapidKey {
            signing: p256::ecdsa::SigningKey::from(&secret),
            public_b64: "k".into(),
            signed: std::sync::Mutex::default(),
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let sub = "mailto:ops@example.org";
        let a = key
            .authorization_for("https://push.example", sub, t0)
            .unwrap();
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            key.authorization_for("https://push.example", sub, later)
                .unwrap(),
            a
        );
        let other = key
            .authorization_for("https://other.example", sub, later)
            .unwrap();
        assert_ne!(other, a, "each origin has its own audience");
        let renewed = key
            .authorization_for("https://push.example", sub, t0 + VAPID_REUSE)
            .unwrap();
        assert_ne!(renewed, a, "renewed after VAPID_REUSE");
    }
}
