//! The local WebPush endpoint: plain HTTP/1.1 keep-alive on loopback (the support crate's lean
//! 201 endpoint), recording when the body carrying `bench-<seq>` arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pushgate_test_support::http1::created_endpoint;
pub(crate) use pushgate_test_support::http1::find;

use crate::{BoxError, MARK, ProviderSink, Times};

pub(crate) struct Sink {
    port: u16,
    requests: Arc<AtomicU64>,
}

impl ProviderSink for Sink {
    fn provider_id(&self) -> &'static str {
        "webpush"
    }
    /// Plain http to loopback: the devices have no p256dh/auth, so bodies stay plaintext.
    fn provider_toml(&self) -> String {
        "[providers.webpush]\nkind = \"webpush\"\nallow_http = true\nallow_private_addresses = true\n"
            .to_owned()
    }
    /// The subscription endpoint.
    fn token(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}/push/{i}", self.port)
    }
    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

pub(crate) async fn start_sink(times: Arc<Times>) -> Result<Sink, BoxError> {
    let requests = Arc::new(AtomicU64::new(0));
    let seen = requests.clone();
    let addr = created_endpoint(move |body: &[u8]| {
        let at = times.now();
        if let Some(seq) = sequence_in(body) {
            Times::mark(&times.delivered, seq, at);
        }
        seen.fetch_add(1, Ordering::Relaxed);
    })
    .await?;
    Ok(Sink {
        port: addr.port(),
        requests,
    })
}

/// The number after `bench-` in a plaintext JSON body.
pub(crate) fn sequence_in(body: &[u8]) -> Option<usize> {
    let at = find(body, MARK.as_bytes())? + MARK.len();
    let digits = &body[at..];
    let len = digits.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 {
        return None;
    }
    digits[..len].iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::sequence_in;

    #[test]
    fn sequence_numbers_are_read_after_the_marker() {
        assert_eq!(
            sequence_in(br#"{"body":"bench-12345 wherefore"}"#),
            Some(12345)
        );
        assert_eq!(sequence_in(br#"{"body":"bench-"}"#), None);
        assert_eq!(sequence_in(b"no marker"), None);
        assert_eq!(sequence_in(b"bench-99999999999999999999999"), None);
    }
}
