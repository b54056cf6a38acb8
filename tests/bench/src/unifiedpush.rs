//! The UnifiedPush front's load (`--front unifiedpush`): app servers on one side, distributors
//! on the other, pushgate in between.
//!
//! The bench plays the XMPP server on the component stream and, through it, the distributors
//! (Conversations' dialect): `--devices` app instances registered from distinct full JIDs, their
//! endpoints read from the `registered` answers; then app-server POSTs of 200–1000 pseudo-random
//! bytes (the size of an RFC 8291 ciphertext) over `http_load`'s keep-alive pool, while a task
//! on the stream answers each push IQ `result`, as a distributor does, after checking that it
//! went to the right full JID and app instance and that its body is, byte for byte, the one
//! POSTed (the body's first 8 bytes are its sequence number, the rest derive from it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;

use crate::http_load::{self, Answer, Outgoing};
use crate::xmpp::{attr, next_iq, reply_kind};
use crate::{BoxError, COMPONENT, DOMAIN, Times};

const NS: &str = "http://gultsch.de/xmpp/drafts/unified-push";
/// Conversations sends salted hashes here; any printable name does for pushgate.
const APPLICATION: &str = "bench-app";
/// Shortest and longest body POSTed.
const MIN_BODY: usize = 200;
const MAX_BODY: usize = 1000;
/// The `TTL` app servers send: a push the distributor does not take is kept (`201` with a
/// `TTL` above 0), which the report counts apart from delivered ones.
const TTL_SECS: u32 = 86_400;
/// The kind of a POST answered `201` with `TTL: 0`: the distributor took it.
pub(crate) const OK: &str = "201";
/// Most unparsed stream bytes kept while waiting for the end of an `<iq>`.
const MAX_UNPARSED_BYTES: usize = 16 * 1024 * 1024;

/// The `[http]` and `[unifiedpush]` sections. The rate limits are raised out of the way: one
/// app server (one source address) sends the whole load, far above the default 600 a minute.
pub(crate) fn config_toml(listen: std::net::SocketAddr) -> String {
    format!(
        "[http]\nlisten = \"{listen}\"\n\
         [unifiedpush]\nenabled = true\nendpoint_base_url = \"http://{listen}\"\n\
         pushes_per_minute_per_endpoint = 1000000000\npushes_per_minute_per_ip = 1000000000\n"
    )
}

/// The full JID of device `i`'s distributor: one account each.
fn distributor(i: usize) -> String {
    format!("d{i}@{DOMAIN}/conversations")
}

fn instance(i: usize) -> String {
    format!("inst-{i}")
}

/// Conversations' registration of device `i`'s app instance, as its server routes it.
fn register_stanza(i: usize) -> String {
    format!(
        "<iq type='set' id='r{i}' from='{}' to='{COMPONENT}'>\
         <register xmlns='{NS}' application='{APPLICATION}' instance='{}'/></iq>",
        distributor(i),
        instance(i)
    )
}

/// splitmix64: the bodies' bytes, reproducible from the sequence number.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The body of POST `seq`: its sequence number (8 bytes, little-endian), then bytes derived
/// from it, 200–1000 in all.
pub(crate) fn body(seq: usize) -> Vec<u8> {
    let mut state = mix(seq as u64);
    let len = MIN_BODY + (state % (MAX_BODY - MIN_BODY + 1) as u64) as usize;
    let mut out = Vec::with_capacity(len + 8);
    out.extend_from_slice(&(seq as u64).to_le_bytes());
    while out.len() < len {
        state = mix(state);
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The component stream, read in chunks.
pub(crate) struct Stream {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    buf: Vec<u8>,
    chunk: Vec<u8>,
}

impl Stream {
    pub(crate) fn new(socket: TcpStream) -> Self {
        let (rd, wr) = socket.into_split();
        Stream {
            rd,
            wr,
            buf: Vec::new(),
            chunk: vec![0u8; 65536],
        }
    }

    /// Reads until at least one complete `<iq>` is buffered; returns the IQs read, as text.
    async fn read_iqs(&mut self) -> Result<Vec<String>, BoxError> {
        loop {
            let mut iqs = Vec::new();
            let mut consumed = 0;
            while let Some((iq, next)) = next_iq(&self.buf[consumed..]) {
                iqs.push(String::from_utf8_lossy(iq).into_owned());
                consumed += next;
            }
            self.buf.drain(..consumed);
            if !iqs.is_empty() {
                return Ok(iqs);
            }
            let n = self.rd.read(&mut self.chunk).await?;
            if n == 0 || self.buf.len() > MAX_UNPARSED_BYTES {
                return Err("pushgate closed the component stream".into());
            }
            self.buf.extend_from_slice(&self.chunk[..n]);
        }
    }
}

/// The endpoints' paths (`/up/<token>`), by device, and how long registering took.
pub(crate) struct Registered {
    pub(crate) paths: Vec<String>,
    pub(crate) secs: f64,
}

impl Registered {
    pub(crate) fn rate(&self) -> f64 {
        self.paths.len() as f64 / self.secs.max(1e-9)
    }
}

/// The path of the endpoint in a `registered` answer.
fn endpoint_path(iq: &str) -> Option<String> {
    let at = iq.find("<registered")?;
    let endpoint = attr(&iq[at..], "endpoint")?;
    let path = &endpoint[endpoint.find("/up/")?..];
    Some(path.to_owned())
}

/// Registers `devices` app instances, at most `window` outstanding, within 120 s.
pub(crate) async fn register(
    stream: &mut Stream,
    devices: usize,
    window: usize,
) -> Result<Registered, BoxError> {
    let started = Instant::now();
    let mut paths = vec![String::new(); devices];
    let (mut sent, mut answered) = (0, 0);
    let work = async {
        while answered < devices {
            let mut batch = String::new();
            while sent < devices && sent - answered < window {
                batch.push_str(&register_stanza(sent));
                sent += 1;
            }
            if !batch.is_empty() {
                stream.wr.write_all(batch.as_bytes()).await?;
            }
            for iq in stream.read_iqs().await? {
                let Some(i) = attr(&iq, "id")
                    .and_then(|id| id.strip_prefix('r'))
                    .and_then(|i| i.parse::<usize>().ok())
                    .filter(|&i| i < devices)
                else {
                    continue;
                };
                let path = endpoint_path(&iq)
                    .ok_or_else(|| format!("registration {i} answered {}", reply_kind(&iq)))?;
                paths[i] = path;
                answered += 1;
            }
        }
        Ok::<(), BoxError>(())
    };
    timeout(Duration::from_secs(120), work)
        .await
        .map_err(|_| "registrations not all answered within 120 s")??;
    Ok(Registered {
        paths,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// What the distributors saw.
#[derive(Default)]
pub(crate) struct Seen {
    /// Push IQs read (and answered `result`).
    pub(crate) pushes: AtomicU64,
    /// Of those, right JID, app instance and body.
    pub(crate) matched: AtomicU64,
    /// To the wrong distributor or instance, or a body not the one POSTed.
    pub(crate) mismatched: AtomicU64,
    /// A body that matched, for a POST already matched once.
    pub(crate) duplicates: AtomicU64,
    /// Other IQs pushgate sent (neither a push nor an answer to us).
    pub(crate) other: AtomicU64,
}

impl Seen {
    pub(crate) fn note(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "distributors: {} push IQs answered result, {} matched byte for byte, {} mismatched, \
             {} duplicates, {} other IQs",
            get(&self.pushes),
            get(&self.matched),
            get(&self.mismatched),
            get(&self.duplicates),
            get(&self.other)
        )
    }
}

/// Whether a push IQ is device `i`'s (by its `to`) and carries POST `seq`'s body; `Some(seq)`.
fn check_push(iq: &str, devices: usize, total: usize) -> Option<usize> {
    let to = attr(iq, "to")?;
    let i: usize = to.strip_prefix('d')?.split('@').next()?.parse().ok()?;
    let push = &iq[iq.find("<push")?..];
    let text_at = push.find('>')? + 1;
    let text = &push[text_at..text_at + push[text_at..].find("</push>")?];
    let bytes = STANDARD.decode(text.trim()).ok()?;
    let seq = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let right = i < devices
        && to == distributor(i)
        && seq < total
        && seq % devices == i
        && attr(push, "application") == Some(APPLICATION)
        && attr(push, "instance") == Some(instance(i).as_str())
        && bytes == body(seq);
    right.then_some(seq)
}

/// The distributors' side, until aborted: every push IQ answered `result` from the JID it
/// went to, and checked; a match stamps `times.delivered`.
pub(crate) fn distribute(
    mut stream: Stream,
    times: Arc<Times>,
    devices: usize,
    total: usize,
    seen: Arc<Seen>,
) -> tokio::task::JoinHandle<Result<(), BoxError>> {
    tokio::spawn(async move {
        loop {
            let iqs = stream.read_iqs().await?;
            let at = times.now();
            let mut answers = String::new();
            for iq in iqs {
                let (Some("set"), Some(id), Some(to)) =
                    (attr(&iq, "type"), attr(&iq, "id"), attr(&iq, "to"))
                else {
                    seen.other.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if !iq.contains("<push") {
                    seen.other.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                answers.push_str(&format!(
                    "<iq type='result' id='{id}' from='{to}' to='{COMPONENT}'/>"
                ));
                seen.pushes.fetch_add(1, Ordering::Relaxed);
                match check_push(&iq, devices, total) {
                    Some(seq) => {
                        let first = times.delivered[seq]
                            .compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok();
                        let counter = if first {
                            &seen.matched
                        } else {
                            &seen.duplicates
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        seen.mismatched.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if !answers.is_empty() {
                stream.wr.write_all(answers.as_bytes()).await?;
            }
        }
    })
}

/// `201` (taken, `TTL: 0`), `201 kept` (the distributor did not take it; kept for its
/// `TTL`), or another status.
fn kind_of(answer: &Answer) -> String {
    match answer.status {
        201 if answer.headers.get("ttl").is_some_and(|t| t == "0") => OK.to_owned(),
        201 => "201 kept".to_owned(),
        status => status.to_string(),
    }
}

/// The load: POST `seq` to device `seq % devices`'s endpoint, as an app server sends an
/// RFC 8291 message.
pub(crate) fn front(paths: Vec<String>) -> http_load::Front {
    http_load::Front {
        discovery: ("/up", b"unifiedpush"),
        request: Box::new(move |seq| Outgoing {
            path: paths[seq % paths.len()].clone(),
            headers: vec![
                ("content-type", "application/octet-stream".to_owned()),
                ("content-encoding", "aes128gcm".to_owned()),
                ("ttl", TTL_SECS.to_string()),
                ("urgency", "normal".to_owned()),
            ],
            body: Bytes::from(body(seq)),
        }),
        kind_of,
        ok: OK,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_200_to_1000_bytes_led_by_their_sequence_number() {
        let lens: Vec<usize> = (0..2000).map(|s| body(s).len()).collect();
        assert!(lens.iter().all(|&l| (MIN_BODY..=MAX_BODY).contains(&l)));
        assert!(lens.iter().any(|&l| l < 300) && lens.iter().any(|&l| l > 900));
        let b = body(1234);
        assert_eq!(&b[..8], &1234u64.to_le_bytes());
        assert_eq!(b, body(1234));
        assert_ne!(body(1)[8..], body(2)[8..]);
    }

    /// A push IQ as pushgate writes it (minidom, double quotes) is checked, and any difference
    /// in JID, instance or body refuses it.
    #[test]
    fn push_iqs_are_matched_byte_for_byte() {
        let push = |to: &str, inst: &str, body: &[u8]| {
            format!(
                "<iq xmlns=\"jabber:component:accept\" type=\"set\" id=\"x1\" from=\"{COMPONENT}\" \
                 to=\"{to}\"><push xmlns=\"{NS}\" application=\"{APPLICATION}\" \
                 instance=\"{inst}\">{}</push></iq>",
                STANDARD.encode(body)
            )
        };
        let good = push(&distributor(7), &instance(7), &body(1007));
        assert_eq!(check_push(&good, 1000, 2000), Some(1007));
        assert_eq!(check_push(&good, 1000, 1000), None, "seq beyond the run");
        let mut wrong = body(1007);
        wrong[100] ^= 1;
        assert_eq!(
            check_push(&push(&distributor(7), &instance(7), &wrong), 1000, 2000),
            None
        );
        assert_eq!(
            check_push(
                &push(&distributor(8), &instance(7), &body(1007)),
                1000,
                2000
            ),
            None
        );
        assert_eq!(
            check_push(
                &push(&distributor(7), &instance(8), &body(1007)),
                1000,
                2000
            ),
            None
        );
        let short = body(1007)[..150].to_vec();
        assert_eq!(
            check_push(&push(&distributor(7), &instance(7), &short), 1000, 2000),
            None
        );
    }

    #[test]
    fn registrations_and_their_answers() {
        let stanza = register_stanza(3);
        assert!(
            stanza.contains("from='d3@bench.example/conversations'"),
            "{stanza}"
        );
        assert!(stanza.contains("instance='inst-3'"));
        let answer = "<iq type=\"result\" id=\"r3\"><registered xmlns=\"http://gultsch.de/xmpp/drafts/unified-push\" endpoint=\"http://127.0.0.1:5/up/abc_-\" expiration=\"2027-01-01T00:00:00Z\"/></iq>";
        assert_eq!(endpoint_path(answer).as_deref(), Some("/up/abc_-"));
        assert_eq!(endpoint_path("<iq type='error' id='r3'/>"), None);
    }

    #[test]
    fn answers_are_told_apart_by_status_and_ttl() {
        let answer = |status, ttl: &str| {
            let mut headers = hyper::HeaderMap::new();
            headers.insert("ttl", ttl.parse().unwrap());
            Answer {
                status,
                headers,
                body: Bytes::new(),
            }
        };
        assert_eq!(kind_of(&answer(201, "0")), OK);
        assert_eq!(kind_of(&answer(201, "60")), "201 kept");
        assert_eq!(kind_of(&answer(503, "0")), "503");
    }
}
