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

use pushgate_providers::{Device, DeviceToken, ProviderId, WebPushKeys};
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement, Value};

use super::{Store, StoreError};

/// Longest stored `last_error`, in characters.
const MAX_ERROR_CHARS: usize = 300;

/// Whom a queued notification is for: a registration (its row says the rest, and it may change
/// or go before the retry), or a device named in the request that pushgate does not keep.
#[derive(Debug, Clone)]
pub enum QueuedFor {
    Registration(i64),
    Device(Device),
}

impl QueuedFor {
    /// The condition selecting this device's rows, and its values.
    fn rows(&self) -> (&'static str, Vec<Value>) {
        match self {
            QueuedFor::Registration(id) => ("registration_id = ?", vec![(*id).into()]),
            QueuedFor::Device(d) => (
                "registration_id IS NULL AND provider = ? AND token = ?",
                vec![d.provider.as_str().into(), d.token.as_str().into()],
            ),
        }
    }

    /// Values of the columns `registration_id, provider, token, second_token, webpush_p256dh,
    /// webpush_auth`.
    fn columns(&self) -> Vec<Value> {
        let none = || Value::String(None);
        match self {
            QueuedFor::Registration(id) => {
                vec![(*id).into(), none(), none(), none(), none(), none()]
            }
            QueuedFor::Device(d) => vec![
                Value::BigInt(None),
                d.provider.as_str().into(),
                d.token.as_str().into(),
                d.second_token
                    .as_ref()
                    .map(|t| t.as_str().to_owned())
                    .into(),
                d.webpush_keys.as_ref().map(|k| k.p256dh.clone()).into(),
                d.webpush_keys.as_ref().map(|k| k.auth.clone()).into(),
            ],
        }
    }
}

/// A notification on its way into the queue.
#[derive(Debug)]
pub struct NewQueued {
    pub target: QueuedFor,
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
    pub target: QueuedFor,
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
    pub(super) fn statement(&self, sql: &str, values: Vec<Value>) -> Statement {
        let backend = self.db.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => numbered(sql),
            _ => sql.to_owned(),
        };
        Statement::from_sql_and_values(backend, sql, values)
    }

    /// Runs a `DELETE`, in turn with the other writers; how many rows it removed.
    pub(super) async fn delete_rows(
        &self,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<u64, StoreError> {
        let _turn = self.write_turn().await;
        let done = self.db.execute_raw(self.statement(sql, values)).await?;
        Ok(done.rows_affected())
    }

    /// The `n` column of a `SELECT COUNT(*) AS n …`, run on `conn` (the store or a
    /// transaction of it).
    pub(super) async fn count_rows(
        &self,
        conn: &impl ConnectionTrait,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<i64, StoreError> {
        Ok(conn
            .query_one_raw(self.statement(sql, values))
            .await?
            .map(|row| row.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0))
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
        let (rows, of_device) = new.target.rows();
        if new.replaces_same_kind {
            let mut values = of_device.clone();
            values.push(new.kind.into());
            txn.execute_raw(self.statement(
                &format!("DELETE FROM queued_notifications WHERE {rows} AND kind = ?"),
                values,
            ))
            .await?;
        }
        let queued = self
            .count_rows(
                &txn,
                &format!("SELECT COUNT(*) AS n FROM queued_notifications WHERE {rows}"),
                of_device,
            )
            .await?;
        if queued >= i64::from(max_per_device) {
            txn.rollback().await?;
            return Ok(Enqueued::DeviceFull);
        }
        let mut values = new.target.columns();
        values.extend([
            new.kind.into(),
            new.notification.into(),
            new.now_ms.into(),
            new.expires_at_ms.into(),
            new.due_at_ms.into(),
            error.into(),
        ]);
        txn.execute_raw(self.statement(
            "INSERT INTO queued_notifications (registration_id, provider, token, second_token, \
             webpush_p256dh, webpush_auth, kind, notification, enqueued_at, expires_at, due_at, \
             attempts, last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?)",
            values,
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
             (SELECT id FROM queued_notifications WHERE due_at <= ? ORDER BY due_at LIMIT {limit}{lock}) \
             RETURNING id, registration_id, provider, token, second_token, webpush_p256dh, \
             webpush_auth, notification, enqueued_at, expires_at, attempts"
        );
        let rows = {
            let _turn = self.write_turn().await;
            self.db
                .query_all_raw(self.statement(&sql, vec![lease_until_ms.into(), now_ms.into()]))
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
    let target = match row.try_get::<Option<i64>>("", "registration_id")? {
        Some(registration) => QueuedFor::Registration(registration),
        None => {
            let text = |column| row.try_get::<Option<String>>("", column);
            let (Some(provider), Some(token)) = (text("provider")?, text("token")?) else {
                return Err(StoreError::CorruptQueued {
                    id,
                    field: "queued device",
                });
            };
            let webpush_keys = match (text("webpush_p256dh")?, text("webpush_auth")?) {
                (Some(p256dh), Some(auth)) => Some(WebPushKeys { p256dh, auth }),
                _ => None,
            };
            QueuedFor::Device(Device {
                provider: ProviderId::new(provider),
                token: DeviceToken::new(token),
                second_token: text("second_token")?.map(DeviceToken::new),
                webpush_keys,
            })
        }
    };
    Ok(Queued {
        id,
        target,
        notification: row.try_get("", "notification")?,
        enqueued_at_ms: row.try_get("", "enqueued_at")?,
        expires_at_ms: row.try_get("", "expires_at")?,
        attempts: u32::try_from(attempts).map_err(|_| StoreError::CorruptQueued {
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
