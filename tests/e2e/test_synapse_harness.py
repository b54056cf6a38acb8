"""Self-tests of the Synapse harness (synapse_proc.py) against a recording gateway
(notify_recorder.py); no pushgate. They pin what a real Synapse sends to a push gateway and how it
reacts to each answer (../shared/reference/other-fronts.md §4), which is what pushgate's Matrix
front has to meet. A failure here means the harness is broken or Synapse changed, not pushgate."""

from __future__ import annotations

import re

import pytest

from notify_recorder import NotifyRecorder
from synapse_proc import PUSH_FAILED_LINE, PUSHKEY_REJECTED_LINE, MatrixClient, Synapse

APP_ID = "org.pushgate.e2e.ios"


@pytest.fixture(scope="module")
def recorder():
    rec = NotifyRecorder().start()
    yield rec
    rec.stop()


ROOM_NAME = "pushgate e2e"


def pair(hs: Synapse) -> tuple[MatrixClient, MatrixClient, str]:
    return hs.pair(ROOM_NAME)


def test_message_and_call_invite_reach_the_gateway(synapse, recorder):
    alice, bob, room = pair(synapse)
    full = alice.set_pusher(recorder.url, app_id=APP_ID, pushkey="pk-full-" + alice.user_id,
                            default_payload={"aps": {"mutable-content": 1}})
    slim = alice.set_pusher(recorder.url, app_id=APP_ID, pushkey="pk-slim-" + alice.user_id,
                            format="event_id_only", append=True)
    listed = {p["pushkey"]: p for p in alice.pushers()}
    assert set(listed) == {full["pushkey"], slim["pushkey"]}
    assert listed[full["pushkey"]]["kind"] == "http"
    assert listed[full["pushkey"]]["data"]["url"] == recorder.url

    # alice's own message is not pushed to her; bob's next one is, and per pusher in order
    alice.send_text(room, "from alice herself")
    ev = bob.send_text(room, "hello alice")
    n = recorder.wait_for(lambda n: n.pushkey == full["pushkey"])[0]
    assert n.event_id == ev, f"first push for alice was not bob's message: {n.summary()}"
    assert n.status == 200
    assert n.headers["Content-Type"] == "application/json"
    assert n.headers["User-Agent"].startswith("Synapse/")
    note = n.notification
    assert note["room_id"] == room and note["room_name"] == ROOM_NAME
    assert note["type"] == "m.room.message"
    assert note["sender"] == bob.user_id and note["sender_display_name"] == bob.localpart
    assert note["content"] == {"msgtype": "m.text", "body": "hello alice"}
    assert note["counts"] == {"unread": 1}
    assert note["prio"] == "high"
    assert len(note["devices"]) == 1
    dev = note["devices"][0]
    assert dev["app_id"] == APP_ID and dev["pushkey"] == full["pushkey"]
    assert isinstance(dev["pushkey_ts"], int) and dev["pushkey_ts"] > 1_600_000_000
    assert dev["data"] == {"default_payload": {"aps": {"mutable-content": 1}}}, \
        "the pusher's data reaches the gateway without url"
    assert dev["tweaks"] == {"sound": "default", "highlight": False}

    s = recorder.wait_for(lambda n: n.pushkey == slim["pushkey"] and n.event_id == ev)[0]
    assert set(s.notification) == {"event_id", "room_id", "counts", "prio", "devices"}, \
        s.notification
    assert "tweaks" not in s.device and s.device["data"] == {"format": "event_id_only"}

    call = bob.send_call_invite(room)
    c = recorder.wait_for(lambda n: n.pushkey == full["pushkey"] and n.event_id == call)[0]
    assert c.notification["type"] == "m.call.invite"
    assert c.notification["content"]["offer"]["sdp"].startswith("v=0")
    assert c.device["tweaks"] == {"sound": "ring", "highlight": False}

    # reading up to the call invite empties the badge: one POST per pusher with counts only
    alice.read_receipt(room, call)
    b = recorder.wait_for(lambda n: n.pushkey == full["pushkey"] and n.event_id is None)[0]
    assert b.notification["counts"] == {"unread": 0}, b.notification
    assert not {"event_id", "room_id", "prio"} & set(b.notification), b.notification
    assert "tweaks" not in b.device


def test_rejected_pushkey_deletes_that_pusher_only(synapse, recorder):
    alice, bob, room = pair(synapse)
    dead, live = "pk-dead-" + alice.user_id, "pk-live-" + alice.user_id
    alice.set_pusher(recorder.url, app_id=APP_ID, pushkey=dead)
    alice.set_pusher(recorder.url, app_id=APP_ID, pushkey=live, append=True)
    assert alice.pushkeys() == {dead, live}
    recorder.reject(dead)
    # a pushkey that was not in the request is ignored
    recorder.script(live, [(200, {"rejected": ["not-" + live]})])

    since = synapse.log.offset()
    ev = bob.send_text(room, "are you there?")
    recorder.wait_for(lambda n: n.pushkey == dead and n.event_id == ev)
    recorder.wait_for(lambda n: n.pushkey == live and n.event_id == ev)
    alice.wait_pushkeys({live})
    synapse.log.wait_for(re.escape(PUSHKEY_REJECTED_LINE.format(pushkey=dead)), since=since)
    synapse.log.wait_for(re.escape(f"Ignoring rejected pushkey not-{live}"), since=since)
    assert alice.pushkeys() == {live}

    ev2 = bob.send_text(room, "still there?")
    recorder.wait_for(lambda n: n.pushkey == live and n.event_id == ev2)
    assert [n.event_id for n in recorder.for_pushkey(dead)] == [ev], \
        "the deleted pusher got a later event"


def test_5xx_retries_the_same_event_and_holds_later_ones(synapse, recorder):
    alice, bob, room = pair(synapse)
    pk = "pk-flaky-" + alice.user_id
    alice.set_pusher(recorder.url, app_id=APP_ID, pushkey=pk)
    recorder.script(pk, [(500, {"errcode": "M_UNKNOWN", "error": "down"}), (502, None)])

    since = synapse.log.offset()
    ev1 = bob.send_text(room, "first")
    recorder.wait_for(lambda n: n.pushkey == pk)
    # sent while ev1 is failing: Synapse holds it until ev1 has gone through
    ev2 = bob.send_text(room, "second")
    recorder.wait_for(lambda n: n.pushkey == pk and n.event_id == ev2, timeout=30)

    got = recorder.for_pushkey(pk)
    assert [(n.event_id, n.status) for n in got] == [
        (ev1, 500), (ev1, 502), (ev1, 200), (ev2, 200)], [n.summary() for n in got]
    assert got[3].notification["counts"] == {"unread": 1}, "unread counts rooms, not messages"
    # Synapse's backoff: 1 s after the first failure, then doubling
    delays = [m.group(1) for m in
              synapse.log.find_all(rf"{PUSH_FAILED_LINE} (\d+)s", since=since)]
    assert delays == ["1", "2"], delays


def test_restart_keeps_users_and_pushers(synapse, recorder):
    alice, bob, room = pair(synapse)
    pk = "pk-restart-" + alice.user_id
    alice.set_pusher(recorder.url, app_id=APP_ID, pushkey=pk)
    old = synapse.proc
    synapse.restart()
    assert old.returncode == 0, f"synapse did not exit cleanly on SIGTERM: {old.returncode}"
    assert alice.pushkeys() == {pk}
    assert alice.login().access_token != alice.access_token, "a new device, a new token"
    ev = bob.send_text(room, "after the restart")
    recorder.wait_for(lambda n: n.pushkey == pk and n.event_id == ev)
