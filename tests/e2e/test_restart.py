"""(d) pushgate killed and restarted; the XMPP server restarted under a running pushgate; what
each server does with a message while pushgate is away. On Prosody and on ejabberd.

Uses its own server, pushgate and WebPush endpoint (it kills the first two)."""

from __future__ import annotations

import signal

import pytest

from conftest import PUSH_JID, SERVERS, running_stack
from scenario import assert_quiet, check_alert, push_offline, wait_deliveries

RECONNECTING = r"reconnecting delay_ms=(\d+)"


@pytest.fixture(scope="module", params=SERVERS)
def own_stack(request):
    with running_stack(f"restart-{request.param}", kind=request.param) as stack_and_endpoint:
        yield stack_and_endpoint


def test_restarts(own_stack, connect_factory):
    s, endpoint = own_stack
    server, pushgate = s.server, s.pushgate
    dev = endpoint.new_device()
    push_offline(connect_factory(server, "frank"), dev)
    bob = connect_factory(server, "bob")

    def deliver(n: int, text: str):
        bob.send_message("frank@localhost", text)
        d = wait_deliveries(endpoint, dev, n)[n - 1]
        check_alert(d, dev, "frank@localhost", bob.full_jid, text, server.MESSAGE_COUNT)

    deliver(1, "before any restart")

    # 1. SIGKILL pushgate, start it again on the same config and data dir: the registration
    # survived in its database
    pushgate.kill(signal.SIGKILL)
    pushgate.start()   # waits for the server's log line that the component authenticated
    deliver(2, "after pushgate was killed")

    # 2. restart the server under the running pushgate: it must reconnect by itself, retrying
    # at most every second while the server is away (a schedule read from its log, not a speed)
    bob.abort()
    since, since_s = pushgate.log.offset(), server.log.offset()
    server.stop(cleanup=False)
    pushgate.log.wait_for(RECONNECTING, since=since, count=3, alive=pushgate.exited)
    server.restart()
    pushgate.wait_reconnected(since_s)
    delays = [int(m.group(1)) for m in pushgate.log.find_all(RECONNECTING, since)]
    assert max(delays) <= 1000, delays
    assert pushgate.running(), "pushgate must survive the server going away"
    bob = connect_factory(server, "bob")
    deliver(3, "after the server was restarted")


def test_a_message_while_pushgate_is_away(own_stack, connect_factory):
    """xep0357-interop.md §5: the server cannot reach the component and answers its own
    publish with an error. Prosody's is `wait` (not counted: the registration stays and the
    next message is pushed); ejabberd's is `auth`/`forbidden`, so it deletes the registration
    and the phone is never woken again until the app enables push anew."""
    s, endpoint = own_stack
    server, pushgate = s.server, s.pushgate
    dev = endpoint.new_device()
    node = push_offline(connect_factory(server, "grace"), dev)
    bob = connect_factory(server, "bob")

    pushgate.stop()
    since_s = server.log.offset()
    bob.send_message("grace@localhost", "while pushgate is away")
    if s.kind == "prosody":
        server.log.wait_for(server.rejection(PUSH_JID, node, "wait", "remote-server-timeout"),
                            since=since_s)
    else:
        server.log.wait_for(server.rejection(PUSH_JID, node, "auth", "forbidden"),
                            since=since_s)
    pushgate.start()

    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message("grace@localhost", "pushgate is back")
    if s.kind == "prosody":
        (d,) = wait_deliveries(endpoint, dev, 1)
        check_alert(d, dev, "grace@localhost", bob.full_jid, "pushgate is back",
                    server.MESSAGE_COUNT)
    else:
        assert_quiet(pushgate, server, since, since_s, endpoint, dev, 0)
