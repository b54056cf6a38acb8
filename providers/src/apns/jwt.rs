//! The APNs provider token (token auth): an ES256 JWT signed with the team's .p8 key, cached and
//! shared by every connection.
//!
//! Why it exists: Apple wants one token reused for up to an hour and refreshed no more than once
//! per 20 minutes; signing per request (or refreshing too often) earns 429
//! `TooManyProviderTokenUpdates`. So the token is minted once, renewed after [`RENEW_AFTER`],
//! and an `ExpiredProviderToken` answer forces a renewal only when the token is old enough.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::DecodePrivateKey as _;

use super::auth::CredentialError;

/// A cached token is replaced after this long (Apple: between 20 and 60 minutes).
pub(crate) const RENEW_AFTER: Duration = Duration::from_secs(50 * 60);

/// Apple's floor: a token younger than this is not replaced, even when APNs calls it expired.
pub(crate) const MIN_RENEW_INTERVAL: Duration = Duration::from_secs(20 * 60);

/// One minted token and when it was minted (monotonic, for its age).
struct Minted {
    jwt: Arc<str>,
    at: Instant,
}

/// Signs and caches provider tokens for one key.
pub(crate) struct TokenSigner {
    signing: p256::ecdsa::SigningKey,
    /// base64url of `{"alg":"ES256","kid":KEY_ID}`.
    header_b64: String,
    team_id: String,
    cache: Mutex<Option<Minted>>,
}

impl TokenSigner {
    pub(crate) fn new(key_pem: &str, key_id: &str, team_id: &str) -> Result<Self, CredentialError> {
        let secret =
            p256::SecretKey::from_pkcs8_pem(key_pem).map_err(|_| CredentialError::NotP256Key)?;
        let header = serde_json::json!({ "alg": "ES256", "kid": key_id });
        Ok(Self {
            signing: p256::ecdsa::SigningKey::from(&secret),
            header_b64: B64URL.encode(header.to_string()),
            team_id: team_id.to_owned(),
            cache: Mutex::new(None),
        })
    }

    /// The token to use now: the cached one unless it is due for renewal.
    pub(crate) fn current(&self) -> Result<Arc<str>, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cache.as_ref()
            && m.at.elapsed() < RENEW_AFTER
        {
            return Ok(m.jwt.clone());
        }
        let minted = self.mint()?;
        let jwt = minted.jwt.clone();
        *cache = Some(minted);
        Ok(jwt)
    }

    /// After APNs answered `ExpiredProviderToken` to `rejected`: the token to retry with, or
    /// `None` when retrying cannot help (the same token, too young to be replaced).
    pub(crate) fn after_rejection(&self, rejected: &str) -> Result<Option<Arc<str>>, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cache.as_ref() {
            if &*m.jwt != rejected {
                // Another delivery renewed it meanwhile.
                return Ok(Some(m.jwt.clone()));
            }
            if m.at.elapsed() < MIN_RENEW_INTERVAL {
                return Ok(None);
            }
        }
        let minted = self.mint()?;
        let jwt = minted.jwt.clone();
        *cache = Some(minted);
        Ok(Some(jwt))
    }

    /// Makes the cached token look `by` older (tests of the renewal rules).
    pub(crate) fn backdate(&self, by: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = cache.as_mut()
            && let Some(at) = m.at.checked_sub(by)
        {
            m.at = at;
        }
    }

    fn mint(&self) -> Result<Minted, String> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| "system clock is before 1970".to_owned())?
            .as_secs();
        let claims = serde_json::json!({ "iss": self.team_id, "iat": iat });
        let input = format!("{}.{}", self.header_b64, B64URL.encode(claims.to_string()));
        let signature: p256::ecdsa::Signature = self.signing.sign(input.as_bytes());
        tracing::debug!(iat, "minted a new APNs provider token");
        Ok(Minted {
            jwt: format!("{input}.{}", B64URL.encode(signature.to_bytes())).into(),
            at: Instant::now(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::EncodePrivateKey as _;

    fn signer() -> (TokenSigner, p256::ecdsa::VerifyingKey) {
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let pem = secret.to_pkcs8_pem(Default::default()).unwrap();
        let verifying = p256::ecdsa::VerifyingKey::from(secret.public_key());
        (
            TokenSigner::new(&pem, "KEY1234567", "TEAM123456").unwrap(),
            verifying,
        )
    }

    #[test]
    fn token_has_es256_header_claims_and_raw_signature() {
        let (s, verifying) = signer();
        let jwt = s.current().unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg":"ES256","kid":"KEY1234567"})
        );
        let claims: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["iss"], "TEAM123456");
        assert!(claims["iat"].as_u64().unwrap() > 1_700_000_000);
        let sig = B64URL.decode(parts[2]).unwrap();
        assert_eq!(sig.len(), 64, "raw r||s, not DER");
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        verifying
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
    }

    #[test]
    fn cached_until_renewal_and_rejection_respects_the_floor() {
        let (s, _) = signer();
        let first = s.current().unwrap();
        assert_eq!(s.current().unwrap(), first);
        // Too young: no new token, so no point in retrying.
        assert_eq!(s.after_rejection(&first).unwrap(), None);
        // Someone else already renewed: use theirs.
        assert_eq!(s.after_rejection("other").unwrap(), Some(first.clone()));
        // ES256 signatures here are deterministic (RFC 6979): a new token needs a new `iat`.
        std::thread::sleep(Duration::from_millis(1100));
        s.backdate(MIN_RENEW_INTERVAL);
        let second = s.after_rejection(&first).unwrap().unwrap();
        assert_ne!(second, first);
        assert_eq!(s.current().unwrap(), second);
        std::thread::sleep(Duration::from_millis(1100));
        s.backdate(RENEW_AFTER);
        assert_ne!(s.current().unwrap(), second);
    }
}
