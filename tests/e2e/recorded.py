"""Waiting for what a local stand-in server recorded: shared by the Matrix and Sylk recorders."""

from __future__ import annotations

import threading
import time


def wait_for_recorded(cond: threading.Condition, records, pred, count: int, timeout: float,
                      what: str, diagnostics) -> list:
    """Waits (holding `cond`, which the recorder notifies) until `count` answered records
    (`records()` under the lock, each with a `status`) satisfy `pred`; returns them in arrival
    order, or fails naming `what` with `diagnostics()`."""
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            got = [r for r in records() if r.status and pred(r)]
            if len(got) >= count:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"{len(got)}/{count} matching {what} within {timeout} s;"
                    f" last ones:\n{diagnostics()}")
            cond.wait(min(left, 0.2))
