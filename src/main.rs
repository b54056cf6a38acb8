//! The `pushgate` command: run the gateway, or check a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::sync::watch;

use pushgate::config::Config;
use pushgate::core::{Core, Providers, apns_credential_sync};
use pushgate::fronts::xmpp::stream::{self, StreamConfig};
use pushgate::fronts::xmpp::{Component, admin_alerts};
use pushgate::storage::Store;

/// malloc/free were a fifth of the CPU per push with the system allocator (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (15 in mimalloc 2 and 3 alike; the -sys
/// crate names only some of the options).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// The exit status after another instance took the component over (`component.when_replaced =
/// "exit"`); etc/pushgate.service does not restart on it (`RestartPreventExitStatus=3`).
const EXIT_REPLACED: u8 = 3;
/// How long tasks left over after `run` may take before the process exits without them.
const LINGER: Duration = Duration::from_secs(1);
/// How much longer than `limits.shutdown_timeout_secs` `run` waits for the parts that bound
/// their own shutdown by it (the HTTP server) before it stops waiting.
const GRACE: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(version, about = "XEP-0357 push gateway (XEP-0114 component)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Connect to the XMPP server and serve push registrations and publishes.
    Run {
        #[arg(long, env = "PUSHGATE_CONFIG", default_value = "etc/pushgate.toml")]
        config: PathBuf,
    },
    /// Check a configuration file (including provider credentials) and exit.
    CheckConfig {
        #[arg(long, env = "PUSHGATE_CONFIG", default_value = "etc/pushgate.toml")]
        config: PathBuf,
    },
    /// List or remove device registrations.
    Devices {
        #[command(subcommand)]
        command: pushgate::cli::devices::DevicesCommand,
    },
    /// Send one real push through a configured provider and print its verdict.
    PushTest(pushgate::cli::push_test::PushTestArgs),
    /// Show each APNs app's credentials and their expiry (exit 1 if any is expired or missing).
    Certs(pushgate::cli::certs::CertsArgs),
    /// Apply pending database migrations and exit.
    Migrate(pushgate::cli::migrate::MigrateArgs),
    /// Revoke UnifiedPush endpoints.
    Unifiedpush(pushgate::cli::unifiedpush::UnifiedPushArgs),
    /// List or remove devices stored through the SIP API's v2 routes.
    Sip(pushgate::cli::sip::SipArgs),
}

fn main() -> ExitCode {
    // No transparent huge pages: with THP on `always` (as on the benchmark machine), every 2 MiB
    // region the allocator touched became resident whole, a third of peak RSS under load at the
    // same CPU per publish (docs/performance.md, "Performance, round two").
    // SAFETY: prctl with integer arguments only; failure (an old kernel) changes nothing.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    // mimalloc 3 keeps freed memory for a second before giving it back (`purge_delay` 1000 ms);
    // under load that second's churn was resident at once. 10 ms, mimalloc 2's default: VmHWM
    // at a million devices 59-68 -> 52-55 MB in most runs, at no measurable cost in publishes/s
    // (docs/performance.md, "Performance, round two"). MIMALLOC_PURGE_DELAY still overrides it.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads it at its next purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 10) };
    }
    // Both rustls backends may be compiled in through dependencies; pick one explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Devices { command } => pushgate::cli::devices::run(command),
        Command::PushTest(args) => pushgate::cli::push_test::run(args),
        Command::Certs(args) => pushgate::cli::certs::run(args),
        Command::Migrate(args) => pushgate::cli::migrate::run(args),
        Command::Unifiedpush(args) => pushgate::cli::unifiedpush::run(args),
        Command::Sip(args) => pushgate::cli::sip::run(args),
        Command::Run { config } => {
            init_tracing();
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let code = runtime.block_on(run(config));
            // Tasks still stuck (a hung provider call, a blocking DNS lookup) must not hold up
            // the exit that `run` already bounded.
            runtime.shutdown_timeout(LINGER);
            code
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only for people watching a terminal; log files and journald get plain text.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

fn check_config(path: &std::path::Path) -> ExitCode {
    let result = Config::load(path).and_then(|c| Providers::from_config(&c).map(|p| (c, p)));
    match result {
        Ok((config, providers)) => {
            let ids: Vec<_> = providers.ids().map(|id| id.to_string()).collect();
            println!(
                "ok: component {}, providers [{}]",
                config.component.jid,
                ids.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("config error in {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

async fn run(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("config error in {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    // Before anything starts, so that a SIGTERM from now on is a clean shutdown.
    let signal = shutdown_signal();
    raise_open_file_limit(&config);
    let url = match Store::url_for(&config.storage) {
        Ok(url) => url,
        Err(e) => {
            tracing::error!("storage.data_dir: {e}");
            return ExitCode::from(2);
        }
    };
    let store = match Store::open(&url).await {
        Ok(s) => s.with_cache(
            config.storage.cache_capacity,
            config.storage.cache_max_bytes,
            Duration::from_secs(config.storage.cache_ttl_secs),
        ),
        Err(e) => {
            tracing::error!("cannot open the database: {e}");
            return ExitCode::FAILURE;
        }
    };
    let core = match Core::new(&config, store) {
        Ok(core) => Arc::new(core),
        Err(e) => {
            tracing::error!("config error in {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let (component, outbox) = Component::with_core(&config, core.clone());
    if let Err(e) = core.load_unifiedpush(&config.unifiedpush).await {
        tracing::error!("cannot load the UnifiedPush key: {e}");
        return ExitCode::from(1);
    }
    if core.providers.is_empty() {
        tracing::warn!("no providers configured: every registration will be refused");
    }
    let stream_cfg = StreamConfig::new(&config);
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (connected_tx, connected_rx) = watch::channel(false);
    let stop_tx_http = stop_tx.clone();
    let stop_tx_replaced = stop_tx.clone();
    tokio::spawn(async move {
        signal.await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    let (warnings, alerts) = tokio::sync::mpsc::channel(16);
    admin_alerts::forward(component.clone(), alerts);
    if config.registration.notify_removal {
        pushgate::fronts::xmpp::removals::forward(component.clone());
    }
    apns_credential_sync::start(core.clone(), warnings, stop_rx.clone()).await;
    pushgate::core::stats::spawn_refresh(core.store.clone(), stop_rx.clone());
    let retries = pushgate::core::retry::spawn(core.clone(), stop_rx.clone());
    let delivery_log = tokio::spawn(core.delivery_log.clone().run(
        core.store.clone(),
        Duration::from_secs(1),
        stop_rx.clone(),
    ));
    let shutdown_timeout = config.limits.shutdown_timeout();
    let sip = Arc::new(pushgate::fronts::sip::Sip::new(config.sip.clone()));
    // The HTTP server (if configured) fails fast: a port that cannot be bound stops pushgate.
    let http = tokio::spawn({
        let (core, http_cfg, stop) = (core.clone(), config.http.clone(), stop_rx.clone());
        let matrix = pushgate::fronts::matrix::Matrix::new(&config.matrix);
        let sip = sip.clone();
        let component_jid = component.jid.clone();
        let component = component.clone();
        let stop_all = stop_tx_http;
        async move {
            let result = pushgate::fronts::http::serve(
                core,
                component_jid,
                http_cfg,
                pushgate::fronts::http::Fronts {
                    matrix,
                    component: Some(component),
                    sip,
                },
                shutdown_timeout,
                connected_rx,
                stop,
            )
            .await;
            if let Err(e) = &result {
                tracing::error!("http: {e}");
                let _ = stop_all.send(true);
            }
            result
        }
    });
    let stream_stop = stop_rx.clone();
    let work = async {
        let ended = stream::run(component, stream_cfg, outbox, stream_stop, connected_tx).await;
        if ended == stream::Ended::Replaced {
            // The rest (HTTP, the delivery log) stops as on a signal.
            let _ = stop_tx_replaced.send(true);
        }
        // The last second's delivery outcomes, and the retries in progress.
        let _ = delivery_log.await;
        let _ = retries.await;
        let http = http.await;
        // Pushes answered 202 and still being delivered.
        sip.drain(shutdown_timeout).await;
        match http {
            Ok(Err(_)) => ExitCode::FAILURE,
            _ if ended == stream::Ended::Replaced => ExitCode::from(EXIT_REPLACED),
            _ => ExitCode::SUCCESS,
        }
    };
    tokio::pin!(work);
    tokio::select! {
        code = &mut work => return code,
        _ = stop_rx.wait_for(|stop| *stop) => {}
    }
    // Shutting down: whatever hangs (the XMPP server, an HTTP client, a provider) gets
    // `limits.shutdown_timeout_secs` (the HTTP server closes its leftovers itself by then), then
    // pushgate exits anyway.
    match tokio::time::timeout(shutdown_timeout + GRACE, work).await {
        Ok(code) => code,
        Err(_) => {
            tracing::warn!(
                "shutdown not complete {} s after the signal (limits.shutdown_timeout_secs \
                 {} s + {} s); exiting anyway",
                (shutdown_timeout + GRACE).as_secs(),
                shutdown_timeout.as_secs(),
                GRACE.as_secs()
            );
            ExitCode::SUCCESS
        }
    }
}

/// Raises the open-file soft limit to the hard limit, so that slow clients cannot starve
/// deliveries of descriptors, and warns if the HTTP cap leaves too few for everything else.
fn raise_open_file_limit(config: &Config) {
    // Database, XMPP stream, provider connections, log: what the process needs besides HTTP.
    const RESERVE: u64 = 256;
    let after = match pushgate::rlimit::raise_nofile() {
        Ok((before, after)) => {
            tracing::info!(
                "open-file limit: soft {} (was {}), hard {}",
                after.soft,
                before.soft,
                after.hard
            );
            after
        }
        Err(e) => {
            tracing::warn!("cannot raise the open-file limit: {e}");
            match pushgate::rlimit::nofile() {
                Ok(now) => now,
                Err(_) => return,
            }
        }
    };
    let cap = config.http.max_connections as u64;
    if config.http.listen.is_some() && cap + RESERVE > after.soft {
        tracing::warn!(
            "http.max_connections ({cap}) leaves fewer than {RESERVE} of the {} open files \
             for deliveries and the database; lower it or raise the limit (LimitNOFILE)",
            after.soft
        );
    }
}

/// Registers for SIGTERM and SIGINT now and returns what waits for either. Registering at once,
/// not when the waiting starts, matters: until a handler is registered a SIGTERM kills the
/// process outright, and the stream may already be connecting by then.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                one.recv().await;
            }
            // Nothing to wait for: only SIGKILL and the like will stop us.
            (Err(_), Err(_)) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index names the option main() means: the only one whose default is 1000 (ms).
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads an integer option.
            assert_eq!(
                unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
                1000
            );
        }
    }
}
