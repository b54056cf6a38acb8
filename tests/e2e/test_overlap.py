"""Two pushgate instances for one component on one Prosody 0.12.

The second connection is refused with a `<conflict/>` (Prosody's default) or replaces the first,
which then gets the `<conflict/>` (`component_conflict_resolve = "kick_old"`, the shipped
example). Either way the instance that got the conflict stands by for
`component.max_reconnect_delay_secs` instead of knocking again at once; before, two instances
under kick_old replaced each other about 20 times in 8 s.
"""

import time

import pytest

from conftest import _LIVE, PUSH_JID, Stack
from pushgate_proc import Pushgate

CONNECTED = "component connected"
STANDING_BY = "another instance of this component is connected to the server: standing by"


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
        if b is not None:
            b.cleanup()
            if b in _LIVE:
                _LIVE.remove(b)
        s.close()
