"""Operations end to end: pushgate's HTTP surface on a real run through Prosody.

Own stack (module scope) with `[http] listen` on a free loopback port. After real deliveries the
test scrapes /metrics and checks the counters against what happened; Siskin's REST unregister
removes a registration, and the next publish for it is answered not_found; /healthz and /readyz
report the process and the stream.
"""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from conftest import PUSH_JID, VAPID_SUBJECT, Stack
from procs import free_port
from scenario import http, register_tigase, wait_deliveries
from webpush_endpoint import WebPushEndpoint

SAMPLE = re.compile(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(base: str) -> dict[tuple[str, frozenset], float]:
    """/metrics as {(name, frozenset of label pairs): value}; every line must parse."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"unparsable metrics line: {line!r}"
        labels = frozenset(LABEL.findall(m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def value(samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture(scope="module")
def ops():
    port = free_port()
    s = Stack("ops", pushgate_toml=f'[http]\nlisten = "127.0.0.1:{port}"\n')
    ep = WebPushEndpoint(vapid_subject=VAPID_SUBJECT).start()
    try:
        s.start_server()
        pg = s.make_pushgate()
        pg.start()
        ep.expected_vapid_key = pg.vapid_public
        yield s, ep, f"http://127.0.0.1:{port}"
    finally:
        ep.stop()
        s.close()


def test_metrics_health_and_rest_unregister_after_a_real_run(ops, connect_factory):
    stack, endpoint, base = ops
    pushgate = stack.pushgate

    assert http("GET", f"{base}/healthz")[0] == 200
    deadline = time.time() + 15
    while http("GET", f"{base}/readyz")[0] != 200:
        assert time.time() < deadline, f"/readyz never became ready: {http('GET', f'{base}/readyz')}"
        time.sleep(0.2)

    # Two messages to carol's device: two publishes, two deliveries.
    dev = endpoint.new_device()
    carol = connect_factory(stack.server, "carol")
    register_tigase(carol, dev, "webpush")
    node = register_tigase(carol, dev, "webpush")  # idempotent: same registration
    carol.enable_push(PUSH_JID, node)
    carol.disconnect()
    bob = connect_factory(stack.server, "bob")
    since = pushgate.log.offset()
    bob.send_message("carol@localhost", "first")
    bob.send_message("carol@localhost", "second")
    assert len(wait_deliveries(endpoint, dev, 2)) == 2
    assert pushgate.wait_outcomes(since, count=2) == ["delivered", "delivered"]

    m = scrape(base)
    assert value(m, "pushgate_publishes_total", outcome="delivered") == 2, m
    assert value(m, "pushgate_deliveries_total", provider="webpush", kind="alert", verdict="sent") == 2
    assert value(m, "pushgate_delivery_duration_seconds_count", provider="webpush") == 2
    assert value(m, "pushgate_commands_total", command="register-device", outcome="ok") == 2
    assert value(m, "pushgate_xmpp_connected") == 1
    assert value(m, "pushgate_publishes_total", outcome="not_found") == 0

    # Siskin's REST unregister: a wrong component JID is a plain 404, the right one removes it.
    body = {"account": "carol@localhost", "provider": "webpush", "device-token": dev.url}
    assert http("POST", f"{base}/unregister-device/push.elsewhere", body)[0] == 404
    status, answer = http("POST", f"{base}/unregister-device/{PUSH_JID}", body)
    assert (status, answer) == (200, {"result": "success"})
    assert http("POST", f"{base}/rest/push/unregister-device/{PUSH_JID}", body)[0] == 404

    # Prosody still publishes to the old node; pushgate no longer knows it.
    since = pushgate.log.offset()
    bob.send_message("carol@localhost", "after unregister")
    assert pushgate.wait_outcomes(since) == ["not_found"]
    assert len(endpoint.deliveries_for(dev)) == 2, "nothing delivered after unregister"

    m = scrape(base)
    assert value(m, "pushgate_publishes_total", outcome="not_found") == 1
    assert value(m, "pushgate_publishes_total", outcome="delivered") == 2
    routes = {dict(labels).get("route"): v for (name, labels), v in m.items()
              if name == "pushgate_http_requests_total" and dict(labels).get("status") == "200"}
    assert any(r and "unregister-device" in r for r in routes), routes
