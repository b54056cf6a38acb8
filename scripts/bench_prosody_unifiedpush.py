#!/usr/bin/env python3
"""UnifiedPush through a real Prosody: app server → pushgate → Prosody → distributors (issue 15).

`pushgate-bench --front unifiedpush` plays the XMPP server and the distributors on pushgate's
component stream. This puts Prosody 0.12 (the e2e harness's) between pushgate and the
distributors, as in production: each push IQ is routed by Prosody to a logged-in c2s client,
and its `result` comes back the same way. Companion of scripts/bench_prosody.py (XEP-0357
publishes through Prosody), whose measuring helpers it reuses; `scripts/bench-prosody
--unifiedpush` runs it.

* pushgate runs with `[http]` and `[unifiedpush]` on (tests/e2e's unifiedpush_toml) and both
  UnifiedPush rate limits at 10⁹ a minute: one app server at one address sends the whole load.
* Distributors: --distributors accounts of the harness (default 8), each a slixmpp
  `Distributor` (tests/e2e/clients.py) logged in through Prosody, registering --instances app
  instances (Conversations' dialect) and answering every push IQ `result`. They share one
  asyncio loop in this process.
* App server: a separate process (so it does not share the distributors' GIL) with --workers
  threads, each on its own keep-alive http.client connection (warmed with `GET /up`). POST n
  goes to endpoint n mod E with `TTL: 0` and a body of 200–600 random bytes whose first 8 are n.
* Checked after the run: every POST answered 201 with `TTL: 0`; exactly one push IQ per POST,
  at the distributor that registered the endpoint, for its application and instance, its
  base64 decoding byte for byte to POST n's body.

Reported: POSTs/s (first POST → last 201), POST → 201 latency, CPU seconds per 1,000 POSTs of
pushgate and Prosody (/proc/<pid>/stat) and of the two Python processes, and each process's
share of a core over the run, which says who was the bottleneck.

    scripts/bench-prosody --unifiedpush --count 5000
    python3 scripts/bench_prosody_unifiedpush.py --binary target/release/pushgate --count 5000

Bounded: the run stops after --time-limit seconds; everything is cleaned up on every way out.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

from bench_prosody import (BenchTimeout, cpu_seconds, on_alarm, on_term,  # noqa: E402
                           runqueue_wait_seconds, settled_cpu)
from clients import AsyncRunner, Distributor  # noqa: E402
from conftest import DOMAIN, LOCAL_USERS, PASSWORD, PUSH_JID, Stack  # noqa: E402
from prosody import free_port  # noqa: E402
from pushgate_proc import unifiedpush_toml  # noqa: E402

LIMIT = 1_000_000_000   # pushes_per_minute_per_{endpoint,ip}: the config's maximum
POST_TIMEOUT = 30.0     # one POST's answer


def body(n: int) -> bytes:
    """POST n's body: n in 8 bytes, then 192–592 bytes derived from n (re-made to check)."""
    rng = random.Random(n)
    return n.to_bytes(8, "big") + rng.randbytes(rng.randint(192, 592))


# --- the app server (own process) --------------------------------------------------------------
def app_server(endpoints: list[str], count: int, workers: int, conn) -> None:
    """Runs in a spawned process: bodies made, connections warmed, then `ready`; on `go`, the
    POSTs; sends back per-POST (status, TTL header, seconds), the wall-clock window and its own
    CPU seconds over that window."""
    url = urllib.parse.urlsplit(endpoints[0])
    paths = [urllib.parse.urlsplit(e).path for e in endpoints]
    bodies = [body(n) for n in range(count)]
    results: list = [None] * count
    counter = itertools.count()   # next() on it is atomic under the GIL
    conns = []
    for _ in range(workers):
        c = http.client.HTTPConnection(url.hostname, url.port, timeout=POST_TIMEOUT)
        c.request("GET", "/up")
        c.getresponse().read()
        conns.append(c)

    def work(c: http.client.HTTPConnection):
        while (n := next(counter)) < count:
            t = time.perf_counter()
            try:
                c.request("POST", paths[n % len(paths)], body=bodies[n],
                          headers={"TTL": "0", "Content-Type": "application/octet-stream",
                                   "Content-Encoding": "aes128gcm"})
                r = c.getresponse()
                r.read()
                results[n] = (r.status, r.getheader("TTL"), time.perf_counter() - t)
            except (OSError, http.client.HTTPException) as e:
                results[n] = (f"{type(e).__name__}: {e}", None, time.perf_counter() - t)
                c.close()  # http.client reconnects on the next request

    threads = [threading.Thread(target=work, args=(c,)) for c in conns]
    conn.send("ready")
    conn.recv()
    cpu0, t_first = time.process_time(), time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t_end, cpu = time.time(), time.process_time() - cpu0
    conn.send({"results": results, "t_first": t_first, "t_end": t_end, "cpu": cpu})


# --- the run -----------------------------------------------------------------------------------
def pct(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def check(distributors, registered, count: int, results) -> list[str]:
    """What went wrong, as lines (empty: every POST 201 + TTL 0, one exact push IQ each)."""
    problems = []
    bad = [(n, r) for n, r in enumerate(results) if r is None or r[:2] != (201, "0")]
    if bad:
        problems.append(f"{len(bad)} POSTs not 201 + TTL 0, e.g. {bad[:3]}")
    seen: dict[int, int] = {}
    for d in distributors:
        for p in d.pushes:
            n = int.from_bytes(p.data[:8], "big") if len(p.data) >= 8 else -1
            if not 0 <= n < count or p.data != body(n):
                problems.append(f"push to {p.to} is no POST's body ({len(p.data)} bytes)")
                continue
            seen[n] = seen.get(n, 0) + 1
            want = registered[n % len(registered)]
            if (p.to, p.application, p.instance) != (want[0].full_jid, want[1], want[2]):
                problems.append(f"POST {n}: push to {p.to} {p.application}/{p.instance}, "
                                f"registered by {want[0].full_jid} {want[1]}/{want[2]}")
    missing = count - len(seen)
    dup = sum(v - 1 for v in seen.values())
    if missing or dup:
        problems.append(f"{missing} POSTs without a push IQ, {dup} duplicate push IQs")
    return problems


def wait_http(base: str):
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"{base}/up", timeout=2) as r:
                json.loads(r.read())
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def run(args) -> int:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    toml = (unifiedpush_toml(port) + f"pushes_per_minute_per_endpoint = {LIMIT}\n"
            f"pushes_per_minute_per_ip = {LIMIT}\n")
    users = LOCAL_USERS[:args.distributors]
    stack = Stack("bench-up", users=users, pushgate_toml=toml)
    # As bench_prosody.py: an info-level log (the harness's debug log costs Prosody ~1/3 more).
    stack.server.global_options["log"] = f'{{ info = "{stack.server.log.path}" }}'
    runner = AsyncRunner()
    distributors: list[Distributor] = []
    child = None
    try:
        stack.start_server()
        stack.make_pushgate().start()
        wait_http(base)
        registered = []   # (distributor, application, instance), endpoint order
        endpoints = []
        for u in users:
            d = Distributor(runner, f"{u}@{DOMAIN}", PASSWORD, stack.server.c2s_port).connect()
            distributors.append(d)
            for i in range(args.instances):
                app, inst = f"org.example.bench{i}", f"{u}-{i}"
                endpoint, _ = d.register_conversations(PUSH_JID, app, inst)
                registered.append((d, app, inst))
                endpoints.append(endpoint)
        print(f"{len(distributors)} distributors through Prosody, {len(endpoints)} endpoints "
              f"registered", flush=True)

        ctx = multiprocessing.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        child = ctx.Process(target=app_server,
                            args=(endpoints, args.count, args.workers, child_end))
        child.start()
        if not parent_end.poll(60) or parent_end.recv() != "ready":
            raise RuntimeError("the app server process did not get ready")
        prosody, pushgate = stack.server.proc.pid, stack.pushgate.proc.pid
        pr0, pg0, wait0 = cpu_seconds(prosody), cpu_seconds(pushgate), \
            runqueue_wait_seconds(prosody)
        dist0 = time.process_time()
        parent_end.send("go")
        if not parent_end.poll(args.time_limit):
            raise BenchTimeout("the app server did not finish")
        out = parent_end.recv()
        child.join(10)
        wall = out["t_end"] - out["t_first"]
        pr_run, pr_wait = cpu_seconds(prosody) - pr0, runqueue_wait_seconds(prosody) - wait0
        pg_run, dist_run = cpu_seconds(pushgate) - pg0, time.process_time() - dist0
        pr_cpu, pg_cpu = settled_cpu(prosody) - pr0, settled_cpu(pushgate) - pg0
        dist_cpu = time.process_time() - dist0
        problems = check(distributors, registered, args.count, out["results"])
    finally:
        for d in distributors:
            d.abort()
        runner.stop()
        stack.close()
        if child is not None and child.is_alive():
            child.kill()

    n = args.count
    lat = sorted(r[2] * 1000 for r in out["results"] if r is not None)
    per_1k = 1000 / n
    print(f"\n== {n:,} POSTs (TTL: 0, 200–600 bytes) from {args.workers} keep-alive "
          f"connections to {len(endpoints)} endpoints of {len(distributors)} distributors")
    print(f"   {wall:.2f} s = {n / wall:,.0f} POSTs/s (first POST → last 201)")
    print(f"   POST → 201 ms: p50 {pct(lat, 0.5):.2f}, p99 {pct(lat, 0.99):.2f}, "
          f"max {lat[-1]:.2f}")
    rows = [("pushgate", pg_cpu, pg_run), ("Prosody", pr_cpu, pr_run),
            ("distributors (Python, one asyncio loop)", dist_cpu, dist_run),
            ("app server (Python, own process)", out["cpu"], out["cpu"])]
    for name, cpu, during in rows:
        print(f"   {name}: CPU {cpu:.2f} s = {cpu * per_1k:.3f} s per 1,000; "
              f"{during / wall:.0%} of a core during the run")
    print(f"   Prosody waited for a CPU {pr_wait / wall:.0%} of the run (runnable, not running)")
    print(f"   load average now {os.getloadavg()[0]:.2f}")
    print("\t".join(["SUMMARY", "unifiedpush-prosody", f"posts={n}", f"secs={wall:.3f}",
                     f"posts_per_s={n / wall:.0f}", f"p50_ms={pct(lat, 0.5):.2f}",
                     f"p99_ms={pct(lat, 0.99):.2f}", f"max_ms={lat[-1]:.2f}",
                     f"pushgate_cpu_per_1k={pg_cpu * per_1k:.3f}",
                     f"prosody_cpu_per_1k={pr_cpu * per_1k:.3f}",
                     f"distributors_cpu_per_1k={dist_cpu * per_1k:.3f}",
                     f"app_server_cpu_per_1k={out['cpu'] * per_1k:.3f}",
                     f"status={'ok' if not problems else 'FAILED'}"]))
    for line in problems[:10]:
        print(f"   PROBLEM: {line}")
    return 1 if problems else 0


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.environ.get("PUSHGATE_BIN")
                    or os.path.join(REPO, "target", "release", "pushgate"))
    ap.add_argument("--count", type=int, default=5_000, help="POSTs")
    ap.add_argument("--distributors", type=int, default=8, choices=range(1, len(LOCAL_USERS) + 1),
                    metavar=f"1..{len(LOCAL_USERS)}", help="harness accounts logged in")
    ap.add_argument("--instances", type=int, default=2, help="app instances per distributor")
    ap.add_argument("--workers", type=int, default=8, help="app server threads/connections")
    ap.add_argument("--time-limit", type=int, default=230, help="seconds for the whole run")
    return ap.parse_args()


def main() -> int | str:
    args = parse_args()
    if not os.access(args.binary, os.X_OK):
        return f"error: no pushgate binary at {args.binary} (cargo build --release --bin pushgate)"
    os.environ["PUSHGATE_BIN"] = os.path.abspath(args.binary)
    os.environ.setdefault("PUSHGATE_E2E_RUST_LOG", "warn")
    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.time_limit)
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(args.binary)))
    print(f"pushgate {os.environ['PUSHGATE_BIN']} (built {built}); {args.count:,} POSTs; load "
          f"average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    try:
        return run(args)
    finally:
        signal.alarm(0)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchTimeout as e:
        sys.exit(f"error: {e}")
