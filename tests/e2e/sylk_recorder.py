"""A stand-in Sylk Pushserver that records what a SIP proxy POSTs to `/push` and answers what
the test scripted (stdlib only).

For the Kamailio harness self-test (test_kamailio_harness.py): it shows the exact JSON that
etc/examples/kamailio-pushgate.cfg sends for an INVITE and a CANCEL, without pushgate. Replies:
a queue of one-shot replies, then the standing reply, by default Sylk's
200 {"code": 200, "description": "push notification response", "data": {...}}.

    rec = SylkRecorder().start()
    rec.script([(500, {"code": 500, ...})])        # the next POST fails
    p = rec.wait_for(lambda p: p.body.get("call-id") == cid)[0]
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from recorded import wait_for_recorded

Reply = tuple[int, dict | None]   # (status, JSON body or None for an empty body)


def sylk_ok(body: dict) -> Reply:
    """Sylk's answer to a delivered push (other-fronts.md §2.1)."""
    return 200, {"code": 200, "description": "push notification response",
                 "data": {"code": 200, "reason": "OK", "platform": body.get("platform"),
                          "call_id": body.get("call-id"), "token": body.get("token")}}


@dataclass
class Push:
    path: str
    headers: dict
    raw: bytes
    body: dict            # {} when the body is not a JSON object (see `raw`)
    received: float       # time.time() when the request was read
    status: int = 0       # what we answered (0 until then)

    @property
    def event(self) -> str | None:
        return self.body.get("event")

    @property
    def call_id(self) -> str | None:
        return self.body.get("call-id")

    def summary(self) -> str:
        return f"POST {self.path} {self.raw[:300]!r} -> {self.status}"


class SylkRecorder:
    def __init__(self, name: str = "sylk-recorder"):
        self.name = name
        self.pushes: list[Push] = []
        self._queue: list[Reply] = []
        self.standing: Reply | None = None      # None: sylk_ok(body)
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/push"

    def script(self, replies: list[Reply]):
        """The next len(replies) POSTs get these answers, in order."""
        with self._cond:
            self._queue.extend(replies)

    def _reply_for(self, body: dict) -> Reply:
        if self._queue:
            return self._queue.pop(0)
        return self.standing or sylk_ok(body)

    def for_call(self, call_id: str) -> list[Push]:
        with self._cond:
            return [p for p in self.pushes if p.call_id == call_id]

    def wait_for(self, pred, count: int = 1, timeout: float = 10.0) -> list[Push]:
        """Waits until `count` answered POSTs satisfy `pred`; returns them in arrival order."""
        return wait_for_recorded(self._cond, lambda: self.pushes, pred, count, timeout,
                                 f"{self.name}: POSTs", self.diagnostics)

    def diagnostics(self, n: int = 10) -> str:
        with self._cond:
            return "\n".join(p.summary() for p in self.pushes[-n:]) or "(no POST)"

    def start(self) -> "SylkRecorder":
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # Kamailio keeps its connection (keep_connections)

            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: dict | None):
                raw = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = None
                p = Push(path=self.path, headers=dict(self.headers), raw=raw,
                         body=body if isinstance(body, dict) else {}, received=time.time())
                with rec._cond:
                    rec.pushes.append(p)
                    status, answer = rec._reply_for(p.body)
                self._answer(status, answer)
                with rec._cond:
                    p.status = status
                    rec._cond.notify_all()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, name=self.name, daemon=True).start()
        return self

    def stop(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
