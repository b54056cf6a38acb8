"""The `scripts/run-local --demo` walk-through: one push, end to end, explained as it happens.

Run by scripts/run-local once Prosody and pushgate are up. It starts a stand-in WebPush /
UnifiedPush push service on loopback, registers a device for alice through pushgate's real
XEP-0050 ad-hoc command, enables XEP-0357 push for it at alice's server, takes alice offline,
has bob send her a message and prints the push that arrives, decrypted (RFC 8291) and with its
VAPID signature (RFC 8292) checked. Then it keeps printing every push to that device until it
gets SIGTERM or SIGINT.

The XMPP client and the push service are the end-to-end suite's own (tests/e2e/clients.py,
tests/e2e/webpush_endpoint.py). Exit status: 0 when stopped by a signal, 1 when a step failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import textwrap
import time
from typing import NoReturn

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))

from cryptography.hazmat.primitives import serialization  # noqa: E402

from clients import AsyncRunner, Client, XmppError, submit_form  # noqa: E402
from webpush_endpoint import Delivery, Device, WebPushEndpoint, public_bytes  # noqa: E402

DOMAIN = "localhost"
PASSWORD = "password"
# A provider id of run-local's config. The device is registered in Tigase's `register-device`
# dialect: pushgate's payload then carries sender and body (the p2 dialect's is content-free by
# contract), which is what makes the demo readable.
PROVIDER = "webpush"
MESSAGE = "Hi alice, this is bob. Did the push arrive?"
PUSH_TIMEOUT = 20.0
# The line scripts/run-local's test waits for; the decrypted payload follows on its own line.
RECEIVED = "==> push received"


class DemoFailed(Exception):
    """A step did not do what it should; the message says which."""


def say(text: str = "", indent: int = 0, wrap: bool = True):
    """Print now (our stdout is a pipe under run-local), wrapped for a terminal unless the line
    is data to copy (keys, JSON)."""
    pad = " " * indent
    if wrap and text:
        text = textwrap.fill(text, width=96, initial_indent=pad, subsequent_indent=pad + "    ",
                             break_long_words=False, break_on_hyphens=False)
    else:
        text = pad + text
    print(text, flush=True)


def step(n: int, text: str):
    say(f"[{n}] {text}")


def show_delivery(d: Delivery):
    """What the push service received, the way a phone would see it after decryption."""
    say(f"{RECEIVED}: POST {d.path} answered {d.status}")
    headers = {"urgency": "Urgency", "ttl": "TTL", "topic": "Topic",
               "content-encoding": "Content-Encoding"}
    for key, name in headers.items():
        if key in d.headers:
            say(f"{name + ':':18} {d.headers[key]}", 4)
    if d.vapid_error is None:
        claims = d.vapid_claims or {}
        say(f"{'VAPID:':18} valid ES256 signature by pushgate's key, sub {claims.get('sub')},"
            f" aud {claims.get('aud')}", 4)
    else:
        say(f"{'VAPID:':18} INVALID: {d.vapid_error}", 4)
    if d.decrypt_error is None:
        say(f"decrypted payload: {json.dumps(d.payload, ensure_ascii=False)}", 4, wrap=False)
        if isinstance(d.payload, dict) and d.payload.get("body"):
            say(f"A phone would now show: \"{d.payload.get('sender')}: {d.payload['body']}\"", 4)
    else:
        say(f"not readable: {d.decrypt_error} ({len(d.body)} bytes)", 4)


def forget_previous_device(alice: Client, service: str, state_file: str):
    """Unregister the device an earlier demo run left in pushgate's data dir: its push service
    is gone, and each run would otherwise use up one of alice's registrations."""
    try:
        with open(state_file) as f:
            token = f.read().strip()
    except FileNotFoundError:
        return
    if token:
        fields = {"provider": PROVIDER, "device-token": token}
        try:
            alice.command(service, "unregister-device", form=submit_form(fields))
            say("(removed the device the previous demo run registered: "
                "ad-hoc command unregister-device)", 4)
        except XmppError:
            pass  # already gone, e.g. a fresh data dir
    os.remove(state_file)


def register(alice: Client, service: str, device: Device) -> str:
    fields = {"provider": PROVIDER, "device-token": device.url, "p256dh": device.p256dh,
              "auth": device.auth_b64}
    for name, value in fields.items():
        say(f"{name:13} {value}", 8, wrap=False)
    try:
        r = alice.command(service, "register-device", form=submit_form(fields))
    except XmppError as e:
        raise DemoFailed(f"register-device was refused: {e}") from None
    node = r.form.value("node") if r.form else None
    if r.status != "completed" or not node:
        raise DemoFailed(f"register-device gave no node: {r.xml}")
    return node


def wait_for_push(endpoint: WebPushEndpoint, device: Device, seen: int,
                  timeout: float) -> list[Delivery]:
    """The device's deliveries after the first `seen`, once there is at least one."""
    deadline = time.monotonic() + timeout
    while True:
        got = endpoint.deliveries_for(device)[seen:]
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def demo(args, runner: AsyncRunner, endpoint: WebPushEndpoint) -> Device:
    service = args.service
    say("pushgate demo: a push from bob's message to alice's (stand-in) phone")
    say("(Lines that start with a timestamp are pushgate's own log.)")
    say()
    step(1, f"A stand-in push service listens on {endpoint.origin}. Like a browser's push service "
            "or a UnifiedPush distributor, it hands out one URL per device; here it also "
            "decrypts each push (RFC 8291, aes128gcm) with the device's keys and checks "
            "pushgate's VAPID signature (RFC 8292).")
    device = endpoint.new_device()

    step(2, f"alice@{DOMAIN} logs in (127.0.0.1:{args.c2s_port}, password \"{PASSWORD}\").")
    alice = Client(runner, f"alice@{DOMAIN}", PASSWORD, args.c2s_port).connect()
    forget_previous_device(alice, service, args.state_file)

    step(3, f"alice registers her device with pushgate ({service}) through the ad-hoc command "
            "register-device (XEP-0050, Tigase's dialect):")
    node = register(alice, service, device)
    with open(args.state_file, "w") as f:
        f.write(device.url + "\n")
    say(f"pushgate answers with the device's node: {node}", 4)

    step(4, "alice tells her server to push to that node (XEP-0357): "
            f"<enable xmlns='urn:xmpp:push:0' jid='{service}' node='{node}'/>")
    try:
        alice.enable_push(service, node)
    except XmppError as e:
        raise DemoFailed(f"Prosody refused to enable push: {e}") from None

    step(5, "alice goes offline. Prosody's mod_cloud_notify now publishes a notification to "
            f"{service} for each message she misses.")
    alice.disconnect()

    step(6, f"bob@{DOMAIN} logs in and sends alice: \"{MESSAGE}\"")
    bob = Client(runner, f"bob@{DOMAIN}", PASSWORD, args.c2s_port).connect()
    bob.send_message(f"alice@{DOMAIN}", MESSAGE)
    bob.disconnect()

    step(7, "Prosody stores the message offline and publishes to pushgate; pushgate encrypts "
            "the notification for alice's device and POSTs it to the push service...")
    got = wait_for_push(endpoint, device, 0, PUSH_TIMEOUT)
    if not got:
        raise DemoFailed(f"no push reached the device within {PUSH_TIMEOUT:.0f} s")
    for d in got:
        show_delivery(d)
    say()
    say("Demo done. pushgate, Prosody and the stand-in push service keep running: send alice "
        "a message from a client logged in as bob (while no client is logged in as alice) and "
        "its push shows up here too. Ctrl-C stops everything.")
    say()
    return device


def keep_printing(endpoint: WebPushEndpoint, device: Device) -> NoReturn:
    seen = len(endpoint.deliveries_for(device))
    while True:
        got = wait_for_push(endpoint, device, seen, 3600)
        for d in got:
            show_delivery(d)
        seen += len(got)


def stop_on_sigterm(_signum, _frame):
    raise KeyboardInterrupt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--c2s-port", type=int, required=True, help="Prosody's c2s port on 127.0.0.1")
    p.add_argument("--service", default="push.localhost", help="pushgate's component JID")
    p.add_argument("--vapid-key", required=True, help="pushgate's VAPID private key (PEM)")
    p.add_argument("--vapid-subject", required=True, help="pushgate's vapid_subject")
    p.add_argument("--state-file", required=True,
                   help="where the demo device's URL is kept, to unregister it next run")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, stop_on_sigterm)

    with open(args.vapid_key, "rb") as f:
        vapid = serialization.load_pem_private_key(f.read(), password=None)
    endpoint = WebPushEndpoint(vapid_public_key=public_bytes(vapid),
                               vapid_subject=args.vapid_subject).start()
    runner = AsyncRunner()
    try:
        device = demo(args, runner, endpoint)
        keep_printing(endpoint, device)
    except KeyboardInterrupt:
        return 0
    except (DemoFailed, XmppError, TimeoutError, RuntimeError) as e:
        print(f"demo failed: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        runner.stop()
        endpoint.stop()


if __name__ == "__main__":
    sys.exit(main())
