//! Read-mostly queries for the admin command line (`pushgate devices …`, `pushgate migrate`).
//!
//! Kept apart from the publish path: these scan by account, domain or provider (not by node), and
//! are meant for an operator at a terminal, not for every publish.

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Statement};

use super::entity::{Column, Entity};
use super::{Registration, Store, StoreError};
use crate::ids::{BareJid, ProviderId};

/// Which registrations an admin query selects; `None` fields select everything.
#[derive(Clone, Debug, Default)]
pub struct RegistrationFilter {
    pub account: Option<BareJid>,
    /// The account's domain, as stored (normalised, lower case).
    pub domain: Option<String>,
    pub provider: Option<ProviderId>,
}

impl Store {
    /// Registrations matching `filter`, oldest (lowest id) first.
    pub async fn list(&self, filter: &RegistrationFilter) -> Result<Vec<Registration>, StoreError> {
        let mut query = Entity::find().order_by_asc(Column::Id);
        if let Some(account) = &filter.account {
            query = query.filter(Column::Account.eq(account.as_str()));
        }
        if let Some(domain) = &filter.domain {
            query = query.filter(Column::Domain.eq(domain.as_str()));
        }
        if let Some(provider) = &filter.provider {
            query = query.filter(Column::Provider.eq(provider.as_str()));
        }
        query
            .all(&self.db)
            .await?
            .into_iter()
            .map(Registration::try_from)
            .collect()
    }

    /// Removes every registration of `account` (only those with `provider`, if given); returns
    /// how many were removed. Takes an account on purpose: there is no "delete everything".
    pub async fn delete_matching(
        &self,
        account: &BareJid,
        provider: Option<&ProviderId>,
    ) -> Result<u64, StoreError> {
        let mut delete = Entity::delete_many().filter(Column::Account.eq(account.as_str()));
        if let Some(provider) = provider {
            delete = delete.filter(Column::Provider.eq(provider.as_str()));
        }
        let removed = {
            let _turn = self.write_turn().await;
            delete.exec(&self.db).await?.rows_affected
        };
        self.forget_all();
        Ok(removed)
    }

    /// The migrations recorded as applied, oldest first (sea-orm's `seaql_migrations` table).
    pub async fn applied_migrations(&self) -> Result<Vec<String>, StoreError> {
        let backend = self.db.get_database_backend();
        let rows = self
            .db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT version FROM seaql_migrations ORDER BY version",
            ))
            .await?;
        rows.iter()
            .map(|row| {
                row.try_get::<String>("", "version")
                    .map_err(StoreError::from)
            })
            .collect()
    }
}
