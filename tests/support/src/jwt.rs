//! The compact JWS form (RFC 7515 §7.1) the APNs, FCM and VAPID checks read: three base64url
//! parts, a JSON header and claims, and a signature over `header.claims`. The signature itself
//! is checked by each caller with the algorithm its service uses.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;

/// A token split into its parts; nothing verified yet.
pub struct Jws<'a> {
    pub header: serde_json::Value,
    pub claims: serde_json::Value,
    /// What the signature covers: `header.claims` as sent.
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

impl<'a> Jws<'a> {
    pub fn parse(token: &'a str) -> Result<Self, String> {
        let parts: Vec<&str> = token.split('.').collect();
        let [header, claims, signature] = parts.as_slice() else {
            return Err("not three parts".to_owned());
        };
        let decode = |part: &str| -> Result<serde_json::Value, String> {
            let bytes = B64URL.decode(part).map_err(|e| format!("base64url: {e}"))?;
            serde_json::from_slice(&bytes).map_err(|e| format!("json: {e}"))
        };
        Ok(Self {
            header: decode(header)?,
            claims: decode(claims)?,
            signing_input: &token[..header.len() + 1 + claims.len()],
            signature: B64URL
                .decode(signature)
                .map_err(|e| format!("signature base64url: {e}"))?,
        })
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
