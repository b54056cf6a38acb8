//! VAPID (RFC 8292) on pushes to UnifiedPush endpoints: `Authorization: vapid t=<JWT>, k=<key>`,
//! the JWT signed with ES256 by the app server's key `k` (an uncompressed P-256 point,
//! base64url), for the endpoint's origin (`aud`), not expired and expiring within a day.
//!
//! A push without VAPID is accepted unless the registration pinned a key; one that carries it is
//! checked either way (a wrong signature is a sign of trouble worth refusing), and for a pinned
//! key `k` must be that key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
use serde::Deserialize;

/// RFC 8292 §2: an `exp` more than 24 hours ahead is refused.
const MAX_EXPIRY_SECS: i64 = 24 * 3600;
/// Longest header value looked at.
const MAX_HEADER_BYTES: usize = 2048;

#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
pub enum VapidError {
    #[error("the Authorization header is not 'vapid t=…, k=…'")]
    Malformed,
    #[error("the VAPID key is not an uncompressed P-256 point")]
    BadKey,
    #[error("the VAPID token's signature does not verify")]
    BadSignature,
    #[error("the VAPID token is not for this push service (aud)")]
    WrongAudience,
    #[error("the VAPID token is expired or expires more than 24 hours ahead")]
    Expiry,
    #[error("this endpoint takes pushes signed by its registered VAPID key only")]
    NotPinnedKey,
    #[error("this endpoint takes VAPID-signed pushes only")]
    Missing,
}

impl VapidError {
    /// RFC 8292 §4.2: 403 for a key other than the one the subscription was made with, 401
    /// for missing or invalid credentials.
    pub fn status(&self) -> u16 {
        match self {
            VapidError::NotPinnedKey => 403,
            _ => 401,
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    aud: String,
    exp: i64,
}

/// Checks `authorization` (the header, if any) for a push to an endpoint at `audience` (its
/// origin) that pinned `pinned` (base64url key), at `now` (Unix seconds).
pub fn check(
    authorization: Option<&str>,
    audience: &str,
    pinned: Option<&str>,
    now: i64,
) -> Result<(), VapidError> {
    let Some(header) = authorization else {
        return match pinned {
            Some(_) => Err(VapidError::Missing),
            None => Ok(()),
        };
    };
    if header.len() > MAX_HEADER_BYTES {
        return Err(VapidError::Malformed);
    }
    let (scheme, params) = header.trim().split_once(' ').ok_or(VapidError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("vapid") {
        return Err(VapidError::Malformed);
    }
    let (mut token, mut key) = (None, None);
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", v)) => token = Some(v.trim()),
            Some(("k", v)) => key = Some(v.trim()),
            _ => {}
        }
    }
    let (token, key) = token.zip(key).ok_or(VapidError::Malformed)?;
    if pinned.is_some_and(|p| p.trim_end_matches('=') != key.trim_end_matches('=')) {
        return Err(VapidError::NotPinnedKey);
    }
    let public = URL_SAFE_NO_PAD
        .decode(key.trim_end_matches('='))
        .map_err(|_| VapidError::BadKey)?;
    if public.len() != 65 || public.first() != Some(&4) {
        return Err(VapidError::BadKey);
    }
    let mut parts = token.split('.');
    let (Some(head), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(VapidError::Malformed);
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| VapidError::Malformed)?;
    let signed = &token[..head.len() + 1 + body.len()];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &public)
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| VapidError::BadSignature)?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(body)
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or(VapidError::Malformed)?;
    if claims.aud.trim_end_matches('/') != audience.trim_end_matches('/') {
        return Err(VapidError::WrongAudience);
    }
    if claims.exp <= now || claims.exp > now + MAX_EXPIRY_SECS {
        return Err(VapidError::Expiry);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    const AUD: &str = "https://up.example.org";
    const NOW: i64 = 1_800_000_000;

    fn key() -> EcdsaKeyPair {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap()
    }

    fn header(key: &EcdsaKeyPair, aud: &str, exp: i64) -> (String, String) {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let signed = format!(
            "{}.{}",
            b64(br#"{"typ":"JWT","alg":"ES256"}"#),
            b64(format!(r#"{{"aud":"{aud}","exp":{exp},"sub":"mailto:a@b"}}"#).as_bytes())
        );
        let sig = key.sign(&SystemRandom::new(), signed.as_bytes()).unwrap();
        let k = b64(key.public_key().as_ref());
        (format!("vapid t={signed}.{}, k={k}", b64(sig.as_ref())), k)
    }

    #[test]
    fn a_good_token_passes_and_a_pinned_key_is_enforced() {
        let key = key();
        let (h, k) = header(&key, AUD, NOW + 3600);
        assert_eq!(check(Some(&h), AUD, None, NOW), Ok(()));
        assert_eq!(check(Some(&h), AUD, Some(&k), NOW), Ok(()));
        let (other, _) = header(&self::key(), AUD, NOW + 3600);
        assert_eq!(
            check(Some(&other), AUD, Some(&k), NOW),
            Err(VapidError::NotPinnedKey)
        );
        assert_eq!(check(None, AUD, Some(&k), NOW), Err(VapidError::Missing));
        assert_eq!(check(None, AUD, None, NOW), Ok(()));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let key = key();
        let (stale, _) = header(&key, AUD, NOW - 1);
        assert_eq!(check(Some(&stale), AUD, None, NOW), Err(VapidError::Expiry));
        let (far, _) = header(&key, AUD, NOW + MAX_EXPIRY_SECS + 1);
        assert_eq!(check(Some(&far), AUD, None, NOW), Err(VapidError::Expiry));
        let (elsewhere, _) = header(&key, "https://other.example", NOW + 60);
        assert_eq!(
            check(Some(&elsewhere), AUD, None, NOW),
            Err(VapidError::WrongAudience)
        );
        let (good, _) = header(&key, AUD, NOW + 60);
        let tampered = good.replacen("t=", "t=x", 1);
        assert!(check(Some(&tampered), AUD, None, NOW).is_err());
        for junk in [
            "Bearer abc",
            "vapid",
            "vapid t=a.b.c",
            "vapid t=a.b.c, k=!!",
        ] {
            assert!(check(Some(junk), AUD, None, NOW).is_err(), "{junk}");
        }
    }
}
