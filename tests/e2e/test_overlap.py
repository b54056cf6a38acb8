"""Two pushgate instances for one component on one Prosody 0.12.

The second connection is refused with a `<conflict/>` (Prosody's default) or replaces the first,
which then gets the `<conflict/>` (`component_conflict_resolve = "kick_old"`, the shipped
example). Either way the instance that got the conflict stands by for
`component.max_reconnect_delay_secs` instead of knocking again at once; before, two instances
under kick_old replaced each other about 20 times in 8 s.
"""

import time

import pytest

from conftest import _LIVE, PUSH_JID, VAPID_SUBJECT, Stack
from pushgate_proc import Pushgate
from scenario import push_offline
from webpush_endpoint import WebPushEndpoint

CONNECTED = "component connected"
STANDING_BY = "another instance of this component is connected to the server: standing by"


def close_all(stack: Stack, second: Pushgate | None):
    """Stops the second instance (if it was made) and the stack."""
    if second is not None:
        second.cleanup()
        if second in _LIVE:
            _LIVE.remove(second)
    stack.close()


@pytest.mark.parametrize("resolve", ["kick_old", "kick_new"])
def test_the_instance_that_got_a_conflict_stands_by(resolve, monkeypatch):
    # The suite's pushgates retry within 2 s at most; standing by lasts this long.
    monkeypatch.setenv("PUSHGATE_COMPONENT__MAX_RECONNECT_DELAY_SECS", "30")
    s = Stack(f"overlap-{resolve}")
    s.prosody.global_options["component_conflict_resolve"] = f'"{resolve}"'
    b = None
    try:
        s.start_prosody()
        a = s.make_pushgate()
        a.start()
        b = Pushgate(s.prosody, PUSH_JID, s.push_secret, name=f"pushgate[overlap-{resolve}-b]")
        _LIVE.append(b)
        b.spawn()
        # The one that lost: b is refused (kick_new), a is replaced (kick_old).
        loser, winner = (a, b) if resolve == "kick_old" else (b, a)
        loser.log.wait_for(STANDING_BY, timeout=15, alive=loser.exited)
        time.sleep(8)
        assert len(winner.log.find_all(CONNECTED)) == 1, winner.log.text()
        assert len(loser.log.find_all(CONNECTED)) == (1 if loser is a else 0), loser.log.text()
        assert len(loser.log.find_all(STANDING_BY)) == 1, loser.log.text()
        assert a.exited() is None and b.exited() is None, "both still running"
    finally:
        close_all(s, b)


def test_rolling_restart_on_prosody_loses_nothing(connect_factory, monkeypatch):
    """The shipped Prosody example (kick_old) and `component.when_replaced = "exit"`: a second
    instance is started while messages flow; it takes the component over, the first finishes
    what it had in flight and exits with status 3, and every message is pushed."""
    monkeypatch.setenv("PUSHGATE_COMPONENT__WHEN_REPLACED", "exit")
    s = Stack("rolling")
    s.prosody.global_options["component_conflict_resolve"] = '"kick_old"'
    endpoint = None
    b = None
    try:
        s.start_prosody()
        a = s.make_pushgate()
        endpoint = WebPushEndpoint(vapid_public_key=a.vapid_public,
                                   vapid_subject=VAPID_SUBJECT).start()
        a.start()
        dev = endpoint.new_device()
        push_offline(connect_factory(s.prosody, "carol"), dev)
        bob = connect_factory(s.prosody, "bob")

        # The new instance shares the old one's database and VAPID key, as a new release on the
        # same host would.
        b = Pushgate(s.prosody, PUSH_JID, s.push_secret, name="pushgate[rolling-b]")
        b.data_dir, b.vapid_key_path, b.vapid_key = a.data_dir, a.vapid_key_path, a.vapid_key
        b.write_config()
        _LIVE.append(b)

        sent = []
        for i in range(40):
            if i == 15:
                b.start()
            body = f"rolling {i}"
            bob.send_message("carol@localhost", body)
            sent.append(body)
            time.sleep(0.05)

        assert a.proc is not None
        assert a.proc.wait(timeout=20) == 3, a.log.text()
        assert b.exited() is None, b.log.text()
        endpoint.wait_for(dev, count=len(sent), timeout=20)
        got = [d.payload.get("body") for d in endpoint.deliveries_for(dev)
               if isinstance(d.payload, dict)]
        assert sorted(got) == sorted(sent), (len(got), a.log.text(), b.log.text())
        assert len(a.log.find_all(CONNECTED)) == 1 and len(b.log.find_all(CONNECTED)) == 1
        # mod_cloud_notify logs every error reply to a publish this way: none came.
        errors = s.prosody.log.find_all(r"Got error <")
        assert errors == [], [m.string for m in errors]
    finally:
        close_all(s, b)
        if endpoint is not None:
            endpoint.stop()
