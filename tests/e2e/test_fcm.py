"""FCM end to end: pushgate's `kind = "fcm"` provider against a local FCM HTTP v1 + OAuth token
endpoint (fcm_server.py), through a real Prosody, with slixmpp clients.

Own stack (module scope): one Prosody (users alice … judy, `push_max_errors = 1`) and one
pushgate with the session config's WebPush providers plus `[providers.fcm]` (service account
written here, RSA key made with `cryptography`, `token_uri` = the stand-in's `/token`), so the
p2 command is `register-push-fcm`, as Conversations uses.

Scenarios: (a) Conversations-style p2 registration → one content-free data message (account
hash, high priority, collapse key, TTL), verified OAuth assertion, one access token for several
sends; (b) a per-room registration of the same device: own node, removable with
`unregister-push-fcm` + `channel`; (c) Tigase-style `register-device` with provider `fcm` →
account, sender, body, unread-messages; (d) 404 UNREGISTERED → `dead_token`, Prosody disables,
the registration is gone.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from clients import expect_error, submit_form
from conftest import _LIVE, DOMAIN, PUSH_JID, diagnostics, running_stack
from fcm_server import (CLIENT_EMAIL, GRANT_TYPE, PRIVATE_KEY_ID, PROJECT_ID, SCOPE, FcmPki,
                        FcmRequest, FcmServer, unregistered_error)
from prosody import DISABLED_LINE, ERROR_LINE
from pushgate_proc import toml_str

PROVIDER = "fcm"
ROOM = "room@conference.localhost"
CONTENT_KEYS = {"sender", "body", "nickname", "encrypted", "iv"}
QUIET = 1.0  # how long we watch for an unexpected extra send


def new_token() -> str:
    """An FCM registration token of the size Firebase hands out."""
    return secrets.token_urlsafe(113)[:150]


def new_device_id() -> str:
    return secrets.token_hex(8)


def p2_hash(account: str, device_id: str) -> str:
    return hashlib.sha1(account.encode() + b"\0" + device_id.encode()).hexdigest()


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki():
    p = FcmPki()
    yield p
    p.cleanup()


@pytest.fixture(scope="module")
def fcm(pki):
    srv = FcmServer(pki.server.cert_pem, pki.server.key_pem,
                    accounts={CLIENT_EMAIL: (pki.sa_key.public_key(), PRIVATE_KEY_ID)},
                    project_id=PROJECT_ID, name="fcm-mock")
    srv.start()
    _LIVE.append(srv)
    yield srv
    srv.stop()
    if srv in _LIVE:
        _LIVE.remove(srv)


@pytest.fixture(scope="module")
def fcm_stack(pki, fcm):
    sa = pki.write_service_account(fcm.token_uri)
    toml = "\n".join([
        f"[providers.{PROVIDER}]",
        'kind = "fcm"',
        f"service_account_file = {toml_str(sa)}",
        f"base_url = {toml_str(fcm.base_url)}",
        f"ca_file = {toml_str(pki.ca_file)}",
    ]) + "\n"
    with running_stack("fcm", pushgate_toml=toml) as (s, _):
        yield s


@pytest.fixture(scope="module")
def pg(fcm_stack):
    return fcm_stack.pushgate


@pytest.fixture(scope="module")
def server(fcm_stack):
    """This module's Prosody in place of the session's server: `connect` uses it."""
    return fcm_stack.server


@pytest.fixture(scope="module")
def bob(fcm_stack, connect_factory):
    return connect_factory(fcm_stack.server, "bob")


@pytest.fixture
def user(connect):
    """user(name) -> a client on the FCM Prosody (this module's `server`, which `connect` uses), disconnected
    after the test."""
    return connect


# --- helpers ---------------------------------------------------------------------------------
def register_p2(client, token: str, device_id: str, muc: str | None = None,
                id_field: str = "android-id") -> tuple[str, str, str]:
    """register-push-fcm as Conversations sends it; returns (jid, node, secret)."""
    fields = {"token": token, id_field: device_id}
    if muc:
        fields["muc"] = muc
    r = client.command(PUSH_JID, f"register-push-{PROVIDER}", form=submit_form(fields))
    assert r.status == "completed", r.xml
    assert r.form is not None, f"completed register-push-{PROVIDER} without a form: {r.xml}"
    jid, node, secret = r.form.value("jid"), r.form.value("node"), r.form.value("secret")
    assert jid == PUSH_JID, f"jid {jid!r}, expected {PUSH_JID}: {r.xml}"
    assert node and secret, f"register-push-{PROVIDER} returned no node/secret: {r.xml}"
    return jid, node, secret


def unregister_p2(client, device_id: str, channel: str | None = None):
    fields = {"device-id": device_id}
    if channel:
        fields["channel"] = channel
    return client.command(PUSH_JID, f"unregister-push-{PROVIDER}", form=submit_form(fields))


def wait_sends(fcm: FcmServer, token: str, count: int) -> list[FcmRequest]:
    return fcm.wait_for(token, count, diagnostics=diagnostics)


def exactly(fcm: FcmServer, token: str, count: int) -> list[FcmRequest]:
    wait_sends(fcm, token, count)
    time.sleep(QUIET)
    got = fcm.requests_for(token)
    assert len(got) == count, \
        f"expected exactly {count} send(s) for the token, got {[r.summary() for r in got]}"
    return got


def check_send(r: FcmRequest, token: str):
    where = r.summary()
    assert r.method == "POST", where
    assert r.path == f"/v1/projects/{PROJECT_ID}/messages:send", where
    assert r.auth_error is None, f"bearer token: {r.auth_error}; {where}"
    assert r.json_error is None, f"body is not JSON ({r.json_error}): {where}"
    assert r.headers.get("content-type", "").startswith("application/json"), where
    m = r.message
    assert m.get("token") == token, where
    assert "notification" not in m, f"a notification block (shown by the OS): {where}"
    android = m.get("android")
    assert isinstance(android, dict), f"no android block: {where}"
    assert android.get("priority") == "high", f"android.priority: {where}"
    ttl = android.get("ttl")
    assert isinstance(ttl, str) and re.fullmatch(r"\d+(\.\d+)?s", ttl), \
        f"android.ttl {ttl!r} is not a duration in seconds: {where}"
    data = m.get("data")
    assert isinstance(data, dict), f"no data block: {where}"
    assert all(isinstance(v, str) for v in data.values()), f"data values must be strings: {where}"
    return m


def go_offline_p2(user, name: str, token: str, device_id: str) -> str:
    c = user(name)
    jid, node, secret = register_p2(c, token, device_id)
    c.enable_push(jid, node, secret=secret)
    c.disconnect()
    return node


# --- (a) Conversations-style p2 --------------------------------------------------------------
def test_a_conversations_style_p2(pg, fcm, user, bob):
    account = f"alice@{DOMAIN}"
    token, device_id = new_token(), new_device_id()
    tokens_before = len(fcm.token_requests())
    go_offline_p2(user, "alice", token, device_id)
    h = p2_hash(account, device_id)

    since = pg.log.offset()
    text = f"secret words {secrets.token_hex(4)}"
    bob.send_message(account, text)
    assert pg.wait_outcomes(since) == ["delivered"]
    r = exactly(fcm, token, 1)[0]
    assert r.status == 200, r.summary()
    m = check_send(r, token)
    assert m["data"] == {"account": h}, \
        f"data should be only the account hash {h}: {r.summary()}"
    assert not CONTENT_KEYS & set(m["data"]), r.summary()
    assert text not in r.body.decode("utf-8", "replace"), f"the body leaked: {r.summary()}"
    assert bob.bare not in r.body.decode("utf-8", "replace"), f"the sender leaked: {r.summary()}"
    assert m["android"].get("collapse_key") == h[:6], f"collapse_key: {r.summary()}"

    # the access token came from a verified assertion
    toks = fcm.token_requests()[tokens_before:]
    assert toks, "no token request reached the token endpoint"
    for t in toks:
        assert t.status == 200 and t.jwt_error is None, t.summary()
        assert t.form.get("grant_type") == GRANT_TYPE, t.summary()
        c = t.jwt_claims
        assert t.jwt_header.get("alg") == "RS256", t.summary()
        assert c.get("iss") == CLIENT_EMAIL and c.get("scope") == SCOPE, t.summary()
        assert c.get("aud") == fcm.token_uri, t.summary()
        assert c["iat"] < c["exp"] <= c["iat"] + 3600, t.summary()
    issued = {t.issued for t in fcm.token_requests()}
    assert r.headers["authorization"][7:].strip() in issued, r.summary()

    # more sends reuse the same access token: still one token request in all
    for i in range(2):
        since = pg.log.offset()
        bob.send_message(account, f"again {i}")
        assert pg.wait_outcomes(since) == ["delivered"]
    got = exactly(fcm, token, 3)
    for g in got:
        check_send(g, token)
        assert g.message["data"] == {"account": h}, g.summary()
    assert len({g.headers["authorization"] for g in got}) == 1, \
        f"the access token changed between sends: {[g.summary() for g in got]}"
    assert len(fcm.token_requests()) == 1, \
        f"one token should serve several sends: {[t.summary() for t in fcm.token_requests()]}"


# --- (b) per-room registration ---------------------------------------------------------------
def test_b_per_room_registration(pg, fcm, user, bob):
    account = f"carol@{DOMAIN}"
    token, device_id = new_token(), new_device_id()
    carol = user("carol")
    jid, node, secret = register_p2(carol, token, device_id)
    rjid, room_node, room_secret = register_p2(carol, token, device_id, muc=ROOM)
    assert rjid == PUSH_JID
    assert room_node != node, f"the room registration got the account's node {node}"
    # re-registering the account keeps its node (Conversations re-registers on every start)
    assert register_p2(carol, token, device_id)[1] == node
    carol.enable_push(jid, node, secret=secret)
    carol.disconnect()

    # only the account registration is published to
    since = pg.log.offset()
    bob.send_message(account, "for carol")
    assert pg.wait_outcomes(since) == ["delivered"]
    r = exactly(fcm, token, 1)[0]
    m = check_send(r, token)
    assert m["data"] == {"account": p2_hash(account, device_id)}, r.summary()

    # the room registration exists: removable once, then gone
    carol = user("carol")
    r1 = unregister_p2(carol, device_id, channel=ROOM)
    assert r1.status == "completed", f"room registration missing: {r1.xml}"
    err = expect_error(unregister_p2, carol, device_id, channel=ROOM)
    assert err.condition == "item-not-found", err
    # ... and removing it left the account registration alone
    r2 = unregister_p2(carol, device_id)
    assert r2.status == "completed", f"account registration gone with the room's: {r2.xml}"


# --- (c) Tigase-style ------------------------------------------------------------------------
def test_c_tigase_register_device(pg, fcm, user, bob):
    account = f"dave@{DOMAIN}"
    token = new_token()
    dave = user("dave")
    r = dave.command(PUSH_JID, "register-device",
                     form=submit_form({"provider": PROVIDER, "device-token": token}))
    assert r.status == "completed", r.xml
    node = r.form.value("node") if r.form else None
    assert node, f"register-device returned no node: {r.xml}"
    dave.enable_push(PUSH_JID, node)
    dave.disconnect()

    since = pg.log.offset()
    text = f"hello dave {secrets.token_hex(3)}"
    bob.send_message(account, text)
    assert pg.wait_outcomes(since) == ["delivered"]
    r = exactly(fcm, token, 1)[0]
    assert r.status == 200, r.summary()
    m = check_send(r, token)
    d = m["data"]
    assert d.get("account") == account, r.summary()
    assert d.get("sender") == bob.full_jid, r.summary()
    assert d.get("body") == text, r.summary()
    assert d.get("unread-messages") == "1", r.summary()


# --- (d) dead token --------------------------------------------------------------------------
def test_d_unregistered_is_a_dead_token(pg, server, fcm, user, bob):
    account = f"erin@{DOMAIN}"
    token, device_id = new_token(), new_device_id()
    fcm.set_reply(token, 404, unregistered_error())
    node = go_offline_p2(user, "erin", token, device_id)
    since, since_p = pg.log.offset(), server.log.offset()
    bob.send_message(account, "into the void")
    r = wait_sends(fcm, token, 1)[0]
    assert r.status == 404 and r.auth_error is None, r.summary()
    assert pg.wait_outcomes(since) == ["dead_token"]
    server.log.wait_for(re.escape(ERROR_LINE.format(type="cancel", condition="item-not-found")),
                         since=since_p)
    server.log.wait_for(re.escape(DISABLED_LINE.format(jid=PUSH_JID, node=node)),
                         since=since_p)
    erin = user("erin")
    err = expect_error(unregister_p2, erin, device_id)
    assert err.condition == "item-not-found", err
    erin.disconnect()
    # Prosody no longer publishes for erin: a second offline message reaches no one
    since = pg.log.offset()
    bob.send_message(account, "still there?")
    time.sleep(2)
    assert pg.outcomes(since) == [], pg.outcomes(since)
    assert len(fcm.requests_for(token)) == 1, [x.summary() for x in fcm.requests_for(token)]


# --- the stand-in's own checks (no pushgate) -------------------------------------------------
def _assertion(key, claims: dict, alg: str = "RS256", kid: str = PRIVATE_KEY_ID) -> str:
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    def enc(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")
    head = enc(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
    body = enc(json.dumps(claims).encode())
    sig = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{enc(sig)}"


def test_stand_in_refuses_bad_assertions(pki):
    from fcm_server import verify_assertion
    uri = "https://localhost:1/token"
    accounts = {CLIENT_EMAIL: (pki.sa_key.public_key(), PRIVATE_KEY_ID)}
    now = int(time.time())
    good = {"iss": CLIENT_EMAIL, "scope": SCOPE, "aud": uri, "iat": now, "exp": now + 3600}
    assert verify_assertion(_assertion(pki.sa_key, good), accounts, uri)[2] is None
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = {
        "signature": _assertion(other_key, good),
        "kid": _assertion(pki.sa_key, good, kid="other"),
        "iss": _assertion(pki.sa_key, {**good, "iss": "x@y"}),
        "scope": _assertion(pki.sa_key, {**good, "scope": "https://x/cloud-platform"}),
        "aud": _assertion(pki.sa_key, {**good, "aud": "https://oauth2.googleapis.com/token"}),
        "lifetime": _assertion(pki.sa_key, {**good, "exp": now + 3601}),
        "expired": _assertion(pki.sa_key, {**good, "iat": now - 7300, "exp": now - 3700}),
        "future": _assertion(pki.sa_key, {**good, "iat": now + 600, "exp": now + 1200}),
    }
    for what, a in bad.items():
        err = verify_assertion(a, accounts, uri)[2]
        assert err is not None, f"{what}: accepted"
