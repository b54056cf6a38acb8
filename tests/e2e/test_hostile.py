"""Hostile input and slow peers through a real Prosody: a user's stanza nested 14,000 deep, a
9,000-byte attribute, an oversized stanza; a push service that never answers next to healthy
ones. pushgate must answer what it refuses, keep its one component stream, and keep serving
everybody else within the configured publish timeout.

Own stack (module scope) with small limits, so the attacks stay cheap.
"""

from __future__ import annotations

import re
import time

import pytest

import xml.etree.ElementTree as ET

from clients import expect_error
from conftest import PUSH_JID, running_stack
from prosody import ERROR_LINE
from scenario import push_offline, wait_deliveries
from tarpit import Tarpit
from webpush_endpoint import Device

HOST_CONCURRENCY = 4
HOST_QUEUE = 8
MAX_STANZA_BYTES = 65536
PUBLISH_TIMEOUT = 5  # pushgate_proc's publish_timeout_secs
CONNECTED = re.compile(r"component connected")
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


@pytest.fixture(scope="module")
def hostile_stack():
    toml = ("[limits]\n"
            f"host_concurrency = {HOST_CONCURRENCY}\n"
            f"host_queue = {HOST_QUEUE}\n"
            f"max_stanza_bytes = {MAX_STANZA_BYTES}\n")
    with running_stack("hostile", pushgate_toml=toml) as (s, endpoint):
        s.endpoint = endpoint
        yield s


@pytest.fixture(scope="module")
def ep(hostile_stack):
    return hostile_stack.endpoint


def connections(pg) -> int:
    return len(pg.log.find_all(CONNECTED))


def test_hostile_stanzas_are_answered_and_the_stream_stays(hostile_stack, ep, connect_factory):
    pg, prosody = hostile_stack.pushgate, hostile_stack.server
    before = connections(pg)
    dev = ep.new_device()
    push_offline(connect_factory(prosody, "alice"), dev)

    mallory = connect_factory(prosody, "mallory", "other.localhost")
    # 14,000 nested elements (about 98 KB): this overflowed pushgate's stack.
    mallory.send_raw(f"<message to='{PUSH_JID}' id='deep'>" + "<a>" * 14_000 + "</a>" * 14_000
                     + "</message>")
    # One 9,000-byte attribute: this made pushgate drop its component stream.
    mallory.send_raw(f"<message to='{PUSH_JID}' id='attr' x='{'A' * 9000}'/>")
    # Larger than max_stanza_bytes.
    mallory.send_raw(f"<message to='{PUSH_JID}' id='big'><body>{'B' * (MAX_STANZA_BYTES + 1000)}"
                     "</body></message>")
    for msg_id, text in (("deep", "nested too deeply"), ("attr", "attribute value too long"),
                         ("big", "stanza too large")):
        err = mallory.wait_error_message(msg_id).xml.find("{*}error")
        assert err is not None and err.get("type") == "modify", msg_id
        assert err.find(f"{{{STANZAS}}}policy-violation") is not None, ET.tostring(err)
        assert text in err.findtext(f"{{{STANZAS}}}text", ""), ET.tostring(err)
    # A request with a huge attribute gets an IQ error, not silence.
    err = expect_error(mallory.iq, "get", PUSH_JID, ET.Element("{urn:xmpp:ping}ping"),
                       attrs={"x": "A" * 9000})
    assert err.condition == "policy-violation", err

    # The same stream still serves: a ping, and a real delivery through Prosody.
    mallory.ping(PUSH_JID)
    bob = connect_factory(prosody, "bob")
    since = pg.log.offset()
    bob.send_message("alice@localhost", "still here")
    assert wait_deliveries(ep, dev, 1)[0].status == 201
    assert pg.wait_outcomes(since) == ["delivered"]
    assert pg.running(), pg.exited()
    assert connections(pg) == before, "the component stream was re-established"


def test_a_tarpit_push_service_delays_nobody_else(hostile_stack, ep, connect_factory):
    pg, prosody = hostile_stack.pushgate, hostile_stack.server
    before = connections(pg)
    tarpit = Tarpit()
    try:
        push_offline(connect_factory(prosody, "carol"),
                     Device(path="/push/tarpit", url=tarpit.url))
        healthy = []
        for user in ("dave", "erin", "frank"):
            dev = ep.new_device()
            push_offline(connect_factory(prosody, user), dev)
            healthy.append((user, dev))

        sender = connect_factory(prosody, "bob")
        since, since_p = pg.log.offset(), prosody.log.offset()
        # 300 publishes for the tarpit at once: more than the old 256 shared slots.
        sender.send_messages("carol@localhost", [f"tarpit {i}" for i in range(300)])
        sent_at = time.time()  # the endpoint stamps deliveries with time.time()
        for i in range(3):
            for user, _ in healthy:
                sender.send_message(f"{user}@localhost", f"healthy {i}")
        for user, dev in healthy:
            got = wait_deliveries(ep, dev, 3)
            assert [d.status for d in got] == [201, 201, 201], user
            # Bounded by the publish timeout, not by the tarpit (which takes every slot it may
            # for the whole timeout).
            assert max(d.received_at for d in got) - sent_at < PUBLISH_TIMEOUT, user

        # Every tarpit publish is answered: the device's share of the retry queue
        # (retry.max_queued_per_device, 50) is queued, the rest answered `wait` (Prosody keeps
        # the registration)...
        outcomes = pg.wait_outcomes(since, count=309, timeout=3 * PUBLISH_TIMEOUT)
        assert outcomes.count("queued") == 50, outcomes
        assert outcomes.count("transient") == 250, outcomes
        prosody.log.wait_for(re.escape(ERROR_LINE.format(type="wait",
                                                         condition="internal-server-error")),
                             since=since_p, count=250, timeout=3 * PUBLISH_TIMEOUT)
        # ...and the tarpit never held more connections at once than its host's slots, give or
        # take those whose timed-out requests are still being closed (without the slots: 256+).
        assert tarpit.most_open <= 2 * HOST_CONCURRENCY, tarpit.most_open
        assert pg.running(), pg.exited()
        assert connections(pg) == before
    finally:
        tarpit.stop()
