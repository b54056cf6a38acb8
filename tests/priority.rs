//! Which publishes count as messages and which as wakes, and that only a delivered push uses up
//! a device's low-priority interval. A test binary of its own because `coalescing.rs` counts the
//! process-wide coalesced publishes exactly.
//!
//! Publishes go through pushgate's real router, store (SQLite) and WebPush provider to a local
//! push service whose answer the test sets.

mod common;

const LOW_INTERVAL_10S: &str = "[component]\njid = \"push.test\"\nsecret = \"s\"\n\
     [registration]\nlow_priority_interval_secs = 10\n";
const WEBPUSH: &str =
    "[providers.webpush]\nkind = \"webpush\"\nallow_http = true\nallow_private_addresses = true\n";

/// A Tigase-dialect WebPush device of alice@example.org at `url`; its node.
async fn device(gw: &common::TestGateway, url: String) -> String {
    common::webpush_device(gw, "alice@example.org", url).await
}

/// A publish from alice's server: with a summary form but no body (Prosody's chat state), or
/// with no summary form at all (ejabberd with `include_body: false`).
fn wake(node: &str, with_summary: bool) -> common::Request {
    let summary: &[(&str, &str)] = if with_summary {
        &[("message-count", "1")]
    } else {
        &[]
    };
    common::requester("example.org").publish(Some(node), None, summary)
}

#[tokio::test]
async fn a_push_that_was_not_delivered_does_not_use_up_the_interval() {
    let gw = common::TestGateway::sqlite(&format!("{LOW_INTERVAL_10S}{WEBPUSH}")).await;
    let endpoint = common::PushEndpoint::start().await;
    let node = device(&gw, endpoint.url("d1")).await;

    endpoint.answer_with(503);
    let reply = common::ask(&gw, wake(&node, true)).await;
    assert!(
        common::is_result(&reply),
        "a push service in trouble: queued for retry"
    );
    assert_eq!(endpoint.received(), 1);
    assert_eq!(gw.core.store.queue_depth().await.unwrap().rows, 1);

    // Within the interval, the next low-priority push still goes: the first never arrived.
    endpoint.answer_with(201);
    assert!(common::is_result(
        &common::ask(&gw, wake(&node, true)).await
    ));
    assert_eq!(endpoint.received(), 2, "the failed push did not count");
    // That one was delivered, so the interval now holds.
    assert!(common::is_result(
        &common::ask(&gw, wake(&node, true)).await
    ));
    assert_eq!(endpoint.received(), 2, "coalesced after a delivered push");
}

#[tokio::test]
async fn notifications_without_a_summary_are_messages_unless_the_server_is_listed() {
    // By default every summary-less notification is a message: none is held back.
    let gw = common::TestGateway::sqlite(&format!("{LOW_INTERVAL_10S}{WEBPUSH}")).await;
    let endpoint = common::PushEndpoint::start().await;
    let node = device(&gw, endpoint.url("d1")).await;
    for _ in 0..3 {
        assert!(common::is_result(
            &common::ask(&gw, wake(&node, false)).await
        ));
    }
    assert_eq!(endpoint.received(), 3, "three messages, three pushes");

    // A server listed in background_without_summary sends wakes: coalesced like chat states.
    let gw = common::TestGateway::sqlite(&format!(
        "{LOW_INTERVAL_10S}background_without_summary = [\"example.org\"]\n{WEBPUSH}"
    ))
    .await;
    let endpoint = common::PushEndpoint::start().await;
    let node = device(&gw, endpoint.url("d1")).await;
    for _ in 0..3 {
        assert!(common::is_result(
            &common::ask(&gw, wake(&node, false)).await
        ));
    }
    assert_eq!(endpoint.received(), 1, "one wake per interval");
}
