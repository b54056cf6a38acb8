"""ejabberd's own configurations: the shipped etc/examples/ejabberd.yml followed literally, and
`include_body: false`. The scenarios every server must pass (both dialects, dead token, outage,
refusals, restarts, unregistering, a rolling restart under load) run on ejabberd and Prosody
alike in the other modules.

The example's summary has a fixed `last-message-body` text and no `message-count`; with
`include_body: false` ejabberd sends a bare `<notification/>` for every message.
"""

from __future__ import annotations

from conftest import running_stack
from scenario import push_offline

# etc/examples/ejabberd.yml, followed literally: a fixed include_body text, mod_client_state and
# mod_push_keepalive, and pushgate told that this server's summary-less notifications are wakes.
EXAMPLE_PUSH = {"include_body": '"New message"', "include_sender": "false"}
EXAMPLE_MODULES = ("mod_client_state", "mod_push_keepalive")
EXAMPLE_PUSHGATE_ENV = {"PUSHGATE_REGISTRATION__BACKGROUND_WITHOUT_SUMMARY": '["localhost"]'}


def example_config(server):
    server.push_options = EXAMPLE_PUSH
    server.extra_modules = EXAMPLE_MODULES


def test_the_shipped_example_pushes_a_message_as_an_alert(connect_factory):
    with running_stack("ejabberd-example", kind="ejabberd", configure=example_config,
                       pushgate_env=EXAMPLE_PUSHGATE_ENV) as (s, endpoint):
        dev = endpoint.new_device()
        push_offline(connect_factory(s.server, "alice"), dev)
        connect_factory(s.server, "bob").send_message("alice@localhost", "hello through ejabberd")
        (d,) = endpoint.wait_for(dev)
        assert d.status == 201 and d.vapid_error is None and d.decrypt_error is None, d.summary()
        assert d.headers.get("urgency") == "high", d.summary()
        # The example's include_body is the text "New message", not the real body, and it
        # sends no sender.
        assert d.payload["kind"] == "alert" and d.payload["body"] == "New message", d.summary()
        assert "sender" not in d.payload, d.summary()


def test_include_body_false_sends_bare_notifications_that_are_alerts(connect_factory):
    """ejabberd with `include_body: false` (the example before issue 13): every message becomes a
    bare notification; each is pushed as an alert and none is held back as a wake-up."""
    def no_body(server):
        server.push_options = {"include_body": "false"}

    with running_stack("ejabberd-no-body", kind="ejabberd",
                       configure=no_body) as (s, endpoint):
        dev = endpoint.new_device()
        push_offline(connect_factory(s.server, "alice"), dev)
        bob = connect_factory(s.server, "bob")
        for i in range(3):
            bob.send_message("alice@localhost", f"secret {i}")
        got = endpoint.wait_for(dev, count=3)
        assert [d.payload["kind"] for d in got] == ["alert"] * 3, [d.summary() for d in got]
        assert all(d.headers.get("urgency") == "high" for d in got)
        assert all("secret" not in str(d.payload) for d in got), "ejabberd sent no body"
