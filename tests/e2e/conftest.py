"""Fixtures for the pushgate end-to-end suite.

Session-scoped, once per XMPP server (`server_kind`: Prosody 0.12, then ejabberd 23.01): one
server (VirtualHosts localhost + other.localhost, component push.localhost for pushgate; Prosody
also has fakepush.localhost for the harness self-test), one pushgate with its HTTP surface on a
free port. One WebPush endpoint serves the whole session. Every test that uses the session stack
runs on both servers unless its module is marked `prosody_only`. Scenarios isolate themselves by
using their own users and registrations. Scenarios that kill processes or need their own config
build their own stack (`running_stack`, `Stack`). One Synapse serves the Matrix tests, started
only when a test asks for it (`synapse`).

Every process is killed and every temp dir removed at the end, also on failure; a failing test
gets the tails of the server's and pushgate's logs appended to its report.
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
from ejabberd import Ejabberd  # noqa: E402
from procs import free_port  # noqa: E402
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
OTHER_USERS = ("mallory", "oscar")
SERVERS = ("prosody", "ejabberd")
# Prosody disables a registration after push_max_errors counted errors: 1 on localhost (the
# dead-token scenarios see it at the first error), 2 on other.localhost (to see the counting).
PROSODY_MAX_ERRORS = {DOMAIN: 1, OTHER_DOMAIN: 2}

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
    """An XMPP server (Prosody or ejabberd) plus (optionally started) pushgate, sharing a
    component secret. Both servers publish the real body and the sender's full JID, so
    payloads can be checked the same way."""

    def __init__(self, name: str, users: tuple[str, ...] = LOCAL_USERS, pushgate_toml: str = "",
                 kind: str = "prosody"):
        """users: local parts on `localhost` (mallory and oscar on other.localhost are always
        there); pushgate_toml: extra pushgate config (see Pushgate's extra_toml); kind: one of
        SERVERS. The server's config is written when it starts: adjust `server` before."""
        self.name = name
        self.kind = kind
        self.pushgate_toml = pushgate_toml
        self.push_secret = secrets.token_hex(12)
        self.fake_secret = secrets.token_hex(12)
        accounts = ([(u, DOMAIN, PASSWORD) for u in users]
                    + [(u, OTHER_DOMAIN, PASSWORD) for u in OTHER_USERS])
        if kind == "prosody":
            self.server = Prosody(
                users=accounts,
                components={PUSH_JID: self.push_secret, FAKE_PUSH_JID: self.fake_secret},
                hosts=(DOMAIN, OTHER_DOMAIN),
                host_options={h: {"push_max_errors": str(n)}
                              for h, n in PROSODY_MAX_ERRORS.items()},
                global_options={"push_notification_with_body": "true",
                                "push_notification_with_sender": "true"},
                name=f"prosody[{name}]")
        elif kind == "ejabberd":
            self.server = Ejabberd(
                users=accounts, components={PUSH_JID: self.push_secret},
                hosts=(DOMAIN, OTHER_DOMAIN),
                push_options={"include_body": "true", "include_sender": "true"},
                name=f"ejabberd[{name}]")
        else:
            raise ValueError(f"unknown XMPP server {kind!r}")
        self.pushgate: Pushgate | None = None
        self.http_base: str | None = None

    def start_server(self):
        self.server.start()
        _LIVE.append(self.server)
        return self

    def make_pushgate(self, name: str | None = None) -> Pushgate:
        """A pushgate for this stack's component; the first one made is `self.pushgate`."""
        pg = Pushgate(self.server, PUSH_JID, self.push_secret,
                      name=f"pushgate[{name or self.name}]", extra_toml=self.pushgate_toml)
        _LIVE.append(pg)
        if self.pushgate is None:
            self.pushgate = pg
        return pg

    def close(self):
        for x in [x for x in _LIVE if isinstance(x, Pushgate) and x.server is self.server]:
            x.cleanup()
            _LIVE.remove(x)
        self.server.stop()
        if self.server in _LIVE:
            _LIVE.remove(self.server)


@contextlib.contextmanager
def running_stack(name: str, users: tuple[str, ...] = LOCAL_USERS, pushgate_toml: str = "",
                  pushgate_env: dict[str, str] | None = None, kind: str = "prosody",
                  configure=None):
    """A server, a WebPush endpoint and a started pushgate of their own, for scenarios that kill
    processes or need their own config; yields (stack, endpoint) and stops everything after.
    pushgate_env: environment overrides (`PUSHGATE_<SECTION>__<KEY>`) for pushgate only;
    configure: called with the server object before it starts (to change its config)."""
    s = Stack(name, users=users, pushgate_toml=pushgate_toml, kind=kind)
    if configure is not None:
        configure(s.server)
    ep = None
    try:
        s.start_server()
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


@pytest.fixture(scope="session", params=SERVERS)
def server_kind(request) -> str:
    """Which XMPP server the session stack runs; pytest runs all of one server's tests, then
    all of the other's."""
    return request.param


# A module whose scenarios are about Prosody (or pushgate alone) runs on the Prosody stack only.
prosody_only = pytest.mark.parametrize("server_kind", ["prosody"], indirect=True)


@pytest.fixture(scope="session")
def stack(server_kind):
    """The session's server; its pushgate (fixture `pushgate`) serves HTTP at `http_base`."""
    port = free_port()
    s = Stack(f"session-{server_kind}", kind=server_kind,
              pushgate_toml=f'[http]\nlisten = "127.0.0.1:{port}"\n')
    s.http_base = f"http://127.0.0.1:{port}"
    try:
        s.start_server()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def server(stack) -> Prosody | Ejabberd:
    return stack.server


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
    """connect(server, user, host) -> logged-in Client; all closed at session end."""
    opened: list[Client] = []

    def connect(server: Prosody | Ejabberd, user: str, host: str = DOMAIN) -> Client:
        c = Client(runner, f"{user}@{host}", PASSWORD, server.c2s_port).connect()
        opened.append(c)
        return c

    yield connect
    close_all(opened)


@pytest.fixture
def connect(connect_factory, server):
    """connect(user, host='localhost') on the session server; disconnected after the test."""
    mine: list[Client] = []

    def _connect(user: str, host: str = DOMAIN) -> Client:
        c = connect_factory(server, user, host)
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
