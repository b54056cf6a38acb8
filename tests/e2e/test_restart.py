"""(d) pushgate killed and restarted; Prosody restarted under a running pushgate.

Uses its own Prosody, pushgate and WebPush endpoint (it kills the first two)."""

from __future__ import annotations

import signal

import pytest

from conftest import PUSH_JID, Stack
from pushgate_proc import VAPID_SUBJECT
from scenario import check_alert, register_tigase, wait_deliveries
from webpush_endpoint import WebPushEndpoint


@pytest.fixture(scope="module")
def own_stack():
    s = Stack("restart")
    ep = None
    try:
        s.start_prosody()
        pg = s.make_pushgate()
        ep = WebPushEndpoint(vapid_public_key=pg.vapid_public, vapid_subject=VAPID_SUBJECT)
        ep.start()
        pg.start()
        yield s, ep
    finally:
        s.close()
        if ep is not None:
            ep.stop()


def test_restarts(own_stack, connect):
    s, endpoint = own_stack
    prosody, pushgate = s.prosody, s.pushgate
    dev = endpoint.new_device()
    frank = connect("frank", server=prosody)
    node = register_tigase(frank, dev, "webpush")
    frank.enable_push(PUSH_JID, node)
    frank.disconnect()
    bob = connect("bob", server=prosody)

    def deliver(n: int, text: str):
        bob.send_message("frank@localhost", text)
        d = wait_deliveries(endpoint, dev, n)[n - 1]
        check_alert(d, dev, "frank@localhost", bob.full_jid, text)

    deliver(1, "before any restart")

    # 1. SIGKILL pushgate, start it again on the same config and data dir
    pushgate.kill(signal.SIGKILL)
    since = prosody.log.offset()
    pushgate.start()   # waits for Prosody's "External component successfully authenticated"
    assert prosody.log.find_all("External component successfully authenticated", since)
    deliver(2, "after pushgate was killed")

    # 2. restart Prosody under the running pushgate: it must reconnect by itself
    bob.abort()
    since = prosody.log.offset()
    prosody.restart()
    pushgate.wait_reconnected(since)
    assert pushgate.running(), "pushgate must survive the server going away"
    bob = connect("bob", server=prosody)
    deliver(3, "after prosody was restarted")

