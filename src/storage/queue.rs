//! The retry queue, persisted: notifications pushgate answered for but could not deliver yet.
//!
//! The queue is a table in the registration database (migration `..._queued_notifications`), so
//! it survives restarts and is shared by every instance on one PostgreSQL. What to queue, when to
//! retry and when to give up is the core's (`core/retry.rs`); this module only keeps the rows
//! and hands out due ones so that no two instances attempt a row at once:
//!
//! - A claim moves the rows it takes past now (`due_at` = the end of the lease) in the statement
//!   that selects them; on PostgreSQL the selection skips rows another instance is claiming
//!   (`FOR UPDATE SKIP LOCKED`). An instance that dies mid-attempt leaves its rows due again when
//!   the lease ends: a notification may then go out twice, never not at all.
//! - SQLite is one process's database; its writes take turns (`writer.rs`).
//!
//! Times are milliseconds since the Unix epoch; the SQL is written once with `?` placeholders
//! and numbered for PostgreSQL.

use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, Value};

use super::{Store, StoreError};

/// Longest stored `last_error`, in characters.
const MAX_ERROR_CHARS: usize = 300;

/// A notification on its way into the queue.
#[derive(Debug)]
pub struct NewQueued {
    pub registration_id: i64,
    /// The notification's kind label (`alert`, `background`, `voip`, `clear`).
    pub kind: &'static str,
    /// The notification, serialised by the core.
    pub notification: String,
    /// Whether this notification replaces queued ones of the same kind for the device (a
    /// newer background wake-up makes an older one pointless).
    pub replaces_same_kind: bool,
    pub now_ms: i64,
    pub due_at_ms: i64,
    pub expires_at_ms: i64,
    /// Why the first attempt failed.
    pub error: String,
}

/// What became of a [`NewQueued`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// The device already has the most notifications it may have queued.
    DeviceFull,
}

/// A claimed row, to be attempted within its lease.
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: i64,
    pub registration_id: i64,
    pub notification: String,
    pub enqueued_at_ms: i64,
    pub expires_at_ms: i64,
    /// Attempts made before this claim, the publish's own included.
    pub attempts: u32,
}

/// How much is queued, over every instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    pub rows: u64,
    pub oldest_enqueued_at_ms: Option<i64>,
}

impl Store {
    fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => numbered(sql),
            _ => sql.to_owned(),
        };
        Statement::from_sql_and_values(backend, sql, values)
    }

    /// Queues `new` unless its device has `max_per_device` queued already (counted after the
    /// replaced ones are gone). One transaction: the count and the insert agree.
    pub async fn enqueue(
        &self,
        new: NewQueued,
        max_per_device: u32,
    ) -> Result<Enqueued, StoreError> {
        let error: String = new.error.chars().take(MAX_ERROR_CHARS).collect();
        let _turn = self.write_turn().await;
        let txn = super::begin_write(&self.db).await?;
        if new.replaces_same_kind {
            txn.execute_raw(self.statement(
                "DELETE FROM queued_notifications WHERE registration_id = ? AND kind = ?",
                vec![new.registration_id.into(), new.kind.into()],
            ))
            .await?;
        }
        let queued = txn
            .query_one_raw(self.statement(
                "SELECT COUNT(*) AS n FROM queued_notifications WHERE registration_id = ?",
                vec![new.registration_id.into()],
            ))
            .await?
            .map(|row| row.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        if queued >= i64::from(max_per_device) {
            txn.rollback().await?;
            return Ok(Enqueued::DeviceFull);
        }
        txn.execute_raw(self.statement(
            "INSERT INTO queued_notifications \
             (registration_id, kind, notification, enqueued_at, expires_at, due_at, attempts, last_error) \
             VALUES (?, ?, ?, ?, ?, ?, 1, ?)",
            vec![
                new.registration_id.into(),
                new.kind.into(),
                new.notification.into(),
                new.now_ms.into(),
                new.expires_at_ms.into(),
                new.due_at_ms.into(),
                error.into(),
            ],
        ))
        .await?;
        txn.commit().await?;
        Ok(Enqueued::Queued)
    }

    /// Takes up to `limit` rows due at `now_ms`, oldest due first, and leases them until
    /// `lease_until_ms`.
    pub async fn claim_due(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> Result<Vec<Queued>, StoreError> {
        let lock = match self.db.get_database_backend() {
            DbBackend::Postgres => " FOR UPDATE SKIP LOCKED",
            _ => "",
        };
        let sql = format!(
            "UPDATE queued_notifications SET due_at = ? WHERE id IN \
             (SELECT id FROM queued_notifications WHERE due_at <= ? ORDER BY due_at LIMIT ?{lock}) \
             RETURNING id, registration_id, notification, enqueued_at, expires_at, attempts"
        );
        let rows = {
            let _turn = self.write_turn().await;
            self.db
                .query_all_raw(self.statement(
                    &sql,
                    vec![
                        lease_until_ms.into(),
                        now_ms.into(),
                        i64::from(limit).into(),
                    ],
                ))
                .await?
        };
        rows.iter().map(queued).collect()
    }

    /// Puts a claimed row back, due at `due_at_ms`, after its `attempts`-th failed attempt.
    pub async fn requeue(
        &self,
        id: i64,
        due_at_ms: i64,
        attempts: u32,
        error: &str,
    ) -> Result<(), StoreError> {
        let error: String = error.chars().take(MAX_ERROR_CHARS).collect();
        let _turn = self.write_turn().await;
        self.db
            .execute_raw(self.statement(
                "UPDATE queued_notifications SET due_at = ?, attempts = ?, last_error = ? WHERE id = ?",
                vec![
                    due_at_ms.into(),
                    i64::from(attempts).into(),
                    error.into(),
                    id.into(),
                ],
            ))
            .await?;
        Ok(())
    }

    /// Removes a row: delivered, expired, or its device is gone.
    pub async fn dequeue(&self, id: i64) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        self.db
            .execute_raw(self.statement(
                "DELETE FROM queued_notifications WHERE id = ?",
                vec![id.into()],
            ))
            .await?;
        Ok(())
    }

    /// Rows queued, and when the oldest was queued.
    pub async fn queue_depth(&self) -> Result<QueueDepth, StoreError> {
        let row = self
            .db
            .query_one_raw(self.statement(
                "SELECT COUNT(*) AS n, MIN(enqueued_at) AS oldest FROM queued_notifications",
                vec![],
            ))
            .await?;
        let Some(row) = row else {
            return Ok(QueueDepth::default());
        };
        Ok(QueueDepth {
            rows: u64::try_from(row.try_get::<i64>("", "n")?).unwrap_or(0),
            oldest_enqueued_at_ms: row.try_get::<Option<i64>>("", "oldest")?,
        })
    }
}

fn queued(row: &QueryResult) -> Result<Queued, StoreError> {
    let attempts: i64 = match row.try_get::<i32>("", "attempts") {
        Ok(n) => n.into(),
        Err(_) => row.try_get::<i64>("", "attempts")?,
    };
    let id = row.try_get::<i64>("", "id")?;
    Ok(Queued {
        id,
        registration_id: row.try_get("", "registration_id")?,
        notification: row.try_get("", "notification")?,
        enqueued_at_ms: row.try_get("", "enqueued_at")?,
        expires_at_ms: row.try_get("", "expires_at")?,
        attempts: u32::try_from(attempts).map_err(|_| StoreError::Corrupt {
            id,
            field: "attempts",
        })?,
    })
}

/// `?` placeholders as PostgreSQL's `$1, $2, …` (the queue's SQL has no `?` elsewhere).
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::numbered;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(
            numbered("UPDATE t SET a = ? WHERE b = ? AND c = ?"),
            "UPDATE t SET a = $1 WHERE b = $2 AND c = $3"
        );
    }
}
