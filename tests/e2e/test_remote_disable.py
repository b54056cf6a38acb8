"""XEP-0357 remote disabling (issue 17 point 3): what real Prosody 0.12 and ejabberd 23.01 do
with the message pushgate sends when it removes a registration (the `unregister-device`
command, Siskin's REST unregister, a dead token found by a publish):

    <message from='push.localhost' to='kate@localhost'>
      <pubsub xmlns='http://jabber.org/protocol/pubsub' node='NODE'>
        <affiliation jid='kate@localhost' affiliation='none'/>
      </pubsub>
    </message>

Measured here; docs/architecture.md ("Remote disabling") keeps the summary. Neither server acts on
it: each routes it like any message to the account, live to an online resource, else into
offline storage (delivered with a delay at the next login), and keeps its push registration.
What differs is when the registration ends:

* phone online at the removal: the server keeps the registration; the next message to the
  offline account is published to the removed node, answered item-not-found, and only then the
  server disables it;
* phone offline (REST unregister, dead token): storing the message offline makes the server
  publish for it to every registration of the account, so the removed node's publish is
  answered item-not-found and the server disables it at once; the account's other devices get
  that push too: Prosody's is a wake-up (low priority), ejabberd's carries no summary and is an
  alert (high priority, no body) unless the domain is in `background_without_summary`;
* dead token: Prosody reads the component stream in order, so when pushgate's error reply comes
  before the message (every run so far) it disables first and the stored message is not
  published to the removed node; ejabberd handles the reply in another process and usually
  (13 of 15 runs) publishes the stored message to the removed node once more (not_found).

Every account also has a fence device, enabled from another resource that is offline again: its
deliveries prove that the server handled a message, so "nothing was published to the removed
node" is checked without waiting out a quiet period. (Another resource, because ejabberd keys a
push registration by the session that enabled it: one error deletes every registration that
session enabled.) Lastly, on an own Prosody stack: `notify_removal = false` sends nothing, and a
Conversations-style `register-push-fcm` through `[provider_aliases] fcm = "webpush"` delivers.
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
# What pushgate makes of the server's publish for the stored notification (no body): Prosody
# sends an empty-bodied summary (a wake-up), ejabberd no summary at all (an alert by default).
STORED_PUSH = {"Prosody": ("background", "low"), "Ejabberd": ("alert", "high")}


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


def check_notification(m: ET.Element, account: str, node: str, delayed: bool):
    """The message as pushgate sends it; `delayed`: it came out of offline storage (the server
    added a XEP-0203 delay)."""
    where = ET.tostring(m, encoding="unicode")
    assert m.get("from") == PUSH_JID, where
    assert m.get("to") == account, f"not addressed to the bare JID: {where}"
    assert m.get("type") in (None, "normal"), where
    pubsub = m.find(f"{{{NS_PUBSUB}}}pubsub")
    assert pubsub is not None and pubsub.get("node") == node, where
    aff = pubsub.find(f"{{{NS_PUBSUB}}}affiliation")
    assert aff is not None and (aff.get("jid"), aff.get("affiliation")) == (account, "none"), where
    assert (m.find(f"{{{NS_DELAY}}}delay") is not None) == delayed, where


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


def check_stored_push(server, d: Delivery, account: str):
    """The fence's delivery of the server's publish for the stored remote-disable message."""
    where = d.summary()
    assert d.status == 201 and d.decrypt_error is None, where
    kind, priority = STORED_PUSH[type(server).__name__]
    assert (d.payload.get("kind"), d.payload.get("priority")) == (kind, priority), where
    assert d.payload.get("account") == account and "body" not in d.payload, where


def only_the_fence_is_pushed(server, pushgate, endpoint, bob: Client, account: str, node: str,
                             fence: Device):
    """A message to the offline account is published to the fence only: the server has dropped
    the removed node."""
    before = len(endpoint.deliveries_for(fence))
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message(account, "after the server disabled it")
    wait_deliveries(endpoint, fence, before + 1)
    time.sleep(SETTLE)
    assert pushgate.outcomes(since) == ["delivered"], pushgate.outcomes(since)
    assert publishes_to(server, node, since_s) == 0


# --- what each server does with it -----------------------------------------------------------
def test_phone_online_gets_it_live_and_the_server_publishes_once_more(
        users, stack, server, pushgate, endpoint, connect):
    """Siskin unregisters while online: the message reaches its resource at once; the server
    keeps the registration until the next message's publish is answered item-not-found."""
    kate, dev, node, fence = phone(connect, endpoint, "kate")
    sent = removals_sent(stack.http_base)
    r = kate.command(PUSH_JID, "unregister-device", form=tigase_form(dev))
    assert r.status == "completed", r.xml
    check_notification(wait_notification(kate), "kate@localhost", node, delayed=False)
    assert removals_sent(stack.http_base) == sent + 1
    kate.disconnect()

    # the server kept it: bob's message is published to the removed node as well
    bob = connect("bob")
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message("kate@localhost", "to a phone that unregistered")
    wait_deliveries(endpoint, fence, 1)
    server.log.wait_for(server.rejection(PUSH_JID, node, "cancel", "item-not-found"),
                        since=since_s)
    server.log.wait_for(server.disabling(PUSH_JID, node), since=since_s)
    assert sorted(pushgate.wait_outcomes(since, count=2)) == ["delivered", "not_found"]
    assert publishes_to(server, node, since_s) == 1
    assert endpoint.deliveries_for(dev) == []
    only_the_fence_is_pushed(server, pushgate, endpoint, bob, "kate@localhost", node, fence)


def test_phone_offline_storing_it_makes_the_server_drop_the_registration(
        users, stack, server, pushgate, endpoint, connect):
    """Siskin's REST unregister while the phone sleeps: the message goes to offline storage,
    which makes the server publish to the account's registrations at once, the removed node
    (item-not-found: disabled) and the other device (a push for a message without body)."""
    liam, dev, node, fence = phone(connect, endpoint, "liam")
    liam.disconnect()
    sent = removals_sent(stack.http_base)
    since, since_s = pushgate.log.offset(), server.log.offset()
    status, answer = http("POST", f"{stack.http_base}/unregister-device/{PUSH_JID}",
                          {"account": "liam@localhost", "provider": "webpush",
                           "device-token": dev.url})
    assert (status, answer) == (200, {"result": "success"})
    server.log.wait_for(server.disabling(PUSH_JID, node), since=since_s)
    (d,) = wait_deliveries(endpoint, fence, 1)
    time.sleep(SETTLE)
    assert sorted(pushgate.outcomes(since)) == ["delivered", "not_found"], \
        pushgate.outcomes(since)
    assert publishes_to(server, node, since_s) == 1
    check_stored_push(server, d, "liam@localhost")
    assert removals_sent(stack.http_base) == sent + 1

    # the phone finds the message in offline storage at its next login
    liam = connect("liam")
    check_notification(wait_notification(liam), "liam@localhost", node, delayed=True)
    liam.disconnect()
    only_the_fence_is_pushed(server, pushgate, endpoint, connect("bob"), "liam@localhost", node,
                             fence)


def prosody_read_error_first(server: Prosody, since: int, account: str) -> bool:
    """Whether Prosody read pushgate's error reply before the remote-disable message."""
    first = {}
    for i, line in enumerate(server.log.lines(since)):
        if "Received[component]: <iq " in line and "type='error'" in line:
            first.setdefault("error", i)
        elif ("Received[component]: <message " in line and f"from='{PUSH_JID}'" in line
              and f"to='{account}'" in line):   # Prosody's attribute order varies
            first.setdefault("message", i)
    assert set(first) == {"error", "message"}, first
    return first["error"] < first["message"]


def test_dead_token(users, stack, server, pushgate, endpoint, connect):
    """A publish finds the token dead (410): item-not-found, the server disables, and the message
    stored offline is published to the other device (and, on ejabberd usually, once more to the
    removed node)."""
    mike, dev, node, fence = phone(connect, endpoint, "mike")
    mike.disconnect()
    endpoint.set_status(dev, 410)
    sent = removals_sent(stack.http_base)
    bob = connect("bob")
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message("mike@localhost", "into the void")
    server.log.wait_for(server.rejection(PUSH_JID, node, "cancel", "item-not-found"),
                        since=since_s)
    alert, stored = wait_deliveries(endpoint, fence, 2)
    time.sleep(SETTLE)
    assert [d.status for d in endpoint.deliveries_for(dev)] == [410]
    assert alert.payload.get("body") == "into the void", alert.summary()
    check_stored_push(server, stored, "mike@localhost")
    assert removals_sent(stack.http_base) == sent + 1

    outcomes = sorted(pushgate.outcomes(since))
    extra = publishes_to(server, node, since_s) - 1   # publishes after the dead_token one
    if isinstance(server, Prosody):
        # Prosody handles the component's stanzas in order: the error disables the
        # registration before the message is stored, unless the message came first
        error_first = prosody_read_error_first(server, since_s, "mike@localhost")
        assert extra == (0 if error_first else 1), (error_first, extra)
    else:
        # ejabberd deletes the registration in a process of its own: the stored message is
        # usually published to the removed node too
        assert extra in (0, 1), extra
    assert outcomes == sorted(["dead_token", "delivered", "delivered"] + ["not_found"] * extra)

    mike = connect("mike")
    check_notification(wait_notification(mike), "mike@localhost", node, delayed=True)
    mike.disconnect()
    only_the_fence_is_pushed(server, pushgate, endpoint, bob, "mike@localhost", node, fence)
    err = expect_error(connect("mike").command, PUSH_JID, "unregister-device",
                       form=tigase_form(dev))
    assert err.condition == "item-not-found", err


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
