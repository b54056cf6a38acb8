"""Self-tests of the SIP harness (kamailio.py, tests/e2e/sipp/) and of
etc/examples/kamailio-pushgate.cfg against a recording Sylk-style push server (sylk_recorder.py);
no pushgate. They pin the exact JSON the example config POSTs for an INVITE and a CANCEL, how it
reads RFC 8599 push parameters as Linphone registers them, and that the SIP side never waits on
the push server for longer than PUSH_TIMEOUT nor breaks when it is away or failing. A failure
here means the config, the harness or Kamailio changed, not pushgate."""

from __future__ import annotations

import contextlib
import secrets
import time

import pytest

from conftest import _LIVE
from kamailio import Callee, Kamailio, call_and_cancel
from procs import free_port
from sylk_recorder import SylkRecorder
from tarpit import Tarpit

TEAM = "ABCDE12345"
BUNDLE = "org.pushgate.e2e.phone"


def new_user(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def new_call_id(prefix: str = "e2e") -> str:
    return f"{prefix}-{secrets.token_hex(8)}@caller.pushgate-e2e"


@contextlib.contextmanager
def running(kam: Kamailio):
    """Kamailio started, its log in a failing test's report, stopped (with its sipps) after."""
    _LIVE.append(kam)
    try:
        yield kam.start()
    finally:
        kam.stop()
        _LIVE.remove(kam)


@pytest.fixture(scope="module")
def recorder():
    rec = SylkRecorder().start()
    _LIVE.append(rec)   # the last POSTs go into a failing test's report
    yield rec
    _LIVE.remove(rec)
    rec.stop()


@pytest.fixture(scope="module")
def kam(recorder):
    with running(Kamailio(push_url=recorder.url, name="kamailio[harness]")) as k:
        yield k


def ring_and_cancel(kam, callee: Callee, call_id: str, **kw):
    """callee registered and ringing, a caller's INVITE and CANCEL: (caller, uas) results, both
    checked (every message of both scenarios exchanged)."""
    callee.register().check()
    uas = callee.listen()
    caller = call_and_cancel(kam, callee.user, call_id, **kw).check()
    return caller, uas.wait().check()


def test_linphone_ios_invite_then_cancel_posts_exact_json(kam, recorder):
    """A Linphone iOS registration (Team ID, bundle, both services, both tokens, +sip.instance):
    the INVITE's POST and the CANCEL's, byte for byte as JSON; the push goes out before the
    INVITE reaches the phone, and the phone still gets it."""
    user = new_user("ios")
    voip, remote = secrets.token_hex(32), secrets.token_hex(32)
    bob = Callee(kam, user, instance="urn:uuid:6f1c2c1e-0d3a-4b6e-9a57-2b0e7b6d9c01", pn={
        "pn-provider": "apns", "pn-prid": f"{voip}:voip&{remote}:remote",
        "pn-param": f"{TEAM}.{BUNDLE}.voip&remote"})
    cid = new_call_id()
    caller, uas = ring_and_cancel(kam, bob, cid, display="Alice Liddell")

    invite, cancel = recorder.wait_for(lambda p: p.call_id == cid, count=2)
    common = {"app-id": BUNDLE, "platform": "apple", "token": f"{voip}-{remote}",
              "device-id": "urn:uuid:6f1c2c1e-0d3a-4b6e-9a57-2b0e7b6d9c01", "call-id": cid,
              "from": "caller@127.0.0.1", "from-display-name": "Alice Liddell",
              "to": f"{user}@127.0.0.1", "silent": True}
    assert invite.body == {**common, "event": "incoming_session", "media-type": "audio"}, \
        invite.raw
    assert cancel.body == {**common, "event": "cancel"}, cancel.raw
    for p in (invite, cancel):
        assert p.path == "/push"
        assert p.headers["Content-Type"] == "application/json"
        assert p.headers["User-Agent"].startswith("kamailio")

    sent = caller.first("sent", "INVITE ")
    at_phone = uas.first("received", "INVITE ")
    cancel_sent = caller.first("sent", "CANCEL ")
    assert invite.received <= at_phone + 0.01, "the INVITE reached the phone before its push"
    assert cancel.received >= cancel_sent - 0.01
    latency = invite.received - sent
    print(f"INVITE sent -> push POST received: {latency * 1000:.1f} ms; "
          f"CANCEL sent -> cancel POST: {(cancel.received - cancel_sent) * 1000:.1f} ms")
    assert latency < 1.0, f"{latency:.3f} s from INVITE to push on loopback"

    relayed = uas.received("INVITE ")[0]
    assert f"Call-ID: {cid}" in relayed
    lines = kam.wait_push_line("cancel")
    assert any(m["outcome"].startswith("200 ") and m["platform"] == "apple" for m in lines)


@pytest.mark.parametrize("pn, platform, app_id, token", [
    # Linphone iOS, services in the other order, both tokens
    ({"pn-provider": "apns.dev", "pn-prid": "REM0:remote&VOIP0:voip",
      "pn-param": f"{TEAM}.{BUNDLE}.remote&voip"}, "apple", BUNDLE, "VOIP0-REM0"),
    # PushKit only
    ({"pn-provider": "apns", "pn-prid": "VOIP1:voip", "pn-param": f"{TEAM}.{BUNDLE}.voip"},
     "apple", BUNDLE, "VOIP1"),
    # remote notifications only
    ({"pn-provider": "apns", "pn-prid": "REM2:remote", "pn-param": f"{TEAM}.{BUNDLE}.remote"},
     "apple", BUNDLE, "REM2"),
    # RFC 8599's bare APNs topic, an untyped token
    ({"pn-provider": "apns", "pn-prid": "TOK3", "pn-param": f"{BUNDLE}.voip"},
     "apple", BUNDLE, "TOK3"),
    # a lower-case 10-character first label is not a Team ID
    ({"pn-provider": "apns", "pn-prid": "TOK4", "pn-param": "mycompany1.phone.voip"},
     "apple", "mycompany1.phone", "TOK4"),
    # Linphone Android: the sender id as pn-param, an FCM token with its colon kept
    ({"pn-provider": "fcm", "pn-prid": "cXyZ_5:APA91bHqL-x", "pn-param": "123456789012"},
     "firebase", "123456789012", "cXyZ_5:APA91bHqL-x"),
], ids=["apns-dev-reversed", "voip-only", "remote-only", "bare-topic", "lower-label", "fcm"])
def test_push_parameters_map_to_app_platform_token(kam, recorder, pn, platform, app_id, token):
    bob = Callee(kam, new_user("pn"), pn=pn)
    cid = new_call_id()
    ring_and_cancel(kam, bob, cid)
    p = recorder.wait_for(lambda p: p.call_id == cid and p.event == "incoming_session")[0]
    assert (p.body["platform"], p.body["app-id"], p.body["token"]) == (platform, app_id, token)
    assert p.body["device-id"] == "", "no +sip.instance, empty device-id"


def test_video_offer_and_a_display_name_that_needs_escaping(kam, recorder):
    """m=video -> media-type video; a display name with quotes and a backslash (SIP
    quoted-pairs) arrives unescaped from SIP and escaped for JSON; no +sip.instance."""
    bob = Callee(kam, new_user("video"), pn={"pn-provider": "fcm", "pn-prid": "tok-v",
                                             "pn-param": "e2e-sender"})
    cid = new_call_id()
    ring_and_cancel(kam, bob, cid, display=r'Bob \"The Builder\" \\ Co', media="video")
    invite, cancel = recorder.wait_for(lambda p: p.call_id == cid, count=2)
    assert invite.body["media-type"] == "video"
    assert invite.body["from-display-name"] == 'Bob "The Builder" \\ Co', invite.raw
    assert b'"from-display-name":"Bob \\"The Builder\\" \\\\ Co"' in invite.raw
    assert "media-type" not in cancel.body
    assert cancel.body["from-display-name"] == invite.body["from-display-name"]


def test_contact_without_push_parameters_is_only_relayed(kam, recorder):
    bob = Callee(kam, new_user("plain"))
    cid = new_call_id()
    since = kam.log.offset()
    _, uas = ring_and_cancel(kam, bob, cid)
    assert f"Call-ID: {cid}" in uas.received("INVITE ")[0]
    time.sleep(0.2)
    assert recorder.for_call(cid) == []
    assert kam.push_lines(since) == []


def test_each_push_capable_device_of_the_callee_gets_its_own_push(kam, recorder):
    """One AoR, an iPhone and an Android phone (each ringing) and a desk phone without push
    parameters: two POSTs per event, one per push-capable contact, and all three ring."""
    user = new_user("multi")
    iphone = Callee(kam, user, instance="urn:uuid:00000000-0000-4000-8000-0000000000a1",
                    pn={"pn-provider": "apns", "pn-prid": "IOS:voip",
                        "pn-param": f"{TEAM}.{BUNDLE}.voip"})
    android = Callee(kam, user, instance="urn:uuid:00000000-0000-4000-8000-0000000000a2",
                     pn={"pn-provider": "fcm", "pn-prid": "ANDROID", "pn-param": "e2e-sender"})
    desk = Callee(kam, user, instance="urn:uuid:00000000-0000-4000-8000-0000000000a3")
    for c in (iphone, android, desk):
        c.register().check()
    phones = [c.listen() for c in (iphone, android, desk)]
    cid = new_call_id()
    call_and_cancel(kam, user, cid).check()
    for uas in phones:
        uas.wait().check()
    pushes = recorder.wait_for(lambda p: p.call_id == cid, count=4)
    time.sleep(0.2)
    assert len(recorder.for_call(cid)) == 4
    got = sorted((p.event, p.body["platform"], p.body["token"], p.body["device-id"])
                 for p in pushes)
    assert got == [("cancel", "apple", "IOS", "urn:uuid:00000000-0000-4000-8000-0000000000a1"),
                   ("cancel", "firebase", "ANDROID",
                    "urn:uuid:00000000-0000-4000-8000-0000000000a2"),
                   ("incoming_session", "apple", "IOS",
                    "urn:uuid:00000000-0000-4000-8000-0000000000a1"),
                   ("incoming_session", "firebase", "ANDROID",
                    "urn:uuid:00000000-0000-4000-8000-0000000000a2")]


IOS_PN = {"pn-provider": "apns", "pn-prid": "dead:voip", "pn-param": f"{TEAM}.{BUNDLE}.voip"}


def test_push_server_answering_errors_does_not_break_the_call(recorder):
    """500 to the INVITE's POST, 503 to the CANCEL's: the call is relayed, rings and is
    cancelled as usual; the log says what the push server answered."""
    with running(Kamailio(push_url=recorder.url, name="kamailio[errors]")) as k:
        recorder.script([(500, {"code": 500, "description": "boom", "data": {}}),
                         (503, {"code": 503, "description": "busy", "data": {}})])
        cid = new_call_id()
        _, uas = ring_and_cancel(k, Callee(k, new_user("err"), pn=IOS_PN), cid)
        assert f"Call-ID: {cid}" in uas.received("INVITE ")[0]
        assert [p.status for p in recorder.for_call(cid)] == [500, 503]
        inv = k.wait_push_line("incoming_session")[0]
        assert inv["outcome"].startswith("failed, HTTP 500 "), inv.group(0)
        assert k.wait_push_line("cancel")[0]["outcome"].startswith("failed, HTTP 503 ")


def test_push_server_down_does_not_break_the_call():
    """Nothing listens at PUSH_URL: connection refused (curl error 7) at once, the call goes on."""
    url = f"http://127.0.0.1:{free_port()}/push"
    with running(Kamailio(push_url=url, name="kamailio[down]")) as k:
        cid = new_call_id()
        caller, uas = ring_and_cancel(k, Callee(k, new_user("down"), pn=IOS_PN), cid)
        assert caller.first("received", "SIP/2.0 180") - caller.first("sent", "INVITE ") < 1.0
        line = k.wait_push_line("incoming_session")[0]
        assert line["outcome"] == "pushgate unreachable (curl error 7)", line.group(0)
        assert k.wait_push_line("cancel")[0]["outcome"] == "pushgate unreachable (curl error 7)"


def test_push_server_that_never_answers_delays_the_invite_by_push_timeout_only():
    """A push server that accepts and never answers, PUSH_TIMEOUT=1: the caller has its 100 at
    once, the phone gets the INVITE after about 1 s (curl error 28), and the call goes on."""
    pit = Tarpit()
    try:
        with running(Kamailio(push_url=pit.url, name="kamailio[tarpit]",
                              defines={"PUSH_TIMEOUT": "1"})) as k:
            cid = new_call_id()
            caller, uas = ring_and_cancel(k, Callee(k, new_user("hang"), pn=IOS_PN), cid,
                                          ring_ms=300)
            sent = caller.first("sent", "INVITE ")
            assert caller.first("received", "SIP/2.0 100") - sent < 0.3, \
                "100 Trying must not wait for the push"
            delay = uas.first("received", "INVITE ") - sent
            assert 0.9 <= delay < 2.5, f"INVITE reached the phone after {delay:.2f} s"
            line = k.wait_push_line("incoming_session")[0]
            assert line["outcome"] == "pushgate unreachable (curl error 28)", line.group(0)
            assert pit.accepted >= 1
    finally:
        pit.stop()
