#!/usr/bin/env python3
"""Slowloris against pushgate's HTTP port: many half-sent requests, then health-check latency and,
optionally, how long SIGTERM takes while they are still open.

    scripts/attack/slowloris.py --port 5281 --clients 1100 [--body] [--sigterm PID]

Opens --clients connections to 127.0.0.1:PORT, each sending half a request head (or, with
--body, a whole POST head and one byte of its 100-byte body), and keeps them open. Then it
probes GET /healthz once a second for --probe-secs and prints each answer (status or error,
latency), how many attack connections the server has closed so far, and a summary. With
--sigterm it then sends SIGTERM to PID (the pushgate process) while the connections are still
open and reports how long the process took to exit.

Loopback only, bounded in count and time; it stops by itself.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import sys
import time
import urllib.request

HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: pushgate\r\nUser-Agent: slow"
HALF_BODY = (b"POST /unregister-device/push.localhost HTTP/1.1\r\nHost: pushgate\r\n"
             b"Content-Length: 100\r\n\r\n{")


def open_clients(port: int, n: int, payload: bytes) -> tuple[list[socket.socket], int]:
    """Opens up to n attack connections; returns them and how many could not be opened."""
    socks, failed = [], 0
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(payload)
            s.setblocking(False)
            socks.append(s)
        except OSError:
            failed += 1
    return socks, failed


def closed_by_server(socks: list[socket.socket]) -> int:
    """How many the server has closed (reading past any answer it sent first)."""
    n = 0
    for s in socks:
        try:
            while s.recv(4096):
                pass
            n += 1
        except BlockingIOError:
            pass
        except OSError:
            n += 1
    return n


def probe(port: int) -> tuple[str, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            outcome = str(r.status)
    except Exception as e:  # noqa: BLE001 (any failure is an outcome to report)
        outcome = type(e).__name__
    return outcome, time.monotonic() - started


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_exit(pid: int, limit: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if gone(pid):
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--clients", type=int, default=1100)
    ap.add_argument("--body", action="store_true", help="half-sent bodies instead of heads")
    ap.add_argument("--probe-secs", type=int, default=10)
    ap.add_argument("--sigterm", type=int, metavar="PID")
    args = ap.parse_args()

    payload = HALF_BODY if args.body else HALF_HEAD
    started = time.monotonic()
    socks, failed = open_clients(args.port, args.clients, payload)
    print(f"opened {len(socks)} attack connections ({failed} failed) "
          f"in {time.monotonic() - started:.1f} s")
    latencies, outcomes = [], []
    for i in range(args.probe_secs):
        outcome, latency = probe(args.port)
        outcomes.append(outcome)
        if outcome == "200":
            latencies.append(latency)
        print(f"t={i:3d}s /healthz {outcome} in {latency * 1000:7.1f} ms; "
              f"server closed {closed_by_server(socks)} of {len(socks)}")
        time.sleep(max(0.0, 1.0 - latency))
    ok = outcomes.count("200")
    print(f"/healthz: {ok}/{len(outcomes)} answered 200", end="")
    if latencies:
        print(f", median {statistics.median(latencies) * 1000:.1f} ms, "
              f"max {max(latencies) * 1000:.1f} ms")
    else:
        print()
    if args.sigterm:
        os.kill(args.sigterm, signal.SIGTERM)
        took = wait_exit(args.sigterm, 60)
        print("SIGTERM: " + (f"exited after {took:.2f} s" if took is not None
                             else "still running after 60 s"))
    for s in socks:
        s.close()
    return 0 if ok == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
