//! Writing registrations: the upsert on the device identity and the account limit, decided in
//! one transaction, in turn with the other writers. `Store::register` and the group commit's
//! writer task both come here.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use sea_orm::ActiveValue::{NotSet, Set};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QuerySelect,
};

use super::entity::{ActiveModel, Column, Entity, Model};
use super::{NewRegistration, StoreError, keyed_node_hash, node_hash, now, pow2_padded};
use crate::ids::{Dialect, NodeId, Secret};
use sha2::{Digest, Sha256};

/// Devices looked up in one query when the account limit must tell known from new ones.
const KNOWN_DEVICES_PER_QUERY: usize = 32;

/// A fresh row for `new`: a new node and, for p2, a new secret.
pub(super) fn new_row(new: &NewRegistration, key: &str) -> ActiveModel {
    let (node, secret) = match new.dialect {
        Dialect::P2 => (NodeId::generate(), Some(Secret::generate())),
        Dialect::Tigase => (NodeId::generate(), None),
        // The client chose the node; its secret makes the row's lookup key (one device may
        // register it for several accounts, each with a secret of its own).
        Dialect::AppServer => (
            NodeId::from_stored(new.device_id.clone().unwrap_or_default()),
            Some(Secret::generate()),
        ),
    };
    let lookup = match &secret {
        Some(secret) if new.dialect == Dialect::AppServer => {
            keyed_node_hash(node.as_str(), secret.as_str())
        }
        _ => node_hash(node.as_str()),
    };
    let at = now();
    ActiveModel {
        id: NotSet,
        dialect: Set(new.dialect.as_str().to_owned()),
        provider: Set(new.provider.as_str().to_owned()),
        account: Set(new.account.as_str().to_owned()),
        domain: Set(new.account.domain().as_str().to_owned()),
        device_key: Set(key.to_owned()),
        device_id: Set(new.device_id.clone()),
        muc: Set(new.muc.as_ref().map(|m| m.as_str().to_owned())),
        token: Set(new.token.as_str().to_owned()),
        second_token: Set(new.second_token.as_ref().map(|t| t.as_str().to_owned())),
        webpush_p256dh: Set(new.webpush_keys.as_ref().map(|k| k.p256dh.clone())),
        webpush_auth: Set(new.webpush_keys.as_ref().map(|k| k.auth.clone())),
        node_hash: Set(lookup),
        node: Set(node.as_str().to_owned()),
        secret: Set(secret.map(|s| s.as_str().to_owned())),
        created_at: Set(at),
        updated_at: Set(at),
        last_success_at: Set(None),
        last_error_at: Set(None),
        last_error: Set(None),
    }
}

/// (dialect, provider, account, device key): what the unique index calls one device.
pub(super) type Identity = (String, String, String, String);

pub(super) fn identity(new: &NewRegistration, device_key: String) -> Identity {
    (
        new.dialect.as_str().to_owned(),
        new.provider.as_str().to_owned(),
        new.account.as_str().to_owned(),
        device_key,
    )
}

fn identity_of(m: &Model) -> Identity {
    (
        m.dialect.clone(),
        m.provider.clone(),
        m.account.clone(),
        m.device_key.clone(),
    )
}

/// One registration on its way into the table.
#[derive(Clone)]
pub(super) struct Pending {
    pub(super) row: ActiveModel,
    pub(super) identity: Identity,
    pub(super) admission: super::Admission,
}

/// What became of one [`Pending`]: the stored row and whether it is new, or why it was refused
/// ([`StoreError::AccountFull`], [`StoreError::AddingPaused`]).
pub(super) type Decided = Result<(Model, bool), StoreError>;

/// The PostgreSQL advisory lock key of an account's registrations. A collision only makes two
/// accounts wait for each other.
fn account_lock_key(account: &str) -> i64 {
    let digest = Sha256::new()
        .chain_update(b"pushgate account registrations\0")
        .chain_update(account.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Inserts `rows`, or, where the unique index on the device identity says one exists
/// (registered before, or by another instance a moment ago), refreshes what a client may change
/// and keeps node, secret and created_at. One statement, atomic on both databases.
async fn upsert_on<C: ConnectionTrait>(
    db: &C,
    rows: Vec<ActiveModel>,
) -> Result<Vec<Model>, DbErr> {
    let on_conflict = OnConflict::columns([
        Column::Dialect,
        Column::Provider,
        Column::Account,
        Column::DeviceKey,
    ])
    .update_columns([
        Column::DeviceId,
        Column::Muc,
        Column::Token,
        Column::SecondToken,
        Column::WebpushP256dh,
        Column::WebpushAuth,
        Column::UpdatedAt,
    ])
    .to_owned();
    Entity::insert_many(rows)
        .on_conflict(on_conflict)
        .exec_with_returning(db)
        .await
}

/// Takes the transaction-scoped advisory lock of each account, in ascending key order so that
/// two instances locking overlapping sets cannot deadlock. Held until commit: a registration of
/// the same account through another instance waits, then counts this one's rows.
async fn lock_accounts(txn: &DatabaseTransaction, accounts: &BTreeSet<&str>) -> Result<(), DbErr> {
    let keys: BTreeSet<i64> = accounts.iter().map(|a| account_lock_key(a)).collect();
    if keys.is_empty() {
        return Ok(());
    }
    // Our own integers, not input: safe to inline, and one round trip for the whole batch.
    let list: Vec<String> = keys.iter().map(i64::to_string).collect();
    txn.execute_unprepared(&format!(
        "SELECT pg_advisory_xact_lock(k) FROM unnest(ARRAY[{}]::bigint[]) AS k",
        list.join(",")
    ))
    .await?;
    Ok(())
}

/// Which of `devices` are registered already. A few devices a query, so that no statement
/// grows into the delayed-ACK stall (`Store::rows_per_statement`).
async fn known_devices(
    txn: &DatabaseTransaction,
    devices: &[&Identity],
) -> Result<HashSet<Identity>, DbErr> {
    let mut known = HashSet::new();
    for chunk in devices.chunks(KNOWN_DEVICES_PER_QUERY) {
        let accounts: BTreeSet<&str> = chunk.iter().map(|d| d.2.as_str()).collect();
        let keys: BTreeSet<&str> = chunk.iter().map(|d| d.3.as_str()).collect();
        let found: Vec<Identity> = Entity::find()
            .select_only()
            .columns([
                Column::Dialect,
                Column::Provider,
                Column::Account,
                Column::DeviceKey,
            ])
            .filter(Column::Account.is_in(pow2_padded(accounts.into_iter().collect())))
            .filter(Column::DeviceKey.is_in(pow2_padded(keys.into_iter().collect())))
            .into_tuple()
            .all(txn)
            .await?;
        known.extend(found);
    }
    Ok(known)
}

/// How many registrations each of `accounts` holds (absent: none).
async fn registrations_per_account(
    txn: &DatabaseTransaction,
    accounts: &BTreeSet<&str>,
) -> Result<HashMap<String, u64>, DbErr> {
    if accounts.is_empty() {
        return Ok(HashMap::new());
    }
    let counts: Vec<(String, i64)> = Entity::find()
        .select_only()
        .column(Column::Account)
        .column_as(Column::Id.count(), "n")
        .filter(Column::Account.is_in(pow2_padded(accounts.iter().copied().collect())))
        .group_by(Column::Account)
        .into_tuple()
        .all(txn)
        .await?;
    Ok(counts
        .into_iter()
        .map(|(account, n)| (account, u64::try_from(n).unwrap_or(0)))
        .collect())
}

/// The connection registrations are written through. SQLite has one writer at a time, and a
/// connection that finds the database locked waits in SQLite's busy handler, which sleeps in
/// steps of milliseconds. Taking turns in-process first is much faster: 2,556 registrations/s
/// from one task, but 1,694/s from four (docs/performance.md).
#[derive(Clone)]
pub(super) struct Writer {
    db: DatabaseConnection,
    /// SQLite files only.
    turns: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Writer {
    pub(super) fn new(db: DatabaseConnection, take_turns: bool) -> Self {
        Writer {
            db,
            turns: take_turns.then(Arc::default),
        }
    }

    /// Hold the guard for the write statement only.
    pub(super) async fn turn(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match &self.turns {
            Some(turns) => Some(turns.lock().await),
            None => None,
        }
    }

    /// Decides and writes `pending` in one transaction, in turn with other writers: which new
    /// devices the account limits allow, then the upserts. The answer is in the order of
    /// `pending`; `Err` only when the database failed.
    ///
    /// Known devices must pass whatever the limits say, but telling them apart costs a query,
    /// and one for a whole batch (hundreds of keys) met the delayed-ACK stall described at
    /// [`Writer::rows_per_statement`]: 40 ms every other batch, PostgreSQL register-device at
    /// 3,400/s. So it is asked only where it matters: for accounts whose registrations could
    /// exceed the limit if every pending one were new, and where new devices are paused. Whether
    /// a row was added is read off the upsert: it keeps an existing row's node, so a new row
    /// has ours.
    pub(super) async fn write(&self, pending: Vec<Pending>) -> Result<Vec<Decided>, DbErr> {
        let _turn = self.turn().await;
        let txn = super::begin_write(&self.db).await?;
        let mut asked: HashMap<&str, u64> = HashMap::new();
        for p in &pending {
            *asked.entry(p.identity.2.as_str()).or_default() += 1;
        }
        let accounts: BTreeSet<&str> = asked.keys().copied().collect();
        if self.db.get_database_backend() == DbBackend::Postgres {
            lock_accounts(&txn, &accounts).await?;
        }
        let mut held = registrations_per_account(&txn, &accounts).await?;
        let doubtful: Vec<bool> = pending
            .iter()
            .map(|p| {
                let account = p.identity.2.as_str();
                let held = held.get(account).copied().unwrap_or(0);
                !p.admission.may_add
                    || held + asked[account] > u64::from(p.admission.max_per_account)
            })
            .collect();
        let to_check: Vec<&Identity> = pending
            .iter()
            .zip(&doubtful)
            .filter(|(_, doubtful)| **doubtful)
            .map(|(p, _)| &p.identity)
            .collect();
        let known = known_devices(&txn, &to_check).await?;

        let mut verdicts = Vec::with_capacity(pending.len());
        let mut rows = Vec::with_capacity(pending.len());
        for (p, doubtful) in pending.into_iter().zip(doubtful) {
            let verdict = if !doubtful || known.contains(&p.identity) {
                Ok(())
            } else {
                let count = held.entry(p.identity.2.clone()).or_insert(0);
                if *count >= u64::from(p.admission.max_per_account) {
                    Err(StoreError::AccountFull {
                        limit: p.admission.max_per_account,
                    })
                } else if !p.admission.may_add {
                    Err(StoreError::AddingPaused)
                } else {
                    *count += 1;
                    Ok(())
                }
            };
            let ours = p.row.node.try_as_ref().cloned();
            if verdict.is_ok() {
                rows.push(p.row);
            }
            verdicts.push((p.identity, ours, verdict));
        }
        let stored: HashMap<Identity, Model> = self
            .upsert(&txn, rows)
            .await?
            .into_iter()
            .map(|m| (identity_of(&m), m))
            .collect();
        txn.commit().await?;
        Ok(verdicts
            .into_iter()
            .map(|(identity, ours, verdict)| {
                verdict?;
                match stored.get(&identity) {
                    Some(m) => Ok((m.clone(), ours.as_ref() == Some(&m.node))),
                    None => Err(DbErr::RecordNotInserted.into()),
                }
            })
            .collect())
    }

    pub(super) async fn write_one(&self, pending: Pending) -> Decided {
        self.write(vec![pending])
            .await?
            .pop()
            .unwrap_or(Err(DbErr::RecordNotInserted.into()))
    }

    /// [`upsert_on`] for any number of rows, inside `txn`.
    async fn upsert(
        &self,
        txn: &DatabaseTransaction,
        mut rows: Vec<ActiveModel>,
    ) -> Result<Vec<Model>, DbErr> {
        // Statements of power-of-two sizes only (200 rows = 128 + 64 + 8): every distinct size
        // is a prepared statement each connection caches, and a few hundred of those, thousands
        // of parameters each, cost tens of megabytes.
        let most = self.rows_per_statement();
        let mut stored = Vec::with_capacity(rows.len());
        while !rows.is_empty() {
            let size = (1 << rows.len().ilog2()).min(most);
            let rest = rows.split_off(size);
            stored.extend(upsert_on(txn, std::mem::replace(&mut rows, rest)).await?);
        }
        Ok(stored)
    }

    /// The most rows one multi-row statement carries. 20 columns a row, 500 rows stay far below
    /// SQLite's bind-parameter limit. PostgreSQL gets 16: sqlx sets no TCP_NODELAY, and a
    /// message longer than one TCP segment (64 KiB on loopback) leaves its tail waiting for the
    /// server's delayed ACK. 256-row statements ran at 2,117 registrations/s, 16-row ones at
    /// 6,447–7,056/s (docs/performance.md).
    pub(super) fn rows_per_statement(&self) -> usize {
        match self.db.get_database_backend() {
            DbBackend::Postgres => 16,
            _ => 500,
        }
    }
}
