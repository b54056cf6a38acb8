"""Reading a growing log file: offsets, searching after an offset, waiting for a line, tails.

Used for Prosody's debug log and pushgate's stderr. Stdlib only.
"""

from __future__ import annotations

import os
import re
import time

# tracing-subscriber colours its output unless told not to; strip any ANSI escapes so that
# `outcome=delivered` matches however the binary was configured.
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class LogWaitTimeout(AssertionError):
    pass


class LogFile:
    def __init__(self, path: str, name: str):
        self.path = path
        self.name = name

    def offset(self) -> int:
        """Current end of the file: pass to `since=` to look only at what is written later."""
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def text(self, since: int = 0) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(since)
                data = f.read()
        except FileNotFoundError:
            return ""
        return strip_ansi(data.decode("utf-8", errors="replace"))

    def lines(self, since: int = 0) -> list[str]:
        return self.text(since).splitlines()

    def find_all(self, pattern: str | re.Pattern, since: int = 0) -> list[re.Match]:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        out = []
        for line in self.lines(since):
            m = rx.search(line)
            if m:
                out.append(m)
        return out

    def wait_for(self, pattern: str | re.Pattern, since: int = 0, timeout: float = 15.0,
                 count: int = 1, what: str | None = None, alive=None) -> list[re.Match]:
        """Wait until at least `count` lines after `since` match; return all matches.

        `alive`: optional callable returning None while the writer is alive, or a string saying
        why waiting is pointless (e.g. the process exited) to fail early.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_all(pattern, since)
            if len(found) >= count:
                return found
            if alive is not None:
                why = alive()
                if why:
                    raise LogWaitTimeout(
                        f"{self.name}: gave up waiting for {what or pattern!r}: {why}\n"
                        f"--- last lines of {self.name} ---\n{self.tail()}")
            if time.monotonic() > deadline:
                raise LogWaitTimeout(
                    f"{self.name}: no line matching {what or pattern!r} "
                    f"({len(found)}/{count} found) within {timeout:.0f} s\n"
                    f"--- last lines of {self.name} ---\n{self.tail()}")
            time.sleep(0.05)

    def tail(self, n: int = 40) -> str:
        lines = self.lines()
        return "\n".join(lines[-n:]) if lines else "(empty)"
