//! The `sip_devices` table: the devices SIP and WebRTC servers stored through the Sylk-style
//! v2 token routes (`fronts/sip`), one row per (account, app id, device id).
//!
//! An Apple device has two tokens: the PushKit one that calls go to (`voip_token`) and the
//! ordinary one for cancels and messages (`token`); a Firebase device has `token` only. The
//! account is the SIP address the server names in its requests, kept as it sent it. Rows are
//! removed by the server (DELETE), by an operator, or when the provider calls the token dead.
//! Times are milliseconds since the Unix epoch.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_pk_auto, boolean, text, text_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SipDevices {
    Table,
    Id,
    Account,
    AppId,
    DeviceId,
    Platform,
    Token,
    VoipToken,
    Silent,
    UserAgent,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SipDevices::Table)
                    .col(big_pk_auto(SipDevices::Id))
                    .col(text(SipDevices::Account))
                    .col(text(SipDevices::AppId))
                    .col(text(SipDevices::DeviceId))
                    .col(text(SipDevices::Platform))
                    .col(text(SipDevices::Token))
                    .col(text_null(SipDevices::VoipToken))
                    .col(boolean(SipDevices::Silent))
                    .col(text_null(SipDevices::UserAgent))
                    .col(big_integer(SipDevices::CreatedAt))
                    .col(big_integer(SipDevices::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        // Storing the same device again replaces its row, whichever instance sees it; pushes
        // look an account's devices up by this index's prefix.
        manager
            .create_index(
                Index::create()
                    .name("sip_devices_device_uq")
                    .table(SipDevices::Table)
                    .col(SipDevices::Account)
                    .col(SipDevices::AppId)
                    .col(SipDevices::DeviceId)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SipDevices::Table).to_owned())
            .await
    }

    /// Table and index appear together or not at all, on SQLite too.
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
