"""Self-tests of the harness: they need no pushgate.

They prove that the test server behaves as the pushgate scenarios assume (Prosody starts,
slixmpp clients log in, an offline message makes mod_cloud_notify publish to a component, an
error disables the registration with the log line the dead-token test looks for) and that the
WebPush endpoint really decrypts and verifies (RFC 8291 Appendix A; tokens we sign ourselves;
tampered ones are refused).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from clients import NS_DATA, NS_PUBSUB, NS_PUSH, PUBLISH_OPTIONS, FakePushComponent
from conftest import DOMAIN, FAKE_PUSH_JID, OTHER_DOMAIN, prosody_only
from prosody import DISABLED_LINE, ERROR_LINE
from webpush_endpoint import (VapidError, WebPushEndpoint, b64url, b64url_decode,
                              decrypt_aes128gcm, encrypt_aes128gcm, private_key_from_raw,
                              public_bytes, sign_vapid, verify_vapid)


# --- Prosody + slixmpp -----------------------------------------------------------------------
@prosody_only
def test_prosody_starts_and_clients_log_in(connect):
    alice = connect("alice")
    mallory = connect("mallory", OTHER_DOMAIN)
    assert alice.full_jid.startswith("alice@localhost/")
    assert mallory.full_jid.startswith("mallory@other.localhost/")
    # the server answers a ping: the session is fully up
    alice.ping(DOMAIN)


@pytest.fixture(scope="module")
def fakepush_module(runner, stack):
    c = FakePushComponent(runner, FAKE_PUSH_JID, stack.fake_secret,
                          stack.server.component_port).start()
    yield c
    c.stop()


@pytest.fixture
def fakepush(fakepush_module):
    fakepush_module.reply = None
    yield fakepush_module
    fakepush_module.reply = None


def _form_values(x) -> dict:
    return {f.get("var"): [v.text or "" for v in f.findall(f"{{{NS_DATA}}}value")]
            for f in x.findall(f"{{{NS_DATA}}}field")}


@prosody_only
def test_offline_message_publishes_to_component(connect, fakepush):
    hank = connect("hank")
    hank.enable_push(FAKE_PUSH_JID, "harness-node", secret="harness-secret")
    hank.disconnect()
    before = len(fakepush.publishes)
    bob = connect("bob")
    bob.send_message("hank@localhost", "harness hello")

    (pub,) = fakepush.wait_for(before + 1)[before:]
    assert pub.get("from") == DOMAIN, "the publisher is the user's server (bare domain)"
    publish = pub.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish")
    assert publish is not None and publish.get("node") == "harness-node"
    summary = publish.find(f"{{{NS_PUBSUB}}}item/{{{NS_PUSH}}}notification/{{{NS_DATA}}}x")
    fields = _form_values(summary)
    assert fields["FORM_TYPE"] == ["urn:xmpp:push:summary"]
    assert fields["message-count"] == ["1"]
    assert fields["last-message-body"] == ["harness hello"]
    assert fields["last-message-sender"] == [bob.full_jid]
    options = pub.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish-options/{{{NS_DATA}}}x")
    assert _form_values(options) == {"FORM_TYPE": [PUBLISH_OPTIONS], "secret": ["harness-secret"]}


@prosody_only
def test_error_reply_disables_registration(server, connect, fakepush):
    """push_max_errors = 1: the first item-not-found disables, with the logged line the
    dead-token scenario waits for; later messages make no publish."""
    ivan = connect("ivan")
    ivan.enable_push(FAKE_PUSH_JID, "doomed-node")
    ivan.disconnect()
    fakepush.reply = ("cancel", "item-not-found")
    since = server.log.offset()
    before = len(fakepush.publishes)
    bob = connect("bob")
    bob.send_message("ivan@localhost", "first")
    fakepush.wait_for(before + 1)
    server.log.wait_for(ERROR_LINE.format(type="cancel", condition="item-not-found"),
                         since=since)
    server.log.wait_for(DISABLED_LINE.format(jid=FAKE_PUSH_JID, node="doomed-node"),
                         since=since)
    n = len(fakepush.publishes)
    since2 = server.log.offset()
    bob.send_message("ivan@localhost", "second")
    # the message went to offline storage and mod_cloud_notify looked: nothing to push to
    server.log.wait_for(r"Saved to offline storage: <message", since=since2)
    server.log.wait_for(r"Invoking cloud handle_notify_request\(\) for offline stanza",
                         since=since2)
    time.sleep(0.5)
    assert len(fakepush.publishes) == n, "a disabled registration must not be published to"


# --- the WebPush endpoint --------------------------------------------------------------------
RFC8291 = {
    "ua_private": "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94",
    "ua_public": "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkN"
                 "toIAiw4",
    "as_private": "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw",
    "salt": "DGv6ra1nlYgDCS1FRnbzlw",
    "auth": "BTBZMqHH6r4Tts7J_aSIgg",
    "body": "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocIn"
            "mYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGN"
            "WQexSgSxsj_Qulcy4a-fN",
    "plaintext": b"When I grow up, I want to be a watermelon",
}


def test_rfc8291_appendix_a_vector():
    ua = private_key_from_raw(b64url_decode(RFC8291["ua_private"]))
    assert b64url(public_bytes(ua)) == RFC8291["ua_public"]
    auth = b64url_decode(RFC8291["auth"])
    body = b64url_decode(RFC8291["body"])
    assert decrypt_aes128gcm(body, ua, auth) == RFC8291["plaintext"]
    again = encrypt_aes128gcm(RFC8291["plaintext"], public_bytes(ua), auth,
                              as_private=private_key_from_raw(
                                  b64url_decode(RFC8291["as_private"])),
                              salt=b64url_decode(RFC8291["salt"]))
    assert again == body
    with pytest.raises(Exception):
        decrypt_aes128gcm(body[:-1] + bytes([body[-1] ^ 1]), ua, auth)
    with pytest.raises(Exception):
        decrypt_aes128gcm(body, ua, b"\x00" * 16)


def _post(url, body: bytes, headers: dict) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_endpoint_decrypts_and_verifies():
    vapid = ec.generate_private_key(ec.SECP256R1())
    ep = WebPushEndpoint(vapid_public_key=public_bytes(vapid),
                         vapid_subject="mailto:test@localhost").start()
    try:
        dev = ep.new_device()
        assert len(dev.p256dh) == 87 and len(dev.auth_b64) == 22
        payload = {"kind": "alert", "body": "hi ☃"}
        body = encrypt_aes128gcm(json.dumps(payload).encode(), public_bytes(dev.ua_private),
                                 dev.auth)
        good = sign_vapid(vapid, ep.origin, "mailto:test@localhost")
        assert _post(dev.url, body, {"Authorization": good, "Content-Encoding": "aes128gcm",
                                     "TTL": "60"}) == 201
        (d,) = ep.wait_for(dev, 1)
        assert d.payload == payload and d.decrypt_error is None and d.vapid_error is None
        assert d.vapid_claims["aud"] == ep.origin

        ep.set_status(dev, 410)
        other = ec.generate_private_key(ec.SECP256R1())
        assert _post(dev.url, body, {"Authorization": sign_vapid(other, ep.origin,
                                                                 "mailto:test@localhost"),
                                     "Content-Encoding": "aes128gcm"}) == 410
        d2 = ep.wait_for(dev, 2)[1]
        assert d2.status == 410 and "configured VAPID public key" in d2.vapid_error

        plain = ep.new_device(encrypted=False)
        assert _post(plain.url, b'{"kind":"clear"}', {"Authorization": good}) == 201
        assert ep.wait_for(plain, 1)[0].payload == {"kind": "clear"}
        assert _post(ep.origin + "/push/unknown", b"x", {}) == 404
    finally:
        ep.stop()


def test_vapid_verification_rejects_bad_tokens():
    key = ec.generate_private_key(ec.SECP256R1())
    aud = "http://127.0.0.1:1"
    now = int(time.time())
    claims = verify_vapid(sign_vapid(key, aud, "mailto:x@y"), aud, expected_sub="mailto:x@y",
                          expected_key=public_bytes(key))
    assert claims["sub"] == "mailto:x@y"
    cases = {
        "wrong aud": sign_vapid(key, "http://127.0.0.1:2", "mailto:x@y"),
        "expired": sign_vapid(key, aud, "mailto:x@y", exp=now - 10),
        "too far ahead": sign_vapid(key, aud, "mailto:x@y", exp=now + 25 * 3600),
    }
    for what, header in cases.items():
        with pytest.raises(VapidError):
            verify_vapid(header, aud)
            pytest.fail(what)
    good = sign_vapid(key, aud, "mailto:x@y")
    t, k = good.split(", k=")
    forged_payload = b64url(json.dumps({"aud": aud, "exp": now + 60, "sub": "x"}).encode())
    h, _, s = t[len("vapid t="):].split(".")
    with pytest.raises(VapidError, match="signature"):
        verify_vapid(f"vapid t={h}.{forged_payload}.{s}, k={k}", aud)
    with pytest.raises(VapidError):
        verify_vapid(None, aud)
    with pytest.raises(VapidError):
        verify_vapid("WebPush abc", aud)
