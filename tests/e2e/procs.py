"""The child processes of the tests: ending one (a signal, a bounded wait, then SIGKILL for
whatever did not go), and what the test XMPP servers share."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time


def terminate(proc: subprocess.Popen | None, sig: int = signal.SIGTERM,
              timeout: float = 10.0) -> None:
    """Sends `sig` to a running `proc` and waits up to `timeout`; kills it if still running."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class ServerProcess:
    """What the test XMPP servers share: a child process started from `self.dir`, its stdout
    in `self.stdout_path`, its log in `self.log`, listening on `self.ports()`. Subclasses set
    those and `self.name`, and implement `start()`."""

    proc: subprocess.Popen | None = None
    _stdout = None

    def ports(self) -> list[int]:
        raise NotImplementedError

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def restart(self):
        """SIGTERM and start again: same ports, same data (registrations survive)."""
        self.stop(cleanup=False)
        # the old process is gone; wait until the kernel has closed its listening sockets
        deadline = time.monotonic() + 10
        while any(port_open(p) for p in self.ports()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: ports still open after the process exited")
            time.sleep(0.02)
        return self.start()

    def stop(self, cleanup: bool = True, timeout: float = 10.0):
        """SIGTERM, wait, kill if need be; delete the temp dir unless PUSHGATE_E2E_KEEP is set."""
        terminate(self.proc, timeout=timeout)
        self.proc = None
        if self._stdout:
            self._stdout.close()
            self._stdout = None
        if cleanup and not os.environ.get("PUSHGATE_E2E_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def wait_ready(self, ready, timeout: float, what: str, interval: float = 0.05):
        """Polls `ready()` until it is true; fails at once if the process exits, and stops it
        (keeping its dir for the logs) when `timeout` passes. `what`: the readiness not reached,
        for the error."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} while "
                                   f"starting\n{self.diagnostics()}")
            if time.monotonic() > deadline:
                self.stop(cleanup=False)
                raise RuntimeError(f"{self.name}: {what} after {timeout} s\n"
                                   f"{self.diagnostics()}")
            time.sleep(interval)

    def serve_until_interrupted(self):
        """For running a server on its own: waits for Ctrl-C or SIGTERM, then stops it."""
        def _stop(signum, frame):
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, _stop)
        try:
            while self.running():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stdout_tail(self, n: int = 20) -> str:
        try:
            with open(self.stdout_path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
            return "\n".join(lines[-n:])
        except FileNotFoundError:
            return "(none)"

    def diagnostics(self, n: int = 40) -> str:
        return (f"--- {self.name} stdout ---\n{self.stdout_tail()}\n"
                f"--- {self.name} log tail ({self.log.path}) ---\n{self.log.tail(n)}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
