"""A throw-away Synapse homeserver for the Matrix end-to-end tests, and a small client for it.

Synapse (PyPI `matrix-synapse`, pinned in requirements.txt) runs from a temporary directory:
its own homeserver.yaml, SQLite database, signing key and log, one plain-HTTP client listener on
a random loopback port, no federation listener and no key servers. Registration is closed; test
users are made through the shared-secret admin API. Rate limits are lifted so that tests can
register, log in and send in bursts. Pushes to a loopback gateway are allowed through
`ip_range_whitelist` (Synapse blocks 127.0.0.0/8 by default and then fails every push inside,
while `pushers/set` still answers 200).

    hs = Synapse().start()            # ready = GET /health answers 200
    alice, bob = hs.new_user("alice"), hs.new_user("bob")
    room = alice.create_room()
    alice.invite(room, bob)
    bob.join(room)
    alice.set_pusher(gateway_url, app_id="org.example.ios", pushkey="pk1")
    bob.send_text(room, "hi")         # -> one POST to gateway_url for alice's pusher
    hs.restart()                      # SIGTERM, then the same ports and data
    hs.stop()

Named synapse_proc, not synapse: tests/e2e is first on sys.path under pytest, and a module
called `synapse` there would hide the real package from anything that imports it in-process.

Can also run on its own:
    python3 tests/e2e/synapse_proc.py     # prints the URL and two users' tokens; Ctrl-C stops
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from logfile import LogFile
from procs import ServerProcess
from prosody import free_port, port_open

# Synapse runs under this interpreter (the one it was pip-installed into).
PYTHON = os.environ.get("SYNAPSE_PYTHON", sys.executable)
SERVER_NAME = "localhost"
# Synapse refuses a pusher whose URL has any other path.
NOTIFY_PATH = "/_matrix/push/v1/notify"

# Synapse's HttpPusher log lines (synapse/push/httppusher.py, 1.163):
PUSH_FAILED_LINE = "Push failed: delaying for"
PUSHKEY_REJECTED_LINE = "Pushkey {pushkey} was rejected: removing"

# Every rate limit the client-server API applies to what tests do, lifted.
_RATE_LIMITS = {
    "rc_message": None, "rc_registration": None, "rc_admin_redaction": None,
    "rc_login": ("address", "account", "failed_attempts"),
    "rc_joins": ("local", "remote"), "rc_joins_per_room": None,
    "rc_invites": ("per_room", "per_user", "per_issuer"),
    "rc_3pid_validation": None, "rc_room_creation": None, "rc_presence": ("per_user",),
    "rc_key_requests": None, "rc_profile": None,
}
_UNLIMITED = {"per_second": 10000, "burst_count": 10000}


class MatrixError(Exception):
    def __init__(self, method: str, path: str, status: int, body: str):
        super().__init__(f"{method} {path} -> {status}: {body[:500]}")
        self.status = status
        self.body = body


def request(base_url: str, method: str, path: str, body: dict | None = None,
            token: str | None = None, timeout: float = 15.0) -> dict:
    """One client-server API call; a non-2xx answer raises MatrixError."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base_url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as e:
        raise MatrixError(method, path, e.code, e.read().decode("utf-8", "replace")) from None
    return json.loads(raw) if raw else {}


def _q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


class MatrixClient:
    """One logged-in device of a user: the calls the push tests need, blocking, stdlib only."""

    _txn = itertools.count(1)

    def __init__(self, base_url: str, user_id: str, access_token: str, device_id: str,
                 password: str):
        self.base_url = base_url
        self.user_id = user_id
        self.access_token = access_token
        self.device_id = device_id
        self.password = password

    @property
    def localpart(self) -> str:
        """Also the display name Synapse gives a new user."""
        return self.user_id[1:].split(":", 1)[0]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        return request(self.base_url, method, path, body, token=self.access_token)

    def login(self) -> "MatrixClient":
        """A second device of the same user (its own access token)."""
        r = request(self.base_url, "POST", "/_matrix/client/v3/login", {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": self.user_id},
            "password": self.password,
        })
        return MatrixClient(self.base_url, r["user_id"], r["access_token"], r["device_id"],
                            self.password)

    # --- rooms and events ----------------------------------------------------------------
    def create_room(self, name: str | None = None) -> str:
        body: dict = {"preset": "private_chat"}
        if name is not None:
            body["name"] = name
        return self.call("POST", "/_matrix/client/v3/createRoom", body)["room_id"]

    def invite(self, room_id: str, other: "MatrixClient"):
        self.call("POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/invite",
                  {"user_id": other.user_id})

    def join(self, room_id: str):
        self.call("POST", f"/_matrix/client/v3/join/{_q(room_id)}", {})

    def send(self, room_id: str, event_type: str, content: dict) -> str:
        """Sends a room event; returns its event_id."""
        txn = f"t{os.getpid()}-{next(self._txn)}"
        return self.call(
            "PUT", f"/_matrix/client/v3/rooms/{_q(room_id)}/send/{_q(event_type)}/{txn}",
            content)["event_id"]

    def send_text(self, room_id: str, body: str) -> str:
        return self.send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})

    def send_call_invite(self, room_id: str, call_id: str | None = None) -> str:
        """A VoIP v1 call invite, with an SDP offer as a client sends it."""
        return self.send(room_id, "m.call.invite", {
            "call_id": call_id or secrets.token_hex(8),
            "party_id": self.device_id,
            "version": "1",
            "lifetime": 60000,
            "offer": {"type": "offer",
                      "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"},
        })

    def read_receipt(self, room_id: str, event_id: str):
        """Marks `event_id` read (the homeserver then sends badge-only pushes)."""
        self.call("POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/receipt/m.read/"
                  f"{_q(event_id)}", {})

    # --- pushers -------------------------------------------------------------------------
    def set_pusher(self, url: str, app_id: str, pushkey: str, format: str | None = None,
                   default_payload: dict | None = None, append: bool = False,
                   lang: str = "en") -> dict:
        """POST pushers/set with kind http; returns the pusher as sent."""
        data: dict = {"url": url}
        if format is not None:
            data["format"] = format
        if default_payload is not None:
            data["default_payload"] = default_payload
        pusher = {"kind": "http", "app_id": app_id, "pushkey": pushkey,
                  "app_display_name": "pushgate e2e", "device_display_name": self.device_id,
                  "lang": lang, "data": data, "append": append}
        self.call("POST", "/_matrix/client/v3/pushers/set", pusher)
        return pusher

    def pushers(self) -> list[dict]:
        return self.call("GET", "/_matrix/client/v3/pushers")["pushers"]

    def pushkeys(self) -> set[str]:
        return {p["pushkey"] for p in self.pushers()}

    def wait_pushkeys(self, expected: set[str], timeout: float = 10.0) -> set[str]:
        """Polls the pushers API until this user's pushkeys are exactly `expected`."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.pushkeys()
            if got == set(expected):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.user_id}: pushkeys {sorted(got)} after "
                                     f"{timeout:.0f} s, expected {sorted(expected)}")
            time.sleep(0.05)


class Synapse(ServerProcess):
    def __init__(self, name: str = "synapse", extra_config: dict | None = None):
        """extra_config: top-level homeserver.yaml keys added to (or replacing) the defaults."""
        self.name = name
        self.extra_config = dict(extra_config or {})
        self.dir = tempfile.mkdtemp(prefix="pushgate-e2e-synapse-")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.config_path = os.path.join(self.dir, "homeserver.yaml")
        self.log = LogFile(os.path.join(self.dir, "homeserver.log"), f"{name} log")
        self.stdout_path = os.path.join(self.dir, "stdout.log")
        self.shared_secret = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None
        self._stdout = None
        self.starts = 0
        self._users = itertools.count(1)

    # --- configuration -------------------------------------------------------------------
    def config(self) -> dict:
        d = self.dir
        cfg = {
            "server_name": SERVER_NAME,
            "pid_file": f"{d}/homeserver.pid",
            "listeners": [{"port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http",
                           "tls": False, "x_forwarded": False,
                           "resources": [{"names": ["client"], "compress": False}]}],
            "database": {"name": "sqlite3", "args": {"database": f"{d}/homeserver.db"}},
            "log_config": f"{d}/log.yaml",
            "media_store_path": f"{d}/media_store",
            "signing_key_path": f"{d}/signing.key",
            "registration_shared_secret": self.shared_secret,
            "macaroon_secret_key": secrets.token_hex(16),
            "form_secret": secrets.token_hex(16),
            "report_stats": False,
            "enable_metrics": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            # no federation: no listener, no remote server allowed, no sender in this process
            "federation_domain_whitelist": [],
            "federation_sender_instances": [],
            "bcrypt_rounds": 4,   # registering and logging in are quick (12 takes 0.3 s each)
            "presence": {"enabled": False},
            "ip_range_whitelist": ["127.0.0.1"],
        }
        for key, sub in _RATE_LIMITS.items():
            cfg[key] = {s: dict(_UNLIMITED) for s in sub} if sub else dict(_UNLIMITED)
        cfg.update(self.extra_config)
        return cfg

    def log_config(self) -> dict:
        # A plain FileHandler: every line is on disk when it is logged, so tests can wait on it
        # (the generated config buffers INFO lines for up to 5 s).
        return {
            "version": 1,
            "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - "
                                                 "%(levelname)s - %(request)s - %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                                  "filename": self.log.path, "encoding": "utf8"}},
            "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }

    def _prepare(self):
        os.makedirs(os.path.join(self.dir, "media_store"), exist_ok=True)
        # JSON is YAML: no YAML writer needed.
        with open(self.config_path, "w") as f:
            json.dump(self.config(), f, indent=1)
        with open(os.path.join(self.dir, "log.yaml"), "w") as f:
            json.dump(self.log_config(), f, indent=1)
        # Synapse's key file format: "<algorithm> <version> <unpadded base64 of the seed>".
        seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        with open(os.path.join(self.dir, "signing.key"), "w") as f:
            f.write(f"ed25519 a_test {seed}\n")

    # --- lifecycle -----------------------------------------------------------------------
    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + "/health", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def start(self, timeout: float = 60.0):
        if self.starts == 0:
            self._prepare()
        self.starts += 1
        self._stdout = open(self.stdout_path, "ab")
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)   # nothing of tests/e2e may shadow Synapse's own modules
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "synapse.app.homeserver", "-c", self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._stdout, stderr=subprocess.STDOUT,
            cwd=self.dir, env=env, start_new_session=True)
        self.wait_ready(self._healthy, timeout, f"{self.base_url}/health not 200")
        return self

    def restart(self):
        """SIGTERM and start again: same port, same database (users, rooms, pushers survive)."""
        self.stop(cleanup=False)
        deadline = time.monotonic() + 10
        while port_open(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError("synapse's port still open after the process exited")
            time.sleep(0.02)
        return self.start()

    # --- users ---------------------------------------------------------------------------
    def register(self, localpart: str, password: str = "password",
                 admin: bool = False) -> MatrixClient:
        """Registers through the shared-secret admin API (HMAC-SHA1 over nonce, user, password,
        admin flag); returns the logged-in first device."""
        path = "/_synapse/admin/v1/register"
        nonce = request(self.base_url, "GET", path)["nonce"]
        msg = "\x00".join([nonce, localpart, password, "admin" if admin else "notadmin"])
        mac = hmac.new(self.shared_secret.encode(), msg.encode(), hashlib.sha1).hexdigest()
        r = request(self.base_url, "POST", path, {
            "nonce": nonce, "username": localpart, "password": password, "admin": admin,
            "mac": mac})
        return MatrixClient(self.base_url, r["user_id"], r["access_token"], r["device_id"],
                            password)

    def new_user(self, prefix: str) -> MatrixClient:
        """A user no other test has: `prefix` plus a counter and random suffix."""
        return self.register(f"{prefix}{next(self._users)}_{secrets.token_hex(3)}")

    def pair(self, room_name: str) -> tuple[MatrixClient, MatrixClient, str]:
        """alice and bob, new users, in a two-member room of their own (Synapse's one-to-one
        rule: a message notifies with sound 'default')."""
        alice, bob = self.new_user("alice"), self.new_user("bob")
        room = alice.create_room(name=room_name)
        alice.invite(room, bob)
        bob.join(room)
        return alice, bob, room


if __name__ == "__main__":
    hs = Synapse().start()
    a, b = hs.register("alice"), hs.register("bob")
    print(f"synapse running: {hs.base_url} (dir {hs.dir})\n"
          f"  {a.user_id} token {a.access_token}\n  {b.user_id} token {b.access_token}",
          flush=True)
    hs.serve_until_interrupted()
