"""A stand-in Matrix push gateway that records what a homeserver POSTs to
/_matrix/push/v1/notify and answers what the test scripted (stdlib only).

For the Synapse harness self-test (test_synapse_harness.py): it shows what Synapse sends and how
it reacts to each answer, without pushgate. Replies are scripted per pushkey: a queue of
one-shot replies, then the pushkey's standing reply, then 200 {"rejected": []}.

    rec = NotifyRecorder().start()
    rec.script("pk1", [(500, None), (502, None)])   # the next two POSTs for pk1 fail
    rec.reject("pk2")                                # every POST for pk2: 200 rejected [pk2]
    n = rec.wait_for(lambda n: n.event_id == ev)
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from recorded import wait_for_recorded

from synapse_proc import NOTIFY_PATH

Reply = tuple[int, dict | None]   # (status, JSON body or None for an empty body)
OK: Reply = (200, {"rejected": []})


@dataclass
class Notify:
    headers: dict
    body: dict
    status: int = 0           # what we answered (0 until then)

    @property
    def notification(self) -> dict:
        return self.body.get("notification", {})

    @property
    def device(self) -> dict:
        return self.notification["devices"][0]

    @property
    def pushkey(self) -> str:
        return self.device["pushkey"]

    @property
    def event_id(self) -> str | None:
        return self.notification.get("event_id")

    def summary(self) -> str:
        n = self.notification
        return (f"{self.pushkey} event={n.get('event_id')} type={n.get('type')} "
                f"counts={n.get('counts')} -> {self.status}")


@dataclass
class _Script:
    queue: list = field(default_factory=list)
    standing: Reply | None = None


class NotifyRecorder:
    def __init__(self, name: str = "notify-recorder"):
        self.name = name
        self.notifies: list[Notify] = []
        self.other_requests: list[tuple[str, str]] = []   # (method, path) of anything else
        self._scripts: dict[str, _Script] = {}
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{NOTIFY_PATH}"

    # --- scripting ---------------------------------------------------------------------
    def script(self, pushkey: str, replies: list[Reply]):
        """The next len(replies) POSTs for `pushkey` get these answers, in order."""
        with self._cond:
            self._scripts.setdefault(pushkey, _Script()).queue.extend(replies)

    def reject(self, pushkey: str):
        """From now on answer 200 {"rejected": [pushkey]} to every POST for `pushkey`."""
        with self._cond:
            self._scripts.setdefault(pushkey, _Script()).standing = (
                200, {"rejected": [pushkey]})

    def _reply_for(self, pushkey: str) -> Reply:
        s = self._scripts.get(pushkey)
        if s is None:
            return OK
        if s.queue:
            return s.queue.pop(0)
        return s.standing or OK

    # --- reading -----------------------------------------------------------------------
    def for_pushkey(self, pushkey: str) -> list[Notify]:
        with self._cond:
            return [n for n in self.notifies if n.pushkey == pushkey]

    def wait_for(self, pred, count: int = 1, timeout: float = 15.0) -> list[Notify]:
        """Waits until `count` answered notifies satisfy `pred`; returns them in arrival order."""
        return wait_for_recorded(self._cond, lambda: self.notifies, pred, count, timeout,
                                 f"{self.name}: notifies", self.diagnostics)

    def diagnostics(self, n: int = 10) -> str:
        with self._cond:
            lines = [x.summary() for x in self.notifies[-n:]]
            other = self.other_requests[-n:]
        return "\n".join(lines) + (f"\nother requests: {other}" if other else "")

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> "NotifyRecorder":
        rec = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # Synapse keeps its connection per pusher alive

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
                if self.path != NOTIFY_PATH:
                    with rec._cond:
                        rec.other_requests.append(("POST", self.path))
                    return self._answer(404, {"errcode": "M_UNRECOGNIZED"})
                n = Notify(headers=dict(self.headers), body=json.loads(raw))
                with rec._cond:
                    rec.notifies.append(n)
                    status, body = rec._reply_for(n.pushkey)
                self._answer(status, body)
                with rec._cond:
                    n.status = status
                    rec._cond.notify_all()

            def do_GET(self):
                with rec._cond:
                    rec.other_requests.append(("GET", self.path))
                self._answer(404, {"errcode": "M_UNRECOGNIZED"})

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
