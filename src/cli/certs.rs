//! `pushgate certs`: the credentials each APNs app would use now, and how long they last.

use std::process::ExitCode;
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{ConfigArg, FAILED, Failure, OK, Outcome, load_config, open_store};
use crate::core::Core;
use pushgate_providers::ProviderConfig;

const DAY: i64 = 24 * 60 * 60;

#[derive(clap::Args, Debug)]
pub struct CertsArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: CertsArgs) -> ExitCode {
    super::execute(certs(args))
}

async fn certs(args: CertsArgs) -> Outcome {
    let config = load_config(&args.config.config)?;
    let config_error = |e| {
        Failure::usage(format!(
            "config error in {}: {e}",
            args.config.config.display()
        ))
    };
    if !config
        .providers
        .values()
        .any(|p| matches!(p, ProviderConfig::Apns(_)))
    {
        eprintln!("no APNs apps configured");
        return Ok(OK);
    }
    // Credentials uploaded at run time live in the database: apply them as `run` does.
    let store = open_store(&config).await?;
    let core = Core::new(&config, store).map_err(config_error)?;
    crate::core::apns_credential_sync::apply_stored(&core, None)
        .await
        .map_err(|e| Failure::failed(format!("cannot read stored credentials: {e}")))?;
    let now = SystemTime::now();
    let mut failing = false;
    let mut rows = Vec::new();
    for (id, apns) in core.providers.apns() {
        let info = apns.credential_info();
        let not_after = info
            .as_ref()
            .and_then(|i| i.not_after)
            .map(DateTime::<Utc>::from);
        let days_left = not_after.map(|t| {
            let secs = (t - DateTime::<Utc>::from(now)).num_seconds();
            secs.div_euclid(DAY)
        });
        let expired = not_after.is_some_and(|t| t <= DateTime::<Utc>::from(now));
        failing |= info.is_none() || expired;
        if args.json {
            println!(
                "{}",
                json!({
                    "provider": id.as_str(),
                    "topic": apns.topic(),
                    "kind": info.as_ref().map(|i| i.kind),
                    "subject": info.as_ref().and_then(|i| i.subject.clone()),
                    "not_after": not_after,
                    "days_left": days_left,
                    "expired": expired,
                    "missing": info.is_none(),
                })
            );
            continue;
        }
        let dash = || "-".to_owned();
        rows.push(match &info {
            None => vec![
                id.to_string(),
                "none".to_owned(),
                "MISSING: no credentials configured or uploaded".to_owned(),
                dash(),
                dash(),
            ],
            Some(info) => vec![
                id.to_string(),
                info.kind.to_owned(),
                info.subject.clone().unwrap_or_else(dash),
                not_after.map_or_else(
                    || "never".to_owned(),
                    |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
                ),
                match days_left {
                    _ if expired => "EXPIRED".to_owned(),
                    Some(d) => d.to_string(),
                    None => dash(),
                },
            ],
        });
    }
    if !args.json {
        super::print_table(
            &["PROVIDER", "KIND", "SUBJECT", "NOT AFTER", "DAYS LEFT"],
            &rows,
        );
    }
    Ok(if failing { FAILED } else { OK })
}
