"""slixmpp 1.17 clients with a synchronous facade for pytest.

One asyncio loop runs in a background thread for the whole session (`AsyncRunner`); every
client lives on it, and test code calls blocking wrappers that submit coroutines to it with a
deadline. Clients use plaintext c2s on loopback (the test Prosody allows it there only).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import slixmpp
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.stanza.error import Error as StanzaErrorPlugin
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

# RFC 6120 §8.3.3.12 `policy-violation` (pushgate's answer to a stanza over a limit) is missing
# from slixmpp's list of conditions; without it an IQ error carrying it cannot be read.
slixmpp.stanza.error.Error.conditions.add("policy-violation")

NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"
NS_PUSH = "urn:xmpp:push:0"
NS_PUBSUB = "http://jabber.org/protocol/pubsub"
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
NS_PING = "urn:xmpp:ping"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
PUBLISH_OPTIONS = "http://jabber.org/protocol/pubsub#publish-options"

DEFAULT_TIMEOUT = 15.0

# slixmpp logs every reconnect attempt and stream detail at INFO/WARNING; keep pytest quiet.
logging.getLogger("slixmpp").setLevel(logging.ERROR)

# slixmpp 1.17 knows RFC 3920's error conditions only and drops an error reply carrying RFC 6120's
# `policy-violation` (pushgate's registration limits) unparsed, so the caller would just time out.
StanzaErrorPlugin.conditions.add("policy-violation")


class AsyncRunner:
    """An asyncio event loop in a daemon thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        # Disconnected slixmpp objects still own pending tasks; keeping them referenced until
        # stop() cancels those tasks avoids "Task was destroyed but it is pending" noise.
        self.retired: list = []
        self._thread = threading.Thread(target=self._run, name="xmpp-loop", daemon=True)
        self._thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro, timeout: float = DEFAULT_TIMEOUT):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def stop(self):
        """Cancel what is left on the loop (clients' reader tasks), then stop it. The loop is
        never closed: slixmpp objects may still call into it from __del__ later."""
        async def _cancel_all():
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            self.run(_cancel_all(), 5)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        _KEEP_LOOPS.append(self.loop)


_KEEP_LOOPS: list = []


# --- results ---------------------------------------------------------------------------------
@dataclass
class FormField:
    var: str
    type: str | None
    values: list[str]
    options: list[str]

    @property
    def value(self) -> str | None:
        return self.values[0] if self.values else None


@dataclass
class Form:
    type: str | None
    fields: dict[str, FormField]

    def value(self, var: str) -> str | None:
        f = self.fields.get(var)
        return f.value if f else None

    def values(self, var: str) -> list[str]:
        f = self.fields.get(var)
        return f.values if f else []


def parse_form(x: ET.Element | None) -> Form | None:
    if x is None:
        return None
    fields = {}
    for f in x.findall(f"{{{NS_DATA}}}field"):
        var = f.get("var")
        if var is None:
            continue
        fields[var] = FormField(
            var=var, type=f.get("type"),
            values=[v.text or "" for v in f.findall(f"{{{NS_DATA}}}value")],
            options=[o.findtext(f"{{{NS_DATA}}}value") or ""
                     for o in f.findall(f"{{{NS_DATA}}}option")])
    return Form(type=x.get("type"), fields=fields)


@dataclass
class CommandResult:
    status: str | None
    sessionid: str | None
    node: str | None
    actions: list[str]
    form: Form | None
    xml: str
    notes: list[tuple[str | None, str]] = field(default_factory=list)  # [(type, text)]


@dataclass
class XmppError(Exception):
    type: str | None
    condition: str | None
    text: str | None
    xml: str

    def __str__(self):
        return f"<error type={self.type!r} condition={self.condition!r} text={self.text!r}>"


def _error_from_iq(iq) -> XmppError:
    err = iq.xml.find("{*}error")
    cond = None
    text = None
    etype = None
    if err is not None:
        etype = err.get("type")
        for child in err:
            tag = child.tag.split("}", 1)[-1]
            if child.tag.startswith(f"{{{NS_STANZAS}}}"):
                if tag == "text":
                    text = child.text
                elif cond is None:
                    cond = tag
    return XmppError(type=etype, condition=cond, text=text, xml=str(iq))


def submit_form(fields: dict[str, str | list[str] | None], form_type: str = "submit") -> ET.Element:
    x = ET.Element(f"{{{NS_DATA}}}x", {"type": form_type})
    for var, value in fields.items():
        if value is None:
            continue
        f = ET.SubElement(x, f"{{{NS_DATA}}}field", {"var": var})
        for v in (value if isinstance(value, list) else [value]):
            ET.SubElement(f, f"{{{NS_DATA}}}value").text = v
    return x


# --- the client ------------------------------------------------------------------------------
class Client:
    """A logged-in slixmpp client, driven synchronously from tests."""

    def __init__(self, runner: AsyncRunner, jid: str, password: str, port: int,
                 host: str = "127.0.0.1"):
        self.runner = runner
        self.resource = "e2e-" + uuid.uuid4().hex[:8]
        self.bare = jid
        self.jid = f"{jid}/{self.resource}"
        self.password = password
        self.port = port
        self.host = host
        self.messages: list = []
        self.error_messages: list = []
        # <message/>s carrying a PubSub payload (XEP-0357 remote disabling). slixmpp's `message`
        # event fires only for messages with a <body/>, so these never reach `messages`.
        self.pubsub_messages: list = []
        self.xmpp: slixmpp.ClientXMPP | None = None

    @property
    def full_jid(self) -> str:
        return str(self.xmpp.boundjid.full) if self.xmpp else self.jid

    # lifecycle
    def connect(self, timeout: float = DEFAULT_TIMEOUT) -> "Client":
        self.runner.run(self._connect(timeout), timeout + 5)
        return self

    async def _connect(self, timeout):
        c = slixmpp.ClientXMPP(self.jid, self.password)
        c.enable_direct_tls = False
        c.enable_starttls = False
        c.enable_plaintext = True
        c.plugin["feature_mechanisms"].config["unencrypted_scram"] = True
        c.plugin["feature_mechanisms"].config["unencrypted_plain"] = True
        for p in ("xep_0030", "xep_0004", "xep_0050", "xep_0199"):
            c.register_plugin(p)
        loop = asyncio.get_running_loop()
        started = loop.create_future()

        def on_start(_):
            if not started.done():
                started.set_result(True)

        def on_fail(ev):
            if not started.done():
                started.set_exception(RuntimeError(f"{self.jid}: authentication failed"))

        def on_disconnected(reason):
            if not started.done():
                started.set_exception(RuntimeError(f"{self.jid}: disconnected while logging in "
                                                   f"({reason})"))

        c.add_event_handler("session_start", on_start)
        c.add_event_handler("failed_auth", on_fail)
        c.add_event_handler("connection_failed", on_fail)
        c.add_event_handler("disconnected", on_disconnected)
        c.add_event_handler("message", lambda m: self.messages.append(m))
        c.add_event_handler("message_error", lambda m: self.error_messages.append(m))
        # registered before the stream starts, so messages from offline storage (sent right
        # after the initial presence) are recorded too
        c.register_handler(Callback(
            "pubsub message", MatchXPath(f"{{{c.default_ns}}}message/{{{NS_PUBSUB}}}pubsub"),
            self.pubsub_messages.append))
        self.xmpp = c
        c.connect(self.host, self.port)
        try:
            await asyncio.wait_for(started, timeout)
        except asyncio.TimeoutError:
            c.abort()
            raise TimeoutError(f"{self.jid}: no session_start within {timeout} s "
                               f"(127.0.0.1:{self.port})")
        c.del_event_handler("disconnected", on_disconnected)
        c.send_presence()
        # a round trip so the presence is processed before the test goes on
        await c.plugin["xep_0030"].get_info(jid=c.boundjid.domain, timeout=timeout)

    def disconnect(self, timeout: float = DEFAULT_TIMEOUT):
        """Close the stream cleanly and wait until the server has closed its side: after this,
        Prosody has destroyed the session and the account is offline."""
        if self.xmpp is None:
            return
        c = self.xmpp

        async def _disc():
            if not c.transport:
                return
            done = asyncio.get_running_loop().create_future()
            c.add_event_handler("disconnected",
                                lambda _: done.done() or done.set_result(True))
            c.send_presence(ptype="unavailable")
            c.disconnect(wait=timeout)
            await asyncio.wait_for(done, timeout + 1)

        try:
            self.runner.run(_disc(), timeout + 5)
        finally:
            self.runner.retired.append(c)
            self.xmpp = None

    def abort(self):
        if self.xmpp is not None:
            c = self.xmpp
            self.runner.loop.call_soon_threadsafe(c.abort)
            self.runner.retired.append(c)
            self.xmpp = None

    # generic IQ
    def iq(self, type_: str, to: str | None, payload: ET.Element | list | None,
           timeout: float = DEFAULT_TIMEOUT, attrs: dict[str, str] | None = None):
        """Send an IQ (with extra attributes, if given); return the result stanza or raise
        XmppError."""
        async def _send():
            iq = self.xmpp.Iq()
            iq["type"] = type_
            if to:
                iq["to"] = to
            for k, v in (attrs or {}).items():
                iq.xml.set(k, v)
            for p in (payload if isinstance(payload, list) else [payload] if payload is not None
                      else []):
                iq.append(p)
            try:
                return await iq.send(timeout=timeout)
            except IqError as e:
                raise _error_from_iq(e.iq) from None
            except IqTimeout:
                raise TimeoutError(f"{self.jid}: no reply to iq {type_} to {to} within "
                                   f"{timeout} s") from None
        return self.runner.run(_send(), timeout + 5)

    # disco / ping
    def disco_info(self, jid: str, node: str | None = None):
        q = ET.Element(f"{{{NS_DISCO_INFO}}}query", {"node": node} if node else {})
        r = self.iq("get", jid, q)
        query = r.xml.find(f"{{{NS_DISCO_INFO}}}query")
        identities = [(i.get("category"), i.get("type"), i.get("name"))
                      for i in query.findall(f"{{{NS_DISCO_INFO}}}identity")]
        features = [f.get("var") for f in query.findall(f"{{{NS_DISCO_INFO}}}feature")]
        return identities, features

    def disco_items(self, jid: str, node: str | None = None):
        q = ET.Element(f"{{{NS_DISCO_ITEMS}}}query", {"node": node} if node else {})
        r = self.iq("get", jid, q)
        query = r.xml.find(f"{{{NS_DISCO_ITEMS}}}query")
        return [(i.get("jid"), i.get("node"), i.get("name"))
                for i in query.findall(f"{{{NS_DISCO_ITEMS}}}item")]

    def ping(self, jid: str, timeout: float = DEFAULT_TIMEOUT):
        return self.iq("get", jid, ET.Element(f"{{{NS_PING}}}ping"), timeout=timeout)

    # ad-hoc commands (XEP-0050)
    def command(self, jid: str, node: str, action: str | None = "execute",
                sessionid: str | None = None, form: ET.Element | None = None) -> CommandResult:
        attrs = {"node": node}
        if action:
            attrs["action"] = action
        if sessionid:
            attrs["sessionid"] = sessionid
        cmd = ET.Element(f"{{{NS_COMMANDS}}}command", attrs)
        if form is not None:
            cmd.append(form)
        r = self.iq("set", jid, cmd)
        c = r.xml.find(f"{{{NS_COMMANDS}}}command")
        if c is None:
            raise AssertionError(f"command reply without <command/>: {r}")
        actions_el = c.find(f"{{{NS_COMMANDS}}}actions")
        actions = [a.tag.split("}", 1)[-1] for a in actions_el] if actions_el is not None else []
        return CommandResult(status=c.get("status"), sessionid=c.get("sessionid"),
                             node=c.get("node"), actions=actions,
                             form=parse_form(c.find(f"{{{NS_DATA}}}x")), xml=str(r),
                             notes=[(n.get("type"), n.text or "")
                                    for n in c.findall(f"{{{NS_COMMANDS}}}note")])

    # XEP-0357 at the own server
    def enable_push(self, service: str, node: str | None, secret: str | None = None,
                    extra_options: dict | None = None):
        attrs = {"jid": service}
        if node is not None:
            attrs["node"] = node
        en = ET.Element(f"{{{NS_PUSH}}}enable", attrs)
        if secret is not None or extra_options:
            fields = {"FORM_TYPE": PUBLISH_OPTIONS}
            if secret is not None:
                fields["secret"] = secret
            fields.update(extra_options or {})
            en.append(submit_form(fields))
        return self.iq("set", None, en)

    def disable_push(self, service: str, node: str | None = None):
        attrs = {"jid": service}
        if node is not None:
            attrs["node"] = node
        return self.iq("set", None, ET.Element(f"{{{NS_PUSH}}}disable", attrs))

    def publish_raw(self, service: str, node: str, body: str = "hi",
                    secret: str | None = None):
        """A pubsub publish as a server would send it, but from this client's full JID."""
        pubsub = ET.Element(f"{{{NS_PUBSUB}}}pubsub")
        publish = ET.SubElement(pubsub, f"{{{NS_PUBSUB}}}publish", {"node": node})
        item = ET.SubElement(publish, f"{{{NS_PUBSUB}}}item")
        notif = ET.SubElement(item, f"{{{NS_PUSH}}}notification")
        notif.append(submit_form({"FORM_TYPE": "urn:xmpp:push:summary", "message-count": "1",
                                  "last-message-sender": self.full_jid,
                                  "last-message-body": body}, form_type="form"))
        if secret is not None:
            po = ET.SubElement(pubsub, f"{{{NS_PUBSUB}}}publish-options")
            po.append(submit_form({"FORM_TYPE": PUBLISH_OPTIONS, "secret": secret}))
        return self.iq("set", service, pubsub)

    # messages
    def send_message(self, to: str, body: str, mtype: str = "chat"):
        async def _send():
            self.xmpp.send_message(mto=to, mbody=body, mtype=mtype)
            # a round trip to our server: the message has been routed when the reply comes
            await self.xmpp.plugin["xep_0199"].send_ping(self.xmpp.boundjid.domain,
                                                         timeout=DEFAULT_TIMEOUT)
        self.runner.run(_send())


    def send_messages(self, to: str, bodies: list[str], mtype: str = "chat"):
        """Many messages in one go (no round trip between them), then one round trip."""
        async def _send():
            for body in bodies:
                self.xmpp.send_message(mto=to, mbody=body, mtype=mtype)
            await self.xmpp.plugin["xep_0199"].send_ping(self.xmpp.boundjid.domain,
                                                         timeout=DEFAULT_TIMEOUT)
        self.runner.run(_send())

    def send_raw(self, xml: str):
        """Bytes on the wire exactly as given (hostile stanzas), then a round trip to our
        server, so they have been routed when this returns."""
        async def _send():
            self.xmpp.send_raw(xml)
            await self.xmpp.plugin["xep_0199"].send_ping(self.xmpp.boundjid.domain,
                                                         timeout=DEFAULT_TIMEOUT)
        self.runner.run(_send())

    def wait_error_message(self, msg_id: str, timeout: float = DEFAULT_TIMEOUT):
        """The error reply to the message with `msg_id`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in list(self.error_messages):
                if m["id"] == msg_id:
                    return m
            time.sleep(0.05)
        raise AssertionError(f"{self.jid}: no error reply to message {msg_id} within {timeout} s")


# --- a UnifiedPush distributor (the phone's XMPP client) ---------------------------------------
NS_UP_CONVERSATIONS = "http://gultsch.de/xmpp/drafts/unified-push"
NS_UP_GENOFIRE = "unifiedpush.org"


@dataclass
class UpPush:
    """One `<push/>` IQ the distributor got (Conversations' dialect), decoded."""
    id: str
    sender: str
    to: str
    application: str | None
    instance: str | None
    data: bytes
    answered: str  # "result", the error condition, or "silent"


class Distributor(Client):
    """A UnifiedPush distributor: registers app instances with the component in either dialect,
    records the push IQs (and, in `messages`, genofire's push messages) it receives and
    answers each push IQ as `answer` says: None = `result`, a condition name = an error of type
    `cancel` with it, "silent" = no answer at all."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pushes: list[UpPush] = []
        self.answer: str | None = None
        self._cond = threading.Condition()

    async def _connect(self, timeout):
        await super()._connect(timeout)
        self.xmpp.register_handler(Callback(
            "unifiedpush push",
            MatchXPath(f"{{{self.xmpp.default_ns}}}iq/{{{NS_UP_CONVERSATIONS}}}push"),
            self._on_push))
        self.xmpp.add_event_handler("message", lambda _: self._notify())

    def _notify(self):
        with self._cond:
            self._cond.notify_all()

    def _on_push(self, iq):
        push = iq.xml.find(f"{{{NS_UP_CONVERSATIONS}}}push")
        answer = self.answer
        if iq["type"] != "set":
            return
        try:
            data = base64.b64decode(push.text or "", validate=True)
        except ValueError as e:
            data = f"(not base64: {e}: {push.text!r})".encode()
        with self._cond:
            self.pushes.append(UpPush(
                id=iq["id"], sender=str(iq["from"]), to=str(iq["to"]),
                application=push.get("application"), instance=push.get("instance"), data=data,
                answered=answer or "result"))
            self._cond.notify_all()
        if answer == "silent":
            return
        if answer is None:
            iq.reply().send()
        else:
            r = iq.reply(clear=True)
            r["error"]["type"], r["error"]["condition"] = "cancel", answer
            r.send()

    def register_conversations(self, component: str, application: str,
                               instance: str) -> tuple[str, str]:
        """Conversations' registration; returns (endpoint, expiration)."""
        r = self.iq("set", component, ET.Element(
            f"{{{NS_UP_CONVERSATIONS}}}register",
            {"application": application, "instance": instance}))
        reg = r.xml.find(f"{{{NS_UP_CONVERSATIONS}}}registered")
        if reg is None or not reg.get("endpoint") or not reg.get("expiration"):
            raise AssertionError(f"no <registered endpoint= expiration=/> in {r}")
        return reg.get("endpoint"), reg.get("expiration")

    def register_genofire(self, component: str, token: str) -> str:
        """genofire's registration; returns the endpoint."""
        el = ET.Element(f"{{{NS_UP_GENOFIRE}}}register")
        ET.SubElement(el, f"{{{NS_UP_GENOFIRE}}}token").text = token
        r = self.iq("set", component, el)
        endpoint = r.xml.findtext(f"{{{NS_UP_GENOFIRE}}}register/{{{NS_UP_GENOFIRE}}}endpoint")
        if not endpoint:
            raise AssertionError(f"no <register><endpoint/></register> in {r}")
        return endpoint

    def unregister_conversations(self, component: str, application: str, instance: str):
        """Conversations' `<unregister application=… instance=…/>`; the result IQ."""
        return self.iq("set", component, ET.Element(
            f"{{{NS_UP_CONVERSATIONS}}}unregister",
            {"application": application, "instance": instance}))

    def unregister_genofire(self, component: str, token: str):
        """genofire's `<unregister><token>PUBLIC</token></unregister>`; the result IQ."""
        el = ET.Element(f"{{{NS_UP_GENOFIRE}}}unregister")
        ET.SubElement(el, f"{{{NS_UP_GENOFIRE}}}token").text = token
        return self.iq("set", component, el)

    def presence_to(self, jid: str):
        """Directed presence to `jid` (a distributor's signal to its push provider that it is
        back)."""
        async def _send():
            self.xmpp.send_presence(pto=jid)
        self.runner.run(_send())

    def wait_pushes(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[UpPush]:
        """The first `count` push IQs, waiting up to `timeout` for them."""
        return self._wait(lambda: self.pushes, count, "push IQ(s)", timeout)

    def wait_messages(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list:
        """The first `count` messages (genofire's pushes are messages), waiting up to
        `timeout` for them."""
        return self._wait(lambda: self.messages, count, "message(s)", timeout)

    def _wait(self, got, count: int, what: str, timeout: float) -> list:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(got()) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.full_jid}: {len(got())}/{count} {what} within "
                                         f"{timeout} s: {[str(x) for x in got()]}")
                self._cond.wait(left)
            return list(got())


def expect_error(fn, *args, **kwargs) -> XmppError:
    try:
        r = fn(*args, **kwargs)
    except XmppError as e:
        return e
    raise AssertionError(f"expected an XMPP error, got a result: {r}")


# --- a stand-in push component (harness self-test only) --------------------------------------
class FakePushComponent:
    """A slixmpp XEP-0114 component that records publishes and answers them as told."""

    def __init__(self, runner: AsyncRunner, jid: str, secret: str, port: int):
        self.runner = runner
        self.jid = jid
        self.secret = secret
        self.port = port
        self.publishes: list[ET.Element] = []
        self.reply: tuple[str, str] | None = None   # None = result; else (type, condition)
        self._cond = threading.Condition()
        self.xmpp = None

    def start(self, timeout: float = DEFAULT_TIMEOUT):
        async def _start():
            c = slixmpp.ComponentXMPP(self.jid, self.secret, host="127.0.0.1", port=self.port,
                                      fix_error_ns=True)
            c.enable_direct_tls = False
            started = asyncio.get_running_loop().create_future()
            c.add_event_handler("session_start",
                                lambda _: started.done() or started.set_result(True))
            c.register_handler(Callback(
                "pubsub publish",
                MatchXPath(f"{{{c.default_ns}}}iq/{{{NS_PUBSUB}}}pubsub"),
                self._on_publish))
            self.xmpp = c
            c.connect()
            await asyncio.wait_for(started, timeout)
        self.runner.run(_start(), timeout + 5)
        return self

    def _on_publish(self, iq):
        with self._cond:
            self.publishes.append(iq.xml)
            self._cond.notify_all()
        if iq["type"] != "set":
            return
        if self.reply is None:
            iq.reply().send()
        else:
            r = iq.reply(clear=True)
            r["error"]["type"], r["error"]["condition"] = self.reply
            r.send()

    def wait_for(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[ET.Element]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.publishes) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.jid}: {len(self.publishes)}/{count} publishes "
                                         f"within {timeout} s")
                self._cond.wait(left)
            return list(self.publishes)

    def stop(self):
        if self.xmpp is not None:
            c = self.xmpp

            async def _stop():
                c.disconnect(wait=1)
            try:
                self.runner.run(_stop(), 5)
            except Exception:
                pass
            self.runner.retired.append(c)
            self.xmpp = None
