//! The Matrix front's load (`--front matrix`): a homeserver's side of the push gateway API.
//! Synapse-shaped `POST /_matrix/push/v1/notify` requests, one device each, over a small pool
//! of keep-alive HTTP/1.1 connections to pushgate's HTTP listener, at a fixed rate or as fast as
//! answers come back; answers counted by status and `rejected`.
//!
//! Why a pool and no pipelining: Synapse sends each request on a pooled persistent connection
//! and waits for its answer, so the requests outstanding are at most the connections open.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::load::{Report, Usage};
use crate::{Args, BoxError, MARK, Mode, ProviderKind, ProviderSink, Times, toml_str};

const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";
/// The pushers' app id: one app, whose provider is the run's sink.
const APP_ID: &str = "im.pushgate.example.app";
/// What pushgate answers a notify it delivered (or queued) to every device.
const ACCEPTED: &[u8] = br#"{"rejected":[]}"#;
/// The reply kind of a delivered notify (`Report::replies`).
pub(crate) const OK: &str = "200";

/// The `[http]` and `[matrix.apps]` sections: the app's pushkeys are the sink's tokens, base64
/// for APNs as Matrix iOS apps send them.
pub(crate) fn config_toml(listen: SocketAddr, provider: ProviderKind, id: &str) -> String {
    let pushkey = match provider {
        ProviderKind::Apns => "base64",
        ProviderKind::Fcm | ProviderKind::Webpush => "as-is",
    };
    format!(
        "[http]\nlisten = \"{listen}\"\n\
         [matrix.apps.\"{APP_ID}\"]\nprovider = {}\npushkey = \"{pushkey}\"\n",
        toml_str(id)
    )
}

/// The pushkey of device `i`: what the homeserver holds for the sink's token `i`.
pub(crate) fn pushkey(provider: ProviderKind, token: &str) -> Result<String, BoxError> {
    match provider {
        ProviderKind::Apns => {
            let bytes = (0..token.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("x"), 16))
                .collect::<Result<Vec<u8>, _>>()?;
            Ok(STANDARD.encode(bytes))
        }
        ProviderKind::Fcm | ProviderKind::Webpush => Ok(token.to_owned()),
    }
}

/// The notify body Synapse's HTTP pusher sends for a message in a room, to one device. The
/// message body carries `bench-<seq>` for the sink; nothing before it in a provider's payload
/// may (ids and names here never contain the marker).
pub(crate) fn notify_body(seq: usize, run: u64, pushkey: &str) -> String {
    format!(
        r#"{{"notification":{{"event_id":"${run:016x}{seq:027}","room_id":"!OGEhHVWSdvArJzumhm:example.org","type":"m.room.message","sender":"@alice:example.org","sender_display_name":"Alice","room_name":"Lunch","user_is_target":false,"prio":"high","content":{{"msgtype":"m.text","body":"{MARK}{seq} are we still on for noon?"}},"counts":{{"unread":{},"missed_calls":0}},"devices":[{{"app_id":"{APP_ID}","pushkey":"{pushkey}","pushkey_ts":1764979200,"data":{{"default_payload":{{"client":"example"}}}},"tweaks":{{"sound":"default"}}}}]}}}}"#,
        1 + seq % 9
    )
}

/// Per-request outcome, for checking that every 200 reached the sink.
const ANSWERED_OK: u8 = 1;

/// One keep-alive HTTP/1.1 connection to pushgate.
async fn connect(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Sends one request and reads the whole answer: (status, body).
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    host: &str,
    method: Method,
    body: Bytes,
) -> Result<(u16, Bytes), BoxError> {
    sender.ready().await?;
    let request = Request::builder()
        .method(method)
        .uri(NOTIFY_PATH)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "Synapse/1.143.0")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The reply kind: `200`, `200 rejected` (pushkeys the homeserver would delete), another
/// status, or `error` (the connection failed).
fn kind_of(status: u16, body: &[u8]) -> String {
    if status != 200 {
        return status.to_string();
    }
    let rejected = if body == ACCEPTED {
        0
    } else {
        serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("rejected")?.as_array().map(Vec::len))
            .unwrap_or(usize::MAX)
    };
    match rejected {
        0 => OK.to_owned(),
        usize::MAX => "200 unparsable".to_owned(),
        _ => "200 rejected".to_owned(),
    }
}

/// Opens `--connections` connections once pushgate listens, each warmed by a discovery GET.
async fn open_pool(
    addr: SocketAddr,
    host: &str,
    n: usize,
) -> Result<Vec<SendRequest<Full<Bytes>>>, BoxError> {
    let started = Instant::now();
    let mut pool = Vec::with_capacity(n);
    while pool.is_empty() {
        match connect(addr).await {
            Ok(s) => pool.push(s),
            Err(e) if started.elapsed() >= Duration::from_secs(30) => {
                return Err(format!("pushgate's HTTP listener {addr}: {e}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    while pool.len() < n {
        pool.push(connect(addr).await?);
    }
    for sender in &mut pool {
        let (status, body) = send(sender, host, Method::GET, Bytes::new()).await?;
        if status != 200 || !body.windows(7).any(|w| w == b"gateway") {
            return Err(format!("discovery GET answered {status}").into());
        }
    }
    Ok(pool)
}

/// Runs the load and reads pushgate's CPU and memory around it, as `load::drive` does for
/// the XMPP front.
pub(crate) async fn drive(
    args: &Args,
    addr: SocketAddr,
    pid: u32,
    pushkeys: &[String],
    times: Arc<Times>,
    total: usize,
) -> Result<Report, BoxError> {
    let host = addr.to_string();
    let pool = open_pool(addr, &host, args.connections).await?;
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;

    let usage = Usage::start(pid)?;

    let next = Arc::new(AtomicUsize::new(0));
    let kinds = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let outcome: Arc<Vec<AtomicU8>> = Arc::new((0..total).map(|_| AtomicU8::new(0)).collect());
    let last_reply = Arc::new(AtomicU64::new(0));
    let pushkeys: Arc<[String]> = pushkeys.into();
    let first_sent = times.now();
    // Rate mode: request `seq` is due at `first_sent + seq / rate`.
    let interval_ns = match args.mode {
        Mode::Rate => 1e9 / args.rate as f64,
        Mode::Fast | Mode::Register => 0.0,
    };

    let mut tasks = tokio::task::JoinSet::new();
    for mut sender in pool {
        let (times, next, kinds, outcome, last, pushkeys, host) = (
            times.clone(),
            next.clone(),
            kinds.clone(),
            outcome.clone(),
            last_reply.clone(),
            pushkeys.clone(),
            host.clone(),
        );
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= total {
                    return;
                }
                let body = Bytes::from(notify_body(seq, run, &pushkeys[seq % pushkeys.len()]));
                let due = first_sent + (seq as f64 * interval_ns) as u64;
                // A request already due waited for a free connection: that wait is latency
                // too. One not yet due is stamped when the timer actually woke us, so the
                // timer's millisecond granularity is not counted against pushgate.
                let sent = if due > times.now() {
                    tokio::time::sleep_until((times.epoch + Duration::from_nanos(due)).into())
                        .await;
                    times.now()
                } else if interval_ns > 0.0 {
                    due
                } else {
                    times.now()
                };
                Times::mark(&times.sent, seq, sent);
                let kind = match send(&mut sender, &host, Method::POST, body).await {
                    Ok((status, body)) => {
                        let at = times.now();
                        Times::mark(&times.replied, seq, at);
                        last.fetch_max(at, Ordering::Relaxed);
                        kind_of(status, &body)
                    }
                    Err(_) => {
                        // Counted; the pool carries on over a fresh connection.
                        match connect(addr).await {
                            Ok(s) => sender = s,
                            Err(_) => return,
                        }
                        "error".to_owned()
                    }
                };
                if kind == OK {
                    outcome[seq].store(ANSWERED_OK, Ordering::Relaxed);
                }
                *kinds
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(kind)
                    .or_default() += 1;
            }
        });
    }
    let deadline = Duration::from_secs(args.timeout_secs);
    let timed_out = timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err();
    tasks.abort_all();

    // A 200 means delivered (the provider answered before pushgate did) or queued for a retry:
    // the latter never reached the sink.
    let ok_not_delivered = (0..total)
        .filter(|&seq| {
            outcome[seq].load(Ordering::Relaxed) == ANSWERED_OK
                && times.delivered[seq].load(Ordering::Relaxed) == 0
        })
        .count() as u64;
    let replies = kinds.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let last_reply = last_reply.load(Ordering::Relaxed);
    let mut report = usage.finish(pid, &times, replies, first_sent, last_reply, timed_out)?;
    report.ok_not_delivered = Some(ok_not_delivered);
    Ok(report)
}

/// The pushkeys of `devices` devices of the sink.
pub(crate) fn pushkeys(
    provider: ProviderKind,
    sink: &dyn ProviderSink,
    devices: usize,
) -> Result<Vec<String>, BoxError> {
    (0..devices)
        .map(|i| pushkey(provider, &sink.token(i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webpush_sink::sequence_in;

    #[test]
    fn apns_pushkeys_are_the_tokens_bytes_in_base64() {
        let token = format!("{:064x}", 0xfeed_u32);
        let key = pushkey(ProviderKind::Apns, &token).unwrap();
        let bytes = STANDARD.decode(&key).unwrap();
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[30..], &[0xfe, 0xed]);
        assert_eq!(pushkey(ProviderKind::Fcm, "abc:def").unwrap(), "abc:def");
        assert!(pushkey(ProviderKind::Apns, "zz").is_err());
    }

    /// A body pushgate's parser takes, whose only marker is the message's.
    #[test]
    fn notify_bodies_are_json_with_one_marker_and_unique_events() {
        let a = notify_body(42, 7, "a2V5");
        let b = notify_body(43, 7, "a2V5");
        let v: serde_json::Value = serde_json::from_str(&a).unwrap();
        let n = &v["notification"];
        assert_eq!(n["devices"][0]["app_id"], APP_ID);
        assert_eq!(n["devices"].as_array().unwrap().len(), 1);
        assert_eq!(n["type"], "m.room.message");
        let w: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_ne!(n["event_id"], w["notification"]["event_id"]);
        assert_eq!(a.matches(MARK).count(), 1);
        assert_eq!(sequence_in(a.as_bytes()), Some(42));
    }

    #[test]
    fn answers_are_counted_by_status_and_rejections() {
        assert_eq!(kind_of(200, ACCEPTED), OK);
        assert_eq!(kind_of(200, br#"{ "rejected": [] }"#), OK);
        assert_eq!(kind_of(200, br#"{"rejected":["k"]}"#), "200 rejected");
        assert_eq!(kind_of(200, b"nope"), "200 unparsable");
        assert_eq!(kind_of(502, b"{}"), "502");
    }

    #[test]
    fn the_config_names_the_sinks_provider_and_pushkey_form() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let apns = config_toml(addr, ProviderKind::Apns, "apns");
        assert!(apns.contains("listen = \"127.0.0.1:9\""));
        assert!(apns.contains(&format!("[matrix.apps.\"{APP_ID}\"]\nprovider = \"apns\"")));
        assert!(apns.contains("pushkey = \"base64\""));
        assert!(config_toml(addr, ProviderKind::Fcm, "fcm").contains("pushkey = \"as-is\""));
    }
}
