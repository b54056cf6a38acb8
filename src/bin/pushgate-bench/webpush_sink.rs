//! The local WebPush endpoint: plain HTTP/1.1 keep-alive on loopback, answers 201 and records
//! when the body carrying `bench-<seq>` arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::{BoxError, MARK, Times};

pub(crate) struct Sink {
    pub(crate) port: u16,
    requests: Arc<AtomicU64>,
}

impl Sink {
    pub(crate) fn requests(&self) -> u64 {
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
    let digits: String = body[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .map(|&b| b as char)
        .collect();
    digits.parse().ok()
}
