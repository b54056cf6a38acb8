//! Registrations, persisted: the only state that must survive a restart.
//!
//! Every fact a publish needs (which provider, which token, which domain a node is bound to) is
//! in the database, so several pushgate instances can share one PostgreSQL (or one instance can
//! use the embedded SQLite file) and agree. A process keeps recently used registrations in a
//! bounded cache for at most `storage.cache_ttl_secs` (`cache.rs` says what that means with
//! several instances). Registration is
//! idempotent and race-free across instances: an upsert on the unique index of the device identity
//! decides. The per-account limit is decided in the same transaction, under a lock on the
//! account (see [`Store::register`]), so instances cannot overshoot it together.
//!
//! Nodes are credentials (a Tigase-dialect node is the *only* credential), so they are looked up
//! through the SHA-256 of the node and confirmed in constant time, and nothing here logs a node,
//! secret or token whole.
//!
//! The files: `registration.rs` (the types), `connect.rs` (opening, migrations), `writer.rs`
//! (the registration upsert and account limit), `group_commit.rs` (batching those writes),
//! `queries.rs` (lookups and removals), `lookup.rs` (batching the publish lookups),
//! `sqlite_reader.rs` (those lookups on a SQLite file), `sqlite_memory.rs` (SQLite's malloc),
//! `queue.rs` (the retry queue's table), `cache.rs`, `write_behind.rs` (delivery outcomes),
//! `admin.rs` and `stats.rs` (operators' queries), `apns_credentials.rs` (uploaded APNs
//! credentials), `unifiedpush.rs` (UnifiedPush endpoints), `entity.rs` (the table).

mod admin;
pub mod apns_credentials;
mod cache;
mod connect;
pub mod entity;
mod group_commit;
mod lookup;
mod queries;
mod queue;
mod registration;
mod sip;
mod sqlite_memory;
mod sqlite_reader;
mod stats;
mod unifiedpush;
mod write_behind;
mod writer;

pub use admin::RegistrationFilter;
pub use queue::{Enqueued, NewQueued, QueueDepth, Queued, QueuedFor};
pub use registration::{Admission, NewRegistration, Registered, Registration};
pub use sip::{SipDevice, SipSaved};
pub use unifiedpush::{NewUpMessage, UpEndpoint, UpEndpointRow, UpKept, UpMessage, UpSaved};
pub use write_behind::DeliveryLog;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::{DatabaseConnection, DbErr};
use sha2::{Digest, Sha256};

use cache::{NodeHash, RegistrationCache};
use group_commit::GroupCommit;
use lookup::Lookups;
use writer::Writer;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed. Its message names tables and constraints, never values.
    #[error("database error: {0}")]
    Database(#[from] DbErr),
    #[error("cannot create data directory {}: {source}", path.display())]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data directory {} is not valid UTF-8", .0.display())]
    NonUtf8Path(PathBuf),
    /// A stored row no longer parses (edited by hand, or written by a newer pushgate).
    #[error("registration {id}: stored {field} is invalid")]
    Corrupt { id: i64, field: &'static str },
    /// A row of the retry queue no longer parses.
    #[error("queued notification {id}: stored {field} is invalid")]
    CorruptQueued { id: i64, field: &'static str },
    /// A new device for an account that already holds `limit` registrations.
    #[error("the account already has {limit} registrations")]
    AccountFull { limit: u32 },
    /// A new device where [`Admission::may_add`] allowed only known devices.
    #[error("new devices are not accepted now")]
    AddingPaused,
}

/// Handle on the registration database. Cloning shares the connection pool.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Publish lookups only; off unless [`Store::with_cache`] turns it on.
    cache: Option<Arc<RegistrationCache>>,
    /// Writes, in turn with the other writers of a SQLite file.
    writer: Writer,
    /// Batches concurrent registrations (`group_commit.rs`).
    group_commit: Arc<GroupCommit>,
    /// Batches the publish lookups that miss the cache (`lookup.rs`).
    lookups: Arc<Lookups>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.db.get_database_backend())
            .finish()
    }
}

impl Store {
    /// Hold the guard for one write statement only (see [`Writer`]).
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        self.writer.turn().await
    }

    fn forget(&self, reg: &Registration) {
        if let Some(cache) = &self.cache {
            let digest = match (&reg.dialect, &reg.secret) {
                (crate::ids::Dialect::AppServer, Some(secret)) => {
                    keyed_node_digest(reg.node.as_str(), secret.as_str())
                }
                _ => node_digest(reg.node.as_str()),
            };
            cache.remove(&digest);
        }
    }

    fn forget_all(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }
}

/// The indexed lookup key of a node: an index probe on it reveals nothing about stored nodes.
fn node_hash(node: &str) -> String {
    crate::ids::hex(&node_digest(node))
}

fn node_digest(node: &str) -> NodeHash {
    Sha256::digest(node.as_bytes()).into()
}

/// The lookup key of a node the client chose (mod_push_appserver dialect): node and secret, so
/// that the same node registered for two accounts makes two rows, and a node alone finds none.
fn keyed_node_hash(node: &str, secret: &str) -> String {
    crate::ids::hex(&keyed_node_digest(node, secret))
}

fn keyed_node_digest(node: &str, secret: &str) -> NodeHash {
    Sha256::new()
        .chain_update(b"pushgate keyed node\0")
        .chain_update((node.len() as u64).to_be_bytes())
        .chain_update(node.as_bytes())
        .chain_update(secret.as_bytes())
        .finalize()
        .into()
}

/// A transaction that writes: on SQLite it takes the write lock at `BEGIN`, so that what it
/// reads first (a count) cannot be changed by another writer before it writes.
async fn begin_write(db: &DatabaseConnection) -> Result<sea_orm::DatabaseTransaction, DbErr> {
    use sea_orm::{SqliteTransactionMode, TransactionOptions, TransactionTrait};
    db.begin_with_options(TransactionOptions {
        sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        ..TransactionOptions::default()
    })
    .await
}

/// Adds to `batch` whatever has queued behind its first entry, up to `max` entries in all: how
/// the store's background tasks (publish lookups, registration writes) take a burst at once
/// without waiting for one.
fn take_queued<T>(queue: &mut tokio::sync::mpsc::Receiver<T>, batch: &mut Vec<T>, max: usize) {
    while batch.len() < max {
        match queue.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
}

/// `values` padded to a power-of-two length with copies of its last element, so that `IN`
/// lists come in a few shapes and each is prepared once per connection (sqlx caches a prepared
/// statement per distinct SQL text).
fn pow2_padded<T: Clone>(mut values: Vec<T>) -> Vec<T> {
    if let Some(last) = values.last().cloned() {
        values.resize(values.len().next_power_of_two(), last);
    }
    values
}

/// Timestamps at microsecond precision, what PostgreSQL keeps, so a value reads back as written
/// on every backend.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
