//! Delivering one notification to one registration, and acting on the verdict: the part of a
//! push every front shares.
//!
//! The front has found the registration (`registry`) and built the notification from its
//! protocol; here the notification is shaped as the registration's dialect promised the app,
//! held back if it is low priority and the device just got one (`coalesce.rs`; a push that is
//! not delivered does not count), sent through the provider within a delivery slot
//! (`slots.rs`) and by the caller's deadline, counted, and the verdict applied: a dead token
//! removes the registration, and a failure for now goes to the retry queue (`retry.rs`), which
//! makes later attempts through [`attempt`] too.

use std::time::Duration;

use pushgate_providers::{Content, Notification, Priority, Verdict};
use tokio::time::Instant;

use super::target::Target;
use super::{Core, retry};
use crate::error::Fault;
use crate::ids::{Dialect, hex};
use crate::log_limit::LOG_LIMIT;
use crate::metrics::METRICS;
use crate::storage::Registration;

/// How a delivery ended: what the front answers and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// A low-priority push held back because the device got one moments ago.
    Coalesced,
    /// Not delivered yet, but in the retry queue: pushgate answers for it now.
    Queued,
    DeadToken,
    Transient,
    OurFault,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Coalesced => "coalesced",
            Outcome::Queued => "queued",
            Outcome::DeadToken => "dead_token",
            Outcome::Transient => "transient",
            Outcome::OurFault => "our_fault",
        }
    }
}

/// One attempt's outcome and, for a failure, what the retry schedule needs.
#[derive(Debug)]
pub struct Attempt {
    pub outcome: Outcome,
    /// The earliest retry the provider asked for.
    pub retry_after: Option<Duration>,
    /// Why it failed (empty when it did not).
    pub reason: String,
}

impl Attempt {
    fn done(outcome: Outcome) -> Self {
        Attempt {
            outcome,
            retry_after: None,
            reason: String::new(),
        }
    }
}

/// Time kept between the end of a delivery attempt and the request's deadline, for recording
/// the verdict and answering.
const ANSWER_MARGIN: Duration = Duration::from_millis(250);
/// Time kept after a first attempt for queueing it if it fails, at most a quarter of the
/// request's time.
const QUEUE_RESERVE: Duration = Duration::from_secs(1);

/// Delivers `notification` to `target` by `deadline`, and queues it for retry if the provider
/// cannot take it now. `Err` (always transient) when the store failed or the target's provider
/// is no longer configured.
pub async fn deliver(
    core: &Core,
    target: Target<'_>,
    notification: Notification,
    deadline: Instant,
) -> Result<Outcome, Fault> {
    let notification = match target.registration() {
        Some(reg) => as_promised(notification, reg),
        None => notification,
    };
    let left = deadline.saturating_duration_since(Instant::now());
    let answer_by = deadline - ANSWER_MARGIN.min(left / 8);
    let send_by = answer_by - QUEUE_RESERVE.min(left / 4);
    let first = attempt(core, target, &notification, send_by).await?;
    if first.outcome != Outcome::Transient {
        return Ok(first.outcome);
    }
    Ok(retry::enqueue(core, target, &notification, &first, answer_by).await)
}

/// One attempt to deliver `notification`, already shaped for the target's app, by `send_by`.
pub async fn attempt(
    core: &Core,
    target: Target<'_>,
    notification: &Notification,
    send_by: Instant,
) -> Result<Attempt, Fault> {
    let provider_id = target.provider();
    let Some((_, provider)) = core.providers.get(provider_id.as_str()) else {
        // The operator removed this provider. Not the device's fault: keep the registration.
        tracing::warn!("the device's provider is no longer configured");
        return Err(Fault::Transient(format!(
            "provider {provider_id} not configured"
        )));
    };
    // A low-priority push to a registration takes its coalescing interval now, so that a
    // concurrent one is held back; it gives the interval back unless the provider took it.
    let coalescing = target
        .registration()
        .filter(|_| notification.priority == Priority::Low)
        .map(|reg| (reg.id, std::time::Instant::now()));
    if let Some((id, now)) = coalescing
        && !core.coalescer.admit(id, now)
    {
        return Ok(Attempt::done(Outcome::Coalesced));
    }
    let give_back = || {
        if let Some((id, at)) = coalescing {
            core.coalescer.undo(id, at);
        }
    };
    let device = target.device();
    let host = provider.destination_host(&device);
    let started = Instant::now();
    let attempt = tokio::time::timeout_at(send_by, async {
        let _pass = core.slots.enter(provider_id, host.as_deref()).await?;
        Ok::<_, super::slots::Full>(provider.send(&device, notification).await)
    })
    .await;
    let provider_id = provider_id.as_str();
    let verdict = match attempt {
        Ok(Ok(verdict)) => verdict,
        Ok(Err(full)) => {
            METRICS
                .delivery_slots_full
                .with_label_values(&[provider_id, full.label()])
                .inc();
            tracing::warn!(scope = full.label(), "every delivery slot taken");
            give_back();
            return Ok(Attempt {
                outcome: Outcome::Transient,
                retry_after: None,
                reason: format!("every {} delivery slot taken", full.label()),
            });
        }
        Err(_) => Verdict::Transient {
            retry_after: None,
            reason: "no answer in time (waiting for a slot or the provider)".into(),
        },
    };
    METRICS
        .delivery_seconds
        .with_label_values(&[provider_id])
        .observe(started.elapsed().as_secs_f64());
    METRICS
        .deliveries
        .with_label_values(&[provider_id, notification.kind.label(), verdict.label()])
        .inc();
    if verdict != Verdict::Sent {
        give_back();
    }
    apply(core, target, verdict).await
}

/// The notification as the registration's dialect promised it to the app. Tigase-dialect apps
/// get the summary; mod_push_appserver-dialect apps the summary without the account. p2 (Conversations) registrations get no content at all, only
/// `account` = SHA-1 hex of (account bare JID, NUL, device id), `channel` likewise for a
/// per-room registration, and a collapse key from the first six hex digits of the channel hash,
/// else of the account hash: the app recomputes the hashes to find what to sync, and the
/// provider (Google, Apple) learns nothing about who talks to whom.
fn as_promised(mut n: Notification, reg: &Registration) -> Notification {
    if reg.dialect == Dialect::AppServer {
        // mod_push_appserver's apps get what the summary says (the sender and body, when the
        // server sent them) and no account: they never asked for it.
        n.content.account = None;
        return n;
    }
    if reg.dialect == Dialect::P2 {
        let device_id = reg.device_id.as_deref().unwrap_or_default();
        let account = p2_hash(reg.account.as_str(), device_id);
        let channel = reg.muc.as_ref().map(|m| p2_hash(m.as_str(), device_id));
        n.collapse_key = Some(channel.as_deref().unwrap_or(&account)[..6].to_owned());
        n.content = Content {
            account: Some(account),
            channel,
            ..Content::default()
        };
    }
    n
}

/// p2's device hash: SHA-1 hex of `jid ‖ 0x00 ‖ device_id`.
fn p2_hash(jid: &str, device_id: &str) -> String {
    use sha1::{Digest, Sha1};
    let digest = Sha1::new()
        .chain_update(jid.as_bytes())
        .chain_update([0u8])
        .chain_update(device_id.as_bytes())
        .finalize();
    hex(&digest)
}

/// Acts on what the provider said: a registration with a dead token is removed at once (the
/// reply tells the server so; a named device's dead token is the front's to report), and for a
/// registration the rest is noted behind the reply.
async fn apply(core: &Core, target: Target<'_>, verdict: Verdict) -> Result<Attempt, Fault> {
    let reg = target.registration();
    Ok(match verdict {
        Verdict::Sent => {
            // Written behind the reply: the server waits for nothing it does not need.
            if let Some(reg) = reg {
                core.delivery_log.success(reg.id);
            }
            Attempt::done(Outcome::Delivered)
        }
        Verdict::DeadToken { reason } => match reg {
            Some(reg) => return dead_registration(core, reg, reason).await,
            None => {
                tracing::info!(%reason, "token is dead: remembered for the front to report");
                let device = target.device();
                core.dead_tokens
                    .remember(&[device.provider.as_str(), device.token.as_str()]);
                Attempt::done(Outcome::DeadToken)
            }
        },
        Verdict::Transient {
            retry_after,
            reason,
        } => {
            if let Some(held_back) = LOG_LIMIT.allow("delivery_transient") {
                tracing::warn!(provider = %target.provider(), %reason, retry_after_secs = retry_after.map(|d| d.as_secs()), held_back, "delivery failed for now");
            }
            if let Some(reg) = reg {
                core.delivery_log.failure(reg.id, &reason);
            }
            Attempt {
                outcome: Outcome::Transient,
                retry_after,
                reason,
            }
        }
        Verdict::OurFault { reason } => {
            if let Some(held_back) = LOG_LIMIT.allow("delivery_our_fault") {
                tracing::error!(provider = %target.provider(), %reason, held_back, "delivery failed through pushgate's own fault");
            }
            if let Some(reg) = reg {
                core.delivery_log.failure(reg.id, &reason);
            }
            Attempt {
                outcome: Outcome::OurFault,
                retry_after: None,
                reason,
            }
        }
    })
}

/// Removes `reg`, whose token the provider called dead, unless it has a new token by now.
async fn dead_registration(
    core: &Core,
    reg: &Registration,
    reason: String,
) -> Result<Attempt, Fault> {
    if !core.store.delete_if_token(reg).await? {
        // Re-registered (new token) or removed while we delivered: nothing to delete, and the
        // server must not drop a registration that may be fresh.
        tracing::info!(%reason, "token is dead but the registration changed meanwhile: kept");
        return Ok(Attempt {
            outcome: Outcome::Transient,
            retry_after: None,
            reason,
        });
    }
    tracing::info!(%reason, "token is dead: registration removed");
    core.removals.announce(&reg.account, &reg.node);
    METRICS
        .dead_tokens_removed
        .with_label_values(&[reg.provider.as_str()])
        .inc();
    Ok(Attempt::done(Outcome::DeadToken))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2_hash_is_sha1_of_jid_nul_device() {
        // sha1("alice@example.org\0phone1"), computed independently
        assert_eq!(
            p2_hash("alice@example.org", "phone1"),
            "61fb5afaec5f6273a3ce61cc75b311549ba60846"
        );
    }
}
