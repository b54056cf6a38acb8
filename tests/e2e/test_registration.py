"""(a) Registration through the server (Prosody and ejabberd) with slixmpp clients: Tigase
`register-device` (two-stage and single-stage), p2 `register-push-<id>`, idempotency, disco,
ping, command errors; unregistering by command and by Siskin's REST call, after which the
server's next publish is refused and the server disables the registration."""

from __future__ import annotations

import secrets

import pytest

from clients import NS_COMMANDS, expect_error, submit_form
from conftest import PUSH_JID
from pushgate_proc import PROVIDERS
from scenario import http, register_tigase

COMMANDS = {"register-device", "unregister-device", "register-push-webpush",
            "unregister-push-webpush", "register-push-up", "unregister-push-up"}
MAX_PAYLOAD = "3000"  # [registration] max_payload_size in the test config


def fake_endpoint(tag: str) -> str:
    # never delivered to in this module (no `enable`), so any URL will do
    return f"http://127.0.0.1:9/push/{tag}-{secrets.token_urlsafe(8)}"


def tigase_form(provider: str, token: str, **extra) -> object:
    return submit_form({"provider": provider, "device-token": token, **extra})


def assert_tigase_result(r) -> str:
    assert r.status == "completed", r.xml
    assert r.form is not None, f"completed register-device without a form: {r.xml}"
    assert r.form.type == "result", f"result form type is {r.form.type!r}: {r.xml}"
    node = r.form.value("node")
    assert node, f"no node in {r.xml}"
    assert len(node) >= 22, f"node {node!r} is shorter than 22 chars (< 128 bits base64url)"
    assert "features" in r.form.fields, f"no features field: {r.xml}"
    assert r.form.fields["features"].type == "list-multi", r.xml
    assert r.form.value("max-payload-size") == MAX_PAYLOAD, r.xml
    return node


@pytest.fixture
def alice(connect, pushgate):
    return connect("alice")


# --- disco and ping --------------------------------------------------------------------------
def test_disco_info(alice):
    identities, features = alice.disco_info(PUSH_JID)
    assert ("pubsub", "push") in [(c, t) for c, t, _ in identities], identities
    for f in ("urn:xmpp:push:0", "http://jabber.org/protocol/commands", "jabber:x:data",
              *PROVIDERS):
        assert f in features, f"disco#info feature {f!r} missing: {features}"


def test_disco_items_lists_commands(alice):
    items = alice.disco_items(PUSH_JID, node=NS_COMMANDS)
    nodes = {node for _, node, _ in items}
    assert COMMANDS <= nodes, f"missing commands {COMMANDS - nodes}; got {items}"
    assert all(jid == PUSH_JID for jid, _, _ in items), items
    # the same through slixmpp's own XEP-0050 helper
    r = alice.runner.run(alice.xmpp.plugin["xep_0050"].get_commands(jid=PUSH_JID))
    assert COMMANDS <= {i[1] for i in r["disco_items"]["items"]}


def test_ping(alice):
    r = alice.ping(PUSH_JID)
    assert r["type"] == "result"


# --- Tigase dialect --------------------------------------------------------------------------
def test_register_device_two_stage(alice):
    first = alice.command(PUSH_JID, "register-device")
    assert first.status == "executing", first.xml
    assert first.sessionid, f"no sessionid: {first.xml}"
    assert first.form is not None and first.form.type == "form", first.xml
    provider = first.form.fields.get("provider")
    assert provider is not None, first.xml
    assert provider.type == "list-single", first.xml
    assert set(provider.options) == set(PROVIDERS), first.xml
    for var in ("device-token", "device-second-token"):
        assert var in first.form.fields, f"blank form lacks {var}: {first.xml}"

    token = fake_endpoint("two-stage")
    done = alice.command(PUSH_JID, "register-device", action="complete",
                         sessionid=first.sessionid, form=tigase_form("webpush", token))
    node = assert_tigase_result(done)

    # the other way to finish a session: execute with the form
    first2 = alice.command(PUSH_JID, "register-device")
    done2 = alice.command(PUSH_JID, "register-device", action="execute",
                          sessionid=first2.sessionid, form=tigase_form("webpush", token))
    assert assert_tigase_result(done2) == node, "re-registering the same token must keep the node"


def test_register_device_single_stage_idempotent(alice):
    token = fake_endpoint("single")
    r1 = alice.command(PUSH_JID, "register-device", form=tigase_form("up", token))
    node1 = assert_tigase_result(r1)
    r2 = alice.command(PUSH_JID, "register-device", form=tigase_form("up", token))
    assert assert_tigase_result(r2) == node1, "same (account, provider, token) -> same node"
    r3 = alice.command(PUSH_JID, "register-device", form=tigase_form("up", fake_endpoint("x")))
    assert assert_tigase_result(r3) != node1, "a different token is a different device"
    # with WebPush keys and a second token
    r4 = alice.command(PUSH_JID, "register-device", form=tigase_form(
        "webpush", fake_endpoint("keys"), **{"device-second-token": "voip-token",
                                             "p256dh": "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzO"
                                             "RcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
                                             "auth": "BTBZMqHH6r4Tts7J_aSIgg"}))
    assert_tigase_result(r4)


def test_unregister_device(alice):
    token = fake_endpoint("unreg")
    assert_tigase_result(alice.command(PUSH_JID, "register-device",
                                       form=tigase_form("webpush", token)))
    r = alice.command(PUSH_JID, "unregister-device", form=tigase_form("webpush", token))
    assert r.status == "completed", r.xml
    err = expect_error(alice.command, PUSH_JID, "unregister-device",
                       form=tigase_form("webpush", token))
    assert err.condition == "item-not-found", err


def test_unregister_by_command_and_by_rest_reaches_the_server(stack, server, pushgate,
                                                              endpoint, connect):
    frank = connect("frank")
    by_command, by_rest = endpoint.new_device(), endpoint.new_device()
    nodes = [register_tigase(frank, dev, "webpush") for dev in (by_command, by_rest)]
    for node in nodes:
        frank.enable_push(PUSH_JID, node)

    def unregister(dev):
        return frank.command(PUSH_JID, "unregister-device",
                             form=tigase_form("webpush", dev.url))

    assert unregister(by_command).status == "completed"
    status, answer = http("POST", f"{stack.http_base}/unregister-device/{PUSH_JID}",
                          {"account": "frank@localhost", "provider": "webpush",
                           "device-token": by_rest.url})
    assert (status, answer) == (200, {"result": "success"})
    for dev in (by_command, by_rest):
        err = expect_error(unregister, dev)
        assert err.condition == "item-not-found", err
    frank.disconnect()

    # The server still has both enabled: its publishes are refused and it disables them.
    since, since_s = pushgate.log.offset(), server.log.offset()
    connect("bob").send_message("frank@localhost", "to an unregistered phone")
    assert pushgate.wait_outcomes(since, count=2) == ["not_found"] * 2
    for node in nodes:
        server.log.wait_for(server.disabling(PUSH_JID, node), since=since_s)
    assert endpoint.deliveries_for(by_command) == endpoint.deliveries_for(by_rest) == []


def test_register_device_missing_token_is_bad_request(alice):
    err = expect_error(alice.command, PUSH_JID, "register-device",
                       form=submit_form({"provider": "webpush"}))
    assert err.condition == "bad-request", err


def test_register_device_unknown_provider_is_refused(alice):
    err = expect_error(alice.command, PUSH_JID, "register-device",
                       form=tigase_form("no-such-provider", fake_endpoint("p")))
    assert err.condition in ("bad-request", "item-not-found", "not-acceptable"), err


def test_unknown_command_is_item_not_found(alice):
    err = expect_error(alice.command, PUSH_JID, "no-such-command")
    assert err.condition == "item-not-found", err


# --- p2 dialect ------------------------------------------------------------------------------
def p2_form(token: str | None, device_id: str | None, id_field: str = "device-id", **extra):
    return submit_form({"token": token, id_field: device_id, **extra})


def assert_p2_result(r) -> tuple[str, str]:
    assert r.status == "completed", r.xml
    assert r.form is not None, f"completed register-push without a form: {r.xml}"
    assert r.form.value("jid") == PUSH_JID, r.xml
    node, secret = r.form.value("node"), r.form.value("secret")
    assert node, f"no node: {r.xml}"
    assert secret, f"no secret: {r.xml}"
    assert node != secret
    return node, secret


def test_register_push_p2_idempotent(alice):
    device = "dev-" + secrets.token_hex(4)
    r1 = alice.command(PUSH_JID, "register-push-webpush",
                       form=p2_form(fake_endpoint("p2a"), device))
    node, secret = assert_p2_result(r1)
    r2 = alice.command(PUSH_JID, "register-push-webpush",
                       form=p2_form(fake_endpoint("p2b"), device))
    assert assert_p2_result(r2) == (node, secret), "same device-id -> same node and secret"
    other = alice.command(PUSH_JID, "register-push-webpush",
                          form=p2_form(fake_endpoint("p2c"), device + "-other"))
    assert assert_p2_result(other)[0] != node


def test_register_push_p2_legacy_android_id_and_muc(alice):
    device = "android-" + secrets.token_hex(4)
    r = alice.command(PUSH_JID, "register-push-up",
                      form=p2_form(fake_endpoint("legacy"), device, id_field="android-id"))
    node, secret = assert_p2_result(r)
    room = alice.command(PUSH_JID, "register-push-up",
                         form=p2_form(fake_endpoint("legacy"), device,
                                      id_field="android-id", muc="room@conference.localhost"))
    assert assert_p2_result(room)[0] != node, "a per-room registration is a separate node"
    assert alice.command(PUSH_JID, "unregister-push-up",
                         form=submit_form({"device-id": device})).status == "completed"
    assert alice.command(PUSH_JID, "unregister-push-up",
                         form=submit_form({"device-id": device,
                                           "channel": "room@conference.localhost"})
                         ).status == "completed"


def test_unregister_push_p2(alice):
    device = "unreg-" + secrets.token_hex(4)
    assert_p2_result(alice.command(PUSH_JID, "register-push-webpush",
                                   form=p2_form(fake_endpoint("u"), device)))
    r = alice.command(PUSH_JID, "unregister-push-webpush", form=submit_form({"device-id": device}))
    assert r.status == "completed", r.xml
    err = expect_error(alice.command, PUSH_JID, "unregister-push-webpush",
                       form=submit_form({"device-id": device}))
    assert err.condition == "item-not-found", err


def test_register_push_p2_missing_token_is_bad_request(alice):
    err = expect_error(alice.command, PUSH_JID, "register-push-webpush",
                       form=p2_form(None, "dev-x"))
    assert err.condition == "bad-request", err
    err = expect_error(alice.command, PUSH_JID, "register-push-webpush",
                       form=submit_form({"token": fake_endpoint("no-id")}))
    assert err.condition == "bad-request", f"no device-id/android-id: {err}"
