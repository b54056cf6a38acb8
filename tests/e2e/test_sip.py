"""The SIP front end to end: a real SIP proxy (Kamailio 5.6 running
etc/examples/kamailio-pushgate.cfg unmodified, kamailio.py), phones and a caller played by sipp,
pushgate's Sylk-style `POST /push`, and the local APNs and FCM stand-ins.

A callee registers as Linphone does, with RFC 8599 push parameters in its Contact URI; a caller
INVITEs it and CANCELs. Kamailio POSTs `incoming_session` before relaying the INVITE and `cancel`
after relaying the CANCEL; pushgate turns them into what the phone's app needs:

    iOS (app type sylk)   INVITE -> PushKit: push-type voip, topic <bundle>.voip, priority 10,
                                    an epoch expiration, to the VoIP token, with the Call-ID
                          CANCEL -> background push on the bundle topic, to the other token
    Android (FCM)         INVITE and CANCEL -> data messages, android.priority high

and the SIP side never depends on pushgate: an unknown app (404) or pushgate away, the call
still rings and is cancelled as usual.

Own stack (module scope): a Prosody (pushgate needs its component), one pushgate with `[http]`,
two APNs providers (token auth, topic = each bundle) and an FCM provider, `[sip]` allowing
127.0.0.0/8 with an iOS app of type sylk (`[sip.apps."<bundle>".apple]`), one of type linphone
(calls only), and the Android app (`[sip.apps."<sender id>".firebase]`: Linphone Android sends
its Firebase sender id as pn-param, and the config uses it as the app id), and one Kamailio
pushing to it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import tempfile
import time

import pytest

from apns_server import ApnsServer
from conftest import _LIVE, diagnostics, running_stack
from fcm_server import CLIENT_EMAIL, PRIVATE_KEY_ID, PROJECT_ID, FcmPki, FcmServer
from kamailio import Callee, Kamailio, call_and_cancel
from pki import CA, new_p8
from procs import free_port
from pushgate_proc import toml_str

TEAM = "ABCDE12345"              # the Apple Team ID Linphone puts before the bundle in pn-param
BUNDLE = "org.pushgate.e2e.sip"
LINPHONE_BUNDLE = "org.pushgate.e2e.linphone"
SENDER = "123456789012"          # the Firebase sender id Linphone Android sends as pn-param
KEY_ID, KEY_TEAM = "SIPKEY0001", "SIPTEAM001"
QUIET = 1.0                      # how long we watch for an unexpected extra push


@pytest.fixture(scope="module")
def apns():
    d = tempfile.mkdtemp(prefix="pushgate-e2e-sip-apns-")
    ca = CA("pushgate e2e SIP APNs CA")
    ca_file = ca.write(os.path.join(d, "ca.pem"))
    server = ca.issue("localhost", server=True, dns=("localhost",), ips=("127.0.0.1",), days=7)
    p8 = new_p8(KEY_ID, KEY_TEAM)
    p8_file = p8.write(os.path.join(d, "AuthKey.p8"))
    mock = ApnsServer(server.cert_pem, server.key_pem,
                      token_keys={KEY_ID: (p8.public_key, KEY_TEAM)}, name="apns-mock[sip]")
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
    pki = FcmPki()
    srv = FcmServer(pki.server.cert_pem, pki.server.key_pem,
                    accounts={CLIENT_EMAIL: (pki.sa_key.public_key(), PRIVATE_KEY_ID)},
                    project_id=PROJECT_ID, name="fcm-mock[sip]")
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
    """(stack, /push URL): pushgate with the SIP API and its two apps."""
    mock, ca_file, p8_file = apns
    fcm_mock, service_account, fcm_ca = fcm
    port = free_port()
    toml = "\n".join([
        "[http]", f'listen = "127.0.0.1:{port}"',
        "[providers.apns-sip]", 'kind = "apns"', f"topic = {toml_str(BUNDLE)}",
        'environment = "sandbox"', f"base_url = {toml_str(mock.base_url)}",
        f"ca_file = {toml_str(ca_file)}", f"key_file = {toml_str(p8_file)}",
        f"key_id = {toml_str(KEY_ID)}", f"team_id = {toml_str(KEY_TEAM)}",
        "[providers.apns-linphone]", 'kind = "apns"', f"topic = {toml_str(LINPHONE_BUNDLE)}",
        'environment = "sandbox"', f"base_url = {toml_str(mock.base_url)}",
        f"ca_file = {toml_str(ca_file)}", f"key_file = {toml_str(p8_file)}",
        f"key_id = {toml_str(KEY_ID)}", f"team_id = {toml_str(KEY_TEAM)}",
        "[providers.fcm-sip]", 'kind = "fcm"',
        f"service_account_file = {toml_str(service_account)}",
        f"base_url = {toml_str(fcm_mock.base_url)}", f"ca_file = {toml_str(fcm_ca)}",
        "[sip]", 'allowed_networks = ["127.0.0.0/8"]',
        f"[sip.apps.{toml_str(BUNDLE)}.apple]", 'type = "sylk"', 'provider = "apns-sip"',
        f"[sip.apps.{toml_str(LINPHONE_BUNDLE)}.apple]", 'type = "linphone"',
        'provider = "apns-linphone"',
        f"[sip.apps.{toml_str(SENDER)}.firebase]", 'type = "sylk"', 'provider = "fcm-sip"',
    ]) + "\n"
    with running_stack("sip", pushgate_toml=toml) as (s, _):
        yield s, f"http://127.0.0.1:{port}/push"


@pytest.fixture(scope="module")
def kam(gateway):
    _, url = gateway
    k = Kamailio(push_url=url, name="kamailio[sip]")
    _LIVE.append(k)
    try:
        yield k.start()
    finally:
        k.stop()
        _LIVE.remove(k)


def new_user(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def new_call_id() -> str:
    return f"e2e-{secrets.token_hex(8)}@caller.pushgate-e2e"


def ring_and_cancel(kam, callee: Callee, call_id: str, **kw):
    """callee registered and ringing, a caller's INVITE then CANCEL; (caller, phone) sipp
    results, both checked: 100/180/200/487/ACK exchanged, the phone got the INVITE."""
    callee.register().check()
    uas = callee.listen()
    caller = call_and_cancel(kam, callee.user, call_id, **kw).check()
    return caller, uas.wait().check()


def ios_callee(kam, voip: str, remote: str | None, user: str | None = None) -> Callee:
    """Linphone iOS: `<voip>:voip&<remote>:remote` and `<TeamID>.<bundle>.voip&remote`, or the
    PushKit token alone."""
    prid = f"{voip}:voip&{remote}:remote" if remote else f"{voip}:voip"
    services = "voip&remote" if remote else "voip"
    return Callee(kam, user or new_user("ios"), instance=f"urn:uuid:{secrets.token_hex(16)}",
                  pn={"pn-provider": "apns", "pn-prid": prid,
                      "pn-param": f"{TEAM}.{BUNDLE}.{services}"})


def payload(r) -> dict:
    p = json.loads(r.body)
    assert isinstance(p, dict), r.summary()
    return p


@pytest.mark.parametrize("two_tokens", [True, False], ids=["voip+remote", "voip-only"])
def test_ios_call_is_a_pushkit_push_and_the_cancel_a_background_push(kam, apns, two_tokens):
    mock, _, _ = apns
    voip = secrets.token_hex(32)
    remote = secrets.token_hex(32) if two_tokens else None
    bob = ios_callee(kam, voip, remote)
    cid = new_call_id()
    caller, phone = ring_and_cancel(kam, bob, cid, display="Alice Liddell")

    cancel_token = remote or voip
    got = mock.wait_for(voip, 1, diagnostics=diagnostics)
    call = got[0]
    now = time.time()
    h = call.headers
    assert call.status == 200 and call.jwt_error is None, call.summary()
    assert call.path == f"/3/device/{voip}", call.summary()
    assert h.get("apns-push-type") == "voip", call.summary()
    assert h.get("apns-topic") == f"{BUNDLE}.voip", call.summary()
    assert h.get("apns-priority") == "10", call.summary()
    exp = int(h.get("apns-expiration", "0"))
    assert now - 5 < exp <= now + 65, f"apns-expiration {exp} is not an epoch near {now:.0f}"
    p = payload(call)
    assert p.get("event") == "incoming_session" and p.get("call-id") == cid, call.summary()
    assert p.get("media-type") == "audio", call.summary()
    assert p.get("from_uri") == "caller@127.0.0.1", call.summary()
    assert p.get("from_display_name") == "Alice Liddell", call.summary()
    assert p.get("to_uri") == f"{bob.user}@127.0.0.1", call.summary()
    assert "aps" not in p or "alert" not in p["aps"], "a PushKit push carries no alert"

    # the cancel: the second push of the call, on the bundle topic, as a background push
    mock.wait_for(cancel_token, 2 if cancel_token == voip else 1, diagnostics=diagnostics)
    cancels = [r for r in mock.requests_for(cancel_token) if r is not call]
    assert len(cancels) == 1, [r.summary() for r in mock.requests_for(cancel_token)]
    c = cancels[0]
    assert c.status == 200, c.summary()
    assert c.path == f"/3/device/{cancel_token}", c.summary()
    assert c.headers.get("apns-push-type") == "background", c.summary()
    assert c.headers.get("apns-topic") == BUNDLE, c.summary()
    assert c.headers.get("apns-priority") == "5", \
        f"APNs refuses priority 10 for a background push: {c.summary()}"
    cp = payload(c)
    assert cp.get("event") == "cancel" and cp.get("call-id") == cid, c.summary()
    assert cp.get("aps") == {"content-available": 1}, \
        f"iOS wakes an app for a background push only with content-available: {c.summary()}"
    assert cp.get("session-id") == p.get("session-id"), "one session id per call"

    time.sleep(QUIET)
    pushed = mock.requests_for(voip) + (mock.requests_for(remote) if remote else [])
    assert len(pushed) == 2, [r.summary() for r in pushed]

    # pushgate's answers, as Kamailio logged them
    lines = kam.push_lines()
    mine = [m for m in lines if m["ruri"].startswith(f"sip:{bob.user}@")]
    assert [m["event"] for m in mine] == ["incoming_session", "cancel"], [m.group(0) for m in mine]
    for m in mine:
        assert m["outcome"].startswith("200 "), m.group(0)
        assert json.loads(m["outcome"][4:])["data"]["code"] == 200, m.group(0)

    sent = caller.first("sent", "INVITE ")
    print(f"\nINVITE sent -> APNs request: {(call.at - sent) * 1000:.1f} ms; "
          f"INVITE sent -> phone rang: {(phone.first('received', 'INVITE ') - sent) * 1000:.1f}"
          f" ms; CANCEL sent -> APNs cancel: "
          f"{(c.at - caller.first('sent', 'CANCEL ')) * 1000:.1f} ms")


def test_android_call_is_a_high_priority_fcm_data_message(kam, fcm):
    mock, _, _ = fcm
    token = f"{secrets.token_urlsafe(16)}:APA91b{secrets.token_urlsafe(100)}"
    bob = Callee(kam, new_user("android"), instance=f"urn:uuid:{secrets.token_hex(16)}",
                 pn={"pn-provider": "fcm", "pn-prid": token, "pn-param": SENDER})
    cid = new_call_id()
    ring_and_cancel(kam, bob, cid, media="video")

    call, cancel = mock.wait_for(token, 2, diagnostics=diagnostics)
    for r, event in ((call, "incoming_session"), (cancel, "cancel")):
        m = r.message
        assert r.status == 200 and r.auth_error is None, r.summary()
        assert m.get("token") == token, r.summary()
        assert m.get("android", {}).get("priority") == "high", r.summary()
        data = m.get("data", {})
        assert all(isinstance(v, str) for v in data.values()), r.summary()
        assert data.get("event") == event and data.get("call-id") == cid, r.summary()
        ttl = m.get("android", {}).get("ttl")
        assert ttl and ttl.endswith("s") and 0 < float(ttl[:-1]) <= 60, \
            f"a call push is worth a short time only: ttl {ttl!r}"
    assert call.message["data"].get("media-type") == "video", call.summary()
    assert call.message["data"].get("to_uri") == f"{bob.user}@127.0.0.1", call.summary()
    time.sleep(QUIET)
    assert len(mock.requests_for(token)) == 2


def test_a_linphone_app_gets_the_call_and_refuses_the_cancel(kam, apns):
    """An app of type linphone takes calls only: the INVITE is a PushKit push on its .voip
    topic; pushgate answers the CANCEL's POST 400 (logged by Kamailio, nothing sent), and the
    SIP side does not care."""
    mock, _, _ = apns
    voip = secrets.token_hex(32)
    bob = Callee(kam, new_user("linphone"),
                 pn={"pn-provider": "apns", "pn-prid": f"{voip}:voip",
                     "pn-param": f"{TEAM}.{LINPHONE_BUNDLE}.voip"})
    since = kam.log.offset()
    cid = new_call_id()
    ring_and_cancel(kam, bob, cid)
    (call,) = mock.wait_for(voip, 1, diagnostics=diagnostics)
    assert call.headers.get("apns-push-type") == "voip", call.summary()
    assert call.headers.get("apns-topic") == f"{LINPHONE_BUNDLE}.voip", call.summary()
    assert payload(call).get("call-id") == cid, call.summary()
    line = kam.wait_push_line("cancel", since=since)[0]
    assert line["outcome"].startswith("failed, HTTP 400 "), line.group(0)
    assert "incoming_session" in line["outcome"], line.group(0)
    time.sleep(QUIET)
    assert len(mock.requests_for(voip)) == 1, [r.summary() for r in mock.requests_for(voip)]


def test_the_call_goes_on_when_pushgate_refuses_or_is_away(kam, gateway, apns):
    """pushgate answering an error (an app it does not serve: 404) and pushgate stopped (the
    connection refused): each time the phone still rings and the caller's CANCEL ends the call;
    nothing reaches APNs for the unknown app."""
    mock, _, _ = apns
    stack, _ = gateway
    pg = stack.pushgate

    stray = secrets.token_hex(32)
    other = Callee(kam, new_user("other-app"),
                   pn={"pn-provider": "apns", "pn-prid": f"{stray}:voip",
                       "pn-param": f"{TEAM}.org.example.not.configured.voip"})
    since = kam.log.offset()
    ring_and_cancel(kam, other, new_call_id())
    line = kam.wait_push_line("incoming_session", since=since)[0]
    assert line["outcome"].startswith("failed, HTTP 404 "), line.group(0)
    assert mock.requests_for(stray) == []

    pg.stop()
    try:
        voip = secrets.token_hex(32)
        since = kam.log.offset()
        caller, phone = ring_and_cancel(kam, ios_callee(kam, voip, None), new_call_id())
        line = kam.wait_push_line("incoming_session", since=since)[0]
        assert line["outcome"] == "pushgate unreachable (curl error 7)", line.group(0)
        rang = phone.first("received", "INVITE ") - caller.first("sent", "INVITE ")
        assert rang < 1.0, f"the phone rang {rang:.2f} s after the INVITE with pushgate away"
        assert mock.requests_for(voip) == []
    finally:
        pg.start()
