#!/usr/bin/env python3
"""The attacks of issue 11 on the XMPP side, run against a pushgate binary through a real
Prosody, with figures (scripts/attack/slowloris.py does the HTTP side).

Each attack gets a fresh Prosody + pushgate (tests/e2e's Stack; info-level Prosody log) and
prints one `ATTACK <name> key=value …` line. The figures are what an operator would see: is the
process alive, did the component stream drop, how long healthy devices wait, how much memory
and how many sockets pushgate holds, what a flood of registrations leaves in the database.

    python3 scripts/attack/xmpp.py --binary target/release/pushgate             # all of them
    python3 scripts/attack/xmpp.py --binary target/release/pushgate --only tarpit,forms

| attack | what |
|---|---|
| deep | a user sends the component a message nested 14,000 deep (~98 KB), 20 times, 1 s apart |
| attribute | 20 messages with one 9,000-byte attribute, 1 s apart |
| tarpit | 100 publishes/s to a push service that never answers, 300/s to healthy ones, 30 s |
| quota | one account of a foreign domain sends 20,000 register-device commands |
| fields | 200 KB device-second-token, p2 device-id and muc (Prosody's c2s limit raised) |
| forms | one form of 100,000 fields, then 200 forms of 5,000 fields while healthy pushes flow |

Loopback only; every wait is bounded; processes and temp dirs are cleaned up on the way out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

from clients import AsyncRunner, Client  # noqa: E402
from conftest import DOMAIN, OTHER_DOMAIN, PASSWORD, PUSH_JID, Stack  # noqa: E402
from prosody import COMPONENT_AUTH_LINE  # noqa: E402
from pushgate_proc import VAPID_SUBJECT  # noqa: E402
from scenario import push_offline  # noqa: E402
from tarpit import Tarpit  # noqa: E402
from webpush_endpoint import Device, WebPushEndpoint  # noqa: E402

# Prosody logs each component authentication at info level.
CONNECTED = re.compile(re.escape(COMPONENT_AUTH_LINE))
HEALTHY_USERS = tuple(f"user{i}" for i in range(10))
ALL_USERS = ("alice", "bob", "carol") + HEALTHY_USERS
NS_COMMANDS = "http://jabber.org/protocol/commands"


def vm(pid: int, key: str) -> float:
    """A /proc/<pid>/status field in MB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith(key + ":"))
    return int(kb) / 1024


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def report(name: str, **figures):
    print("ATTACK " + name + " " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)


class Rig:
    """Prosody + pushgate + a WebPush endpoint + clients, torn down on exit."""

    def __init__(self, name: str, prosody_options: dict[str, str] | None = None,
                 pushgate_toml: str = ""):
        self.stack = Stack(name, users=ALL_USERS, pushgate_toml=pushgate_toml)
        srv = self.stack.prosody
        srv.global_options.update({
            "log": f'{{ info = "{srv.log.path}" }}',
            "storage_archive_item_limit": "100000",
            "push_notification_with_body": "true",
        })
        srv.global_options.update(prosody_options or {})
        self.runner = AsyncRunner()
        self.endpoint = WebPushEndpoint(vapid_subject=VAPID_SUBJECT)
        self.endpoint.server.socket.listen(1024)
        self.clients: list[Client] = []

    def __enter__(self):
        self.endpoint.start()
        self.stack.start_prosody()
        pg = self.stack.make_pushgate()
        pg.start()
        self.endpoint.expected_vapid_key = pg.vapid_public
        return self

    def __exit__(self, *exc):
        for c in self.clients:
            c.abort()
        self.runner.stop()
        self.stack.close()
        self.endpoint.stop()

    @property
    def pid(self) -> int:
        return self.stack.pushgate.proc.pid

    def connect(self, user: str, host: str = DOMAIN) -> Client:
        c = Client(self.runner, f"{user}@{host}", PASSWORD, self.stack.prosody.c2s_port).connect()
        self.clients.append(c)
        return c

    def enable(self, user: str, device: Device) -> str:
        c = self.connect(user)
        self.clients.remove(c)
        return push_offline(c, device)

    def reconnects(self) -> int:
        return len(self.stack.prosody.log.find_all(CONNECTED)) - 1

    def alive(self) -> bool:
        return self.stack.pushgate.running()

    def raw(self, client: Client, chunks: list[str], ping: bool = True, timeout: float = 120):
        """Writes pre-serialised XML, keeping slixmpp's buffer small; then a round trip."""
        async def _send():
            x = client.xmpp
            for chunk in chunks:
                while x.transport.get_write_buffer_size() > 256 * 1024:
                    await asyncio.sleep(0.001)
                x.send_raw(chunk)
            if ping:
                await x.plugin["xep_0199"].send_ping(x.boundjid.domain, timeout=timeout)
        self.runner.run(_send(), timeout + 10)


def count_replies(client: Client, prefix: str) -> dict[str, int]:
    """Counts iq results and errors to ids starting with `prefix`, by type/condition."""
    counts: dict[str, int] = {}

    def on_iq(iq):
        if not str(iq["id"]).startswith(prefix) or iq["type"] not in ("result", "error"):
            return
        key = "result"
        if iq["type"] == "error":
            err = iq.xml.find("{*}error")
            cond = next((c.tag.split("}")[1] for c in err if "xmpp-stanzas" in c.tag
                         and not c.tag.endswith("text")), "?") if err is not None else "?"
            key = f"error:{cond}"
        counts[key] = counts.get(key, 0) + 1

    from slixmpp.xmlstream.handler import Callback
    from slixmpp.xmlstream.matcher import MatchXPath
    client.xmpp.register_handler(Callback(f"count-{prefix}", MatchXPath("{jabber:client}iq"),
                                          on_iq))
    return counts


def wait_until(fn, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.05)
    return fn()


# --- the attacks -------------------------------------------------------------------------------
ERROR_CONDITIONS = ("policy-violation", "service-unavailable", "remote-server-timeout",
                    "recipient-unavailable", "internal-server-error", "bad-request")


def conditions(client: Client) -> dict[str, int]:
    """Error replies the client got, by condition: pushgate's own refusals are
    `policy-violation`; Prosody bounces what it cannot route to an absent component."""
    out: dict[str, int] = {}
    for m in list(client.error_messages):
        err = m.xml.find("{*}error")
        cond = next((c.tag.split("}")[1] for c in (err if err is not None else [])
                     if c.tag.endswith(tuple(ERROR_CONDITIONS))), "?")
        out[cond] = out.get(cond, 0) + 1
    return out



def one_per_second(rig: Rig, name: str, stanza):
    """Sends `stanza(i)` once a second, 20 times (an attacker repeats as soon as the component
    is back), then reports what happened."""
    mallory = rig.connect("mallory", OTHER_DOMAIN)
    for i in range(20):
        rig.raw(mallory, [stanza(i)])
        time.sleep(1)
    wait_until(lambda: len(mallory.error_messages) >= 20, 5)
    report(name, stanzas=20, alive=rig.alive(), reconnects=rig.reconnects(),
           **{k.replace("-", "_"): v for k, v in sorted(conditions(mallory).items())})


def attack_deep(rig: Rig):
    deep = "<a>" * 14_000 + "</a>" * 14_000
    one_per_second(rig, "deep", lambda i: f"<message to='{PUSH_JID}' id='deep{i}'>{deep}</message>")


def attack_attribute(rig: Rig):
    one_per_second(rig, "attribute",
                   lambda i: f"<message to='{PUSH_JID}' id='attr{i}' x='{'A' * 9000}'/>")


def attack_tarpit(rig: Rig, seconds: int = 30, tarpit_rate: int = 100, healthy_rate: int = 300):
    tarpit = Tarpit()
    try:
        rig.enable("carol", Device(path="/push/tarpit", url=tarpit.url))
        devices = {}
        for user in HEALTHY_USERS:  # three devices each: one message, three publishes
            for _ in range(3):
                d = rig.endpoint.new_device(encrypted=False)
                rig.enable(user, d)
                devices[d.path] = user
        sender = rig.connect("bob")
        sent_at: dict[str, float] = {}
        ticks = seconds * 10
        per_tick_tarpit = tarpit_rate // 10
        per_tick_healthy = healthy_rate // 30  # messages; ×3 devices
        seq = 0
        t0 = time.monotonic()
        for tick in range(ticks):
            chunk = []
            for _ in range(per_tick_tarpit):
                chunk.append(f"<message to='carol@{DOMAIN}' type='chat'><body>t</body></message>")
            now = time.time()
            for _ in range(per_tick_healthy):
                user = HEALTHY_USERS[seq % len(HEALTHY_USERS)]
                tag = f"h-{seq}"
                sent_at[tag] = now
                chunk.append(f"<message to='{user}@{DOMAIN}' type='chat'><body>{tag}</body>"
                             "</message>")
                seq += 1
            rig.raw(sender, ["".join(chunk)], ping=False)
            next_tick = t0 + (tick + 1) / 10
            time.sleep(max(0.0, next_tick - time.monotonic()))
        expected = len(sent_at) * 3
        wait_until(lambda: rig.endpoint.count() >= expected, 60)
        latencies = []
        for d in rig.endpoint.deliveries:
            body = d.payload.get("body") if isinstance(d.payload, dict) else None
            if body in sent_at:
                latencies.append(d.received_at - sent_at[body])
        most_open = tarpit.most_open
        # The push service recovers: it answers from now on. What does pushgate keep open?
        tarpit.recover()
        rig.raw(sender, [f"<message to='carol@{DOMAIN}' type='chat'><body>r</body></message>"
                         for _ in range(20)])
        time.sleep(10)
        report("tarpit", seconds=seconds, tarpit_per_s=tarpit_rate, healthy_per_s=healthy_rate,
               healthy_expected=expected, healthy_delivered=len(latencies),
               p50_s=f"{pct(latencies, 50):.3f}", p99_s=f"{pct(latencies, 99):.3f}",
               max_s=f"{max(latencies, default=float('nan')):.3f}",
               over_32s=sum(1 for x in latencies if x > 32),
               tarpit_connections_max=most_open, tarpit_connections_total=tarpit.accepted,
               sockets_after_recovery=tarpit.open_now(),
               rss_mb=f"{vm(rig.pid, 'VmRSS'):.0f}", hwm_mb=f"{vm(rig.pid, 'VmHWM'):.0f}",
               alive=rig.alive(), reconnects=rig.reconnects())
    finally:
        tarpit.stop()


def register_chunks(prefix: str, n: int, field: str = "device-token",
                    value=lambda i: f"tok{i:06d}") -> list[str]:
    out = []
    for i in range(n):
        out.append(
            f"<iq type='set' to='{PUSH_JID}' id='{prefix}{i}'><command xmlns='{NS_COMMANDS}' "
            "node='register-device' action='execute'><x xmlns='jabber:x:data' type='submit'>"
            "<field var='provider'><value>webpush</value></field>"
            f"<field var='device-token'><value>http://127.0.0.1:9/push/{i}</value></field>"
            + (f"<field var='{field}'><value>{value(i)}</value></field>"
               if field != "device-token" else "")
            + "</x></command></iq>")
    return ["".join(out[i:i + 50]) for i in range(0, n, 50)]


def attack_quota(rig: Rig, n: int = 20_000):
    mallory = rig.connect("mallory", OTHER_DOMAIN)
    counts = count_replies(mallory, "q")
    t0 = time.monotonic()
    rig.raw(mallory, register_chunks("q", n), timeout=300)
    wait_until(lambda: sum(counts.values()) >= n, 300)
    elapsed = time.monotonic() - t0
    db = os.path.join(rig.stack.pushgate.data_dir)
    size = sum(os.path.getsize(os.path.join(db, f)) for f in os.listdir(db))
    report("quota", commands=n, seconds=f"{elapsed:.2f}", replies=sum(counts.values()),
           **{k.replace(":", "_"): v for k, v in sorted(counts.items())},
           db_mb=f"{size / 1e6:.2f}", alive=rig.alive())


def attack_fields(rig: Rig, size: int = 200_000):
    alice = rig.connect("alice")
    counts = count_replies(alice, "f")
    big = "A" * size
    stanzas = [
        f"<iq type='set' to='{PUSH_JID}' id='f1'><command xmlns='{NS_COMMANDS}' "
        "node='register-device' action='execute'><x xmlns='jabber:x:data' type='submit'>"
        "<field var='provider'><value>webpush</value></field><field var='device-token'>"
        f"<value>http://127.0.0.1:9/push/x</value></field><field var='device-second-token'>"
        f"<value>{big}</value></field></x></command></iq>",
        f"<iq type='set' to='{PUSH_JID}' id='f2'><command xmlns='{NS_COMMANDS}' "
        "node='register-push-webpush' action='execute'><x xmlns='jabber:x:data' "
        "type='submit'><field var='token'><value>http://127.0.0.1:9/push/y</value></field>"
        f"<field var='device-id'><value>{big}</value></field></x></command></iq>",
        f"<iq type='set' to='{PUSH_JID}' id='f3'><command xmlns='{NS_COMMANDS}' "
        "node='register-push-webpush' action='execute'><x xmlns='jabber:x:data' "
        "type='submit'><field var='token'><value>http://127.0.0.1:9/push/z</value></field>"
        f"<field var='device-id'><value>d</value></field><field var='muc'>"
        f"<value>{'r' * size}@conference.localhost</value></field></x></command></iq>",
    ]
    rig.raw(alice, stanzas)
    wait_until(lambda: sum(counts.values()) >= 3, 15)
    db = rig.stack.pushgate.data_dir
    size_db = sum(os.path.getsize(os.path.join(db, f)) for f in os.listdir(db))
    report("fields", field_bytes=size, **{k.replace(":", "_"): v for k, v in counts.items()},
           db_kb=f"{size_db / 1e3:.0f}", alive=rig.alive(), reconnects=rig.reconnects())


def form(prefix: str, i: int, fields: int) -> str:
    body = "".join(f"<field var='f{j}'><value>v</value></field>" for j in range(fields))
    return (f"<iq type='set' to='{PUSH_JID}' id='{prefix}{i}'><command xmlns='{NS_COMMANDS}' "
            f"node='register-device' action='execute'><x xmlns='jabber:x:data' type='submit'>"
            f"{body}</x></command></iq>")


def attack_forms(rig: Rig):
    mallory = rig.connect("mallory", OTHER_DOMAIN)
    counts = count_replies(mallory, "g")
    rss0 = vm(rig.pid, "VmRSS")
    t0 = time.monotonic()
    rig.raw(mallory, [form("g", 0, 100_000)])
    wait_until(lambda: sum(counts.values()) >= 1, 60)
    one_form_s = time.monotonic() - t0
    rss_growth = vm(rig.pid, "VmHWM") - rss0
    # 200 forms of 5,000 fields while healthy pushes flow
    devices = []
    for user in HEALTHY_USERS[:3]:
        d = rig.endpoint.new_device(encrypted=False)
        rig.enable(user, d)
        devices.append((user, d))
    sender = rig.connect("bob")
    big = [form("g", i, 5000) for i in range(1, 201)]
    sent_at: dict[str, float] = {}
    t_start = time.monotonic()
    for k in range(20):
        rig.raw(mallory, big[k * 10:(k + 1) * 10], ping=False)
        for user, _ in devices:
            tag = f"h-{k}-{user}"
            sent_at[tag] = time.time()
            rig.raw(sender, [f"<message to='{user}@{DOMAIN}' type='chat'><body>{tag}</body>"
                             "</message>"], ping=False)
        time.sleep(0.1)
    wait_until(lambda: rig.endpoint.count() >= len(sent_at), 60)
    wait_until(lambda: sum(counts.values()) >= 201, 60)
    lat = [d.received_at - sent_at[d.payload["body"]] for d in rig.endpoint.deliveries
           if isinstance(d.payload, dict) and d.payload.get("body") in sent_at]
    report("forms", one_form_fields=100_000, one_form_s=f"{one_form_s:.3f}",
           rss_growth_mb=f"{rss_growth:.0f}", big_forms=200,
           forms_answered=sum(counts.values()) - 1,
           healthy_p50_ms=f"{1000 * statistics.median(lat) if lat else float('nan'):.1f}",
           healthy_max_ms=f"{1000 * max(lat, default=float('nan')):.1f}",
           healthy_delivered=f"{len(lat)}/{len(sent_at)}",
           flood_s=f"{time.monotonic() - t_start:.1f}",
           **{k.replace(":", "_"): v for k, v in sorted(counts.items())},
           alive=rig.alive(), reconnects=rig.reconnects())


ATTACKS = {
    "deep": (attack_deep, {}),
    "attribute": (attack_attribute, {}),
    "tarpit": (attack_tarpit, {}),
    "quota": (attack_quota, {}),
    # Prosody 0.12 refuses c2s stanzas over 256 KiB; the big-field and big-form attacks need more.
    "fields": (attack_fields, {"c2s_stanza_size_limit": "16*1024*1024"}),
    "forms": (attack_forms, {"c2s_stanza_size_limit": "16*1024*1024"}),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(REPO, "target", "release", "pushgate"))
    ap.add_argument("--only", default=",".join(ATTACKS))
    args = ap.parse_args()
    os.environ["PUSHGATE_BIN"] = os.path.abspath(args.binary)
    os.environ.setdefault("PUSHGATE_E2E_RUST_LOG", "warn")
    for name in args.only.split(","):
        fn, prosody_options = ATTACKS[name]
        with Rig(name, prosody_options) as rig:
            try:
                fn(rig)
            except Exception as e:  # one attack's failure is a figure too
                report(name, error=repr(e).replace(" ", "_")[:200], alive=rig.alive(),
                       reconnects=rig.reconnects())
    return 0


if __name__ == "__main__":
    sys.exit(main())
