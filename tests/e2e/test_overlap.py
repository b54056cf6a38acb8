"""Two pushgate instances for one component, and a rolling restart under load, on Prosody 0.12
and ejabberd 23.01.

Prosody serves one connection per component: the second connection is refused with a
`<conflict/>` (Prosody's default) or replaces the first, which then gets the `<conflict/>`
(`component_conflict_resolve = "kick_old"`, the shipped example). Either way the instance that
got the conflict stands by for `component.max_reconnect_delay_secs` instead of knocking again at
once; before, two instances under kick_old replaced each other about 20 times in 8 s.
ejabberd accepts both connections and spreads the publishes over them.
"""

from __future__ import annotations

import threading
import time

import pytest

from conftest import Stack, running_stack
from pushgate_proc import CONNECTED, STANDING_BY
from scenario import push_offline

RATE = 10            # messages a second while the instances change over
PHONES = ("carol", "dave", "erin")


@pytest.mark.parametrize("resolve", ["kick_old", "kick_new"])
def test_the_instance_that_got_a_conflict_stands_by(resolve, monkeypatch):
    """Prosody only: ejabberd never sends a component a `<conflict/>`."""
    # The suite's pushgates retry within 2 s at most; standing by lasts this long.
    monkeypatch.setenv("PUSHGATE_COMPONENT__MAX_RECONNECT_DELAY_SECS", "30")
    s = Stack(f"overlap-{resolve}")
    s.server.global_options["component_conflict_resolve"] = f'"{resolve}"'
    try:
        s.start_server()
        a = s.make_pushgate()
        a.start()
        b = s.make_pushgate(f"overlap-{resolve}-b")
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
        s.close()


class SteadySender(threading.Thread):
    """bob messages the sleeping phones in turn, RATE a second, until stopped; every message
    body is unique and remembered per recipient."""

    def __init__(self, bob, recipients: list[str]):
        super().__init__(name="steady-sender", daemon=True)
        self.bob = bob
        self.recipients = recipients
        self.sent: dict[str, list[str]] = {r: [] for r in recipients}
        self.count = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()
        self._cond = threading.Condition()

    def run(self):
        next_at = time.monotonic()
        try:
            while not self._stop_event.is_set():
                to = self.recipients[self.count % len(self.recipients)]
                body = f"under load {self.count}"
                self.bob.send_message(to, body)
                with self._cond:
                    self.sent[to].append(body)
                    self.count += 1
                    self._cond.notify_all()
                next_at += 1 / RATE
                self._stop_event.wait(max(0.0, next_at - time.monotonic()))
        except BaseException as e:  # reported by finish()
            self.error = e

    def wait_sent(self, n: int, timeout: float = 30.0):
        """Wait until `n` messages in all have been sent."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.count >= n or self.error, timeout):
                raise AssertionError(f"only {self.count}/{n} messages sent in {timeout} s")
        if self.error:
            raise self.error

    def finish(self) -> dict[str, list[str]]:
        self._stop_event.set()
        self.join(30)
        if self.error:
            raise self.error
        return self.sent


@pytest.mark.parametrize("kind", ["prosody", "ejabberd"])
def test_rolling_restart_under_load_loses_nothing(kind, connect_factory, monkeypatch):
    """The documented rolling restart (docs/admin-guide.md) while bob messages three sleeping
    phones at a steady rate. Prosody (the shipped example's kick_old) with
    `component.when_replaced = "exit"`: the new instance takes the component over, the old one
    finishes what it had in flight and exits with status 3. ejabberd: both run side by side,
    then the old one is stopped with SIGTERM. Every message reaches its phone exactly once, and
    no publish is answered with an error, by pushgate or by the server."""
    if kind == "prosody":
        monkeypatch.setenv("PUSHGATE_COMPONENT__WHEN_REPLACED", "exit")

    def configure(server):
        if kind == "prosody":
            server.global_options["component_conflict_resolve"] = '"kick_old"'

    with running_stack(f"rolling-{kind}", kind=kind, configure=configure) as (s, endpoint):
        server, a = s.server, s.pushgate
        phones = {}
        for user in PHONES:
            phones[user] = endpoint.new_device()
            push_offline(connect_factory(server, user), phones[user])
        # The new instance shares the old one's database and VAPID key, as a new release on
        # the same host would.
        b = s.make_pushgate(f"rolling-{kind}-b")
        b.data_dir, b.vapid_key_path, b.vapid_key = a.data_dir, a.vapid_key_path, a.vapid_key
        b.write_config()
        since_s = server.log.offset()

        sender = SteadySender(connect_factory(server, "bob"), [f"{u}@localhost" for u in PHONES])
        sender.start()
        try:
            sender.wait_sent(2 * RATE)
            b.start()
            if kind == "prosody":
                assert a.proc.wait(timeout=20) == 3, a.log.text()
            else:
                # side by side: let both serve for a while, then stop the old one
                sender.wait_sent(sender.count + 2 * RATE)
                a.stop()
            sender.wait_sent(sender.count + 2 * RATE)
        finally:
            sent = sender.finish()

        for user, dev in phones.items():
            want = sent[f"{user}@localhost"]
            try:
                got = endpoint.wait_for(dev, count=len(want), timeout=20)
            except AssertionError:  # the assertion below names what is missing
                got = endpoint.deliveries_for(dev)
            bodies = [d.payload.get("body") for d in got if isinstance(d.payload, dict)]
            assert sorted(bodies) == sorted(want), \
                (user, "lost:", sorted(set(want) - set(bodies)), "twice or unknown:",
                 sorted(b for b in bodies if bodies.count(b) > 1 or b not in want))
        # a has exited; b logs its answer just after the endpoint has seen the delivery
        total = sum(len(v) for v in sent.values())
        outcomes = a.outcomes() + b.wait_outcomes(0, count=total - len(a.outcomes()))
        assert outcomes == ["delivered"] * total, (len(outcomes), total, sorted(set(outcomes)))
        rejections = server.log.find_all(server.ANY_REJECTION, since_s)
        assert rejections == [], [m.string for m in rejections]
        assert b.exited() is None, b.log.text()
        assert len(a.log.find_all(CONNECTED)) == 1 and len(b.log.find_all(CONNECTED)) == 1
        assert not a.log.find_all(STANDING_BY) and not b.log.find_all(STANDING_BY)
        if kind == "ejabberd":
            # both instances really served: ejabberd spread the publishes over them
            assert a.outcomes() and b.outcomes(), (len(a.outcomes()), len(b.outcomes()))
