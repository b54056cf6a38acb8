//! pushgate's database schema as ordered sea-orm migrations.
//!
//! pushgate runs [`run`] at every start, so the database always has the schema the binary was
//! built for and operators never run a separate migration tool. Kept in its own crate so the
//! migration DSL (`sea_orm_migration::prelude`) never meets the entity DSL in one module.

use sea_orm_migration::sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, DbErr, TransactionTrait,
};
use sea_orm_migration::{MigrationTrait, MigratorTrait};

mod m20261122_000001_registrations;
mod m20261122_000002_provider_credentials;
mod m20261206_000003_queued_notifications;
mod m20261207_000004_unifiedpush;
mod m20261208_000005_sip_devices;

/// All of pushgate's migrations, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_registrations::Migration),
            Box::new(m20261122_000002_provider_credentials::Migration),
            Box::new(m20261206_000003_queued_notifications::Migration),
            Box::new(m20261207_000004_unifiedpush::Migration),
            Box::new(m20261208_000005_sip_devices::Migration),
        ]
    }
}

/// How many migrations this build knows: what a fully migrated database has recorded.
pub fn count() -> usize {
    Migrator::migrations().len()
}

/// Advisory lock key that serialises migrations across instances ("pushgate" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x7075_7368_6761_7465;

/// Applies all pending migrations.
///
/// On PostgreSQL several instances may start at once against one database; they would otherwise
/// race on `CREATE TABLE`. So the whole run happens in one transaction holding a
/// transaction-scoped advisory lock: the second instance waits, then finds nothing pending.
/// (Each migration becomes a savepoint inside that transaction.)
pub async fn run(db: &DatabaseConnection) -> Result<(), DbErr> {
    match db.get_database_backend() {
        DbBackend::Postgres => {
            let txn = db.begin().await?;
            txn.execute_unprepared(&format!(
                "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
            ))
            .await?;
            Migrator::up(&txn, None).await?;
            txn.commit().await
        }
        _ => Migrator::up(db, None).await,
    }
}
