"""Monal's two push dialects through a real Prosody and a real ejabberd, with the exact stanzas
Monal sends (monal-im/Monal XMPPIQ.m: `setPushEnableWithNode:onAppserver:`,
`setRegisterOnAppserverWithToken:`, `setUnregisterOnAppserver`, `setPushEnableWithNode:andSecret:`),
delivered by pushgate to local APNs stand-ins (apns_server.py).

* fpush-style (current Monal): no registration; `<enable node=TOKEN>` with the publish-options
  `pushModule` (`monalProdiOS`, `monalProdiOS-sandbox`). The server publishes to the token, which
  pushgate sends as an alert to the module's provider (production or sandbox); an unknown module
  is `item-not-found`.
* mod_push_appserver v1 (older Monal, yaxim): `v1-register-push` (through the server to the
  component), `<enable node=DEVICE-UUID>` with the publish-options `secret`; `v1-unregister-push`,
  after which the next publish is `item-not-found`.

What the server really passes to pushgate is read off the wire: pushgate reaches its server
through `ComponentTap`, a TCP relay that parses both directions of the component stream, so each
test sees the publish the server sent (node, publish-options as they arrive) and pushgate's
answer to it. After a refusal, each server's own rule decides (ejabberd deletes the registration
at the first error; Prosody counts to `push_max_errors`, 2 on other.localhost here): the tests
count the publishes each server still sends. "No further publish" is proved without a sleep: a
later message to a fence account (grace, an fpush token) must publish, and the component stream
is ordered, so a publish for the refused registration would have come first.

Measured (Prosody 0.12, ejabberd 23.01): both copy Monal's publish-options form into every
publish unchanged (the same fields in the same order with the same values, FORM_TYPE still
`type='hidden'`, the other field still without a type), and route the `v1-*-push` commands to pushgate from the phone's full JID with the form
unchanged. pushgate's remote-disable message after `v1-unregister-push` reaches the online phone;
neither server acts on it: the next publish still comes.

Own stack per server (module scope): the server, pushgate with two APNs providers
(`apns-monal` production and `apns-monal-sandbox`, token auth) on two stand-ins, `[fpush]` with
the module `monalProdiOS` and `[provider_aliases] apns = "apns-monal"` (mod_push_appserver's
`type`).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import pytest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from apns_server import ApnsRequest, ApnsServer
from clients import (NS_COMMANDS, NS_DATA, NS_PUBSUB, NS_PUSH, NS_STANZAS, PUBLISH_OPTIONS,
                     AsyncRunner, Client)
from conftest import (_LIVE, DOMAIN, OTHER_DOMAIN, PASSWORD, PROSODY_MAX_ERRORS, PUSH_JID,
                      SERVERS, diagnostics, running_stack)
from pki import CA, new_p8
from pushgate_proc import toml_str

TOPIC = "im.monal.Monal"
KEY_ID, TEAM_ID = "MONALKEY01", "MONALTEAM1"
PRODUCTION, SANDBOX = "apns-monal", "apns-monal-sandbox"
MODULE = "monalProdiOS"
# A module fpush knows (Monal's Quicksy build) that this pushgate has not configured.
UNKNOWN_MODULE = "quicksyProdiOS"
REGISTER_FORM_TYPE = "https://github.com/tmolitor-stud-tu/mod_push_appserver/#v1-register-push"
UNREGISTER_FORM_TYPE = "https://github.com/tmolitor-stud-tu/mod_push_appserver/#v1-unregister-push"
USERS = ("alice", "bob", "carol", "erin", "grace")
# How many publishes each server sends to a registration pushgate refuses (item-not-found,
# cancel) before it stops: ejabberd deletes at the first error, Prosody at push_max_errors.
PUBLISHES_UNTIL_DISABLED = {"prosody": PROSODY_MAX_ERRORS[OTHER_DOMAIN], "ejabberd": 1}


def new_token() -> str:
    """An APNs device token as Monal reads it: 32 bytes as 64 lower-case hex digits."""
    return secrets.token_hex(32)


def device_uuid() -> str:
    """iOS's identifierForVendor, as UUIDString prints it."""
    return str(uuid.uuid4()).upper()


# --- the wire between the server and pushgate --------------------------------------------------
@dataclass
class Tapped:
    direction: str          # "in": server -> pushgate; "out": pushgate -> server
    el: ET.Element
    at: float = field(default_factory=time.monotonic)


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class ComponentTap:
    """A TCP relay pushgate connects to instead of the server's component port: forwards both
    directions unchanged and parses each as an XML stream, keeping every top-level element
    (stanzas, handshake) in arrival order."""

    def __init__(self, name: str = "component-tap"):
        self.name = name
        self.stanzas: list[Tapped] = []
        self.errors: list[str] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.upstream: int | None = None
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stopping = False

    def start(self, upstream_port: int) -> "ComponentTap":
        self.upstream = upstream_port
        self._spawn(self._accept_loop)
        return self

    def _spawn(self, target, *args):
        t = threading.Thread(target=target, args=args, daemon=True, name=self.name)
        t.start()
        self._threads.append(t)

    def _accept_loop(self):
        while not self._stopping:
            try:
                down, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError as e:
                self.errors.append(f"upstream connect: {e}")
                down.close()
                continue
            up.settimeout(None)
            down.settimeout(None)
            self._conns += [down, up]
            self._spawn(self._pump, up, down, "in")
            self._spawn(self._pump, down, up, "out")

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str):
        parser = ET.XMLPullParser(events=("start", "end"))
        depth, root, broken = 0, None, False
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                for s in (dst, src):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            try:
                dst.sendall(data)
            except OSError:
                return
            if broken:
                continue
            try:
                parser.feed(data)
                for event, el in parser.read_events():
                    if event == "start":
                        depth += 1
                        if depth == 1:
                            root = el
                        continue
                    depth -= 1
                    if depth == 1:
                        with self._cond:
                            self.stanzas.append(Tapped(direction, el))
                            self._cond.notify_all()
                        root.remove(el)
            except ET.ParseError as e:
                broken = True
                self.errors.append(f"{direction}: unparsable stream: {e}")

    def offset(self) -> int:
        with self._cond:
            return len(self.stanzas)

    def find(self, pred, since: int = 0, direction: str | None = None) -> list[ET.Element]:
        with self._cond:
            return [t.el for t in self.stanzas[since:]
                    if (direction is None or t.direction == direction) and pred(t.el)]

    def wait(self, pred, what: str, since: int = 0, direction: str | None = None,
             count: int = 1, timeout: float = 10.0) -> list[ET.Element]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = [t.el for t in self.stanzas[since:]
                       if (direction is None or t.direction == direction) and pred(t.el)]
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: {len(got)}/{count} {what} within "
                                         f"{timeout} s\n{self.diagnostics()}\n{diagnostics()}")
                self._cond.wait(min(left, 0.2))

    def stop(self):
        self._stopping = True
        for s in [self._sock, *self._conns]:
            try:
                s.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(1)

    def diagnostics(self, n: int = 8) -> str:
        with self._cond:
            last = [f"{t.direction}: {ET.tostring(t.el, encoding='unicode')[:700]}"
                    for t in self.stanzas[-n:]]
        return (f"--- {self.name} (port {self.port} -> {self.upstream}) last stanzas ---\n"
                + "\n".join(last) + f"\nerrors: {self.errors}")


def publish_node(iq: ET.Element) -> str | None:
    """The node of a pubsub publish IQ, or None if `iq` is none."""
    if local(iq.tag) != "iq" or iq.get("type") != "set":
        return None
    p = iq.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish")
    return None if p is None else (p.get("node") or "")


def publish_options(iq: ET.Element) -> ET.Element | None:
    return iq.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}publish-options/{{{NS_DATA}}}x")


def form_fields(x: ET.Element | None) -> dict[str, list[str]]:
    """var -> values of a data form, in the form's order."""
    if x is None:
        return {}
    return {f.get("var"): [v.text or "" for v in f.findall(f"{{{NS_DATA}}}value")]
            for f in x.findall(f"{{{NS_DATA}}}field")}


def form_shape(x: ET.Element) -> list[tuple[str | None, str | None]]:
    """(var, type attribute) of each field: what a server may add or drop when it copies."""
    return [(f.get("var"), f.get("type")) for f in x.findall(f"{{{NS_DATA}}}field")]


def answer(iq: ET.Element) -> tuple[str, str | None, str | None]:
    """(type, error type, condition) of an IQ reply."""
    err = next((c for c in iq if local(c.tag) == "error"), None)
    if err is None:
        return iq.get("type"), None, None
    cond = next((local(c.tag) for c in err if c.tag.startswith(f"{{{NS_STANZAS}}}")
                 and local(c.tag) != "text"), None)
    return iq.get("type"), err.get("type"), cond


# --- Monal's stanzas -------------------------------------------------------------------------
def monal_form(form_type: str, fields: dict[str, str]) -> ET.Element:
    """`[[XMPPDataForm alloc] initWithType:@"submit" formType:… andDictionary:…]`: FORM_TYPE as
    a hidden field, the others without a type."""
    x = ET.Element(f"{{{NS_DATA}}}x", {"type": "submit"})
    ft = ET.SubElement(x, f"{{{NS_DATA}}}field", {"var": "FORM_TYPE", "type": "hidden"})
    ET.SubElement(ft, f"{{{NS_DATA}}}value").text = form_type
    for var, value in fields.items():
        f = ET.SubElement(x, f"{{{NS_DATA}}}field", {"var": var})
        ET.SubElement(f, f"{{{NS_DATA}}}value").text = value
    return x


def monal_enable(client: Client, node: str, options: dict[str, str]):
    """`<enable xmlns='urn:xmpp:push:0' jid=… node=…>` with the publish-options form, to the own
    server (no `to`)."""
    en = ET.Element(f"{{{NS_PUSH}}}enable", {"jid": PUSH_JID, "node": node})
    en.append(monal_form(PUBLISH_OPTIONS, options))
    return client.iq("set", None, en)


def appserver_command(client: Client, command: str, form_type: str, fields: dict[str, str]):
    """Monal's single-stage `action='execute'` with the submitted form, to the component (routed
    by the user's server)."""
    return client.command(PUSH_JID, command, form=monal_form(form_type, fields))


class PubsubMessages:
    """The body-less messages with `<pubsub node=…>` a client gets (slixmpp's `message` event
    fires only for messages with a body)."""

    def __init__(self, client: Client, node: str):
        self.got: list[ET.Element] = []
        self._cond = threading.Condition()
        x = client.xmpp

        def on_message(msg):
            with self._cond:
                self.got.append(msg.xml)
                self._cond.notify_all()

        async def register():
            x.register_handler(Callback(
                "pubsub message", MatchXPath(f"{{{x.default_ns}}}message/{{{NS_PUBSUB}}}pubsub"),
                on_message))
        client.runner.run(register())
        self.node = node

    def wait(self, timeout: float = 10.0) -> ET.Element:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.got:
                    ps = m.find(f"{{{NS_PUBSUB}}}pubsub")
                    if ps is not None and ps.get("node") == self.node:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no <message><pubsub node='{self.node}'/> within "
                                         f"{timeout} s: {[ET.tostring(m) for m in self.got]}")
                self._cond.wait(left)


# --- the stack ---------------------------------------------------------------------------------
class Apns:
    """The two APNs stand-ins and the key pushgate signs with."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="pushgate-e2e-dialects-")
        ca = CA("pushgate e2e dialects CA")
        self.ca_file = ca.write(os.path.join(self.dir, "ca.pem"))
        server = ca.issue("localhost", server=True, dns=("localhost",), ips=("127.0.0.1",),
                          days=7)
        p8 = new_p8(KEY_ID, TEAM_ID)
        self.p8_file = p8.write(os.path.join(self.dir, f"AuthKey_{KEY_ID}.p8"))
        keys = {KEY_ID: (p8.public_key, TEAM_ID)}
        self.production = ApnsServer(server.cert_pem, server.key_pem, token_keys=keys,
                                     name="apns[production]").start()
        self.sandbox = ApnsServer(server.cert_pem, server.key_pem, token_keys=keys,
                                  name="apns[sandbox]").start()
        _LIVE.extend([self.production, self.sandbox])

    def section(self, pid: str, mock: ApnsServer, environment: str) -> str:
        return "\n".join([
            f"[providers.{toml_str(pid)}]",
            'kind = "apns"',
            f"topic = {toml_str(TOPIC)}",
            f"environment = {toml_str(environment)}",
            f"base_url = {toml_str(mock.base_url)}",
            f"ca_file = {toml_str(self.ca_file)}",
            f"key_file = {toml_str(self.p8_file)}",
            f"key_id = {toml_str(KEY_ID)}",
            f"team_id = {toml_str(TEAM_ID)}",
            "pool_size = 1",
        ]) + "\n"

    def pushgate_toml(self) -> str:
        return "\n".join([
            self.section(PRODUCTION, self.production, "production"),
            self.section(SANDBOX, self.sandbox, "sandbox"),
            "[provider_aliases]",
            f"apns = {toml_str(PRODUCTION)}",
            "",
            "[fpush]",
            f"allowed_domains = [{toml_str(DOMAIN)}, {toml_str(OTHER_DOMAIN)}]",
            "",
            f"[fpush.modules.{MODULE}]",
            f"provider = {toml_str(PRODUCTION)}",
            f"sandbox_provider = {toml_str(SANDBOX)}",
        ]) + "\n"

    def stop(self):
        for m in (self.production, self.sandbox):
            m.stop()
            if m in _LIVE:
                _LIVE.remove(m)
        if not os.environ.get("PUSHGATE_E2E_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def apns():
    a = Apns()
    yield a
    a.stop()


@dataclass
class World:
    kind: str
    server: object
    pushgate: object
    tap: ComponentTap
    apns: Apns
    runner: AsyncRunner
    clients: list = field(default_factory=list)
    bob: Client | None = None
    fence_token: str = ""

    def connect(self, user: str, host: str = DOMAIN) -> Client:
        c = Client(self.runner, f"{user}@{host}", PASSWORD, self.server.c2s_port).connect()
        self.clients.append(c)
        return c

    def fence(self, since: int):
        """A message to grace (an fpush token enabled at this server) and its publish: every
        publish the server sent before it has reached the tap."""
        self.bob.send_message(f"grace@{DOMAIN}", "fence " + secrets.token_hex(3))
        self.tap.wait(lambda el: publish_node(el) == self.fence_token, "fence publish",
                      since=since, direction="in")


@pytest.fixture(scope="module", params=SERVERS)
def world(request, apns, runner):
    """This module's stack on each server: the server, pushgate behind the tap, bob online (the
    sender), grace's fpush token enabled and offline (the fence)."""
    kind = request.param
    tap = ComponentTap(f"tap[{kind}]")
    _LIVE.append(tap)
    # pushgate reaches the server through the tap
    env = {"PUSHGATE_COMPONENT__SERVER": f"127.0.0.1:{tap.port}"}
    try:
        with running_stack(f"dialects-{kind}", users=USERS, kind=kind,
                           pushgate_toml=apns.pushgate_toml(), pushgate_env=env,
                           configure=lambda server: tap.start(server.component_port)) as (s, _):
            w = World(kind=kind, server=s.server, pushgate=s.pushgate, tap=tap, apns=apns,
                      runner=runner)
            try:
                w.bob = w.connect("bob")
                w.fence_token = new_token()
                grace = w.connect("grace")
                monal_enable(grace, w.fence_token, {"pushModule": MODULE})
                grace.disconnect()
                yield w
            finally:
                for c in w.clients:
                    try:
                        c.disconnect(timeout=2)
                    except Exception:
                        c.abort()
    finally:
        tap.stop()
        _LIVE.remove(tap)


# --- checks ------------------------------------------------------------------------------------
def the_publish(w: World, node: str, since: int) -> tuple[ET.Element, ET.Element]:
    """The one publish to `node` the server sent since `since`, and pushgate's answer to it."""
    (iq,) = w.tap.wait(lambda el: publish_node(el) == node, f"publish to {node[:16]}",
                       since=since, direction="in")
    (reply,) = w.tap.wait(lambda el: local(el.tag) == "iq" and el.get("id") == iq.get("id")
                          and el.get("type") in ("result", "error"),
                          f"pushgate's answer to publish {iq.get('id')}", since=since,
                          direction="out")
    return iq, reply


def publish_for_message(w: World, account: str, node: str, text: str
                        ) -> tuple[ET.Element, ET.Element]:
    """bob sends `account` (offline) `text`: the publish to `node` it made, and the answer."""
    since = w.tap.offset()
    w.bob.send_message(account, text)
    return the_publish(w, node, since)


def check_form_unchanged(x: ET.Element | None, form_type: str, fields: dict[str, str],
                         where: str):
    """`x` is the form `monal_form(form_type, fields)` made: the same fields in the same order,
    with the same values and type attributes (FORM_TYPE hidden, the others none)."""
    sent = monal_form(form_type, fields)
    assert x is not None, f"no form: {where}"
    assert x.get("type") == "submit", where
    assert form_fields(x) == form_fields(sent), where
    assert form_shape(x) == form_shape(sent), where


def check_options_unchanged(iq: ET.Element, options: dict[str, str]):
    """The publish carries the client's publish-options as Monal sent them in its enable."""
    check_form_unchanged(publish_options(iq), PUBLISH_OPTIONS, options,
                         ET.tostring(iq, encoding="unicode"))


def check_fpush_alert(r: ApnsRequest, token: str, text: str):
    """fpush's push: an alert, priority 10, mutable-content (Monal's extension fetches the
    messages itself), to the token in the path, nothing of the message in it."""
    where = r.summary()
    assert r.status == 200 and r.jwt_error is None, where
    assert r.method == "POST" and r.path == f"/3/device/{token}", where
    assert r.headers.get("apns-topic") == TOPIC, where
    assert r.headers.get("apns-push-type") == "alert", where
    assert r.headers.get("apns-priority") == "10", where
    assert r.json_error is None and isinstance(r.json, dict), where
    aps = r.json.get("aps")
    assert isinstance(aps, dict) and aps.get("mutable-content") == 1, where
    assert isinstance(aps.get("alert"), dict), where
    assert text.encode() not in r.body, f"the message text went to Apple: {where}"
    assert "account" not in r.json and "sender" not in r.json, where


# --- fpush-style (current Monal) ---------------------------------------------------------------
def test_fpush_token_and_push_module_reach_apns_production(world):
    """Monal enables with its token as node and pushModule monalProdiOS, then goes offline; a
    message: the server publishes to the token with the publish-options exactly as Monal sent
    them, pushgate answers result and APNs production gets fpush's alert for the token."""
    w = world
    token = new_token()
    alice = w.connect("alice")
    monal_enable(alice, token, {"pushModule": MODULE})
    alice.disconnect()

    text = "fpush " + secrets.token_hex(4)
    iq, reply = publish_for_message(w, f"alice@{DOMAIN}", token, text)
    assert iq.get("from") == DOMAIN and iq.get("to") == PUSH_JID, ET.tostring(iq)
    check_options_unchanged(iq, {"pushModule": MODULE})
    assert answer(reply) == ("result", None, None), ET.tostring(reply)
    (r,) = w.apns.production.wait_for(token, 1, diagnostics=diagnostics)
    check_fpush_alert(r, token, text)
    assert w.apns.sandbox.requests_for(token) == []


def test_fpush_sandbox_module_goes_to_the_sandbox_provider(world):
    """`monalProdiOS-sandbox` (a development build of Monal): the same alert, from the module's
    sandbox_provider; production gets nothing."""
    w = world
    token = new_token()
    carol = w.connect("carol")
    monal_enable(carol, token, {"pushModule": f"{MODULE}-sandbox"})
    carol.disconnect()

    text = "sandbox " + secrets.token_hex(4)
    iq, reply = publish_for_message(w, f"carol@{DOMAIN}", token, text)
    check_options_unchanged(iq, {"pushModule": f"{MODULE}-sandbox"})
    assert answer(reply) == ("result", None, None), ET.tostring(reply)
    (r,) = w.apns.sandbox.wait_for(token, 1, diagnostics=diagnostics)
    check_fpush_alert(r, token, text)
    assert w.apns.production.requests_for(token) == []


def publishes_until_disabled(w: World, account: str, node: str, options: dict[str, str]) -> int:
    """Messages to the offline `account` until its server stops publishing to `node`; every
    publish must carry `options` unchanged and be answered item-not-found (cancel). Returns how
    many publishes the server sent."""
    expected = PUBLISHES_UNTIL_DISABLED[w.kind]
    refused = w.server.rejection(PUSH_JID, node, "cancel", "item-not-found")
    since_log = w.server.log.offset()
    sent = 0
    for i in range(expected + 1):
        since = w.tap.offset()
        w.bob.send_message(account, f"refused {i} {secrets.token_hex(3)}")
        w.fence(since)
        publishes = w.tap.find(lambda el: publish_node(el) == node, since, "in")
        if not publishes:
            break
        assert len(publishes) == 1, [ET.tostring(p) for p in publishes]
        iq, reply = the_publish(w, node, since)
        check_options_unchanged(iq, options)
        assert answer(reply) == ("error", "cancel", "item-not-found"), ET.tostring(reply)
        sent += 1
        # The server has taken the answer in before the next message (else that message would
        # be published whatever the server's rule).
        w.server.log.wait_for(refused, since=since_log, count=sent)
    return sent


def check_server_disabled(w: World, node: str, refusals: int, since: int):
    """The server's log: each refusal seen, the registration disabled once."""
    w.server.log.wait_for(w.server.rejection(PUSH_JID, node, "cancel", "item-not-found"),
                          since=since, count=refusals)
    w.server.log.wait_for(w.server.disabling(PUSH_JID, node), since=since)
    if w.kind == "prosody":
        counts = [m.group(1) for m in w.server.log.find_all(
            rf"for identifier '{re.escape(PUSH_JID)}<{re.escape(node)}': error count for this "
            r"identifier is now at (\d+)", since)]
        assert counts == [str(n) for n in range(1, refusals + 1)], counts


def test_fpush_unknown_push_module_is_item_not_found(world):
    """pushModule quicksyProdiOS, which this pushgate does not serve: each publish is answered
    item-not-found (cancel), nothing goes to APNs. ejabberd deletes the registration at the first
    refusal; Prosody counts and deletes at push_max_errors (2 on other.localhost)."""
    w = world
    token = new_token()
    account = f"mallory@{OTHER_DOMAIN}"
    mallory = w.connect("mallory", OTHER_DOMAIN)
    monal_enable(mallory, token, {"pushModule": UNKNOWN_MODULE})
    mallory.disconnect()

    since_log = w.server.log.offset()
    sent = publishes_until_disabled(w, account, token, {"pushModule": UNKNOWN_MODULE})
    assert sent == PUBLISHES_UNTIL_DISABLED[w.kind], \
        f"{w.kind} published {sent} times to a refused registration"
    check_server_disabled(w, token, sent, since_log)
    assert w.apns.production.requests_for(token) == []
    assert w.apns.sandbox.requests_for(token) == []


# --- mod_push_appserver v1 (older Monal, yaxim) --------------------------------------------------
def appserver_register(w: World, client: Client, node: str, token: str) -> str:
    """`v1-register-push` as Monal sends it, through the server; checks what reached pushgate
    and the result form (jid, node echoed, secret). Returns the secret."""
    fields = {"type": "apns", "node": node, "token": token}
    since = w.tap.offset()
    r = appserver_command(client, "v1-register-push", REGISTER_FORM_TYPE, fields)
    assert r.status == "completed", r.xml
    assert r.form is not None and r.form.value("jid") == PUSH_JID, r.xml
    assert r.form.value("node") == node, f"the node is echoed: {r.xml}"
    secret = r.form.value("secret")
    assert secret, r.xml
    # The command reached pushgate through the server, from the phone's full JID, as sent.
    (iq,) = w.tap.find(lambda el: local(el.tag) == "iq" and el.find(
        f"{{{NS_COMMANDS}}}command[@node='v1-register-push']") is not None, since, "in")
    where = ET.tostring(iq, encoding="unicode")
    assert iq.get("from") == client.full_jid and iq.get("to") == PUSH_JID, where
    cmd = iq.find(f"{{{NS_COMMANDS}}}command")
    assert cmd.get("action") == "execute", where
    check_form_unchanged(cmd.find(f"{{{NS_DATA}}}x"), REGISTER_FORM_TYPE, fields, where)
    return secret


def test_appserver_register_enable_and_push(world):
    """Older Monal: v1-register-push (type apns, node = identifierForVendor, token) through the
    server, enable with that node and the secret, offline; a message: the server publishes with
    the secret unchanged, APNs production gets an alert for the token with the sender and the
    body (what both servers put in the summary here), and no account."""
    w = world
    token, node = new_token(), device_uuid()
    erin = w.connect("erin")
    secret = appserver_register(w, erin, node, token)
    monal_enable(erin, node, {"secret": secret})
    erin.disconnect()

    text = "appserver " + secrets.token_hex(4)
    iq, reply = publish_for_message(w, f"erin@{DOMAIN}", node, text)
    check_options_unchanged(iq, {"secret": secret})
    assert answer(reply) == ("result", None, None), ET.tostring(reply)
    (r,) = w.apns.production.wait_for(token, 1, diagnostics=diagnostics)
    where = r.summary()
    assert r.status == 200 and r.jwt_error is None, where
    assert r.headers.get("apns-topic") == TOPIC, where
    assert r.headers.get("apns-push-type") == "alert", where
    assert r.headers.get("apns-priority") == "10", where
    aps = r.json.get("aps", {})
    assert aps.get("mutable-content") == 1, where
    assert aps.get("alert") == {"title": w.bob.full_jid, "body": text}, where
    assert "account" not in r.json, where
    assert w.apns.sandbox.requests_for(token) == []


def test_appserver_unregister_then_item_not_found(world):
    """v1-unregister-push (type, node) through the server: completed with jid and node; pushgate
    tells the account (affiliation none for the node), which neither server acts on: the next
    publish still comes, with the secret, and is answered item-not-found; then each server's
    rule (ejabberd at once, Prosody at push_max_errors)."""
    w = world
    token, node = new_token(), device_uuid()
    account = f"oscar@{OTHER_DOMAIN}"
    oscar = w.connect("oscar", OTHER_DOMAIN)
    secret = appserver_register(w, oscar, node, token)
    monal_enable(oscar, node, {"secret": secret})
    oscar.disconnect()
    _, reply = publish_for_message(w, account, node, "before unregistering")
    assert answer(reply) == ("result", None, None), ET.tostring(reply)
    w.apns.production.wait_for(token, 1, diagnostics=diagnostics)

    oscar = w.connect("oscar", OTHER_DOMAIN)
    notices = PubsubMessages(oscar, node)
    since = w.tap.offset()
    fields = {"type": "apns", "node": node}
    r = appserver_command(oscar, "v1-unregister-push", UNREGISTER_FORM_TYPE, fields)
    assert r.status == "completed", r.xml
    assert r.form is not None and r.form.value("jid") == PUSH_JID, r.xml
    assert r.form.value("node") == node, r.xml
    (iq,) = w.tap.find(lambda el: local(el.tag) == "iq" and el.find(
        f"{{{NS_COMMANDS}}}command[@node='v1-unregister-push']") is not None, since, "in")
    check_form_unchanged(iq.find(f"{{{NS_COMMANDS}}}command/{{{NS_DATA}}}x"),
                         UNREGISTER_FORM_TYPE, fields, ET.tostring(iq, encoding="unicode"))
    # pushgate's remote-disable notification, from the tap's side and the phone's: the server
    # routes it to the phone, online (offline, the server would store it and publish for it).
    (notice,) = w.tap.wait(lambda el: local(el.tag) == "message" and el.find(
        f"{{{NS_PUBSUB}}}pubsub[@node='{node}']") is not None, "remote-disable message",
        since=since, direction="out")
    aff = notice.find(f"{{{NS_PUBSUB}}}pubsub/{{{NS_PUBSUB}}}affiliation")
    assert notice.get("to") == account and aff is not None, ET.tostring(notice)
    assert (aff.get("jid"), aff.get("affiliation")) == (account, "none"), ET.tostring(notice)
    got = notices.wait()
    assert got.get("from") == PUSH_JID, ET.tostring(got)
    oscar.disconnect()

    since_log = w.server.log.offset()
    sent = publishes_until_disabled(w, account, node, {"secret": secret})
    assert sent == PUBLISHES_UNTIL_DISABLED[w.kind], \
        f"{w.kind} published {sent} times to an unregistered node"
    check_server_disabled(w, node, sent, since_log)
    assert len(w.apns.production.requests_for(token)) == 1, "only the push before unregistering"
