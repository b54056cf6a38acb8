"""(f) registration limits through Prosody: the per-account limit, field lengths, and a WebPush
endpoint whose name resolves only to loopback.

Own Prosody and pushgate: `registration.max_per_account = 3` (through the environment, the way
operators override keys) and a provider `strict` that, unlike the session's, does not allow
private addresses."""

from __future__ import annotations

import re

import pytest

from clients import expect_error, submit_form
from conftest import PUSH_JID, running_stack
from scenario import register_p2, register_tigase

LIMIT = 3
STRICT = """
[providers.strict]
kind = "webpush"
vapid_subject = "mailto:test@localhost"
allow_http = true
allow_private_addresses = false
"""


@pytest.fixture(scope="module")
def quota_stack():
    env = {"PUSHGATE_REGISTRATION__MAX_PER_ACCOUNT": str(LIMIT)}
    with running_stack("quotas", pushgate_toml=STRICT, pushgate_env=env) as stack_and_endpoint:
        yield stack_and_endpoint


def refused(pushgate, since: int, label: str):
    """pushgate logged the refusal with its metric label."""
    pushgate.log.wait_for(rf"command refused.*reason={re.escape(label)}\b|"
                          rf"reason={re.escape(label)}\b.*command refused", since=since)


def test_account_limit_refuses_new_devices_only(quota_stack, connect_factory):
    s, endpoint = quota_stack
    alice = connect_factory(s.server, "alice")
    devices = [endpoint.new_device() for _ in range(LIMIT + 1)]
    nodes = [register_tigase(alice, d, "webpush") for d in devices[:LIMIT]]
    assert len(set(nodes)) == LIMIT

    since = s.pushgate.log.offset()
    fields = {"provider": "webpush", "device-token": devices[LIMIT].url}
    err = expect_error(alice.command, PUSH_JID, "register-device", form=submit_form(fields))
    assert (err.type, err.condition) == ("cancel", "policy-violation"), err
    assert err.text == f"too many registrations for this account (limit {LIMIT})", err
    refused(s.pushgate, since, "account_quota")
    # p2 registrations count against the same account.
    err = expect_error(alice.command, PUSH_JID, "register-push-webpush",
                       form=submit_form({"token": devices[LIMIT].url, "device-id": "phone"}))
    assert err.condition == "policy-violation", err

    # Re-registering a known device is always allowed, and keeps its node.
    assert register_tigase(alice, devices[0], "webpush") == nodes[0]
    # Another account is not affected.
    bob = connect_factory(s.server, "bob")
    register_tigase(bob, endpoint.new_device(), "webpush")
    # Unregistering one makes room for a new one.
    r = alice.command(PUSH_JID, "unregister-device",
                      form=submit_form({"provider": "webpush",
                                        "device-token": devices[1].url}))
    assert r.status == "completed", r.xml
    register_tigase(alice, devices[LIMIT], "webpush")


def test_overlong_fields_are_refused_with_the_limit(quota_stack, connect_factory):
    s, endpoint = quota_stack
    carol = connect_factory(s.server, "carol")
    long_token = "https://push.example.org/" + "a" * 10_000
    since = s.pushgate.log.offset()
    err = expect_error(carol.command, PUSH_JID, "register-device",
                       form=submit_form({"provider": "webpush", "device-token": long_token}))
    assert (err.type, err.condition) == ("modify", "not-acceptable"), err
    assert err.text == "field 'device-token' is too long (limit 4096 bytes)", err
    refused(s.pushgate, since, "too_long")
    err = expect_error(carol.command, PUSH_JID, "register-push-webpush",
                       form=submit_form({"token": long_token, "device-id": "phone"}))
    assert err.text == "field 'token' is too long (limit 4096 bytes)", err
    err = expect_error(carol.command, PUSH_JID, "register-push-webpush",
                       form=submit_form({"token": endpoint.new_device().url,
                                         "device-id": "d" * 2000}))
    assert err.text == "field 'device-id' is too long (limit 1024 bytes)", err
    # Nothing was stored: carol's quota is untouched.
    for i in range(LIMIT):
        register_p2(carol, endpoint.new_device(), f"phone-{i}")


def test_endpoint_resolving_only_to_loopback_is_refused(quota_stack, connect_factory):
    s, endpoint = quota_stack
    dave = connect_factory(s.server, "dave")
    dev = endpoint.new_device()
    by_name = dev.url.replace("127.0.0.1", "localhost", 1)
    assert by_name != dev.url
    since = s.pushgate.log.offset()
    err = expect_error(dave.command, PUSH_JID, "register-device",
                       form=submit_form({"provider": "strict", "device-token": by_name,
                                         "p256dh": dev.p256dh, "auth": dev.auth_b64}))
    assert (err.type, err.condition) == ("modify", "not-acceptable"), err
    assert "localhost resolves only to non-public addresses" in (err.text or ""), err
    refused(s.pushgate, since, "endpoint_not_public")
    # The same endpoint where the provider allows private addresses: accepted.
    r = dave.command(PUSH_JID, "register-device",
                     form=submit_form({"provider": "webpush", "device-token": by_name,
                                       "p256dh": dev.p256dh, "auth": dev.auth_b64}))
    assert r.status == "completed", r.xml
