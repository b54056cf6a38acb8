"""A local APNs provider API (HTTP/2 over TLS, ALPN h2) for the end-to-end tests.

Pure Python: the `h2` state machine over blocking `ssl` sockets, one thread per connection, on
127.0.0.1 and a random port, answering as Apple's provider API does
(https://developer.apple.com/documentation/usernotifications/handling-notification-responses-from-apns).

    srv = ApnsServer(server_cert_pem, server_key_pem,
                     client_ca_pem=None,          # CA file content: ask for client certificates
                     require_client_cert=False,   # True: the TLS handshake fails without one
                     token_keys={"ABC123DEFG": (p8_public_key, "TEAM123456")}).start()
    srv.base_url                                  # https://localhost:<port>
    srv.set_reply(token, 410, "Unregistered")     # per device token; default 200 + apns-id
    srv.wait_for(token, 1)                        # -> [ApnsRequest]
    srv.stop()

Every request is recorded (`ApnsRequest`: connection id, client certificate subject, method,
path, token, headers, body, JSON, JWT header/claims and why it did not verify). Like APNs, a
request that carries neither a valid bearer token nor a client certificate is answered 403
(`MissingProviderToken` / `InvalidProviderToken` / `ExpiredProviderToken`), a wrong path 404
`BadPath`, another method 405 `MethodNotAllowed`.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

JWT_MAX_AGE = 3600  # APNs refuses provider tokens older than one hour (ExpiredProviderToken)
JWT_FUTURE_SLACK = 60


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def split_jwt(token: str, alg: str):
    """A compact JWS as (header, claims, signature, error): error is None when it has three parts
    that decode to two JSON objects and a signature, signed with `alg`; else why not."""
    parts = token.split(".")
    if len(parts) != 3:
        return None, None, None, f"{len(parts)} dot-separated parts, not 3"
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        sig = b64url_decode(parts[2])
    except Exception as e:  # noqa: BLE001
        return None, None, None, f"undecodable ({e})"
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return header, claims, None, "header/claims not JSON objects"
    if header.get("alg") != alg:
        return header, claims, None, f"alg {header.get('alg')!r}, not {alg}"
    return header, claims, sig, None


def signing_input(token: str) -> bytes:
    """What a compact JWS's signature covers: header and claims as sent."""
    return token.rsplit(".", 1)[0].encode("ascii")


def verify_jwt(token: str, keys: dict[str, tuple[object, str]], now: float | None = None):
    """Verify an APNs provider token. keys: {kid: (P-256 public key, team id)}.
    Returns (header, claims, error); error is None when it verifies, else why not (and the
    APNs reason it would earn as the first word)."""
    now = time.time() if now is None else now
    header, claims, sig, error = split_jwt(token, "ES256")
    if error:
        return header, claims, f"InvalidProviderToken: {error}"
    kid = header.get("kid")
    if kid not in keys:
        return header, claims, f"InvalidProviderToken: unknown kid {kid!r} (known {sorted(keys)})"
    pub, team = keys[kid]
    if claims.get("iss") != team:
        return header, claims, f"InvalidProviderToken: iss {claims.get('iss')!r}, team is {team!r}"
    if len(sig) != 64:
        return header, claims, (f"InvalidProviderToken: ES256 signature must be 64 bytes "
                                f"(r||s), got {len(sig)}")
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    try:
        pub.verify(encode_dss_signature(r, s), signing_input(token),
                   ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return header, claims, "InvalidProviderToken: bad signature"
    iat = claims.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool):
        return header, claims, f"InvalidProviderToken: iat {iat!r} is not an integer"
    if iat < now - JWT_MAX_AGE:
        return header, claims, f"ExpiredProviderToken: iat {iat} is {now - iat:.0f} s old"
    if iat > now + JWT_FUTURE_SLACK:
        return header, claims, f"InvalidProviderToken: iat {iat} is in the future"
    return header, claims, None


@dataclass
class ApnsRequest:
    conn_id: int
    client_subject: str | None      # RFC 4514 subject of the TLS client certificate, if any
    method: str
    path: str
    token: str | None               # the <token> of /3/device/<token>
    headers: dict[str, str]         # lower-case names; a repeated header keeps the last value
    header_list: list[tuple[str, str]]
    body: bytes
    json: object = None
    json_error: str | None = None
    jwt_header: dict | None = None
    jwt_claims: dict | None = None
    jwt_error: str | None = None    # None: verified (or no bearer token at all)
    status: int = 0                 # what the mock answered
    reason: str | None = None
    at: float = field(default_factory=time.time)

    @property
    def bearer(self) -> str | None:
        a = self.headers.get("authorization")
        if a and a.lower().startswith("bearer "):
            return a[7:].strip()
        return None

    def summary(self) -> str:
        hs = {k: (v[:20] + "…" if k == "authorization" and len(v) > 20 else v)
              for k, v in self.headers.items()}
        return (f"APNs request #{self.conn_id} {self.method} {self.path} -> {self.status} "
                f"{self.reason or ''}; client cert {self.client_subject!r}; headers {hs}; "
                f"jwt {self.jwt_header} {self.jwt_claims} error={self.jwt_error}; "
                f"body {self.body[:600]!r}")


class ApnsServer:
    def __init__(self, server_cert_pem: bytes, server_key_pem: bytes,
                 client_ca_pem: bytes | None = None, require_client_cert: bool = False,
                 token_keys: dict[str, tuple[object, str]] | None = None,
                 pinned_client_certs: list[bytes] | None = None, name: str = "apns"):
        """client_ca_pem: ask for (and verify against it) a TLS client certificate;
        require_client_cert: refuse the handshake without one; token_keys: {kid: (public key,
        team id)} accepted in bearer tokens (add more later with `add_token_key`);
        pinned_client_certs: DER certificates; when given, a client certificate must be one of
        them (besides chaining to the CA)."""
        self.name = name
        self.token_keys = dict(token_keys or {})
        self.require_client_cert = require_client_cert
        self.pinned = list(pinned_client_certs or [])
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ctx.set_alpn_protocols(["h2"])
        d = tempfile.mkdtemp(prefix="pushgate-e2e-apns-")
        cf, kf = os.path.join(d, "server.pem"), os.path.join(d, "server.key.pem")
        with open(cf, "wb") as f:
            f.write(server_cert_pem)
        with open(kf, "wb") as f:
            f.write(server_key_pem)
        self.ctx.load_cert_chain(cf, kf)
        if client_ca_pem is not None:
            self.ctx.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
            self.ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        self._tmpdir = d
        self.requests: list[ApnsRequest] = []
        self.replies: dict[str, tuple[int, str | None, dict]] = {}
        self._reply_budget: dict[str, int] = {}
        self.default_reply: tuple[int, str | None, dict] = (200, None, {})
        self.handshake_errors: list[str] = []
        self.connections: list[dict] = []   # {id, peer, client_subject, alpn, opened, closed}
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._stopping = False
        self.port = 0

    # --- control ---------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.port}"

    def add_token_key(self, kid: str, public_key, team_id: str):
        with self._cond:
            self.token_keys[kid] = (public_key, team_id)

    def set_reply(self, token: str, status: int, reason: str | None = None,
                  headers: dict | None = None, times: int | None = None):
        """Answer requests for `token` with this status and, unless 200, {"reason": reason};
        `times`: only for the next that many requests, then the default again."""
        with self._cond:
            self.replies[token] = (status, reason, dict(headers or {}))
            if times is None:
                self._reply_budget.pop(token, None)
            else:
                self._reply_budget[token] = times

    def clear_reply(self, token: str):
        with self._cond:
            self.replies.pop(token, None)

    def requests_for(self, token: str) -> list[ApnsRequest]:
        with self._cond:
            return [r for r in self.requests if r.token == token]

    def wait_for(self, token: str, count: int, timeout: float = 15.0,
                 diagnostics=None) -> list[ApnsRequest]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [r for r in self.requests if r.token == token]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    extra = diagnostics() if diagnostics else ""
                    raise AssertionError(
                        f"{self.name}: {len(got)}/{count} requests for token {token[:12]}… "
                        f"within {timeout} s; all requests: "
                        f"{[r.summary() for r in self.requests[-5:]]}; "
                        f"TLS handshake errors: {self.handshake_errors[-5:]}\n{extra}")
                self._cond.wait(min(left, 0.2))

    def wait_saying(self, token: str, text: str, status: int = 200, timeout: float = 15.0,
                    diagnostics=None) -> ApnsRequest:
        """The first request for `token` answered `status` whose payload carries `text`: found
        by what it says, because a retried notification may arrive between others."""
        deadline = time.monotonic() + timeout
        needle = text.encode()
        with self._cond:
            while True:
                for r in self.requests:
                    if r.token == token and r.status == status and needle in r.body:
                        return r
                left = deadline - time.monotonic()
                if left <= 0:
                    extra = diagnostics() if diagnostics else ""
                    got = [r.summary() for r in self.requests if r.token == token]
                    raise AssertionError(
                        f"{self.name}: no {status} request saying {text!r} for token "
                        f"{token[:12]}… within {timeout} s; its requests: {got}\n{extra}")
                self._cond.wait(min(left, 0.2))

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> "ApnsServer":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        s.settimeout(0.2)
        self._sock = s
        self.port = s.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name=f"{self.name}-accept", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def stop(self):
        self._stopping = True
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        for c in list(self._conns):
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(2)
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def diagnostics(self, n: int = 8) -> str:
        with self._cond:
            reqs = [r.summary() for r in self.requests[-n:]]
            conns = self.connections[-n:]
            hs = self.handshake_errors[-n:]
        return (f"--- {self.name} (port {self.port}) last requests ---\n" + "\n".join(reqs)
                + f"\n--- {self.name} connections ---\n{conns}\n"
                + f"--- {self.name} TLS handshake errors ---\n{hs}")

    # --- serving ---------------------------------------------------------------------------
    def _accept_loop(self):
        while not self._stopping:
            try:
                raw, peer = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(raw, peer), daemon=True,
                                 name=f"{self.name}-conn")
            t.start()
            self._threads.append(t)

    def _serve(self, raw: socket.socket, peer):
        conn_id = next(self._ids)
        raw.settimeout(10)
        try:
            tls = self.ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            with self._cond:
                self.handshake_errors.append(f"#{conn_id} from {peer}: {e}")
                self._cond.notify_all()
            raw.close()
            return
        self._conns.append(tls)
        info = {"id": conn_id, "peer": peer, "alpn": tls.selected_alpn_protocol(),
                "client_subject": None, "opened": time.time(), "closed": None}
        der = tls.getpeercert(binary_form=True)
        if der:
            info["client_subject"] = x509.load_der_x509_certificate(der).subject.rfc4514_string()
            if self.pinned and der not in self.pinned:
                with self._cond:
                    self.handshake_errors.append(
                        f"#{conn_id}: client certificate {info['client_subject']} not pinned")
                tls.close()
                return
        with self._cond:
            self.connections.append(info)
        if info["alpn"] != "h2":
            with self._cond:
                self.handshake_errors.append(f"#{conn_id}: ALPN {info['alpn']!r}, not h2")
            tls.close()
            return
        tls.settimeout(None)
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                   header_encoding=None))
        h2c.initiate_connection()
        h2c.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        streams: dict[int, dict] = {}
        closing = False
        try:
            tls.sendall(h2c.data_to_send())
            while not self._stopping:
                data = tls.recv(65536)
                if not data:
                    break
                try:
                    events = h2c.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    with self._cond:
                        self.handshake_errors.append(f"#{conn_id}: HTTP/2 protocol error {e}")
                    tls.sendall(h2c.data_to_send())
                    break
                for ev in events:
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = {"headers": ev.headers, "body": bytearray()}
                    elif isinstance(ev, h2.events.DataReceived):
                        st = streams.get(ev.stream_id)
                        if st is not None:
                            st["body"] += ev.data
                        h2c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        st = streams.pop(ev.stream_id, None)
                        if st is not None:
                            self._answer(h2c, ev.stream_id, st, conn_id, info["client_subject"])
                    elif isinstance(ev, h2.events.StreamReset):
                        streams.pop(ev.stream_id, None)
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        closing = True
                out = h2c.data_to_send()
                if out:
                    tls.sendall(out)
                if closing:
                    break
        except (OSError, ssl.SSLError):
            pass
        finally:
            info["closed"] = time.time()
            try:
                tls.close()
            except OSError:
                pass
            if tls in self._conns:
                self._conns.remove(tls)

    def _answer(self, h2c, stream_id: int, st: dict, conn_id: int, client_subject: str | None):
        hl = [(k.decode("utf-8", "replace") if isinstance(k, bytes) else k,
               v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
              for k, v in st["headers"]]
        pseudo = {k: v for k, v in hl if k.startswith(":")}
        headers = {k.lower(): v for k, v in hl if not k.startswith(":")}
        method, path = pseudo.get(":method", ""), pseudo.get(":path", "")
        body = bytes(st["body"])
        req = ApnsRequest(conn_id=conn_id, client_subject=client_subject, method=method,
                          path=path, token=None, headers=headers, header_list=hl, body=body)
        prefix = "/3/device/"
        if path.startswith(prefix):
            req.token = path[len(prefix):].split("?", 1)[0]
        if body:
            try:
                req.json = json.loads(body)
            except ValueError as e:
                req.json_error = str(e)
        with self._cond:
            keys = dict(self.token_keys)
        if req.bearer is not None:
            req.jwt_header, req.jwt_claims, req.jwt_error = verify_jwt(req.bearer, keys)
        elif "authorization" in headers:
            req.jwt_error = "InvalidProviderToken: authorization is not 'bearer <jwt>'"

        extra: dict = {}
        if method != "POST":
            status, reason = 405, "MethodNotAllowed"
        elif req.token is None or not req.token:
            status, reason = 404, "BadPath"
        elif req.jwt_error is not None:
            status, reason = 403, req.jwt_error.split(":", 1)[0]
        elif req.bearer is None and client_subject is None:
            status, reason = 403, "MissingProviderToken"
        elif not body:
            status, reason = 400, "PayloadEmpty"
        elif "apns-topic" not in headers:
            status, reason = 400, "MissingTopic"
        else:
            with self._cond:
                status, reason, extra = self.replies.get(req.token, self.default_reply)
                if req.token in self._reply_budget:
                    self._reply_budget[req.token] -= 1
                    if self._reply_budget[req.token] <= 0:
                        del self._reply_budget[req.token]
                        self.replies.pop(req.token, None)
        req.status, req.reason = status, reason
        apns_id = headers.get("apns-id") or str(uuid.uuid4()).upper()
        resp = [(":status", str(status)), ("apns-id", apns_id)]
        resp += [(k.lower(), str(v)) for k, v in extra.items()]
        payload = b""
        if status != 200:
            doc = {"reason": reason or "InternalServerError"}
            if status == 410:
                doc["timestamp"] = int(time.time() * 1000)
            payload = json.dumps(doc).encode()
            resp.append(("content-type", "application/json"))
        resp.append(("content-length", str(len(payload))))
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
        h2c.send_headers(stream_id, resp, end_stream=not payload)
        if payload:
            h2c.send_data(stream_id, payload, end_stream=True)



# --- a tiny client, for the mock's self-test ----------------------------------------------------
def make_jwt(private_key, key_id: str, team_id: str, iat: int | None = None) -> str:
    """An APNs provider token (ES256, raw r||s signature)."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    def enc(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")
    head = enc(json.dumps({"alg": "ES256", "kid": key_id}).encode())
    claims = enc(json.dumps({"iss": team_id, "iat": int(time.time()) if iat is None
                             else iat}).encode())
    der = private_key.sign(f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return f"{head}.{claims}.{enc(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def h2_post(port: int, path: str, headers: dict, body: bytes, ca_file: str,
            client_cert: tuple[str, str] | None = None, timeout: float = 5.0,
            method: str = "POST") -> tuple[int, dict, bytes]:
    """One HTTP/2 request over TLS (ALPN h2) to 127.0.0.1:port, server name localhost."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["h2"])
    if client_cert:
        ctx.load_cert_chain(*client_cert)
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.selected_alpn_protocol() == "h2", tls.selected_alpn_protocol()
        c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                 header_encoding="utf-8"))
        c.initiate_connection()
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method", method), (":scheme", "https"),
                             (":authority", f"localhost:{port}"), (":path", path)]
                       + [(k.lower(), str(v)) for k, v in headers.items()],
                       end_stream=not body)
        if body:
            c.send_data(sid, body, end_stream=True)
        tls.sendall(c.data_to_send())
        status, rh, data = 0, {}, bytearray()
        done = False
        while not done:
            chunk = tls.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            for ev in c.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    rh = dict(ev.headers)
                    status = int(rh.pop(":status"))
                elif isinstance(ev, h2.events.DataReceived):
                    data += ev.data
                    c.acknowledge_received_data(ev.flow_controlled_length, sid)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
            tls.sendall(c.data_to_send())
        c.close_connection()
        try:
            tls.sendall(c.data_to_send())
        except OSError:
            pass
        return status, rh, bytes(data)
