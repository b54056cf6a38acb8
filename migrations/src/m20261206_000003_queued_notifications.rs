//! The `queued_notifications` table: the durable retry queue.
//!
//! A notification whose delivery failed transiently is written here before the publish is
//! answered, and a retry worker (`src/core/retry.rs`) delivers it later. Times are milliseconds
//! since the Unix epoch, so that the claim query compares plain integers on both databases.
//! `due_at` doubles as the lease: claiming a row moves it past the attempt, so a row whose
//! instance died becomes due again by itself. Rows go with their registration (`ON DELETE
//! CASCADE`): an unregistered device gets nothing that was queued for it. A notification for a
//! device pushgate does not keep (a Matrix pusher, named in the request) has no registration and
//! carries its device instead: provider, token, second token, WebPush keys.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{
    big_integer, big_integer_null, big_pk_auto, integer, text, text_null,
};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum QueuedNotifications {
    Table,
    Id,
    RegistrationId,
    Provider,
    Token,
    SecondToken,
    WebpushP256dh,
    WebpushAuth,
    Kind,
    Notification,
    EnqueuedAt,
    ExpiresAt,
    DueAt,
    Attempts,
    LastError,
}

#[derive(DeriveIden)]
enum Registrations {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(QueuedNotifications::Table)
                    .col(big_pk_auto(QueuedNotifications::Id))
                    .col(big_integer_null(QueuedNotifications::RegistrationId))
                    .col(text_null(QueuedNotifications::Provider))
                    .col(text_null(QueuedNotifications::Token))
                    .col(text_null(QueuedNotifications::SecondToken))
                    .col(text_null(QueuedNotifications::WebpushP256dh))
                    .col(text_null(QueuedNotifications::WebpushAuth))
                    .col(text(QueuedNotifications::Kind))
                    .col(text(QueuedNotifications::Notification))
                    .col(big_integer(QueuedNotifications::EnqueuedAt))
                    .col(big_integer(QueuedNotifications::ExpiresAt))
                    .col(big_integer(QueuedNotifications::DueAt))
                    .col(integer(QueuedNotifications::Attempts))
                    .col(text_null(QueuedNotifications::LastError))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_queued_notifications_registration")
                            .from(
                                QueuedNotifications::Table,
                                QueuedNotifications::RegistrationId,
                            )
                            .to(Registrations::Table, Registrations::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_queued_notifications_due")
                    .table(QueuedNotifications::Table)
                    .col(QueuedNotifications::DueAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_queued_notifications_registration")
                    .table(QueuedNotifications::Table)
                    .col(QueuedNotifications::RegistrationId)
                    .col(QueuedNotifications::Kind)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_queued_notifications_token")
                    .table(QueuedNotifications::Table)
                    .col(QueuedNotifications::Token)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(QueuedNotifications::Table).to_owned())
            .await
    }
}
