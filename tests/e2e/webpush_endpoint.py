"""A local WebPush endpoint (push service stand-in) for the end-to-end tests.

* HTTP server on 127.0.0.1, random port, in a thread. Every POST is recorded (path, headers, raw
  body), then decrypted and checked:
  - RFC 8291 `aes128gcm` bodies (RFC 8188 framing; ECDH P-256 + HKDF-SHA256 + AES-128-GCM) are
    decrypted with the device's user-agent key pair and auth secret;
  - the RFC 8292 VAPID header `Authorization: vapid t=<JWT>, k=<key>` is verified: ES256 with the
    key from `k=`, `aud` = this endpoint's origin, `exp` in the future and at most 24 h ahead
    (and, when given, `k` = the expected public key and `sub` = the expected subject).
* Each device gets its own capability URL `/push/<random>` and its own UA key pair + auth
  secret. Devices may be created without keys (then the body is expected in plaintext).
* The reply status is configurable per path (default 201); unknown paths get 404.

The crypto helpers (encrypt, sign) exist so the endpoint itself can be tested against RFC 8291's
Appendix A vector and against tokens we sign ourselves (tests/e2e/test_harness.py).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (decode_dss_signature,
                                                             encode_dss_signature)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VAPID_MAX_LIFETIME = 24 * 3600
CLOCK_SLACK = 5  # seconds of rounding tolerance when checking `exp`


# --- encoding helpers ------------------------------------------------------------------------
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s: str) -> bytes:
    s = s.strip()
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def public_bytes(key) -> bytes:
    """65-byte uncompressed point of a P-256 public or private key."""
    pub = key.public_key() if hasattr(key, "public_key") else key
    return pub.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def private_key_from_raw(d: bytes):
    return ec.derive_private_key(int.from_bytes(d, "big"), ec.SECP256R1())


def public_key_from_raw(point: bytes):
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


def _hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


# --- RFC 8291 / RFC 8188 ---------------------------------------------------------------------
class DecryptError(Exception):
    pass


def _keys(ua_private, ua_public: bytes, as_public: bytes, auth: bytes, salt: bytes,
          ecdh_secret: bytes):
    # RFC 8291 §3.3: IKM = HKDF(salt=auth_secret, ikm=ecdh_secret,
    #                          info="WebPush: info" || 0x00 || ua_public || as_public, L=32)
    key_info = b"WebPush: info\x00" + ua_public + as_public
    ikm = _hkdf(ecdh_secret, auth, key_info, 32)
    # RFC 8188 §2.2/§2.3: CEK and NONCE from PRK = HMAC(salt, IKM)
    cek = _hkdf(ikm, salt, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf(ikm, salt, b"Content-Encoding: nonce\x00", 12)
    return cek, nonce


def _record_nonce(nonce: bytes, seq: int) -> bytes:
    n = int.from_bytes(nonce, "big") ^ seq
    return n.to_bytes(12, "big")


def decrypt_aes128gcm(body: bytes, ua_private, auth: bytes) -> bytes:
    """Decrypt an RFC 8291 message; returns the plaintext with delimiter and padding removed."""
    if len(body) < 21:
        raise DecryptError(f"body too short for an aes128gcm header ({len(body)} bytes)")
    salt = body[:16]
    rs = struct.unpack(">I", body[16:20])[0]
    idlen = body[20]
    if rs < 18:
        raise DecryptError(f"record size {rs} < 18")
    if len(body) < 21 + idlen:
        raise DecryptError("truncated keyid")
    as_public = body[21:21 + idlen]
    if idlen != 65 or as_public[0] != 4:
        raise DecryptError(f"keyid is not an uncompressed P-256 point (idlen={idlen})")
    try:
        as_key = public_key_from_raw(as_public)
    except ValueError as e:
        raise DecryptError(f"keyid is not a point on P-256: {e}") from e
    ecdh_secret = ua_private.exchange(ec.ECDH(), as_key)
    cek, nonce = _keys(ua_private, public_bytes(ua_private), as_public, auth, salt, ecdh_secret)
    aes = AESGCM(cek)
    ciphertext = body[21 + idlen:]
    if not ciphertext:
        raise DecryptError("no records")
    records = [ciphertext[i:i + rs] for i in range(0, len(ciphertext), rs)]
    out = b""
    for seq, record in enumerate(records):
        last = seq == len(records) - 1
        try:
            plain = aes.decrypt(_record_nonce(nonce, seq), record, None)
        except InvalidTag as e:
            raise DecryptError(f"AES-GCM authentication failed on record {seq}") from e
        stripped = plain.rstrip(b"\x00")
        if not stripped:
            raise DecryptError(f"record {seq} has no delimiter")
        delim = stripped[-1]
        if delim != (2 if last else 1):
            raise DecryptError(f"record {seq}: delimiter {delim:#04x}, expected "
                               f"{'0x02 (last record)' if last else '0x01'}")
        out += stripped[:-1]
    return out


def encrypt_aes128gcm(plaintext: bytes, ua_public: bytes, auth: bytes, as_private=None,
                      salt: bytes | None = None, rs: int = 4096) -> bytes:
    """Single-record RFC 8291 encryption (the application server's side), for self-tests."""
    as_private = as_private or ec.generate_private_key(ec.SECP256R1())
    salt = salt if salt is not None else os.urandom(16)
    as_public = public_bytes(as_private)
    ecdh_secret = as_private.exchange(ec.ECDH(), public_key_from_raw(ua_public))
    cek, nonce = _keys(None, ua_public, as_public, auth, salt, ecdh_secret)
    record = AESGCM(cek).encrypt(_record_nonce(nonce, 0), plaintext + b"\x02", None)
    return salt + struct.pack(">I", rs) + bytes([len(as_public)]) + as_public + record


# --- RFC 8292 VAPID --------------------------------------------------------------------------
class VapidError(Exception):
    pass


def sign_vapid(private_key, aud: str, sub: str, exp: int | None = None) -> str:
    """An `Authorization` header value as an application server would send it (self-tests)."""
    header = b64url(json.dumps({"typ": "JWT", "alg": "ES256"}).encode())
    claims = {"aud": aud, "exp": exp if exp is not None else int(time.time()) + 3600,
              "sub": sub}
    payload = b64url(json.dumps(claims).encode())
    der = private_key.sign(f"{header}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    sig = b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return f"vapid t={header}.{payload}.{sig}, k={b64url(public_bytes(private_key))}"


def parse_vapid_header(value: str | None) -> tuple[str, str]:
    if not value:
        raise VapidError("no Authorization header")
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "vapid":
        raise VapidError(f"Authorization scheme is {scheme!r}, not 'vapid'")
    params = {}
    for part in rest.split(","):
        k, sep, v = part.strip().partition("=")
        if not sep:
            raise VapidError(f"malformed vapid parameter {part!r}")
        params[k.strip().lower()] = v.strip()
    if "t" not in params or "k" not in params:
        raise VapidError(f"vapid header needs t= and k=, got {sorted(params)}")
    return params["t"], params["k"]


def verify_vapid(value: str | None, aud: str, now: float | None = None,
                 expected_key: bytes | None = None, expected_sub: str | None = None) -> dict:
    """Verify an `Authorization: vapid t=..., k=...` value; return the JWT claims."""
    token, k = parse_vapid_header(value)
    try:
        key_bytes = b64url_decode(k)
        key = public_key_from_raw(key_bytes)
    except (ValueError, TypeError) as e:
        raise VapidError(f"k= is not a base64url uncompressed P-256 point: {e}") from e
    if expected_key is not None and key_bytes != expected_key:
        raise VapidError("k= is not the configured VAPID public key")
    parts = token.split(".")
    if len(parts) != 3:
        raise VapidError(f"JWT has {len(parts)} parts, expected 3")
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        sig = b64url_decode(parts[2])
    except (ValueError, TypeError) as e:
        raise VapidError(f"JWT is not base64url JSON: {e}") from e
    if header.get("alg") != "ES256":
        raise VapidError(f"JWT alg is {header.get('alg')!r}, expected ES256")
    if len(sig) != 64:
        raise VapidError(f"ES256 signature is {len(sig)} bytes, expected 64 (raw r||s)")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as e:
        raise VapidError("ES256 signature does not verify with k=") from e
    if claims.get("aud") != aud:
        raise VapidError(f"aud is {claims.get('aud')!r}, expected {aud!r}")
    now = time.time() if now is None else now
    exp = claims.get("exp")
    if not isinstance(exp, int):
        raise VapidError(f"exp is {exp!r}, expected an integer")
    if exp <= now:
        raise VapidError(f"exp {exp} is not in the future (now {int(now)})")
    if exp > now + VAPID_MAX_LIFETIME + CLOCK_SLACK:
        raise VapidError(f"exp {exp} is more than 24 h ahead (now {int(now)})")
    if expected_sub is not None and claims.get("sub") != expected_sub:
        raise VapidError(f"sub is {claims.get('sub')!r}, expected {expected_sub!r}")
    return claims


# --- devices and deliveries ------------------------------------------------------------------
@dataclass
class Device:
    """A browser/distributor stand-in: capability URL + (optional) UA keys."""
    path: str
    url: str
    ua_private: object | None = None
    auth: bytes | None = None

    @property
    def encrypted(self) -> bool:
        return self.ua_private is not None

    @property
    def p256dh(self) -> str | None:
        return b64url(public_bytes(self.ua_private)) if self.ua_private else None

    @property
    def auth_b64(self) -> str | None:
        return b64url(self.auth) if self.auth else None


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]          # lower-case names
    body: bytes
    status: int                      # what we answered
    received_at: float
    plaintext: bytes | None = None
    payload: object | None = None    # parsed JSON of the plaintext
    decrypt_error: str | None = None
    vapid_claims: dict | None = None
    vapid_error: str | None = None

    def summary(self) -> str:
        return (f"POST {self.path} -> {self.status}: payload={self.payload!r} "
                f"decrypt_error={self.decrypt_error!r} vapid_error={self.vapid_error!r} "
                f"headers={ {k: v for k, v in self.headers.items() if k != 'authorization'} }")


class WebPushEndpoint:
    def __init__(self, vapid_public_key: bytes | None = None, vapid_subject: str | None = None):
        self.expected_vapid_key = vapid_public_key
        self.expected_vapid_sub = vapid_subject
        self.devices: dict[str, Device] = {}
        self.status_by_path: dict[str, int] = {}
        self.deliveries: list[Delivery] = []
        self._lock = threading.Condition()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802 (http.server API)
                endpoint._handle(self)

            def log_message(self, fmt, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.origin = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever,
                                        name="webpush-endpoint", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    # --- devices -------------------------------------------------------------------------
    def new_device(self, encrypted: bool = True) -> Device:
        path = "/push/" + secrets.token_urlsafe(24)
        dev = Device(path=path, url=self.origin + path)
        if encrypted:
            dev.ua_private = ec.generate_private_key(ec.SECP256R1())
            dev.auth = os.urandom(16)
        with self._lock:
            self.devices[path] = dev
        return dev

    def set_status(self, device_or_path, status: int):
        path = device_or_path.path if isinstance(device_or_path, Device) else device_or_path
        with self._lock:
            self.status_by_path[path] = status

    # --- the request handler -------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler):
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        path = h.path
        with self._lock:
            dev = self.devices.get(path)
            status = self.status_by_path.get(path, 201 if dev else 404)
        d = Delivery(path=path, headers=headers, body=body, status=status,
                     received_at=time.time())
        self._inspect(d, dev)
        with self._lock:
            self.deliveries.append(d)
            self._lock.notify_all()
        h.send_response(status)
        if status == 201:
            h.send_header("Location", f"{self.origin}/message/{secrets.token_urlsafe(8)}")
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _inspect(self, d: Delivery, dev: Device | None):
        try:
            d.vapid_claims = verify_vapid(d.headers.get("authorization"), aud=self.origin,
                                          expected_key=self.expected_vapid_key,
                                          expected_sub=self.expected_vapid_sub)
        except VapidError as e:
            d.vapid_error = str(e)
        if dev is None:
            d.decrypt_error = "unknown device path"
            return
        try:
            if dev.encrypted:
                enc = d.headers.get("content-encoding", "")
                if enc.lower() != "aes128gcm":
                    raise DecryptError(f"Content-Encoding is {enc!r}, expected 'aes128gcm'")
                d.plaintext = decrypt_aes128gcm(d.body, dev.ua_private, dev.auth)
            else:
                d.plaintext = d.body
            d.payload = json.loads(d.plaintext.decode("utf-8"))
        except DecryptError as e:
            d.decrypt_error = str(e)
        except (UnicodeDecodeError, ValueError) as e:
            d.decrypt_error = f"plaintext is not UTF-8 JSON: {e}: {d.plaintext[:200]!r}"

    # --- queries -------------------------------------------------------------------------
    def deliveries_for(self, device_or_path) -> list[Delivery]:
        path = device_or_path.path if isinstance(device_or_path, Device) else device_or_path
        with self._lock:
            return [d for d in self.deliveries if d.path == path]

    def count(self) -> int:
        with self._lock:
            return len(self.deliveries)

    def wait_for_body(self, device_or_path, body: str, timeout: float = 15.0,
                      diagnostics=None) -> Delivery:
        """Wait until a push carrying message `body` was accepted (201) for the device: found
        by what it says, because a retried notification may arrive between others."""
        path = device_or_path.path if isinstance(device_or_path, Device) else device_or_path
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for d in self.deliveries:
                    if (d.path == path and d.status == 201 and isinstance(d.payload, dict)
                            and d.payload.get("body") == body):
                        return d
                left = deadline - time.monotonic()
                if left <= 0:
                    got = "\n".join(x.summary() for x in self.deliveries if x.path == path)
                    extra = f"\n{diagnostics()}" if diagnostics else ""
                    raise AssertionError(
                        f"WebPush endpoint: no accepted push saying {body!r} to {path} within "
                        f"{timeout:.0f} s; its requests:\n{got or '(none)'}{extra}")
                self._lock.wait(min(left, 0.2))

    def wait_for(self, device_or_path, count: int = 1, timeout: float = 15.0,
                 diagnostics=None) -> list[Delivery]:
        """Wait until the device has received at least `count` requests; return them all."""
        path = device_or_path.path if isinstance(device_or_path, Device) else device_or_path
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                got = [d for d in self.deliveries if d.path == path]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    others = "\n".join(x.summary() for x in self.deliveries[-10:]) or "(none)"
                    extra = f"\n{diagnostics()}" if diagnostics else ""
                    raise AssertionError(
                        f"WebPush endpoint: {len(got)}/{count} deliveries to {path} within "
                        f"{timeout:.0f} s; last requests seen:\n{others}{extra}")
                self._lock.wait(min(left, 0.2))
