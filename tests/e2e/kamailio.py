"""A throw-away Kamailio 5.6 SIP proxy, and sipp (3.6) as its phones, for the SIP end-to-end
tests (stdlib only).

Kamailio runs etc/examples/kamailio-pushgate.cfg unmodified, as an operator would: from a temp
dir, in the foreground as our child (`-DD -E`: main process in the foreground, log on stderr
into kamailio.log), on a free loopback UDP port, with only `-A` defines for pushgate's URL.
Ready = it answers an OPTIONS with 200. Stopped with SIGTERM to the main PID, which takes its
workers down. (Facts and pitfalls: shared/reference/test-servers.md §7.)

    kam = Kamailio(push_url="http://127.0.0.1:8080/push").start()
    bob = Callee(kam, "bob", pn={"pn-provider": "apns", "pn-prid": tok, "pn-param": param})
    bob.register().check()
    uas = bob.listen()                      # the phone: rings (180) until CANCELled
    call = call_and_cancel(kam, "bob", call_id="e2e-1@host").check()
    uas.wait().check()                      # the INVITE was relayed to the phone
    kam.stop()

sipp runs the scenarios of tests/e2e/sipp/ (each documents its keys) with `-m 1 -nostdin
-timeout_error` in a directory of its own under Kamailio's temp dir, with its message trace
(`messages`) and unexpected-message trace (`errors`) kept for the assertions and the failure
report. Run on its own:

    python3 tests/e2e/kamailio.py http://127.0.0.1:8080/push    # Ctrl-C stops
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime

from logfile import LogFile
from procs import ServerProcess, terminate

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(REPO, "etc", "examples", "kamailio-pushgate.cfg")
SIPP_DIR = os.path.join(HERE, "sipp")
KAMAILIO = os.environ.get("KAMAILIO_BIN", "kamailio")
SIPP = os.environ.get("SIPP_BIN", "sipp")

# the config's log line for each POST to pushgate (route[PUSH_POST])
PUSH_LINE = (r"pushgate: (?P<event>\S+) push for (?P<ruri>\S+) to (?P<platform>\w+)/(?P<app>\S+)"
             r" contact (?P<contact>\d+): (?P<outcome>.*)")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def udp_bound(port: int) -> bool:
    """Some socket is bound to UDP `port` (any address), per /proc/net/udp."""
    try:
        with open("/proc/net/udp") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return False
    return any(int(r.split()[1].rsplit(":", 1)[1], 16) == port for r in rows if r.strip())


def sip_options(port: int, timeout: float = 0.3) -> bool:
    """An OPTIONS to the proxy itself is answered 200 (the config's keepalive answer)."""
    tag = secrets.token_hex(6)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.connect(("127.0.0.1", port))   # connected: a closed port fails at once (ICMP)
        lport = s.getsockname()[1]
        msg = (f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK-probe-{tag}\r\n"
               f"From: <sip:probe@127.0.0.1>;tag={tag}\r\n"
               f"To: <sip:127.0.0.1:{port}>\r\n"
               f"Call-ID: probe-{tag}@127.0.0.1\r\n"
               "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
        s.settimeout(timeout)
        try:
            s.send(msg.encode())
            return s.recv(65535).startswith(b"SIP/2.0 200")
        except OSError:     # refused (not bound yet) or timed out
            return False


class Kamailio(ServerProcess):
    def __init__(self, push_url: str, name: str = "kamailio", config: str = CONFIG,
                 defines: dict[str, str] | None = None, children: int = 2):
        """push_url: pushgate's /push URL (the PUSH_URL define); defines: more -A defines,
        NAME -> value as the config reads it (e.g. {"PUSH_TIMEOUT": "1"})."""
        self.name = name
        self.config = config
        self.push_url = push_url
        self.defines = dict(defines or {})
        self.children = children
        self.dir = tempfile.mkdtemp(prefix="pushgate-e2e-kamailio-")
        self.port = free_udp_port()
        self.log = LogFile(os.path.join(self.dir, "kamailio.log"), f"{name} log")
        self.stdout_path = self.log.path
        self.proc: subprocess.Popen | None = None
        self._stdout = None
        self.sipp_runs = 0
        self.sipps: list[Sipp] = []     # stopped with Kamailio, e.g. a phone a failed test left

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [KAMAILIO, "-f", self.config, "-DD", "-E", "-Y", self.dir, "-w", self.dir,
               "-l", f"udp:{self.address}", "-m", "64", "-M", "8", "-n", str(self.children),
               "-A", f'PUSH_URL="{self.push_url}"']
        for k, v in self.defines.items():
            cmd += ["-A", f"{k}={v}"]
        return cmd

    def start(self, timeout: float = 10.0):
        self._stdout = open(self.log.path, "ab")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=self._stdout, stderr=subprocess.STDOUT,
                                     cwd=self.dir, start_new_session=True)
        self.wait_ready(lambda: sip_options(self.port), timeout,
                        f"no 200 to OPTIONS on udp {self.address}")
        return self

    def ports(self) -> list[int]:
        return []   # UDP only: nothing for ServerProcess.restart to wait for

    def stop(self, cleanup: bool = True, timeout: float = 10.0):
        for sipp in self.sipps:
            sipp.stop()
        self.sipps.clear()
        super().stop(cleanup=cleanup, timeout=timeout)

    def diagnostics(self, n: int = 40) -> str:
        return f"--- {self.name} log tail ({self.log.path}) ---\n{self.log.tail(n)}"

    def push_lines(self, since: int = 0) -> list[re.Match]:
        return self.log.find_all(PUSH_LINE, since)

    def wait_push_line(self, event: str, since: int = 0, count: int = 1,
                       timeout: float = 10.0) -> list[re.Match]:
        alive = (lambda: None if self.running() else "kamailio exited")
        return self.log.wait_for(PUSH_LINE.replace(r"(?P<event>\S+)", f"(?P<event>{event})"),
                                 since=since, count=count, timeout=timeout, alive=alive,
                                 what=f"{event} push line")


# --- sipp ------------------------------------------------------------------------------------

@dataclass
class SippResult:
    name: str
    rc: int
    out: str          # sipp's stdout and stderr
    messages: str     # -trace_msg: every message sent and received
    errors: str       # -trace_err: unexpected messages

    def check(self) -> "SippResult":
        """Fails with sipp's traces unless every call of the scenario succeeded (exit 0)."""
        assert self.rc == 0, (f"sipp {self.name} exited {self.rc}\n--- output ---\n{self.out[-3000:]}"
                              f"\n--- unexpected messages ---\n{self.errors[-3000:]}"
                              f"\n--- messages ---\n{self.messages[-4000:]}")
        return self

    def entries(self) -> list[tuple[float, str, str]]:
        """(epoch seconds, "sent" | "received", message) for each message of the trace."""
        # each entry: a line of dashes and a local timestamp, "UDP message received [N]
        # bytes :" or "UDP message sent (N bytes):", a blank line, the message
        out = []
        parts = re.split(r"^-{5,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$", self.messages,
                         flags=re.M)
        for stamp, block in zip(parts[1::2], parts[2::2]):
            head, _, msg = block.lstrip("\n").partition("\n")
            kind = ("received" if " message received " in head
                    else "sent" if " message sent " in head else None)
            if kind:
                when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S.%f").timestamp()
                out.append((when, kind, msg.lstrip("\n")))
        return out

    def received(self, start_line: str) -> list[str]:
        """The received messages whose first line starts with `start_line` (e.g. "INVITE ")."""
        return [m for _, k, m in self.entries() if k == "received" and m.startswith(start_line)]

    def first(self, kind: str, start_line: str) -> float:
        """When the first message `kind` ("sent" / "received") starting with `start_line` was
        traced (epoch seconds)."""
        for when, k, m in self.entries():
            if k == kind and m.startswith(start_line):
                return when
        raise AssertionError(f"sipp {self.name}: no {start_line!r} {kind}\n{self.messages}")


class Sipp:
    """One sipp run of a scenario of tests/e2e/sipp/ against `kam` (-m 1)."""

    def __init__(self, kam: Kamailio, scenario: str, keys: dict[str, str] | None = None,
                 service: str | None = None, call_id: str | None = None,
                 local_port: int | None = None, pause_ms: int | None = None,
                 timeout_s: int = 20):
        kam.sipp_runs += 1
        self.name = f"{scenario}#{kam.sipp_runs}"
        self.dir = os.path.join(kam.dir, f"sipp-{kam.sipp_runs}-{scenario}")
        os.makedirs(self.dir, exist_ok=True)
        self.msg_path = os.path.join(self.dir, "messages.log")
        self.err_path = os.path.join(self.dir, "errors.log")
        self.out_path = os.path.join(self.dir, "out.log")
        cmd = [SIPP, kam.address, "-sf", os.path.join(SIPP_DIR, scenario + ".xml"),
               "-i", "127.0.0.1", "-m", "1", "-nostdin", "-timeout", f"{timeout_s}s",
               "-timeout_error", "-trace_msg", "-message_file", self.msg_path,
               "-trace_err", "-error_file", self.err_path]
        if local_port is not None:
            cmd += ["-p", str(local_port)]
        if service is not None:
            cmd += ["-s", service]
        if call_id is not None:
            if "%" in call_id:
                raise ValueError("a Call-ID with % would be read as a -cid_str format")
            cmd += ["-cid_str", call_id]
        if pause_ms is not None:
            cmd += ["-d", str(pause_ms)]
        for k, v in (keys or {}).items():
            cmd += ["-key", k, v]
        self.cmd = cmd
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None
        self._out = None
        kam.sipps.append(self)

    def start(self) -> "Sipp":
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self._out,
                                     stderr=subprocess.STDOUT, cwd=self.dir,
                                     start_new_session=True)
        return self

    def wait(self, timeout: float | None = None) -> SippResult:
        try:
            rc = self.proc.wait(timeout=timeout if timeout is not None else self.timeout_s + 5)
        except subprocess.TimeoutExpired:
            terminate(self.proc, timeout=2)
            rc = -999
        finally:
            self._out.close()

        def read(p):
            try:
                with open(p, errors="replace") as f:
                    return f.read()
            except FileNotFoundError:
                return ""
        return SippResult(self.name, rc, read(self.out_path), read(self.msg_path),
                          read(self.err_path))

    def stop(self):
        terminate(self.proc, timeout=2)
        if self._out is not None:
            self._out.close()

    def run(self) -> SippResult:
        return self.start().wait()


class Callee:
    """A phone: its own UDP port, registered with RFC 8599 push parameters (register.xml), and
    listening there as a UAS that rings until the call is cancelled (uas.xml)."""

    def __init__(self, kam: Kamailio, user: str, pn: dict[str, str] | None = None,
                 instance: str | None = None):
        """pn: Contact URI parameters in order, e.g. {"pn-provider": "fcm", "pn-prid": tok,
        "pn-param": "project"} (None: a contact without push parameters); instance: the
        +sip.instance URN (without the angle brackets)."""
        self.kam = kam
        self.user = user
        self.pn = dict(pn or {})
        self.instance = instance
        self.port = free_udp_port()

    def uri_params(self) -> str:
        return "".join(f";{k}={v}" for k, v in self.pn.items())

    def register(self, expires: int = 600) -> SippResult:
        keys = {"user": self.user, "uriparams": self.uri_params(),
                "cparams": f';+sip.instance="<{self.instance}>"' if self.instance else "",
                "expires": str(expires)}
        return Sipp(self.kam, "register", keys=keys, local_port=self.port,
                    call_id=f"reg-{secrets.token_hex(8)}@pushgate-e2e").run()

    def listen(self, timeout_s: int = 20) -> Sipp:
        uas = Sipp(self.kam, "uas", local_port=self.port, timeout_s=timeout_s).start()
        deadline = time.monotonic() + 5
        while not udp_bound(self.port):
            if uas.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sipp UAS not listening on udp {self.port}:\n"
                                     f"{uas.wait(0).out}")
            time.sleep(0.02)
        return uas


def call_and_cancel(kam: Kamailio, user: str, call_id: str, display: str = "Alice",
                    media: str = "audio", ring_ms: int = 300) -> SippResult:
    """A caller's INVITE to `user`, CANCELled `ring_ms` after the 180 Ringing (caller_cancel.xml):
    the result says whether it got 180, 200 for the CANCEL, 487, and sent the ACK. `display`
    is put in a SIP quoted string as it is: escape `"` and `\\` yourself."""
    return Sipp(kam, "caller_cancel", service=user, call_id=call_id, pause_ms=ring_ms,
                local_port=free_udp_port(),   # sipp's default is 5060 when free
                keys={"display": display, "media": media}).run()


if __name__ == "__main__":
    url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080/push"
    kam = Kamailio(push_url=url).start()
    print(f"kamailio running on udp {kam.address}, pushing to {url}, log {kam.log.path}",
          flush=True)
    kam.serve_until_interrupted()
