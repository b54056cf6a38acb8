#!/usr/bin/env python3
"""The fault benchmark (not a test): what pushgate loses when things fail under steady load.

Runs the end-to-end harness (tests/e2e: a real Prosody 0.12 or ejabberd 23.01, slixmpp phones,
a local WebPush push service that decrypts what it gets) against a pushgate binary. In every
scenario bob sends messages round-robin to 8 sleeping phones at --rate per second for --seconds
while one fault happens, starting a third of the way in:

  outage        the push service answers 503 for the middle third of the run.
  xmpp-restart  the XMPP server is stopped for --down seconds (default 10) and started again;
                bob sends nothing while it is down. Also prints how long after the server
                accepted connections again pushgate had bound.
  pg-restart    pushgate runs on a private PostgreSQL cluster (initdb + pg_ctl in a temp dir on
                a free loopback port, as the postgres user), which is stopped for --down seconds
                (default 30) and started again.
  sigkill       the push service answers 503 for the middle third; halfway through pushgate is
                SIGKILLed and started again at once. Prints how many publishes were answered
                `result` during the outage before the kill and how many of them were pushed.
  rolling       halfway through a second pushgate starts on the same database and the first is
                replaced: on Prosody by `component_conflict_resolve = "kick_old"` with the old
                instance on `component.when_replaced = "exit"`; on ejabberd both run side by
                side and the old one gets SIGTERM 5 s later.

After the load everything is healthy again and the run waits up to --grace seconds until every
message is pushed and every publish answered. Then it prints, per scenario:

* offered: messages bob sent; delivered: of those, the ones whose decrypted body reached the
  phone's push service; lost: the others. `answered result, not pushed` is the silent part of
  the loss: pushgate told the server all was well. `during the fault` counts from the first
  fault event to the recovery (rolling: from the second start to the end of the load).
* expired: `pushgate_retry_expired_total` from each instance's /metrics (polled every 0.5 s,
  last value kept, a restart's reset added up); 0 while the binary has no such metric.
* registrations removed: `outcome=dead_token` in pushgate's log, and registrations the server
  disabled (Prosody: "Disabling push notifications", ejabberd: "disabling push").
* reply latency and error replies are measured outside pushgate: its component connection goes
  through scripts/component_tap.py, a loopback TCP proxy that timestamps each publish IQ from
  the server and pushgate's `result`/`error` with the same id on the same connection. `never
  answered` are publishes whose connection ended first (kill, restart, takeover).
* Prosody only: every error Prosody's mod_cloud_notify got for a publish, including the
  `service-unavailable` it makes up itself while no component is bound.

The servers follow etc/examples where it matters (Prosody: push_max_errors = 16, kick_old;
ejabberd: mod_client_state, mod_push_keepalive), except that they send the real body
(Prosody push_notification_with_body, ejabberd include_body: true) so that each push can be told
apart. pushgate runs the harness config with the shipped component defaults
(publish_timeout_secs = 10, max_reconnect_delay_secs = 30), SQLite unless --postgres.

    scripts/fault_bench.py --binary target/release/pushgate [--scenario all] \\
        [--server prosody|ejabberd] [--rate 20] [--seconds 30] [--grace 15] [--down S]

Needs what scripts/test installs (Prosody, ejabberd, the Python packages), and PostgreSQL's
initdb/pg_ctl on PATH for pg-restart. docs/performance.md has the figures and the commands that
made them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))

from clients import AsyncRunner, Client  # noqa: E402
from component_tap import ComponentTap  # noqa: E402
from conftest import LOCAL_USERS, PASSWORD, PUSH_JID  # noqa: E402
from ejabberd import DISABLED_LINE as EJABBERD_DISABLED, Ejabberd  # noqa: E402
from prosody import Prosody, free_port  # noqa: E402
from pushgate_proc import VAPID_SUBJECT, Pushgate  # noqa: E402
from scenario import push_offline  # noqa: E402
from webpush_endpoint import WebPushEndpoint  # noqa: E402

PHONES = [u for u in LOCAL_USERS if u != "bob"][:8]
SCENARIOS = ("outage", "xmpp-restart", "pg-restart", "sigkill", "rolling")
PUBLISH_TIMEOUT = 10       # component.publish_timeout_secs, the shipped default
EJABBERD_IQ_TIMEOUT = 32   # after this ejabberd gives up on a publish
PROSODY_DISABLED = "Disabling push notifications for identifier"
PROSODY_ERROR = re.compile(r"Got error <(\w+):([\w-]+):")
DEAD_TOKEN = re.compile(r"(?i)publish.*\boutcome=\"?dead_token")
CONNECTED = "component connected"
SECRET = "fault-bench-component-secret"


@contextlib.contextmanager
def environment(**values: str):
    """pushgate reads PUSHGATE_<SECTION>__<KEY> at start: set them for one spawn only."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Via:
    """The XMPP server as a Pushgate sees it, with the component port replaced by the tap's."""

    def __init__(self, server, port: int):
        self._server = server
        self.component_port = port

    def __getattr__(self, name):
        return getattr(self._server, name)


class PrivatePostgres:
    """A PostgreSQL cluster of our own (never the shared one on 5432): a temp dir owned by the
    postgres user (initdb refuses root), a free loopback port, its socket in the temp dir."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pushgate-fault-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self.running = False
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, *cmd: str):
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        r = subprocess.run(prefix + list(cmd), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")

    def start(self):
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "postgres.log"), "-w",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start")
        self.running = True

    def stop(self):
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")
        self.running = False

    def cleanup(self):
        if self.running:
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ExpiredWatch:
    """The last `pushgate_retry_expired_total` one instance's /metrics showed; a drop (the
    process restarted) adds what was counted before it."""

    def __init__(self, port: int):
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.base = self.last = 0.0
        self.seen = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="metrics", daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.wait(0.5):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue
            samples = [float(line.rsplit(None, 1)[1]) for line in text.splitlines()
                       if re.match(r"pushgate_retry_expired_total[ {]", line)]
            if not samples:
                continue
            value = sum(samples)
            if value < self.last:
                self.base += self.last
            self.last, self.seen = value, True

    def total(self) -> int:
        self._stop.set()
        self._thread.join(2)
        return int(self.base + self.last)


class Run:
    """One scenario: the server, the tap, pushgate instance(s), 8 phones and bob."""

    def __init__(self, args, scenario: str):
        self.args = args
        self.scenario = scenario
        self.postgres_wanted = args.postgres or scenario == "pg-restart"
        self.runner = AsyncRunner()
        self.clients: list[Client] = []
        self.pushgates: list[Pushgate] = []
        self.watches: list[ExpiredWatch] = []
        self.env: dict[Pushgate, dict[str, str]] = {}  # each instance's config overrides
        self.tap = self.endpoint = self.postgres = None
        self.bob: Client | None = None
        self.fault: list[float | None] = [None, None]  # monotonic, from the first fault event
        users = [(u, "localhost", PASSWORD) for u in LOCAL_USERS]
        if args.server == "prosody":
            self.server = Prosody(
                users=users, components={PUSH_JID: SECRET},
                global_options={"push_max_errors": "16",
                                "push_notification_with_body": "true",
                                "push_notification_with_sender": "true",
                                "component_conflict_resolve": '"kick_old"'},
                name=f"prosody[{scenario}]")
        else:
            self.server = Ejabberd(
                users=users, components={PUSH_JID: SECRET},
                push_options={"include_body": "true"},
                extra_modules=("mod_client_state", "mod_push_keepalive"),
                name=f"ejabberd[{scenario}]")

    # --- set up --------------------------------------------------------------------------
    def setup(self):
        self.server.start()
        self.tap = ComponentTap(self.server.component_port).start()
        if self.postgres_wanted:
            self.postgres = PrivatePostgres()
            self.postgres.start()
        a = self.new_pushgate("a", when_replaced="exit" if self.replaced_by_kick() else None)
        self.endpoint = WebPushEndpoint(vapid_public_key=a.vapid_public,
                                        vapid_subject=VAPID_SUBJECT).start()
        self.spawn(a)
        self.server.wait_component(PUSH_JID, since=0, timeout=20, alive=a.exited)
        self.devices = {}
        for user in PHONES:
            c = self.connect(user)
            self.devices[user] = self.endpoint.new_device()
            push_offline(c, self.devices[user])
        self.bob = self.connect("bob")

    def replaced_by_kick(self) -> bool:
        return self.scenario == "rolling" and self.args.server == "prosody"

    def connect(self, user: str) -> Client:
        c = Client(self.runner, f"{user}@localhost", PASSWORD, self.server.c2s_port).connect()
        self.clients.append(c)
        return c

    def new_pushgate(self, name: str, when_replaced: str | None = None) -> Pushgate:
        """An instance behind the tap with its own /metrics; the second one shares the first
        one's database and VAPID key, as a new release on the same host would."""
        http_port = free_port()
        pg = Pushgate(Via(self.server, self.tap.port), PUSH_JID, SECRET, binary=self.args.binary,
                      name=f"pushgate[{self.scenario}-{name}]",
                      extra_toml=f'[http]\nlisten = "127.0.0.1:{http_port}"')
        if self.pushgates:
            first = self.pushgates[0]
            pg.data_dir, pg.vapid_key_path, pg.vapid_key = (first.data_dir, first.vapid_key_path,
                                                            first.vapid_key)
            pg.write_config()
        self.env[pg] = {"PUSHGATE_COMPONENT__PUBLISH_TIMEOUT_SECS": str(PUBLISH_TIMEOUT),
                        "PUSHGATE_COMPONENT__MAX_RECONNECT_DELAY_SECS": "30"}
        if when_replaced:
            self.env[pg]["PUSHGATE_COMPONENT__WHEN_REPLACED"] = when_replaced
        if self.postgres is not None:
            self.env[pg]["PUSHGATE_STORAGE__URL"] = self.postgres.url
        self.pushgates.append(pg)
        self.watches.append(ExpiredWatch(http_port))
        return pg

    def spawn(self, pg: Pushgate):
        with environment(**self.env[pg]):
            pg.spawn()

    # --- the load and the faults ---------------------------------------------------------
    def drive(self, events: list[tuple[float, object]], length: float):
        """Sends message slot i at i/rate seconds while bob is connected, running each event
        at its time; slots that pass while bob is away or an event blocks are not sent."""
        rate = self.args.rate
        self.offered: list[tuple[str, str, float]] = []
        self.slots = int(length * rate)
        events = sorted(events, key=lambda e: e[0])
        self.t0 = time.monotonic()
        i = 0
        while i < self.slots:
            while events and time.monotonic() - self.t0 >= events[0][0]:
                events.pop(0)[1]()
                i = max(i, int((time.monotonic() - self.t0) * rate))
            if self.bob is not None:
                user, body = PHONES[i % len(PHONES)], f"fault {i}"
                self.bob.send_message(f"{user}@localhost", body)
                self.offered.append((user, body, time.monotonic()))
            i += 1
            time.sleep(max(0.0, self.t0 + i / rate - time.monotonic()))
        for t, fn in events:  # what is due at the very end (a recovery)
            fn()

    def set_provider(self, status: int):
        for dev in self.devices.values():
            self.endpoint.set_status(dev, status)

    def at(self, fraction: float) -> float:
        return self.args.seconds * fraction

    def run(self):
        s = self.scenario
        third = self.at(1 / 3)
        begin, end = self.fault_begins, self.fault_ends
        if s == "outage":
            self.drive([(third, begin(lambda: self.set_provider(503))),
                        (2 * third, end(lambda: self.set_provider(201)))], self.args.seconds)
        elif s == "xmpp-restart":
            down = self.args.down or 10
            self.drive([(third, begin(self.stop_server)), (third + down, end(self.start_server))],
                       max(self.args.seconds, 2 * third + down))
        elif s == "pg-restart":
            down = self.args.down or 30
            self.drive([(third, begin(self.postgres.stop)), (third + down, end(self.postgres.start))],
                       max(self.args.seconds, 2 * third + down))
        elif s == "sigkill":
            self.drive([(third, begin(lambda: self.set_provider(503))),
                        (self.at(1 / 2), self.kill_and_restart),
                        (2 * third, end(lambda: self.set_provider(201)))], self.args.seconds)
        elif s == "rolling":
            events = [(self.at(1 / 2), begin(self.start_second))]
            if self.args.server == "ejabberd":
                events.append((self.at(1 / 2) + 5, self.stop_first))
            self.drive(events, self.args.seconds)
        if self.fault[1] is None:
            self.fault[1] = time.monotonic()
        self.set_provider(201)
        self.settle()

    def fault_begins(self, fn):
        def go():
            self.fault[0] = time.monotonic()
            fn()
        return go

    def fault_ends(self, fn):
        def go():
            fn()
            self.fault[1] = time.monotonic()
        return go

    def in_fault(self, t: float) -> bool:
        return self.fault[0] <= t <= self.fault[1]

    def stop_server(self):
        # bob closes cleanly first, so everything he sent has been routed
        self.bob.disconnect(timeout=5)
        self.clients.remove(self.bob)
        self.bob = None
        self.tap.pause()
        self.server.stop(cleanup=False)

    def start_server(self):
        self.server.start()
        self.tap.resume()
        self.t_ready = time.monotonic()
        self.bob = self.connect("bob")
        self.t_bob = time.monotonic()

    def kill_and_restart(self):
        a = self.pushgates[0]
        a.kill(signal.SIGKILL)
        self.t_kill = time.monotonic()
        self.spawn(a)

    def start_second(self):
        self.old = self.pushgates[0].proc  # its exit status is a figure
        self.spawn(self.new_pushgate("b"))

    def stop_first(self):
        # SIGTERM drains within shutdown_timeout_secs: keep sending meanwhile
        threading.Thread(target=self.pushgates[0].stop, daemon=True).start()

    def delivered(self) -> collections.Counter:
        got = collections.Counter()
        for user, dev in self.devices.items():
            for d in self.endpoint.deliveries_for(dev):
                if d.status == 201 and isinstance(d.payload, dict):
                    got[(user, d.payload.get("body"))] += 1
        return got

    def settle(self):
        """Up to --grace seconds for late deliveries and answers."""
        deadline = time.monotonic() + self.args.grace
        while time.monotonic() < deadline:
            got = self.delivered()
            if (all((u, b) in got for u, b, _ in self.offered)
                    and all(p.answered_at for p in self.tap.snapshot())):
                return
            time.sleep(0.5)

    # --- figures -------------------------------------------------------------------------
    def figures(self) -> dict[str, object]:
        got = self.delivered()
        pubs = self.tap.snapshot()
        answered = [p for p in pubs if p.answered_at is not None]
        latencies = sorted(p.latency for p in answered)
        errors = collections.Counter(p.condition or "?" for p in answered if p.type == "error")
        result_bodies = {p.body for p in answered if p.type == "result"}
        lost = [(u, b) for u, b, _ in self.offered if (u, b) not in got]
        during = [(u, b) for u, b, t in self.offered if self.in_fault(t)]
        in_fault = sorted(p.latency for p in answered if self.in_fault(p.sent_at))
        f: dict[str, object] = {
            "offered": len(self.offered),
            "offered during the fault": len(during),
            "delivered": len(self.offered) - len(lost),
            "expired": sum(w.total() for w in self.watches),
            "lost": len(lost),
            "lost of those offered during the fault": sum(1 for x in during if x not in got),
            "answered result, not pushed": sum(1 for _, b in lost if b in result_bodies),
            "pushed more than once": sum(1 for u, b, _ in self.offered if got[(u, b)] > 1),
            "registrations removed (dead token)": sum(
                len(pg.log.find_all(DEAD_TOKEN)) for pg in self.pushgates),
            "registrations disabled by the server": len(self.server.log.find_all(
                PROSODY_DISABLED if self.args.server == "prosody" else EJABBERD_DISABLED)),
            "publishes that reached pushgate": len(pubs),
            "publishes answered with an error": sum(errors.values()),
            "  errors by type:condition": ", ".join(f"{c} {n}" for c, n in errors.most_common()) or "-",
            "publishes never answered": len(pubs) - len(answered),
            "largest reply latency (s)": f"{latencies[-1]:.2f}" if latencies else "-",
            "median reply latency (s)": (f"{statistics.median(latencies):.3f}"
                                         if latencies else "-"),
            "median reply latency in the fault (s)": (f"{statistics.median(in_fault):.3f}"
                                                      if in_fault else "-"),
            f"replies after {PUBLISH_TIMEOUT} s (publish_timeout_secs)": sum(
                1 for x in latencies if x > PUBLISH_TIMEOUT),
            f"replies after {EJABBERD_IQ_TIMEOUT} s (ejabberd's IQ timeout)": sum(
                1 for x in latencies if x > EJABBERD_IQ_TIMEOUT),
        }
        if self.args.server == "prosody":
            got_errors = collections.Counter(
                f"{m.group(1)}:{m.group(2)}" for m in self.server.log.find_all(PROSODY_ERROR))
            f["errors Prosody got for publishes"] = ", ".join(
                f"{c} {n}" for c, n in got_errors.most_common()) or "0"
        f["not sent (bob away or the sender blocked)"] = self.slots - len(self.offered)
        if self.scenario == "xmpp-restart":
            bound = self.tap.bound_after(self.t_ready)
            f["pushgate bound after the server was ready (s)"] = (
                f"{bound - self.t_ready:.2f}" if bound else "never")
            f["sent before pushgate bound"] = sum(
                1 for _, _, t in self.offered if t >= self.t_bob and (bound is None or t < bound))
        if self.scenario == "sigkill":
            before = [p for p in answered if p.type == "result" and p.answered_at < self.t_kill
                      and p.sent_at >= self.fault[0]]
            bodies = {b for _, b in got}
            f["answered result in the outage before the kill"] = len(before)
            f["  of them pushed by the end"] = sum(1 for p in before if p.body in bodies)
            f["publishes unanswered at the kill"] = sum(
                1 for p in pubs if p.sent_at < self.t_kill
                and (p.answered_at is None or p.answered_at > self.t_kill))
        if self.scenario == "rolling":
            try:
                code = self.old.wait(timeout=15)
            except subprocess.TimeoutExpired:
                code = "still running"
            f["old instance's exit status"] = code
            f["new instance connected"] = bool(self.pushgates[1].log.find_all(CONNECTED))
        return f

    def close(self):
        for c in self.clients:
            try:
                c.disconnect(timeout=2)
            except Exception:  # noqa: BLE001
                c.abort()
        for w in self.watches:
            w.total()
        for pg in self.pushgates:
            pg.cleanup()
        if self.tap is not None:
            self.tap.stop()
        self.server.stop()
        if self.endpoint is not None:
            self.endpoint.stop()
        if self.postgres is not None:
            self.postgres.cleanup()
        self.runner.stop()


def run_scenario(args, scenario: str) -> dict[str, object]:
    r = Run(args, scenario)
    try:
        r.setup()
        r.run()
        return r.figures()
    finally:
        r.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.environ.get("PUSHGATE_BIN", "target/release/pushgate"))
    ap.add_argument("--scenario", choices=SCENARIOS + ("all",), default="outage")
    ap.add_argument("--server", choices=("prosody", "ejabberd"), default="prosody")
    ap.add_argument("--rate", type=float, default=20.0, help="messages per second")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the run")
    ap.add_argument("--grace", type=float, default=15.0,
                    help="seconds after the load for late deliveries and answers")
    ap.add_argument("--down", type=float, default=None,
                    help="seconds the XMPP server (default 10) or PostgreSQL (30) is down")
    ap.add_argument("--postgres", action="store_true",
                    help="pushgate on a private PostgreSQL in every scenario, not SQLite")
    args = ap.parse_args()
    args.binary = os.path.abspath(args.binary)
    scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
    results = {}
    for s in scenarios:
        print(f"fault benchmark: {s} on {args.server}, {args.binary}, {args.rate:g}/s for "
              f"{args.seconds:g} s, grace {args.grace:g} s", flush=True)
        results[s] = run_scenario(args, s)
        for key, value in results[s].items():
            print(f"  {key:56} {value}", flush=True)
    rows = list(dict.fromkeys(k for f in results.values() for k in f))
    print(f"\n| figure ({args.server}) | " + " | ".join(results) + " |")
    print("| --- |" + " --- |" * len(results))
    for row in rows:
        cells = [str(results[s].get(row, "")) for s in results]
        print(f"| {row.strip()} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
