"""A push service that accepts connections and never answers (a tarpit), counting the
connections it holds open: the slow peer that must not delay everybody else. `recover()` makes
it answer `201 Created` from then on, to see which connections the client keeps afterwards."""

from __future__ import annotations

import socket
import threading


class Tarpit:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/push/tarpit"
        self.accepted = 0
        self.most_open = 0
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = False
        self.answering = False
        threading.Thread(target=self._accept, name="tarpit", daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._open.add(conn)
                self.most_open = max(self.most_open, len(self._open))
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket):
        """Read and discard until the peer gives up; answer only once recovered."""
        try:
            while data := conn.recv(65536):
                if self.answering:
                    for _ in range(data.count(b"POST ")):
                        conn.sendall(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def recover(self):
        self.answering = True

    def open_now(self) -> int:
        with self._lock:
            return len(self._open)

    def stop(self):
        self._stop = True
        self.sock.close()
        with self._lock:
            for c in list(self._open):
                try:
                    c.close()
                except OSError:
                    pass
