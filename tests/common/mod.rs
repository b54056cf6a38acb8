//! Support shared by the integration tests that run against both storage backends: a real
//! PostgreSQL (127.0.0.1:5432, trust auth; CI has one) with a throw-away database per test, and
//! the macro that makes one `sqlite` and one `postgres` test of each scenario; and routing a
//! stanza as the stream does.
#![allow(dead_code, unused_macros)] // each test binary uses its own subset

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
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
}

impl RegisterAny for Store {
    async fn register_any(&self, new: NewRegistration) -> Result<Registration, StoreError> {
        Ok(self.register(new, UNLIMITED).await?.registration)
    }
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
    gw: &pushgate::fronts::xmpp::Component,
    stanza: xmpp_parsers::stanza::Stanza,
) -> Option<xmpp_parsers::stanza::Stanza> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    pushgate::fronts::xmpp::router::handle(gw, stanza, deadline).await
}
