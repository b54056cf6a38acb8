"""Fixtures for the pushgate end-to-end suite.

Session-scoped: one Prosody (VirtualHosts localhost + other.localhost, components push.localhost
for pushgate and fakepush.localhost for the harness self-test), one WebPush endpoint, one pushgate,
and one Synapse, started only when a test asks for it (`synapse`).
Scenarios isolate themselves by using their own users and registrations. The restart scenario
builds its own Prosody + pushgate (see `make_stack`).

Every process is killed and every temp dir removed at the end, also on failure; a failing test
gets the tails of Prosody's and pushgate's logs appended to its report.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clients import AsyncRunner, Client  # noqa: E402
from prosody import Prosody  # noqa: E402
from pushgate_proc import VAPID_SUBJECT, Pushgate  # noqa: E402
from synapse_proc import Synapse  # noqa: E402
from webpush_endpoint import WebPushEndpoint  # noqa: E402

PASSWORD = "password"
DOMAIN = "localhost"
OTHER_DOMAIN = "other.localhost"
PUSH_JID = "push.localhost"
FAKE_PUSH_JID = "fakepush.localhost"
LOCAL_USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "hank", "ivan",
               "judy")
OTHER_USERS = ("mallory",)

# Everything that has a log worth showing when a test fails (objects with .diagnostics()).
_LIVE: list = []


@atexit.register
def _last_resort_cleanup():
    """Fixture finalizers stop everything; this only catches an interpreter exit that skipped
    them, so no Prosody or pushgate outlives the test run."""
    for x in list(_LIVE):
        try:
            if isinstance(x, Pushgate):
                x.cleanup()
            else:
                x.stop()
        except Exception:
            pass


class Stack:
    """A Prosody plus (optionally started) pushgate, sharing a component secret."""

    def __init__(self, name: str, users: tuple[str, ...] = LOCAL_USERS, pushgate_toml: str = ""):
        """users: local parts on `localhost` (mallory on other.localhost is always there);
        pushgate_toml: extra pushgate config (see Pushgate's extra_toml)."""
        self.name = name
        self.pushgate_toml = pushgate_toml
        self.push_secret = secrets.token_hex(12)
        self.fake_secret = secrets.token_hex(12)
        self.prosody = Prosody(
            users=[(u, DOMAIN, PASSWORD) for u in users]
            + [(u, OTHER_DOMAIN, PASSWORD) for u in OTHER_USERS],
            components={PUSH_JID: self.push_secret, FAKE_PUSH_JID: self.fake_secret},
            hosts=(DOMAIN, OTHER_DOMAIN),
            global_options={
                # disable a push registration at the first counted error (dead-token scenario)
                "push_max_errors": "1",
                "push_notification_with_body": "true",
                "push_notification_with_sender": "true",
            },
            name=f"prosody[{name}]")
        self.pushgate: Pushgate | None = None

    def start_prosody(self):
        self.prosody.start()
        _LIVE.append(self.prosody)
        return self

    def make_pushgate(self) -> Pushgate:
        self.pushgate = Pushgate(self.prosody, PUSH_JID, self.push_secret,
                                 name=f"pushgate[{self.name}]", extra_toml=self.pushgate_toml)
        _LIVE.append(self.pushgate)
        return self.pushgate

    def close(self):
        if self.pushgate is not None:
            self.pushgate.cleanup()
            if self.pushgate in _LIVE:
                _LIVE.remove(self.pushgate)
        self.prosody.stop()
        if self.prosody in _LIVE:
            _LIVE.remove(self.prosody)


@contextlib.contextmanager
def running_stack(name: str, users: tuple[str, ...] = LOCAL_USERS, pushgate_toml: str = "",
                  pushgate_env: dict[str, str] | None = None):
    """A Prosody, a WebPush endpoint and a started pushgate of their own, for scenarios that kill
    processes or need their own config; yields (stack, endpoint) and stops everything after.
    pushgate_env: environment overrides (`PUSHGATE_<SECTION>__<KEY>`) for pushgate only."""
    s = Stack(name, users=users, pushgate_toml=pushgate_toml)
    ep = None
    try:
        s.start_prosody()
        pg = s.make_pushgate()
        ep = WebPushEndpoint(vapid_public_key=pg.vapid_public, vapid_subject=VAPID_SUBJECT)
        ep.start()
        with pytest.MonkeyPatch.context() as mp:
            for key, value in (pushgate_env or {}).items():
                mp.setenv(key, value)
            pg.start()
        yield s, ep
    finally:
        s.close()
        if ep is not None:
            ep.stop()


@pytest.fixture(scope="session")
def runner():
    r = AsyncRunner()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def stack():
    s = Stack("session")
    try:
        s.start_prosody()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def prosody(stack) -> Prosody:
    return stack.prosody


@pytest.fixture(scope="session")
def synapse() -> Synapse:
    """One homeserver for every Matrix test: each makes its own users (`synapse.new_user`)."""
    hs = Synapse(name="synapse[session]")
    _LIVE.append(hs)
    try:
        yield hs.start()
    finally:
        hs.stop()
        _LIVE.remove(hs)


@pytest.fixture(scope="session")
def endpoint_session():
    ep = WebPushEndpoint(vapid_subject=VAPID_SUBJECT).start()
    yield ep
    ep.stop()


@pytest.fixture(scope="session")
def pushgate(stack, endpoint_session) -> Pushgate:
    pg = stack.make_pushgate()
    pg.start()
    endpoint_session.expected_vapid_key = pg.vapid_public
    return pg


@pytest.fixture
def endpoint(endpoint_session, pushgate) -> WebPushEndpoint:
    """The WebPush endpoint, expecting pushgate's VAPID key."""
    return endpoint_session


@pytest.fixture(scope="session")
def connect_factory(runner):
    """connect(stack_or_prosody, user, host) -> logged-in Client; all closed at session end."""
    opened: list[Client] = []

    def connect(prosody: Prosody, user: str, host: str = DOMAIN) -> Client:
        c = Client(runner, f"{user}@{host}", PASSWORD, prosody.c2s_port).connect()
        opened.append(c)
        return c

    yield connect
    close_all(opened)


@pytest.fixture
def connect(connect_factory, prosody):
    """connect(user, host='localhost') on the session Prosody; disconnected after the test."""
    mine: list[Client] = []

    def _connect(user: str, host: str = DOMAIN, server: Prosody | None = None) -> Client:
        c = connect_factory(server or prosody, user, host)
        mine.append(c)
        return c

    yield _connect
    close_all(mine)


def close_all(clients: list[Client]) -> None:
    """Disconnects each client, aborting the ones that do not close within 2 s."""
    for c in clients:
        try:
            c.disconnect(timeout=2)
        except Exception:
            c.abort()


def diagnostics() -> str:
    return "\n".join(x.diagnostics() for x in list(_LIVE))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _LIVE:
        for x in list(_LIVE):
            try:
                rep.sections.append((f"{x.name} log tail", x.diagnostics()))
            except Exception as e:  # diagnostics must never hide the real failure
                rep.sections.append((f"{x.name} log tail", f"(unavailable: {e})"))
