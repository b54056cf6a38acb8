//! Registrations, persisted: the only state that must survive a restart.
//!
//! Every fact a publish needs (which provider, which token, which domain a node is bound to) is
//! read from the database, never cached in one process, so several pushgate instances can share
//! one PostgreSQL (or one instance can use the embedded SQLite file) and agree. Registration is
//! idempotent and race-free across instances: an upsert on the unique index of the device identity
//! decides. The per-account limit is decided in the same transaction, under a lock on the
//! account (see [`Store::register`]), so instances cannot overshoot it together.
//!
//! Nodes are credentials (a Tigase-dialect node is the *only* credential), so they are looked up
//! through the SHA-256 of the node and confirmed in constant time, and nothing here logs a node,
//! secret or token whole.

mod admin;
mod cache;
pub mod credentials;
pub mod entity;
mod group_commit;
mod stats;
mod write_behind;

pub use admin::RegistrationFilter;
pub use write_behind::SuccessLog;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database,
    DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QuerySelect, SqliteTransactionMode, TransactionOptions, TransactionTrait,
};
use sha2::{Digest, Sha256};
use tracing::{debug, info};

use crate::ids::{BareJid, DeviceToken, Dialect, NodeId, ProviderId, Secret};
use pushgate_providers::{Device, WebPushKeys};

use cache::{NodeHash, RegistrationCache};
use entity::{ActiveModel, Column, Entity, Model};
use group_commit::GroupCommit;

/// Longest stored `last_error`, in characters: provider error bodies can be large.
const MAX_ERROR_CHARS: usize = 500;
/// Longer "nodes" are not ours (ours are 22 characters); refuse them before hashing.
const MAX_NODE_LEN: usize = 256;
/// Devices looked up in one query when the account limit must tell known from new ones.
const KNOWN_DEVICES_PER_QUERY: usize = 32;

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
    /// A new device for an account that already holds `limit` registrations.
    #[error("the account already has {limit} registrations")]
    AccountFull { limit: u32 },
    /// A new device where [`Admission::may_add`] allowed only known devices.
    #[error("new devices are not accepted now")]
    AddingPaused,
}

/// How far one registration may grow the table. The caller's policy; the store enforces it
/// where a new device can be told from a known one, in the transaction that writes the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Registrations one account may hold: a new device beyond it is refused
    /// ([`StoreError::AccountFull`]); a known device is always refreshed.
    pub max_per_account: u32,
    /// Whether a device not registered before may be added now; false refuses new devices
    /// ([`StoreError::AddingPaused`]) and still refreshes known ones.
    pub may_add: bool,
}

/// A stored registration, and whether it is a new device rather than a known one refreshed.
#[derive(Debug)]
pub struct Registered {
    pub registration: Registration,
    pub added: bool,
}

/// What a registering client asked for.
#[derive(Clone, Debug)]
pub struct NewRegistration {
    pub dialect: Dialect,
    pub provider: ProviderId,
    pub account: BareJid,
    /// p2 dialect: device-id / android-id.
    pub device_id: Option<String>,
    /// p2 dialect: per-room registration.
    pub muc: Option<BareJid>,
    pub token: DeviceToken,
    pub second_token: Option<DeviceToken>,
    pub webpush_keys: Option<WebPushKeys>,
}

/// A stored registration, validated.
#[derive(Clone)]
pub struct Registration {
    pub id: i64,
    pub dialect: Dialect,
    pub provider: ProviderId,
    pub account: BareJid,
    /// The account's domain; publishes for this node are accepted from this domain only.
    pub domain: String,
    pub device_key: String,
    pub device_id: Option<String>,
    pub muc: Option<BareJid>,
    pub token: DeviceToken,
    pub second_token: Option<DeviceToken>,
    pub webpush_keys: Option<WebPushKeys>,
    pub node: NodeId,
    /// Present for [`Dialect::P2`] only.
    pub secret: Option<Secret>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

impl Registration {
    /// What a provider needs to deliver to this registration.
    pub fn device(&self) -> Device {
        Device {
            provider: self.provider.clone(),
            token: self.token.clone(),
            second_token: self.second_token.clone(),
            webpush_keys: self.webpush_keys.clone(),
        }
    }
}

/// Hand-written so WebPush keys (whose `Debug` shows the auth secret) stay out of logs; node,
/// secret and tokens redact themselves.
impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .field("dialect", &self.dialect)
            .field("provider", &self.provider)
            .field("account", &self.account)
            .field("device_id", &self.device_id)
            .field("muc", &self.muc)
            .field("token", &self.token)
            .field("second_token", &self.second_token)
            .field("webpush_keys", &self.webpush_keys.as_ref().map(|_| "…"))
            .field("node", &self.node)
            .field("secret", &self.secret)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("last_success_at", &self.last_success_at)
            .field("last_error_at", &self.last_error_at)
            .finish_non_exhaustive()
    }
}

impl TryFrom<Model> for Registration {
    type Error = StoreError;

    fn try_from(m: Model) -> Result<Self, StoreError> {
        let id = m.id;
        let corrupt = |field| StoreError::Corrupt { id, field };
        let dialect = Dialect::parse(&m.dialect).ok_or_else(|| corrupt("dialect"))?;
        let account = BareJid::new(&m.account).map_err(|_| corrupt("account"))?;
        let muc = match m.muc {
            Some(muc) => Some(BareJid::new(&muc).map_err(|_| corrupt("muc"))?),
            None => None,
        };
        let webpush_keys = match (m.webpush_p256dh, m.webpush_auth) {
            (Some(p256dh), Some(auth)) => Some(WebPushKeys { p256dh, auth }),
            (None, None) => None,
            _ => return Err(corrupt("webpush keys")),
        };
        // A p2 registration without its secret would accept unauthenticated publishes.
        let secret = match (dialect, m.secret) {
            (Dialect::P2, Some(s)) => Some(Secret::from_stored(s)),
            (Dialect::P2, None) => return Err(corrupt("secret")),
            (Dialect::Tigase, s) => s.map(Secret::from_stored),
        };
        Ok(Registration {
            id,
            dialect,
            provider: ProviderId::new(m.provider),
            account,
            domain: m.domain,
            device_key: m.device_key,
            device_id: m.device_id,
            muc,
            token: DeviceToken::new(m.token),
            second_token: m.second_token.map(DeviceToken::new),
            webpush_keys,
            node: NodeId::from_stored(m.node),
            secret,
            created_at: m.created_at,
            updated_at: m.updated_at,
            last_success_at: m.last_success_at,
            last_error_at: m.last_error_at,
            last_error: m.last_error,
        })
    }
}

/// A fresh row for `new`: a new node and, for p2, a new secret.
fn new_row(new: &NewRegistration, key: &str) -> ActiveModel {
    let node = NodeId::generate();
    let secret = match new.dialect {
        Dialect::P2 => Some(Secret::generate()),
        Dialect::Tigase => None,
    };
    let at = now();
    ActiveModel {
        id: NotSet,
        dialect: Set(new.dialect.as_str().to_owned()),
        provider: Set(new.provider.as_str().to_owned()),
        account: Set(new.account.as_str().to_owned()),
        domain: Set(new.account.domain().as_str().to_owned()),
        device_key: Set(key.to_owned()),
        device_id: Set(new.device_id.clone()),
        muc: Set(new.muc.as_ref().map(|m| m.as_str().to_owned())),
        token: Set(new.token.as_str().to_owned()),
        second_token: Set(new.second_token.as_ref().map(|t| t.as_str().to_owned())),
        webpush_p256dh: Set(new.webpush_keys.as_ref().map(|k| k.p256dh.clone())),
        webpush_auth: Set(new.webpush_keys.as_ref().map(|k| k.auth.clone())),
        node_hash: Set(node_hash(node.as_str())),
        node: Set(node.as_str().to_owned()),
        secret: Set(secret.map(|s| s.as_str().to_owned())),
        created_at: Set(at),
        updated_at: Set(at),
        last_success_at: Set(None),
        last_error_at: Set(None),
        last_error: Set(None),
    }
}

/// What makes two registrations "the same device": Tigase dialect → the token; p2 → device id +
/// muc (the token is ignored then, so unregistering needs no token). A p2 client that sends no
/// device id is identified by its token + muc instead.
///
/// The result is a hex SHA-256 over length-prefixed parts: fixed length (index-friendly even for
/// long WebPush endpoints), unambiguous, and no second copy of the token in clear.
pub fn device_key(
    dialect: Dialect,
    token: &DeviceToken,
    device_id: Option<&str>,
    muc: Option<&BareJid>,
) -> String {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    };
    part(b"pushgate device key v1");
    part(dialect.as_str().as_bytes());
    match dialect {
        Dialect::Tigase => {
            part(b"token");
            part(token.as_str().as_bytes());
        }
        Dialect::P2 => {
            match device_id {
                Some(id) => {
                    part(b"device");
                    part(id.as_bytes());
                }
                None => {
                    part(b"token");
                    part(token.as_str().as_bytes());
                }
            }
            match muc {
                Some(muc) => {
                    part(b"muc");
                    part(muc.as_str().as_bytes());
                }
                None => part(b"no muc"),
            }
        }
    }
    hex(&h.finalize())
}

/// (dialect, provider, account, device key): what the unique index calls one device.
type Identity = (String, String, String, String);

fn identity(new: &NewRegistration, device_key: String) -> Identity {
    (
        new.dialect.as_str().to_owned(),
        new.provider.as_str().to_owned(),
        new.account.as_str().to_owned(),
        device_key,
    )
}

fn identity_of(m: &Model) -> Identity {
    (
        m.dialect.clone(),
        m.provider.clone(),
        m.account.clone(),
        m.device_key.clone(),
    )
}

/// One registration on its way into the table.
#[derive(Clone)]
struct Pending {
    row: ActiveModel,
    identity: Identity,
    admission: Admission,
}

/// What became of one [`Pending`]: the stored row and whether it is new, or why it was refused
/// ([`StoreError::AccountFull`], [`StoreError::AddingPaused`]).
type Decided = Result<(Model, bool), StoreError>;

/// The PostgreSQL advisory lock key of an account's registrations. A collision only makes two
/// accounts wait for each other.
fn account_lock_key(account: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"pushgate account registrations\0")
        .chain_update(account.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// `values` padded to a power-of-two length with copies of its last element, so that `IN`
/// lists come in a few shapes and each is prepared once per connection.
fn pow2_padded<T: Clone>(mut values: Vec<T>) -> Vec<T> {
    if let Some(last) = values.last().cloned() {
        values.resize(values.len().next_power_of_two(), last);
    }
    values
}

/// Inserts `rows`, or, where the unique index on the device identity says one exists
/// (registered before, or by another instance a moment ago), refreshes what a client may change
/// and keeps node, secret and created_at. One statement, atomic on both databases.
async fn upsert_on<C: ConnectionTrait>(
    db: &C,
    rows: Vec<ActiveModel>,
) -> Result<Vec<Model>, DbErr> {
    let on_conflict = OnConflict::columns([
        Column::Dialect,
        Column::Provider,
        Column::Account,
        Column::DeviceKey,
    ])
    .update_columns([
        Column::DeviceId,
        Column::Muc,
        Column::Token,
        Column::SecondToken,
        Column::WebpushP256dh,
        Column::WebpushAuth,
        Column::UpdatedAt,
    ])
    .to_owned();
    Entity::insert_many(rows)
        .on_conflict(on_conflict)
        .exec_with_returning(db)
        .await
}

/// Takes the transaction-scoped advisory lock of each account, in ascending key order so that
/// two instances locking overlapping sets cannot deadlock. Held until commit: a registration of
/// the same account through another instance waits, then counts this one's rows.
async fn lock_accounts(txn: &DatabaseTransaction, accounts: &BTreeSet<&str>) -> Result<(), DbErr> {
    let keys: BTreeSet<i64> = accounts.iter().map(|a| account_lock_key(a)).collect();
    if keys.is_empty() {
        return Ok(());
    }
    // Our own integers, not input: safe to inline, and one round trip for the whole batch.
    let list: Vec<String> = keys.iter().map(i64::to_string).collect();
    txn.execute_unprepared(&format!(
        "SELECT pg_advisory_xact_lock(k) FROM unnest(ARRAY[{}]::bigint[]) AS k",
        list.join(",")
    ))
    .await?;
    Ok(())
}

/// Which of `devices` are registered already. A few devices a query, so that no statement
/// grows into the delayed-ACK stall (`Store::rows_per_statement`).
async fn known_devices(
    txn: &DatabaseTransaction,
    devices: &[&Identity],
) -> Result<HashSet<Identity>, DbErr> {
    let mut known = HashSet::new();
    for chunk in devices.chunks(KNOWN_DEVICES_PER_QUERY) {
        let accounts: BTreeSet<&str> = chunk.iter().map(|d| d.2.as_str()).collect();
        let keys: BTreeSet<&str> = chunk.iter().map(|d| d.3.as_str()).collect();
        let found: Vec<Identity> = Entity::find()
            .select_only()
            .columns([
                Column::Dialect,
                Column::Provider,
                Column::Account,
                Column::DeviceKey,
            ])
            .filter(Column::Account.is_in(pow2_padded(accounts.into_iter().collect())))
            .filter(Column::DeviceKey.is_in(pow2_padded(keys.into_iter().collect())))
            .into_tuple()
            .all(txn)
            .await?;
        known.extend(found);
    }
    Ok(known)
}

/// How many registrations each of `accounts` holds (absent: none).
async fn registrations_per_account(
    txn: &DatabaseTransaction,
    accounts: &BTreeSet<&str>,
) -> Result<HashMap<String, u64>, DbErr> {
    if accounts.is_empty() {
        return Ok(HashMap::new());
    }
    let counts: Vec<(String, i64)> = Entity::find()
        .select_only()
        .column(Column::Account)
        .column_as(Column::Id.count(), "n")
        .filter(Column::Account.is_in(pow2_padded(accounts.iter().copied().collect())))
        .group_by(Column::Account)
        .into_tuple()
        .all(txn)
        .await?;
    Ok(counts
        .into_iter()
        .map(|(account, n)| (account, u64::try_from(n).unwrap_or(0)))
        .collect())
}

/// The indexed lookup key of a node: an index probe on it reveals nothing about stored nodes.
fn node_hash(node: &str) -> String {
    hex(&node_digest(node))
}

fn node_digest(node: &str) -> NodeHash {
    Sha256::digest(node.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Timestamps at microsecond precision, what PostgreSQL keeps, so a value reads back as written
/// on every backend.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Handle on the registration database. Cloning shares the connection pool.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Publish lookups only; off unless [`Store::with_cache`] turns it on.
    cache: Option<Arc<RegistrationCache>>,
    /// SQLite files only: see [`Store::write_turn`].
    write_turns: Option<Arc<tokio::sync::Mutex<()>>>,
    /// Batches concurrent registrations (`group_commit.rs`); absent in the writer's own handle.
    group_commit: Option<Arc<GroupCommit>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.db.get_database_backend())
            .finish()
    }
}

/// Facts about a SQLite URL that change how it is opened.
struct SqliteUrl {
    url: String,
    in_memory: bool,
}

/// `None` for non-SQLite URLs. Adds `mode=rwc` unless a mode was given, so a fresh file is created.
fn sqlite_url(url: &str) -> Option<SqliteUrl> {
    let rest = url.strip_prefix("sqlite:")?;
    let (database, params) = match rest.split_once('?') {
        Some((d, p)) => (d, Some(p)),
        None => (rest, None),
    };
    let database = database.trim_start_matches("//");
    let mode = params.and_then(|p| {
        p.split('&')
            .find_map(|kv| kv.strip_prefix("mode="))
            .map(str::to_owned)
    });
    let in_memory = database == ":memory:" || mode.as_deref() == Some("memory");
    let url = match (&mode, params) {
        (Some(_), _) => url.to_owned(),
        (None, _) if in_memory => url.to_owned(),
        (None, Some(p)) if !p.is_empty() => format!("{url}&mode=rwc"),
        (None, Some(_)) => format!("{url}mode=rwc"),
        (None, None) => format!("{url}?mode=rwc"),
    };
    Some(SqliteUrl { url, in_memory })
}

impl Store {
    /// Connects and runs all pending migrations (so every start is up to date). SQLite URLs get
    /// `mode=rwc` unless they name a mode.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let sqlite = sqlite_url(url);
        let mut opts = ConnectOptions::new(sqlite.as_ref().map_or(url, |s| s.url.as_str()));
        opts.connect_timeout(Duration::from_secs(10))
            .acquire_timeout(Duration::from_secs(10))
            // sqlx logs every statement at INFO by default; keep that for debugging only, but
            // say so when a statement is slow.
            .sqlx_logging_level(log::LevelFilter::Debug)
            .sqlx_slow_statements_logging_settings(log::LevelFilter::Warn, Duration::from_secs(1))
            .set_application_name("pushgate");
        match &sqlite {
            Some(s) if s.in_memory => {
                // An in-memory database lives as long as its last connection: keep exactly one.
                opts.max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
            }
            Some(_) => {
                // WAL lets lookups proceed while a registration is written; writers queue on
                // the busy timeout instead of failing with "database is locked".
                //
                // synchronous=NORMAL is the setting SQLite recommends with WAL: no corruption on
                // any crash, and a process crash loses nothing; only a power cut or kernel
                // crash can lose the last transactions. It saves an fsync per write, which
                // capped registrations at a few hundred per second (docs/performance.md).
                opts.max_connections(4).map_sqlx_sqlite_opts(|o| {
                    o.journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .busy_timeout(Duration::from_secs(10))
                });
            }
            None => {
                opts.max_connections(10);
            }
        }
        let db = Database::connect(opts).await?;
        pushgate_migrations::run(&db).await?;
        info!(backend = ?db.get_database_backend(), "registration store ready");
        let write_turns = matches!(&sqlite, Some(s) if !s.in_memory).then(Arc::default);
        let writer = Store {
            db,
            cache: None,
            write_turns,
            group_commit: None,
        };
        // One commit for a burst instead of one each: 3× the registrations per second on both
        // backends (docs/performance.md).
        Ok(Store {
            group_commit: Some(Arc::new(GroupCommit::start(writer.clone()))),
            ..writer
        })
    }

    /// Keeps up to `capacity` registrations for up to `ttl` for [`Store::find_by_node`]; see
    /// `cache.rs` for what that means with several instances. Zero turns caching off.
    pub fn with_cache(mut self, capacity: usize, ttl: Duration) -> Store {
        self.cache = RegistrationCache::new(capacity, ttl).map(Arc::new);
        self
    }

    /// SQLite has one writer at a time, and a connection that finds the database locked waits
    /// in SQLite's busy handler, which sleeps in steps of milliseconds. Taking turns in-process
    /// first is much faster: 2,556 registrations/s from one task, but 1,694/s from four
    /// (docs/performance.md). Hold the guard for the write statement only.
    async fn write_turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.write_turns {
            Some(turns) => Some(turns.lock().await),
            None => None,
        }
    }

    fn forget(&self, node: &str) {
        if let Some(cache) = &self.cache {
            cache.remove(&node_digest(node));
        }
    }

    fn forget_all(&self) {
        if let Some(cache) = &self.cache {
            cache.clear();
        }
    }

    /// The default embedded database, `sqlite://<data_dir>/pushgate.db?mode=rwc`; creates
    /// `data_dir` so a first start needs no preparation.
    pub fn sqlite_url_in(data_dir: &Path) -> Result<String, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let file = data_dir.join("pushgate.db");
        let path = file
            .to_str()
            .ok_or_else(|| StoreError::NonUtf8Path(file.clone()))?;
        // sqlx percent-decodes the path and splits at '?': escape what would be misread.
        let mut escaped = String::with_capacity(path.len());
        for c in path.chars() {
            match c {
                '%' => escaped.push_str("%25"),
                '?' => escaped.push_str("%3F"),
                '#' => escaped.push_str("%23"),
                c => escaped.push(c),
            }
        }
        Ok(format!("sqlite://{escaped}?mode=rwc"))
    }

    /// Idempotent: the same (dialect, provider, account, device key) keeps its row, node and
    /// secret; token, second token, WebPush keys and `updated_at` are refreshed. Otherwise a new
    /// row with a fresh node (and, for p2, a fresh secret), if `admission` allows one.
    ///
    /// One upsert statement decides, so concurrent registrations of one device (also through
    /// several instances) converge on one row; registrations that arrive together share a
    /// statement and a commit (`group_commit.rs`). The account's count is read in the writing
    /// transaction, on PostgreSQL after taking a transaction-scoped advisory lock on the account
    /// and on SQLite with the write lock taken at `BEGIN`: so `max_per_account` holds exactly,
    /// whichever instances the registrations arrive through.
    pub async fn register(
        &self,
        new: NewRegistration,
        admission: Admission,
    ) -> Result<Registered, StoreError> {
        let key = device_key(
            new.dialect,
            &new.token,
            new.device_id.as_deref(),
            new.muc.as_ref(),
        );
        let pending = Pending {
            row: new_row(&new, &key),
            identity: identity(&new, key),
            admission,
        };
        let (m, added) = match &self.group_commit {
            Some(batches) => match batches.submit(pending).await {
                Ok(decided) => decided?,
                Err(pending) => self.write_one(pending).await?,
            },
            None => self.write_one(pending).await?,
        };
        if added {
            info!(id = m.id, dialect = new.dialect.as_str(), provider = %new.provider, "registration created");
        } else {
            self.forget(&m.node);
            debug!(id = m.id, "registration refreshed");
        }
        Ok(Registered {
            registration: Registration::try_from(m)?,
            added,
        })
    }

    /// Decides and writes `pending` in one transaction, in turn with other writers: which new
    /// devices the account limits allow, then the upserts. The answer is in the order of
    /// `pending`; `Err` only when the database failed.
    ///
    /// Known devices must pass whatever the limits say, but telling them apart costs a query,
    /// and one for a whole batch (hundreds of keys) met the delayed-ACK stall described at
    /// [`Store::rows_per_statement`]: 40 ms every other batch, PostgreSQL register-device at
    /// 3,400/s. So it is asked only where it matters: for accounts whose registrations could
    /// exceed the limit if every pending one were new, and where new devices are paused. Whether
    /// a row was added is read off the upsert: it keeps an existing row's node, so a new row
    /// has ours.
    async fn write(&self, pending: Vec<Pending>) -> Result<Vec<Decided>, DbErr> {
        let _turn = self.write_turn().await;
        let txn = self
            .db
            .begin_with_options(TransactionOptions {
                sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
                ..TransactionOptions::default()
            })
            .await?;
        let mut asked: HashMap<&str, u64> = HashMap::new();
        for p in &pending {
            *asked.entry(p.identity.2.as_str()).or_default() += 1;
        }
        let accounts: BTreeSet<&str> = asked.keys().copied().collect();
        if self.db.get_database_backend() == DbBackend::Postgres {
            lock_accounts(&txn, &accounts).await?;
        }
        let mut held = registrations_per_account(&txn, &accounts).await?;
        let doubtful: Vec<bool> = pending
            .iter()
            .map(|p| {
                let account = p.identity.2.as_str();
                let held = held.get(account).copied().unwrap_or(0);
                !p.admission.may_add
                    || held + asked[account] > u64::from(p.admission.max_per_account)
            })
            .collect();
        let to_check: Vec<&Identity> = pending
            .iter()
            .zip(&doubtful)
            .filter(|(_, doubtful)| **doubtful)
            .map(|(p, _)| &p.identity)
            .collect();
        let known = known_devices(&txn, &to_check).await?;

        let mut verdicts = Vec::with_capacity(pending.len());
        let mut rows = Vec::with_capacity(pending.len());
        for (p, doubtful) in pending.into_iter().zip(doubtful) {
            let verdict = if !doubtful || known.contains(&p.identity) {
                Ok(())
            } else {
                let count = held.entry(p.identity.2.clone()).or_insert(0);
                if *count >= u64::from(p.admission.max_per_account) {
                    Err(StoreError::AccountFull {
                        limit: p.admission.max_per_account,
                    })
                } else if !p.admission.may_add {
                    Err(StoreError::AddingPaused)
                } else {
                    *count += 1;
                    Ok(())
                }
            };
            let ours = p.row.node.try_as_ref().cloned();
            if verdict.is_ok() {
                rows.push(p.row);
            }
            verdicts.push((p.identity, ours, verdict));
        }
        let stored: HashMap<Identity, Model> = self
            .upsert(&txn, rows)
            .await?
            .into_iter()
            .map(|m| (identity_of(&m), m))
            .collect();
        txn.commit().await?;
        Ok(verdicts
            .into_iter()
            .map(|(identity, ours, verdict)| {
                verdict?;
                match stored.get(&identity) {
                    Some(m) => Ok((m.clone(), ours.as_ref() == Some(&m.node))),
                    None => Err(DbErr::RecordNotInserted.into()),
                }
            })
            .collect())
    }

    async fn write_one(&self, pending: Pending) -> Decided {
        self.write(vec![pending])
            .await?
            .pop()
            .unwrap_or(Err(DbErr::RecordNotInserted.into()))
    }

    /// [`upsert_on`] for any number of rows, inside `txn`.
    async fn upsert(
        &self,
        txn: &DatabaseTransaction,
        mut rows: Vec<ActiveModel>,
    ) -> Result<Vec<Model>, DbErr> {
        // Statements of power-of-two sizes only (200 rows = 128 + 64 + 8): every distinct size
        // is a prepared statement each connection caches, and a few hundred of those, thousands
        // of parameters each, cost tens of megabytes.
        let most = self.rows_per_statement();
        let mut stored = Vec::with_capacity(rows.len());
        while !rows.is_empty() {
            let size = (1 << rows.len().ilog2()).min(most);
            let rest = rows.split_off(size);
            stored.extend(upsert_on(txn, std::mem::replace(&mut rows, rest)).await?);
        }
        Ok(stored)
    }

    /// The most rows one multi-row statement carries. 20 columns a row, 500 rows stay far below
    /// SQLite's bind-parameter limit. PostgreSQL gets 16: sqlx sets no TCP_NODELAY, and a
    /// message longer than one TCP segment (64 KiB on loopback) leaves its tail waiting for the
    /// server's delayed ACK. 256-row statements ran at 2,117 registrations/s, 16-row ones at
    /// 6,447–7,056/s (docs/performance.md).
    fn rows_per_statement(&self) -> usize {
        match self.db.get_database_backend() {
            DbBackend::Postgres => 16,
            _ => 500,
        }
    }

    /// Registers many new devices at once, in one transaction of multi-row inserts: for seeding
    /// benchmarks and for importing registrations from another push service. Unlike
    /// [`Store::register`] it is not idempotent: if any device is already registered, nothing
    /// is inserted and the unique index's error is returned.
    pub async fn insert_batch(
        &self,
        batch: &[NewRegistration],
    ) -> Result<Vec<Registration>, StoreError> {
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await?;
        let mut stored = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(self.rows_per_statement()) {
            let rows = chunk.iter().map(|new| {
                let key = device_key(
                    new.dialect,
                    &new.token,
                    new.device_id.as_deref(),
                    new.muc.as_ref(),
                );
                new_row(new, &key)
            });
            for m in Entity::insert_many(rows).exec_with_returning(&txn).await? {
                stored.push(Registration::try_from(m)?);
            }
        }
        txn.commit().await?;
        info!(count = stored.len(), "registrations imported");
        Ok(stored)
    }

    /// Lookup by node, via the indexed hash (and the cache, if on), confirmed with a
    /// constant-time comparison.
    pub async fn find_by_node(&self, node: &str) -> Result<Option<Arc<Registration>>, StoreError> {
        if node.is_empty() || node.len() > MAX_NODE_LEN {
            return Ok(None);
        }
        let digest = node_digest(node);
        let lookups = &crate::metrics::METRICS.registration_lookups;
        if let Some(cache) = &self.cache
            && let Some(reg) = cache.get(&digest, Instant::now())
        {
            lookups.with_label_values(&["cache"]).inc();
            return Ok(reg.node.matches(node).then_some(reg));
        }
        lookups.with_label_values(&["database"]).inc();
        let found = Entity::find()
            .filter(Column::NodeHash.eq(hex(&digest)))
            .one(&self.db)
            .await?;
        let reg = match found {
            Some(m) if NodeId::from_stored(m.node.clone()).matches(node) => {
                Arc::new(Registration::try_from(m)?)
            }
            _ => return Ok(None),
        };
        if let Some(cache) = &self.cache {
            cache.put(digest, reg.clone(), Instant::now());
        }
        Ok(Some(reg))
    }

    /// Removes the registration of (dialect, provider, account, device key); false if there was
    /// none.
    pub async fn unregister(
        &self,
        dialect: Dialect,
        provider: &ProviderId,
        account: &BareJid,
        device_key: &str,
    ) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let res = Entity::delete_many()
            .filter(Column::Dialect.eq(dialect.as_str()))
            .filter(Column::Provider.eq(provider.as_str()))
            .filter(Column::Account.eq(account.as_str()))
            .filter(Column::DeviceKey.eq(device_key))
            .exec(&self.db)
            .await?;
        debug!(removed = res.rows_affected, "unregister");
        if res.rows_affected > 0 {
            self.forget_all();
        }
        Ok(res.rows_affected > 0)
    }

    /// Removes a registration by id (an operator's `devices remove`).
    pub async fn delete(&self, id: i64) -> Result<bool, StoreError> {
        let res = {
            let _turn = self.write_turn().await;
            Entity::delete_by_id(id).exec(&self.db).await?
        };
        self.forget_all();
        Ok(res.rows_affected > 0)
    }

    /// Removes `reg` after its provider called its token dead, unless the row has meanwhile got
    /// another token (the device re-registered, perhaps through another instance): false then,
    /// and the fresh registration stays.
    pub async fn delete_if_token(&self, reg: &Registration) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let res = Entity::delete_many()
            .filter(Column::Id.eq(reg.id))
            .filter(Column::Token.eq(reg.token.as_str()))
            .exec(&self.db)
            .await?;
        self.forget(reg.node.as_str());
        Ok(res.rows_affected > 0)
    }

    /// Notes deliveries the providers accepted (see [`SuccessLog`], which batches them). Vanished
    /// rows are not an error: they were unregistered meanwhile.
    pub async fn record_successes(&self, ids: &[i64]) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        Entity::update_many()
            .col_expr(Column::LastSuccessAt, Expr::value(now()))
            .filter(Column::Id.is_in(ids.iter().copied()))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Notes a failed delivery; `reason` is cut to 500 characters.
    pub async fn record_error(&self, id: i64, reason: &str) -> Result<(), StoreError> {
        let reason: String = reason.chars().take(MAX_ERROR_CHARS).collect();
        let _turn = self.write_turn().await;
        Entity::update_many()
            .col_expr(Column::LastErrorAt, Expr::value(now()))
            .col_expr(Column::LastError, Expr::value(reason))
            .filter(Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Number of registrations.
    pub async fn count(&self) -> Result<u64, StoreError> {
        Ok(Entity::find().count(&self.db).await?)
    }

    /// Checks that the database answers (health endpoint).
    pub async fn ping(&self) -> Result<(), StoreError> {
        Ok(self.db.ping().await?)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Any valid registration, for tests that only need one to hold.
    pub(crate) fn registration() -> Registration {
        let new = NewRegistration {
            dialect: Dialect::Tigase,
            provider: ProviderId::new("webpush"),
            account: "alice@example.org".parse().unwrap(),
            device_id: None,
            muc: None,
            token: DeviceToken::new("https://push.example.net/t"),
            second_token: None,
            webpush_keys: None,
        };
        let mut row = new_row(&new, "key");
        row.id = Set(1);
        let model = Model {
            id: 1,
            dialect: row.dialect.unwrap(),
            provider: row.provider.unwrap(),
            account: row.account.unwrap(),
            domain: row.domain.unwrap(),
            device_key: row.device_key.unwrap(),
            device_id: None,
            muc: None,
            token: row.token.unwrap(),
            second_token: None,
            webpush_p256dh: None,
            webpush_auth: None,
            node: row.node.unwrap(),
            node_hash: row.node_hash.unwrap(),
            secret: None,
            created_at: row.created_at.unwrap(),
            updated_at: row.updated_at.unwrap(),
            last_success_at: None,
            last_error_at: None,
            last_error: None,
        };
        Registration::try_from(model).unwrap()
    }

    #[test]
    fn sqlite_urls_get_create_mode() {
        let u = |s| sqlite_url(s).map(|s| (s.url, s.in_memory));
        assert_eq!(
            u("sqlite:///d/p.db"),
            Some(("sqlite:///d/p.db?mode=rwc".into(), false))
        );
        assert_eq!(
            u("sqlite:///d/p.db?cache=private"),
            Some(("sqlite:///d/p.db?cache=private&mode=rwc".into(), false))
        );
        assert_eq!(
            u("sqlite:///d/p.db?mode=ro"),
            Some(("sqlite:///d/p.db?mode=ro".into(), false))
        );
        assert_eq!(u("sqlite::memory:"), Some(("sqlite::memory:".into(), true)));
        assert!(u("postgres://h/db").is_none());
    }

    #[test]
    fn device_keys_separate_what_they_should() {
        let t1 = DeviceToken::new("aa");
        let t2 = DeviceToken::new("bb");
        let room = BareJid::new("room@muc.example").unwrap();
        // Tigase: the token is the identity.
        assert_eq!(
            device_key(Dialect::Tigase, &t1, None, None),
            device_key(Dialect::Tigase, &t1, Some("x"), None)
        );
        assert_ne!(
            device_key(Dialect::Tigase, &t1, None, None),
            device_key(Dialect::Tigase, &t2, None, None)
        );
        // p2: device id + muc; the token does not matter.
        assert_eq!(
            device_key(Dialect::P2, &t1, Some("d"), None),
            device_key(Dialect::P2, &t2, Some("d"), None)
        );
        assert_ne!(
            device_key(Dialect::P2, &t1, Some("d"), None),
            device_key(Dialect::P2, &t1, Some("d"), Some(&room))
        );
        // No ambiguity between a device id and a token with the same text, or across dialects.
        assert_ne!(
            device_key(Dialect::P2, &DeviceToken::new("d"), None, None),
            device_key(Dialect::P2, &t1, Some("d"), None)
        );
        assert_ne!(
            device_key(Dialect::P2, &t1, None, None),
            device_key(Dialect::Tigase, &t1, None, None)
        );
        assert_eq!(device_key(Dialect::Tigase, &t1, None, None).len(), 64);
    }
}
