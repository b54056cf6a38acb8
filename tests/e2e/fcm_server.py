"""A local FCM HTTP v1 endpoint plus its OAuth 2.0 token endpoint, for the end-to-end tests.

HTTP/2 over TLS (ALPN h2) on 127.0.0.1 and a random port: the connection handling is
`apns_server.ApnsServer`'s (one thread per connection, the `h2` state machine); only the
answering differs. Both endpoints are on the same server:

    POST /token                                   JWT-bearer grant (RFC 7523) → access token
    POST /v1/projects/<project>/messages:send     one FCM message

    srv = FcmServer(server_cert_pem, server_key_pem,
                    accounts={client_email: (rsa_public_key, private_key_id)},
                    project_id="pushgate-e2e").start()
    srv.token_uri                                 # https://localhost:<port>/token
    srv.set_reply(device_token, 404, unregistered_error())   # default 200 {"name": …}
    srv.wait_for(device_token, 1)                 # -> [FcmRequest] (sends to that token)
    srv.token_requests()                          # -> [FcmRequest] (the /token ones)

The token endpoint checks the assertion like Google does: grant_type
`urn:ietf:params:oauth:grant-type:jwt-bearer`, RS256 signature with the service account's public
key, `iss` = client_email, `scope` = firebase.messaging, `aud` = the token URI, `iat` not in the
future, `exp` after now and at most `iat` + 3600; a refused one gets 400 `invalid_grant`. A send
needs `Authorization: Bearer <a token issued here>` (else 401 UNAUTHENTICATED), the configured
project (else 404), a JSON body with `message.token` (else 400 INVALID_ARGUMENT).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from apns_server import ApnsServer, signing_input, split_jwt
from pki import CA, key_pem

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
ASSERTION_MAX_LIFETIME = 3600
CLOCK_SLACK = 60
ACCESS_TOKEN_LIFETIME = 3599
SEND_RE = re.compile(r"^/v1/projects/([^/]+)/messages:send$")


def fcm_error(code: int, status: str, error_code: str | None = None,
              message: str = "") -> dict:
    """An FCM v1 error body (google.rpc.Status with an FcmError detail)."""
    err: dict = {"code": code, "message": message or status, "status": status}
    if error_code:
        err["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                           "errorCode": error_code}]
    return {"error": err}


def unregistered_error() -> dict:
    return fcm_error(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.")


def verify_assertion(assertion: str, accounts: dict[str, tuple[object, str]], token_uri: str,
                     now: float | None = None):
    """Check a JWT-bearer assertion. accounts: {client_email: (RSA public key, key id)}.
    Returns (header, claims, error); error is None when it verifies."""
    now = time.time() if now is None else now
    header, claims, sig, error = split_jwt(assertion, "RS256")
    if error:
        return header, claims, error
    iss = claims.get("iss")
    if iss not in accounts:
        return header, claims, f"iss {iss!r} is no known client_email ({sorted(accounts)})"
    pub, key_id = accounts[iss]
    if "kid" in header and header["kid"] != key_id:
        return header, claims, f"kid {header['kid']!r}, the account's key is {key_id!r}"
    try:
        pub.verify(sig, signing_input(assertion), padding.PKCS1v15(),
                   hashes.SHA256())
    except InvalidSignature:
        return header, claims, "bad signature"
    if claims.get("scope") != SCOPE:
        return header, claims, f"scope {claims.get('scope')!r}, not {SCOPE!r}"
    if claims.get("aud") != token_uri:
        return header, claims, f"aud {claims.get('aud')!r}, not {token_uri!r}"
    iat, exp = claims.get("iat"), claims.get("exp")
    for name, v in (("iat", iat), ("exp", exp)):
        if not isinstance(v, int) or isinstance(v, bool):
            return header, claims, f"{name} {v!r} is not an integer"
    if iat > now + CLOCK_SLACK:
        return header, claims, f"iat {iat} is in the future (now {now:.0f})"
    if exp <= now - CLOCK_SLACK:
        return header, claims, f"exp {exp} has passed (now {now:.0f})"
    if exp <= iat:
        return header, claims, f"exp {exp} is not after iat {iat}"
    if exp > iat + ASSERTION_MAX_LIFETIME:
        return header, claims, f"exp {exp} is more than {ASSERTION_MAX_LIFETIME} s after iat {iat}"
    return header, claims, None


@dataclass
class FcmRequest:
    conn_id: int
    method: str
    path: str
    kind: str                       # "token", "send" or "other"
    headers: dict[str, str]
    body: bytes
    token: str | None = None        # the device token (message.token) of a send
    project: str | None = None
    json: object = None
    json_error: str | None = None
    form: dict | None = None        # a token request's form fields
    jwt_header: dict | None = None
    jwt_claims: dict | None = None
    jwt_error: str | None = None    # a token request's assertion: None = verified
    auth_error: str | None = None   # a send's bearer token: None = one this server issued
    issued: str | None = None       # the access token a token request got
    status: int = 0
    answer: object = None
    at: float = field(default_factory=time.time)

    @property
    def message(self) -> dict:
        m = self.json.get("message") if isinstance(self.json, dict) else None
        return m if isinstance(m, dict) else {}

    def summary(self) -> str:
        return (f"FCM {self.kind} #{self.conn_id} {self.method} {self.path} -> {self.status} "
                f"{json.dumps(self.answer)[:200] if self.answer is not None else ''}; "
                f"auth_error={self.auth_error} jwt={self.jwt_claims} "
                f"jwt_error={self.jwt_error}; body {self.body[:600]!r}")


class FcmServer(ApnsServer):
    def __init__(self, server_cert_pem: bytes, server_key_pem: bytes,
                 accounts: dict[str, tuple[object, str]], project_id: str,
                 name: str = "fcm"):
        super().__init__(server_cert_pem, server_key_pem, name=name)
        self.accounts = dict(accounts)
        self.project_id = project_id
        self.issued: set[str] = set()
        self.fcm_replies: dict[str, tuple[int, dict]] = {}
        self._names = itertools.count(1)

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def set_reply(self, token: str, status: int, body: dict | None = None):  # type: ignore[override]
        """Answer sends to device `token` with this status and JSON body."""
        with self._cond:
            self.fcm_replies[token] = (status, dict(body or {}))

    def clear_reply(self, token: str):
        with self._cond:
            self.fcm_replies.pop(token, None)

    def token_requests(self) -> list[FcmRequest]:
        with self._cond:
            return [r for r in self.requests if r.kind == "token"]

    def sends(self) -> list[FcmRequest]:
        with self._cond:
            return [r for r in self.requests if r.kind == "send"]

    # --- answering (called by ApnsServer._serve for every complete stream) -----------------
    def _answer(self, h2c, stream_id: int, st: dict, conn_id: int, client_subject):
        hl = [(k.decode("utf-8", "replace") if isinstance(k, bytes) else k,
               v.decode("utf-8", "replace") if isinstance(v, bytes) else v)
              for k, v in st["headers"]]
        pseudo = {k: v for k, v in hl if k.startswith(":")}
        headers = {k.lower(): v for k, v in hl if not k.startswith(":")}
        method, path = pseudo.get(":method", ""), pseudo.get(":path", "")
        body = bytes(st["body"])
        path_only = path.split("?", 1)[0]
        m = SEND_RE.match(path_only)
        kind = "token" if path_only == "/token" else "send" if m else "other"
        req = FcmRequest(conn_id=conn_id, method=method, path=path, kind=kind,
                         headers=headers, body=body)
        if kind == "token":
            status, answer = self._token(req)
        elif kind == "send":
            req.project = m.group(1)
            status, answer = self._send(req)
        else:
            status, answer = 404, fcm_error(404, "NOT_FOUND", message=f"no such path {path}")
        if method != "POST" and kind != "other":
            status, answer = 405, fcm_error(405, "METHOD_NOT_ALLOWED")
        req.status, req.answer = status, answer
        payload = json.dumps(answer).encode()
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()
        h2c.send_headers(stream_id, [(":status", str(status)),
                                     ("content-type", "application/json; charset=UTF-8"),
                                     ("content-length", str(len(payload)))])
        h2c.send_data(stream_id, payload, end_stream=True)

    def _token(self, req: FcmRequest) -> tuple[int, dict]:
        try:
            form = urllib.parse.parse_qs(req.body.decode("ascii"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as e:
            req.jwt_error = f"body is not a form: {e}"
            return 400, {"error": "invalid_request", "error_description": req.jwt_error}
        req.form = {k: v[-1] for k, v in form.items()}
        if req.form.get("grant_type") != GRANT_TYPE:
            req.jwt_error = f"grant_type {req.form.get('grant_type')!r}"
            return 400, {"error": "unsupported_grant_type", "error_description": req.jwt_error}
        assertion = req.form.get("assertion")
        if not assertion:
            req.jwt_error = "no assertion"
            return 400, {"error": "invalid_request", "error_description": req.jwt_error}
        with self._cond:
            accounts = dict(self.accounts)
        req.jwt_header, req.jwt_claims, req.jwt_error = verify_assertion(
            assertion, accounts, self.token_uri)
        if req.jwt_error is not None:
            return 400, {"error": "invalid_grant", "error_description": req.jwt_error}
        access = "ya29.e2e-" + secrets.token_urlsafe(48)
        with self._cond:
            self.issued.add(access)
        req.issued = access
        return 200, {"access_token": access, "expires_in": ACCESS_TOKEN_LIFETIME,
                     "token_type": "Bearer"}

    def _send(self, req: FcmRequest) -> tuple[int, dict]:
        auth = req.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        with self._cond:
            known = bearer in self.issued
        if bearer is None:
            req.auth_error = f"no bearer token (authorization {auth[:20]!r})"
        elif not known:
            req.auth_error = "bearer token not issued by this server"
        if body_ok := bool(req.body):
            try:
                req.json = json.loads(req.body)
            except ValueError as e:
                req.json_error = str(e)
                body_ok = False
        tok = req.message.get("token")
        req.token = tok if isinstance(tok, str) else None
        if req.auth_error is not None:
            return 401, fcm_error(401, "UNAUTHENTICATED", message=req.auth_error)
        if req.project != self.project_id:
            return 404, fcm_error(404, "NOT_FOUND",
                                  message=f"unknown project {req.project!r}")
        if not body_ok or not req.token:
            return 400, fcm_error(400, "INVALID_ARGUMENT", "INVALID_ARGUMENT",
                                  message=f"no message.token ({req.json_error})")
        with self._cond:
            reply = self.fcm_replies.get(req.token)
        if reply is not None:
            return reply
        return 200, {"name": f"projects/{req.project}/messages/{next(self._names)}"}


# --- a test PKI and service account ------------------------------------------------------------
PROJECT_ID = "pushgate-e2e"
CLIENT_EMAIL = "pushgate-e2e@pushgate-e2e.iam.gserviceaccount.com"
PRIVATE_KEY_ID = "e2e" + secrets.token_hex(8)


class FcmPki:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pushgate-e2e-fcm-")
        self.ca = CA("pushgate e2e FCM test CA")
        self.ca_file = self.ca.write(os.path.join(self.dir, "ca.pem"))
        self.server = self.ca.issue("localhost", server=True, dns=("localhost",),
                                    ips=("127.0.0.1",), days=7)
        self.sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_file = os.path.join(self.dir, "sa.json")

    def write_service_account(self, token_uri: str) -> str:
        doc = {
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": PRIVATE_KEY_ID,
            "private_key": key_pem(self.sa_key).decode("ascii"),
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "token_uri": token_uri,
        }
        with open(self.sa_file, "w") as f:
            json.dump(doc, f, indent=2)
        return self.sa_file

    def cleanup(self):
        if not os.environ.get("PUSHGATE_E2E_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
