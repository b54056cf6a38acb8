//! The registration store against real databases: every scenario runs on the embedded SQLite
//! file and on PostgreSQL, because the two differ exactly where it matters (unique-violation
//! reporting, timestamp types, concurrency) and production may use either.
//!
//! PostgreSQL is required (CI provides it at 127.0.0.1:5432 with trust auth): each test creates
//! its own database and drops it afterwards, so parallel tests and reruns never collide.

use std::future::Future;
use std::time::Duration;

use pushgate::ids::{BareJid, DeviceIdentity, DeviceToken, Dialect, ProviderId};
use pushgate::storage::{Admission, DeliveryLog, NewRegistration, Registration, Store, StoreError};
use pushgate_providers::WebPushKeys;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

#[macro_use]
mod common;
use common::{RegisterAny, raw_connect, stored};

// ---------------------------------------------------------------------------------------------
// Harness

/// Logs go to the test's captured output; `RUST_LOG=pushgate=debug` shows the store's decisions.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Runs `scenario` with the URL of a fresh SQLite database in a temporary directory.
async fn on_sqlite<F, Fut>(scenario: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let url = Store::sqlite_url_in(&data_dir).unwrap();
    assert!(data_dir.is_dir(), "sqlite_url_in must create the data dir");
    assert!(url.starts_with("sqlite://") && url.ends_with("pushgate.db?mode=rwc"));
    scenario(url).await;
}

/// Runs `scenario` with the URL of a fresh, empty PostgreSQL database, dropped afterwards.
async fn on_postgres<F, Fut>(scenario: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    init_tracing();
    common::with_fresh_postgres("pushgate_t", scenario).await;
}

on_both_backends!(
    register_issues_credentials,
    reregistering_keeps_node_and_secret,
    distinct_devices_get_distinct_nodes,
    find_by_node_is_exact,
    unregister_removes_once,
    delete_removes_once,
    delivery_outcomes_are_recorded,
    concurrent_registrations_converge,
    reopening_keeps_data,
    corrupt_rows_are_errors,
    credentials_are_upserted_and_listed_by_age,
    cached_lookups_see_this_instances_changes,
    dead_token_removal_spares_a_new_token,
    batches_are_inserted_whole_or_not_at_all,
    pending_successes_are_written_at_shutdown,
    a_burst_of_registrations_converges_per_device,
    concurrent_lookups_each_find_their_own,
    the_account_limit_counts_new_devices_only,
    the_account_limit_holds_across_instances_and_batches,
    lookups_read_every_field_as_stored,
    a_lookup_sees_what_another_instance_just_committed,
);

// ---------------------------------------------------------------------------------------------
// Fixtures

fn jid(s: &str) -> BareJid {
    BareJid::new(s).unwrap()
}

fn tigase(account: &str, token: &str) -> NewRegistration {
    NewRegistration {
        dialect: Dialect::Tigase,
        provider: ProviderId::new("tigase:messenger:apns:1"),
        account: jid(account),
        device_id: None,
        muc: None,
        token: DeviceToken::new(token),
        second_token: None,
        webpush_keys: None,
    }
}

fn p2(account: &str, device_id: &str, muc: Option<&str>, token: &str) -> NewRegistration {
    NewRegistration {
        dialect: Dialect::P2,
        provider: ProviderId::new("fcm-http-v1"),
        account: jid(account),
        device_id: Some(device_id.to_owned()),
        muc: muc.map(jid),
        token: DeviceToken::new(token),
        second_token: None,
        webpush_keys: None,
    }
}

fn key_of(new: &NewRegistration) -> String {
    new.identity().key()
}

/// The device a stored registration is for, as a client unregistering it names it.
fn identity_of(r: &Registration) -> DeviceIdentity {
    DeviceIdentity::of(r.dialect, &r.token, r.device_id.as_deref(), r.muc.as_ref())
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn register_issues_credentials(url: String) {
    let store = Store::open(&url).await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.count().await.unwrap(), 0);

    let mut new = tigase("alice@example.org", "apns-token-0123456789abcdef");
    new.second_token = Some(DeviceToken::new("voip-token-0123456789abcdef"));
    let t = store.registered(new.clone()).await;
    assert_eq!(t.node.as_str().len(), 22);
    assert!(t.secret.is_none(), "Tigase registrations have no secret");
    assert_eq!(t.dialect, Dialect::Tigase);
    assert_eq!(t.account, jid("alice@example.org"));
    assert_eq!(t.domain, "example.org");
    assert_eq!(t.device_key, key_of(&new));
    assert_eq!(t.created_at, t.updated_at);
    assert!(t.last_success_at.is_none() && t.last_error_at.is_none() && t.last_error.is_none());
    let device = t.device();
    assert_eq!(device.provider, ProviderId::new("tigase:messenger:apns:1"));
    assert_eq!(device.token.as_str(), "apns-token-0123456789abcdef");
    assert_eq!(
        device.second_token.as_ref().map(DeviceToken::as_str),
        Some("voip-token-0123456789abcdef")
    );

    let mut new = p2(
        "bob@example.net",
        "android-1",
        None,
        "https://push.example/ep/1",
    );
    new.webpush_keys = Some(WebPushKeys {
        p256dh: "BP256dh-key".into(),
        auth: "auth-secret-16by".into(),
    });
    let p = store.registered(new).await;
    assert_eq!(p.node.as_str().len(), 22);
    let secret = p.secret.clone().expect("p2 registrations carry a secret");
    assert_eq!(secret.as_str().len(), 24);
    assert_eq!(p.domain, "example.net");
    assert_eq!(p.device_id.as_deref(), Some("android-1"));
    assert_eq!(
        p.device().webpush_keys,
        Some(WebPushKeys {
            p256dh: "BP256dh-key".into(),
            auth: "auth-secret-16by".into()
        })
    );
    assert_ne!(p.node, t.node);
    assert_ne!(p.id, t.id);
    assert_eq!(store.count().await.unwrap(), 2);

    // Debug output is for logs: no credential appears whole.
    let shown = format!("{p:?} {t:?}");
    for needle in [
        p.node.as_str(),
        t.node.as_str(),
        secret.as_str(),
        "apns-token-0123456789abcdef",
        "voip-token-0123456789abcdef",
        "https://push.example/ep/1",
        "auth-secret-16by",
    ] {
        assert!(!shown.contains(needle), "Debug leaks {needle}: {shown}");
    }
}

async fn reregistering_keeps_node_and_secret(url: String) {
    let store = Store::open(&url).await.unwrap();

    // Tigase: same token → same row; the second token is refreshed.
    let first = store.registered(tigase("alice@example.org", "tok-A")).await;
    let mut again = tigase("alice@example.org", "tok-A");
    again.second_token = Some(DeviceToken::new("voip-B"));
    let second = store.registered(again).await;
    assert_eq!(second.id, first.id);
    assert_eq!(second.node, first.node);
    assert_eq!(second.created_at, first.created_at);
    assert!(second.updated_at >= first.updated_at);
    assert_eq!(
        second.second_token.as_ref().map(DeviceToken::as_str),
        Some("voip-B")
    );

    // p2: same device id + muc, new token → same node and secret, new token.
    let room = Some("room@muc.example.org");
    let a = store
        .registered(p2("alice@example.org", "dev-1", room, "tok-old"))
        .await;
    let b = store
        .registered(p2("alice@example.org", "dev-1", room, "tok-new"))
        .await;
    assert_eq!(b.id, a.id);
    assert_eq!(b.node, a.node);
    assert_eq!(b.secret, a.secret);
    assert!(b.secret.is_some());
    assert_eq!(b.token.as_str(), "tok-new");

    // The stored row, not just the returned value, has the new token.
    let read = stored(&store, a.node.as_str()).await;
    assert_eq!(read.token.as_str(), "tok-new");
    assert_eq!(read.secret, a.secret);
    assert_eq!(store.count().await.unwrap(), 2);
}

async fn distinct_devices_get_distinct_nodes(url: String) {
    let store = Store::open(&url).await.unwrap();
    let regs = [
        p2("alice@example.org", "dev-1", None, "tok"),
        p2(
            "alice@example.org",
            "dev-1",
            Some("room1@muc.example.org"),
            "tok",
        ),
        p2(
            "alice@example.org",
            "dev-1",
            Some("room2@muc.example.org"),
            "tok",
        ),
        p2("alice@example.org", "dev-2", None, "tok"),
        p2("carol@example.org", "dev-1", None, "tok"),
        tigase("alice@example.org", "tok"),
        tigase("alice@example.org", "tok-2"),
        {
            let mut other_app = tigase("alice@example.org", "tok");
            other_app.provider = ProviderId::new("tigase:other:fcm:1");
            other_app
        },
    ];
    let mut nodes = Vec::new();
    let mut secrets = Vec::new();
    for new in regs.iter().cloned() {
        let r = store.registered(new).await;
        nodes.push(r.node.as_str().to_owned());
        secrets.extend(r.secret.map(|s| s.as_str().to_owned()));
    }
    let n = regs.len();
    nodes.sort();
    nodes.dedup();
    secrets.sort();
    secrets.dedup();
    assert_eq!(nodes.len(), n, "every device gets its own node");
    assert_eq!(secrets.len(), 5, "every p2 device gets its own secret");
    assert_eq!(store.count().await.unwrap(), n as u64);
}

async fn find_by_node_is_exact(url: String) {
    let store = Store::open(&url).await.unwrap();
    let r = store
        .registered(p2("alice@example.org", "dev-1", None, "tok-1"))
        .await;
    let other = store.registered(tigase("bob@example.org", "tok-2")).await;

    let found = stored(&store, r.node.as_str()).await;
    assert_eq!(found.id, r.id);
    assert_eq!(found.node, r.node);
    assert_eq!(found.secret, r.secret);
    assert_eq!(found.account, jid("alice@example.org"));
    assert_eq!(found.domain, "example.org");
    assert_eq!(stored(&store, other.node.as_str()).await.id, other.id);

    let mut wrong = r.node.as_str().to_owned();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'A' { 'B' } else { 'A' });
    assert!(store.find_by_node(&wrong).await.unwrap().is_none());
    assert!(
        store
            .find_by_node(&r.node.as_str()[..21])
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.find_by_node("").await.unwrap().is_none());
    assert!(
        store
            .find_by_node(&"x".repeat(10_000))
            .await
            .unwrap()
            .is_none()
    );
    // The secret is not a node.
    let secret = r.secret.as_ref().unwrap();
    assert!(store.find_by_node(secret.as_str()).await.unwrap().is_none());
}

async fn unregister_removes_once(url: String) {
    let store = Store::open(&url).await.unwrap();
    let t = store.registered(tigase("alice@example.org", "tok-1")).await;
    let p = store
        .registered(p2(
            "alice@example.org",
            "dev-1",
            Some("room@muc.example.org"),
            "tok-2",
        ))
        .await;
    let provider = ProviderId::new("tigase:messenger:apns:1");
    let alice = jid("alice@example.org");

    // Wrong provider or wrong account: nothing removed.
    assert!(
        store
            .unregister(&ProviderId::new("other"), &alice, &identity_of(&t))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .unregister(&provider, &jid("mallory@example.org"), &identity_of(&t))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.count().await.unwrap(), 2);

    // The removed registration's node comes back (for the remote-disable notification).
    assert_eq!(
        store
            .unregister(&provider, &alice, &identity_of(&t))
            .await
            .unwrap(),
        Some(t.node.clone())
    );
    assert!(
        store
            .unregister(&provider, &alice, &identity_of(&t))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.find_by_node(t.node.as_str()).await.unwrap().is_none());

    // p2 unregister knows the device id and room, not the token.
    let key = DeviceIdentity::Device {
        id: "dev-1".into(),
        muc: Some(jid("room@muc.example.org")),
    };
    assert_eq!(key.key(), p.device_key);
    let fcm = ProviderId::new("fcm-http-v1");
    assert!(
        store
            .unregister(&fcm, &alice, &key)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .unregister(&fcm, &alice, &key)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.count().await.unwrap(), 0);
}

async fn delete_removes_once(url: String) {
    let store = Store::open(&url).await.unwrap();
    let a = store.registered(tigase("alice@example.org", "tok-1")).await;
    let b = store.registered(tigase("alice@example.org", "tok-2")).await;
    assert!(store.delete(a.id).await.unwrap());
    assert!(!store.delete(a.id).await.unwrap());
    assert!(store.find_by_node(a.node.as_str()).await.unwrap().is_none());
    assert!(store.find_by_node(b.node.as_str()).await.unwrap().is_some());
    assert_eq!(store.count().await.unwrap(), 1);

    // A deleted device registering again gets a new node.
    let again = store.registered(tigase("alice@example.org", "tok-1")).await;
    assert_ne!(again.node, a.node);
    assert_eq!(store.count().await.unwrap(), 2);
}

async fn delivery_outcomes_are_recorded(url: String) {
    let store = Store::open(&url).await.unwrap();
    let r = store.registered(tigase("alice@example.org", "tok-1")).await;

    // Successes are batched: one row however often it was recorded, written at the flush.
    let log = DeliveryLog::default();
    log.success(r.id);
    log.success(r.id);
    assert_eq!(log.flush(&store).await, 1);
    assert_eq!(log.flush(&store).await, 0, "nothing left pending");
    let after = stored(&store, r.node.as_str()).await;
    let success_at = after.last_success_at.expect("last_success_at set");
    assert!(success_at >= r.created_at);
    assert!(after.last_error_at.is_none() && after.last_error.is_none());

    // Multi-byte characters: the cut is by characters, not bytes.
    let reason = "é".repeat(600);
    log.failure(r.id, "superseded");
    log.failure(r.id, &reason);
    assert_eq!(
        log.flush(&store).await,
        1,
        "the last reason of each registration"
    );
    let after = stored(&store, r.node.as_str()).await;
    let err = after.last_error.clone().expect("last_error set");
    assert_eq!(err.chars().count(), 500);
    assert!(err.chars().all(|c| c == 'é'));
    assert!(after.last_error_at.expect("last_error_at set") >= success_at);
    assert_eq!(after.last_success_at, Some(success_at), "success time kept");

    store
        .record_errors(&[r.id], "BadDeviceToken")
        .await
        .unwrap();
    let after = stored(&store, r.node.as_str()).await;
    assert_eq!(after.last_error.as_deref(), Some("BadDeviceToken"));

    // Id lists of any length (padded to a power of two inside) reach every row named, and only
    // those.
    let others: Vec<_> = futures::future::join_all(
        (0..3).map(|i| store.registered(tigase(&format!("o{i}@example.org"), &format!("t{i}")))),
    )
    .await;
    store
        .record_errors(&[others[0].id, others[1].id, others[2].id], "three")
        .await
        .unwrap();
    for o in &others {
        let o = stored(&store, o.node.as_str()).await;
        assert_eq!(o.last_error.as_deref(), Some("three"));
    }
    let after = stored(&store, r.node.as_str()).await;
    assert_eq!(after.last_error.as_deref(), Some("BadDeviceToken"));
    for o in &others {
        assert!(store.delete(o.id).await.unwrap());
    }

    // Recording for a registration that is gone is not an error.
    assert!(store.delete(r.id).await.unwrap());
    store.record_successes(&[r.id]).await.unwrap();
    store.record_errors(&[r.id], "late").await.unwrap();
    assert_eq!(store.count().await.unwrap(), 0);
}

/// Two store handles stand in for two pushgate instances on one database.
async fn concurrent_registrations_converge(url: String) {
    let a = Store::open(&url).await.unwrap();
    let b = Store::open(&url).await.unwrap();

    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .register_any(tigase("alice@example.org", "same-token"))
                .await
        }));
    }
    for i in 0..20 {
        let store = if i % 2 == 0 { b.clone() } else { a.clone() };
        tasks.push(tokio::spawn(async move {
            store
                .register_any(p2(
                    "alice@example.org",
                    "dev-1",
                    None,
                    &format!("token-{i}"),
                ))
                .await
        }));
    }
    let mut tigase_nodes = Vec::new();
    let mut p2_creds = Vec::new();
    for task in tasks {
        let r = task.await.unwrap().unwrap();
        match r.dialect {
            Dialect::Tigase => tigase_nodes.push((r.id, r.node.as_str().to_owned())),
            Dialect::P2 => p2_creds.push((
                r.id,
                r.node.as_str().to_owned(),
                r.secret.unwrap().as_str().to_owned(),
            )),
            Dialect::AppServer => unreachable!("only Tigase and p2 devices were registered"),
        }
    }
    assert_eq!(tigase_nodes.len(), 20);
    assert_eq!(p2_creds.len(), 20);
    tigase_nodes.dedup();
    p2_creds.dedup();
    assert_eq!(tigase_nodes.len(), 1, "one node for the Tigase device");
    assert_eq!(p2_creds.len(), 1, "one node and secret for the p2 device");
    assert_eq!(a.count().await.unwrap(), 2, "exactly one row per device");
    let registration = stored(&b, &p2_creds[0].1).await;
    assert!(registration.token.as_str().starts_with("token-"));
}

async fn reopening_keeps_data(url: String) {
    let (node, secret, id) = {
        let store = Store::open(&url).await.unwrap();
        let r = store
            .registered(p2("alice@example.org", "dev-1", None, "tok-1"))
            .await;
        (r.node, r.secret, r.id)
    };
    // Migrations run again on every open: they must find nothing to do and keep the data.
    let store = Store::open(&url).await.unwrap();
    let again = Store::open(&url).await.unwrap();
    assert_eq!(store.count().await.unwrap(), 1);
    let r = stored(&again, node.as_str()).await;
    assert_eq!(r.id, id);
    assert_eq!(r.secret, secret);
    let r = store
        .registered(p2("alice@example.org", "dev-1", None, "tok-2"))
        .await;
    assert_eq!((r.id, &r.node, &r.secret), (id, &node, &secret));
}

/// Rows edited behind pushgate's back must surface as errors, never as panics or as
/// registrations with missing credentials.
async fn corrupt_rows_are_errors(url: String) {
    let store = Store::open(&url).await.unwrap();
    let raw = raw_connect(&url).await;
    let mut nodes = Vec::new();
    for (i, sql) in [
        "UPDATE registrations SET dialect = 'bogus' WHERE id = {id}",
        "UPDATE registrations SET account = '@example.org' WHERE id = {id}",
        "UPDATE registrations SET muc = '' WHERE id = {id}",
        "UPDATE registrations SET secret = NULL WHERE id = {id}",
        "UPDATE registrations SET webpush_auth = 'only-auth' WHERE id = {id}",
    ]
    .into_iter()
    .enumerate()
    {
        let r = store
            .registered(p2("alice@example.org", &format!("dev-{i}"), None, "tok"))
            .await;
        let res = raw
            .execute_unprepared(&sql.replace("{id}", &r.id.to_string()))
            .await
            .unwrap();
        assert_eq!(res.rows_affected(), 1);
        nodes.push((r.id, r.node));
    }
    let expected = ["dialect", "account", "muc", "secret", "webpush keys"];
    for ((id, node), field) in nodes.iter().zip(expected) {
        match store.find_by_node(node.as_str()).await {
            Err(StoreError::Corrupt { id: got, field: f }) => {
                assert_eq!((got, f), (*id, field));
                let shown = StoreError::Corrupt { id: got, field: f }.to_string();
                assert!(!shown.contains(node.as_str()));
            }
            other => panic!("expected Corrupt({field}), got {other:?}"),
        }
    }
    // Re-registering a device whose row is corrupt fails cleanly too.
    let res = store
        .register_any(p2("alice@example.org", "dev-3", None, "tok"))
        .await;
    assert!(matches!(
        res,
        Err(StoreError::Corrupt {
            field: "secret",
            ..
        })
    ));
    assert_eq!(store.count().await.unwrap(), 5);
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL only: SQLite serves one instance; PostgreSQL may serve several starting together.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_migrate_once_postgres() {
    on_postgres(|url| async move {
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Store::open(&url).await })
            })
            .collect();
        let mut stores = Vec::new();
        for open in opens {
            stores.push(open.await.unwrap().unwrap());
        }
        let r = stores[0]
            .registered(tigase("alice@example.org", "tok"))
            .await;
        for s in &stores {
            assert_eq!(stored(s, r.node.as_str()).await.id, r.id);
        }
        let raw = raw_connect(&url).await;
        let applied = raw
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                "SELECT version FROM seaql_migrations",
            ))
            .await
            .unwrap();
        assert_eq!(
            applied.len(),
            pushgate_migrations::count(),
            "every migration recorded exactly once"
        );
    })
    .await;
}

/// Uploaded provider credentials: one row per provider, replaced in place, and listed by
/// `updated_at` so instances can apply only what changed since they last looked.
async fn credentials_are_upserted_and_listed_by_age(url: String) {
    use pushgate_providers::apns::Credentials;
    let store = Store::open(&url).await.unwrap();
    let id = ProviderId::new("tigase:messenger:apns:1");
    assert!(
        store
            .credentials_changed_since(None)
            .await
            .unwrap()
            .is_empty()
    );

    let first = Credentials::Certificate {
        cert_pem: "CERT-1".into(),
        key_pem: "KEY-1".into(),
    };
    let not_after = chrono::Utc::now() + chrono::Duration::days(30);
    let t1 = store
        .save_credentials(&id, &first, Some(not_after))
        .await
        .unwrap();
    let all = store.credentials_changed_since(None).await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].provider, id);
    assert_eq!(all[0].updated_at, t1);
    assert!(
        matches!(&all[0].credentials, Credentials::Certificate { cert_pem, .. } if cert_pem == "CERT-1")
    );
    assert!(all[0].not_after.is_some());
    assert!(
        store
            .credentials_changed_since(Some(t1))
            .await
            .unwrap()
            .is_empty()
    );

    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = Credentials::Token {
        key_pem: "P8".into(),
        key_id: "KEYID".into(),
        team_id: "TEAM".into(),
    };
    let t2 = store.save_credentials(&id, &second, None).await.unwrap();
    assert!(t2 > t1);
    let changed = store.credentials_changed_since(Some(t1)).await.unwrap();
    assert_eq!(changed.len(), 1, "replaced in place, not added");
    assert!(
        matches!(&changed[0].credentials, Credentials::Token { key_id, team_id, .. } if key_id == "KEYID" && team_id == "TEAM")
    );
    assert_eq!(changed[0].not_after, None);
}

/// The publish cache never hides a change made through the same store: a refreshed token, an
/// unregister, a removal.
async fn cached_lookups_see_this_instances_changes(url: String) {
    let store =
        Store::open(&url)
            .await
            .unwrap()
            .with_cache(100, 1 << 20, Duration::from_secs(3600));
    let r = store
        .registered(p2("juliet@capulet.example", "phone", None, "t1"))
        .await;
    let node = r.node.as_str().to_owned();
    // Only stores with a cache count cache hits; the other backend's run of this test may
    // count too, so assert growth, not an exact figure.
    let hits = || {
        pushgate::metrics::METRICS
            .registration_lookups
            .with_label_values(&["cache"])
            .get()
    };
    let before = hits();
    assert_eq!(stored(&store, &node).await.token.as_str(), "t1");
    let cached = stored(&store, &node).await;
    assert_eq!(cached.token.as_str(), "t1");
    assert!(hits() > before, "the second lookup came from the cache");
    // Same device, new token: the cached entry must not survive.
    store
        .registered(p2("juliet@capulet.example", "phone", None, "t2"))
        .await;
    assert_eq!(stored(&store, &node).await.token.as_str(), "t2");
    // A wrong node of the same length is not found even while the real one is cached.
    let mut wrong = node.clone();
    wrong.replace_range(0..1, if node.starts_with('A') { "B" } else { "A" });
    assert!(store.find_by_node(&wrong).await.unwrap().is_none());
    assert!(
        store
            .unregister(&r.provider, &r.account, &identity_of(&r))
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store.find_by_node(&node).await.unwrap().is_none(),
        "unregistered"
    );

    let r = store
        .registered(tigase("romeo@montague.example", "t3"))
        .await;
    assert!(store.find_by_node(r.node.as_str()).await.unwrap().is_some());
    assert!(store.delete(r.id).await.unwrap());
    assert!(
        store.find_by_node(r.node.as_str()).await.unwrap().is_none(),
        "deleted"
    );

    // Another instance's removal is only seen once the entry expires: that is the TTL's
    // documented trade-off.
    let cached =
        Store::open(&url)
            .await
            .unwrap()
            .with_cache(100, 1 << 20, Duration::from_millis(300));
    let other = Store::open(&url).await.unwrap();
    let r = store
        .registered(tigase("romeo@montague.example", "t4"))
        .await;
    assert!(
        cached
            .find_by_node(r.node.as_str())
            .await
            .unwrap()
            .is_some()
    );
    assert!(other.delete(r.id).await.unwrap());
    assert!(
        cached
            .find_by_node(r.node.as_str())
            .await
            .unwrap()
            .is_some(),
        "still cached"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        cached
            .find_by_node(r.node.as_str())
            .await
            .unwrap()
            .is_none(),
        "expired"
    );
}

/// A provider calls a token dead while the device registers a new one (perhaps through another
/// instance): the registration must survive.
async fn dead_token_removal_spares_a_new_token(url: String) {
    let store = Store::open(&url).await.unwrap();
    let old = store
        .registered(p2("juliet@capulet.example", "phone", None, "old"))
        .await;
    let new = store
        .registered(p2("juliet@capulet.example", "phone", None, "new"))
        .await;
    assert_eq!(old.id, new.id);
    assert!(
        !store.delete_if_token(&old).await.unwrap(),
        "token changed: kept"
    );
    assert_eq!(store.count().await.unwrap(), 1);
    assert!(store.delete_if_token(&new).await.unwrap());
    assert_eq!(store.count().await.unwrap(), 0);
}

async fn batches_are_inserted_whole_or_not_at_all(url: String) {
    let store = Store::open(&url).await.unwrap();
    let batch: Vec<_> = (0..1200)
        .map(|i| tigase("romeo@montague.example", &format!("token-{i}")))
        .collect();
    let stored = store.insert_batch(&batch).await.unwrap();
    assert_eq!(stored.len(), 1200);
    assert_eq!(store.count().await.unwrap(), 1200);
    let found = common::stored(&store, stored[1100].node.as_str()).await;
    assert_eq!(found.token.as_str(), "token-1100");
    // One device already registered: the whole batch is refused, nothing half-inserted.
    let again = vec![
        tigase("juliet@capulet.example", "fresh"),
        tigase("romeo@montague.example", "token-5"),
    ];
    assert!(store.insert_batch(&again).await.is_err());
    assert_eq!(store.count().await.unwrap(), 1200);
}

/// Delivery times still pending when pushgate shuts down are written, not dropped.
async fn pending_successes_are_written_at_shutdown(url: String) {
    let store = Store::open(&url).await.unwrap();
    let r = store
        .registered(tigase("romeo@montague.example", "t"))
        .await;
    let log = DeliveryLog::default();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let flusher = tokio::spawn(
        log.clone()
            .run(store.clone(), Duration::from_secs(3600), stopped),
    );
    // The first tick comes at once; record after it, so only the shutdown flush can write.
    tokio::time::sleep(Duration::from_millis(100)).await;
    log.success(r.id);
    let before = stored(&store, r.node.as_str()).await;
    assert!(before.last_success_at.is_none());
    stop.send(true).unwrap();
    flusher.await.unwrap();
    let after = stored(&store, r.node.as_str()).await;
    assert!(after.last_success_at.is_some());
}

/// Registrations arriving together share statements (group commit); the same device several
/// times in one burst still ends as one row, and every caller gets that row.
async fn a_burst_of_registrations_converges_per_device(url: String) {
    let store = Store::open(&url).await.unwrap();
    let asks = (0..300).map(|i| {
        let store = store.clone();
        let device = format!("phone{}", i % 100);
        async move {
            let token = format!("token-{i}");
            let r = store
                .registered(p2("juliet@capulet.example", &device, None, &token))
                .await;
            (device, r.id, r.node.as_str().to_owned())
        }
    });
    let results = futures::future::join_all(asks).await;
    assert_eq!(store.count().await.unwrap(), 100);
    let mut by_device = std::collections::HashMap::new();
    for (device, id, node) in results {
        let first = by_device.entry(device).or_insert((id, node.clone()));
        assert_eq!(*first, (id, node), "one row per device");
    }
    assert_eq!(by_device.len(), 100);
}

/// Lookups that miss the cache are read in shared statements (`storage/lookup.rs`): under a
/// burst of a thousand, each caller still gets exactly its own registration, the same node asked
/// for several times in one batch included, and unknown nodes find nothing.
async fn concurrent_lookups_each_find_their_own(url: String) {
    let store = Store::open(&url).await.unwrap();
    let mut nodes = Vec::new();
    for i in 0..200 {
        let r = store
            .registered(tigase(&format!("u{i}@example.org"), &format!("tok-{i}")))
            .await;
        nodes.push((r.node.as_str().to_owned(), Some(r.id)));
    }
    for i in 0..50 {
        nodes.push((format!("unknown-node-{i:012}"), None));
    }
    let asks = (0..1000).map(|i| {
        let store = store.clone();
        let (node, id) = nodes[(i * 7) % nodes.len()].clone();
        async move {
            let found = store.find_by_node(&node).await.unwrap();
            assert_eq!(found.as_ref().map(|r| r.id), id, "{node}");
            if let Some(r) = found {
                assert_eq!(r.node.as_str(), node);
            }
        }
    });
    futures::future::join_all(asks).await;
}

/// On a SQLite file, publish lookups have a reader of their own (`storage/sqlite_reader.rs`)
/// that maps columns by position: every field of every kind of row must come back as the
/// pool's reading by id (sea-orm, by column name) has it, nulls, keys, times and errors included.
async fn lookups_read_every_field_as_stored(url: String) {
    let store = Store::open(&url).await.unwrap();
    let mut webpush = tigase("wp@example.org", "https://push.example.net/e/1");
    webpush.provider = ProviderId::new("webpush");
    webpush.webpush_keys = Some(WebPushKeys {
        p256dh: "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM".into(),
        auth: "tBHItJI5svbpez7KI4CCXg".into(),
    });
    let mut two = p2(
        "romeo@montague.example",
        "phone",
        Some("room@muc.example"),
        "t-1",
    );
    two.second_token = Some(DeviceToken::new("voip-1"));
    let rows = [
        store.registered(tigase("alice@example.org", "tok-a")).await,
        store.registered(two).await,
        store.registered(webpush).await,
    ];
    store.record_successes(&[rows[0].id]).await.unwrap();
    store
        .record_errors(&[rows[1].id], "BadDeviceToken: ünïcode")
        .await
        .unwrap();
    for r in &rows {
        let by_node = stored(&store, r.node.as_str()).await;
        let by_id = store.find_by_id(r.id).await.unwrap().unwrap();
        assert_eq!(by_node.id, by_id.id);
        assert_eq!(by_node.dialect, by_id.dialect);
        assert_eq!(by_node.provider, by_id.provider);
        assert_eq!(by_node.account, by_id.account);
        assert_eq!(by_node.domain, by_id.domain);
        assert_eq!(by_node.device_key, by_id.device_key);
        assert_eq!(by_node.device_id, by_id.device_id);
        assert_eq!(by_node.muc, by_id.muc);
        assert_eq!(by_node.token.as_str(), by_id.token.as_str());
        assert_eq!(
            by_node.second_token.as_ref().map(|t| t.as_str()),
            by_id.second_token.as_ref().map(|t| t.as_str())
        );
        assert_eq!(by_node.webpush_keys, by_id.webpush_keys);
        assert_eq!(by_node.node, by_id.node);
        assert_eq!(
            by_node.secret.as_ref().map(|s| s.as_str()),
            by_id.secret.as_ref().map(|s| s.as_str())
        );
        assert_eq!(by_node.created_at, by_id.created_at);
        assert_eq!(by_node.updated_at, by_id.updated_at);
        assert_eq!(by_node.last_success_at, by_id.last_success_at);
        assert_eq!(by_node.last_error_at, by_id.last_error_at);
        assert_eq!(by_node.last_error, by_id.last_error);
    }
    assert!(rows[0].last_success_at.is_none(), "the row as registered");
    let success = stored(&store, rows[0].node.as_str()).await;
    assert!(success.last_success_at.is_some() && success.last_error_at.is_none());
    let failed = stored(&store, rows[1].node.as_str()).await;
    assert_eq!(
        failed.last_error.as_deref(),
        Some("BadDeviceToken: ünïcode")
    );
    assert_eq!(failed.muc, Some(jid("room@muc.example")));
    assert!(failed.webpush_keys.is_none());
    assert!(
        stored(&store, rows[2].node.as_str())
            .await
            .webpush_keys
            .is_some()
    );
}

/// A publish may arrive through one instance just after its device registered through another
/// (or was removed there): a lookup that misses the cache reads what is committed now.
async fn a_lookup_sees_what_another_instance_just_committed(url: String) {
    let here = Store::open(&url).await.unwrap();
    let there = Store::open(&url).await.unwrap();
    for i in 0..20 {
        let r = there
            .registered(tigase(&format!("u{i}@example.org"), &format!("tok-{i}")))
            .await;
        assert_eq!(stored(&here, r.node.as_str()).await.id, r.id);
        assert!(there.delete(r.id).await.unwrap());
        assert!(here.find_by_node(r.node.as_str()).await.unwrap().is_none());
    }
}

/// SQLite file only: text that is not UTF-8 and times that do not parse, written by hand, are
/// errors of that lookup; the reader goes on answering the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_columns_are_errors_and_the_reader_goes_on_sqlite() {
    on_sqlite(|url| async move {
        let store = Store::open(&url).await.unwrap();
        let raw = raw_connect(&url).await;
        let good = store.registered(tigase("ok@example.org", "tok-ok")).await;
        let mut broken = Vec::new();
        for (i, sql) in [
            "UPDATE registrations SET token = CAST(x'fffe' AS TEXT) WHERE id = {id}",
            "UPDATE registrations SET created_at = 'yesterday' WHERE id = {id}",
            "UPDATE registrations SET last_error_at = 'soon' WHERE id = {id}",
        ]
        .into_iter()
        .enumerate()
        {
            let r = store
                .registered(tigase(&format!("b{i}@example.org"), &format!("tok-{i}")))
                .await;
            raw.execute_unprepared(&sql.replace("{id}", &r.id.to_string()))
                .await
                .unwrap();
            broken.push(r.node);
        }
        for node in &broken {
            match store.find_by_node(node.as_str()).await {
                Err(StoreError::Database(e)) => {
                    assert!(!e.to_string().contains(node.as_str()), "{e}")
                }
                other => panic!("expected a database error, got {other:?}"),
            }
            assert_eq!(stored(&store, good.node.as_str()).await.id, good.id);
        }
        // A hand-written time in SQLite's own format reads.
        raw.execute_unprepared(&format!(
            "UPDATE registrations SET updated_at = '2026-12-06 14:00:01' WHERE id = {}",
            good.id
        ))
        .await
        .unwrap();
        let read = stored(&store, good.node.as_str()).await;
        assert_eq!(read.updated_at.to_rfc3339(), "2026-12-06T14:00:01+00:00");
    })
    .await;
}

/// SQLite file only: a data directory whose name has characters URLs give meaning to; the
/// lookup thread opens the same file as the pool (a wrong path fails, being read-only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_with_url_characters_works_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("a dir?with=%41 #and");
    let url = Store::sqlite_url_in(&data_dir).unwrap();
    let store = Store::open(&url).await.unwrap();
    let r = store.registered(tigase("odd@example.org", "tok")).await;
    assert_eq!(stored(&store, r.node.as_str()).await.id, r.id);
    assert!(data_dir.join("pushgate.db").is_file());
}

/// SQLite file only: the lookups run on a thread of their own, named so profiles show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_file_gets_its_lookup_thread_sqlite() {
    fn lookup_threads() -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.trim() == "pushgate-lookup")
            .count()
    }
    on_sqlite(|url| async move {
        let store = Store::open(&url).await.unwrap();
        let r = store.registered(tigase("t@example.org", "tok")).await;
        assert_eq!(stored(&store, r.node.as_str()).await.id, r.id);
        // Only now: a new thread is named by itself once it runs, and this one has answered.
        assert!(lookup_threads() >= 1);
    })
    .await;
}

fn limit(max_per_account: u32, may_add: bool) -> Admission {
    Admission {
        max_per_account,
        may_add,
    }
}

/// New devices count against the account; known ones re-register whatever the limits say.
async fn the_account_limit_counts_new_devices_only(url: String) {
    let store = Store::open(&url).await.unwrap();
    let three = limit(3, true);
    let first = store
        .register(tigase("alice@example.org", "t1"), three)
        .await
        .unwrap();
    assert!(first.added);
    store
        .register(p2("alice@example.org", "phone", None, "t2"), three)
        .await
        .unwrap();
    store
        .register(
            p2(
                "alice@example.org",
                "phone",
                Some("room@muc.example.org"),
                "t2",
            ),
            three,
        )
        .await
        .unwrap();
    match store
        .register(tigase("alice@example.org", "t4"), three)
        .await
    {
        Err(StoreError::AccountFull { limit: 3 }) => {}
        other => panic!("expected AccountFull, got {other:?}"),
    }
    assert_eq!(store.count().await.unwrap(), 3);

    // Known devices: refreshed at the limit, and also when new ones are paused.
    let again = store
        .register(tigase("alice@example.org", "t1"), three)
        .await
        .unwrap();
    assert!(!again.added);
    assert_eq!(again.registration.node, first.registration.node);
    let refreshed = store
        .register(
            p2("alice@example.org", "phone", None, "t2-new"),
            limit(3, false),
        )
        .await
        .unwrap();
    assert!(!refreshed.added);
    assert_eq!(refreshed.registration.token.as_str(), "t2-new");

    // Paused: no new device, whatever the room left.
    match store
        .register(tigase("bob@example.org", "b1"), limit(3, false))
        .await
    {
        Err(StoreError::AddingPaused) => {}
        other => panic!("expected AddingPaused, got {other:?}"),
    }
    let bob = store
        .register(tigase("bob@example.org", "b1"), three)
        .await
        .unwrap();
    assert!(bob.added, "another account has its own room");

    // A removed registration makes room.
    assert!(store.delete(first.registration.id).await.unwrap());
    assert!(
        store
            .register(tigase("alice@example.org", "t4"), three)
            .await
            .unwrap()
            .added
    );
    assert_eq!(store.count().await.unwrap(), 4);
}

/// Four instances (store handles, each with its own group commit) register many new devices of
/// several accounts at once: exactly the limit of each account gets in, the rest are refused,
/// and a device sent through two instances is one row.
async fn the_account_limit_holds_across_instances_and_batches(url: String) {
    const LIMIT: u32 = 5;
    const ACCOUNTS: usize = 8;
    let mut instances = Vec::new();
    for _ in 0..4 {
        instances.push(Store::open(&url).await.unwrap());
    }
    let mut asks = Vec::new();
    // 20 devices per account, each asked for twice through different instances.
    for device in 0..20 {
        for copy in 0..2 {
            for account in 0..ACCOUNTS {
                let store = instances[(2 * device + copy + account) % instances.len()].clone();
                let (account, token) = (
                    format!("user{account}@example.org"),
                    format!("tok-{device}"),
                );
                asks.push(tokio::spawn(async move {
                    store
                        .register(tigase(&account, &token), limit(LIMIT, true))
                        .await
                        .map(|r| ((account, token), r.registration.node.as_str().to_owned()))
                }));
            }
        }
    }
    let mut admitted = std::collections::HashMap::new();
    for ask in asks {
        match ask.await.unwrap() {
            Ok((device, node)) => {
                let first = admitted.entry(device).or_insert(node.clone());
                assert_eq!(*first, node, "one row per device");
            }
            Err(StoreError::AccountFull { limit: LIMIT }) => {}
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(admitted.len(), ACCOUNTS * LIMIT as usize);
    assert_eq!(
        instances[0].count().await.unwrap(),
        (ACCOUNTS as u64) * u64::from(LIMIT)
    );
}
