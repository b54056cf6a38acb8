"""The Matrix push gateway front end to end: a real Synapse (synapse_proc.py) whose users set
pushers pointing at pushgate's `/_matrix/push/v1/notify`, pushgate's Matrix front, and two apps:
a UnifiedPush-style one on the WebPush provider (the local WebPush endpoint is the phone's push
service; the pushkey is the endpoint URL, the body plaintext JSON), and an iOS one on the APNs
provider (the local HTTP/2 APNs with token auth; the pushkey is the base64 of the device token,
as Matrix apps send it), with a second iOS app for PushKit (VoIP) pushers, and an Android one
on the FCM v1 provider (the local FCM with its OAuth token endpoint).

Checked: a message and a call reach the phone with what the app needs; a dead endpoint makes
Synapse delete the pusher; a push service outage loses nothing and holds nothing back (pushgate
answers 200 once the notification is queued, so Synapse never enters its per-pusher backoff)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import tempfile

import pytest

from apns_server import ApnsServer
from conftest import _LIVE, diagnostics, running_stack
from fcm_server import CLIENT_EMAIL, PRIVATE_KEY_ID, PROJECT_ID, FcmPki, FcmServer
from pki import CA, new_p8
from procs import free_port
from pushgate_proc import toml_str
from synapse_proc import PUSH_FAILED_LINE

APP = "org.pushgate.e2e.unifiedpush"
IOS_APP = "org.pushgate.e2e.ios"
VOIP_APP = "org.pushgate.e2e.ios.voip"
ANDROID_APP = "org.pushgate.e2e.android"
TOPIC = "org.pushgate.e2e"
ROOM = "pushgate matrix e2e"


@pytest.fixture(scope="module")
def apns():
    """A local APNs (HTTP/2 over TLS, a test CA) accepting provider tokens of one .p8 key;
    yields it, the CA file and the key file."""
    d = tempfile.mkdtemp(prefix="pushgate-e2e-matrix-apns-")
    ca = CA("pushgate e2e Matrix APNs CA")
    ca_file = ca.write(os.path.join(d, "ca.pem"))
    server = ca.issue("localhost", server=True, dns=("localhost",), ips=("127.0.0.1",), days=7)
    p8 = new_p8("MATRIXKEY1", "MATRIXTEAM")
    p8_file = p8.write(os.path.join(d, "AuthKey.p8"))
    mock = ApnsServer(server.cert_pem, server.key_pem,
                      token_keys={"MATRIXKEY1": (p8.public_key, "MATRIXTEAM")},
                      name="apns-mock[matrix]")
    mock.start()
    _LIVE.append(mock)
    try:
        yield mock, ca_file, p8_file
    finally:
        mock.stop()
        _LIVE.remove(mock)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def fcm():
    """A local FCM v1 with its OAuth token endpoint; yields it and the service account and CA
    files pushgate needs."""
    pki = FcmPki()
    srv = FcmServer(pki.server.cert_pem, pki.server.key_pem,
                    accounts={CLIENT_EMAIL: (pki.sa_key.public_key(), PRIVATE_KEY_ID)},
                    project_id=PROJECT_ID, name="fcm-mock[matrix]")
    srv.start()
    _LIVE.append(srv)
    try:
        yield srv, pki.write_service_account(srv.token_uri), pki.ca_file
    finally:
        srv.stop()
        _LIVE.remove(srv)
        pki.cleanup()


@pytest.fixture(scope="module")
def gateway(apns, fcm):
    """pushgate with its HTTP listener and the four Matrix apps; yields the WebPush endpoint
    and the notify URL."""
    mock, ca_file, p8_file = apns
    fcm_mock, service_account, fcm_ca = fcm
    port = free_port()
    toml = "\n".join([
        f'[http]\nlisten = "127.0.0.1:{port}"',
        "[providers.apns]", 'kind = "apns"', f"topic = {toml_str(TOPIC)}",
        'environment = "sandbox"', f"base_url = {toml_str(mock.base_url)}",
        f"ca_file = {toml_str(ca_file)}", f"key_file = {toml_str(p8_file)}",
        'key_id = "MATRIXKEY1"', 'team_id = "MATRIXTEAM"',
        f'[matrix.apps."{APP}"]', 'provider = "webpush"',
        f'[matrix.apps."{IOS_APP}"]', 'provider = "apns"', 'pushkey = "base64"',
        f'[matrix.apps."{VOIP_APP}"]', 'provider = "apns"', 'pushkey = "base64"', "voip = true",
        "[providers.fcm]", 'kind = "fcm"', f"service_account_file = {toml_str(service_account)}",
        f"base_url = {toml_str(fcm_mock.base_url)}", f"ca_file = {toml_str(fcm_ca)}",
        f'[matrix.apps."{ANDROID_APP}"]', 'provider = "fcm"',
    ]) + "\n"
    with running_stack("matrix", pushgate_toml=toml) as (_, endpoint):
        yield endpoint, f"http://127.0.0.1:{port}/_matrix/push/v1/notify"


def phone(gateway, alice):
    """alice's phone: a WebPush device whose URL is her pusher's pushkey."""
    endpoint, url = gateway
    dev = endpoint.new_device(encrypted=False)
    alice.set_pusher(url, app_id=APP, pushkey=dev.url)
    return dev


def test_a_message_and_a_call_reach_the_phone(synapse, gateway):
    endpoint, _ = gateway
    alice, bob, room = synapse.pair(ROOM)
    dev = phone(gateway, alice)
    event = bob.send_text(room, "hello through pushgate")
    d = endpoint.wait_for_body(dev, "hello through pushgate", timeout=30, diagnostics=diagnostics)
    p = d.payload
    assert d.status == 201 and d.vapid_error is None, d.summary()
    # A message is normal urgency (RFC 8030 §5.3), a call high.
    assert p["kind"] == "alert" and p["priority"] == "normal", d.summary()
    assert p["room_id"] == room and p["event_id"] == event, d.summary()
    assert p["sender"] == bob.localpart, d.summary()
    assert p["unread_count"] == 1 and p["badge"] == 1, d.summary()
    assert d.headers.get("urgency") == "normal", d.summary()

    call = bob.send_call_invite(room)
    got = endpoint.wait_for(dev, count=2, timeout=30, diagnostics=diagnostics)
    calls = [x for x in got if isinstance(x.payload, dict) and x.payload.get("event_id") == call]
    assert calls and calls[0].payload["kind"] == "voip", [x.summary() for x in got]
    assert calls[0].headers.get("urgency") == "high", calls[0].summary()


def test_a_dead_endpoint_makes_synapse_delete_the_pusher(synapse, gateway):
    endpoint, _ = gateway
    alice, bob, room = synapse.pair(ROOM)
    dev = phone(gateway, alice)
    assert alice.pushkeys() == {dev.url}
    endpoint.set_status(dev, 410)
    bob.send_text(room, "to a phone that is gone")
    alice.wait_pushkeys(set(), timeout=30)


def test_an_outage_loses_nothing_and_holds_nothing_back(synapse, gateway):
    endpoint, _ = gateway
    alice, bob, room = synapse.pair(ROOM)
    dev = phone(gateway, alice)
    endpoint.set_status(dev, 503)
    since = synapse.log.offset()
    texts = ["during the outage 1", "during the outage 2"]
    for text in texts:
        bob.send_text(room, text)
    # Both reached the push service (and failed) before it came back: neither was held back.
    endpoint.wait_for(dev, count=2, timeout=30, diagnostics=diagnostics)
    endpoint.set_status(dev, 201)
    for text in texts:
        endpoint.wait_for_body(dev, text, timeout=45, diagnostics=diagnostics)
    failed = synapse.log.find_all(PUSH_FAILED_LINE, since)
    assert failed == [], [m.string for m in failed]
    assert alice.pushkeys() == {dev.url}, "the pusher stays"


def test_an_ios_app_gets_its_alert_and_its_pushkit_pusher_the_call(synapse, gateway, apns):
    """Matrix iOS apps send the APNs token base64-encoded: it reaches APNs as hex, with the
    badge, room and event; a call invite goes to the app's PushKit pusher as a VoIP push, and
    a message does not."""
    mock, _, _ = apns
    _, url = gateway
    alice, bob, room = synapse.pair(ROOM)
    token, voip_token = secrets.token_hex(32), secrets.token_hex(32)
    alice.set_pusher(url, app_id=IOS_APP,
                     pushkey=base64.b64encode(bytes.fromhex(token)).decode(),
                     default_payload={"aps": {"mutable-content": 1}})
    alice.set_pusher(url, app_id=VOIP_APP,
                     pushkey=base64.b64encode(bytes.fromhex(voip_token)).decode(), append=True)
    event = bob.send_text(room, "hello iPhone")
    r = mock.wait_saying(token, "hello iPhone", diagnostics=diagnostics)
    assert r.headers.get("apns-push-type") == "alert", r.summary()
    assert r.headers.get("apns-priority") == "10", r.summary()
    assert r.headers.get("apns-topic") == TOPIC, r.summary()
    p = json.loads(r.body)
    assert p["aps"]["badge"] == 1 and p["aps"]["mutable-content"] == 1, r.summary()
    assert p["room_id"] == room and p["event_id"] == event, r.summary()

    call = bob.send_call_invite(room)
    (v,) = mock.wait_for(voip_token, 1, diagnostics=diagnostics)
    assert v.headers.get("apns-push-type") == "voip", v.summary()
    assert v.headers.get("apns-topic") == TOPIC + ".voip", v.summary()
    assert json.loads(v.body)["event_id"] == call, v.summary()
    assert len(mock.requests_for(voip_token)) == 1, "the message went to the PushKit token"


def test_an_android_app_gets_the_event_as_fcm_data(synapse, gateway, fcm):
    """An FCM app: the pushkey is the registration token; the app gets the content, room, event
    and counts as data strings, at Android priority high."""
    mock, _, _ = fcm
    _, url = gateway
    alice, bob, room = synapse.pair(ROOM)
    token = secrets.token_urlsafe(113)[:150]
    alice.set_pusher(url, app_id=ANDROID_APP, pushkey=token)
    event = bob.send_text(room, "hello Android")
    (r,) = mock.wait_for(token, 1, diagnostics=diagnostics)
    m = r.message
    assert r.auth_error is None, r.summary()
    assert m["token"] == token and m["android"]["priority"] == "high", r.summary()
    data = m["data"]
    assert all(isinstance(v, str) for v in data.values()), r.summary()
    assert data["body"] == "hello Android", r.summary()
    assert data["room_id"] == room and data["event_id"] == event, r.summary()
    assert data["unread_count"] == "1", r.summary()
