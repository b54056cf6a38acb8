//! The UnifiedPush endpoints pushgate gave distributors (migration `..._unifiedpush`), the key
//! endpoint tokens are derived with, and the pushes kept for distributors that are away.
//!
//! A row is found by the SHA-256 of its token: the token is the endpoint's only credential, so
//! it is never stored, and a lookup by its hash compares no secret byte by byte. Times are
//! milliseconds since the Unix epoch.

use sea_orm::{ConnectionTrait, Value};

use super::{Store, StoreError};

/// One endpoint: where its pushes go and until when.
#[derive(Clone, PartialEq, Eq)]
pub struct UpEndpoint {
    /// The row's id (0 for one not saved yet).
    pub id: i64,
    /// The distributor's full JID.
    pub jid: String,
    /// Its bare JID, normalised.
    pub account: String,
    /// `genofire` or `conversations`.
    pub dialect: String,
    pub application: Option<String>,
    pub instance: Option<String>,
    pub public_token: Option<String>,
    /// The app server's VAPID public key (base64url) the registration pinned.
    pub vapid_key: Option<String>,
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for UpEndpoint {
    /// The public token names the app instance to the distributor only: not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpEndpoint")
            .field("account", &self.account)
            .field("dialect", &self.dialect)
            .field("expires_at_ms", &self.expires_at_ms)
            .finish_non_exhaustive()
    }
}

/// What became of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpSaved {
    Saved,
    /// A new endpoint for an account that holds `max_per_account` already.
    AccountFull,
}

impl Store {
    /// The endpoint token key: `fresh` if no instance made one before, else the one it made.
    pub async fn unifiedpush_key(&self, fresh: &str) -> Result<String, StoreError> {
        {
            let _turn = self.write_turn().await;
            self.db
                .execute_raw(self.statement(
                    "INSERT INTO unifiedpush_keys (id, key) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
                    vec![fresh.into()],
                ))
                .await?;
        }
        let row = self
            .db
            .query_one_raw(
                self.statement("SELECT key FROM unifiedpush_keys WHERE id = 1", Vec::new()),
            )
            .await?;
        Ok(row
            .map(|r| r.try_get::<String>("", "key"))
            .transpose()?
            .unwrap_or_else(|| fresh.to_owned()))
    }

    /// Saves the endpoint whose token hashes to `token_hash` (a new one, or the same app
    /// instance registered again, maybe from another resource), unless it is new and its
    /// account holds `max_per_account` already; expired endpoints of the account go first.
    pub async fn save_up_endpoint(
        &self,
        token_hash: &str,
        endpoint: &UpEndpoint,
        now_ms: i64,
        max_per_account: u32,
    ) -> Result<UpSaved, StoreError> {
        let _turn = self.write_turn().await;
        let txn = super::begin_write(&self.db).await?;
        txn.execute_raw(self.statement(
            "DELETE FROM unifiedpush_endpoints WHERE account = ? AND expires_at <= ?",
            vec![endpoint.account.as_str().into(), now_ms.into()],
        ))
        .await?;
        let exists = txn
            .query_one_raw(self.statement(
                "SELECT id FROM unifiedpush_endpoints WHERE token_hash = ?",
                vec![token_hash.into()],
            ))
            .await?
            .is_some();
        if !exists {
            let held = self
                .count_rows(
                    &txn,
                    "SELECT COUNT(*) AS n FROM unifiedpush_endpoints WHERE account = ?",
                    vec![endpoint.account.as_str().into()],
                )
                .await?;
            if held >= i64::from(max_per_account) {
                txn.rollback().await?;
                return Ok(UpSaved::AccountFull);
            }
        }
        let values: Vec<Value> = vec![
            token_hash.into(),
            endpoint.jid.as_str().into(),
            endpoint.account.as_str().into(),
            endpoint.dialect.as_str().into(),
            endpoint.application.clone().into(),
            endpoint.instance.clone().into(),
            endpoint.public_token.clone().into(),
            endpoint.vapid_key.clone().into(),
            now_ms.into(),
            endpoint.expires_at_ms.into(),
        ];
        txn.execute_raw(self.statement(
            "INSERT INTO unifiedpush_endpoints (token_hash, jid, account, dialect, application, \
             instance, public_token, vapid_key, created_at, expires_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (token_hash) DO UPDATE SET jid = excluded.jid, \
             vapid_key = excluded.vapid_key, expires_at = excluded.expires_at",
            values,
        ))
        .await?;
        txn.commit().await?;
        Ok(UpSaved::Saved)
    }

    /// The endpoint whose token hashes to `token_hash`, expired or not.
    pub async fn up_endpoint(&self, token_hash: &str) -> Result<Option<UpEndpoint>, StoreError> {
        let row = self
            .db
            .query_one_raw(self.statement(
                "SELECT id, jid, account, dialect, application, instance, public_token, \
                 vapid_key, expires_at FROM unifiedpush_endpoints WHERE token_hash = ?",
                vec![token_hash.into()],
            ))
            .await?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(UpEndpoint {
            id: row.try_get("", "id")?,
            jid: row.try_get("", "jid")?,
            account: row.try_get("", "account")?,
            dialect: row.try_get("", "dialect")?,
            application: row.try_get("", "application")?,
            instance: row.try_get("", "instance")?,
            public_token: row.try_get("", "public_token")?,
            vapid_key: row.try_get("", "vapid_key")?,
            expires_at_ms: row.try_get("", "expires_at")?,
        }))
    }

    /// Removes the endpoint whose token hashes to `token_hash`; whether there was one.
    pub async fn remove_up_endpoint(&self, token_hash: &str) -> Result<bool, StoreError> {
        self.delete_rows(
            "DELETE FROM unifiedpush_endpoints WHERE token_hash = ?",
            vec![token_hash.into()],
        )
        .await
        .map(|n| n > 0)
    }

    /// Removes every endpoint of the account `account` (bare JID); how many there were.
    pub async fn remove_up_endpoints_of(&self, account: &str) -> Result<u64, StoreError> {
        self.delete_rows(
            "DELETE FROM unifiedpush_endpoints WHERE account = ?",
            vec![account.into()],
        )
        .await
    }
}

/// A push to keep for a distributor that is away.
#[derive(Debug, Clone)]
pub struct NewUpMessage {
    pub endpoint_id: i64,
    /// RFC 8030 `Topic`: a newer push with the same topic replaces the kept one.
    pub topic: Option<String>,
    pub urgency: String,
    /// The body, base64.
    pub body: String,
    pub now_ms: i64,
    pub expires_at_ms: i64,
}

/// What became of a [`NewUpMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpKept {
    Kept,
    /// The endpoint has the most pushes it may have kept.
    EndpointFull,
    /// pushgate keeps the most pushes it may, over every endpoint.
    Full,
}

/// A kept push, with where it goes.
#[derive(Debug, Clone)]
pub struct UpMessage {
    pub id: i64,
    pub endpoint_id: i64,
    pub dialect: String,
    pub public_token: Option<String>,
    pub application: Option<String>,
    pub instance: Option<String>,
    /// The body, base64.
    pub body: String,
}

impl Store {
    /// Keeps `new` within `max_per_endpoint` (after one with the same topic is gone) and
    /// `max_total` over every endpoint (drop the expired ones first:
    /// [`Store::drop_expired_up_messages`]).
    pub async fn keep_up_message(
        &self,
        new: NewUpMessage,
        max_per_endpoint: u32,
        max_total: u32,
    ) -> Result<UpKept, StoreError> {
        let _turn = self.write_turn().await;
        let txn = super::begin_write(&self.db).await?;
        if let Some(topic) = &new.topic {
            txn.execute_raw(self.statement(
                "DELETE FROM unifiedpush_messages WHERE endpoint_id = ? AND topic = ?",
                vec![new.endpoint_id.into(), topic.as_str().into()],
            ))
            .await?;
        }
        let of_endpoint = self
            .count_rows(
                &txn,
                "SELECT COUNT(*) AS n FROM unifiedpush_messages WHERE endpoint_id = ?",
                vec![new.endpoint_id.into()],
            )
            .await?;
        let verdict = if of_endpoint >= i64::from(max_per_endpoint) {
            Some(UpKept::EndpointFull)
        } else if self
            .count_rows(
                &txn,
                "SELECT COUNT(*) AS n FROM unifiedpush_messages",
                Vec::new(),
            )
            .await?
            >= i64::from(max_total)
        {
            Some(UpKept::Full)
        } else {
            None
        };
        if let Some(full) = verdict {
            txn.rollback().await?;
            return Ok(full);
        }
        txn.execute_raw(self.statement(
            "INSERT INTO unifiedpush_messages (endpoint_id, topic, urgency, body, created_at, \
             expires_at) VALUES (?, ?, ?, ?, ?, ?)",
            vec![
                new.endpoint_id.into(),
                new.topic.into(),
                new.urgency.into(),
                new.body.into(),
                new.now_ms.into(),
                new.expires_at_ms.into(),
            ],
        ))
        .await?;
        txn.commit().await?;
        Ok(UpKept::Kept)
    }

    /// The unexpired pushes kept for the distributor at the full JID `jid`, oldest first, at
    /// most `limit`.
    pub async fn up_messages_for(
        &self,
        jid: &str,
        now_ms: i64,
        limit: u32,
    ) -> Result<Vec<UpMessage>, StoreError> {
        let rows = self
            .db
            .query_all_raw(self.statement(
                &format!("SELECT m.id AS id, m.endpoint_id AS endpoint_id, e.dialect AS dialect, \
                 e.public_token AS public_token, e.application AS application, e.instance AS instance, \
                 m.body AS body FROM unifiedpush_messages m JOIN unifiedpush_endpoints e \
                 ON e.id = m.endpoint_id WHERE e.jid = ? AND m.expires_at > ? \
                 ORDER BY m.id LIMIT {limit}"),
                vec![jid.into(), now_ms.into()],
            ))
            .await?;
        rows.iter()
            .map(|row| {
                Ok(UpMessage {
                    id: row.try_get("", "id")?,
                    endpoint_id: row.try_get("", "endpoint_id")?,
                    dialect: row.try_get("", "dialect")?,
                    public_token: row.try_get("", "public_token")?,
                    application: row.try_get("", "application")?,
                    instance: row.try_get("", "instance")?,
                    body: row.try_get("", "body")?,
                })
            })
            .collect()
    }

    /// Removes the endpoint with row id `id` (and what was kept for it); how many (0 or 1).
    pub async fn remove_up_endpoint_id(&self, id: i64) -> Result<u64, StoreError> {
        self.delete_rows(
            "DELETE FROM unifiedpush_endpoints WHERE id = ?",
            vec![id.into()],
        )
        .await
    }

    /// Drops the kept pushes whose time to live ran out at `now_ms`; how many.
    pub async fn drop_expired_up_messages(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.delete_rows(
            "DELETE FROM unifiedpush_messages WHERE expires_at <= ?",
            vec![now_ms.into()],
        )
        .await
    }

    /// Forgets a kept push (delivered).
    pub async fn remove_up_message(&self, id: i64) -> Result<(), StoreError> {
        self.delete_rows(
            "DELETE FROM unifiedpush_messages WHERE id = ?",
            vec![id.into()],
        )
        .await
        .map(drop)
    }

    /// Pushes kept, over every endpoint.
    pub async fn up_messages_kept(&self) -> Result<u64, StoreError> {
        let n = self
            .count_rows(
                &self.db,
                "SELECT COUNT(*) AS n FROM unifiedpush_messages",
                Vec::new(),
            )
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// An endpoint as operators see it (`pushgate devices list`).
#[derive(Debug, Clone)]
pub struct UpEndpointRow {
    pub id: i64,
    pub account: String,
    /// The distributor's full JID.
    pub jid: String,
    pub dialect: String,
    pub vapid_pinned: bool,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// Pushes kept for it.
    pub kept: u64,
}

impl Store {
    /// Every endpoint, or those of `account` (bare JID), oldest first.
    pub async fn list_up_endpoints(
        &self,
        account: Option<&str>,
    ) -> Result<Vec<UpEndpointRow>, StoreError> {
        let (filter, values): (&str, Vec<Value>) = match account {
            Some(a) => ("WHERE e.account = ?", vec![a.into()]),
            None => ("", Vec::new()),
        };
        let rows = self
            .db
            .query_all_raw(self.statement(
                &format!(
                    "SELECT e.id AS id, e.account AS account, e.jid AS jid, e.dialect AS dialect, \
                     e.vapid_key AS vapid_key, e.created_at AS created_at, \
                     e.expires_at AS expires_at, \
                     (SELECT COUNT(*) FROM unifiedpush_messages m WHERE m.endpoint_id = e.id) \
                     AS kept FROM unifiedpush_endpoints e {filter} ORDER BY e.id"
                ),
                values,
            ))
            .await?;
        rows.iter()
            .map(|row| {
                Ok(UpEndpointRow {
                    id: row.try_get("", "id")?,
                    account: row.try_get("", "account")?,
                    jid: row.try_get("", "jid")?,
                    dialect: row.try_get("", "dialect")?,
                    vapid_pinned: row.try_get::<Option<String>>("", "vapid_key")?.is_some(),
                    created_at_ms: row.try_get("", "created_at")?,
                    expires_at_ms: row.try_get("", "expires_at")?,
                    kept: u64::try_from(row.try_get::<i64>("", "kept")?).unwrap_or(0),
                })
            })
            .collect()
    }

    /// Endpoints per dialect, and pushes kept: the UnifiedPush gauges.
    pub async fn count_up(&self) -> Result<(Vec<(String, u64)>, u64), StoreError> {
        let rows = self
            .db
            .query_all_raw(self.statement(
                "SELECT dialect, COUNT(*) AS n FROM unifiedpush_endpoints GROUP BY dialect",
                Vec::new(),
            ))
            .await?;
        let by_dialect = rows
            .iter()
            .map(|row| {
                let n: i64 = row.try_get("", "n")?;
                Ok((row.try_get("", "dialect")?, u64::try_from(n).unwrap_or(0)))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok((by_dialect, self.up_messages_kept().await?))
    }
}
