"""(e) publishes pushgate must refuse: wrong secret, a foreign domain, a full-JID sender.
Plus a transient provider failure: queued (answered `result`), delivered after, the
registration stays."""

from __future__ import annotations

import re
import secrets

import pytest

from clients import expect_error
from conftest import PUSH_JID, diagnostics
from prosody import ERROR_LINE
from scenario import check_alert, check_p2_alert, register_p2, register_tigase, wait_deliveries


def test_wrong_secret_is_not_found_and_right_secret_still_works(stack, pushgate, endpoint,
                                                                 connect):
    prosody = stack.prosody
    dev = endpoint.new_device()
    dave = connect("dave")
    device_id = "dave-phone-" + secrets.token_hex(3)
    node, secret = register_p2(dave, dev, device_id)
    dave.disconnect()
    bob = connect("bob")
    wrong = secret[:-2] + ("AA" if not secret.endswith("AA") else "BB")

    # no publish-options at all, then a wrong secret: both refused as an unknown node. Prosody
    # drops the registration after each error (push_max_errors = 1): dave enables again.
    for what, sent_secret in (("no secret", None), ("a wrong secret", wrong)):
        dave = connect("dave")
        dave.enable_push(PUSH_JID, node, secret=sent_secret)
        dave.disconnect()
        since, since_p = pushgate.log.offset(), prosody.log.offset()
        bob.send_message("dave@localhost", f"with {what}")
        assert pushgate.wait_outcomes(since) == ["not_found"], what
        prosody.log.wait_for(
            re.escape(ERROR_LINE.format(type="cancel", condition="item-not-found"))
            + f".*'{re.escape(PUSH_JID)}<{re.escape(node)}'", since=since_p)
        assert endpoint.deliveries_for(dev) == [], f"nothing may be delivered with {what}"

    dave = connect("dave")
    dave.enable_push(PUSH_JID, node, secret=secret)
    dave.disconnect()
    since = pushgate.log.offset()
    bob.send_message("dave@localhost", "with the right secret")
    check_p2_alert(wait_deliveries(endpoint, dev, 1)[0], "dave@localhost", device_id)
    assert pushgate.wait_outcomes(since) == ["delivered"]


def test_unknown_node_is_not_found(stack, pushgate, connect):
    prosody = stack.prosody
    node = secrets.token_urlsafe(16)
    grace = connect("grace")
    grace.enable_push(PUSH_JID, node)
    grace.disconnect()
    bob = connect("bob")
    since, since_p = pushgate.log.offset(), prosody.log.offset()
    bob.send_message("grace@localhost", "nobody registered this node")
    assert pushgate.wait_outcomes(since) == ["not_found"]
    prosody.log.wait_for(re.escape(ERROR_LINE.format(type="cancel", condition="item-not-found"))
                         + f".*'{re.escape(PUSH_JID)}<{re.escape(node)}'", since=since_p)


@pytest.fixture
def alice_node(connect, pushgate, endpoint):
    """A registration of alice@localhost that alice has not enabled at her server."""
    dev = endpoint.new_device()
    alice = connect("alice")
    return alice, dev, register_tigase(alice, dev, "webpush")


def test_foreign_domain_is_not_found(stack, pushgate, endpoint, connect, alice_node):
    prosody = stack.prosody
    alice, dev, node = alice_node
    mallory = connect("mallory", "other.localhost")
    mallory.enable_push(PUSH_JID, node)
    mallory.disconnect()
    bob = connect("bob")

    since, since_p = pushgate.log.offset(), prosody.log.offset()
    bob.send_message("mallory@other.localhost", "for mallory")
    # other.localhost publishes to alice's node
    prosody.log.wait_for(re.escape(f"push notification for mallory@other.localhost to "
                                   f"{PUSH_JID} ({node})"), since=since_p)
    assert pushgate.wait_outcomes(since) == ["not_found"]
    prosody.log.wait_for(re.escape(ERROR_LINE.format(type="cancel", condition="item-not-found")),
                         since=since_p)
    assert endpoint.deliveries_for(dev) == [], "a foreign domain's publish must not be delivered"

    # the node itself is valid: alice's own server gets it delivered
    alice.enable_push(PUSH_JID, node)
    alice.disconnect()
    try:
        since = pushgate.log.offset()
        bob.send_message("alice@localhost", "for alice")
        check_alert(wait_deliveries(endpoint, dev, 1)[0], dev, "alice@localhost",
                    bob.full_jid, "for alice")
        assert pushgate.wait_outcomes(since) == ["delivered"]
    finally:
        alice = connect("alice")
        alice.disable_push(PUSH_JID, node)


def test_publish_from_full_jid_is_forbidden(pushgate, endpoint, alice_node):
    alice, dev, node = alice_node
    since = pushgate.log.offset()
    err = expect_error(alice.publish_raw, PUSH_JID, node, body="from a client")
    assert err.condition == "forbidden", err
    assert pushgate.wait_outcomes(since) == ["forbidden"]
    assert endpoint.deliveries_for(dev) == []


def test_transient_failure_keeps_registration(stack, pushgate, endpoint, connect):
    prosody = stack.prosody
    dev = endpoint.new_device()
    endpoint.set_status(dev, 503)
    erin = connect("erin")
    node = register_tigase(erin, dev, "webpush")
    erin.enable_push(PUSH_JID, node)
    erin.disconnect()
    bob = connect("bob")

    since, since_p = pushgate.log.offset(), prosody.log.offset()
    bob.send_message("erin@localhost", "push service hiccup")
    assert wait_deliveries(endpoint, dev, 1)[0].status == 503
    # Queued for retry: Prosody gets `result` and counts no error.
    assert pushgate.wait_outcomes(since) == ["queued"]

    endpoint.set_status(dev, 201)
    retried = endpoint.wait_for_body(dev, "push service hiccup", diagnostics=diagnostics)
    check_alert(retried, dev, "erin@localhost", bob.full_jid, "push service hiccup")
    assert "Got error <" not in prosody.log.text(since_p), "Prosody counted an error"
    since = pushgate.log.offset()
    bob.send_message("erin@localhost", "all good again")
    got = endpoint.wait_for_body(dev, "all good again", diagnostics=diagnostics)
    check_alert(got, dev, "erin@localhost", bob.full_jid, "all good again")
    assert pushgate.wait_outcomes(since) == ["delivered"]
