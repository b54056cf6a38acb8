"""pushgate behind ejabberd 23.01 (Debian) with slixmpp phones: delivery in both dialects, the
shipped example's `include_body: false`, a dead token and a provider outage.

ejabberd reacts differently from Prosody at every error: any error reply to a publish but a
`wait` disables the registration at once (`disabling push` in its log), and a `wait` is only
logged. Its shapes: with `include_body` a text (the default) or true, a summary with
`last-message-body` and no `message-count`; with `include_body: false`, a bare
`<notification/>` for every message.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from conftest import PASSWORD, PUSH_JID, diagnostics
from ejabberd import DISABLED_LINE, Ejabberd
from pushgate_proc import VAPID_SUBJECT, Pushgate
from clients import expect_error, submit_form
from prosody import free_port
from scenario import http, push_offline, register_p2, register_tigase
from webpush_endpoint import WebPushEndpoint

USERS = ("alice", "bob", "carol", "dave", "erin")


# etc/examples/ejabberd.yml, followed literally: a fixed include_body text, mod_client_state and
# mod_push_keepalive, and pushgate told that this server's summary-less notifications are wakes.
EXAMPLE_PUSH = {"include_body": '"New message"', "include_sender": "false"}
EXAMPLE_MODULES = ("mod_client_state", "mod_push_keepalive")
EXAMPLE_PUSHGATE_ENV = {"PUSHGATE_REGISTRATION__BACKGROUND_WITHOUT_SUMMARY": '["localhost"]'}


@contextlib.contextmanager
def ejabberd_stack(name: str, push_options: dict | None = EXAMPLE_PUSH,
                   pushgate_env: dict | None = None, pushgate_toml: str = ""):
    """An ejabberd (by default configured as etc/examples/ejabberd.yml), a WebPush endpoint and
    a pushgate for push.localhost; yields them."""
    example = push_options is EXAMPLE_PUSH
    server = Ejabberd(users=[(u, "localhost", PASSWORD) for u in USERS],
                      components={PUSH_JID: "ejabberd-component-secret"},
                      push_options=push_options,
                      extra_modules=EXAMPLE_MODULES if example else (),
                      name=f"ejabberd[{name}]")
    env = EXAMPLE_PUSHGATE_ENV if example and pushgate_env is None else (pushgate_env or {})
    pg = endpoint = None
    try:
        server.start()
        pg = Pushgate(server, PUSH_JID, "ejabberd-component-secret", name=f"pushgate[{name}]",
                      extra_toml=pushgate_toml)
        endpoint = WebPushEndpoint(vapid_public_key=pg.vapid_public,
                                   vapid_subject=VAPID_SUBJECT).start()
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            pg.start()
        yield server, pg, endpoint
    finally:
        if pg is not None:
            pg.cleanup()
        if endpoint is not None:
            endpoint.stop()
        server.stop()


@pytest.fixture(scope="module")
def default_stack():
    with ejabberd_stack("ejabberd") as stack:
        yield stack


def test_tigase_dialect_message_is_pushed_as_an_alert(connect_factory, default_stack):
    server, pg, endpoint = default_stack
    dev = endpoint.new_device()
    push_offline(connect_factory(server, "alice"), dev)
    bob = connect_factory(server, "bob")
    bob.send_message("alice@localhost", "hello through ejabberd")
    (d,) = endpoint.wait_for(dev)
    assert d.status == 201 and d.vapid_error is None and d.decrypt_error is None, d.summary()
    assert d.headers.get("urgency") == "high", d.summary()
    # The example's include_body is the text "New message", not the real body.
    assert d.payload["kind"] == "alert" and d.payload["body"] == "New message", d.summary()


def test_p2_dialect_message_is_pushed_without_content(connect_factory, default_stack):
    server, pg, endpoint = default_stack
    dev = endpoint.new_device()
    carol = connect_factory(server, "carol")
    node, secret = register_p2(carol, dev, "phone-1")
    carol.enable_push(PUSH_JID, node, secret)
    carol.disconnect()
    bob = connect_factory(server, "bob")
    bob.send_message("carol@localhost", "for conversations")
    (d,) = endpoint.wait_for(dev)
    assert d.status == 201, d.summary()
    assert "body" not in d.payload and d.payload.get("account"), d.summary()


def message_to_failing_phone(connect_factory, stack, user: str, status: int):
    """`user`'s phone sleeps with push enabled and its push service answers `status`; bob sends
    `user` a message. Returns the device, bob, ejabberd's log offset from just before the
    message, and pushgate's outcomes for it."""
    server, pg, endpoint = stack
    dev = endpoint.new_device()
    push_offline(connect_factory(server, user), dev)
    endpoint.set_status(dev, status)
    since, since_server = pg.log.offset(), server.log.offset()
    bob = connect_factory(server, "bob")
    bob.send_message(f"{user}@localhost", f"to {user}'s phone")
    return dev, bob, since_server, pg.wait_outcomes(since)


def test_dead_token_removes_the_registration_and_ejabberd_disables_push(connect_factory, default_stack):
    server, _, _ = default_stack
    _, _, since_server, outcomes = message_to_failing_phone(connect_factory, default_stack,
                                                            "dave", 410)
    assert outcomes == ["dead_token"]
    server.log.wait_for(DISABLED_LINE, since=since_server, what="ejabberd disabling push")


def test_provider_outage_keeps_the_registration(connect_factory, default_stack):
    """The push service answers 503: the notification is queued (ejabberd gets `result` and
    keeps the registration) and arrives after the recovery."""
    server, pg, endpoint = default_stack
    dev, bob, since_server, outcomes = message_to_failing_phone(connect_factory, default_stack,
                                                                "erin", 503)
    assert outcomes == ["queued"]
    endpoint.set_status(dev, 201)
    endpoint.wait_for_body(dev, "New message", diagnostics=diagnostics)  # include_body's text
    since = pg.log.offset()
    bob.send_message("erin@localhost", "after the outage")
    assert pg.wait_outcomes(since) == ["delivered"]
    assert DISABLED_LINE not in server.log.text(since_server), server.log.text(since_server)


def test_include_body_false_sends_bare_notifications_that_are_alerts(connect_factory):
    """ejabberd with `include_body: false` (the example before issue 13): every message becomes a
    bare notification; each is pushed as an alert and none is held back as a wake-up."""
    with ejabberd_stack("ejabberd-no-body", {"include_body": "false"}) as (server, pg, endpoint):
        dev = endpoint.new_device()
        push_offline(connect_factory(server, "alice"), dev)
        bob = connect_factory(server, "bob")
        for i in range(3):
            bob.send_message("alice@localhost", f"secret {i}")
        got = endpoint.wait_for(dev, count=3)
        assert [d.payload["kind"] for d in got] == ["alert"] * 3, [d.summary() for d in got]
        assert all(d.headers.get("urgency") == "high" for d in got)
        assert all("secret" not in str(d.payload) for d in got), "ejabberd sent no body"
    

def test_two_instances_side_by_side_and_a_rolling_restart(connect_factory):
    """ejabberd accepts a second connection of the component and spreads the publishes over
    both: a second instance (same database and VAPID key) joins, the first is stopped with
    SIGTERM while messages flow, and every message is pushed; no registration is disabled."""
    with ejabberd_stack("ejabberd-two") as (server, a, endpoint):
        dev = endpoint.new_device()
        push_offline(connect_factory(server, "alice"), dev)
        bob = connect_factory(server, "bob")
        since_server = server.log.offset()
        b = Pushgate(server, PUSH_JID, "ejabberd-component-secret", name="pushgate[ejabberd-b]")
        b.data_dir, b.vapid_key_path, b.vapid_key = a.data_dir, a.vapid_key_path, a.vapid_key
        b.write_config()
        try:
            with pytest.MonkeyPatch.context() as mp:
                for key, value in EXAMPLE_PUSHGATE_ENV.items():
                    mp.setenv(key, value)
                b.start()
            sent = []
            for i in range(40):
                if i == 20:
                    a.stop()        # SIGTERM: finishes what it has in flight
                body = f"side by side {i}"
                bob.send_message("alice@localhost", body)
                sent.append(body)
                time.sleep(0.05)
            got = endpoint.wait_for(dev, count=len(sent), timeout=20)
            assert sorted(d.payload.get("body") for d in got) == ["New message"] * len(sent)
            assert len(got) == len(sent), [d.summary() for d in got]
            assert DISABLED_LINE not in server.log.text(since_server)
        finally:
            b.cleanup()


def test_pushgate_comes_back_after_an_ejabberd_restart(connect_factory):
    with ejabberd_stack("ejabberd-restart") as (server, pg, endpoint):
        dev = endpoint.new_device()
        push_offline(connect_factory(server, "alice"), dev)
        since = pg.log.offset()
        server.stop(cleanup=False)
        time.sleep(3)               # pushgate knocks at a closed port meanwhile
        server.start()
        pg.log.wait_for("component connected", since=since, timeout=10)
        # Every retry while the server was away came within a second (a schedule, not a speed).
        delays = [int(m.group(1)) for m in pg.log.find_all(r"reconnecting delay_ms=(\d+)", since)]
        assert len(delays) >= 3 and max(delays) <= 1000, delays
        bob = connect_factory(server, "bob")
        bob.send_message("alice@localhost", "after the restart")
        (d,) = endpoint.wait_for(dev)
        assert d.status == 201 and d.payload["kind"] == "alert", d.summary()


def test_unregister_by_command_and_by_rest_through_ejabberd(connect_factory):
    port = free_port()
    with ejabberd_stack("ejabberd-unregister",
                        pushgate_toml=f'[http]\nlisten = "127.0.0.1:{port}"\n') as stack:
        server, pg, endpoint = stack
        alice = connect_factory(server, "alice")
        by_command, by_rest = endpoint.new_device(), endpoint.new_device()
        register_tigase(alice, by_command)
        register_tigase(alice, by_rest)

        def unregister(dev):
            return alice.command(PUSH_JID, "unregister-device",
                                 form=submit_form({"provider": "webpush", "device-token": dev.url}))

        assert unregister(by_command).status == "completed"
        status, answer = http("POST", f"http://127.0.0.1:{port}/unregister-device/{PUSH_JID}",
                              {"account": "alice@localhost", "provider": "webpush",
                               "device-token": by_rest.url})
        assert (status, answer) == (200, {"result": "success"})
        for dev in (by_command, by_rest):
            err = expect_error(unregister, dev)
            assert err.condition == "item-not-found", err
