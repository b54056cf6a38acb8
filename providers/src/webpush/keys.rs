//! RFC 8291 subscription keys of a device (`p256dh`, `auth`), decoded and checked: at
//! registration, so a device with unusable keys is refused, and before each encryption.

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use crate::{RegistrationError, WebPushKeys};

/// Longest subscription key accepted for decoding: base64 of the 65-byte `p256dh` is 88
/// characters with padding, so anything longer is not a key and is not worth decoding.
const MAX_ENCODED_KEY_BYTES: usize = 128;

/// Subscription keys are base64url, but padded and unpadded forms both circulate.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Some client libraries hand out standard base64; accepting it costs nothing.
const BASE64STD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decoded RFC 8291 subscription keys.
pub(super) struct UaKeys {
    pub(super) public: p256::PublicKey,
    pub(super) auth: [u8; 16],
}

fn decode_b64(value: &str) -> Option<Vec<u8>> {
    let value = value.trim();
    BASE64URL
        .decode(value)
        .or_else(|_| BASE64STD.decode(value))
        .ok()
}

pub(super) fn decode_keys(keys: &WebPushKeys) -> Result<UaKeys, RegistrationError> {
    let invalid = |m: String| RegistrationError::InvalidKeys(m);
    for (name, value) in [("p256dh", &keys.p256dh), ("auth", &keys.auth)] {
        if value.len() > MAX_ENCODED_KEY_BYTES {
            return Err(invalid(format!(
                "{name} is {} bytes, more than {MAX_ENCODED_KEY_BYTES}",
                value.len()
            )));
        }
    }
    let p256dh =
        decode_b64(&keys.p256dh).ok_or_else(|| invalid("p256dh is not base64url".to_owned()))?;
    if p256dh.len() != 65 || p256dh[0] != 0x04 {
        return Err(invalid(format!(
            "p256dh must be a 65-byte uncompressed P-256 point, got {} bytes",
            p256dh.len()
        )));
    }
    let public = p256::PublicKey::from_sec1_bytes(&p256dh)
        .map_err(|_| invalid("p256dh is not a point on P-256".to_owned()))?;
    let auth = decode_b64(&keys.auth).ok_or_else(|| invalid("auth is not base64url".to_owned()))?;
    let auth: [u8; 16] = auth
        .as_slice()
        .try_into()
        .map_err(|_| invalid(format!("auth must be 16 bytes, got {}", auth.len())))?;
    Ok(UaKeys { public, auth })
}
