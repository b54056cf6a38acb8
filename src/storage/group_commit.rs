//! Registrations that arrive together are written together: one multi-row upsert, one commit.
//!
//! A burst of `register-device` commands (every app re-registers when it connects, so a server
//! restart brings thousands at once) otherwise costs a statement and a commit each; the profile
//! in docs/performance.md put most of a registration's CPU there. One writer task takes
//! whatever is queued when it is free, so a lone registration waits for nothing and a burst is
//! written in batches of up to `MAX_ROWS`.

use std::collections::HashMap;

use sea_orm::DbErr;
use tokio::sync::{mpsc, oneshot};

use super::Store;
use super::entity::{ActiveModel, Model};

/// Rows per statement: 20 columns each stays far below both databases' bind-parameter limits.
const MAX_ROWS: usize = 256;
const QUEUE: usize = 4096;

/// (dialect, provider, account, device key): what the unique index calls one device.
pub(super) type Identity = (String, String, String, String);

struct Job {
    row: ActiveModel,
    identity: Identity,
    reply: oneshot::Sender<Result<Model, DbErr>>,
}

pub(super) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// `store` is the writer's own handle; it must not itself have a group commit.
    pub(super) fn start(store: Store) -> GroupCommit {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(write(store, queue));
        GroupCommit { jobs }
    }

    /// The stored row, or `Err(row)` back if the writer is gone (the runtime is shutting down).
    pub(super) async fn submit(
        &self,
        row: ActiveModel,
        identity: Identity,
    ) -> Result<Result<Model, DbErr>, ActiveModel> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self
            .jobs
            .send(Job {
                row,
                identity,
                reply,
            })
            .await
        {
            return Err(job.row);
        }
        match answer.await {
            Ok(result) => Ok(result),
            Err(_) => Ok(Err(DbErr::Custom("registration writer stopped".into()))),
        }
    }
}

async fn write(store: Store, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_ROWS {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (rows, started) = (jobs.len(), std::time::Instant::now());
        write_batch(&store, jobs).await;
        tracing::debug!(
            rows,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "registrations written"
        );
    }
}

/// One statement for the batch; if it fails, each device on its own, so one bad row cannot
/// fail the others.
async fn write_batch(store: &Store, jobs: Vec<Job>) {
    // The same device twice in one batch (a client retrying): one row, the newest values, and
    // both asks get it. PostgreSQL refuses to upsert one row twice in a statement.
    let mut slot: HashMap<Identity, usize> = HashMap::with_capacity(jobs.len());
    let mut rows: Vec<ActiveModel> = Vec::with_capacity(jobs.len());
    let mut waiting = Vec::with_capacity(jobs.len());
    for Job {
        row,
        identity,
        reply,
    } in jobs
    {
        match slot.get(&identity) {
            Some(&i) => rows[i] = row,
            None => {
                slot.insert(identity.clone(), rows.len());
                rows.push(row);
            }
        }
        waiting.push((identity, reply));
    }
    // Kept for the one-by-one retry.
    let stored: HashMap<Identity, Result<Model, DbErr>> = match store.upsert(rows.clone()).await {
        Ok(models) => models
            .into_iter()
            .map(|m| (identity_of(&m), Ok(m)))
            .collect(),
        Err(e) => {
            tracing::debug!(
                rows = rows.len(),
                "batched registration failed ({e}); one by one"
            );
            let mut one_by_one = HashMap::with_capacity(rows.len());
            for (identity, i) in slot {
                let result = store.upsert_one(rows[i].clone()).await;
                one_by_one.insert(identity, result);
            }
            one_by_one
        }
    };
    for (identity, reply) in waiting {
        let result = match stored.get(&identity) {
            Some(Ok(m)) => Ok(m.clone()),
            Some(Err(e)) => Err(DbErr::Custom(e.to_string())),
            None => Err(DbErr::RecordNotInserted),
        };
        let _ = reply.send(result);
    }
}

pub(super) fn identity_of(m: &Model) -> Identity {
    (
        m.dialect.clone(),
        m.provider.clone(),
        m.account.clone(),
        m.device_key.clone(),
    )
}
