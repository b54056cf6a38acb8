"""(d) pushgate killed and restarted; Prosody restarted under a running pushgate.

Uses its own Prosody, pushgate and WebPush endpoint (it kills the first two)."""

from __future__ import annotations

import signal

import pytest

from conftest import PUSH_JID, running_stack
from scenario import check_alert, register_tigase, wait_deliveries


@pytest.fixture(scope="module")
def own_stack():
    with running_stack("restart") as stack_and_endpoint:
        yield stack_and_endpoint


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

