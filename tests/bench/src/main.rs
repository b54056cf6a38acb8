//! `pushgate-bench`: a benchmark of the whole component (see docs/performance.md).
//!
//! Plays the XMPP server's side of XEP-0114 on 127.0.0.1, starts the real `pushgate` binary as a
//! child process against it, and either sends Prosody-shaped XEP-0357 publishes to registrations
//! seeded directly in the store, each pointing at a local provider sink (WebPush over plain
//! HTTP/1.1, or APNs / FCM over HTTP/2 + TLS), or sends XEP-0050 `register-device` commands. It
//! measures request → reply and publish → provider-request latency, replies by kind, and the
//! child's CPU time and peak RSS. With `--front matrix` the load is a homeserver's instead:
//! Matrix push gateway notify requests over keep-alive HTTP/1.1 (matrix.rs), no registrations.
//! With `--front unifiedpush` it is app servers' POSTs to UnifiedPush endpoints that the bench's
//! distributors registered over the component stream, and which they answer there
//! (unifiedpush.rs). With `--front sip` it is a SIP server's incoming-call pushes through the
//! Sylk-Pushserver-style API, v1 (`POST /push`) or v2 (devices stored first, then
//! `POST /v2/tokens/{account}/push`), each to arrive at the APNs sink as a VoIP push (sip.rs).
//! Loopback only; bounded in count and time; kills pushgate at the end. Not part of the test
//! suite.

mod apns_sink;
mod fcm_sink;
mod http_load;
mod load;
mod matrix;
mod report;
mod seed;
mod sip;
mod tls_sink;
mod unifiedpush;
mod webpush_sink;
mod xmpp;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use pushgate::storage::Store;
use tokio::net::TcpListener;
use tokio::time::timeout;

use apns_sink::ApnsSink;
use fcm_sink::FcmSink;
use load::drive;
use report::print_report;
use webpush_sink::start_sink;
use xmpp::{handshake, publish_stanza, register_stanza};

pub(crate) const COMPONENT: &str = "push.bench";
pub(crate) const DOMAIN: &str = "bench.example";
pub(crate) const SECRET: &str = "bench-secret";
pub(crate) const STREAM_ID: &str = "bench-stream-1";
/// Marker in the notification body that carries the publish sequence number to the sink.
pub(crate) const MARK: &str = "bench-";
/// Bounds on one run: requests (each costs three timestamps), devices, and the window.
const MAX_TOTAL: usize = 10_000_000;
const MAX_WINDOW: usize = 100_000;
/// Below pushgate's default `[http] max_connections` (512).
const MAX_CONNECTIONS: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// As fast as replies come back, with at most `--window` publishes outstanding.
    Fast,
    /// At a fixed `--rate` for `--duration-secs`.
    Rate,
    /// `register-device` commands (Tigase dialect, single stage) from distinct users, as fast
    /// as replies come back with at most `--window` outstanding; no provider deliveries.
    Register,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Front {
    /// XEP-0357 publishes (or register-device commands) over the XEP-0114 component stream.
    Xmpp,
    /// Matrix push gateway notify requests, one device each, over keep-alive HTTP/1.1
    /// (`--mode fast` or `rate`; `--devices` pushkeys in rotation, not seeded).
    Matrix,
    /// UnifiedPush: `--devices` app instances registered over the component stream, then
    /// app-server POSTs to their endpoints over keep-alive HTTP/1.1 (`--mode fast` or `rate`),
    /// each push IQ answered on the stream; `--provider` is unused.
    Unifiedpush,
    /// The SIP API: incoming-call pushes (`--sip-route v1` or `v2`) over keep-alive HTTP/1.1
    /// (`--mode fast` or `rate`), each checked at the APNs sink as a VoIP push to the callee's
    /// VoIP token; `--provider` is unused (always APNs).
    Sip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum SipRoute {
    /// `POST /push`, the `<voip>-<background>` token pair in every request (`--devices` pairs
    /// in rotation).
    V1,
    /// One device per account stored through `POST /v2/tokens/{account}` (`--devices`
    /// accounts) before the load, then `POST /v2/tokens/{account}/push`.
    V2,
}

impl SipRoute {
    pub(crate) fn label(self) -> &'static str {
        match self {
            SipRoute::V1 => "v1",
            SipRoute::V2 => "v2",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProviderKind {
    /// Plain HTTP/1.1 WebPush endpoint.
    Webpush,
    /// APNs over HTTP/2 + TLS, token auth.
    Apns,
    /// FCM HTTP v1 over HTTP/2 + TLS, service-account OAuth.
    Fcm,
}

/// A local provider endpoint: the pushgate configuration that points at it, the device tokens
/// it accepts, and what it saw.
pub(crate) trait ProviderSink: Send + Sync {
    /// The provider id in pushgate's configuration and in the registrations.
    fn provider_id(&self) -> &'static str;
    /// The `[providers.<id>]` section.
    fn provider_toml(&self) -> String;
    /// The device token of device `i`.
    fn token(&self, i: usize) -> String;
    /// Deliveries accepted.
    fn requests(&self) -> u64;
    /// Requests refused (bad credentials, path, token).
    fn refused(&self) -> u64 {
        0
    }
    /// Deliveries accepted but not what the load asked for (`--front sip`: not the call's
    /// VoIP push to the callee's VoIP token).
    fn mismatched(&self) -> u64 {
        0
    }
    /// Anything else worth a line in the report.
    fn note(&self) -> String {
        String::new()
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "pushgate-bench",
    about = "Benchmark of the whole pushgate component over loopback"
)]
pub(crate) struct Args {
    /// Use target/debug/pushgate instead of target/release/pushgate.
    #[arg(long)]
    pub(crate) debug: bool,
    /// The pushgate binary to start (overrides --debug).
    #[arg(long)]
    pub(crate) binary: Option<PathBuf>,
    /// Which of pushgate's fronts the load goes to.
    #[arg(long, value_enum, default_value = "xmpp")]
    pub(crate) front: Front,
    /// Registered devices (seeded through Store::insert_batch before pushgate starts); with
    /// `--front matrix`, the pushkeys the requests rotate over; with `--front unifiedpush`, the
    /// app instances registered over the stream (one distributor account each); with `--front
    /// sip`, the devices the calls rotate over (v2: one account each, stored before the load).
    #[arg(long, default_value_t = 1000)]
    pub(crate) devices: usize,
    /// Which provider the devices use, and so which local sink receives the pushes.
    #[arg(long, value_enum, default_value = "webpush")]
    pub(crate) provider: ProviderKind,
    /// PostgreSQL URL of an empty, throw-away database; default: SQLite in a temp dir.
    #[arg(long)]
    pub(crate) postgres: Option<String>,
    #[arg(long, value_enum, default_value = "fast")]
    pub(crate) mode: Mode,
    /// Fast and register modes: number of publishes / commands.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) count: u64,
    /// Fast and register modes: most requests outstanding at once (`--front unifiedpush`:
    /// registrations outstanding at once).
    #[arg(long, default_value_t = 256)]
    pub(crate) window: usize,
    /// `--front matrix`, `unifiedpush` and `sip`: keep-alive HTTP/1.1 connections, one request
    /// outstanding on each (so also the bound on outstanding requests in fast mode).
    #[arg(long, default_value_t = 8)]
    pub(crate) connections: usize,
    /// Rate mode: publishes per second.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) rate: u64,
    /// Rate mode: seconds of sending.
    #[arg(long, default_value_t = 5)]
    pub(crate) duration_secs: u64,
    /// SQLite only: a copy of the seeded database kept at this path. If the file exists, it is
    /// copied in instead of seeding (it must come from a run with the same `--provider` and
    /// `--devices`); if not, the run seeds as usual and leaves its database there. Saves the
    /// minutes that seeding 1M devices takes when comparing builds.
    #[arg(long)]
    pub(crate) seeded_db: Option<PathBuf>,
    /// Give up on outstanding replies this many seconds after sending started.
    #[arg(long, default_value_t = 120)]
    pub(crate) timeout_secs: u64,
    /// `--front sip`: which of the API's routes the calls go to.
    #[arg(long, value_enum, default_value = "v1")]
    pub(crate) sip_route: SipRoute,
    /// A label for the summary line.
    #[arg(long, default_value = "")]
    pub(crate) label: String,
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

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Per-sequence timestamps in nanoseconds since the benchmark's epoch; 0 = not yet.
pub(crate) struct Times {
    pub(crate) epoch: Instant,
    pub(crate) sent: Vec<AtomicU64>,
    pub(crate) replied: Vec<AtomicU64>,
    pub(crate) delivered: Vec<AtomicU64>,
}

impl Times {
    pub(crate) fn new(n: usize) -> Self {
        let v = || (0..n).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Times {
            epoch: Instant::now(),
            sent: v(),
            replied: v(),
            delivered: v(),
        }
    }
    pub(crate) fn now(&self) -> u64 {
        // Never 0, which means "not yet".
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }
    pub(crate) fn mark(slots: &[AtomicU64], seq: usize, at: u64) {
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
        Mode::Fast | Mode::Register => args.count,
        Mode::Rate => args.rate.saturating_mul(args.duration_secs),
    };
    let total = usize::try_from(total).unwrap_or(usize::MAX);
    if total == 0 || args.devices == 0 || args.window == 0 || args.connections == 0 {
        return Err("count/rate/duration, devices, window and connections must be positive".into());
    }
    if args.front != Front::Xmpp && args.mode == Mode::Register {
        return Err("--front matrix, unifiedpush and sip take --mode fast or rate".into());
    }
    if total > MAX_TOTAL
        || args.devices > MAX_TOTAL
        || args.window > MAX_WINDOW
        || args.connections > MAX_CONNECTIONS
    {
        return Err(format!(
            "at most {MAX_TOTAL} requests and devices, a window of {MAX_WINDOW} and \
             {MAX_CONNECTIONS} connections, per run"
        )
        .into());
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let dir = TempDir(
        std::env::temp_dir().join(format!("pushgate-bench-{}-{stamp}", std::process::id())),
    );
    std::fs::create_dir_all(&dir.0)?;

    let times = Arc::new(Times::new(total));
    let sink: Box<dyn ProviderSink> = match (args.front, args.provider) {
        // Every SIP request is a call to device `seq % devices`: checked at the sink.
        (Front::Sip, _) => {
            Box::new(ApnsSink::start(&dir.0, times.clone(), Some(args.devices)).await?)
        }
        (_, ProviderKind::Webpush) => Box::new(start_sink(times.clone()).await?),
        (_, ProviderKind::Apns) => Box::new(ApnsSink::start(&dir.0, times.clone(), None).await?),
        (_, ProviderKind::Fcm) => Box::new(FcmSink::start(&dir.0, times.clone()).await?),
    };

    // Seed the registrations before pushgate starts; Matrix pushers live in the homeserver.
    let (nodes, seed_rate, pushkeys, http) = match args.front {
        Front::Xmpp => {
            let db_url = match &args.postgres {
                Some(u) => u.clone(),
                None => Store::sqlite_url_in(&dir.0)?,
            };
            let (seeded, reused) = match (&args.seeded_db, &args.postgres) {
                (Some(kept), None) if kept.is_file() => (
                    seed::reuse(kept, &dir.0, &db_url, args.devices).await?,
                    true,
                ),
                (kept, _) => {
                    let seeded = seed::seed(&db_url, args.devices, sink.as_ref()).await?;
                    if let (Some(kept), None) = (kept, &args.postgres) {
                        seed::keep(&dir.0, &db_url, kept).await?;
                    }
                    (seeded, false)
                }
            };
            // A reused file was not seeded now: no seeding rate to report.
            let seed_rate = if reused { 0.0 } else { seeded.rate() };
            if !reused {
                eprintln!(
                    "seeded {} {} registrations in {:.1} s ({seed_rate:.0}/s, Store::insert_batch, \
                 {} a call; bench CPU {:.1} s)",
                    seeded.nodes.len(),
                    sink.provider_id(),
                    seeded.secs,
                    seed::BATCH,
                    seeded.cpu_secs,
                );
            }
            (seeded.nodes, seed_rate, Vec::new(), None)
        }
        Front::Matrix => {
            // A free loopback port for pushgate's HTTP listener.
            let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let pushkeys = matrix::pushkeys(args.provider, sink.as_ref(), args.devices)?;
            (Vec::new(), 0.0, pushkeys, Some(listen))
        }
        // Registered over the stream (UnifiedPush) or stored over HTTP (SIP v2) once pushgate
        // is up.
        Front::Unifiedpush | Front::Sip => {
            let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            (Vec::new(), 0.0, Vec::new(), Some(listen))
        }
    };
    let front_toml = match (args.front, http) {
        (Front::Matrix, Some(listen)) => {
            matrix::config_toml(listen, args.provider, sink.provider_id())
        }
        (Front::Unifiedpush, Some(listen)) => unifiedpush::config_toml(listen),
        (Front::Sip, Some(listen)) => sip::config_toml(listen, sink.provider_id()),
        _ => String::new(),
    };

    // Our side of XEP-0114, then pushgate.
    let xmpp = TcpListener::bind("127.0.0.1:0").await?;
    let config = dir.0.join("pushgate.toml");
    let storage = match &args.postgres {
        Some(u) => format!("url = {}", toml_str(u)),
        None => format!("data_dir = {}", toml_str(path_str(&dir.0)?)),
    };
    // Register mode adds a new device for every user of one domain: no per-domain bucket.
    std::fs::write(
        &config,
        format!(
            "[component]\njid = \"{COMPONENT}\"\nsecret = \"{SECRET}\"\nserver = \"{}\"\n\
             idle_ping_secs = 3600\npublish_timeout_secs = 10\n\
             [storage]\n{storage}\n\
             [registration]\nrate_per_domain_per_minute = 0\n{}{front_toml}",
            xmpp.local_addr()?,
            sink.provider_toml(),
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
        match (args.front, http) {
            (Front::Matrix, Some(listen)) => {
                // The component stream stays up, idle, as beside a real homeserver.
                let front = matrix::front(&pushkeys)?;
                let report = http_load::drive(&args, listen, pid, front, times.clone(), total);
                let report = report.await;
                drop(socket);
                return report.map(|r| (r, 0.0));
            }
            (Front::Sip, Some(listen)) => {
                let stored_rate = match args.sip_route {
                    SipRoute::V1 => 0.0,
                    SipRoute::V2 => {
                        let stored = sip::store(listen, args.devices, args.connections).await?;
                        eprintln!(
                            "stored {} devices (one account each) through POST /v2/tokens/{{account}} \
                             in {:.1} s ({:.0}/s, {} connections)",
                            stored.devices,
                            stored.secs,
                            stored.rate(),
                            args.connections
                        );
                        stored.rate()
                    }
                };
                let front = sip::front(args.sip_route, args.devices);
                let report = http_load::drive(&args, listen, pid, front, times.clone(), total);
                let report = report.await;
                drop(socket);
                // Every 200 waited for its push, so the sink has counted them all: pushes that
                // were not the callee's call, and any beyond one a request, are mismatches.
                return report.map(|mut r| {
                    r.mismatched =
                        sink.mismatched() + sink.requests().saturating_sub(total as u64);
                    (r, stored_rate)
                });
            }
            (Front::Unifiedpush, Some(listen)) => {
                let mut stream = unifiedpush::Stream::new(socket);
                let registered =
                    unifiedpush::register(&mut stream, args.devices, args.window).await?;
                eprintln!(
                    "registered {} app instances over the component stream in {:.1} s ({:.0}/s)",
                    registered.paths.len(),
                    registered.secs,
                    registered.rate()
                );
                let seen = Arc::new(unifiedpush::Seen::default());
                let distributors = unifiedpush::distribute(
                    stream,
                    times.clone(),
                    args.devices,
                    total,
                    seen.clone(),
                );
                let rate = registered.rate();
                let front = unifiedpush::front(registered.paths);
                let report = http_load::drive(&args, listen, pid, front, times.clone(), total);
                let report = report.await;
                // Pushes still arriving after the last answer are not waited for: a 201 comes
                // only after the distributor's answer, so every one counted has been read.
                distributors.abort();
                return report.map(|mut r| {
                    r.note = Some(seen.note());
                    r.mismatched = seen.mismatched.load(Ordering::Relaxed)
                        + seen.duplicates.load(Ordering::Relaxed);
                    (r, rate)
                });
            }
            _ => {}
        }
        let provider = sink.provider_id();
        // Register mode: user i registers device `devices + i`, a token no seeded row has.
        let stanza = |seq: usize| match args.mode {
            Mode::Register => register_stanza(seq, provider, &sink.token(args.devices + seq)),
            Mode::Fast | Mode::Rate => publish_stanza(seq, &nodes[seq % nodes.len()]),
        };
        let report = drive(&args, socket, pid, &stanza, times.clone(), total).await;
        report.map(|r| (r, seed_rate))
    }
    .await;

    let _ = child.start_kill();
    let _ = timeout(Duration::from_secs(10), child.wait()).await;
    let (report, seed_rate) = match outcome {
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
    print_report(
        &args,
        &report,
        &times,
        total,
        sink.as_ref(),
        seed_rate,
        warnings,
    );
    Ok(())
}

pub(crate) fn path_str(p: &Path) -> Result<&str, BoxError> {
    p.to_str()
        .ok_or_else(|| format!("non-UTF-8 path {}", p.display()).into())
}

pub(crate) fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("string serialises")
}
