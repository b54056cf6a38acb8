//! The `registrations` table as sea-orm sees it: raw columns, no invariants.
//!
//! The schema itself is owned by `pushgate-migrations`; this module only mirrors it for queries.
//! [`super::Registration`] is the typed, validated view the rest of pushgate works with, so this
//! model never leaves the storage module.

use std::fmt;

use sea_orm::entity::prelude::*;

/// One registered device. Holds tokens, node and secret in clear, hence the hand-written
/// `Debug` that shows none of them.
#[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "registrations")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(column_type = "Text")]
    pub dialect: String,
    #[sea_orm(column_type = "Text")]
    pub provider: String,
    /// Bare JID, normalised.
    #[sea_orm(column_type = "Text")]
    pub account: String,
    #[sea_orm(column_type = "Text")]
    pub domain: String,
    /// See [`super::device_key`].
    #[sea_orm(column_type = "Text")]
    pub device_key: String,
    #[sea_orm(column_type = "Text")]
    pub device_id: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub muc: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub token: String,
    #[sea_orm(column_type = "Text")]
    pub second_token: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub webpush_p256dh: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub webpush_auth: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub node: String,
    /// Hex SHA-256 of `node`: the indexed lookup key.
    #[sea_orm(column_type = "Text", unique)]
    pub node_hash: String,
    #[sea_orm(column_type = "Text")]
    pub secret: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub last_success_at: Option<DateTimeUtc>,
    pub last_error_at: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text")]
    pub last_error: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("registrations::Model")
            .field("id", &self.id)
            .field("dialect", &self.dialect)
            .field("provider", &self.provider)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}
