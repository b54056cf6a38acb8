//! `pushgate-bench`: a benchmark of the whole component (see docs/performance.md).
//!
//! Plays the XMPP server's side of XEP-0114 on 127.0.0.1, starts the real `pushgate` binary as a
//! child process against it, and sends Prosody-shaped XEP-0357 publishes to registrations that
//! were seeded directly in the store, each pointing at a local plain-HTTP WebPush sink. It
//! measures publish → reply and publish → provider-request latency, replies by kind, and the
//! child's CPU time and peak RSS. Loopback only; bounded in count and time; kills pushgate at the
//! end. Not part of the test suite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures::StreamExt;
use pushgate::ids::{BareJid, DeviceToken, Dialect, ProviderId};
use pushgate::storage::{NewRegistration, Store};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::timeout;

const COMPONENT: &str = "push.bench";
const DOMAIN: &str = "bench.example";
const SECRET: &str = "bench-secret";
const STREAM_ID: &str = "bench-stream-1";
/// Marker in the notification body that carries the publish sequence number to the sink.
const MARK: &str = "bench-";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// As fast as replies come back, with at most `--window` publishes outstanding.
    Fast,
    /// At a fixed `--rate` for `--duration-secs`.
    Rate,
}

#[derive(Parser, Debug)]
#[command(
    name = "pushgate-bench",
    about = "Benchmark of the whole pushgate component over loopback"
)]
struct Args {
    /// Use target/debug/pushgate instead of target/release/pushgate.
    #[arg(long)]
    debug: bool,
    /// The pushgate binary to start (overrides --debug).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Registered devices (seeded through Store::register before pushgate starts).
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// PostgreSQL URL of an empty, throw-away database; default: SQLite in a temp dir.
    #[arg(long)]
    postgres: Option<String>,
    #[arg(long, value_enum, default_value = "fast")]
    mode: Mode,
    /// Fast mode: number of publishes.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Fast mode: most publishes outstanding at once.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Rate mode: publishes per second.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Rate mode: seconds of sending.
    #[arg(long, default_value_t = 5)]
    duration_secs: u64,
    /// Give up on outstanding replies this many seconds after sending started.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// A label for the summary line.
    #[arg(long, default_value = "")]
    label: String,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pushgate-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per-sequence timestamps in nanoseconds since the benchmark's epoch; 0 = not yet.
struct Times {
    epoch: Instant,
    sent: Vec<AtomicU64>,
    replied: Vec<AtomicU64>,
    delivered: Vec<AtomicU64>,
}

impl Times {
    fn new(n: usize) -> Self {
        let v = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Times {
            epoch: Instant::now(),
            sent: v(),
            replied: v(),
            delivered: v(),
        }
    }
    fn now(&self) -> u64 {
        // Never 0, which means "not yet".
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }
    fn mark(slots: &[AtomicU64], seq: usize, at: u64) {
        if let Some(s) = slots.get(seq) {
            let _ = s.compare_exchange(0, at, Ordering::Relaxed, Ordering::Relaxed);
        }
    }
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PUSHGATE_BENCH_KEEP").is_some() {
            eprintln!("kept {} (config, pushgate.log, SQLite)", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let binary = match &args.binary {
        Some(b) => b.clone(),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"));
            target
                .join(if args.debug { "debug" } else { "release" })
                .join("pushgate")
        }
    };
    if !binary.is_file() {
        return Err(format!("{} not found: build it first", binary.display()).into());
    }
    let total = match args.mode {
        Mode::Fast => args.count,
        Mode::Rate => args.rate * args.duration_secs,
    } as usize;
    if total == 0 || args.devices == 0 || args.window == 0 {
        return Err("count/rate/duration, devices and window must be positive".into());
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = TempDir(
        std::env::temp_dir().join(format!("pushgate-bench-{}-{stamp}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0)?;

    let times = Arc::new(Times::new(total));
    let sink = start_sink(times.clone()).await?;

    // Seed the registrations before pushgate starts.
    let db_url = match &args.postgres {
        Some(u) => u.clone(),
        None => Store::sqlite_url_in(&dir.0)?,
    };
    let seed_started = Instant::now();
    let nodes = seed(&db_url, args.devices, sink.port).await?;
    let seed_secs = seed_started.elapsed().as_secs_f64();
    eprintln!(
        "seeded {} registrations in {seed_secs:.1} s ({:.0}/s, direct Store::register, concurrency 8)",
        nodes.len(),
        nodes.len() as f64 / seed_secs
    );

    // Our side of XEP-0114, then pushgate.
    let xmpp = TcpListener::bind("127.0.0.1:0").await?;
    let config = dir.0.join("pushgate.toml");
    let storage = match &args.postgres {
        Some(u) => format!("url = {}", toml_str(u)),
        None => format!("data_dir = {}", toml_str(path_str(&dir.0)?)),
    };
    std::fs::write(
        &config,
        format!(
            "[component]\njid = \"{COMPONENT}\"\nsecret = \"{SECRET}\"\nserver = \"{}\"\n\
             idle_ping_secs = 3600\npublish_timeout_secs = 10\n\
             [storage]\n{storage}\n\
             [providers.webpush]\nkind = \"webpush\"\nallow_http = true\nallow_private_addresses = true\n",
            xmpp.local_addr()?
        ),
    )?;
    let log_path = dir.0.join("pushgate.log");
    let mut child = tokio::process::Command::new(&binary)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env(
            "RUST_LOG",
            std::env::var("PUSHGATE_BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("pushgate exited at once")?;

    let outcome = async {
        let socket = timeout(Duration::from_secs(30), handshake(&xmpp))
            .await
            .map_err(|_| "pushgate did not connect and authenticate within 30 s")??;
        drive(&args, socket, pid, &nodes, times.clone(), total).await
    }
    .await;

    let _ = child.start_kill();
    let _ = timeout(Duration::from_secs(10), child.wait()).await;
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("pushgate's log (last lines, newest first):");
            for l in tail {
                eprintln!("  {l}");
            }
            return Err(e);
        }
    };
    let warnings = std::fs::read_to_string(&log_path)
        .map(|l| l.lines().count())
        .unwrap_or(0);
    print_report(&args, &report, &times, total, sink.requests(), warnings);
    Ok(())
}

fn path_str(p: &Path) -> Result<&str, BoxError> {
    p.to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", p.display()).into())
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}

async fn seed(db_url: &str, devices: usize, sink_port: u16) -> Result<Vec<String>, BoxError> {
    let store = Store::open(db_url).await?;
    let account: BareJid = format!("bench@{DOMAIN}").parse()?;
    let results: Vec<_> = futures::stream::iter(0..devices)
        .map(|i| {
            let store = store.clone();
            let account = account.clone();
            async move {
                store
                    .register(NewRegistration {
                        dialect: Dialect::Tigase,
                        provider: ProviderId::new("webpush"),
                        account,
                        device_id: None,
                        muc: None,
                        token: DeviceToken::new(format!("http://127.0.0.1:{sink_port}/push/{i}")),
                        second_token: None,
                        webpush_keys: None,
                    })
                    .await
                    .map(|r| r.node.as_str().to_owned())
            }
        })
        .buffered(8)
        .collect()
        .await;
    let nodes = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    drop(store);
    Ok(nodes)
}

/// The local WebPush endpoint: HTTP/1.1 keep-alive, answers 201, records when the body carrying
/// `bench-<seq>` arrived.
struct Sink {
    port: u16,
    requests: Arc<AtomicU64>,
}

impl Sink {
    fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

async fn start_sink(times: Arc<Times>) -> Result<Sink, BoxError> {
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

async fn sink_connection(mut socket: TcpStream, times: Arc<Times>, seen: Arc<AtomicU64>) {
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The number after `bench-` in a plaintext JSON body.
fn sequence_in(body: &[u8]) -> Option<usize> {
    let at = find(body, MARK.as_bytes())? + MARK.len();
    let digits: String = body[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .map(|&b| b as char)
        .collect();
    digits.parse().ok()
}

/// Accepts pushgate's connection and does the server side of the XEP-0114 handshake.
async fn handshake(listener: &TcpListener) -> Result<TcpStream, BoxError> {
    let (mut socket, _) = listener.accept().await?;
    socket.set_nodelay(true)?;
    let mut buf = String::new();
    let mut chunk = [0u8; 4096];
    let mut read_more = async |socket: &mut TcpStream, buf: &mut String| -> Result<(), BoxError> {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Err("pushgate closed the connection during the handshake".into());
        }
        buf.push_str(std::str::from_utf8(&chunk[..n])?);
        Ok(())
    };
    while !buf
        .find("<stream:stream")
        .is_some_and(|at| buf[at..].contains('>'))
    {
        read_more(&mut socket, &mut buf).await?;
    }
    if !buf.contains(COMPONENT) {
        return Err(format!("unexpected stream header: {buf}").into());
    }
    buf.clear();
    socket
        .write_all(
            format!(
                "<?xml version='1.0'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams' \
                 xmlns='jabber:component:accept' id='{STREAM_ID}' from='{COMPONENT}'>"
            )
            .as_bytes(),
        )
        .await?;
    while !buf.contains("</handshake>") {
        read_more(&mut socket, &mut buf).await?;
    }
    let digest: String = Sha1::digest(format!("{STREAM_ID}{SECRET}").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !buf.contains(&format!("<handshake>{digest}</handshake>")) {
        return Err(format!("wrong handshake digest: {buf}").into());
    }
    socket.write_all(b"<handshake/>").await?;
    Ok(socket)
}

fn publish_stanza(seq: usize, node: &str) -> String {
    // The shape Prosody's mod_cloud_notify sends with push summaries including bodies.
    format!(
        "<iq type='set' id='b{seq}' from='{DOMAIN}' to='{COMPONENT}'>\
         <pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item>\
         <notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>\
         <field var='message-count'><value>1</value></field>\
         <field var='last-message-sender'><value>juliet@capulet.example/balcony</value></field>\
         <field var='last-message-body'><value>{MARK}{seq} wherefore art thou</value></field>\
         </x></notification></item></publish></pubsub></iq>"
    )
}

struct Report {
    sent: u64,
    replies: BTreeMap<String, u64>,
    /// Nanoseconds since the epoch: first publish written, last reply read.
    first_sent: u64,
    last_reply: u64,
    cpu_secs: f64,
    rss_hwm_kb_before: u64,
    rss_hwm_kb_after: u64,
    rss_kb_after: u64,
    timed_out: bool,
}

async fn drive(
    args: &Args,
    socket: TcpStream,
    pid: u32,
    nodes: &[String],
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
    while find(&buf, b"id='warmup'").is_none() {
        let n = timeout(Duration::from_secs(10), rd.read(&mut chunk))
            .await
            .map_err(|_| "no answer to the warm-up ping")??;
        if n == 0 {
            return Err("pushgate closed the stream".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.clear();

    let clk_tck = clock_ticks();
    let cpu_before = cpu_ticks(pid)?;
    let rss_hwm_kb_before = status_kb(pid, "VmHWM")?;

    // Rate mode sends on the clock and never waits for replies.
    let windowed = args.mode == Mode::Fast;
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
                        .expect("kinds lock")
                        .entry(reply_kind(&iq))
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
            }
        })
    };

    let deadline = Duration::from_secs(args.timeout_secs);
    let send_started = Instant::now();
    let first_sent = times.now();
    let sending = async {
        match args.mode {
            Mode::Fast => {
                for seq in 0..total {
                    window.acquire().await?.forget();
                    let stanza = publish_stanza(seq, &nodes[seq % nodes.len()]);
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
                        batch.push_str(&publish_stanza(seq, &nodes[seq % nodes.len()]));
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
    let replies = kinds.lock().expect("kinds lock").clone();
    let last_reply = last_reply.load(Ordering::Relaxed);
    let cpu_after = cpu_ticks(pid)?;
    let rss_hwm_kb_after = status_kb(pid, "VmHWM")?;
    let rss_kb_after = status_kb(pid, "VmRSS")?;
    // Bounded: a stalled pushgate leaves our send buffer full.
    let _ = timeout(Duration::from_secs(1), wr.write_all(b"</stream:stream>")).await;
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
        cpu_secs: (cpu_after.saturating_sub(cpu_before)) as f64 / clk_tck,
        rss_hwm_kb_before,
        rss_hwm_kb_after,
        rss_kb_after,
        timed_out,
    })
}

/// The first complete `<iq …>` in `buf` and the offset just past it.
fn next_iq(buf: &[u8]) -> Option<(&[u8], usize)> {
    let start = find(buf, b"<iq")?;
    let open_end = start + buf[start..].iter().position(|&b| b == b'>')?;
    let end = if buf[open_end - 1] == b'/' {
        open_end + 1
    } else {
        open_end + find(&buf[open_end..], b"</iq>")? + 5
    };
    Some((&buf[start..end], end))
}

/// The value of `name='…'` (or `name="…"`) in the opening tag of `xml`.
fn attr<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = &xml[..xml.find('>')?];
    for quote in ['\'', '"'] {
        let key = format!(" {name}={quote}");
        if let Some(at) = open.find(&key) {
            let rest = &open[at + key.len()..];
            return rest.find(quote).map(|e| &rest[..e]);
        }
    }
    None
}

/// `result`, or `error:<condition>`.
fn reply_kind(iq: &str) -> String {
    match attr(iq, "type") {
        Some("result") => "result".into(),
        Some("error") => {
            let condition = iq.find("<error").and_then(|at| {
                let inner = &iq[at..];
                let inner = &inner[inner.find('>')? + 1..];
                let mut rest = inner;
                // The first child that is not <text>.
                while let Some(lt) = rest.find('<') {
                    let name: String = rest[lt + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                        .collect();
                    if !name.is_empty() && name != "text" {
                        return Some(name);
                    }
                    rest = &rest[lt + 1..];
                }
                None
            });
            format!("error:{}", condition.unwrap_or_else(|| "?".into()))
        }
        other => format!("type:{}", other.unwrap_or("?")),
    }
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in clock ticks, from /proc/<pid>/stat.
fn cpu_ticks(pid: u32) -> Result<u64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').ok_or("odd /proc stat")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).ok_or("short /proc stat")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("short /proc stat")?.parse()?;
    Ok(utime + stime)
}

/// A `kB` line of /proc/<pid>/status.
fn status_kb(pid: u32, key: &str) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// (p50, p99, max) in milliseconds, or None for no samples.
fn percentiles(mut v: Vec<u64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1e6
    };
    Some((at(0.50), at(0.99), *v.last().unwrap() as f64 / 1e6))
}

fn print_report(
    args: &Args,
    r: &Report,
    times: &Times,
    total: usize,
    sink_requests: u64,
    log_lines: usize,
) {
    let load = |s: &AtomicU64| s.load(Ordering::Relaxed);
    let mut reply_lat = Vec::with_capacity(total);
    let mut deliver_lat = Vec::with_capacity(total);
    for seq in 0..total {
        let sent = load(&times.sent[seq]);
        if sent == 0 {
            continue;
        }
        let replied = load(&times.replied[seq]);
        if replied != 0 {
            reply_lat.push(replied.saturating_sub(sent));
        }
        let delivered = load(&times.delivered[seq]);
        if delivered != 0 {
            deliver_lat.push(delivered.saturating_sub(sent));
        }
    }
    let replied: u64 = r.replies.values().sum();
    let results = r.replies.get("result").copied().unwrap_or(0);
    let elapsed = r.last_reply.saturating_sub(r.first_sent) as f64 / 1e9;
    let per_sec = if elapsed > 0.0 {
        replied as f64 / elapsed
    } else {
        0.0
    };
    let cpu_per_k = if replied > 0 {
        r.cpu_secs / replied as f64 * 1000.0
    } else {
        0.0
    };
    let fmt = |p: Option<(f64, f64, f64)>| match p {
        Some((a, b, c)) => (format!("{a:.2}"), format!("{b:.2}"), format!("{c:.2}")),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let (r50, r99, rmax) = fmt(percentiles(reply_lat));
    let delivered_n = deliver_lat.len();
    let (d50, d99, dmax) = fmt(percentiles(deliver_lat));
    let db = if args.postgres.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let profile = if args.binary.is_some() {
        "custom"
    } else if args.debug {
        "debug"
    } else {
        "release"
    };
    let mode = match args.mode {
        Mode::Fast => format!("fast(window {})", args.window),
        Mode::Rate => format!("rate({}/s x {} s)", args.rate, args.duration_secs),
    };
    println!(
        "pushgate-bench: {profile} build, {db}, {} devices, {mode}",
        args.devices
    );
    println!(
        "  publishes sent {}, replies {replied} {:?}{}",
        r.sent,
        r.replies,
        if r.timed_out { " (TIMED OUT)" } else { "" }
    );
    println!(
        "  sink: {sink_requests} requests, {delivered_n} matched to a publish; pushgate log lines (warn+): {log_lines}"
    );
    println!(
        "  throughput: {per_sec:.0} publishes/s over {elapsed:.2} s (first publish to last reply)"
    );
    println!("  publish -> reply     ms: p50 {r50}  p99 {r99}  max {rmax}");
    println!("  publish -> provider  ms: p50 {d50}  p99 {d99}  max {dmax}");
    println!(
        "  pushgate CPU: {:.2} s ({cpu_per_k:.3} s per 1,000 publishes); VmHWM {} -> {} MB; VmRSS after {} MB",
        r.cpu_secs,
        r.rss_hwm_kb_before / 1024,
        r.rss_hwm_kb_after / 1024,
        r.rss_kb_after / 1024
    );
    // One tab-separated line for scripts/bench.
    println!(
        "SUMMARY\t{}\t{profile}\t{db}\t{}\t{mode}\t{}\t{results}\t{}\t{per_sec:.0}\t{cpu_per_k:.3}\t{r50}\t{r99}\t{rmax}\t{d50}\t{d99}\t{dmax}\t{}\t{}",
        if args.label.is_empty() {
            "-"
        } else {
            &args.label
        },
        args.devices,
        r.sent,
        replied - results,
        r.rss_hwm_kb_after / 1024,
        if r.timed_out { "TIMEOUT" } else { "ok" },
    );
}
