//! Publish lookups that miss the cache, read from the database in batches.
//!
//! With more registrations than the cache holds (a million devices, each pushed now and then)
//! nearly every publish misses it, and one indexed read per publish cost ~170 µs of CPU, most of
//! it the per-statement overhead of the pool and the driver rather than SQLite's B-tree
//! (docs/performance.md, "Performance, round two"). Here misses queue for a reader task, which takes
//! whatever has queued when a query slot is free and reads it with one `IN (…)` statement: a
//! lone miss waits for nothing, a burst shares one round trip. At most `MAX_QUERIES` statements
//! run at once, so the lookups leave pool connections to the writers.
//!
//! Batch statements come in power-of-two sizes (`pow2_padded`), so each connection prepares at
//! most a handful of them.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::cache::NodeHash;
use super::entity::{Column, Entity, Model};
use super::pow2_padded;

/// Keys per statement (per read transaction in `sqlite_reader.rs`).
pub(super) const MAX_BATCH: usize = 64;
/// Statements in flight at once.
const MAX_QUERIES: usize = 2;
/// Misses waiting for a statement; beyond it a publish waits to queue (its deadline bounds it).
const QUEUE: usize = 4096;

pub(super) type Answer = Result<Option<Model>, DbErr>;

pub(super) struct Miss {
    pub(super) key: NodeHash,
    pub(super) reply: oneshot::Sender<Answer>,
}

pub(super) struct Lookups {
    misses: mpsc::Sender<Miss>,
}

impl Lookups {
    pub(super) fn start(db: DatabaseConnection) -> Lookups {
        let (misses, queue) = mpsc::channel(QUEUE);
        tokio::spawn(read(db, queue));
        Lookups { misses }
    }

    /// Lookups in the SQLite file `file` by a thread of their own (`sqlite_reader.rs`).
    pub(super) fn start_sqlite(file: &Path) -> Result<Lookups, DbErr> {
        let (misses, queue) = mpsc::channel(QUEUE);
        super::sqlite_reader::start(file, queue)?;
        Ok(Lookups { misses })
    }

    /// The row whose `node_hash` is `key`'s, if any.
    pub(super) async fn find(&self, key: NodeHash) -> Answer {
        let (reply, answer) = oneshot::channel();
        let stopped = || DbErr::Custom("registration reader stopped".into());
        self.misses
            .send(Miss { key, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn read(db: DatabaseConnection, mut queue: mpsc::Receiver<Miss>) {
    let slots = Arc::new(Semaphore::new(MAX_QUERIES));
    while let Some(first) = queue.recv().await {
        // Wait for a free slot before taking the rest: what queues meanwhile joins this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        super::take_queued(&mut queue, &mut batch, MAX_BATCH);
        let db = db.clone();
        tokio::spawn(async move {
            answer(&db, batch).await;
            drop(slot);
        });
    }
}

async fn answer(db: &DatabaseConnection, batch: Vec<Miss>) {
    let mut keys: Vec<String> = Vec::with_capacity(batch.len());
    let mut waiting: HashMap<String, Vec<oneshot::Sender<Answer>>> = HashMap::new();
    for miss in batch {
        let key = crate::ids::hex(&miss.key);
        let waiters = waiting.entry(key.clone()).or_default();
        if waiters.is_empty() {
            keys.push(key);
        }
        waiters.push(miss.reply);
    }
    match Entity::find()
        .filter(Column::NodeHash.is_in(pow2_padded(keys)))
        .all(db)
        .await
    {
        Ok(rows) => {
            for row in rows {
                if let Some(waiters) = waiting.remove(&row.node_hash) {
                    send_all(waiters, Ok(Some(row)));
                }
            }
            for (_, waiters) in waiting {
                send_all(waiters, Ok(None));
            }
        }
        Err(e) => {
            for (_, waiters) in waiting {
                send_all(waiters, Err(e.clone()));
            }
        }
    }
}

/// Copies the answer only for the second and later waiters of one key: the row is twenty
/// columns, most of them strings.
fn send_all(mut waiters: Vec<oneshot::Sender<Answer>>, answer: Answer) {
    let last = waiters.pop();
    // A waiter that gave up (its deadline passed) needs no answer.
    for waiter in waiters {
        let _ = waiter.send(answer.clone());
    }
    if let Some(waiter) = last {
        let _ = waiter.send(answer);
    }
}
