//! The longest value of each field a client can make pushgate store, in one place.
//!
//! Every field is stored as sent and read back for every publish, so each has a bound, checked
//! before anything else happens to the value (parsing, hashing, asking the provider). The bounds
//! hold on their own, whatever size of stanza the stream lets through, and are generous for
//! real clients: an APNs token is 64 hex digits, an FCM token about 160–200 characters, a WebPush
//! endpoint at most 1000 bytes (the WebPush provider checks that tighter bound itself).

use crate::error::Refusal;

/// `device-token`, `device-second-token` (Tigase), `token` (p2).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// `device-id` / `android-id` (p2): Conversations sends 16 hex digits.
pub const MAX_DEVICE_ID_BYTES: usize = 1024;
/// A JID (`muc`, `channel`, the REST unregister's `account`): RFC 7622 allows 1023 bytes for
/// each of local part, domain and resource.
pub const MAX_JID_BYTES: usize = 3071;
/// `p256dh` and `auth`: base64 of 65 and 16 bytes, 88 and 24 characters with padding.
pub const MAX_WEBPUSH_KEY_BYTES: usize = 256;
pub use crate::ids::MAX_PROVIDER_ID_BYTES;
/// `key-id` and `team-id` of `set-apns-certificate` (admins only): 10 characters each.
pub const MAX_APNS_ID_BYTES: usize = 64;

/// `value`, or the refusal naming `field` and its limit.
pub fn within<'a>(field: &'static str, value: &'a str, max: usize) -> Result<&'a str, Refusal> {
    if value.len() > max {
        return Err(Refusal::TooLong { field, max });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_itself_is_allowed() {
        let at = "a".repeat(MAX_TOKEN_BYTES);
        assert_eq!(within("token", &at, MAX_TOKEN_BYTES), Ok(at.as_str()));
        assert_eq!(
            within("token", &format!("{at}a"), MAX_TOKEN_BYTES),
            Err(Refusal::TooLong {
                field: "token",
                max: MAX_TOKEN_BYTES
            })
        );
        // Bytes, not characters: four bytes each.
        assert!(within("muc", &"😀".repeat(1000), MAX_JID_BYTES).is_err());
    }
}
