//! Registrations that arrive together are written together: one transaction, one commit.
//!
//! A burst of `register-device` commands (every app re-registers when it connects, so a server
//! restart brings thousands at once) otherwise costs a statement and a commit each; the profile
//! in docs/performance.md put most of a registration's CPU there. One writer task takes
//! whatever is queued when it is free, so a lone registration waits for nothing and a burst is
//! written in batches of up to `MAX_ROWS`. The per-account limit is decided for the batch as a
//! whole in [`Writer::write`], so it holds here exactly as for a lone registration.

use std::collections::HashMap;

use sea_orm::DbErr;
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use super::writer::{Decided, Identity, Pending, Writer};

/// Registrations per batch; statements are cut smaller by `Writer::rows_per_statement`.
const MAX_ROWS: usize = 256;
const QUEUE: usize = 4096;

struct Job {
    pending: Pending,
    reply: oneshot::Sender<Decided>,
}

pub(super) struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    pub(super) fn start(writer: Writer) -> GroupCommit {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(write(writer, queue));
        GroupCommit { jobs }
    }

    /// What the writer decided, or `Err(pending)` back if the writer is gone (the runtime is
    /// shutting down).
    pub(super) async fn submit(&self, pending: Pending) -> Result<Decided, Pending> {
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(Job { pending, reply }).await {
            return Err(job.pending);
        }
        match answer.await {
            Ok(decided) => Ok(decided),
            Err(_) => Ok(Err(
                DbErr::Custom("registration writer stopped".into()).into()
            )),
        }
    }
}

async fn write(writer: Writer, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        super::take_queued(&mut queue, &mut jobs, MAX_ROWS);
        let (rows, started) = (jobs.len(), std::time::Instant::now());
        write_batch(&writer, jobs).await;
        tracing::debug!(
            rows,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "registrations written"
        );
    }
}

/// One transaction for the batch; if it fails, each device on its own, so one bad row cannot
/// fail the others.
async fn write_batch(writer: &Writer, jobs: Vec<Job>) {
    // The same device twice in one batch (a client retrying): one row, the newest values, and
    // both asks get it. PostgreSQL refuses to upsert one row twice in a statement. It may be
    // added if either ask may add one.
    let mut slot: HashMap<Identity, usize> = HashMap::with_capacity(jobs.len());
    let mut batch: Vec<Pending> = Vec::with_capacity(jobs.len());
    let mut waiting = Vec::with_capacity(jobs.len());
    for Job { pending, reply } in jobs {
        let identity = pending.identity.clone();
        match slot.get(&identity) {
            Some(&i) => {
                let may_add = batch[i].admission.may_add || pending.admission.may_add;
                batch[i] = pending;
                batch[i].admission.may_add = may_add;
            }
            None => {
                slot.insert(identity.clone(), batch.len());
                batch.push(pending);
            }
        }
        waiting.push((identity, reply));
    }
    // Kept for the one-by-one retry.
    let decided: Vec<Decided> = match writer.write(batch.clone()).await {
        Ok(decided) => decided,
        Err(e) => {
            tracing::debug!(
                rows = batch.len(),
                "batched registration failed ({e}); one by one"
            );
            let mut one_by_one = Vec::with_capacity(batch.len());
            for pending in batch {
                one_by_one.push(writer.write_one(pending).await);
            }
            one_by_one
        }
    };
    for (identity, reply) in waiting {
        let result = match slot.get(&identity).and_then(|&i| decided.get(i)) {
            Some(d) => copy(d),
            None => Err(DbErr::RecordNotInserted.into()),
        };
        let _ = reply.send(result);
    }
}

/// One decision for each ask of the same device.
fn copy(decided: &Decided) -> Decided {
    match decided {
        Ok(stored) => Ok(stored.clone()),
        Err(StoreError::AccountFull { limit }) => Err(StoreError::AccountFull { limit: *limit }),
        Err(StoreError::AddingPaused) => Err(StoreError::AddingPaused),
        Err(e) => Err(DbErr::Custom(e.to_string()).into()),
    }
}
