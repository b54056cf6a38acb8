"""Helpers shared by the scenario modules: registering devices, checking deliveries."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request

from clients import Client, submit_form
from conftest import PUSH_JID, diagnostics
from pushgate_proc import TTL_SECS
from webpush_endpoint import Delivery, Device

PAYLOAD_KEYS = {"kind", "priority", "account", "sender", "body", "message-count"}
QUIET_SECONDS = 3.0  # how long "nothing happens" is watched for


def register_tigase(client: Client, device: Device, provider: str = "webpush") -> str:
    fields = {"provider": provider, "device-token": device.url}
    if device.encrypted:
        fields.update({"p256dh": device.p256dh, "auth": device.auth_b64})
    r = client.command(PUSH_JID, "register-device", form=submit_form(fields))
    assert r.status == "completed", r.xml
    node = r.form.value("node") if r.form else None
    assert node, f"register-device returned no node: {r.xml}"
    return node


def push_offline(client: Client, device: Device, provider: str = "webpush") -> str:
    """What a phone does before it sleeps: register the device with the Tigase dialect, enable
    push for it at the server, go offline. Returns the node; from now on messages to the
    account are pushed."""
    node = register_tigase(client, device, provider)
    client.enable_push(PUSH_JID, node)
    client.disconnect()
    return node


def register_p2(client: Client, device: Device, device_id: str,
                provider: str = "webpush") -> tuple[str, str]:
    fields = {"token": device.url, "device-id": device_id}
    if device.encrypted:
        fields.update({"p256dh": device.p256dh, "auth": device.auth_b64})
    r = client.command(PUSH_JID, f"register-push-{provider}", form=submit_form(fields))
    assert r.status == "completed", r.xml
    node, secret = (r.form.value("node"), r.form.value("secret")) if r.form else (None, None)
    assert node and secret, f"register-push-{provider} returned no node/secret: {r.xml}"
    return node, secret


def check_alert(d: Delivery, device: Device, account: str, sender: str, body: str,
                message_count: int | None = 1):
    """A delivery of an important message, as pushgate documents it. message_count: what the
    server puts in its summary (the server's MESSAGE_COUNT: Prosody 1, ejabberd none)."""
    where = d.summary()
    assert d.status == 201, where
    assert d.vapid_error is None, f"VAPID check failed: {d.vapid_error}; {where}"
    assert d.decrypt_error is None, f"payload unreadable: {d.decrypt_error}; {where}"
    if device.encrypted:
        assert d.headers.get("content-encoding", "").lower() == "aes128gcm", where
    assert d.headers.get("ttl") == str(TTL_SECS), f"TTL header: {where}"
    assert d.headers.get("urgency") == "high", f"Urgency header: {where}"
    p = d.payload
    assert isinstance(p, dict), where
    assert set(p) <= PAYLOAD_KEYS, f"unexpected payload keys {set(p) - PAYLOAD_KEYS}: {where}"
    assert p.get("kind") == "alert", where
    assert p.get("priority") == "high", where
    assert p.get("account") == account, where
    assert p.get("sender") == sender, where
    assert p.get("body") == body, where
    assert p.get("message-count") == message_count, where


def check_p2_alert(d: Delivery, account: str, device_id: str):
    """A p2 (Conversations-contract) delivery of an important message: no content at all, the
    account as SHA-1 hex of (bare JID, NUL, device id), and its first six hex digits as the
    collapse key (the WebPush Topic)."""
    where = d.summary()
    account_hash = hashlib.sha1(account.encode() + b"\0" + device_id.encode()).hexdigest()
    assert d.status == 201, where
    assert d.vapid_error is None, f"VAPID check failed: {d.vapid_error}; {where}"
    assert d.decrypt_error is None, f"payload unreadable: {d.decrypt_error}; {where}"
    assert d.payload == {"kind": "alert", "priority": "high", "account": account_hash}, where
    assert d.headers.get("topic") == account_hash[:6], where
    assert d.headers.get("urgency") == "high", where


def assert_quiet(pushgate, server, since_pg: int, since_server: int, endpoint, device: Device,
                 deliveries_before: int):
    """The server handled an offline message without publishing: pushgate answered nothing,
    the device got nothing."""
    server.wait_offline_handled(since_server)
    time.sleep(QUIET_SECONDS)
    new = pushgate.outcomes(since_pg)
    assert not new, f"pushgate answered publishes it should never have got: {new}"
    got = endpoint.deliveries_for(device)
    assert len(got) == deliveries_before, \
        f"device got {len(got) - deliveries_before} more deliveries: {got[-1].summary()}"


def wait_deliveries(endpoint, device: Device, count: int):
    return endpoint.wait_for(device, count, diagnostics=diagnostics)


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    """A JSON request to pushgate's HTTP surface: (status, JSON answer)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
