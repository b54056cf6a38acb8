//! `pushgate sip list` and `pushgate sip remove`: the devices SIP servers stored through the SIP
//! API's v2 routes, for an operator who answers "why does this phone not ring" or removes a
//! lost phone. Tokens are shown shortened.

use std::process::ExitCode;

use serde_json::json;

use super::{ConfigArg, Failure, NO_MATCH, OK, Outcome, load_config, open_store, redact};
use crate::fronts::sip::request;
use crate::storage::SipDevice;

/// The most devices `list` prints.
const LIST_LIMIT: u32 = 10_000;

#[derive(clap::Args, Debug)]
pub struct SipArgs {
    #[command(subcommand)]
    pub command: SipCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum SipCommand {
    /// List stored devices, of one account or all (at most 10000).
    List {
        /// Only this account (the SIP address the server names, e.g. bob@example.org).
        #[arg(long)]
        account: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove one stored device.
    Remove {
        #[arg(long)]
        account: String,
        #[arg(long)]
        app_id: String,
        #[arg(long)]
        device_id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(args: SipArgs) -> ExitCode {
    super::execute(execute(args.command))
}

async fn execute(command: SipCommand) -> Outcome {
    match command {
        SipCommand::List {
            account,
            json,
            config,
        } => {
            let store = open_store(&load_config(&config.config)?).await?;
            let devices = store
                .list_sip_devices(account.as_deref(), LIST_LIMIT)
                .await
                .map_err(|e| Failure::failed(format!("cannot list SIP devices: {e}")))?;
            if devices.is_empty() {
                eprintln!("no SIP devices match");
                return Ok(NO_MATCH);
            }
            if json {
                for d in &devices {
                    println!("{}", as_json(d));
                }
            } else {
                let rows: Vec<Vec<String>> = devices.iter().map(as_row).collect();
                super::print_table(
                    &[
                        "ACCOUNT",
                        "APP",
                        "PLATFORM",
                        "DEVICE",
                        "TOKEN",
                        "VOIP TOKEN",
                    ],
                    &rows,
                );
            }
            Ok(OK)
        }
        SipCommand::Remove {
            account,
            app_id,
            device_id,
            config,
        } => {
            let device_id = request::device_id(&device_id)
                .ok_or_else(|| Failure::usage("--device-id is empty"))?;
            let store = open_store(&load_config(&config.config)?).await?;
            let removed = store
                .remove_sip_device(&account, &app_id, &device_id)
                .await
                .map_err(|e| Failure::failed(format!("cannot remove the device: {e}")))?;
            if !removed {
                println!("no such device");
                return Ok(NO_MATCH);
            }
            println!("ok: device removed");
            Ok(OK)
        }
    }
}

fn as_row(d: &SipDevice) -> Vec<String> {
    vec![
        d.account.clone(),
        d.app_id.clone(),
        d.platform.clone(),
        d.device_id.clone(),
        redact(&d.token),
        d.voip_token
            .as_deref()
            .map_or_else(|| "-".to_owned(), redact),
    ]
}

fn as_json(d: &SipDevice) -> serde_json::Value {
    json!({
        "account": d.account,
        "app_id": d.app_id,
        "platform": d.platform,
        "device_id": d.device_id,
        "token": redact(&d.token),
        "voip_token": d.voip_token.as_deref().map(redact),
        "silent": d.silent,
        "user_agent": d.user_agent,
    })
}
