"""UnifiedPush over XMPP end to end, on both servers: a slixmpp client is the distributor (the
phone's XMPP client), the test is the app server POSTing to the endpoint over HTTP, and the
server routes pushgate's push IQs and messages to the distributor's full JID.

Own stack per server (pushgate with `[http]` and `[unifiedpush]`, `answer_timeout_secs = 2`),
so the session stack's config stays as it is. What is checked: disco advertises both dialects;
Conversations' dialect carries a binary body byte-exact and the distributor's `result` becomes
201 + `TTL: 0`; `item-not-found` / `feature-not-implemented` revoke the endpoint (404 then and
at once after); another error or no answer within the timeout is 503 + `Retry-After`; genofire's
dialect gets `<message>` with the public token as subject; an offline distributor's push is
answered by the XMPP server itself (`service-unavailable` on the user's behalf, both Prosody and
ejabberd), so the app server gets 503 at once rather than after the timeout; the same instance
registered again from a new resource keeps its endpoint and its pushes follow the resource.

Also: an RFC 8291 ciphertext made for a key pair the test holds arrives byte for byte and
decrypts; a kept push past its `TTL` is dropped and counted on `/metrics`; `<unregister/>` in
either dialect ends the endpoint; forged, tampered and mangled tokens are 404 with nothing sent;
and the chain that shows why it matters: Synapse → pushgate's Matrix front → pushgate's own
UnifiedPush endpoint → the XMPP distributor.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import time
import urllib.error
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from clients import NS_UP_CONVERSATIONS, NS_UP_GENOFIRE, Distributor, expect_error
from conftest import DOMAIN, PASSWORD, PUSH_JID, close_all, running_stack
from procs import free_port
from pushgate_proc import unifiedpush_toml
from synapse_proc import NOTIFY_PATH
from webpush_endpoint import decrypt_aes128gcm, encrypt_aes128gcm, public_bytes

USERS = ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "hank", "ivan", "judy",
         "kate")
# A Matrix app whose pushkeys are UnifiedPush endpoints, delivered by the base config's WebPush
# provider `up` (allow_http and allow_private_addresses: the endpoint is our own loopback
# listener).
MATRIX_APP = "org.example.up"
EXPIRED = "pushgate_unifiedpush_expired_total"
ANSWER_TIMEOUT = 2  # answer_timeout_secs in this module's pushgate
RETRY_AFTER = "30"  # what pushgate asks an app server to wait after a 503
# An answer "at once": far below the answer timeout, so it was not the timeout that ended it.
PROMPT = 1.0


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float


def post(url: str, body: bytes, content_type: str = "application/octet-stream",
         encoding: str | None = "aes128gcm", ttl: int = 0) -> Answer:
    """An app server's push: POST `body` to the endpoint, as RFC 8030 has it (TTL: 0, now or
    never, unless `ttl` says otherwise; the content coding of an RFC 8291 message)."""
    headers = {"content-type": content_type, "ttl": str(ttl)}
    if encoding:
        headers["content-encoding"] = encoding
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=ANSWER_TIMEOUT + 8) as r:
            status, hdrs, data = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, hdrs, data = e.code, e.headers, e.read()
    return Answer(status, {k.lower(): v for k, v in hdrs.items()}, data,
                  time.monotonic() - start)


def assert_accepted(a: Answer, endpoint: str, ttl: str = "0"):
    """201 with `TTL` (0: delivered; else how long it is kept) and a Location under the
    endpoint's path."""
    assert a.status == 201, f"expected 201, got {a.status} {a.body!r}"
    assert a.headers.get("ttl") == ttl, f"TTL header: {a.headers}"
    path = "/up/" + endpoint.rsplit("/up/", 1)[1] + "/"
    assert a.headers.get("location", "").startswith(path), f"Location header: {a.headers}"


def assert_retry_later(a: Answer):
    assert a.status == 503, f"expected 503, got {a.status} {a.body!r}"
    assert a.headers.get("retry-after") == RETRY_AFTER, f"Retry-After header: {a.headers}"


def instance_names() -> tuple[str, str]:
    """(application, instance) as Conversations makes them: base64 of salted SHA-256s."""
    return (base64.b64encode(secrets.token_bytes(32)).decode(),
            base64.b64encode(secrets.token_bytes(32)).decode())


@pytest.fixture(scope="module")
def up(server_kind):
    """This module's stack on `server_kind`: `http_base` is pushgate's listener (also the
    endpoint base URL)."""
    port = free_port()
    toml = (unifiedpush_toml(port, answer_timeout_secs=ANSWER_TIMEOUT)
            + f'[matrix.apps."{MATRIX_APP}"]\nprovider = "up"\n')
    with running_stack(f"unifiedpush-{server_kind}", users=USERS, pushgate_toml=toml,
                       kind=server_kind) as (s, _):
        s.http_base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                with urllib.request.urlopen(f"{s.http_base}/up", timeout=2) as r:
                    assert json.loads(r.read()) == {"unifiedpush": {"version": 1}}
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"pushgate's HTTP listener at {s.http_base} did not "
                                         f"answer GET /up within 10 s") from None
                time.sleep(0.05)
        yield s


@pytest.fixture
def distributor(up, runner):
    """distributor(user) -> a logged-in Distributor (new random resource each time) on this
    module's server; disconnected after the test."""
    mine: list[Distributor] = []

    def _connect(user: str) -> Distributor:
        d = Distributor(runner, f"{user}@{DOMAIN}", PASSWORD, up.server.c2s_port).connect()
        mine.append(d)
        return d

    yield _connect
    close_all(mine)


def test_conversations_binary_push_is_acknowledged(up, distributor):
    alice = distributor("alice")
    _, features = alice.disco_info(PUSH_JID)
    for ns in (NS_UP_CONVERSATIONS, NS_UP_GENOFIRE):
        assert ns in features, f"disco#info feature {ns!r} missing: {features}"

    application, instance = instance_names()
    endpoint, expiration = alice.register_conversations(PUSH_JID, application, instance)
    assert endpoint.startswith(f"{up.http_base}/up/"), endpoint
    expires = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    left = expires - datetime.now(timezone.utc)
    assert timedelta(days=29) < left <= timedelta(days=30), f"expiration {expiration}"
    with urllib.request.urlopen(endpoint, timeout=5) as r:
        assert json.loads(r.read()) == {"unifiedpush": {"version": 1}}

    body = secrets.token_bytes(100)  # as an RFC 8291 ciphertext would be: binary
    a = post(endpoint, body)
    assert_accepted(a, endpoint)
    pushes = alice.wait_pushes(1)
    assert len(pushes) == 1, pushes
    p = pushes[0]
    assert p.data == body, f"the push carried other bytes: {p}"
    assert (p.application, p.instance) == (application, instance), p
    assert p.sender == PUSH_JID, p
    assert p.to == alice.full_jid, p


def test_item_not_found_revokes_the_endpoint(up, distributor):
    bob = distributor("bob")
    endpoint, _ = bob.register_conversations(PUSH_JID, *instance_names())
    assert_accepted(post(endpoint, b"first"), endpoint)

    bob.answer = "item-not-found"   # the app is gone from the phone
    a = post(endpoint, b"second")
    assert a.status == 404, f"expected 404 after item-not-found, got {a.status} {a.body!r}"
    assert [p.answered for p in bob.wait_pushes(2)] == ["result", "item-not-found"]

    bob.answer = None
    for n in (3, 4):
        a = post(endpoint, f"push {n}".encode())
        assert a.status == 404, f"push {n} to a revoked endpoint: {a.status} {a.body!r}"
        assert a.elapsed < PROMPT, f"push {n}: 404 took {a.elapsed:.2f} s, not at once"

    # feature-not-implemented revokes as well; its pushes also pass the ones above on the same
    # route, so any push IQ for the revoked endpoint would have arrived before them.
    other, _ = bob.register_conversations(PUSH_JID, *instance_names())
    assert other != endpoint
    assert_accepted(post(other, b"other first"), other)
    bob.answer = "feature-not-implemented"
    a = post(other, b"other second")
    assert a.status == 404, f"expected 404 after feature-not-implemented, got {a.status}"
    assert post(other, b"other third").status == 404
    pushes = bob.wait_pushes(4)
    assert [p.data for p in pushes] == [b"first", b"second", b"other first",
                                        b"other second"], pushes


def test_genofire_dialect_gets_a_message(up, distributor):
    carol = distributor("carol")
    token = str(uuid.uuid4())
    endpoint = carol.register_genofire(PUSH_JID, token)
    assert endpoint.startswith(f"{up.http_base}/up/"), endpoint

    doc = {"type": "message", "text": "grüße, carol", "id": secrets.token_hex(4)}
    text = json.dumps(doc, ensure_ascii=False)
    a = post(endpoint, text.encode(), content_type="application/json", encoding=None)
    assert_accepted(a, endpoint)
    binary = b"\xff\xfe" + secrets.token_bytes(30)  # not UTF-8: goes as base64
    assert_accepted(post(endpoint, binary), endpoint)

    msgs = carol.wait_messages(2)
    assert len(msgs) == 2, [str(m) for m in msgs]
    for m in msgs:
        assert m["subject"] == token, str(m)
        assert m["type"] == "normal", str(m)
        assert str(m["from"]) == PUSH_JID, str(m)
        assert str(m["to"]) == carol.full_jid, str(m)
    assert msgs[0]["body"] == text, str(msgs[0])
    assert json.loads(msgs[0]["body"]) == doc
    assert base64.b64decode(msgs[1]["body"]) == binary, str(msgs[1])
    assert carol.pushes == [], "genofire's dialect must not get push IQs"


def test_unanswered_or_failed_push_is_retry_later(up, distributor):
    erin = distributor("erin")
    endpoint, _ = erin.register_conversations(PUSH_JID, *instance_names())

    erin.answer = "silent"
    a = post(endpoint, b"nobody answers")
    assert_retry_later(a)
    assert ANSWER_TIMEOUT - 0.2 <= a.elapsed < ANSWER_TIMEOUT + 2, \
        f"503 after {a.elapsed:.2f} s, expected after the {ANSWER_TIMEOUT} s answer timeout"

    erin.answer = "internal-server-error"
    a = post(endpoint, b"distributor trouble")
    assert_retry_later(a)
    assert a.elapsed < PROMPT, f"503 took {a.elapsed:.2f} s for an error answer"

    # neither revoked the endpoint
    erin.answer = None
    assert_accepted(post(endpoint, b"back again"), endpoint)
    assert [p.answered for p in erin.wait_pushes(3)] == [
        "silent", "internal-server-error", "result"]


def test_offline_distributor_then_new_resource(up, distributor):
    phone = distributor("dave")
    application, instance = instance_names()
    endpoint, _ = phone.register_conversations(PUSH_JID, application, instance)
    assert_accepted(post(endpoint, b"while online"), endpoint)
    old_jid = phone.full_jid
    phone.disconnect()

    # What the server does with an IQ to the gone full JID, seen by another user: it answers
    # for the distributor, service-unavailable (cancel) from that JID (Prosody's mod_iq and
    # ejabberd's session manager alike).
    witness = distributor("erin")
    push = ET.Element(f"{{{NS_UP_CONVERSATIONS}}}push",
                      {"application": application, "instance": instance})
    push.text = base64.b64encode(b"probe").decode()
    err = expect_error(witness.iq, "set", old_jid, push, timeout=5)
    assert (err.type, err.condition) == ("cancel", "service-unavailable"), err
    assert ET.fromstring(err.xml).get("from") == old_jid, err.xml
    # The same answer to pushgate's push IQ: 503 at once, not after the answer timeout.
    a = post(endpoint, b"while offline")
    assert_retry_later(a)
    assert a.elapsed < PROMPT, \
        f"503 after {a.elapsed:.2f} s: the server did not answer for the offline distributor"

    # Back with another resource: the same instance keeps its endpoint, pushes follow.
    phone2 = distributor("dave")
    assert phone2.full_jid != old_jid
    again, _ = phone2.register_conversations(PUSH_JID, application, instance)
    assert again == endpoint, "registering the same instance again must keep the endpoint"
    body = secrets.token_bytes(64)
    assert_accepted(post(endpoint, body), endpoint)
    p = phone2.wait_pushes(1)[0]
    assert (p.data, p.to) == (body, phone2.full_jid), p

    # A second resource online registering the instance takes the pushes from the first.
    phone3 = distributor("dave")
    assert phone3.register_conversations(PUSH_JID, application, instance)[0] == endpoint
    assert_accepted(post(endpoint, b"to the third"), endpoint)
    p = phone3.wait_pushes(1)[0]
    assert (p.data, p.to) == (b"to the third", phone3.full_jid), p
    assert len(phone2.pushes) == 1, f"the replaced resource got pushes: {phone2.pushes}"
    assert [q.data for q in phone.pushes] == [b"while online"], phone.pushes


def test_pushes_for_an_offline_distributor_are_kept_and_flushed_on_presence(up, distributor):
    """A push with a TTL to a distributor that went offline is kept (201 with that TTL); when
    the distributor is back, registers again from its new resource and sends the component its
    directed presence (what Conversations does on bind), the kept pushes arrive, oldest first."""
    phone = distributor("frank")
    application, instance = instance_names()
    endpoint, _ = phone.register_conversations(PUSH_JID, application, instance)
    phone.disconnect()
    assert_accepted(post(endpoint, b"kept one", ttl=60), endpoint, ttl="60")
    assert_accepted(post(endpoint, b"kept two", ttl=60), endpoint, ttl="60")

    back = distributor("frank")
    assert back.register_conversations(PUSH_JID, application, instance)[0] == endpoint
    assert back.pushes == [], "nothing is flushed before the presence"
    back.presence_to(PUSH_JID)
    got = back.wait_pushes(2)
    assert [p.data for p in got] == [b"kept one", b"kept two"], got
    assert all(p.to == back.full_jid for p in got), got
    # Delivered once: another presence flushes nothing more.
    back.presence_to(PUSH_JID)
    assert_accepted(post(endpoint, b"live"), endpoint)
    assert [p.data for p in back.wait_pushes(3)] == [b"kept one", b"kept two", b"live"]


def metric(up, name: str) -> float:
    """A counter's value on pushgate's `/metrics` (0 when it has not been written yet)."""
    with urllib.request.urlopen(f"{up.http_base}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0


def test_rfc8291_ciphertext_arrives_byte_for_byte(up, distributor):
    """An app server's real RFC 8291 message, encrypted for the subscription key pair the app
    (here the test) holds: the distributor gets exactly those bytes in either dialect, and they
    decrypt to the plaintext."""
    grace = distributor("grace")
    ua_private = ec.generate_private_key(ec.SECP256R1())
    auth = secrets.token_bytes(16)
    plaintext = json.dumps({"type": "message", "text": "secret for grace",
                            "id": secrets.token_hex(8)}).encode()
    body = encrypt_aes128gcm(plaintext, public_bytes(ua_private), auth)

    endpoint, _ = grace.register_conversations(PUSH_JID, *instance_names())
    assert_accepted(post(endpoint, body, encoding="aes128gcm"), endpoint)
    (p,) = grace.wait_pushes(1)
    assert p.data == body, f"{len(p.data)} bytes arrived, {len(body)} were sent: {p}"
    assert decrypt_aes128gcm(p.data, ua_private, auth) == plaintext

    # genofire's dialect carries text: the binary ciphertext goes as base64.
    other = encrypt_aes128gcm(plaintext, public_bytes(ua_private), auth)
    endpoint = grace.register_genofire(PUSH_JID, str(uuid.uuid4()))
    assert_accepted(post(endpoint, other, encoding="aes128gcm"), endpoint)
    (m,) = grace.wait_messages(1)
    assert base64.b64decode(m["body"], validate=True) == other, str(m)
    assert decrypt_aes128gcm(base64.b64decode(m["body"]), ua_private, auth) == plaintext


def test_a_kept_push_past_its_ttl_is_dropped_and_counted(up, distributor):
    """`TTL: 1` to an offline distributor: kept (201, `TTL: 1`); the distributor is back after
    more than a second and sends its presence: the kept push with a longer TTL behind it
    arrives (the flush goes oldest first, so the stale one was passed over), then a live push,
    and nothing else; the drop is counted on `/metrics`."""
    phone = distributor("hank")
    application, instance = instance_names()
    endpoint, _ = phone.register_conversations(PUSH_JID, application, instance)
    phone.disconnect()
    expired_before = metric(up, EXPIRED)
    assert_accepted(post(endpoint, b"stale soon", ttl=1), endpoint, ttl="1")
    assert_accepted(post(endpoint, b"still fresh", ttl=60), endpoint, ttl="60")
    time.sleep(1.5)  # the precondition: past the first push's TTL

    back = distributor("hank")
    assert back.register_conversations(PUSH_JID, application, instance)[0] == endpoint
    back.presence_to(PUSH_JID)
    first = back.wait_pushes(1)
    assert [p.data for p in first] == [b"still fresh"], first
    assert_accepted(post(endpoint, b"live"), endpoint)
    got = back.wait_pushes(2)
    assert [p.data for p in got] == [b"still fresh", b"live"], got
    # The live push has passed anything the flush could still have sent: nothing more comes.
    time.sleep(0.5)
    assert [p.data for p in back.pushes] == [b"still fresh", b"live"], back.pushes
    expired = metric(up, EXPIRED)
    assert expired >= expired_before + 1, \
        f"{EXPIRED} went from {expired_before} to {expired}, expected one more"


def test_unregister_in_either_dialect_ends_the_endpoint(up, distributor):
    """Conversations' `<unregister application= instance=/>` and genofire's
    `<unregister><token/></unregister>`: both endpoints answer 404 and nothing more is sent for
    them; an endpoint still registered keeps working."""
    ivan = distributor("ivan")
    application, instance = instance_names()
    conversations, _ = ivan.register_conversations(PUSH_JID, application, instance)
    token = str(uuid.uuid4())
    genofire = ivan.register_genofire(PUSH_JID, token)
    control, _ = ivan.register_conversations(PUSH_JID, *instance_names())
    assert_accepted(post(conversations, b"before"), conversations)
    assert_accepted(post(genofire, b"before", encoding=None), genofire)
    assert len(ivan.wait_messages(1)) == 1

    ivan.unregister_conversations(PUSH_JID, application, instance)
    ivan.unregister_genofire(PUSH_JID, token)
    for name, endpoint in (("conversations", conversations), ("genofire", genofire)):
        a = post(endpoint, b"after", encoding=None)
        assert a.status == 404, f"{name}: {a.status} {a.body!r} after unregister"
        assert a.elapsed < PROMPT, f"{name}: 404 took {a.elapsed:.2f} s"

    assert_accepted(post(control, b"fence"), control)
    got = ivan.wait_pushes(2)
    assert [p.data for p in got] == [b"before", b"fence"], got
    assert len(ivan.messages) == 1, [str(m) for m in ivan.messages]


def test_forged_tampered_and_mangled_tokens_are_refused(up, distributor):
    """Endpoints nobody was given: a random token of the right shape, judy's token with one
    character changed (in the middle, at the end), judy's real token under other path forms
    (trailing garbage, an extra path segment, doubled, case swapped): all 404 at once, and
    judy's distributor gets nothing of them."""
    judy = distributor("judy")
    endpoint, _ = judy.register_conversations(PUSH_JID, *instance_names())
    base, token = endpoint.rsplit("/up/", 1)
    assert len(token) == 43 and re.fullmatch(r"[A-Za-z0-9_-]+", token), token

    def changed(i: int) -> str:
        return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]

    forged = {
        "random": secrets.token_urlsafe(32),
        "one changed in the middle": changed(21),
        "one changed at the end": changed(42),
        "trailing garbage": token + "x",
        "extra segment": token + "/x",
        "doubled": token + token,
        "case swapped": token.swapcase(),
    }
    assert all(t != token for t in forged.values())
    for name, t in forged.items():
        a = post(f"{base}/up/{t}", f"forged: {name}".encode())
        assert a.status == 404, f"{name} ({t}): {a.status} {a.headers} {a.body!r}"
        assert a.elapsed < PROMPT, f"{name}: 404 took {a.elapsed:.2f} s"

    assert_accepted(post(endpoint, b"fence"), endpoint)
    got = judy.wait_pushes(1)
    assert [p.data for p in got] == [b"fence"], got
    time.sleep(0.3)
    assert [p.data for p in judy.pushes] == [b"fence"], judy.pushes


def test_a_matrix_message_reaches_the_xmpp_distributor(up, distributor, synapse):
    """Why it matters: a Matrix app on a phone without Google services uses its XMPP client as
    the UnifiedPush distributor. Synapse pushes to pushgate's Matrix front, whose WebPush
    provider POSTs (VAPID-signed) to the endpoint pushgate's UnifiedPush gave the distributor,
    and the distributor gets the notification as a push IQ and takes it."""
    kate = distributor("kate")
    endpoint, _ = kate.register_conversations(PUSH_JID, *instance_names())
    alice, bob, room = synapse.pair("pushgate unifiedpush chain")
    alice.set_pusher(up.http_base + NOTIFY_PATH, app_id=MATRIX_APP, pushkey=endpoint)
    text = f"over XMPP {secrets.token_hex(4)}"
    event = bob.send_text(room, text)

    pushes = kate.wait_pushes(1, timeout=30)
    docs = []
    for p in pushes:
        try:
            docs.append(json.loads(p.data))
        except ValueError:
            raise AssertionError(f"a push that is not JSON: {p}") from None
    mine = [(p, d) for p, d in zip(pushes, docs) if d.get("event_id") == event]
    assert mine, f"no push for event {event}: {docs}"
    p, doc = mine[0]
    assert p.answered == "result" and p.to == kate.full_jid and p.sender == PUSH_JID, p
    assert doc["room_id"] == room, doc
    assert doc.get("body") == text, doc
    assert doc.get("sender") == bob.localpart, doc
    assert alice.pushkeys() == {endpoint}, "the pusher stays"
