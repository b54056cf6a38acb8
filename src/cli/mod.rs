//! The admin command line: `pushgate devices …`, `push-test`, `certs`, `migrate`,
//! `unifiedpush revoke`, `sip list|remove`.
//!
//! Each command group lives in its own module and returns an [`ExitCode`] scripts can rely on:
//! [`OK`] (0), [`FAILED`] (1: the operation failed, e.g. a provider refused), [`USAGE`] (2: bad
//! usage or configuration; clap uses 2 for its own errors too) and [`NO_MATCH`] (3: nothing
//! matched). Nothing here prints a token, node or secret whole.

pub mod certs;
pub mod devices;
pub mod migrate;
pub mod push_test;
pub mod sip;
pub mod unifiedpush;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::storage::Store;

pub const OK: u8 = 0;
pub const FAILED: u8 = 1;
pub const USAGE: u8 = 2;
pub const NO_MATCH: u8 = 3;

/// `--config`, shared by every admin command (the same default and variable as `run`).
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    #[arg(long, env = "PUSHGATE_CONFIG", default_value = "etc/pushgate.toml")]
    pub config: PathBuf,
}

/// Why a command stopped early: a message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl fmt::Display) -> Self {
        Failure {
            code: USAGE,
            message: message.to_string(),
        }
    }
    pub fn failed(message: impl fmt::Display) -> Self {
        Failure {
            code: FAILED,
            message: message.to_string(),
        }
    }
}

pub type Outcome = Result<u8, Failure>;

/// Runs an async command on a fresh runtime, printing a failure to stderr.
pub fn execute<F>(command: F) -> ExitCode
where
    F: Future<Output = Outcome>,
{
    init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    match runtime.block_on(command) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Warnings and errors to stderr (`RUST_LOG` overrides): stdout stays for the command's output.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Loads the configuration file; a bad one is a usage error (exit 2), as for `check-config`.
pub fn load_config(path: &Path) -> Result<Config, Failure> {
    Config::load(path)
        .map_err(|e| Failure::usage(format!("config error in {}: {e}", path.display())))
}

/// Opens the store the way `run` does (`storage.url`, or SQLite under `storage.data_dir`), which
/// runs pending migrations.
pub async fn open_store(config: &Config) -> Result<Store, Failure> {
    let url = Store::url_for(&config.storage)
        .map_err(|e| Failure::usage(format!("storage.data_dir: {e}")))?;
    Store::open(&url)
        .await
        .map_err(|e| Failure::failed(format!("cannot open the database: {e}")))
}

/// A credential shortened for display: the scheme and host of a URL (WebPush endpoints, whose
/// path is the capability), otherwise the first few characters; always ends in "…".
pub fn redact(token: &str) -> String {
    if let Some((scheme, rest)) = token.split_once("://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
        // userinfo would be a secret too.
        let host = host.rsplit('@').next().unwrap_or_default();
        return format!("{scheme}://{host}/…");
    }
    let prefix: String = token.chars().take(8).collect();
    format!("{prefix}…")
}

/// A timestamp for tables: UTC to the second.
pub fn format_time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// Prints rows as a left-aligned table under `headers`.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_no_capability() {
        assert_eq!(
            redact("https://push.example.org/wpush/v2/abcdef?x=1"),
            "https://push.example.org/…"
        );
        assert_eq!(redact("https://user:pw@h.example/p"), "https://h.example/…");
        assert_eq!(redact("0123456789abcdef"), "01234567…");
        assert_eq!(redact("ab"), "ab…");
    }
}
