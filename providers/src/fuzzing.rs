//! Entry points for the fuzzer (`scripts/fuzz`) and its regression tests: what a provider or a
//! token endpoint answers, as bytes, through the same parsing and classification a delivery
//! uses. Whatever comes back, there is a verdict and no panic.

use std::time::SystemTime;

use http::StatusCode;

use crate::{apns, fcm, transport, webpush};

/// Statuses worth exploring; the first byte picks one (any other value is taken as is).
const STATUSES: [u16; 16] = [
    200, 201, 400, 401, 403, 404, 410, 413, 429, 500, 502, 503, 504, 301, 100, 999,
];

/// Input: a status selector byte, then `Retry-After` value bytes up to a NUL, then the body.
pub fn responses(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let code = STATUSES[usize::from(selector) % STATUSES.len()];
    let Ok(status) = StatusCode::from_u16(code) else {
        return;
    };
    let (header, body) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let retry_after = std::str::from_utf8(header)
        .ok()
        .and_then(|v| transport::parse_retry_after(v, SystemTime::now()));
    if let Some(d) = retry_after {
        assert!(d <= transport::MAX_RETRY_AFTER, "{d:?}");
    }

    let reason = apns::reason_of(body);
    let _ = apns::classify(status, &reason, retry_after, apns::Environment::Sandbox);
    let _ = apns::answered_by(status, &reason);

    let error = fcm::FcmError::parse(body);
    let _ = fcm::classify(status, error.as_ref(), retry_after);
    let _ = fcm::answered_by(status, error.as_ref());
    let _ = fcm::oauth::token_answer(body);
    let _ = fcm::oauth::oauth_error(body);

    for form in [webpush::Form::Encrypted, webpush::Form::Plain] {
        let _ = webpush::classify_status(status, form, retry_after, &webpush::excerpt_of(body));
    }
}
