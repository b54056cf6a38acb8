"""XEP-0357 remote disabling (issue 17 point 3): what real Prosody 0.12 and ejabberd 23.01 do
with the message pushgate sends when it removes a registration (the `unregister-device`
command, Siskin's REST unregister, a dead token found by a publish):

    <message type='headline' from='push.localhost' to='kate@localhost'>
      <pubsub xmlns='http://jabber.org/protocol/pubsub' node='NODE'>
        <affiliation jid='kate@localhost' affiliation='none'/>
      </pubsub>
    </message>

Measured here; docs/architecture.md ("Remote disabling") keeps the summary. Neither server acts on
it: each routes it as a headline (RFC 6121 8.5.2.1.1), live to the account's online resources and
nowhere when there is none: nothing is stored, nothing is published for it, nothing reaches the
phone at its next login. Either way the server keeps its push registration until a publish to the
removed node is answered item-not-found:

* phone online at the removal (`unregister-device`): the headline reaches the resource at once
  (no delay); the server publishes the next message to the offline account to the removed node
  as well (not_found) and disables it;
* phone offline (REST unregister) and dead token (410): the headline is dropped; the next
  message is published to the removed node (not_found, disabled) and to the account's other
  device, which gets that message's push and nothing else; the phone finds only that message in
  offline storage at its next login.

Every account also has a fence device, enabled from another resource that is offline again: its
deliveries prove that the server handled a message, so "nothing was published to the removed
node" is checked without waiting out a quiet period. (Another resource, because ejabberd keys a
push registration by the session that enabled it: one error deletes every registration that
session enabled.) That the server has handled the headline before the next step is fenced the
same way: a ping to pushgate is answered on the component stream after the headline, and both
servers route a component's stanzas in order. Lastly, on an own Prosody stack:
`notify_removal = false` sends nothing, and a Conversations-style `register-push-fcm` through
`[provider_aliases] fcm = "webpush"` delivers.
"""

from __future__ import annotations

import re
import secrets
import time
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from clients import NS_PUBSUB, Client, expect_error, submit_form
from conftest import DOMAIN, PASSWORD, PUSH_JID, running_stack
from procs import free_port
from prosody import Prosody
from scenario import check_p2_alert, http, register_p2, register_tigase, wait_deliveries
from webpush_endpoint import Delivery, Device

USERS = ("kate", "liam", "mike")   # registered on the session server by this module
NS_DELAY = "urn:xmpp:delay"
SETTLE = 0.3   # after a fence delivery: the other publishes for that message are answered
REMOVALS_SENT = re.compile(r'^pushgate_removal_notifications_total\{outcome="sent"\} (\d+)$',
                           re.M)


# --- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def users(server):
    """This module's own accounts on the session server."""
    if isinstance(server, Prosody):
        for u in USERS:
            server.register(u, DOMAIN, PASSWORD)
    else:
        server.register([(u, DOMAIN, PASSWORD) for u in USERS])


def removals_sent(http_base: str) -> int:
    """pushgate_removal_notifications_total{outcome="sent"}; 0 while it has no sample."""
    with urllib.request.urlopen(f"{http_base}/metrics", timeout=5) as r:
        m = REMOVALS_SENT.search(r.read().decode())
    return int(m.group(1)) if m else 0


def wait_removals_sent(http_base: str, count: int, timeout: float = 5.0):
    """Until pushgate has queued its `count`th remote-disable message (the counter goes up once
    the message is in the stream's outbox)."""
    deadline = time.monotonic() + timeout
    while (n := removals_sent(http_base)) < count:
        assert time.monotonic() < deadline, f"{n} remote-disable message(s) sent, not {count}"
        time.sleep(0.02)
    assert n == count, f"{n} remote-disable messages sent, not {count}"


def wait_notification(client: Client, timeout: float = 5.0) -> ET.Element:
    """The one remote-disable message the client got."""
    deadline = time.monotonic() + timeout
    while not client.pubsub_messages:
        assert time.monotonic() < deadline, \
            f"{client.bare}: no remote-disable message within {timeout} s"
        time.sleep(0.02)
    time.sleep(0.05)  # a second one would be a bug
    got = [m.xml for m in client.pubsub_messages]
    assert len(got) == 1, [ET.tostring(m, encoding="unicode") for m in got]
    return got[0]


def check_notification(m: ET.Element, account: str, node: str):
    """The message as pushgate sends it: a headline to the bare JID, delivered live (no XEP-0203
    delay: nothing was stored)."""
    where = ET.tostring(m, encoding="unicode")
    assert m.get("from") == PUSH_JID, where
    assert m.get("to") == account, f"not addressed to the bare JID: {where}"
    assert m.get("type") == "headline", where
    pubsub = m.find(f"{{{NS_PUBSUB}}}pubsub")
    assert pubsub is not None and pubsub.get("node") == node, where
    aff = pubsub.find(f"{{{NS_PUBSUB}}}affiliation")
    assert aff is not None and (aff.get("jid"), aff.get("affiliation")) == (account, "none"), where
    assert m.find(f"{{{NS_DELAY}}}delay") is None, where


def headlines_received(server: Prosody, account: str, since: int) -> list[str]:
    """Prosody's log lines for the remote-disable messages it read from the component
    (Prosody's attribute order varies)."""
    return [line for line in server.log.lines(since)
            if "Received[component]: <message " in line and f"from='{PUSH_JID}'" in line
            and f"to='{account}'" in line]


def headline_dropped(server, bob: Client, account: str, since_s: int):
    """The server has handled the remote-disable message pushgate queued for the offline
    `account`: pushgate answers bob's ping on the component stream after it, and both servers
    route a component's stanzas in order. Prosody's log says it read a headline and stored
    nothing; ejabberd logs neither at info (the fence deliveries and the next login tell)."""
    bob.ping(PUSH_JID)
    if isinstance(server, Prosody):
        got = headlines_received(server, account, since_s)
        assert len(got) == 1 and "type='headline'" in got[0], f"not one headline: {got}"
        stored = [line for line in server.log.lines(since_s)
                  if "Saved to offline storage: <message " in line
                  and f"from='{PUSH_JID}'" in line]
        assert not stored, stored


def phone(connect, endpoint, user: str) -> tuple[Client, Device, str, Device]:
    """`user` online with the device the test removes, registered and enabled (client, device,
    node), and a fence device enabled from another resource that is offline again."""
    tablet = connect(user)
    fence = endpoint.new_device()
    tablet.enable_push(PUSH_JID, register_tigase(tablet, fence))
    tablet.disconnect()
    c = connect(user)
    dev = endpoint.new_device()
    node = register_tigase(c, dev)
    c.enable_push(PUSH_JID, node)
    return c, dev, node, fence


def tigase_form(dev: Device) -> ET.Element:
    return submit_form({"provider": "webpush", "device-token": dev.url})


def publishes_to(server, node: str, since: int) -> int:
    """Publishes the server logged for `node`: Prosody's "Sending ... push notification" lines;
    ejabberd logs (at info) only the rejections, which is every publish to a removed node."""
    if isinstance(server, Prosody):
        return len(server.log.find_all(rf"push notification for \S+ to {re.escape(PUSH_JID)} "
                                       rf"\({re.escape(node)}\)", since))
    return len(server.log.find_all(rf"rejected notification for \S+ \({re.escape(node)}\)",
                                   since))


def check_message_push(d: Delivery, account: str, body: str):
    """The fence's delivery of bob's message (an alert with its body), not of anything else."""
    where = d.summary()
    assert d.status == 201 and d.decrypt_error is None, where
    assert (d.payload.get("kind"), d.payload.get("account"), d.payload.get("body")) == \
        ("alert", account, body), where


def fence_push(endpoint, fence: Device, before: int = 0) -> Delivery:
    """The fence's one new delivery: waits for it, lets the other publishes for the same message
    be answered, and checks that no second one came (a push for the headline would be one)."""
    wait_deliveries(endpoint, fence, before + 1)
    time.sleep(SETTLE)
    got = endpoint.deliveries_for(fence)[before:]
    assert len(got) == 1, f"{len(got)} pushes to the fence: " + "; ".join(d.summary() for d in got)
    return got[0]


def only_bobs_messages_at_login(connect, user: str, bodies: list[str]):
    """The phone's next login: offline storage holds bob's messages (delayed) and no
    remote-disable message, which, stored, would have come first."""
    c = connect(user)
    deadline = time.monotonic() + 5.0
    while len(c.messages) < len(bodies):
        assert time.monotonic() < deadline, f"{c.bare}: {len(c.messages)} offline message(s)"
        time.sleep(0.02)
    time.sleep(SETTLE)
    assert [str(m["body"]) for m in c.messages] == bodies
    assert all(m.xml.find(f"{{{NS_DELAY}}}delay") is not None for m in c.messages)
    assert c.pubsub_messages == [], \
        [ET.tostring(m.xml, encoding="unicode") for m in c.pubsub_messages]
    c.disconnect()


def only_the_fence_is_pushed(server, pushgate, endpoint, bob: Client, account: str, node: str,
                             fence: Device):
    """A message to the offline account is published to the fence only: the server has dropped
    the removed node."""
    before = len(endpoint.deliveries_for(fence))
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message(account, "after the server disabled it")
    check_message_push(fence_push(endpoint, fence, before), account,
                       "after the server disabled it")
    assert pushgate.outcomes(since) == ["delivered"], pushgate.outcomes(since)
    assert publishes_to(server, node, since_s) == 0


# --- what each server does with it -----------------------------------------------------------
def test_phone_online_gets_it_live_and_the_server_publishes_once_more(
        users, stack, server, pushgate, endpoint, connect):
    """Siskin unregisters while online: the headline reaches its resource at once; the server
    keeps the registration until the next message's publish is answered item-not-found."""
    kate, dev, node, fence = phone(connect, endpoint, "kate")
    sent = removals_sent(stack.http_base)
    start, start_s = pushgate.log.offset(), server.log.offset()
    r = kate.command(PUSH_JID, "unregister-device", form=tigase_form(dev))
    assert r.status == "completed", r.xml
    check_notification(wait_notification(kate), "kate@localhost", node)
    assert removals_sent(stack.http_base) == sent + 1
    kate.disconnect()
    assert pushgate.outcomes(start) == [] and publishes_to(server, node, start_s) == 0

    # the server kept it: bob's message is published to the removed node as well
    bob = connect("bob")
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message("kate@localhost", "to a phone that unregistered")
    server.log.wait_for(server.rejection(PUSH_JID, node, "cancel", "item-not-found"),
                        since=since_s)
    server.log.wait_for(server.disabling(PUSH_JID, node), since=since_s)
    check_message_push(fence_push(endpoint, fence), "kate@localhost",
                       "to a phone that unregistered")
    assert sorted(pushgate.outcomes(since)) == ["delivered", "not_found"], \
        pushgate.outcomes(since)
    assert publishes_to(server, node, since_s) == 1
    assert endpoint.deliveries_for(dev) == []
    only_the_fence_is_pushed(server, pushgate, endpoint, bob, "kate@localhost", node, fence)
    assert sorted(pushgate.outcomes(start)) == ["delivered", "delivered", "not_found"]


def test_phone_offline_the_headline_is_dropped(
        users, stack, server, pushgate, endpoint, connect):
    """Siskin's REST unregister while the phone sleeps: the headline is dropped (not stored,
    nothing published for it); the next message is published to the removed node
    (item-not-found: disabled) and to the other device, which gets that message only."""
    liam, dev, node, fence = phone(connect, endpoint, "liam")
    liam.disconnect()
    sent = removals_sent(stack.http_base)
    since, since_s = pushgate.log.offset(), server.log.offset()
    status, answer = http("POST", f"{stack.http_base}/unregister-device/{PUSH_JID}",
                          {"account": "liam@localhost", "provider": "webpush",
                           "device-token": dev.url})
    assert (status, answer) == (200, {"result": "success"})
    wait_removals_sent(stack.http_base, sent + 1)
    bob = connect("bob")
    headline_dropped(server, bob, "liam@localhost", since_s)

    # the server still has the registration: the next message finds the removed node
    bob.send_message("liam@localhost", "after the removal")
    server.log.wait_for(server.rejection(PUSH_JID, node, "cancel", "item-not-found"),
                        since=since_s)
    server.log.wait_for(server.disabling(PUSH_JID, node), since=since_s)
    check_message_push(fence_push(endpoint, fence), "liam@localhost", "after the removal")
    assert sorted(pushgate.outcomes(since)) == ["delivered", "not_found"], \
        pushgate.outcomes(since)
    assert publishes_to(server, node, since_s) == 1
    assert endpoint.deliveries_for(dev) == []

    only_bobs_messages_at_login(connect, "liam", ["after the removal"])
    only_the_fence_is_pushed(server, pushgate, endpoint, bob, "liam@localhost", node, fence)
    assert sorted(pushgate.outcomes(since)) == ["delivered", "delivered", "not_found"]
    assert removals_sent(stack.http_base) == sent + 1


def test_dead_token(users, stack, server, pushgate, endpoint, connect):
    """A publish finds the token dead (410): item-not-found, the server disables; the headline
    to the offline account is dropped: the other device gets bob's message only, nothing is
    published to the removed node again, nothing waits for the phone."""
    mike, dev, node, fence = phone(connect, endpoint, "mike")
    mike.disconnect()
    endpoint.set_status(dev, 410)
    sent = removals_sent(stack.http_base)
    bob = connect("bob")
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message("mike@localhost", "into the void")
    server.log.wait_for(server.rejection(PUSH_JID, node, "cancel", "item-not-found"),
                        since=since_s)
    server.log.wait_for(server.disabling(PUSH_JID, node), since=since_s)
    wait_removals_sent(stack.http_base, sent + 1)
    headline_dropped(server, bob, "mike@localhost", since_s)
    check_message_push(fence_push(endpoint, fence), "mike@localhost", "into the void")
    assert [d.status for d in endpoint.deliveries_for(dev)] == [410]
    assert sorted(pushgate.outcomes(since)) == ["dead_token", "delivered"], \
        pushgate.outcomes(since)
    assert publishes_to(server, node, since_s) == 1

    only_bobs_messages_at_login(connect, "mike", ["into the void"])
    only_the_fence_is_pushed(server, pushgate, endpoint, bob, "mike@localhost", node, fence)
    assert sorted(pushgate.outcomes(since)) == ["dead_token", "delivered", "delivered"]
    err = expect_error(connect("mike").command, PUSH_JID, "unregister-device",
                       form=tigase_form(dev))
    assert err.condition == "item-not-found", err
    assert removals_sent(stack.http_base) == sent + 1


# --- an own Prosody stack: notify_removal = false, and a provider alias ----------------------
@pytest.fixture(scope="module")
def quiet_stack():
    """Prosody + pushgate with `notify_removal = false` and `[provider_aliases] fcm = "webpush"`;
    yields (stack, endpoint, http_base)."""
    port = free_port()
    toml = (f'[http]\nlisten = "127.0.0.1:{port}"\n\n'
            f'[provider_aliases]\nfcm = "webpush"\n')
    with running_stack("remote-disable-off", users=("alice", "bob", "carol"),
                       pushgate_toml=toml,
                       pushgate_env={"PUSHGATE_REGISTRATION__NOTIFY_REMOVAL": "false"}
                       ) as (s, ep):
        yield s, ep, f"http://127.0.0.1:{port}"


def test_notify_removal_false_sends_nothing(quiet_stack, connect_factory):
    """The REST unregister of a sleeping phone: no message, so nothing is stored and nothing
    published; the server learns at the next message, as before remote disabling."""
    s, endpoint, http_base = quiet_stack
    server, pushgate = s.server, s.pushgate
    alice, dev, node, fence = phone(lambda u: connect_factory(server, u), endpoint, "alice")
    alice.disconnect()
    since, since_s = pushgate.log.offset(), server.log.offset()
    status, _ = http("POST", f"{http_base}/unregister-device/{PUSH_JID}",
                     {"account": "alice@localhost", "provider": "webpush",
                      "device-token": dev.url})
    assert status == 200
    alice = connect_factory(server, "alice")   # a login: offline storage would be flushed
    time.sleep(SETTLE)
    assert alice.pubsub_messages == []
    assert not server.log.find_all(rf"Received\[component\]: <message [^>]*from='{PUSH_JID}'",
                                   since_s)
    assert pushgate.outcomes(since) == []
    assert removals_sent(http_base) == 0
    alice.disconnect()

    # the registration is still at the server: the next message finds it
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob = connect_factory(server, "bob")
    bob.send_message("alice@localhost", "hello")
    bob.disconnect()
    wait_deliveries(endpoint, fence, 1)
    server.log.wait_for(server.disabling(PUSH_JID, node), since=since_s)
    assert sorted(pushgate.wait_outcomes(since, count=2)) == ["delivered", "not_found"]


def test_conversations_registers_through_an_alias(quiet_stack, connect_factory):
    """Conversations configured for `register-push-fcm`, served by the WebPush provider through
    the alias: registered through the server, enabled, and a message is delivered."""
    s, endpoint, _ = quiet_stack
    carol = connect_factory(s.server, "carol")
    _, features = carol.disco_info(PUSH_JID)
    assert "fcm" in features, features
    dev = endpoint.new_device()
    device_id = "carol-phone-" + secrets.token_hex(3)
    node, secret = register_p2(carol, dev, device_id, provider="fcm")
    carol.enable_push(PUSH_JID, node, secret=secret)
    carol.disconnect()
    since = s.pushgate.log.offset()
    bob = connect_factory(s.server, "bob")
    bob.send_message("carol@localhost", "through the alias")
    bob.disconnect()
    (d,) = wait_deliveries(endpoint, dev, 1)
    check_p2_alert(d, "carol@localhost", device_id)
    assert s.pushgate.wait_outcomes(since) == ["delivered"]
