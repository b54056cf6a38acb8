//! Registrations, persisted: the only state that must survive a restart.
//!
//! Every fact a publish needs (which provider, which token, which domain a node is bound to) is
//! read from the database, never cached in one process, so several pushgate instances can share
//! one PostgreSQL (or one instance can use the embedded SQLite file) and agree. Registration is
//! idempotent and race-free across instances: a unique index on the device identity decides, and
//! the loser of a race re-reads the winner's row.
//!
//! Nodes are credentials (a Tigase-dialect node is the *only* credential), so they are looked up
//! through the SHA-256 of the node and confirmed in constant time, and nothing here logs a node,
//! secret or token whole.

mod admin;
pub mod credentials;
pub mod entity;
mod stats;

pub use admin::RegistrationFilter;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::sqlx::sqlite::SqliteJournalMode;
use sea_orm::{
    ActiveModelTrait, ActiveValue::NotSet, ActiveValue::Set, ColumnTrait, ConnectOptions, Database,
    DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter, SqlErr,
};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::ids::{BareJid, DeviceToken, Dialect, NodeId, ProviderId, Secret};
use pushgate_providers::{Device, WebPushKeys};

use entity::{ActiveModel, Column, Entity, Model};

/// How often `register` re-reads after losing an insert race before giving up. One retry is
/// normally enough; more only matter if rows are deleted while being re-registered.
const REGISTER_ATTEMPTS: u32 = 5;
/// Longest stored `last_error`, in characters: provider error bodies can be large.
const MAX_ERROR_CHARS: usize = 500;
/// Longer "nodes" are not ours (ours are 22 characters); refuse them before hashing.
const MAX_NODE_LEN: usize = 256;

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
    /// Concurrent writers kept winning; should not happen outside pathological load.
    #[error("registration kept conflicting with concurrent writers; giving up")]
    Contended,
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

/// The indexed lookup key of a node: an index probe on it reveals nothing about stored nodes.
fn node_hash(node: &str) -> String {
    hex(&Sha256::digest(node.as_bytes()))
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

fn is_unique_violation(e: &DbErr) -> bool {
    matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// Handle on the registration database. Cloning shares the connection pool.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
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
                opts.max_connections(4).map_sqlx_sqlite_opts(|o| {
                    o.journal_mode(SqliteJournalMode::Wal)
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
        Ok(Store { db })
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
    /// row with a fresh node (and, for p2, a fresh secret).
    ///
    /// No transaction: read, then insert; if another writer (possibly another instance) inserted
    /// the same device first, the unique index refuses ours and we re-read and update theirs.
    pub async fn register(&self, new: NewRegistration) -> Result<Registration, StoreError> {
        let key = device_key(
            new.dialect,
            &new.token,
            new.device_id.as_deref(),
            new.muc.as_ref(),
        );
        for attempt in 1..=REGISTER_ATTEMPTS {
            if let Some(existing) = self.find_device(&new, &key).await? {
                match self.refresh(existing, &new).await {
                    Ok(m) => {
                        debug!(id = m.id, "registration refreshed");
                        return Registration::try_from(m);
                    }
                    // Deleted between our read and our update: register afresh.
                    Err(DbErr::RecordNotUpdated) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            match self.insert(&new, &key).await {
                Ok(m) => {
                    info!(id = m.id, dialect = new.dialect.as_str(), provider = %new.provider, "registration created");
                    return Registration::try_from(m);
                }
                Err(e) if is_unique_violation(&e) => {
                    debug!(
                        attempt,
                        "registration raced with a concurrent writer; re-reading"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        warn!(
            attempts = REGISTER_ATTEMPTS,
            "registration kept conflicting; giving up"
        );
        Err(StoreError::Contended)
    }

    async fn find_device(&self, new: &NewRegistration, key: &str) -> Result<Option<Model>, DbErr> {
        Entity::find()
            .filter(Column::Dialect.eq(new.dialect.as_str()))
            .filter(Column::Provider.eq(new.provider.as_str()))
            .filter(Column::Account.eq(new.account.as_str()))
            .filter(Column::DeviceKey.eq(key))
            .one(&self.db)
            .await
    }

    async fn refresh(&self, existing: Model, new: &NewRegistration) -> Result<Model, DbErr> {
        let mut am: ActiveModel = existing.into();
        am.device_id = Set(new.device_id.clone());
        am.muc = Set(new.muc.as_ref().map(|m| m.as_str().to_owned()));
        am.token = Set(new.token.as_str().to_owned());
        am.second_token = Set(new.second_token.as_ref().map(|t| t.as_str().to_owned()));
        am.webpush_p256dh = Set(new.webpush_keys.as_ref().map(|k| k.p256dh.clone()));
        am.webpush_auth = Set(new.webpush_keys.as_ref().map(|k| k.auth.clone()));
        am.updated_at = Set(now());
        am.update(&self.db).await
    }

    async fn insert(&self, new: &NewRegistration, key: &str) -> Result<Model, DbErr> {
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
        .insert(&self.db)
        .await
    }

    /// Lookup by node, via the indexed hash, confirmed with a constant-time comparison.
    pub async fn find_by_node(&self, node: &str) -> Result<Option<Registration>, StoreError> {
        if node.is_empty() || node.len() > MAX_NODE_LEN {
            return Ok(None);
        }
        let found = Entity::find()
            .filter(Column::NodeHash.eq(node_hash(node)))
            .one(&self.db)
            .await?;
        match found {
            Some(m) if NodeId::from_stored(m.node.clone()).matches(node) => {
                Registration::try_from(m).map(Some)
            }
            _ => Ok(None),
        }
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
        let res = Entity::delete_many()
            .filter(Column::Dialect.eq(dialect.as_str()))
            .filter(Column::Provider.eq(provider.as_str()))
            .filter(Column::Account.eq(account.as_str()))
            .filter(Column::DeviceKey.eq(device_key))
            .exec(&self.db)
            .await?;
        debug!(removed = res.rows_affected, "unregister");
        Ok(res.rows_affected > 0)
    }

    /// Removes a registration by id (e.g. after a provider reported its token dead).
    pub async fn delete(&self, id: i64) -> Result<bool, StoreError> {
        let res = Entity::delete_by_id(id).exec(&self.db).await?;
        Ok(res.rows_affected > 0)
    }

    /// Notes a delivery the provider accepted. A vanished row is not an error: it was
    /// unregistered meanwhile.
    pub async fn record_success(&self, id: i64) -> Result<(), StoreError> {
        Entity::update_many()
            .col_expr(Column::LastSuccessAt, Expr::value(now()))
            .filter(Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Notes a failed delivery; `reason` is cut to 500 characters.
    pub async fn record_error(&self, id: i64, reason: &str) -> Result<(), StoreError> {
        let reason: String = reason.chars().take(MAX_ERROR_CHARS).collect();
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
mod tests {
    use super::*;

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
