//! `pushgate unifiedpush revoke`: an operator ends UnifiedPush endpoints (abuse, a lost phone,
//! an account closed). The endpoint then answers 404 and app servers stop; what was kept for it
//! goes too.

use std::process::ExitCode;

use super::{ConfigArg, Failure, NO_MATCH, OK, Outcome, load_config, open_store};
use crate::core::unifiedpush::endpoint_hash;

#[derive(clap::Args, Debug)]
pub struct UnifiedPushArgs {
    #[command(subcommand)]
    pub command: UnifiedPushCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum UnifiedPushCommand {
    /// Revoke one endpoint (its URL, the token at its end, or its id in `devices list`), or
    /// every endpoint of an account.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["endpoint", "id", "account"]))]
    Revoke {
        /// The endpoint URL (`https://up.example.org/up/<token>`) or its token.
        endpoint: Option<String>,
        /// The endpoint's id, as `pushgate devices list` shows it.
        #[arg(long)]
        id: Option<i64>,
        /// Every endpoint of this XMPP account (bare JID).
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

pub fn run(args: UnifiedPushArgs) -> ExitCode {
    super::execute(execute(args.command))
}

async fn execute(command: UnifiedPushCommand) -> Outcome {
    let UnifiedPushCommand::Revoke {
        endpoint,
        id,
        account,
        config,
    } = command;
    let config = load_config(&config.config)?;
    let store = open_store(&config).await?;
    let removed = match (endpoint, id, account) {
        (_, Some(id), _) => store
            .remove_up_endpoint_id(id)
            .await
            .map_err(|e| Failure::failed(e.to_string()))?,
        (Some(endpoint), None, _) => {
            let hash = endpoint_hash(&endpoint)
                .ok_or_else(|| Failure::usage("not a UnifiedPush endpoint URL or token"))?;
            u64::from(
                store
                    .remove_up_endpoint(&hash)
                    .await
                    .map_err(|e| Failure::failed(e.to_string()))?,
            )
        }
        (None, None, Some(account)) => {
            let bare = account
                .parse::<crate::ids::BareJid>()
                .map_err(|e| Failure::usage(format!("--account: not a bare JID: {e}")))?;
            store
                .remove_up_endpoints_of(&bare.to_string())
                .await
                .map_err(|e| Failure::failed(e.to_string()))?
        }
        (None, None, None) => return Err(Failure::usage("name an endpoint, --id or --account")),
    };
    if removed == 0 {
        println!("no such endpoint");
        return Ok(NO_MATCH);
    }
    println!("ok: {removed} endpoint(s) revoked");
    Ok(OK)
}
