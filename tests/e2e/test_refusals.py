"""(e) publishes pushgate must refuse: wrong secret, unknown node, a foreign domain, a full-JID
sender; how each server counts such refusals. Plus a provider outage: the notifications are
queued (answered `result`), delivered after the recovery, and the registration stays on both
servers.

Each refusal is answered `item-not-found` (cancel), and the servers react differently
(xep0357-interop.md §4.1): ejabberd deletes the registration at the first error that is not
`wait`; Prosody counts them and deletes at push_max_errors (1 on localhost, 2 on
other.localhost in this suite)."""

from __future__ import annotations

import secrets

import pytest

from clients import expect_error
from conftest import OTHER_DOMAIN, PROSODY_MAX_ERRORS, PUSH_JID, diagnostics
from scenario import (assert_quiet, check_alert, check_p2_alert, register_p2, register_tigase,
                      wait_deliveries)


def test_wrong_secret_is_not_found_and_right_secret_still_works(server, pushgate, endpoint,
                                                                 connect):
    dev = endpoint.new_device()
    dave = connect("dave")
    device_id = "dave-phone-" + secrets.token_hex(3)
    node, secret = register_p2(dave, dev, device_id)
    dave.disconnect()
    bob = connect("bob")
    wrong = secret[:-2] + ("AA" if not secret.endswith("AA") else "BB")

    # no publish-options at all, then a wrong secret: both refused as an unknown node. The
    # server drops the registration after each error: dave enables again.
    for what, sent_secret in (("no secret", None), ("a wrong secret", wrong)):
        dave = connect("dave")
        dave.enable_push(PUSH_JID, node, secret=sent_secret)
        dave.disconnect()
        since, since_s = pushgate.log.offset(), server.log.offset()
        bob.send_message("dave@localhost", f"with {what}")
        assert pushgate.wait_outcomes(since) == ["not_found"], what
        server.log.wait_for(server.rejection(PUSH_JID, node, "cancel", "item-not-found"),
                            since=since_s)
        server.log.wait_for(server.disabling(PUSH_JID, node), since=since_s)
        assert endpoint.deliveries_for(dev) == [], f"nothing may be delivered with {what}"

    dave = connect("dave")
    dave.enable_push(PUSH_JID, node, secret=secret)
    dave.disconnect()
    since = pushgate.log.offset()
    bob.send_message("dave@localhost", "with the right secret")
    check_p2_alert(wait_deliveries(endpoint, dev, 1)[0], "dave@localhost", device_id)
    assert pushgate.wait_outcomes(since) == ["delivered"]


def test_unknown_node_is_not_found(server, pushgate, connect):
    node = secrets.token_urlsafe(16)
    grace = connect("grace")
    grace.enable_push(PUSH_JID, node)
    grace.disconnect()
    bob = connect("bob")
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message("grace@localhost", "nobody registered this node")
    assert pushgate.wait_outcomes(since) == ["not_found"]
    server.log.wait_for(server.rejection(PUSH_JID, node, "cancel", "item-not-found"),
                        since=since_s)


def test_each_server_disables_after_its_own_count_of_refusals(server_kind, server, pushgate,
                                                               endpoint, connect):
    """oscar@other.localhost enables a node pushgate does not know: ejabberd stops publishing
    after the first refusal, Prosody publishes again until push_max_errors (2 there)."""
    refusals = 1 if server_kind == "ejabberd" else PROSODY_MAX_ERRORS[OTHER_DOMAIN]
    node = secrets.token_urlsafe(16)
    oscar = connect("oscar", OTHER_DOMAIN)
    oscar.enable_push(PUSH_JID, node)
    oscar.disconnect()
    bob = connect("bob")
    for i in range(refusals):
        since, since_s = pushgate.log.offset(), server.log.offset()
        bob.send_message(f"oscar@{OTHER_DOMAIN}", f"refused {i}")
        assert pushgate.wait_outcomes(since) == ["not_found"], f"publish {i + 1}"
        server.log.wait_for(server.rejection(PUSH_JID, node, "cancel", "item-not-found"),
                            since=since_s)
    server.log.wait_for(server.disabling(PUSH_JID, node), since=since_s)
    assert len(server.log.find_all(server.disabling(PUSH_JID, node))) == 1

    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message(f"oscar@{OTHER_DOMAIN}", "after the registration was disabled")
    assert_quiet(pushgate, server, since, since_s, endpoint, endpoint.new_device(), 0)


@pytest.fixture
def alice_node(connect, pushgate, endpoint):
    """A registration of alice@localhost that alice has not enabled at her server."""
    dev = endpoint.new_device()
    alice = connect("alice")
    return alice, dev, register_tigase(alice, dev, "webpush")


def test_foreign_domain_is_not_found(server, pushgate, endpoint, connect, alice_node):
    alice, dev, node = alice_node
    mallory = connect("mallory", OTHER_DOMAIN)
    mallory.enable_push(PUSH_JID, node)
    mallory.disconnect()
    bob = connect("bob")

    # other.localhost publishes to alice's node
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message(f"mallory@{OTHER_DOMAIN}", "for mallory")
    assert pushgate.wait_outcomes(since) == ["not_found"]
    server.log.wait_for(server.rejection(PUSH_JID, node, "cancel", "item-not-found"),
                        since=since_s)
    assert endpoint.deliveries_for(dev) == [], "a foreign domain's publish must not be delivered"

    # the node itself is valid: alice's own server gets it delivered
    alice.enable_push(PUSH_JID, node)
    alice.disconnect()
    try:
        since = pushgate.log.offset()
        bob.send_message("alice@localhost", "for alice")
        check_alert(wait_deliveries(endpoint, dev, 1)[0], dev, "alice@localhost",
                    bob.full_jid, "for alice", server.MESSAGE_COUNT)
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


def test_provider_outage_keeps_the_registration(server, pushgate, endpoint, connect):
    """Three messages while the push service answers 503: each is queued for retry and answered
    `result`, so no server counts an error (with push_max_errors = 1 on localhost, Prosody would
    disable at the first); all three arrive after the recovery, and so does the next message."""
    dev = endpoint.new_device()
    endpoint.set_status(dev, 503)
    erin = connect("erin")
    node = register_tigase(erin, dev, "webpush")
    erin.enable_push(PUSH_JID, node)
    erin.disconnect()
    bob = connect("bob")

    since, since_s = pushgate.log.offset(), server.log.offset()
    texts = [f"push service hiccup {i}" for i in range(3)]
    for text in texts:
        bob.send_message("erin@localhost", text)
    assert [d.status for d in wait_deliveries(endpoint, dev, 3)] == [503] * 3
    assert pushgate.wait_outcomes(since, count=3) == ["queued"] * 3

    endpoint.set_status(dev, 201)
    for text in texts:
        retried = endpoint.wait_for_body(dev, text, diagnostics=diagnostics)
        check_alert(retried, dev, "erin@localhost", bob.full_jid, text, server.MESSAGE_COUNT)
    rejected = server.log.find_all(server.ANY_REJECTION, since_s)
    assert rejected == [], [m.string for m in rejected]
    since = pushgate.log.offset()
    bob.send_message("erin@localhost", "all good again")
    got = endpoint.wait_for_body(dev, "all good again", diagnostics=diagnostics)
    check_alert(got, dev, "erin@localhost", bob.full_jid, "all good again",
                server.MESSAGE_COUNT)
    assert pushgate.wait_outcomes(since) == ["delivered"]
    disabled = server.log.find_all(server.disabling(PUSH_JID, node), since_s)
    assert disabled == [], [m.string for m in disabled]
