//! The devices SIP servers stored through the v2 token routes (migration `..._sip_devices`),
//! keyed by (account, app id, device id) as Sylk Pushserver keys them.

use sea_orm::{ConnectionTrait, Value};

use super::{Store, StoreError};

/// One stored device.
#[derive(Clone, PartialEq, Eq)]
pub struct SipDevice {
    /// The SIP address the server names in its requests.
    pub account: String,
    pub app_id: String,
    pub device_id: String,
    /// `apple` or `firebase`.
    pub platform: String,
    /// The token for everything but calls (Apple), or the only token (Firebase).
    pub token: String,
    /// Apple's PushKit token, for calls.
    pub voip_token: Option<String>,
    pub silent: bool,
    pub user_agent: Option<String>,
}

impl std::fmt::Debug for SipDevice {
    /// Tokens are capabilities: not shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipDevice")
            .field("account", &self.account)
            .field("app_id", &self.app_id)
            .field("device_id", &self.device_id)
            .field("platform", &self.platform)
            .finish_non_exhaustive()
    }
}

/// What became of a device to store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipSaved {
    Saved,
    /// A new device for an account that holds `max_per_account` already.
    AccountFull,
}

const COLUMNS: &str = "account, app_id, device_id, platform, token, voip_token, silent, user_agent";

impl Store {
    /// Stores `device` (a new one, or new tokens for a stored one) unless it is new and its
    /// account holds `max_per_account` devices already.
    pub async fn save_sip_device(
        &self,
        device: &SipDevice,
        now_ms: i64,
        max_per_account: u32,
    ) -> Result<SipSaved, StoreError> {
        let _turn = self.write_turn().await;
        let txn = super::begin_write(&self.db).await?;
        let key = || -> Vec<Value> {
            vec![
                device.account.as_str().into(),
                device.app_id.as_str().into(),
                device.device_id.as_str().into(),
            ]
        };
        let exists = txn
            .query_one_raw(self.statement(
                "SELECT id FROM sip_devices WHERE account = ? AND app_id = ? AND device_id = ?",
                key(),
            ))
            .await?
            .is_some();
        if !exists {
            let held = self
                .count_rows(
                    &txn,
                    "SELECT COUNT(*) AS n FROM sip_devices WHERE account = ?",
                    vec![device.account.as_str().into()],
                )
                .await?;
            if held >= i64::from(max_per_account) {
                txn.rollback().await?;
                return Ok(SipSaved::AccountFull);
            }
        }
        let mut values = key();
        values.extend([
            device.platform.as_str().into(),
            device.token.as_str().into(),
            device.voip_token.clone().into(),
            device.silent.into(),
            device.user_agent.clone().into(),
            now_ms.into(),
            now_ms.into(),
        ]);
        txn.execute_raw(self.statement(
            &format!(
                "INSERT INTO sip_devices ({COLUMNS}, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (account, app_id, device_id) DO UPDATE SET \
                 platform = excluded.platform, token = excluded.token, \
                 voip_token = excluded.voip_token, silent = excluded.silent, \
                 user_agent = excluded.user_agent, updated_at = excluded.updated_at"
            ),
            values,
        ))
        .await?;
        txn.commit().await?;
        Ok(SipSaved::Saved)
    }

    /// The devices of `account`, at most `limit`, oldest first.
    pub async fn sip_devices(
        &self,
        account: &str,
        limit: u32,
    ) -> Result<Vec<SipDevice>, StoreError> {
        self.query_sip_devices(
            &format!(
                "SELECT {COLUMNS} FROM sip_devices WHERE account = ? ORDER BY id LIMIT {limit}"
            ),
            vec![account.into()],
        )
        .await
    }

    /// The devices of `account`, or of every account, at most `limit`, by account.
    pub async fn list_sip_devices(
        &self,
        account: Option<&str>,
        limit: u32,
    ) -> Result<Vec<SipDevice>, StoreError> {
        match account {
            Some(account) => self.sip_devices(account, limit).await,
            None => {
                self.query_sip_devices(
                    &format!(
                        "SELECT {COLUMNS} FROM sip_devices ORDER BY account, id LIMIT {limit}"
                    ),
                    vec![],
                )
                .await
            }
        }
    }

    async fn query_sip_devices(
        &self,
        sql: &str,
        values: Vec<Value>,
    ) -> Result<Vec<SipDevice>, StoreError> {
        let rows = self.db.query_all_raw(self.statement(sql, values)).await?;
        rows.into_iter()
            .map(|row| {
                Ok(SipDevice {
                    account: row.try_get("", "account")?,
                    app_id: row.try_get("", "app_id")?,
                    device_id: row.try_get("", "device_id")?,
                    platform: row.try_get("", "platform")?,
                    token: row.try_get("", "token")?,
                    voip_token: row.try_get("", "voip_token")?,
                    silent: row.try_get("", "silent")?,
                    user_agent: row.try_get("", "user_agent")?,
                })
            })
            .collect()
    }

    /// Whether `account` has any device stored.
    pub async fn has_sip_devices(&self, account: &str) -> Result<bool, StoreError> {
        Ok(self
            .count_rows(
                &self.db,
                "SELECT COUNT(*) AS n FROM sip_devices WHERE account = ?",
                vec![account.into()],
            )
            .await?
            > 0)
    }

    /// Removes one device; whether there was one.
    pub async fn remove_sip_device(
        &self,
        account: &str,
        app_id: &str,
        device_id: &str,
    ) -> Result<bool, StoreError> {
        self.delete_rows(
            "DELETE FROM sip_devices WHERE account = ? AND app_id = ? AND device_id = ?",
            vec![account.into(), app_id.into(), device_id.into()],
        )
        .await
        .map(|n| n > 0)
    }

    /// Removes a device whose token `token` the provider called dead, unless it was stored
    /// again with other tokens meanwhile; whether it was removed.
    pub async fn remove_dead_sip_device(
        &self,
        device: &SipDevice,
        token: &str,
    ) -> Result<bool, StoreError> {
        self.delete_rows(
            "DELETE FROM sip_devices WHERE account = ? AND app_id = ? AND device_id = ? \
             AND (token = ? OR voip_token = ?)",
            vec![
                device.account.as_str().into(),
                device.app_id.as_str().into(),
                device.device_id.as_str().into(),
                token.into(),
                token.into(),
            ],
        )
        .await
        .map(|n| n > 0)
    }

    /// How many devices are stored.
    pub async fn count_sip(&self) -> Result<i64, StoreError> {
        self.count_rows(
            &self.db,
            "SELECT COUNT(*) AS n FROM sip_devices",
            Vec::new(),
        )
        .await
    }
}
