//! The queries behind registration, publish and cleanup: everything a front or the core asks of
//! the store once it is open.

use std::sync::Arc;
use std::time::Instant;

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, TransactionTrait};
use tracing::{debug, info};

use super::entity::{Column, Entity};
use super::writer::{Pending, identity, new_row};
use super::{
    Admission, NewRegistration, Registered, Registration, Store, StoreError, keyed_node_digest,
    node_digest, now, pow2_padded,
};
use crate::ids::{BareJid, DeviceIdentity, NodeId, ProviderId};
use crate::metrics::METRICS;

/// Longest stored `last_error`, in characters: provider error bodies can be large.
const MAX_ERROR_CHARS: usize = 500;
/// Longer "nodes" are not ours (ours are 22 characters); refuse them before hashing.
const MAX_NODE_LEN: usize = 256;

impl Store {
    /// Idempotent: the same (dialect, provider, account, device key) keeps its row, node and
    /// secret; token, second token, WebPush keys and `updated_at` are refreshed. Otherwise a new
    /// row with a fresh node (and, for p2, a fresh secret), if `admission` allows one.
    ///
    /// One upsert statement decides, so concurrent registrations of one device (also through
    /// several instances) converge on one row; registrations that arrive together share a
    /// statement and a commit (`group_commit.rs`). The account's count is read in the writing
    /// transaction, on PostgreSQL after taking a transaction-scoped advisory lock on the account
    /// and on SQLite with the write lock taken at `BEGIN`: so `max_per_account` holds exactly,
    /// whichever instances the registrations arrive through.
    pub async fn register(
        &self,
        new: NewRegistration,
        admission: Admission,
    ) -> Result<Registered, StoreError> {
        let key = new.identity().key();
        let pending = Pending {
            row: new_row(&new, &key),
            identity: identity(&new, key),
            admission,
        };
        let (m, added) = match self.group_commit.submit(pending).await {
            Ok(decided) => decided?,
            // The writer task is gone (the runtime is shutting down): write it here.
            Err(pending) => self.writer.write_one(pending).await?,
        };
        let registration = Registration::try_from(m)?;
        if added {
            info!(id = registration.id, dialect = new.dialect.as_str(), provider = %new.provider, "registration created");
        } else {
            self.forget(&registration);
            debug!(id = registration.id, "registration refreshed");
        }
        Ok(Registered {
            registration,
            added,
        })
    }

    /// Registers many new devices at once, in one transaction of multi-row inserts: for seeding
    /// benchmarks and for importing registrations from another push service. Unlike
    /// [`Store::register`] it is not idempotent: if any device is already registered, nothing
    /// is inserted and the unique index's error is returned.
    pub async fn insert_batch(
        &self,
        batch: &[NewRegistration],
    ) -> Result<Vec<Registration>, StoreError> {
        let _turn = self.write_turn().await;
        let txn = self.db.begin().await?;
        let mut stored = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(self.writer.rows_per_statement()) {
            let rows = chunk.iter().map(|new| new_row(new, &new.identity().key()));
            for m in Entity::insert_many(rows).exec_with_returning(&txn).await? {
                stored.push(Registration::try_from(m)?);
            }
        }
        txn.commit().await?;
        info!(count = stored.len(), "registrations imported");
        Ok(stored)
    }

    /// Lookup by node, via the indexed hash (and the cache, if on), confirmed with a
    /// constant-time comparison.
    pub async fn find_by_node(&self, node: &str) -> Result<Option<Arc<Registration>>, StoreError> {
        if node.is_empty() || node.len() > MAX_NODE_LEN {
            return Ok(None);
        }
        self.find_by_digest(node_digest(node), node).await
    }

    /// Lookup of a node the client chose (mod_push_appserver dialect) by node and secret, which
    /// make its key together.
    pub async fn find_by_keyed_node(
        &self,
        node: &str,
        secret: &str,
    ) -> Result<Option<Arc<Registration>>, StoreError> {
        if node.is_empty() || node.len() > MAX_NODE_LEN || secret.len() > MAX_NODE_LEN {
            return Ok(None);
        }
        self.find_by_digest(keyed_node_digest(node, secret), node)
            .await
    }

    async fn find_by_digest(
        &self,
        digest: super::cache::NodeHash,
        node: &str,
    ) -> Result<Option<Arc<Registration>>, StoreError> {
        let lookups = &METRICS.registration_lookups;
        if let Some(cache) = &self.cache
            && let Some(reg) = cache.get(&digest, Instant::now())
        {
            lookups.with_label_values(&["cache"]).inc();
            return Ok(reg.node.matches(node).then_some(reg));
        }
        lookups.with_label_values(&["database"]).inc();
        let found = self.lookups.find(digest).await?;
        let reg = match found {
            Some(m) if crate::ids::ct_eq(&m.node, node) => Arc::new(Registration::try_from(m)?),
            _ => return Ok(None),
        };
        if let Some(cache) = &self.cache {
            cache.put(digest, reg.clone(), Instant::now());
        }
        Ok(Some(reg))
    }

    /// Lookup by id, for the retry queue: past the cache, so a retry sees the current token.
    pub async fn find_by_id(&self, id: i64) -> Result<Option<Registration>, StoreError> {
        Entity::find_by_id(id)
            .one(&self.db)
            .await?
            .map(Registration::try_from)
            .transpose()
    }

    /// Removes the registration of `device` for (provider, account): its node, `None` if there
    /// was none.
    pub async fn unregister(
        &self,
        provider: &ProviderId,
        account: &BareJid,
        device: &DeviceIdentity,
    ) -> Result<Option<NodeId>, StoreError> {
        let _turn = self.write_turn().await;
        let removed = Entity::delete_many()
            .filter(Column::Dialect.eq(device.dialect().as_str()))
            .filter(Column::Provider.eq(provider.as_str()))
            .filter(Column::Account.eq(account.as_str()))
            .filter(Column::DeviceKey.eq(device.key()))
            .exec_with_returning(&self.db)
            .await?;
        debug!(removed = removed.len(), "unregister");
        if removed.is_empty() {
            return Ok(None);
        }
        self.forget_all();
        Ok(removed
            .into_iter()
            .next()
            .map(|m| NodeId::from_stored(m.node)))
    }

    /// Removes a registration by id (an operator's `devices remove`).
    pub async fn delete(&self, id: i64) -> Result<bool, StoreError> {
        let res = {
            let _turn = self.write_turn().await;
            Entity::delete_by_id(id).exec(&self.db).await?
        };
        self.forget_all();
        Ok(res.rows_affected > 0)
    }

    /// Removes `reg` after its provider called its token dead, unless the row has meanwhile got
    /// another token (the device re-registered, perhaps through another instance): false then,
    /// and the fresh registration stays.
    pub async fn delete_if_token(&self, reg: &Registration) -> Result<bool, StoreError> {
        let _turn = self.write_turn().await;
        let res = Entity::delete_many()
            .filter(Column::Id.eq(reg.id))
            .filter(Column::Token.eq(reg.token.as_str()))
            .exec(&self.db)
            .await?;
        self.forget(reg);
        Ok(res.rows_affected > 0)
    }

    /// Notes deliveries the providers accepted (see [`DeliveryLog`], which batches them). Vanished
    /// rows are not an error: they were unregistered meanwhile.
    pub async fn record_successes(&self, ids: &[i64]) -> Result<(), StoreError> {
        let _turn = self.write_turn().await;
        Entity::update_many()
            .col_expr(Column::LastSuccessAt, Expr::value(now()))
            .filter(Column::Id.is_in(pow2_padded(ids.to_vec())))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Notes failed deliveries (see [`DeliveryLog`]); `reason` is cut to 500 characters.
    pub async fn record_errors(&self, ids: &[i64], reason: &str) -> Result<(), StoreError> {
        let reason: String = reason.chars().take(MAX_ERROR_CHARS).collect();
        let _turn = self.write_turn().await;
        Entity::update_many()
            .col_expr(Column::LastErrorAt, Expr::value(now()))
            .col_expr(Column::LastError, Expr::value(reason))
            .filter(Column::Id.is_in(pow2_padded(ids.to_vec())))
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
