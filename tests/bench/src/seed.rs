//! Seeds the store with the benchmark's registrations before pushgate starts, in bulk through
//! `Store::insert_batch` (one transaction of multi-row inserts per call), so that 100k and 1M
//! devices take seconds rather than the half hour one `register` at a time would.

use std::path::Path;
use std::time::Instant;

use sea_orm::{ConnectionTrait, Database, Statement};

use pushgate::ids::{BareJid, DeviceToken, Dialect, ProviderId};
use pushgate::storage::{NewRegistration, Store};

use crate::report::{clock_ticks, cpu_ticks};
use crate::{BoxError, DOMAIN, ProviderSink};

/// Registrations per `insert_batch` call.
pub(crate) const BATCH: usize = 1_000;

/// What seeding did: the nodes, and the time and the benchmark's CPU spent inserting (opening
/// the store and its migrations excluded).
pub(crate) struct Seeded {
    pub(crate) nodes: Vec<String>,
    pub(crate) secs: f64,
    pub(crate) cpu_secs: f64,
}

impl Seeded {
    pub(crate) fn rate(&self) -> f64 {
        self.nodes.len() as f64 / self.secs.max(1e-9)
    }
}

/// Registers `devices` devices of one account (Tigase dialect) with the sink's provider and
/// tokens; returns their nodes (the order does not matter: publishes go round-robin).
pub(crate) async fn seed(
    db_url: &str,
    devices: usize,
    sink: &dyn ProviderSink,
) -> Result<Seeded, BoxError> {
    let store = Store::open(db_url).await?;
    let started = Instant::now();
    let cpu_before = cpu_ticks(std::process::id())?;
    let account: BareJid = format!("bench@{DOMAIN}").parse()?;
    let provider = ProviderId::new(sink.provider_id());
    let mut nodes = Vec::with_capacity(devices);
    let mut batch = Vec::with_capacity(BATCH);
    for start in (0..devices).step_by(BATCH) {
        batch.clear();
        batch.extend(
            (start..devices.min(start + BATCH)).map(|i| NewRegistration {
                dialect: Dialect::Tigase,
                provider: provider.clone(),
                account: account.clone(),
                device_id: None,
                muc: None,
                token: DeviceToken::new(sink.token(i)),
                second_token: None,
                webpush_keys: None,
            }),
        );
        let stored = store.insert_batch(&batch).await?;
        if stored.len() != batch.len() {
            return Err(format!(
                "insert_batch stored {} of {} registrations (is the database empty?)",
                stored.len(),
                batch.len()
            )
            .into());
        }
        nodes.extend(stored.into_iter().map(|r| r.node.as_str().to_owned()));
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_secs = cpu_ticks(std::process::id())?.saturating_sub(cpu_before) as f64 / clock_ticks();
    drop(store);
    Ok(Seeded {
        nodes,
        secs,
        cpu_secs,
    })
}

/// The SQLite file a run seeds in `dir` (`Store::sqlite_url_in`).
const DB_FILE: &str = "pushgate.db";

/// Copies the database just seeded in `dir` to `kept` (`--seeded-db`), its write-ahead log
/// checkpointed into the file first.
pub(crate) async fn keep(dir: &Path, db_url: &str, kept: &Path) -> Result<(), BoxError> {
    let db = Database::connect(db_url).await?;
    db.execute_unprepared("PRAGMA wal_checkpoint(TRUNCATE)")
        .await?;
    db.close().await?;
    std::fs::copy(dir.join(DB_FILE), kept)?;
    Ok(())
}

/// Copies a database kept by [`keep`] into `dir` and reads its nodes back instead of seeding.
pub(crate) async fn reuse(
    kept: &Path,
    dir: &Path,
    db_url: &str,
    devices: usize,
) -> Result<Seeded, BoxError> {
    let started = Instant::now();
    std::fs::copy(kept, dir.join(DB_FILE))?;
    let db = Database::connect(db_url).await?;
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT node FROM registrations ORDER BY id",
        ))
        .await?;
    let nodes = rows
        .iter()
        .map(|row| row.try_get::<String>("", "node"))
        .collect::<Result<Vec<_>, _>>()?;
    db.close().await?;
    if nodes.len() != devices {
        return Err(format!(
            "{} holds {} registrations, not --devices {devices}",
            kept.display(),
            nodes.len()
        )
        .into());
    }
    eprintln!("reused {} (no seeding)", kept.display());
    Ok(Seeded {
        nodes,
        secs: started.elapsed().as_secs_f64(),
        cpu_secs: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::Times;
    use crate::webpush_sink::start_sink;

    /// A kept database comes back with the same nodes, and one of another size is refused.
    #[tokio::test]
    async fn a_kept_database_is_reused_with_its_nodes() {
        let sink = start_sink(Arc::new(Times::new(1))).await.unwrap();
        let first = tempfile::tempdir().unwrap();
        let url = Store::sqlite_url_in(first.path()).unwrap();
        let seeded = seed(&url, 2_500, &sink).await.unwrap();
        let kept = first.path().join("kept.db");
        keep(first.path(), &url, &kept).await.unwrap();

        let second = tempfile::tempdir().unwrap();
        let url = Store::sqlite_url_in(second.path()).unwrap();
        let reused = reuse(&kept, second.path(), &url, 2_500).await.unwrap();
        let mut a = seeded.nodes.clone();
        let mut b = reused.nodes.clone();
        a.sort();
        b.sort();
        assert_eq!(a, b);
        // pushgate would find them there: the copy is a complete database.
        let store = Store::open(&url).await.unwrap();
        assert!(store.find_by_node(&a[1234]).await.unwrap().is_some());

        let third = tempfile::tempdir().unwrap();
        let url = Store::sqlite_url_in(third.path()).unwrap();
        assert!(reuse(&kept, third.path(), &url, 1_000).await.is_err());
    }
}
