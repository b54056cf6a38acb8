//! Support shared by the integration tests: a real `Component` on a throw-away database built from
//! TOML text (`gateway.rs`), the stanzas clients and servers send and readers for the answers
//! (`stanzas.rs`), a local push service (`pushgate_test_support::status`), the HTTP surface over
//! loopback (`http_server.rs`); and here a real PostgreSQL (127.0.0.1:5432, trust auth; CI has one) with
//! a throw-away database per test, the macro that makes one `sqlite` and one `postgres` test of
//! each scenario, and routing a stanza as the stream does.
//!
//! The library paths the helpers use are imported here only, so a move in `src/` is fixed in
//! one place.
#![allow(dead_code, unused_imports, unused_macros)] // each test binary uses its own subset

mod gateway;
mod http_server;
mod sinks;
mod stanzas;

pub use gateway::{COMPONENT, TestGateway, on_postgres_gateway};
pub use http_server::HttpServer;
pub use pushgate_test_support::status::PushEndpoint;
pub use sinks::{apns_sink, fcm_sink};
pub use stanzas::{
    Request, Requester, ask, error_of, form_values, is_result, requester, result_of,
};

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use pushgate::config::{Config, HttpConfig};
use pushgate::fronts::http::{HttpState, ServeLimits, router as http_router, serve_on};
use pushgate::fronts::xmpp::router::handle;
use pushgate::fronts::xmpp::{Component, Outbox};
use pushgate::storage::{Admission, NewRegistration, Registration, Store, StoreError};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};

pub const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// Room for every device a test registers: for tests about something other than the limits.
pub const UNLIMITED: Admission = Admission {
    max_per_account: 10_000,
    may_add: true,
};

/// [`Store::register`] within [`UNLIMITED`], answering just the registration.
pub trait RegisterAny {
    fn register_any(
        &self,
        new: NewRegistration,
    ) -> impl Future<Output = Result<Registration, StoreError>> + Send;

    /// [`RegisterAny::register_any`] where the registration must succeed: the setup of a test,
    /// not what it checks.
    fn registered(&self, new: NewRegistration) -> impl Future<Output = Registration> + Send;
}

impl RegisterAny for Store {
    async fn register_any(&self, new: NewRegistration) -> Result<Registration, StoreError> {
        Ok(self.register(new, UNLIMITED).await?.registration)
    }

    async fn registered(&self, new: NewRegistration) -> Registration {
        self.register_any(new)
            .await
            .unwrap_or_else(|e| panic!("registration refused: {e}"))
    }
}

/// A Tigase-dialect device of `account` on the `webpush` provider at `url`, stored directly
/// (the setup of a publish test); its node.
pub async fn webpush_device(gw: &Component, account: &str, url: String) -> String {
    use pushgate::ids::{BareJid, DeviceToken, Dialect, ProviderId};
    let new = NewRegistration {
        dialect: Dialect::Tigase,
        provider: ProviderId::new("webpush"),
        account: account
            .parse::<BareJid>()
            .unwrap_or_else(|e| panic!("{account}: {e}")),
        device_id: None,
        muc: None,
        token: DeviceToken::new(url),
        second_token: None,
        webpush_keys: None,
    };
    gw.core.store.registered(new).await.node.as_str().to_owned()
}

/// The registration at `node`, which must exist.
pub async fn stored(store: &Store, node: &str) -> std::sync::Arc<Registration> {
    store
        .find_by_node(node)
        .await
        .unwrap_or_else(|e| panic!("lookup failed: {e}"))
        .unwrap_or_else(|| panic!("no registration at {node}"))
}

/// A plain connection, outside pushgate's store. An unreachable server fails the test: CI has
/// PostgreSQL, so a skip would hide a broken backend.
pub async fn raw_connect(url: &str) -> DatabaseConnection {
    let mut opts = ConnectOptions::new(url);
    opts.connect_timeout(Duration::from_secs(5))
        .max_connections(1)
        .sqlx_logging(false);
    Database::connect(opts)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url} (PostgreSQL is required): {e}"))
}

/// Runs `scenario` with the URL of a fresh database `<prefix>_<random>`, dropped afterwards even
/// if the scenario panics, so parallel tests and reruns never collide.
pub async fn with_fresh_postgres<F, Fut>(prefix: &str, scenario: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let admin = raw_connect(&format!("{PG_SERVER}/test")).await;
    let name = format!("{prefix}_{:016x}", getrandom::u64().unwrap());
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let outcome = AssertUnwindSafe(scenario(format!("{PG_SERVER}/{name}")))
        .catch_unwind()
        .await;
    admin
        .execute_unprepared(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// One `sqlite` and one `postgres` test per scenario, named `<scenario>::<backend>`; the test
/// file provides `on_sqlite` and `on_postgres`.
macro_rules! on_both_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::on_sqlite(super::$scenario).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::on_postgres(super::$scenario).await
            }
        }
    )*};
}

/// Routes one stanza as the stream would, with the default 10 s to answer it.
pub async fn route(
    gw: &Component,
    stanza: impl Into<xmpp_parsers::stanza::Stanza>,
) -> Option<xmpp_parsers::stanza::Stanza> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    handle(gw, stanza.into(), deadline).await
}
