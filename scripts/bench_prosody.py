#!/usr/bin/env python3
"""pushgate behind a real Prosody: is pushgate the bottleneck? (issue 6, item 4)

`pushgate-bench` (docs/performance.md) plays the XMPP server itself. This benchmark puts the
real thing in front: Prosody 0.12 with mod_cloud_notify, pushgate as its XEP-0114 component and
the end-to-end harness's WebPush endpoint as the provider, all on loopback. It reuses
tests/e2e (Stack, Client, WebPushEndpoint, register_tigase) rather than a copy of it.

Two phases, N chat messages each (default 20,000), from one sender account over several c2s
connections at once (default 8), written as pre-serialised XML with slixmpp's send_raw, so the
Python side is never what limits the rate. (With a single connection Prosody sat idle about
45% of the time, in ~35 ms epoll waits between its 8 KB reads while the sender's data waited in
TCP; with 8 it runs all the time.)

* baseline: to an offline account with no push registration, i.e. Prosody's own routing rate
  (parse, route, store offline);
* push: to an offline account with a WebPush device registered at pushgate (register-device)
  and enabled at Prosody (XEP-0357), so mod_cloud_notify publishes once per message. It runs
  second: mod_cloud_notify (hg20230223) keeps two event handlers per answered publish for good,
  and Prosody's cost per message grows with them.

A phase has routed everything when every connection's XEP-0199 ping, sent after its last
message, is answered (Prosody handles one c2s stream's stanzas in order); the offline store is
counted as a check.
Publishes Prosody sent are counted inside Prosody by a tiny module hooking mod_cloud_notify's
`cloud_notify/push` event; the answers by pushgate's /metrics; deliveries at the endpoint.
CPU seconds come from /proc/<pid>/stat.

Changes to the harness's Prosody for this run only: `storage_archive_item_limit` above N
(mod_offline refuses messages past 10,000 per account otherwise) and an info-level log instead
of debug (the debug log costs Prosody about a third more CPU). pushgate runs with
RUST_LOG=warn unless PUSHGATE_E2E_RUST_LOG says otherwise.

    scripts/bench-prosody                        # the wrapper: release binary, N = 20,000
    python3 scripts/bench_prosody.py --binary target/release/pushgate --count 20000

Bounded: every wait has a timeout and the whole run stops after --time-limit seconds; Prosody,
pushgate, the endpoint and the temp dirs are cleaned up on every way out
(PUSHGATE_E2E_KEEP=1 keeps the temp dirs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

from clients import AsyncRunner, Client  # noqa: E402
from conftest import DOMAIN, PASSWORD, PUSH_JID, Stack  # noqa: E402
from prosody import free_port  # noqa: E402
from pushgate_proc import VAPID_SUBJECT  # noqa: E402
from scenario import register_tigase  # noqa: E402
from webpush_endpoint import WebPushEndpoint  # noqa: E402

SENDER, BASELINE_TO, PUSH_TO = "bob", "carol", "dave"
CHUNK = 50               # stanzas per write on the sender's socket
ROUTE_TIMEOUT = 90.0     # first message → ping answered
DRAIN_TIMEOUT = 60.0     # ping answered → every delivery and answer in
SETTLE_TIMEOUT = 5.0     # for a counter or a process's CPU time to stop moving
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Counts mod_cloud_notify's publishes where they are made: it fires `cloud_notify/push` right
# before sending each one (nothing here blocks them). Logs the total at info when it changed.
COUNTER_MODULE = """\
local sent, logged = 0, 0;
module:hook("cloud_notify/push", function() sent = sent + 1; end);
module:add_timer(0.5, function()
\tif sent ~= logged then logged = sent; module:log("info", "publishes sent: %d", sent); end
\treturn 0.5;
end);
"""
COUNTER_RE = re.compile(r"bench_push_count\s+info\s+publishes sent: (\d+)")
METRIC_RE = re.compile(r'^pushgate_publishes_total\{outcome="([a-z_]+)"\} (\d+)', re.M)


class BenchTimeout(Exception):
    """The whole run took longer than --time-limit."""


# --- measuring ---------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat (after the parenthesised name)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def runqueue_wait_seconds(pid: int) -> float:
    """Time the process's main thread spent runnable but waiting for a CPU (schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmRSS:"))
    return int(kb) / 1024


def settled_cpu(pid: int) -> float:
    """CPU seconds once the process has stopped using CPU (two equal reads 0.3 s apart)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = cpu_seconds(pid)
        if now == last:
            break
        last = now
    return last


def reached(value, target: int, timeout: float) -> bool:
    """Whether value() reaches target within timeout (checked every 50 ms)."""
    deadline = time.monotonic() + timeout
    while value() < target:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def offline_count(stack: Stack, user: str) -> int:
    """Messages in the account's offline store (mod_storage_internal: one `item(` each)."""
    path = os.path.join(stack.server.dir, "data", DOMAIN, "offline", f"{user}.list")
    try:
        with open(path, "rb") as f:
            return sum(1 for line in f if line.startswith(b"item("))
    except FileNotFoundError:
        return 0


def prosody_sent(stack: Stack) -> int:
    found = stack.server.log.find_all(COUNTER_RE)
    return int(found[-1].group(1)) if found else 0


def prosody_error_lines(stack: Stack, since: int) -> list[str]:
    """Prosody's warnings and errors, and mod_cloud_notify's 'Got error' lines (info)."""
    return [line for line in stack.server.log.lines(since)
            if "\twarn\t" in line or "\terror\t" in line or "Got error <" in line]


def answered(metrics_url: str) -> dict[str, int]:
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    return {k: int(v) for k, v in METRIC_RE.findall(text)}


# --- sending -----------------------------------------------------------------------------------
def message_chunks(to: str, n: int, tag: str) -> list[bytes]:
    """The N chat messages, pre-serialised, CHUNK per write."""
    msgs = [f'<message to="{to}@{DOMAIN}" type="chat" id="{tag}-{i}">'
            f"<body>{tag}-{i} hello from the benchmark</body></message>" for i in range(n)]
    return ["".join(msgs[i:i + CHUNK]).encode() for i in range(0, n, CHUNK)]


async def blast_one(sender: Client, chunks: list[bytes]) -> tuple[float, float]:
    """Write the chunks with send_raw (keeping slixmpp's buffer under 256 KB), then ping the
    server. Returns the wall-clock times of the last write and of the ping's answer."""
    x = sender.xmpp
    for chunk in chunks:
        while x.transport.get_write_buffer_size() > 256 * 1024:
            await asyncio.sleep(0.001)
        x.send_raw(chunk)
    t_last = time.time()
    await x.plugin["xep_0199"].send_ping(x.boundjid.domain, timeout=ROUTE_TIMEOUT)
    return t_last, time.time()


async def blast(senders: list[Client], chunks: list[bytes]) -> tuple[float, float, float]:
    """The chunks round-robin over the sender connections, all at once. Returns the times of
    the first write, the last write and the last ping answer."""
    t_first = time.time()
    done = await asyncio.gather(*(blast_one(s, chunks[i::len(senders)])
                                  for i, s in enumerate(senders)))
    return t_first, max(t for t, _ in done), max(t for _, t in done)


# --- phases ------------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    n: int
    t_first: float = 0.0
    t_last_write: float = 0.0
    t_routed: float = 0.0
    stored: int = 0
    prosody_cpu: float = 0.0
    prosody_cpu_routing: float = 0.0               # first write → ping answered
    prosody_wait_routing: float = 0.0              # runnable but not running, same window
    prosody_rss_growth: float = 0.0
    bench_cpu: float = 0.0
    sent: int = 0                                  # publishes Prosody made
    outcomes: dict[str, int] = field(default_factory=dict)
    deliveries: int = 0
    deliveries_ok: int = 0
    distinct_bodies: int = 0
    t_last_delivery: float = 0.0
    drained: bool = True                           # everything arrived within the timeouts
    pushgate_cpu: float = 0.0
    prosody_errors: list[str] = field(default_factory=list)

    @property
    def route_secs(self) -> float:
        return self.t_routed - self.t_first

    @property
    def rate(self) -> float:
        return self.n / self.route_secs

    @property
    def answered(self) -> int:
        return sum(self.outcomes.values())


def run_phase(b: "Bench", name: str, to: str) -> Phase:
    p = Phase(name, b.n)
    chunks = message_chunks(to, b.n, name)
    log_since = b.stack.server.log.offset()
    sent0, outcomes0, dev0 = prosody_sent(b.stack), answered(b.metrics_url), b.endpoint.count()
    prosody = b.stack.server.proc.pid
    prosody_cpu0, pushgate_cpu0 = b.cpu()
    wait0, rss0, bench_cpu0 = runqueue_wait_seconds(prosody), rss_mb(prosody), time.process_time()
    p.t_first, p.t_last_write, p.t_routed = b.runner.run(blast(b.senders, chunks),
                                                         ROUTE_TIMEOUT + 10)
    p.prosody_cpu_routing = cpu_seconds(prosody) - prosody_cpu0
    p.prosody_wait_routing = runqueue_wait_seconds(prosody) - wait0
    if name == "push":
        wait_drained(b, p, dev0, outcomes0)
    p.sent = settle(lambda: prosody_sent(b.stack)) - sent0
    p.outcomes = diff(answered(b.metrics_url), outcomes0)
    p.prosody_cpu = settled_cpu(prosody) - prosody_cpu0
    p.prosody_rss_growth = rss_mb(prosody) - rss0
    p.pushgate_cpu = settled_cpu(b.stack.pushgate.proc.pid) - pushgate_cpu0
    p.bench_cpu = time.process_time() - bench_cpu0
    p.stored = offline_count(b.stack, to)
    p.prosody_errors = prosody_error_lines(b.stack, log_since)
    if name == "push":
        check_deliveries(b, p)
    return p


def wait_drained(b: "Bench", p: Phase, dev0: int, outcomes0: dict[str, int]):
    """Until the endpoint has N more requests and pushgate has answered N more publishes; a
    shortfall is reported (and fails the verdict), not raised."""
    p.drained = (reached(lambda: b.endpoint.count() - dev0, p.n, DRAIN_TIMEOUT)
                 and reached(lambda: sum(diff(answered(b.metrics_url), outcomes0).values()),
                             p.n, SETTLE_TIMEOUT))


def settle(value) -> int:
    """A counter's value once it has not moved for 1.5 s (at most SETTLE_TIMEOUT)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 1.5:
        time.sleep(0.1)
        v = value()
        if v != last:
            last, since = v, time.monotonic()
    return last


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def check_deliveries(b: "Bench", p: Phase):
    got = b.endpoint.deliveries_for(b.device)
    p.deliveries = len(got)
    ok = [d for d in got if d.status == 201 and d.vapid_error is None
          and isinstance(d.payload, dict) and str(d.payload.get("body", "")).startswith("push-")]
    p.deliveries_ok = len(ok)
    p.distinct_bodies = len({d.payload["body"] for d in ok})
    p.t_last_delivery = max((d.received_at for d in got), default=0.0)


# --- the stack ---------------------------------------------------------------------------------
class Bench:
    """Prosody + pushgate (Stack), the WebPush endpoint, a sender and a registered recipient."""

    def __init__(self, n: int, senders: int):
        self.n = n
        self.sender_count = senders
        self.http_port = free_port()
        self.metrics_url = f"http://127.0.0.1:{self.http_port}/metrics"
        self.stack = Stack("bench", users=(SENDER, BASELINE_TO, PUSH_TO),
                           pushgate_toml=f'[http]\nlisten = "127.0.0.1:{self.http_port}"')
        self.runner = AsyncRunner()
        self.endpoint = WebPushEndpoint(vapid_subject=VAPID_SUBJECT)
        # socketserver listens with a backlog of 5; pushgate opens ~100 connections at the start
        # of the burst, and SYNs beyond the backlog are retried 1 s, 3 s, … later, past the
        # harness's 5 s publish timeout. Listening again only raises the backlog.
        self.endpoint.server.socket.listen(1024)
        self.senders: list[Client] = []
        self.device = None
        self.endpoint_running = False

    def start(self):
        self.endpoint.start()
        self.endpoint_running = True
        self.configure_prosody()
        self.stack.start_server()
        pg = self.stack.make_pushgate()
        pg.start()
        self.endpoint.expected_vapid_key = pg.vapid_public
        self.device = self.register_push_recipient()
        self.senders = [self.connect(SENDER) for _ in range(self.sender_count)]

    def configure_prosody(self):
        """This run's changes to the harness's Prosody (see the file's doc comment)."""
        srv = self.stack.server
        plugins = os.path.join(srv.dir, "plugins")
        os.makedirs(plugins)
        with open(os.path.join(plugins, "mod_bench_push_count.lua"), "w") as f:
            f.write(COUNTER_MODULE)
        srv.global_options.update({
            "storage_archive_item_limit": str(self.n + 1000),
            "log": f'{{ info = "{srv.log.path}" }}',
            "plugin_paths": f'{{ "{plugins}" }}',
        })
        srv.host_options[DOMAIN] = {"modules_enabled": '{ "bench_push_count" }'}

    def connect(self, user: str) -> Client:
        return Client(self.runner, f"{user}@{DOMAIN}", PASSWORD,
                      self.stack.server.c2s_port).connect()

    def register_push_recipient(self):
        """register-device at pushgate, enable at Prosody, go offline (as the e2e tests do)."""
        device = self.endpoint.new_device(encrypted=False)
        client = self.connect(PUSH_TO)
        node = register_tigase(client, device, "webpush")
        client.enable_push(PUSH_JID, node)
        client.disconnect()
        return device

    def cpu(self) -> tuple[float, float]:
        return (cpu_seconds(self.stack.server.proc.pid),
                cpu_seconds(self.stack.pushgate.proc.pid))

    def close(self):
        for s in self.senders:
            s.abort()
        self.runner.stop()
        self.stack.close()
        if self.endpoint_running:  # shutdown() waits forever for a server that never ran
            self.endpoint.stop()


# --- report ------------------------------------------------------------------------------------
def per_1k(cpu: float, count: int) -> float:
    return cpu / count * 1000 if count else float("nan")


def report(p: Phase, senders: int):
    print(f"\n== {p.name}: {p.n:,} chat messages to an offline account "
          f"({'push enabled through pushgate' if p.name == 'push' else 'no push registration'})")
    print(f"   routed by Prosody in {p.route_secs:.2f} s = {p.rate:,.0f} messages/s "
          f"(first write → ping answered); offline store holds {p.stored:,}")
    print(f"   Prosody CPU {p.prosody_cpu:.2f} s = {per_1k(p.prosody_cpu, p.n):.3f} s per 1,000 "
          f"messages; while routing it ran {p.prosody_cpu_routing / p.route_secs:.0%} of the "
          f"time and waited for a CPU {p.prosody_wait_routing / p.route_secs:.0%}; "
          f"RSS +{p.prosody_rss_growth:.0f} MB")
    print(f"   sender: {senders} c2s connections of {SENDER}@{DOMAIN}, pre-serialised XML via "
          f"send_raw ({CHUNK} per write), "
          f"all written {p.t_last_write - p.t_first:.2f} s after the first; bench process CPU "
          f"(sender + endpoint) {p.bench_cpu:.2f} s")
    if p.name == "push":
        outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(p.outcomes.items())) or "none"
        print(f"   publishes: Prosody sent {p.sent:,}, pushgate answered {p.answered:,} "
              f"({outcomes})")
        print(f"   deliveries at the WebPush endpoint: {p.deliveries:,} "
              f"({p.deliveries_ok:,} well-formed 201s, {p.distinct_bodies:,} distinct bodies)")
        print(f"   pushgate CPU {p.pushgate_cpu:.2f} s = "
              f"{per_1k(p.pushgate_cpu, p.answered):.3f} s per 1,000 publishes")
        print(f"   last delivery {p.t_last_delivery - p.t_routed:.2f} s after Prosody had routed "
              f"the last message ({p.t_last_delivery - p.t_last_write:.2f} s after its write)"
              + ("" if p.drained else f"; gave up on the rest after {DRAIN_TIMEOUT:.0f} s"))
    else:
        print(f"   publishes Prosody sent: {p.sent:,}")
    for line in p.prosody_errors[:5]:
        print(f"   Prosody: {line}")
    if len(p.prosody_errors) > 5:
        print(f"   Prosody: … {len(p.prosody_errors) - 5} more warning/error lines")


def summary_line(p: Phase) -> str:
    fields = {
        "messages": p.n, "stored": p.stored, "route_s": f"{p.route_secs:.3f}",
        "msgs_per_s": f"{p.rate:.0f}", "prosody_cpu_s": f"{p.prosody_cpu:.2f}",
        "prosody_cpu_per_1k_msgs": f"{per_1k(p.prosody_cpu, p.n):.3f}",
        "prosody_running_pct": f"{100 * p.prosody_cpu_routing / p.route_secs:.0f}",
        "prosody_cpu_wait_pct": f"{100 * p.prosody_wait_routing / p.route_secs:.0f}",
        "prosody_rss_growth_mb": f"{p.prosody_rss_growth:.0f}",
        "publishes_sent": p.sent, "publishes_answered": p.answered,
    }
    fields.update({f"answered_{k}": v for k, v in sorted(p.outcomes.items())})
    if p.name == "push":
        fields.update({
            "deliveries": p.deliveries, "deliveries_ok": p.deliveries_ok,
            "pushgate_cpu_s": f"{p.pushgate_cpu:.2f}",
            "pushgate_cpu_per_1k_publishes": f"{per_1k(p.pushgate_cpu, p.answered):.3f}",
            "routed_to_last_delivery_s": f"{p.t_last_delivery - p.t_routed:.3f}",
        })
    fields["bench_cpu_s"] = f"{p.bench_cpu:.2f}"
    return "\t".join(["SUMMARY", p.name] + [f"{k}={v}" for k, v in fields.items()])


def kept_up(push: Phase) -> bool:
    """pushgate answered every publish Prosody sent, and Prosody sent one per message."""
    return push.answered == push.sent == push.n


def verdict(base: Phase, push: Phase) -> str:
    """Whether pushgate kept up, then the CPU cost per 1,000 and what one core of each would
    sustain at that cost."""
    pg = per_1k(push.pushgate_cpu, push.answered)
    pr_base, pr_push = per_1k(base.prosody_cpu, base.n), per_1k(push.prosody_cpu, push.n)
    return (f"VERDICT\tpushgate kept up: {'yes' if kept_up(push) else 'NO'}: answered "
            f"{push.answered:,} of the {push.sent:,} publishes Prosody sent for {push.n:,} "
            f"messages ({push.outcomes.get('delivered', 0):,} delivered), last delivery "
            f"{push.t_last_delivery - push.t_routed:.2f} s after Prosody had routed the last "
            f"message. CPU s per 1,000: pushgate {pg:.3f} per publish; Prosody {pr_base:.3f} "
            f"per message without push, {pr_push:.3f} with push. At those costs one core runs "
            f"pushgate at ~{1000 / pg:,.0f} publishes/s and Prosody at ~{1000 / pr_push:,.0f} "
            f"pushed messages/s (~{1000 / pr_base:,.0f}/s without push)")


# --- main --------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.environ.get("PUSHGATE_BIN")
                    or os.path.join(REPO, "target", "release", "pushgate"))
    ap.add_argument("--count", type=int, default=20_000, help="messages per phase")
    ap.add_argument("--senders", type=int, default=8,
                    help="parallel c2s connections of the sender (one alone leaves Prosody idle "
                         "while TCP waits for window updates)")
    ap.add_argument("--time-limit", type=int, default=230, help="seconds for the whole run")
    return ap.parse_args()


def on_alarm(signum, frame):
    raise BenchTimeout("the run took longer than --time-limit")


def on_term(signum, frame):
    raise SystemExit(128 + signum)


def main() -> int | str:
    args = parse_args()
    if not os.access(args.binary, os.X_OK):
        return f"error: no pushgate binary at {args.binary} (cargo build --release --bin pushgate)"
    # read by the harness's Pushgate, which starts the binary from its temp dir
    os.environ["PUSHGATE_BIN"] = os.path.abspath(args.binary)
    os.environ.setdefault("PUSHGATE_E2E_RUST_LOG", "warn")  # no INFO line per publish
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.time_limit)
    t0 = time.monotonic()
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(args.binary)))
    print(f"pushgate {os.environ['PUSHGATE_BIN']} (built {built}); {args.count:,} messages per "
          f"phase; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    bench = Bench(args.count, args.senders)
    try:
        bench.start()
        base = run_phase(bench, "baseline", BASELINE_TO)
        report(base, args.senders)
        push = run_phase(bench, "push", PUSH_TO)
        report(push, args.senders)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the (bounded) cleanup finish
        bench.close()
    print(f"\nwall time {time.monotonic() - t0:.1f} s; load average now "
          f"{os.getloadavg()[0]:.2f}")
    print(summary_line(base))
    print(summary_line(push))
    print(verdict(base, push))
    return 0 if kept_up(push) else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchTimeout as e:
        sys.exit(f"error: {e}")
