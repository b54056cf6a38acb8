"""Running the pushgate binary under test: config, VAPID key, process, log.

The binary is $PUSHGATE_BIN, else <repo>/target/debug/pushgate (${CARGO_TARGET_DIR}/debug/...).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from logfile import LogFile
from procs import terminate
from webpush_endpoint import public_bytes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A publish's answer is logged at DEBUG (target pushgate::publish, turned on below) with
# `outcome=<label>`. Refused ad-hoc commands carry an
# `outcome=` too ("command refused: ... outcome=not_found"), so only lines about a publish count.
OUTCOME_RE = re.compile(r"(?i)publish.*\boutcome=\"?([a-z_]+)\"?")
# How each publish was read: `bytes` (the lean reading, fronts/xmpp/publish/iq.rs) or `tree`.
READ_RE = re.compile(r"publish answered.*\bread=\"?([a-z]+)\"?")
VAPID_SUBJECT = "mailto:test@localhost"
# What pushgate logs when its component stream is up, and when another instance holds it.
CONNECTED = "component connected"
STANDING_BY = "another instance of this component is connected to the server: standing by"
PROVIDERS = ("webpush", "up")
TTL_SECS = 3600


def binary_path() -> str:
    if os.environ.get("PUSHGATE_BIN"):
        return os.environ["PUSHGATE_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    if not os.path.isabs(target):
        target = os.path.join(REPO, target)
    return os.path.join(target, "debug", "pushgate")


def toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unifiedpush_toml(http_port: int, answer_timeout_secs: int | None = None) -> str:
    """Extra config (Pushgate's extra_toml) for UnifiedPush: the HTTP listener on `http_port`
    and `[unifiedpush]` on, endpoints `http://127.0.0.1:<http_port>/up/<token>`."""
    out = [
        "[http]",
        f'listen = "127.0.0.1:{http_port}"',
        "",
        "[unifiedpush]",
        "enabled = true",
        f'endpoint_base_url = "http://127.0.0.1:{http_port}"',
    ]
    if answer_timeout_secs is not None:
        out.append(f"answer_timeout_secs = {answer_timeout_secs}")
    return "\n".join(out) + "\n"


class Pushgate:
    def __init__(self, server, jid: str, secret: str, binary: str | None = None,
                 name: str = "pushgate", extra_toml: str = ""):
        """server: the Prosody or Ejabberd to connect to; extra_toml: appended to the generated
        config (more provider sections, [admin], [http])."""
        self.server = server
        self.extra_toml = extra_toml
        self.jid = jid
        self.secret = secret
        self.binary = binary or binary_path()
        self.name = name
        self.dir = tempfile.mkdtemp(prefix="pushgate-e2e-")
        self.data_dir = os.path.join(self.dir, "data")
        os.makedirs(self.data_dir)
        self.config_path = os.path.join(self.dir, "pushgate.toml")
        self.vapid_key_path = os.path.join(self.dir, "vapid.pem")
        self.vapid_key = ec.generate_private_key(ec.SECP256R1())
        with open(self.vapid_key_path, "wb") as f:
            f.write(self.vapid_key.private_bytes(serialization.Encoding.PEM,
                                                 serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        self.log = LogFile(os.path.join(self.dir, "pushgate.log"), f"{name} log")
        self.proc: subprocess.Popen | None = None
        self._logf = None
        self.write_config()

    @property
    def vapid_public(self) -> bytes:
        return public_bytes(self.vapid_key)

    def config_text(self) -> str:
        out = [
            "[component]",
            f"jid = {toml_str(self.jid)}",
            f"secret = {toml_str(self.secret)}",
            f'server = "127.0.0.1:{self.server.component_port}"',
            "max_reconnect_delay_secs = 2",
            "idle_ping_secs = 60",
            "publish_timeout_secs = 5",
            "",
            "[storage]",
            f"data_dir = {toml_str(self.data_dir)}",
            "",
            "[registration]",
            "max_payload_size = 3000",
        ]
        for pid in PROVIDERS:
            out += [
                "",
                f"[providers.{pid}]",
                'kind = "webpush"',
                f"vapid_private_key_file = {toml_str(self.vapid_key_path)}",
                f"vapid_subject = {toml_str(VAPID_SUBJECT)}",
                f"ttl_secs = {TTL_SECS}",
                "max_body_chars = 500",
                "allow_http = true",
                "allow_private_addresses = true",
                "allowed_hosts = []",
                "denied_hosts = []",
            ]
        if self.extra_toml:
            out += ["", self.extra_toml.strip("\n")]
        return "\n".join(out) + "\n"

    def write_config(self):
        with open(self.config_path, "w") as f:
            f.write(self.config_text())

    # --- lifecycle -----------------------------------------------------------------------
    def check_binary(self):
        if not os.path.isfile(self.binary) or not os.access(self.binary, os.X_OK):
            raise FileNotFoundError(
                f"pushgate binary not found at {self.binary}: run `cargo build --bin pushgate` "
                f"(or set PUSHGATE_BIN)")

    def exited(self) -> str | None:
        if self.proc is not None and self.proc.poll() is not None:
            return f"pushgate exited with status {self.proc.returncode}"
        return None

    def start(self, timeout: float = 15.0):
        """Start `pushgate run` and wait until the server has accepted the component."""
        since = self.server.log.offset()
        self.spawn()
        self.server.wait_component(self.jid, since=since, timeout=timeout, alive=self.exited)
        return self

    def spawn(self):
        """Start `pushgate run` without waiting for anything."""
        self.check_binary()
        env = dict(os.environ)
        # Every publish's outcome= line is a debug line of target pushgate::publish (off by
        # default: one line per publish costs CPU at volume); the tests read them.
        env["RUST_LOG"] = os.environ.get("PUSHGATE_E2E_RUST_LOG", "info,pushgate::publish=debug")
        env["NO_COLOR"] = "1"
        env.setdefault("RUST_BACKTRACE", "1")
        self._logf = open(self.log.path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "run", "--config", self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=subprocess.STDOUT,
            cwd=self.dir, env=env, start_new_session=True)

    def wait_reconnected(self, since: int, timeout: float = 15.0):
        self.server.wait_component(self.jid, since=since, timeout=timeout, alive=self.exited)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL, timeout: float = 10.0):
        if self.proc is None:
            return
        terminate(self.proc, sig, timeout)
        self.proc = None
        if self._logf:
            self._logf.close()
            self._logf = None

    def stop(self):
        self.kill(signal.SIGTERM)

    def cleanup(self):
        """Stop; remove the temp dir unless PUSHGATE_E2E_KEEP is set (to read logs later)."""
        self.stop()
        if not os.environ.get("PUSHGATE_E2E_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- log -----------------------------------------------------------------------------
    def outcomes(self, since: int = 0) -> list[str]:
        return [m.group(1) for m in self.log.find_all(OUTCOME_RE, since)]

    def publish_reads(self, since: int = 0) -> list[str]:
        return [m.group(1) for m in self.log.find_all(READ_RE, since)]

    def wait_outcomes(self, since: int, count: int = 1, timeout: float = 15.0) -> list[str]:
        ms = self.log.wait_for(OUTCOME_RE, since=since, count=count, timeout=timeout,
                               what=f"{count} 'outcome=' line(s)", alive=self.exited)
        return [m.group(1) for m in ms]

    def diagnostics(self, n: int = 40) -> str:
        return f"--- {self.name} log tail ({self.log.path}) ---\n{self.log.tail(n)}"

    # --- other subcommands ---------------------------------------------------------------
    def check_config(self, path: str) -> subprocess.CompletedProcess:
        self.check_binary()
        return run_check_config(self.binary, path, cwd=self.dir)


def run_check_config(binary: str, path: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.run([binary, "check-config", "--config", path], cwd=cwd, env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
