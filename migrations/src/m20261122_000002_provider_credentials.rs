//! The `provider_credentials` table: provider credentials uploaded by an admin at run time.
//!
//! APNs certificates expire yearly and are replaced with the `set-apns-certificate` command; the
//! replacement is stored here so every instance sharing the database picks it up without a
//! restart. One row per provider id; `updated_at` tells instances that a row changed.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    text, text_null, timestamp_with_time_zone, timestamp_with_time_zone_null,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ProviderCredentials {
    Table,
    Provider,
    Kind,
    CertPem,
    KeyPem,
    KeyId,
    TeamId,
    NotAfter,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ProviderCredentials::Table)
                    .col(text(ProviderCredentials::Provider).primary_key())
                    .col(text(ProviderCredentials::Kind))
                    .col(text_null(ProviderCredentials::CertPem))
                    .col(text(ProviderCredentials::KeyPem))
                    .col(text_null(ProviderCredentials::KeyId))
                    .col(text_null(ProviderCredentials::TeamId))
                    .col(timestamp_with_time_zone_null(ProviderCredentials::NotAfter))
                    .col(timestamp_with_time_zone(ProviderCredentials::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ProviderCredentials::Table).to_owned())
            .await
    }
}
