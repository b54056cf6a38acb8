//! What a run measured, printed for people and as one tab-separated `SUMMARY` line for
//! scripts/bench; and the /proc readings behind the CPU and memory figures.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::load::Report;
use crate::{Args, BoxError, Front, Mode, ProviderSink, Times, matrix, sip, unifiedpush};

pub(crate) fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of `pid`, in clock ticks, from /proc/<pid>/stat.
pub(crate) fn cpu_ticks(pid: u32) -> Result<u64, BoxError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').ok_or("odd /proc stat")? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let utime: u64 = fields.get(11).ok_or("short /proc stat")?.parse()?;
    let stime: u64 = fields.get(12).ok_or("short /proc stat")?.parse()?;
    Ok(utime + stime)
}

/// A `kB` line of /proc/<pid>/status.
pub(crate) fn status_kb(pid: u32, key: &str) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .ok_or_else(|| format!("no {key} in /proc/{pid}/status"))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// (p50, p99, max) in milliseconds, or None for no samples.
pub(crate) fn percentiles(mut v: Vec<u64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |q: f64| {
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1e6
    };
    Some((at(0.50), at(0.99), at(1.0)))
}

pub(crate) fn print_report(
    args: &Args,
    r: &Report,
    times: &Times,
    total: usize,
    sink: &dyn ProviderSink,
    seed_rate: f64,
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
    // What a successful reply is called, and what the requests are.
    let (success, noun) = match (args.front, args.mode) {
        (Front::Matrix, _) => (matrix::OK, "notify requests"),
        (Front::Unifiedpush, _) => (unifiedpush::OK, "POSTs"),
        (Front::Sip, _) => (sip::OK, "SIP pushes"),
        (Front::Xmpp, Mode::Register) => ("completed", "commands"),
        (Front::Xmpp, Mode::Fast | Mode::Rate) => ("result", "publishes"),
    };
    let results = r.replies.get(success).copied().unwrap_or(0);
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
    let mode = match (args.front, args.mode) {
        (Front::Matrix | Front::Unifiedpush | Front::Sip, Mode::Fast) => {
            format!("fast({} connections)", args.connections)
        }
        (_, Mode::Fast) => format!("fast(window {})", args.window),
        (Front::Matrix | Front::Unifiedpush | Front::Sip, Mode::Rate) => format!(
            "rate({}/s x {} s, {} connections)",
            args.rate, args.duration_secs, args.connections
        ),
        (_, Mode::Rate) => format!("rate({}/s x {} s)", args.rate, args.duration_secs),
        (_, Mode::Register) => format!("register(window {})", args.window),
    };
    let provider = match args.front {
        Front::Matrix => format!("matrix-{}", sink.provider_id()),
        Front::Xmpp => sink.provider_id().to_owned(),
        Front::Unifiedpush => "unifiedpush".to_owned(),
        Front::Sip => format!("sip-{}-{}", args.sip_route.label(), sink.provider_id()),
    };
    let devices = match args.front {
        Front::Matrix => format!("{} pushkeys in rotation", args.devices),
        Front::Unifiedpush => format!(
            "{} app instances (registered over the stream at {seed_rate:.0}/s)",
            args.devices
        ),
        Front::Xmpp => format!("{} devices (seeded at {seed_rate:.0}/s)", args.devices),
        Front::Sip if args.sip_route == crate::SipRoute::V2 => format!(
            "{} accounts of one device (stored over HTTP at {seed_rate:.0}/s)",
            args.devices
        ),
        Front::Sip => format!("{} token pairs in rotation", args.devices),
    };
    println!("pushgate-bench: {profile} build, {db}, {provider}, {devices}, {mode}");
    println!(
        "  {noun} sent {}, replies {replied} {:?}{}",
        r.sent,
        r.replies,
        if r.timed_out { " (TIMED OUT)" } else { "" }
    );
    if let Some(seen) = &r.note {
        println!("  {seen}; pushgate log lines (warn+): {log_lines}");
    } else {
        let note = sink.note();
        println!(
            "  sink: {} requests accepted, {} refused, {delivered_n} matched to a publish{}{note}; pushgate log lines (warn+): {log_lines}",
            sink.requests(),
            sink.refused(),
            if note.is_empty() { "" } else { "; " },
        );
    }
    if args.front == Front::Unifiedpush {
        if let Some(lost) = r.ok_not_delivered {
            println!(
                "  answered 201 without a matching push IQ at the stream: {lost}; {results} answered 201 with TTL 0"
            );
        }
    } else if let Some(lost) = r.ok_not_delivered {
        println!(
            "  answered 200 but not at the sink (queued for a retry): {lost}; sink requests {} for {results} answered 200",
            sink.requests()
        );
    }
    println!(
        "  throughput: {per_sec:.0} {noun}/s over {elapsed:.2} s (first request to last reply)"
    );
    println!("  request -> reply     ms: p50 {r50}  p99 {r99}  max {rmax}");
    let (request, load_side, arrival) = match args.front {
        Front::Matrix => ("notify ", "HTTP client + sink", "provider "),
        Front::Xmpp => ("publish", "XMPP side + sink", "provider "),
        Front::Unifiedpush => ("POST   ", "HTTP client + distributors", "IQ at stream"),
        Front::Sip => ("request", "HTTP client + sink", "APNs voip"),
    };
    println!("  {request} -> {arrival} ms: p50 {d50}  p99 {d99}  max {dmax}");
    println!(
        "  pushgate CPU: {:.2} s ({cpu_per_k:.3} s per 1,000 {noun}); VmHWM {} -> {} MB; VmRSS after {} MB",
        r.cpu_secs,
        r.rss_hwm_kb_before / 1024,
        r.rss_hwm_kb_after / 1024,
        r.rss_kb_after / 1024
    );
    println!(
        "  bench CPU ({load_side}): {:.2} s ({:.3} s per 1,000 {noun})",
        r.bench_cpu_secs,
        if replied > 0 {
            r.bench_cpu_secs / replied as f64 * 1000.0
        } else {
            0.0
        }
    );
    // Every request answered with success, and (publishes) every push delivered and matched.
    let complete = results as usize == total
        && (args.mode == Mode::Register || delivered_n == total)
        && r.ok_not_delivered.unwrap_or(0) == 0
        && r.mismatched == 0;
    let status = match (r.timed_out, complete) {
        (true, _) => "TIMEOUT",
        (false, true) => "ok",
        (false, false) => "INCOMPLETE",
    };
    println!("  status: {status}");
    // One tab-separated line for scripts/bench.
    println!(
        "SUMMARY\t{}\t{profile}\t{db}\t{provider}\t{}\t{seed_rate:.0}\t{mode}\t{}\t{results}\t{}\t{per_sec:.0}\t{cpu_per_k:.3}\t{r50}\t{r99}\t{rmax}\t{d50}\t{d99}\t{dmax}\t{}\t{}",
        if args.label.is_empty() {
            "-"
        } else {
            &args.label
        },
        args.devices,
        r.sent,
        replied - results,
        r.rss_hwm_kb_after / 1024,
        status,
    );
}
