"""`scripts/run-local --demo`, as a newcomer runs it: the push from bob's message reaches alice's
stand-in device decrypted, and Ctrl-C leaves no Prosody, pushgate or demo behind.

Runs the script itself with the binary under test (PUSHGATE_BIN, so no cargo build) and a
temporary data dir; Ctrl-C is a SIGINT to the script's whole process group, as a terminal sends.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import threading
import time

from pushgate_proc import REPO, binary_path

RUN_LOCAL = os.path.join(REPO, "scripts", "run-local")
STARTUP_TIMEOUT = 90.0  # Prosody, pushgate, two logins, one delivery; generous for a busy CI
STOP_TIMEOUT = 30.0


def _demo_module():
    """scripts/demo/push_demo.py, for the message bob sends and the line that marks a push."""
    path = os.path.join(REPO, "scripts", "demo", "push_demo.py")
    spec = importlib.util.spec_from_file_location("push_demo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEMO = _demo_module()


def session_processes(sid: int) -> dict[int, str]:
    """pid -> command line of every process in session `sid` (Linux /proc)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # exited meanwhile
        # after "pid (comm) ": state ppid pgrp session ...; comm may hold spaces and ')'
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and cmdline:
            found[int(entry)] = cmdline
    return found


class Output:
    """The script's stdout + stderr, read line by line in a thread."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def text(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_line(self, prefix: str, after: int, timeout: float, alive) -> int:
        """Index of the first line after `after` that starts with `prefix` (leading blanks
        ignored)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after + 1, len(self.lines)):
                    if self.lines[i].lstrip().startswith(prefix):
                        return i
                left = deadline - time.monotonic()
                if left <= 0 or not alive():
                    raise AssertionError(f"no line starting {prefix!r} within {timeout:.0f} s "
                                         f"(script running: {alive()}):\n"
                                         + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))


def test_demo_pushes_bobs_message_and_ctrl_c_stops_everything(tmp_path):
    binary = os.path.abspath(binary_path())
    assert os.access(binary, os.X_OK), f"no pushgate binary at {binary} (set PUSHGATE_BIN)"
    env = dict(os.environ, PUSHGATE_BIN=binary,
               PUSHGATE_LOCAL_DATA_DIR=str(tmp_path / "data"), NO_COLOR="1")
    for var in ("PUSHGATE_LOCAL_C2S_PORT", "PUSHGATE_LOCAL_COMPONENT_PORT"):
        env.pop(var, None)
    proc = subprocess.Popen([RUN_LOCAL, "--demo"], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = Output(proc.stdout)
    try:
        def alive():
            return proc.poll() is None

        received = out.wait_line(DEMO.RECEIVED, -1, STARTUP_TIMEOUT, alive)
        payload_at = out.wait_line("decrypted payload:", received, 5, alive)
        out.wait_line("Demo done.", payload_at, 5, alive)
        text = out.text()
        assert "building pushgate" not in text, f"run-local built with PUSHGATE_BIN set:\n{text}"
        block = out.lines[received:payload_at]
        assert any(line.split() == ["Content-Encoding:", "aes128gcm"] for line in block), text
        assert any(line.split()[:2] == ["VAPID:", "valid"] for line in block), text

        payload = json.loads(out.lines[payload_at].split("decrypted payload:", 1)[1])
        assert payload["kind"] == "alert", payload
        assert payload["account"] == "alice@localhost", payload
        assert payload["body"] == DEMO.MESSAGE, payload
        assert payload["sender"].split("/")[0] == "bob@localhost", payload

        # still serving (for a real client) after the demo's own push
        time.sleep(1)
        assert alive(), f"run-local exited after the demo:\n{out.text()}"
        running = session_processes(proc.pid)
        assert any("prosody" in c for c in running.values()), running
        assert any(c.startswith(binary) for c in running.values()), running
        assert any("push_demo.py" in c for c in running.values()), running

        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=STOP_TIMEOUT)
        assert rc == 130, f"exit status {rc} after Ctrl-C:\n{out.text()}"
        left = session_processes(proc.pid)
        assert not left, f"still running after Ctrl-C: {left}\n{out.text()}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for pid in session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)
