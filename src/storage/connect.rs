//! Opening the database: URL handling, pool and SQLite settings, and the migrations every start
//! runs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, Database};
use tracing::info;

use super::cache::RegistrationCache;
use super::group_commit::GroupCommit;
use super::lookup::Lookups;
use super::writer::Writer;

/// How long a SQLite connection (the pool's and the lookup thread's) waits for a lock: a
/// writer's commit or a checkpoint holds others back for a moment; writers queue on it instead
/// of failing with "database is locked".
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Page cache per SQLite connection, in KiB when negative: 1 MiB (SQLite's default is 2). With a
/// million devices 4 MiB was no faster: what a lookup reads is a leaf page of its own, which no
/// cache of this size holds (docs/performance.md, "Performance, round two").
pub(super) const CACHE_SIZE: &str = "-1024";
use super::{Store, StoreError};
use crate::config::StorageConfig;

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
    /// The database to open: `storage.url`, or the embedded SQLite file under
    /// `storage.data_dir` (created if missing).
    pub fn url_for(config: &StorageConfig) -> Result<String, StoreError> {
        match &config.url {
            Some(url) => Ok(url.clone()),
            None => Store::sqlite_url_in(&config.data_dir),
        }
    }

    /// Connects and runs all pending migrations (so every start is up to date). SQLite URLs get
    /// `mode=rwc` unless they name a mode.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let sqlite = sqlite_url(url);
        if sqlite.is_some() {
            super::sqlite_memory::configure();
        }
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
                //
                // A file does not drop connections: no ping per acquire, which cost two round
                // trips to the connection's thread per query (docs/performance.md).
                opts.max_connections(4)
                    .test_before_acquire(false)
                    .map_sqlx_sqlite_opts(|o| {
                        o.journal_mode(SqliteJournalMode::Wal)
                            .synchronous(SqliteSynchronous::Normal)
                            .busy_timeout(BUSY_TIMEOUT)
                            .pragma("cache_size", CACHE_SIZE)
                    });
            }
            None => {
                opts.max_connections(10);
            }
        }
        let db = Database::connect(opts).await?;
        pushgate_migrations::run(&db).await?;
        info!(backend = ?db.get_database_backend(), "registration store ready");
        let writer = Writer::new(db.clone(), matches!(&sqlite, Some(s) if !s.in_memory));
        let lookups = match &sqlite {
            Some(s) if !s.in_memory => {
                let file = db
                    .get_sqlite_connection_pool()
                    .connect_options()
                    .get_filename()
                    .to_owned();
                Lookups::start_sqlite(&file)?
            }
            _ => Lookups::start(db.clone()),
        };
        Ok(Store {
            lookups: Arc::new(lookups),
            db,
            cache: None,
            // One commit for a burst instead of one each: 3× the registrations per second on
            // both backends (docs/performance.md).
            group_commit: Arc::new(GroupCommit::start(writer.clone())),
            writer,
        })
    }

    /// Keeps up to `capacity` registrations, in at most about `max_bytes`, for up to `ttl` for
    /// [`Store::find_by_node`]; see `cache.rs` for what that means with several instances. Zero
    /// turns caching off.
    pub fn with_cache(mut self, capacity: usize, max_bytes: usize, ttl: Duration) -> Store {
        self.cache = RegistrationCache::new(capacity, max_bytes, ttl).map(Arc::new);
        self
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
}
