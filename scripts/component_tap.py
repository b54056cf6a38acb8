"""A loopback TCP proxy between an XMPP server's component port and pushgate that times publishes.

The fault benchmark (scripts/fault_bench.py) points pushgate's `component.server` here, so it can
measure what the server sees without trusting pushgate's own log: when a publish IQ left the
server, when and how pushgate answered it (result, or error and its condition), which publishes
were never answered on their stream, and when each handshake succeeded (pushgate bound).

Bytes are forwarded unchanged as they arrive; each direction is also fed to an incremental XML
parser (stanzas split across reads are joined), and a stanza is timestamped when its last byte
is read. Half-closes are passed on, so a clean `</stream:stream>` exchange still completes.
`pause()` closes the listening socket (pushgate's connects are refused, as they would be by a
stopped server) and `resume()` listens again on the same port.
"""

from __future__ import annotations

import socket
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

NS_PUBSUB = "{http://jabber.org/protocol/pubsub}"
NS_STANZAS = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
NS_DATA = "{jabber:x:data}"
HANDSHAKE = "{jabber:component:accept}handshake"
IQ = "{jabber:component:accept}iq"


@dataclass
class Publish:
    id: str
    conn: int                      # which proxied connection carried it
    sent_at: float                 # time.monotonic() when the server's IQ was read
    body: str | None               # the summary's last-message-body, if the server sent it
    answered_at: float | None = None
    type: str | None = None        # "result" or "error"
    condition: str | None = None   # the error's "type:defined-condition"

    @property
    def latency(self) -> float | None:
        return None if self.answered_at is None else self.answered_at - self.sent_at


def _body(iq: ET.Element) -> str | None:
    for field in iq.iter(f"{NS_DATA}field"):
        if field.get("var") == "last-message-body":
            return field.findtext(f"{NS_DATA}value")
    return None


def _condition(iq: ET.Element) -> str | None:
    err = iq.find("{jabber:component:accept}error")
    if err is None:
        return None
    for child in err:
        if child.tag.startswith(NS_STANZAS) and not child.tag.endswith("}text"):
            return f"{err.get('type')}:{child.tag[len(NS_STANZAS):]}"
    return f"{err.get('type')}:?"


class _Stanzas:
    """Cuts one direction of an XMPP stream into top-level stanzas."""

    def __init__(self):
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.root: ET.Element | None = None
        self.broken = False

    def feed(self, data: bytes) -> list[ET.Element]:
        if self.broken:
            return []
        out = []
        try:
            self.parser.feed(data)
            for event, elem in self.parser.read_events():
                if event == "start":
                    self.depth += 1
                    if self.depth == 1:
                        self.root = elem
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        out.append(elem)
                        self.root.remove(elem)
        except ET.ParseError:
            # After </stream:stream> or on garbage: keep forwarding, stop looking.
            self.broken = True
        return out


class ComponentTap:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.publishes: dict[str, Publish] = {}
        self.handshakes: list[float] = []      # monotonic times the server accepted a handshake
        self.connections = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self._socks: set[socket.socket] = set()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> "ComponentTap":
        self.resume()
        return self

    def resume(self):
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        ls.settimeout(0.1)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), name="tap-accept", daemon=True).start()

    def pause(self):
        ls, self._listener = self._listener, None
        if ls is not None:
            ls.close()

    def stop(self):
        self.pause()
        self._stopped.set()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes the pumps blocked in recv()
            except OSError:
                pass

    # --- what was seen -------------------------------------------------------------------
    def snapshot(self) -> list[Publish]:
        with self._lock:
            return list(self.publishes.values())

    def bound_after(self, t: float) -> float | None:
        """The first successful handshake at or after monotonic time t."""
        with self._lock:
            return next((h for h in self.handshakes if h >= t), None)

    # --- the proxy -----------------------------------------------------------------------
    def _accept(self, ls: socket.socket):
        while self._listener is ls and not self._stopped.is_set():
            try:
                down, _ = ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            with self._lock:
                self.connections += 1
                conn = self.connections
                self._socks.update((down, up))
            pair = {"open": 2}
            threading.Thread(target=self._pump, args=(up, down, conn, True, pair),
                             name=f"tap-{conn}-from-server", daemon=True).start()
            threading.Thread(target=self._pump, args=(down, up, conn, False, pair),
                             name=f"tap-{conn}-to-server", daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, conn: int, from_server: bool,
              pair: dict):
        stanzas = _Stanzas()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                now = time.monotonic()
                for st in stanzas.feed(data):
                    self._seen(st, conn, from_server, now)
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # A reset (or a killed peer) on one side: end the other side's pump too.
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        with self._lock:
            pair["open"] -= 1
            if pair["open"] == 0:
                for s in (src, dst):
                    s.close()
                    self._socks.discard(s)

    def _seen(self, st: ET.Element, conn: int, from_server: bool, now: float):
        if from_server:
            if st.tag == HANDSHAKE:
                with self._lock:
                    self.handshakes.append(now)
            elif st.tag == IQ and st.get("type") == "set" and st.find(f"{NS_PUBSUB}pubsub") is not None:
                p = Publish(id=st.get("id", ""), conn=conn, sent_at=now, body=_body(st))
                with self._lock:
                    self.publishes[p.id] = p
        elif st.tag == IQ and st.get("type") in ("result", "error"):
            with self._lock:
                p = self.publishes.get(st.get("id", ""))
                if p is not None and p.conn == conn and p.answered_at is None:
                    p.answered_at, p.type = now, st.get("type")
                    p.condition = _condition(st)
