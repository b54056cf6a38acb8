//! `pushgate migrate`: bring the database schema up to date without starting the gateway.

use std::process::ExitCode;

use super::{ConfigArg, Failure, OK, Outcome, load_config, open_store};

#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub config: ConfigArg,
}

pub fn run(args: MigrateArgs) -> ExitCode {
    super::execute(migrate(args))
}

async fn migrate(args: MigrateArgs) -> Outcome {
    let config = load_config(&args.config.config)?;
    let backend = if config.storage.url.is_some() {
        "storage.url"
    } else {
        "SQLite under storage.data_dir"
    };
    // Opening the store runs every pending migration (as `run` does at start).
    let store = open_store(&config).await?;
    let applied = store
        .applied_migrations()
        .await
        .map_err(|e| Failure::failed(format!("cannot read the migration table: {e}")))?;
    println!(
        "ok: database ({backend}) is up to date: {} of {} migrations applied, latest {}",
        applied.len(),
        pushgate_migrations::count(),
        applied.last().map_or("none", String::as_str)
    );
    Ok(OK)
}
