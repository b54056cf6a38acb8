//! The UnifiedPush-over-XMPP tables: the endpoints pushgate gave distributors, the key their
//! URLs are derived with, and the pushes kept for distributors that are away.
//!
//! An endpoint row is found by the SHA-256 of its URL token (never the token itself, so a copy
//! of the database lets nobody push), and names the distributor's full JID, the dialect and what
//! the app instance is called in it. Unregistering, a distributor that says the app is gone, an
//! admin's removal or the end of `expires_at` (milliseconds since the Unix epoch) remove it; the
//! endpoint then answers 404. The key is made once, by the first instance that starts, and shared
//! by every instance on the database, so that a distributor re-registering an app instance gets
//! the same endpoint from any of them. A kept push goes with its endpoint (`ON DELETE CASCADE`):
//! a revoked endpoint delivers nothing that was waiting.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_pk_auto, integer, text, text_null};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum UnifiedpushEndpoints {
    Table,
    Id,
    TokenHash,
    Jid,
    Account,
    Dialect,
    Application,
    Instance,
    PublicToken,
    VapidKey,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum UnifiedpushMessages {
    Table,
    Id,
    EndpointId,
    Topic,
    Urgency,
    Body,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum UnifiedpushKeys {
    Table,
    Id,
    Key,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(UnifiedpushEndpoints::Table)
                    .col(big_pk_auto(UnifiedpushEndpoints::Id))
                    .col(text(UnifiedpushEndpoints::TokenHash).unique_key())
                    .col(text(UnifiedpushEndpoints::Jid))
                    .col(text(UnifiedpushEndpoints::Account))
                    .col(text(UnifiedpushEndpoints::Dialect))
                    .col(text_null(UnifiedpushEndpoints::Application))
                    .col(text_null(UnifiedpushEndpoints::Instance))
                    .col(text_null(UnifiedpushEndpoints::PublicToken))
                    .col(text_null(UnifiedpushEndpoints::VapidKey))
                    .col(big_integer(UnifiedpushEndpoints::CreatedAt))
                    .col(big_integer(UnifiedpushEndpoints::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_unifiedpush_endpoints_account")
                    .table(UnifiedpushEndpoints::Table)
                    .col(UnifiedpushEndpoints::Account)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(UnifiedpushMessages::Table)
                    .col(big_pk_auto(UnifiedpushMessages::Id))
                    .col(big_integer(UnifiedpushMessages::EndpointId))
                    .col(text_null(UnifiedpushMessages::Topic))
                    .col(text(UnifiedpushMessages::Urgency))
                    .col(text(UnifiedpushMessages::Body))
                    .col(big_integer(UnifiedpushMessages::CreatedAt))
                    .col(big_integer(UnifiedpushMessages::ExpiresAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_unifiedpush_messages_endpoint")
                            .from(UnifiedpushMessages::Table, UnifiedpushMessages::EndpointId)
                            .to(UnifiedpushEndpoints::Table, UnifiedpushEndpoints::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // A distributor's presence looks its endpoints up by full JID (a flush), and every
        // flush and kept push drops the expired pushes: both are indexed, as presences come
        // from anybody.
        manager
            .create_index(
                Index::create()
                    .name("idx_unifiedpush_endpoints_jid")
                    .table(UnifiedpushEndpoints::Table)
                    .col(UnifiedpushEndpoints::Jid)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_unifiedpush_messages_expires")
                    .table(UnifiedpushMessages::Table)
                    .col(UnifiedpushMessages::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_unifiedpush_messages_endpoint")
                    .table(UnifiedpushMessages::Table)
                    .col(UnifiedpushMessages::EndpointId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(UnifiedpushKeys::Table)
                    .col(integer(UnifiedpushKeys::Id).primary_key())
                    .col(text(UnifiedpushKeys::Key))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(UnifiedpushKeys::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(UnifiedpushMessages::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(UnifiedpushEndpoints::Table).to_owned())
            .await
    }
}
