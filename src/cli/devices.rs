//! `pushgate devices list|remove`: look at and remove registrations without a client.

use std::process::ExitCode;

use serde_json::json;

use super::{
    ConfigArg, Failure, NO_MATCH, OK, Outcome, format_time, load_config, open_store, redact,
};
use crate::ids::{BareJid, ProviderId};
use crate::storage::{Registration, RegistrationFilter, UpEndpointRow};

/// Longest `last error` shown in the table, in characters (`--json` has it whole).
const ERROR_COLUMN_CHARS: usize = 60;

#[derive(clap::Subcommand, Debug)]
pub enum DevicesCommand {
    /// List registrations (exit 3 when none match).
    List(ListArgs),
    /// Remove registrations by id, or all of an account's (exit 3 when none match).
    Remove(RemoveArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this account's registrations (a bare JID).
    #[arg(long, value_name = "JID")]
    pub account: Option<String>,
    /// Only registrations of accounts on this domain.
    #[arg(long, value_name = "DOMAIN")]
    pub domain: Option<String>,
    /// Only registrations with this provider id.
    #[arg(long, value_name = "ID")]
    pub provider: Option<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["id", "account"]))]
pub struct RemoveArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The registration's id (as `devices list` shows it).
    #[arg(long, value_name = "N")]
    pub id: Option<i64>,
    /// Every registration of this account (a bare JID).
    #[arg(long, value_name = "JID")]
    pub account: Option<String>,
    /// With --account: only the registrations with this provider id.
    #[arg(long, value_name = "ID", requires = "account")]
    pub provider: Option<String>,
}

pub fn run(command: DevicesCommand) -> ExitCode {
    match command {
        DevicesCommand::List(args) => super::execute(list(args)),
        DevicesCommand::Remove(args) => super::execute(remove(args)),
    }
}

fn parse_account(s: &str) -> Result<BareJid, Failure> {
    let jid =
        BareJid::new(s).map_err(|e| Failure::usage(format!("--account {s}: not a JID: {e}")))?;
    if jid.node().is_none() {
        return Err(Failure::usage(format!(
            "--account {s}: an account is a user JID (user@example.org)"
        )));
    }
    Ok(jid)
}

/// The domain as the store keeps it (normalised like a JID's domain part).
fn parse_domain(s: &str) -> Result<String, Failure> {
    match BareJid::new(s) {
        Ok(jid) if jid.node().is_none() => Ok(jid.domain().as_str().to_owned()),
        _ => Err(Failure::usage(format!("--domain {s}: not a domain"))),
    }
}

async fn list(args: ListArgs) -> Outcome {
    let config = load_config(&args.config.config)?;
    let filter = RegistrationFilter {
        account: args.account.as_deref().map(parse_account).transpose()?,
        domain: args.domain.as_deref().map(parse_domain).transpose()?,
        provider: args.provider.map(ProviderId::new),
    };
    let store = open_store(&config).await?;
    let registrations = store
        .list(&filter)
        .await
        .map_err(|e| Failure::failed(format!("cannot list registrations: {e}")))?;
    let endpoints = up_endpoints(&store, &filter).await?;
    if args.json {
        for r in &registrations {
            println!("{}", as_json(r));
        }
        for e in &endpoints {
            println!("{}", up_json(e));
        }
    } else if registrations.is_empty() && endpoints.is_empty() {
        eprintln!("no registrations match");
    } else if !registrations.is_empty() {
        let rows: Vec<Vec<String>> = registrations.iter().map(as_row).collect();
        super::print_table(
            &[
                "ID",
                "DIALECT",
                "PROVIDER",
                "ACCOUNT",
                "TOKEN",
                "CREATED",
                "LAST SUCCESS",
                "LAST ERROR",
            ],
            &rows,
        );
    }
    if !args.json && !endpoints.is_empty() {
        if !registrations.is_empty() {
            println!();
        }
        println!("UnifiedPush endpoints (pushgate unifiedpush revoke --id N ends one):");
        let rows: Vec<Vec<String>> = endpoints.iter().map(up_row).collect();
        super::print_table(
            &[
                "ID",
                "DIALECT",
                "ACCOUNT",
                "DISTRIBUTOR",
                "VAPID",
                "CREATED",
                "EXPIRES",
                "KEPT",
            ],
            &rows,
        );
    }
    Ok(if registrations.is_empty() && endpoints.is_empty() {
        NO_MATCH
    } else {
        OK
    })
}

/// The UnifiedPush endpoints the filter selects: all of them for no provider or
/// `unifiedpush`, none for another provider.
async fn up_endpoints(
    store: &crate::storage::Store,
    filter: &RegistrationFilter,
) -> Result<Vec<UpEndpointRow>, Failure> {
    if filter
        .provider
        .as_ref()
        .is_some_and(|p| p.as_str() != "unifiedpush")
    {
        return Ok(Vec::new());
    }
    let account = filter.account.as_ref().map(ToString::to_string);
    let rows = store
        .list_up_endpoints(account.as_deref())
        .await
        .map_err(|e| Failure::failed(format!("cannot list UnifiedPush endpoints: {e}")))?;
    Ok(rows
        .into_iter()
        .filter(|e| {
            filter.domain.as_ref().is_none_or(|d| {
                e.account
                    .rsplit_once('@')
                    .is_some_and(|(_, domain)| domain == d)
            })
        })
        .collect())
}

fn millis(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| "-".to_owned(), |t| format_time(&t))
}

fn up_row(e: &UpEndpointRow) -> Vec<String> {
    let resource = e.jid.split_once('/').map_or("", |(_, r)| r);
    vec![
        e.id.to_string(),
        e.dialect.clone(),
        e.account.clone(),
        format!("/{resource}"),
        if e.vapid_pinned { "pinned" } else { "-" }.to_owned(),
        millis(e.created_at_ms),
        millis(e.expires_at_ms),
        e.kept.to_string(),
    ]
}

fn up_json(e: &UpEndpointRow) -> serde_json::Value {
    json!({
        "unifiedpush_endpoint": e.id,
        "dialect": e.dialect,
        "account": e.account,
        "distributor": e.jid,
        "vapid_pinned": e.vapid_pinned,
        "created_at": millis(e.created_at_ms),
        "expires_at": millis(e.expires_at_ms),
        "kept": e.kept,
    })
}

fn as_row(r: &Registration) -> Vec<String> {
    let dash = || "-".to_owned();
    let last_error = match (&r.last_error_at, &r.last_error) {
        (Some(at), reason) => {
            let reason = reason.as_deref().unwrap_or_default();
            let mut short: String = reason.chars().take(ERROR_COLUMN_CHARS).collect();
            if reason.chars().count() > ERROR_COLUMN_CHARS {
                short.push('…');
            }
            format!(
                "{} {}",
                format_time(at),
                short.replace(['\n', '\r', '\t'], " ")
            )
        }
        (None, _) => dash(),
    };
    let mut account = r.account.to_string();
    if let Some(muc) = &r.muc {
        account.push_str(&format!(" (room {muc})"));
    }
    vec![
        r.id.to_string(),
        r.dialect.as_str().to_owned(),
        r.provider.to_string(),
        account,
        redact(r.token.as_str()),
        format_time(&r.created_at),
        r.last_success_at.as_ref().map_or_else(dash, format_time),
        last_error,
    ]
}

fn as_json(r: &Registration) -> serde_json::Value {
    json!({
        "id": r.id,
        "dialect": r.dialect.as_str(),
        "provider": r.provider.as_str(),
        "account": r.account.as_str(),
        "domain": r.domain,
        "device_id": r.device_id,
        "muc": r.muc.as_ref().map(|m| m.as_str()),
        "token": redact(r.token.as_str()),
        "second_token": r.second_token.as_ref().map(|t| redact(t.as_str())),
        "webpush_keys": r.webpush_keys.is_some(),
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "last_success_at": r.last_success_at,
        "last_error_at": r.last_error_at,
        "last_error": r.last_error,
    })
}

async fn remove(args: RemoveArgs) -> Outcome {
    let config = load_config(&args.config.config)?;
    let account = args.account.as_deref().map(parse_account).transpose()?;
    let provider = args.provider.map(ProviderId::new);
    let store = open_store(&config).await?;
    let removed = match (args.id, &account) {
        (Some(id), _) => u64::from(
            store
                .delete(id)
                .await
                .map_err(|e| Failure::failed(format!("cannot remove registration {id}: {e}")))?,
        ),
        (None, Some(account)) => store
            .delete_matching(account, provider.as_ref())
            .await
            .map_err(|e| Failure::failed(format!("cannot remove registrations: {e}")))?,
        // clap requires one of --id and --account.
        (None, None) => return Err(Failure::usage("give --id or --account")),
    };
    println!(
        "removed {removed} registration{}",
        if removed == 1 { "" } else { "s" }
    );
    Ok(if removed == 0 { NO_MATCH } else { OK })
}
