"""(b) offline messages become WebPush deliveries in both dialects; (c) a dead token (410, 404)
ends a registration. On both servers: each disables the registration at pushgate's
`item-not-found` (ejabberd always at the first error, Prosody here because localhost has
push_max_errors = 1)."""

from __future__ import annotations

import secrets

import pytest

from clients import expect_error, submit_form
from conftest import PUSH_JID
from scenario import (assert_quiet, check_alert, check_p2_alert, register_p2, register_tigase,
                      wait_deliveries)


@pytest.fixture(scope="module")
def alice_devices(server, pushgate, endpoint_session, connect_factory):
    """alice with three registrations, all enabled at Prosody, then offline:
    tigase  - register-device, provider webpush, with p256dh/auth (aes128gcm)
    p2      - register-push-webpush (secret), re-registered with a new token (p2_old unused)
    plain   - register-device, provider up, no keys (plaintext JSON)"""
    ep = endpoint_session
    alice = connect_factory(server, "alice")
    devs = {"tigase": ep.new_device(), "p2_old": ep.new_device(), "p2": ep.new_device(),
            "plain": ep.new_device(encrypted=False)}
    nodes = {"tigase": register_tigase(alice, devs["tigase"], "webpush"),
             "plain": register_tigase(alice, devs["plain"], "up")}
    device_id = "alice-phone-" + secrets.token_hex(3)
    node_old, secret_old = register_p2(alice, devs["p2_old"], device_id)
    nodes["p2"], secret = register_p2(alice, devs["p2"], device_id)
    assert (nodes["p2"], secret) == (node_old, secret_old), \
        "p2 re-registration with a new token must keep node and secret"
    alice.enable_push(PUSH_JID, nodes["tigase"])
    alice.enable_push(PUSH_JID, nodes["p2"], secret=secret)
    alice.enable_push(PUSH_JID, nodes["plain"])
    alice.disconnect()
    yield devs, nodes, device_id
    # leave alice without registrations at the server for the other modules
    alice = connect_factory(server, "alice")
    alice.disable_push(PUSH_JID)
    alice.disconnect()


def test_offline_messages_are_delivered(alice_devices, server, pushgate, endpoint, connect):
    devs, nodes, device_id = alice_devices
    bob = connect("bob")
    since = pushgate.log.offset()
    texts = [f"hello alice {i} {secrets.token_hex(3)}" for i in (1, 2)]
    for t in texts:
        bob.send_message("alice@localhost", t)

    for name in ("tigase", "plain"):
        got = wait_deliveries(endpoint, devs[name], 2)
        assert len(got) == 2, f"{name}: expected one delivery per publish, got {len(got)}"
        assert sorted(d.payload["body"] for d in got if isinstance(d.payload, dict)) == \
            sorted(texts), [d.summary() for d in got]
        for d in got:
            check_alert(d, devs[name], account="alice@localhost", sender=bob.full_jid,
                        body=d.payload["body"], message_count=server.MESSAGE_COUNT)
    # p2 (Conversations' contract): no content, a hashed account, a collapse key.
    got = wait_deliveries(endpoint, devs["p2"], 2)
    assert len(got) == 2, f"p2: expected one delivery per publish, got {len(got)}"
    for d in got:
        check_p2_alert(d, "alice@localhost", device_id)
    assert endpoint.deliveries_for(devs["p2_old"]) == [], \
        "the p2 re-registration's old token must not be used any more"
    outcomes = pushgate.wait_outcomes(since, count=6)
    assert outcomes == ["delivered"] * 6, outcomes
    # The server's real publishes take the lean reading, not the minidom tree.
    reads = pushgate.publish_reads(since)
    assert reads == ["bytes"] * 6, reads


def test_dead_token_ends_registration(server, pushgate, endpoint, connect):
    dev = endpoint.new_device()
    carol = connect("carol")
    node = register_tigase(carol, dev, "webpush")
    carol.enable_push(PUSH_JID, node)
    carol.disconnect()
    bob = connect("bob")

    # works first
    since = pushgate.log.offset()
    bob.send_message("carol@localhost", "before the token dies")
    check_alert(wait_deliveries(endpoint, dev, 1)[0], dev, "carol@localhost", bob.full_jid,
                "before the token dies", server.MESSAGE_COUNT)
    assert pushgate.wait_outcomes(since) == ["delivered"]

    # the push service says the subscription is gone
    endpoint.set_status(dev, 410)
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message("carol@localhost", "into the void")
    assert wait_deliveries(endpoint, dev, 2)[1].status == 410
    assert pushgate.wait_outcomes(since) == ["dead_token"]
    # pushgate answered item-not-found (cancel) and the server disabled the registration
    server.log.wait_for(server.rejection(PUSH_JID, node, "cancel", "item-not-found"),
                        since=since_s)
    server.log.wait_for(server.disabling(PUSH_JID, node), since=since_s)

    # no more publishes
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message("carol@localhost", "anyone there?")
    assert_quiet(pushgate, server, since, since_s, endpoint, dev, 2)

    # and pushgate forgot it
    carol = connect("carol")
    err = expect_error(carol.command, PUSH_JID, "unregister-device",
                       form=submit_form({"provider": "webpush", "device-token": dev.url}))
    assert err.condition == "item-not-found", err


def test_404_is_a_dead_token_too(server, pushgate, endpoint, connect):
    dev = endpoint.new_device()
    endpoint.set_status(dev, 404)
    judy = connect("judy")
    node = register_tigase(judy, dev, "webpush")
    judy.enable_push(PUSH_JID, node)
    judy.disconnect()
    bob = connect("bob")
    since, since_s = pushgate.log.offset(), server.log.offset()
    bob.send_message("judy@localhost", "endpoint unknown")
    assert wait_deliveries(endpoint, dev, 1)[0].status == 404
    assert pushgate.wait_outcomes(since) == ["dead_token"]
    server.log.wait_for(server.disabling(PUSH_JID, node), since=since_s)
    judy = connect("judy")
    err = expect_error(judy.command, PUSH_JID, "unregister-device",
                       form=submit_form({"provider": "webpush", "device-token": dev.url}))
    assert err.condition == "item-not-found", err
