//! The local WebPush endpoint: plain HTTP/1.1 keep-alive on loopback, answers 201 and records
//! when the body carrying `bench-<seq>` arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{BoxError, MARK, ProviderSink, Times};

/// Bounds on one request: the head, and the body (a WebPush message is at most 4 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 64 * 1024;

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
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let requests = Arc::new(AtomicU64::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(sink_connection(socket, times.clone(), seen.clone()));
        }
    });
    Ok(Sink { port, requests })
}

pub(crate) async fn sink_connection(
    mut socket: TcpStream,
    times: Arc<Times>,
    seen: Arc<AtomicU64>,
) {
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            if buf.len() > MAX_HEAD_BYTES {
                return;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if len > MAX_BODY_BYTES {
            return;
        }
        while buf.len() < end + 4 + len {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let at = times.now();
        if let Some(seq) = sequence_in(&buf[end + 4..end + 4 + len]) {
            Times::mark(&times.delivered, seq, at);
        }
        buf.drain(..end + 4 + len);
        seen.fetch_add(1, Ordering::Relaxed);
        if socket
            .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
