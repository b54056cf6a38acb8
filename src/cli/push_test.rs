//! `pushgate push-test`: one real delivery through a configured provider, to check credentials
//! and a device end to end without an XMPP server.

use std::process::ExitCode;

use pushgate_providers::{
    Content, Device, DeviceToken, Kind, Notification, Priority, Provider, ProviderConfig, Verdict,
    WebPushKeys,
};

use super::{ConfigArg, FAILED, Failure, OK, Outcome, load_config, open_store};
use crate::core::{Core, Providers};

#[derive(clap::Args, Debug)]
pub struct PushTestArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The provider id, as configured (`[providers."<id>"]`).
    #[arg(long, value_name = "ID")]
    pub provider: String,
    /// The device token (APNs hex token, FCM registration token, WebPush endpoint URL).
    #[arg(long, value_name = "T")]
    pub token: String,
    /// A second token (a PushKit VoIP token, used for `--kind voip`).
    #[arg(long, value_name = "T2")]
    pub second_token: Option<String>,
    /// WebPush: the subscription's P-256 public key (base64url); needs --auth.
    #[arg(long, value_name = "K", requires = "auth")]
    pub p256dh: Option<String>,
    /// WebPush: the subscription's auth secret (base64url); needs --p256dh.
    #[arg(long, value_name = "A", requires = "p256dh")]
    pub auth: Option<String>,
    #[arg(long, value_enum, default_value_t = TestKind::Alert)]
    pub kind: TestKind,
    /// The message body (alert pushes).
    #[arg(long, value_name = "TEXT")]
    pub body: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum TestKind {
    Alert,
    Background,
    Voip,
    Clear,
}

impl TestKind {
    /// Kind and priority as the publish path pairs them.
    fn kind_and_priority(self) -> (Kind, Priority) {
        match self {
            TestKind::Alert => (Kind::Alert, Priority::High),
            TestKind::Background => (Kind::Background, Priority::Low),
            TestKind::Voip => (Kind::Voip, Priority::High),
            TestKind::Clear => (Kind::Clear, Priority::Normal),
        }
    }
}

pub fn run(args: PushTestArgs) -> ExitCode {
    super::execute(push_test(args))
}

async fn push_test(args: PushTestArgs) -> Outcome {
    let config = load_config(&args.config.config)?;
    let config_error = |e| {
        Failure::usage(format!(
            "config error in {}: {e}",
            args.config.config.display()
        ))
    };
    let Some(section) = config.providers.get(&args.provider) else {
        let ids: Vec<_> = config.providers.keys().cloned().collect();
        return Err(Failure::usage(format!(
            "no provider '{}' in the configuration (configured: {})",
            args.provider,
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.join(", ")
            }
        )));
    };
    let is_apns = matches!(section, ProviderConfig::Apns(_));
    let device = Device {
        provider: pushgate_providers::ProviderId::new(args.provider.clone()),
        token: DeviceToken::new(args.token),
        second_token: args.second_token.map(DeviceToken::new),
        webpush_keys: match (args.p256dh, args.auth) {
            (Some(p256dh), Some(auth)) => Some(WebPushKeys { p256dh, auth }),
            _ => None,
        },
    };
    let (kind, priority) = args.kind.kind_and_priority();
    let notification = Notification {
        content: Content {
            body: match kind {
                Kind::Alert => Some(
                    args.body
                        .unwrap_or_else(|| "pushgate test notification".to_owned()),
                ),
                _ => args.body,
            },
            sender: Some("pushgate push-test".to_owned()),
            message_count: Some(1),
            ..Content::default()
        },
        ..Notification::new(kind, priority)
    };
    let id = args.provider.as_str();
    let verdict = if is_apns {
        // APNs credentials may have been uploaded at run time: apply them as `run` does.
        let store = open_store(&config).await?;
        let core = Core::new(&config, store).map_err(config_error)?;
        crate::core::apns_credential_sync::apply_stored(&core, None)
            .await
            .map_err(|e| Failure::failed(format!("cannot read stored credentials: {e}")))?;
        let (_, provider) = core.providers.get(id).ok_or_else(|| missing(id))?;
        deliver(provider.as_ref(), &device, &notification).await?
    } else {
        let providers = Providers::from_config(&config).map_err(config_error)?;
        let (_, provider) = providers.get(id).ok_or_else(|| missing(id))?;
        deliver(provider.as_ref(), &device, &notification).await?
    };
    println!("{}", describe(&verdict));
    Ok(if verdict == Verdict::Sent { OK } else { FAILED })
}

fn missing(id: &str) -> Failure {
    Failure::failed(format!("provider {id} was not built"))
}

async fn deliver(
    provider: &dyn Provider,
    device: &Device,
    notification: &Notification,
) -> Result<Verdict, Failure> {
    provider
        .validate(device)
        .map_err(|e| Failure::usage(format!("the provider refuses this device: {e}")))?;
    Ok(provider.send(device, notification).await)
}

/// `sent`, `dead_token: reason`, `transient: reason (retry after 30s)`, `our_fault: reason`.
fn describe(verdict: &Verdict) -> String {
    match verdict {
        Verdict::Sent => "sent".to_owned(),
        Verdict::DeadToken { reason } | Verdict::OurFault { reason } => {
            format!("{}: {reason}", verdict.label())
        }
        Verdict::Transient {
            retry_after,
            reason,
        } => match retry_after {
            Some(after) => format!(
                "{}: {reason} (retry after {}s)",
                verdict.label(),
                after.as_secs()
            ),
            None => format!("{}: {reason}", verdict.label()),
        },
    }
}
