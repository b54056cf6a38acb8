//! The durable retry queue: a publish whose delivery fails for now is queued in the database and
//! answered `result`, and the retry worker delivers it after the push service recovers; a dead
//! token on retry removes the registration; notifications expire by their time to live; the
//! queue is bounded; a database that does not take the row gets `wait` by the deadline; the
//! queue survives a restart and instances sharing PostgreSQL deliver each notification once.
//!
//! Publishes go through pushgate's real router, store (SQLite file or PostgreSQL) and WebPush
//! provider to a local push service whose answers the test sets; the worker is pushgate's own
//! (`core::retry::spawn`).

#[macro_use]
mod common;

use std::future::Future;
use std::time::Duration;

use pushgate::core::retry;
use pushgate::ids::{DeviceIdentity, DeviceToken, ProviderId};
use pushgate::metrics::METRICS;
use tokio::sync::watch;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

const CONFIG: &str = "[component]\njid = \"push.test\"\nsecret = \"s\"\n\
     [registration]\nlow_priority_interval_secs = 0\n\
     [providers.webpush]\nkind = \"webpush\"\nallow_http = true\nallow_private_addresses = true\n";

fn config_with(retry: &str) -> String {
    format!("{CONFIG}[retry]\n{retry}\n")
}

async fn on_sqlite<F, Fut>(scenario: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let url = pushgate::storage::Store::sqlite_url_in(dir.path()).unwrap();
    scenario(url).await;
}

async fn on_postgres<F, Fut>(scenario: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    common::with_fresh_postgres("pushgate_retry", scenario).await;
}

/// A Tigase-dialect WebPush device of `user`@example.org at `url`; its node.
async fn device(gw: &common::TestGateway, user: &str, url: String) -> String {
    common::webpush_device(gw, &format!("{user}@example.org"), url).await
}

/// A message notification from example.org for `node`.
async fn message(gw: &common::TestGateway, node: &str, body: &str) -> xmpp_parsers::iq::Iq {
    let summary = [("message-count", "1"), ("last-message-body", body)];
    common::ask(
        gw,
        common::requester("example.org").publish(Some(node), None, &summary),
    )
    .await
}

/// A wake-up (a summary without a body, as Prosody sends for a chat state): low priority.
async fn wake(gw: &common::TestGateway, node: &str) -> xmpp_parsers::iq::Iq {
    let summary = [("message-count", "1")];
    common::ask(
        gw,
        common::requester("example.org").publish(Some(node), None, &summary),
    )
    .await
}

/// Starts `gw`'s retry worker; it stops when the returned sender says so or is dropped.
fn start_worker(gw: &common::TestGateway) -> watch::Sender<bool> {
    let (stop, rx) = watch::channel(false);
    retry::spawn(gw.core.clone(), rx);
    stop
}

async fn queued(gw: &common::TestGateway) -> u64 {
    gw.core.store.queue_depth().await.unwrap().rows
}

/// Waits (up to 30 s) until `done` holds.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < until,
            "not within 30 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_wait(reply: &xmpp_parsers::iq::Iq) {
    assert_eq!(common::error_of(reply).0, ErrorType::Wait, "{reply:?}");
}

on_both_backends!(
    a_failed_delivery_is_answered_result_and_delivered_after_recovery,
    a_device_named_in_the_request_is_queued_and_retried_too,
    a_dead_token_on_retry_removes_the_registration,
    unregistering_drops_what_was_queued,
    the_queue_survives_a_restart,
);

async fn a_failed_delivery_is_answered_result_and_delivered_after_recovery(url: String) {
    let gw = common::TestGateway::at(&url, CONFIG).await;
    let endpoint = common::PushEndpoint::start().await;
    let node = device(&gw, "alice", endpoint.url("d1")).await;

    endpoint.answer_with(503);
    for body in ["one", "two", "three"] {
        let reply = message(&gw, &node, body).await;
        assert!(common::is_result(&reply), "queued, so answered: {reply:?}");
    }
    assert_eq!(endpoint.received(), 3, "each was tried at once");
    assert_eq!(endpoint.accepted_for("d1"), 0);
    assert_eq!(queued(&gw).await, 3);

    let _worker = start_worker(&gw);
    endpoint.answer_with(201);
    eventually("the three messages delivered", || async {
        endpoint.accepted_for("d1") == 3
    })
    .await;
    eventually("the queue emptied", || async { queued(&gw).await == 0 }).await;
    assert_eq!(endpoint.accepted_for("d1"), 3, "and none twice");
}

/// A device pushgate does not keep (a Matrix pusher names its token in every request) is
/// queued with its device and retried like a registration, and nothing is stored about it
/// besides the queued row.
async fn a_device_named_in_the_request_is_queued_and_retried_too(url: String) {
    use pushgate::core::delivery::{self, Outcome};
    use pushgate::core::target::Target;
    use pushgate_providers::{Content, Device, Kind, Notification, Priority};

    let gw = common::TestGateway::at(&url, CONFIG).await;
    let endpoint = common::PushEndpoint::start().await;
    let device = Device {
        provider: ProviderId::new("webpush"),
        token: DeviceToken::new(endpoint.url("named")),
        second_token: None,
        webpush_keys: None,
    };
    let notification = Notification {
        content: Content {
            body: Some("from a homeserver".into()),
            ..Content::default()
        },
        ..Notification::new(Kind::Alert, Priority::High)
    };
    endpoint.answer_with(503);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let outcome = delivery::deliver(&gw.core, Target::Named(&device), notification, deadline)
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Queued);
    assert_eq!(queued(&gw).await, 1);
    assert_eq!(
        gw.core.store.count().await.unwrap(),
        0,
        "no registration made"
    );

    let _worker = start_worker(&gw);
    endpoint.answer_with(201);
    eventually("delivered by the retry", || async {
        endpoint.accepted_for("named") == 1
    })
    .await;
    eventually("the queue emptied", || async { queued(&gw).await == 0 }).await;
}

async fn a_dead_token_on_retry_removes_the_registration(url: String) {
    let gw = common::TestGateway::at(&url, CONFIG).await;
    let endpoint = common::PushEndpoint::start().await;
    let node = device(&gw, "alice", endpoint.url("d1")).await;
    endpoint.answer_with(503);
    assert!(common::is_result(&message(&gw, &node, "hi").await));

    endpoint.answer_with(410);
    let _worker = start_worker(&gw);
    eventually("the registration removed", || async {
        gw.core.store.find_by_node(&node).await.unwrap().is_none()
    })
    .await;
    assert_eq!(queued(&gw).await, 0, "its queued notification went with it");
    let reply = message(&gw, &node, "again").await;
    assert_eq!(
        common::error_of(&reply).1,
        DefinedCondition::ItemNotFound,
        "the server's next publish learns the device is gone"
    );
}

async fn unregistering_drops_what_was_queued(url: String) {
    let gw = common::TestGateway::at(&url, CONFIG).await;
    let endpoint = common::PushEndpoint::start().await;
    let token = endpoint.url("d1");
    let node = device(&gw, "alice", token.clone()).await;
    endpoint.answer_with(503);
    assert!(common::is_result(&message(&gw, &node, "hi").await));
    assert_eq!(queued(&gw).await, 1);

    let removed = gw
        .core
        .store
        .unregister(
            &ProviderId::new("webpush"),
            &"alice@example.org".parse().unwrap(),
            &DeviceIdentity::Token(DeviceToken::new(token)),
        )
        .await
        .unwrap();
    assert!(removed.is_some());
    assert_eq!(
        queued(&gw).await,
        0,
        "nothing is pushed to an unregistered device"
    );
}

async fn the_queue_survives_a_restart(url: String) {
    let endpoint = common::PushEndpoint::start().await;
    let first = common::TestGateway::at(&url, CONFIG).await;
    let node = device(&first, "alice", endpoint.url("d1")).await;
    endpoint.answer_with(503);
    assert!(common::is_result(&message(&first, &node, "hi").await));
    drop(first);

    endpoint.answer_with(201);
    let second = common::TestGateway::at(&url, CONFIG).await;
    let _worker = start_worker(&second);
    eventually("delivered by the restarted instance", || async {
        endpoint.accepted_for("d1") == 1
    })
    .await;
}

/// Every notification is delivered exactly once when two instances' workers share the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_postgres_deliver_each_notification_once() {
    on_postgres(|url| async move {
        let one = common::TestGateway::at(&url, CONFIG).await;
        let two = one.another().await;
        let endpoint = common::PushEndpoint::start().await;
        let mut nodes = Vec::new();
        for i in 0..20 {
            nodes.push(device(&one, &format!("user{i}"), endpoint.url(&format!("d{i}"))).await);
        }
        endpoint.answer_with(503);
        for node in &nodes {
            for body in ["a", "b"] {
                assert!(common::is_result(&message(&one, node, body).await));
            }
        }
        assert_eq!(queued(&one).await, 40);

        endpoint.answer_with(201);
        let _w1 = start_worker(&one);
        let _w2 = start_worker(&two);
        eventually("the queue emptied", || async { queued(&one).await == 0 }).await;
        for i in 0..20 {
            assert_eq!(endpoint.accepted_for(&format!("d{i}")), 2, "device d{i}");
        }
    })
    .await;
}

/// A push service's Retry-After is when the next attempt comes at the earliest.
#[tokio::test]
async fn retry_after_decides_when_the_retry_is_due() {
    let gw = common::TestGateway::sqlite(CONFIG).await;
    let endpoint = common::PushEndpoint::start().await;
    let node = device(&gw, "alice", endpoint.url("d1")).await;
    endpoint.answer_with(503);
    endpoint.retry_after(120);
    assert!(common::is_result(&message(&gw, &node, "hi").await));

    let now = chrono::Utc::now().timestamp_millis();
    let store = &gw.core.store;
    let lease = now + 600_000;
    assert!(
        store
            .claim_due(now + 60_000, lease, 10)
            .await
            .unwrap()
            .is_empty(),
        "not due within a minute"
    );
    assert_eq!(
        store
            .claim_due(now + 180_000, lease, 10)
            .await
            .unwrap()
            .len(),
        1,
        "due within three"
    );
}

/// A notification that cannot be delivered within its time to live is dropped and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_notifications_expire() {
    let gw = common::TestGateway::sqlite(&config_with("message_ttl_secs = 3")).await;
    let endpoint = common::PushEndpoint::start().await;
    let node = device(&gw, "alice", endpoint.url("d1")).await;
    let expired = || METRICS.retry_expired.with_label_values(&["alert"]).get();
    let before = expired();
    endpoint.answer_with(503);
    assert!(common::is_result(&message(&gw, &node, "hi").await));

    let _worker = start_worker(&gw);
    eventually("expired", || async { queued(&gw).await == 0 }).await;
    assert_eq!(expired(), before + 1);
    assert!(endpoint.received() >= 2, "retried before it expired");
    assert_eq!(endpoint.accepted_for("d1"), 0);
    assert!(
        gw.core.store.find_by_node(&node).await.unwrap().is_some(),
        "the registration stays"
    );
}

/// Beyond `max_queued_per_device`, and beyond `max_queued` in all, a failed delivery is
/// answered `wait` as without a queue.
#[tokio::test]
async fn the_queue_is_bounded_per_device_and_in_total() {
    let gw = common::TestGateway::sqlite(&config_with("max_queued_per_device = 2\nmax_queued = 3"))
        .await;
    let endpoint = common::PushEndpoint::start().await;
    let alice = device(&gw, "alice", endpoint.url("d1")).await;
    let bob = device(&gw, "bob", endpoint.url("d2")).await;
    endpoint.answer_with(503);
    assert!(common::is_result(&message(&gw, &alice, "1").await));
    assert!(common::is_result(&message(&gw, &alice, "2").await));
    assert_wait(&message(&gw, &alice, "3").await);
    assert!(common::is_result(&message(&gw, &bob, "1").await));
    assert_wait(&message(&gw, &bob, "2").await);
    assert_eq!(queued(&gw).await, 3);
}

/// `max_queued = 0` turns the queue off: a failed delivery is answered `wait`.
#[tokio::test]
async fn without_a_queue_a_failed_delivery_is_answered_wait() {
    let gw = common::TestGateway::sqlite(&config_with("max_queued = 0")).await;
    let endpoint = common::PushEndpoint::start().await;
    let node = device(&gw, "alice", endpoint.url("d1")).await;
    endpoint.answer_with(503);
    assert_wait(&message(&gw, &node, "hi").await);
    assert_eq!(queued(&gw).await, 0);
}

/// Only the newest wake-up of a device waits in the queue; messages all do.
#[tokio::test]
async fn a_newer_wake_up_replaces_the_queued_one() {
    let gw = common::TestGateway::sqlite(CONFIG).await;
    let endpoint = common::PushEndpoint::start().await;
    let node = device(&gw, "alice", endpoint.url("d1")).await;
    endpoint.answer_with(503);
    for _ in 0..3 {
        assert!(common::is_result(&wake(&gw, &node).await));
    }
    assert_eq!(queued(&gw).await, 1);
    assert!(common::is_result(&message(&gw, &node, "hi").await));
    assert_eq!(queued(&gw).await, 2);
}

/// A database that does not take the queued row in time gets the publish answered `wait` by
/// its deadline, not after the database's own timeouts (SQLite waits up to 10 s for a lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_queue_gets_wait_by_the_deadline() {
    use sea_orm::{ConnectionTrait, Database};

    let gw = common::TestGateway::sqlite(CONFIG).await;
    let endpoint = common::PushEndpoint::start().await;
    let node = device(&gw, "alice", endpoint.url("d1")).await;
    endpoint.answer_with(503);
    // Another process holds the write lock: lookups still work (WAL), writes wait.
    let other = Database::connect(gw.url.as_str()).await.unwrap();
    other.execute_unprepared("BEGIN EXCLUSIVE").await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let stanza = common::requester("example.org").publish(
        Some(&node),
        None,
        &[("message-count", "1"), ("last-message-body", "hi")],
    );
    let reply = tokio::time::timeout(
        Duration::from_secs(4),
        pushgate::fronts::xmpp::router::handle(&gw, stanza.into(), deadline),
    )
    .await
    .expect("answered by the deadline, with a second to spare")
    .expect("a reply");
    let xmpp_parsers::stanza::Stanza::Iq(iq) = reply else {
        panic!("not an iq: {reply:?}");
    };
    assert_wait(&iq);
    other.execute_unprepared("ROLLBACK").await.unwrap();
    assert_eq!(queued(&gw).await, 0);
}

/// What a server sends is queued no larger than what a provider can deliver: a text is kept to
/// its first 4096 characters (providers cut from the end to fit 4096 bytes anyway).
#[tokio::test]
async fn a_huge_message_is_queued_cut_to_what_can_be_delivered() {
    let gw = common::TestGateway::sqlite(CONFIG).await;
    let endpoint = common::PushEndpoint::start().await;
    let node = device(&gw, "alice", endpoint.url("d1")).await;
    endpoint.answer_with(503);
    let body = "é".repeat(100_000);
    assert!(common::is_result(&message(&gw, &node, &body).await));

    let now = chrono::Utc::now().timestamp_millis();
    let rows = gw
        .core
        .store
        .claim_due(now + 3_600_000, now + 7_200_000, 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let stored: pushgate_providers::Notification =
        serde_json::from_str(&rows[0].notification).unwrap();
    assert_eq!(stored.content.body.as_deref(), Some(&body[..4096 * 2]));
}
