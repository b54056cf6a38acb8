"""The durable retry queue through a real Prosody: notifications pushgate answered for while the
push service was down survive a SIGKILL of pushgate and arrive after it is started again, or
are delivered by a hot standby that takes the component over.

Uses its own Prosodies, pushgates and WebPush endpoints (it kills pushgate)."""

from __future__ import annotations

import signal

import pytest

from conftest import _LIVE, PUSH_JID, VAPID_SUBJECT, Stack, diagnostics, running_stack
from pushgate_proc import CONNECTED, STANDING_BY, Pushgate
from scenario import check_alert, push_offline
from webpush_endpoint import WebPushEndpoint


@pytest.fixture(scope="module")
def own_stack():
    with running_stack("retry-queue") as stack_and_endpoint:
        yield stack_and_endpoint


def test_queued_notifications_survive_sigkill(own_stack, connect_factory):
    s, endpoint = own_stack
    prosody, pushgate = s.server, s.pushgate
    dev = endpoint.new_device()
    push_offline(connect_factory(prosody, "frank"), dev)
    endpoint.set_status(dev, 503)
    bob = connect_factory(prosody, "bob")

    since, since_p = pushgate.log.offset(), prosody.log.offset()
    texts = [f"during the outage {i}" for i in range(3)]
    for text in texts:
        bob.send_message("frank@localhost", text)
    assert pushgate.wait_outcomes(since, count=3) == ["queued"] * 3
    assert "Got error <" not in prosody.log.text(since_p), "Prosody was answered an error"

    # Killed with the notifications queued (some perhaps mid-retry), started again once the
    # push service is back: every one arrives, none was answered and lost.
    pushgate.kill(signal.SIGKILL)
    endpoint.set_status(dev, 201)
    pushgate.start()
    for text in texts:
        d = endpoint.wait_for_body(dev, text, timeout=45, diagnostics=diagnostics)
        check_alert(d, dev, "frank@localhost", bob.full_jid, text)


def test_a_hot_standby_takes_over_and_delivers_what_the_dead_instance_queued(connect_factory):
    """Prosody's default refuses a second connection: instance b stands by. Instance a queues
    notifications while the push service is down and is then SIGKILLed; b takes the component
    over by itself (its standby retries) and its retry worker delivers what a queued, from the
    database they share; new messages go through b."""
    s = Stack("standby")
    endpoint = None
    b = None
    try:
        s.start_server()
        a = s.make_pushgate()
        endpoint = WebPushEndpoint(vapid_public_key=a.vapid_public,
                                   vapid_subject=VAPID_SUBJECT).start()
        a.start()
        b = Pushgate(s.server, PUSH_JID, s.push_secret, name="pushgate[standby-b]")
        b.data_dir, b.vapid_key_path, b.vapid_key = a.data_dir, a.vapid_key_path, a.vapid_key
        b.write_config()
        _LIVE.append(b)
        b.spawn()
        b.log.wait_for(STANDING_BY, timeout=15, alive=b.exited)

        dev = endpoint.new_device()
        push_offline(connect_factory(s.server, "carol"), dev)
        endpoint.set_status(dev, 503)
        bob = connect_factory(s.server, "bob")
        since = a.log.offset()
        texts = [f"before the takeover {i}" for i in range(3)]
        for text in texts:
            bob.send_message("carol@localhost", text)
        assert a.wait_outcomes(since, count=3) == ["queued"] * 3

        a.kill(signal.SIGKILL)
        endpoint.set_status(dev, 201)
        b.log.wait_for(CONNECTED, timeout=30, alive=b.exited)
        since = b.log.offset()
        bob.send_message("carol@localhost", "after the takeover")
        assert b.wait_outcomes(since) == ["delivered"]
        for text in texts + ["after the takeover"]:
            endpoint.wait_for_body(dev, text, timeout=45, diagnostics=diagnostics)
        errors = s.server.log.find_all(r"Got error <")
        assert errors == [], [m.string for m in errors]
    finally:
        if b is not None:
            b.cleanup()
            if b in _LIVE:
                _LIVE.remove(b)
        s.close()
        if endpoint is not None:
            endpoint.stop()
