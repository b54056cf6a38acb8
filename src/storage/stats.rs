//! Aggregate queries over the registrations, for metrics and statistics.

use sea_orm::sea_query::{Expr, Func};
use sea_orm::{EntityTrait, QuerySelect};

use super::entity::{Column, Entity};
use super::{Store, StoreError};

impl Store {
    /// Number of registrations per provider id.
    pub async fn count_by_provider(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = Entity::find()
            .select_only()
            .column(Column::Provider)
            .column_as(Expr::from(Func::count(Expr::col(Column::Id))), "n")
            .group_by(Column::Provider)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(p, n)| (p, u64::try_from(n).unwrap_or(0)))
            .collect())
    }
}
