"""The Matrix push gateway front end to end: a real Synapse (synapse_proc.py) whose users set
pushers pointing at pushgate's `/_matrix/push/v1/notify`, pushgate's Matrix front and WebPush
provider, and the local WebPush endpoint as the phone's push service (a UnifiedPush-style app:
the pushkey is the endpoint URL, the body plaintext JSON).

Checked: a message and a call reach the phone with what the app needs; a dead endpoint makes
Synapse delete the pusher; a push service outage loses nothing and holds nothing back (pushgate
answers 200 once the notification is queued, so Synapse never enters its per-pusher backoff)."""

from __future__ import annotations

import pytest

from conftest import diagnostics, running_stack
from procs import free_port
from synapse_proc import PUSH_FAILED_LINE

APP = "org.pushgate.e2e.unifiedpush"
ROOM = "pushgate matrix e2e"


@pytest.fixture(scope="module")
def gateway():
    """pushgate with its HTTP listener and one Matrix app on the WebPush provider; yields the
    WebPush endpoint and the notify URL."""
    port = free_port()
    toml = (f'[http]\nlisten = "127.0.0.1:{port}"\n'
            f'[matrix.apps."{APP}"]\nprovider = "webpush"\n')
    with running_stack("matrix", pushgate_toml=toml) as (_, endpoint):
        yield endpoint, f"http://127.0.0.1:{port}/_matrix/push/v1/notify"


def phone(gateway, alice):
    """alice's phone: a WebPush device whose URL is her pusher's pushkey."""
    endpoint, url = gateway
    dev = endpoint.new_device(encrypted=False)
    alice.set_pusher(url, app_id=APP, pushkey=dev.url)
    return dev


def test_a_message_and_a_call_reach_the_phone(synapse, gateway):
    endpoint, _ = gateway
    alice, bob, room = synapse.pair(ROOM)
    dev = phone(gateway, alice)
    event = bob.send_text(room, "hello through pushgate")
    d = endpoint.wait_for_body(dev, "hello through pushgate", timeout=30, diagnostics=diagnostics)
    p = d.payload
    assert d.status == 201 and d.vapid_error is None, d.summary()
    assert p["kind"] == "alert" and p["priority"] == "high", d.summary()
    assert p["room_id"] == room and p["event_id"] == event, d.summary()
    assert p["sender"] == bob.localpart, d.summary()
    assert p["unread_count"] == 1 and p["badge"] == 1, d.summary()
    assert d.headers.get("urgency") == "high", d.summary()

    call = bob.send_call_invite(room)
    got = endpoint.wait_for(dev, count=2, timeout=30, diagnostics=diagnostics)
    calls = [x for x in got if isinstance(x.payload, dict) and x.payload.get("event_id") == call]
    assert calls and calls[0].payload["kind"] == "voip", [x.summary() for x in got]


def test_a_dead_endpoint_makes_synapse_delete_the_pusher(synapse, gateway):
    endpoint, _ = gateway
    alice, bob, room = synapse.pair(ROOM)
    dev = phone(gateway, alice)
    assert alice.pushkeys() == {dev.url}
    endpoint.set_status(dev, 410)
    bob.send_text(room, "to a phone that is gone")
    alice.wait_pushkeys(set(), timeout=30)


def test_an_outage_loses_nothing_and_holds_nothing_back(synapse, gateway):
    endpoint, _ = gateway
    alice, bob, room = synapse.pair(ROOM)
    dev = phone(gateway, alice)
    endpoint.set_status(dev, 503)
    since = synapse.log.offset()
    texts = ["during the outage 1", "during the outage 2"]
    for text in texts:
        bob.send_text(room, text)
    # Both reached the push service (and failed) before it came back: neither was held back.
    endpoint.wait_for(dev, count=2, timeout=30, diagnostics=diagnostics)
    endpoint.set_status(dev, 201)
    for text in texts:
        endpoint.wait_for_body(dev, text, timeout=45, diagnostics=diagnostics)
    failed = synapse.log.find_all(PUSH_FAILED_LINE, since)
    assert failed == [], [m.string for m in failed]
    assert alice.pushkeys() == {dev.url}, "the pusher stays"
