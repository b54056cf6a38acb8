//! The load itself: publishes (or register-device commands) at a fixed rate or as fast as
//! replies come back, replies counted by kind, and pushgate's CPU and memory read from /proc
//! around the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::timeout;

use crate::report::{clock_ticks, cpu_ticks, status_kb};
use crate::webpush_sink::find;
use crate::xmpp::{attr, command_reply_kind, next_iq, reply_kind};
use crate::{Args, BoxError, COMPONENT, DOMAIN, Mode, Times};

/// Most unparsed reply bytes kept while waiting for the end of an `<iq>`.
const MAX_UNPARSED_BYTES: usize = 16 * 1024 * 1024;

pub(crate) struct Report {
    pub(crate) sent: u64,
    pub(crate) replies: BTreeMap<String, u64>,
    /// Nanoseconds since the epoch: first publish written, last reply read.
    pub(crate) first_sent: u64,
    pub(crate) last_reply: u64,
    pub(crate) cpu_secs: f64,
    /// The benchmark's own CPU (XMPP side and sink), for telling which side is the bottleneck.
    pub(crate) bench_cpu_secs: f64,
    pub(crate) rss_hwm_kb_before: u64,
    pub(crate) rss_hwm_kb_after: u64,
    pub(crate) rss_kb_after: u64,
    pub(crate) timed_out: bool,
    /// Matrix front: requests answered 200 whose push never reached the sink (queued for a
    /// retry instead of delivered).
    pub(crate) ok_not_delivered: Option<u64>,
    /// UnifiedPush front: what the distributors saw, for the report; and pushes that went to
    /// the wrong place, carried the wrong body or came twice.
    pub(crate) note: Option<String>,
    pub(crate) mismatched: u64,
}

/// pushgate's CPU and peak RSS and the bench's own CPU, read when a run's load starts.
pub(crate) struct Usage {
    clk_tck: f64,
    cpu: u64,
    own_cpu: u64,
    rss_hwm_kb: u64,
}

impl Usage {
    pub(crate) fn start(pid: u32) -> Result<Self, BoxError> {
        Ok(Usage {
            clk_tck: clock_ticks(),
            cpu: cpu_ticks(pid)?,
            own_cpu: cpu_ticks(std::process::id())?,
            rss_hwm_kb: status_kb(pid, "VmHWM")?,
        })
    }

    /// The run's report, with the readings since `start`.
    pub(crate) fn finish(
        self,
        pid: u32,
        times: &Times,
        replies: BTreeMap<String, u64>,
        first_sent: u64,
        last_reply: u64,
        timed_out: bool,
    ) -> Result<Report, BoxError> {
        let cpu = cpu_ticks(pid)?;
        let own_cpu = cpu_ticks(std::process::id())?;
        let sent = times
            .sent
            .iter()
            .filter(|t| t.load(Ordering::Relaxed) != 0)
            .count() as u64;
        Ok(Report {
            sent,
            replies,
            first_sent,
            last_reply,
            cpu_secs: cpu.saturating_sub(self.cpu) as f64 / self.clk_tck,
            bench_cpu_secs: own_cpu.saturating_sub(self.own_cpu) as f64 / self.clk_tck,
            rss_hwm_kb_before: self.rss_hwm_kb,
            rss_hwm_kb_after: status_kb(pid, "VmHWM")?,
            rss_kb_after: status_kb(pid, "VmRSS")?,
            timed_out,
            ok_not_delivered: None,
            note: None,
            mismatched: 0,
        })
    }
}

pub(crate) async fn drive(
    args: &Args,
    socket: TcpStream,
    pid: u32,
    stanza: &(dyn Fn(usize) -> String + Sync),
    times: Arc<Times>,
    total: usize,
) -> Result<Report, BoxError> {
    let (mut rd, mut wr) = socket.into_split();

    // Make sure the stream is being served before measuring anything.
    wr.write_all(
        format!("<iq type='get' id='warmup' from='{DOMAIN}' to='{COMPONENT}'><ping xmlns='urn:xmpp:ping'/></iq>")
            .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    timeout(Duration::from_secs(10), async {
        while find(&buf, b"id='warmup'").is_none() {
            let n = rd.read(&mut chunk).await?;
            if n == 0 || buf.len() > MAX_UNPARSED_BYTES {
                return Err::<(), BoxError>("pushgate closed the stream".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    })
    .await
    .map_err(|_| "no answer to the warm-up ping")??;
    buf.clear();

    let usage = Usage::start(pid)?;

    // Rate mode sends on the clock and never waits for replies.
    let windowed = args.mode != Mode::Rate;
    let kind_of = match args.mode {
        Mode::Register => command_reply_kind,
        Mode::Fast | Mode::Rate => reply_kind,
    };
    let window = Arc::new(Semaphore::new(args.window));
    let replied_total = Arc::new(AtomicU64::new(0));
    // Shared with the reader so that a timed-out run still reports what came back.
    let kinds = Arc::new(std::sync::Mutex::new(BTreeMap::<String, u64>::new()));
    let last_reply = Arc::new(AtomicU64::new(0));

    // Reader: one reply per publish, counted by kind.
    let reader = {
        let times = times.clone();
        let window = window.clone();
        let replied_total = replied_total.clone();
        let kinds = kinds.clone();
        let last = last_reply.clone();
        tokio::spawn(async move {
            loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let at = times.now();
                let mut consumed = 0;
                while let Some((iq, next)) = next_iq(&buf[consumed..]) {
                    let iq = String::from_utf8_lossy(iq);
                    consumed += next;
                    let Some(seq) = attr(&iq, "id")
                        .and_then(|id| id.strip_prefix('b').map(str::to_owned))
                        .and_then(|s| s.parse::<usize>().ok())
                    else {
                        continue;
                    };
                    *kinds
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(kind_of(&iq))
                        .or_default() += 1;
                    Times::mark(&times.replied, seq, at);
                    last.store(at, Ordering::Relaxed);
                    if windowed {
                        window.add_permits(1);
                    }
                    if replied_total.fetch_add(1, Ordering::Relaxed) + 1 == total as u64 {
                        return;
                    }
                }
                buf.drain(..consumed);
                // Bounded: no reply is anywhere near this; a stream that is is broken.
                if buf.len() > MAX_UNPARSED_BYTES {
                    break;
                }
            }
        })
    };

    let deadline = Duration::from_secs(args.timeout_secs);
    let send_started = Instant::now();
    let first_sent = times.now();
    let sending = async {
        match args.mode {
            Mode::Fast | Mode::Register => {
                for seq in 0..total {
                    window.acquire().await?.forget();
                    let stanza = stanza(seq);
                    Times::mark(&times.sent, seq, times.now());
                    wr.write_all(stanza.as_bytes()).await?;
                }
            }
            Mode::Rate => {
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let mut seq = 0usize;
                while seq < total {
                    tick.tick().await;
                    let due = ((send_started.elapsed().as_secs_f64() * args.rate as f64) as usize)
                        .min(total);
                    let mut batch = String::new();
                    let now = times.now();
                    while seq < due {
                        batch.push_str(&stanza(seq));
                        Times::mark(&times.sent, seq, now);
                        seq += 1;
                    }
                    if !batch.is_empty() {
                        wr.write_all(batch.as_bytes()).await?;
                    }
                }
            }
        }
        Ok::<(), BoxError>(())
    };
    let mut timed_out = timeout(deadline, sending).await.is_err();
    let remaining = deadline.saturating_sub(send_started.elapsed());
    match timeout(remaining, reader).await {
        Ok(r) => r?,
        Err(_) => timed_out = true,
    }
    let replies = kinds.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let last_reply = last_reply.load(Ordering::Relaxed);
    let report = usage.finish(pid, &times, replies, first_sent, last_reply, timed_out);
    // Bounded: a stalled pushgate leaves our send buffer full.
    let _ = timeout(Duration::from_secs(1), wr.write_all(b"</stream:stream>")).await;
    report
}
