//! A minimal WebPush push resource: plain HTTP/1.1 keep-alive on 127.0.0.1 that answers every
//! request `201 Created` and hands each body to the caller. Hand-rolled rather than hyper so the
//! benchmark's sink costs next to nothing per request.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Bounds on one request: the head, and the body (a WebPush message is at most 4 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Binds 127.0.0.1:0 and serves every connection with [`serve_created`] until the process
/// ends; returns the address.
pub async fn created_endpoint<F>(on_body: F) -> std::io::Result<SocketAddr>
where
    F: FnMut(&[u8]) + Clone + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let _ = socket.set_nodelay(true);
            tokio::spawn(serve_created(socket, on_body.clone()));
        }
    });
    Ok(addr)
}

/// Reads requests (head, then `content-length` bytes of body) off `socket`, calls `on_body`
/// with each body and answers `201 Created`; ends at EOF, on an error, or on a head or body
/// over 64 KiB.
pub async fn serve_created(mut socket: TcpStream, mut on_body: impl FnMut(&[u8])) {
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
        on_body(&buf[end + 4..end + 4 + len]);
        buf.drain(..end + 4 + len);
        if socket
            .write_all(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// Two pipelined requests on one connection: both bodies seen, both answered.
    #[tokio::test]
    async fn answers_each_keep_alive_request_and_hands_over_its_body() {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        let addr = created_endpoint(move |b: &[u8]| seen.lock().unwrap().push(b.to_vec()))
            .await
            .unwrap();
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(
                b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nonePOST /b HTTP/1.1\r\n\
                  content-length: 0\r\n\r\n",
            )
            .await
            .unwrap();
        let answer = b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
        let mut got = vec![0u8; 2 * answer.len()];
        socket.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [&answer[..], &answer[..]].concat());
        assert_eq!(*bodies.lock().unwrap(), vec![b"one".to_vec(), Vec::new()]);
        assert_eq!(find(b"abcabc", b"ca"), Some(2));
        assert_eq!(find(b"abc", b"x"), None);
    }
}
