"""Self-tests of the APNs stand-in (apns_server.py) and the test PKI (pki.py); no pushgate.

A failure here means the harness is broken, not pushgate."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, pkcs12

from apns_server import ApnsServer, h2_post, make_jwt, verify_jwt
from pki import CA, make_p12, new_p8, p12_encryption

TOKEN = "ab" * 32


@pytest.fixture(scope="module")
def pki_dir():
    d = tempfile.mkdtemp(prefix="pushgate-e2e-pki-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ca(pki_dir):
    ca = CA()
    ca.path = ca.write(os.path.join(pki_dir, "ca.pem"))
    return ca


@pytest.fixture(scope="module")
def server_cert(ca):
    return ca.issue("localhost", server=True, dns=("localhost",), ips=("127.0.0.1",), days=7)


@pytest.fixture(scope="module")
def p8():
    return new_p8("ABC123DEFG", "TEAM123456")


@pytest.fixture(scope="module")
def token_server(server_cert, p8):
    srv = ApnsServer(server_cert.cert_pem, server_cert.key_pem,
                     token_keys={p8.key_id: (p8.public_key, p8.team_id)},
                     name="apns-selftest-token").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def mtls_server(server_cert, ca):
    srv = ApnsServer(server_cert.cert_pem, server_cert.key_pem, client_ca_pem=ca.cert_pem,
                     require_client_cert=True, name="apns-selftest-mtls").start()
    yield srv
    srv.stop()


def _headers(jwt=None, topic="org.example.app"):
    h = {"apns-topic": topic, "apns-push-type": "alert", "apns-priority": "10",
         "apns-expiration": str(int(time.time()) + 60)}
    if jwt:
        h["authorization"] = f"bearer {jwt}"
    return h


def test_token_auth_request_is_recorded_and_verified(token_server, ca, p8):
    body = json.dumps({"aps": {"alert": {"title": "t", "body": "b"}}}).encode()
    status, headers, data = h2_post(token_server.port, f"/3/device/{TOKEN}",
                                    _headers(make_jwt(p8.key, p8.key_id, p8.team_id)), body,
                                    ca.path)
    assert status == 200, data
    assert headers.get("apns-id"), headers
    r = token_server.wait_for(TOKEN, 1)[-1]
    assert r.method == "POST" and r.token == TOKEN, r.summary()
    assert r.jwt_error is None, r.summary()
    assert r.jwt_claims["iss"] == p8.team_id and r.jwt_header["kid"] == p8.key_id
    assert r.json == {"aps": {"alert": {"title": "t", "body": "b"}}}
    assert r.headers["apns-topic"] == "org.example.app"
    assert r.client_subject is None


@pytest.mark.parametrize("what,jwt_args,reason", [
    ("no token", None, "MissingProviderToken"),
    ("old iat", {"iat_delta": -3700}, "ExpiredProviderToken"),
    ("unknown kid", {"kid": "ZZZ999ZZZZ"}, "InvalidProviderToken"),
    ("wrong team", {"team": "OTHERTEAM1"}, "InvalidProviderToken"),
    ("other key", {"other_key": True}, "InvalidProviderToken"),
])
def test_bad_provider_tokens_are_refused(token_server, ca, p8, what, jwt_args, reason):
    token = os.urandom(32).hex()
    jwt = None
    if jwt_args is not None:
        key = new_p8("X", "Y").key if jwt_args.get("other_key") else p8.key
        jwt = make_jwt(key, jwt_args.get("kid", p8.key_id), jwt_args.get("team", p8.team_id),
                       iat=int(time.time()) + jwt_args.get("iat_delta", 0))
    status, _, data = h2_post(token_server.port, f"/3/device/{token}", _headers(jwt), b"{}",
                              ca.path)
    assert (status, json.loads(data)["reason"]) == (403, reason), what
    r = token_server.wait_for(token, 1)[0]
    assert r.reason == reason, r.summary()
    if jwt is not None:
        assert r.jwt_error and r.jwt_error.startswith(reason), r.summary()


def test_verify_jwt_rejects_a_der_signature(p8):
    good = make_jwt(p8.key, p8.key_id, p8.team_id)
    keys = {p8.key_id: (p8.public_key, p8.team_id)}
    assert verify_jwt(good, keys)[2] is None
    h, c, _ = good.split(".")
    assert verify_jwt(f"{h}.{c}.AAAA", keys)[2].startswith("InvalidProviderToken")


def test_scripted_replies(token_server, ca, p8):
    dead, busy = os.urandom(32).hex(), os.urandom(32).hex()
    token_server.set_reply(dead, 410, "Unregistered")
    token_server.set_reply(busy, 503, "ServiceUnavailable")
    jwt = make_jwt(p8.key, p8.key_id, p8.team_id)
    s, _, d = h2_post(token_server.port, f"/3/device/{dead}", _headers(jwt), b"{}", ca.path)
    doc = json.loads(d)
    assert s == 410 and doc["reason"] == "Unregistered" and isinstance(doc["timestamp"], int)
    s, _, d = h2_post(token_server.port, f"/3/device/{busy}", _headers(jwt), b"{}", ca.path)
    assert (s, json.loads(d)) == (503, {"reason": "ServiceUnavailable"})
    token_server.clear_reply(busy)
    s, _, _ = h2_post(token_server.port, f"/3/device/{busy}", _headers(jwt), b"{}", ca.path)
    assert s == 200
    once = os.urandom(32).hex()
    token_server.set_reply(once, 403, "ExpiredProviderToken", times=1)
    s1, _, _ = h2_post(token_server.port, f"/3/device/{once}", _headers(jwt), b"{}", ca.path)
    s2, _, _ = h2_post(token_server.port, f"/3/device/{once}", _headers(jwt), b"{}", ca.path)
    assert (s1, s2) == (403, 200)
    s, _, d = h2_post(token_server.port, "/3/nope", _headers(jwt), b"{}", ca.path)
    assert (s, json.loads(d)["reason"]) == (404, "BadPath")


def test_mtls_records_client_subject_and_refuses_no_cert(mtls_server, ca, pki_dir):
    client = ca.issue("Apple Push Services: org.example.app", uid="org.example.app")
    cert, key = client.write(pki_dir, "selftest-client")
    token = os.urandom(32).hex()
    s, _, _ = h2_post(mtls_server.port, f"/3/device/{token}", _headers(), b"{}", ca.path,
                      client_cert=(cert, key))
    assert s == 200
    r = mtls_server.wait_for(token, 1)[0]
    assert r.client_subject == client.subject, r.summary()
    assert "CN=Apple Push Services: org.example.app" in r.client_subject
    before = len(mtls_server.handshake_errors)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        h2_post(mtls_server.port, f"/3/device/{token}", _headers(), b"{}", ca.path)
    deadline = time.monotonic() + 5
    while len(mtls_server.handshake_errors) == before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(mtls_server.handshake_errors) > before, "handshake without a client cert"


def test_pinned_client_certificate(server_cert, ca, pki_dir):
    pinned = ca.issue("pinned client")
    other = ca.issue("other client")
    srv = ApnsServer(server_cert.cert_pem, server_cert.key_pem, client_ca_pem=ca.cert_pem,
                     require_client_cert=True, name="apns-selftest-pinned",
                     pinned_client_certs=[pinned.cert.public_bytes(Encoding.DER)]).start()
    try:
        token = os.urandom(32).hex()
        s, _, _ = h2_post(srv.port, f"/3/device/{token}", _headers(), b"{}", ca.path,
                          client_cert=pinned.write(pki_dir, "pinned"))
        assert s == 200
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            h2_post(srv.port, f"/3/device/{token}", _headers(), b"{}", ca.path,
                    client_cert=other.write(pki_dir, "other"))
        assert len(srv.requests_for(token)) == 1
        assert any("not pinned" in e for e in srv.handshake_errors), srv.handshake_errors
    finally:
        srv.stop()


def test_wrong_method_is_405(token_server, ca, p8):
    jwt = make_jwt(p8.key, p8.key_id, p8.team_id)
    s, _, d = h2_post(token_server.port, f"/3/device/{TOKEN}", _headers(jwt), b"", ca.path,
                      method="GET")
    assert (s, json.loads(d)["reason"]) == (405, "MethodNotAllowed")


def test_curl_http2_if_present(token_server, ca, p8):
    if not shutil.which("curl"):
        pytest.skip("no curl")
    ver = subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
    if "HTTP2" not in ver:
        pytest.skip("curl without HTTP/2")
    token = os.urandom(32).hex()
    jwt = make_jwt(p8.key, p8.key_id, p8.team_id)
    r = subprocess.run(
        ["curl", "-sS", "--http2", "--cacert", ca.path, "-o", "/dev/null", "-w",
         "%{http_code} %{http_version}", "-H", "apns-topic: org.example.app",
         "-H", f"authorization: bearer {jwt}", "--data-binary", '{"aps":{}}',
         f"{token_server.base_url}/3/device/{token}"],
        capture_output=True, text=True, timeout=20)
    assert r.stdout == "200 2", (r.stdout, r.stderr)
    assert token_server.wait_for(token, 1)[0].json == {"aps": {}}


def test_p12_files_modern_and_legacy(ca, pki_dir):
    issued = ca.issue("p12 selftest")
    modern = make_p12(issued, pki_dir, "selftest-modern", "pw")
    legacy = make_p12(issued, pki_dir, "selftest-legacy", "pw", legacy=True)
    assert "AES-256" in p12_encryption(os.path.join(pki_dir, "selftest-modern.p12"), "pw")
    assert "RC2" in p12_encryption(os.path.join(pki_dir, "selftest-legacy.p12"), "pw",
                                   legacy=True)
    for blob in (modern, legacy):
        key, cert, _ = pkcs12.load_key_and_certificates(blob, b"pw")
        assert cert.subject == issued.cert.subject


def test_expiring_certificate_dates(ca):
    now = dt.datetime.now(dt.timezone.utc)
    c = ca.issue("soon", days=10)
    assert dt.timedelta(days=9) < c.not_after - now < dt.timedelta(days=11)
    expired = ca.issue("old", not_before=now - dt.timedelta(days=30),
                       not_after=now - dt.timedelta(days=1))
    assert expired.not_after < now
