#!/usr/bin/env python3
"""The fault benchmark (not a test): what pushgate loses when things fail under steady load.

Runs the end-to-end harness (tests/e2e: a real Prosody 0.12, slixmpp phones, a local WebPush
push service that decrypts what it gets) against a pushgate binary, and prints what was offered,
delivered, lost and deregistered. Scenario so far:

  outage   bob sends messages round-robin to 8 sleeping phones at --rate per second for
           --seconds; the push service answers 503 for the middle third of the run. A phone
           that should have woken for a message during the outage is a lost notification
           unless pushgate delivers it after the recovery.

    scripts/fault_bench.py --binary target/release/pushgate [--rate 20] [--seconds 30]

Needs what scripts/test installs (Prosody, the Python packages). docs/performance.md has the
figures and the command that made them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))

from clients import AsyncRunner, Client  # noqa: E402
from conftest import LOCAL_USERS, PASSWORD, Stack  # noqa: E402
from pushgate_proc import VAPID_SUBJECT  # noqa: E402
from scenario import push_offline  # noqa: E402
from webpush_endpoint import WebPushEndpoint  # noqa: E402

PHONES = [u for u in LOCAL_USERS if u != "bob"][:8]


def outage(binary: str, rate: float, seconds: float) -> dict:
    os.environ["PUSHGATE_BIN"] = binary
    runner = AsyncRunner()
    stack = Stack("fault-outage")
    endpoint = None
    clients: list[Client] = []
    try:
        stack.start_prosody()
        pg = stack.make_pushgate()
        endpoint = WebPushEndpoint(vapid_public_key=pg.vapid_public,
                                   vapid_subject=VAPID_SUBJECT).start()
        pg.start()
        devices = {}
        for user in PHONES:
            c = Client(runner, f"{user}@localhost", PASSWORD, stack.prosody.c2s_port).connect()
            clients.append(c)
            devices[user] = endpoint.new_device()
            push_offline(c, devices[user])
        bob = Client(runner, "bob@localhost", PASSWORD, stack.prosody.c2s_port).connect()
        clients.append(bob)

        since = pg.log.offset()
        since_prosody = stack.prosody.log.offset()
        offered = []
        start = time.monotonic()
        down = False
        i = 0
        while (now := time.monotonic() - start) < seconds:
            want_down = seconds / 3 <= now < 2 * seconds / 3
            if want_down != down:
                for dev in devices.values():
                    endpoint.set_status(dev, 503 if want_down else 201)
                down = want_down
            user = PHONES[i % len(PHONES)]
            body = f"fault {i}"
            bob.send_message(f"{user}@localhost", body)
            offered.append((user, body, down))
            i += 1
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        for dev in devices.values():
            endpoint.set_status(dev, 201)
        time.sleep(10)  # stragglers, and any delivery after the recovery

        delivered = set()
        for user, dev in devices.items():
            for d in endpoint.deliveries_for(dev):
                if d.status == 201 and isinstance(d.payload, dict):
                    delivered.add((user, d.payload.get("body")))
        during = [o for o in offered if o[2]]
        outcomes = pg.outcomes(since)
        return {
            "offered": len(offered),
            "offered during the outage": len(during),
            "delivered": sum(1 for u, b, _ in offered if (u, b) in delivered),
            "delivered of those during the outage": sum(1 for u, b, _ in during
                                                        if (u, b) in delivered),
            "lost": sum(1 for u, b, _ in offered if (u, b) not in delivered),
            "publishes answered wait": outcomes.count("transient"),
            "registrations removed (dead token)": outcomes.count("dead_token"),
            "registrations disabled by Prosody": len(
                stack.prosody.log.find_all("Disabling push notifications", since_prosody)),
        }
    finally:
        for c in clients:
            try:
                c.disconnect(timeout=2)
            except Exception:  # noqa: BLE001
                c.abort()
        stack.close()
        if endpoint is not None:
            endpoint.stop()
        runner.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.environ.get("PUSHGATE_BIN", "target/release/pushgate"))
    ap.add_argument("--rate", type=float, default=20.0, help="messages per second")
    ap.add_argument("--seconds", type=float, default=30.0, help="length of the run")
    args = ap.parse_args()
    print(f"fault benchmark: outage, {args.binary}, {args.rate:g}/s for {args.seconds:g} s "
          f"(push service answering 503 for the middle third)")
    for key, value in outage(os.path.abspath(args.binary), args.rate, args.seconds).items():
        print(f"  {key:40} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
