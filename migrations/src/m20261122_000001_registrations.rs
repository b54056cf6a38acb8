//! The `registrations` table: one row per (dialect, provider, account, device).
//!
//! Everything a pushgate instance needs to route a publish lives in this row, so several
//! instances sharing one PostgreSQL agree without talking to each other. The unique index on the
//! device identity is what makes concurrent registrations of the same device converge on one row.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_pk_auto, text, text_null, timestamp_with_time_zone, timestamp_with_time_zone_null,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Registrations {
    Table,
    Id,
    Dialect,
    Provider,
    Account,
    Domain,
    DeviceKey,
    DeviceId,
    Muc,
    Token,
    SecondToken,
    WebpushP256dh,
    WebpushAuth,
    Node,
    NodeHash,
    Secret,
    CreatedAt,
    UpdatedAt,
    LastSuccessAt,
    LastErrorAt,
    LastError,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Registrations::Table)
                    .col(big_pk_auto(Registrations::Id))
                    .col(text(Registrations::Dialect))
                    .col(text(Registrations::Provider))
                    .col(text(Registrations::Account))
                    .col(text(Registrations::Domain))
                    .col(text(Registrations::DeviceKey))
                    .col(text_null(Registrations::DeviceId))
                    .col(text_null(Registrations::Muc))
                    .col(text(Registrations::Token))
                    .col(text_null(Registrations::SecondToken))
                    .col(text_null(Registrations::WebpushP256dh))
                    .col(text_null(Registrations::WebpushAuth))
                    .col(text(Registrations::Node))
                    .col(text(Registrations::NodeHash))
                    .col(text_null(Registrations::Secret))
                    .col(timestamp_with_time_zone(Registrations::CreatedAt))
                    .col(timestamp_with_time_zone(Registrations::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Registrations::LastSuccessAt))
                    .col(timestamp_with_time_zone_null(Registrations::LastErrorAt))
                    .col(text_null(Registrations::LastError))
                    .to_owned(),
            )
            .await?;

        // "The same device" registers into one row, whichever instance sees it first.
        manager
            .create_index(
                Index::create()
                    .name("registrations_device_uq")
                    .table(Registrations::Table)
                    .col(Registrations::Dialect)
                    .col(Registrations::Provider)
                    .col(Registrations::Account)
                    .col(Registrations::DeviceKey)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Publishes are looked up by the node's hash, never by the node itself.
        manager
            .create_index(
                Index::create()
                    .name("registrations_node_hash_uq")
                    .table(Registrations::Table)
                    .col(Registrations::NodeHash)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Per-domain and per-account housekeeping (domain removal, account deletion).
        manager
            .create_index(
                Index::create()
                    .name("registrations_domain_idx")
                    .table(Registrations::Table)
                    .col(Registrations::Domain)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("registrations_account_idx")
                    .table(Registrations::Table)
                    .col(Registrations::Account)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Registrations::Table).to_owned())
            .await
    }

    /// Table and indexes appear together or not at all, on SQLite too (its DDL is transactional).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
