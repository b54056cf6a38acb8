//! The durable retry queue: a notification pushgate answered for is delivered or expires by its
//! own time to live, across provider outages, restarts and overlapping instances.
//!
//! A first attempt that fails for now (5xx, 429, timeout, connection error, every slot taken)
//! is written to the store's queue before the publish is answered ([`enqueue`]); only once the
//! row is committed does the server get `result`. When the queue is full (in total or for the
//! device) or the database does not take the row by the request's deadline, the publish is
//! answered `wait` as before, so the reply bound holds through a database outage too.
//!
//! The worker ([`spawn`]) claims due rows (the store leases them, so instances sharing
//! PostgreSQL never attempt a row at once; see `storage/queue.rs`) and makes one attempt each
//! through the same path as a publish (`delivery::attempt`): a sent or coalesced notification
//! leaves the queue, a dead token removes the registration (and with it everything queued for
//! it), a failure is tried again after 1 s, 2 s, 4 s, … up to `retry.max_backoff_secs` with
//! jitter, never before the provider's Retry-After, until the notification's time to live for
//! its kind runs out. A newer wake-up (background, clear) replaces the queued one of its device.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pushgate_providers::{Kind, Notification};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::backoff::retry_delay;
use super::delivery::{self, Attempt, Outcome};
use super::target::Target;
use super::{Core, now_ms};
use crate::config::RetryConfig;
use crate::metrics::METRICS;
use crate::storage::{Enqueued, NewQueued, Queued, QueuedFor};

/// Rows claimed at most per query.
const CLAIM_BATCH: usize = 64;
/// How often an idle worker looks for due rows.
const POLL: Duration = Duration::from_millis(250);
/// How often the queue is counted for the metrics and the total bound.
const COUNT_EVERY: Duration = Duration::from_secs(1);
/// How long a claim or a count may take before the worker tries again.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// A claimed row stays with its instance this much longer than the attempt may take.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// The queue's bounds and schedule (`[retry]`), and its size as this instance knows it.
pub struct RetryQueue {
    max_queued: u64,
    max_per_device: u32,
    voip_ttl: Duration,
    message_ttl: Duration,
    background_ttl: Duration,
    max_backoff: Duration,
    attempt_timeout: Duration,
    concurrency: usize,
    /// Rows queued as last counted, plus this instance's additions since: the total bound may
    /// be overshot by what other instances queue within one count interval.
    depth: AtomicU64,
}

impl RetryQueue {
    pub fn from_config(c: &RetryConfig) -> Self {
        RetryQueue {
            max_queued: c.max_queued,
            max_per_device: c.max_queued_per_device,
            voip_ttl: Duration::from_secs(c.voip_ttl_secs),
            message_ttl: Duration::from_secs(c.message_ttl_secs),
            background_ttl: Duration::from_secs(c.background_ttl_secs),
            max_backoff: Duration::from_secs(c.max_backoff_secs),
            attempt_timeout: Duration::from_secs(c.attempt_timeout_secs),
            concurrency: c.concurrency,
            depth: AtomicU64::new(0),
        }
    }

    fn enabled(&self) -> bool {
        self.max_queued > 0
    }

    fn ttl(&self, kind: Kind) -> Duration {
        match kind {
            Kind::Voip => self.voip_ttl,
            Kind::Alert => self.message_ttl,
            Kind::Background | Kind::Clear => self.background_ttl,
        }
    }
}

/// No provider carries a payload over 4096 bytes, so no text longer than 4096 characters is
/// ever delivered whole: providers cut from the end. The queue keeps no more than that of each
/// text (what is delivered is the same), and no row larger than `MAX_QUEUED_BYTES` (an opaque
/// encrypted payload cannot be cut): the rows of a full queue stay small whatever a server or
/// homeserver sends.
const MAX_TEXT_CHARS: usize = 4096;
const MAX_QUEUED_BYTES: usize = 16 * 1024;

/// `n` with its texts cut to what a provider can deliver.
fn kept(n: &Notification) -> Notification {
    let cut = |t: &Option<String>| {
        t.as_ref()
            .map(|t| t.chars().take(MAX_TEXT_CHARS).collect::<String>())
    };
    let c = &n.content;
    let mut kept = n.clone();
    kept.content = pushgate_providers::Content {
        account: cut(&c.account),
        sender: cut(&c.sender),
        body: cut(&c.body),
        message_count: c.message_count,
        nickname: cut(&c.nickname),
        channel: cut(&c.channel),
    };
    kept
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Queues `notification` (shaped for the target's app) after the failed attempt `first`, if the
/// store takes it by `deadline`: [`Outcome::Queued`], else [`Outcome::Transient`] (answered
/// `wait`) with the reason counted.
pub async fn enqueue(
    core: &Core,
    target: Target<'_>,
    notification: &Notification,
    first: &Attempt,
    deadline: Instant,
) -> Outcome {
    let queue = &core.retry;
    if !queue.enabled() {
        return Outcome::Transient;
    }
    let refuse = |reason: &str| {
        METRICS.retry_refused.with_label_values(&[reason]).inc();
        tracing::warn!(
            reason,
            "failed delivery not queued for retry: answered 'wait'"
        );
        Outcome::Transient
    };
    if queue.depth.load(Ordering::Relaxed) >= queue.max_queued {
        return refuse("queue_full");
    }
    let now = now_ms();
    let due_at = now.saturating_add(ms(retry_delay(1, queue.max_backoff, first.retry_after)));
    // The notification's own time to live, where it has one, cuts the kind's.
    let ttl = match notification.ttl_secs {
        Some(own) => queue
            .ttl(notification.kind)
            .min(Duration::from_secs(u64::from(own))),
        None => queue.ttl(notification.kind),
    };
    let expires_at = now.saturating_add(ms(ttl));
    if due_at >= expires_at {
        // The provider asks for longer than the notification is worth: the server may retry.
        return refuse("expired");
    }
    let serialized = match serde_json::to_string(&kept(notification)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot serialise a notification for the retry queue: {e}");
            return refuse("store");
        }
    };
    if serialized.len() > MAX_QUEUED_BYTES {
        return refuse("too_large");
    }
    let new = NewQueued {
        target: match target {
            Target::Registered(reg) => QueuedFor::Registration(reg.id),
            Target::Named(device) => QueuedFor::Device(device.clone()),
        },
        kind: notification.kind.label(),
        notification: serialized,
        replaces_same_kind: matches!(notification.kind, Kind::Background | Kind::Clear),
        now_ms: now,
        due_at_ms: due_at,
        expires_at_ms: expires_at,
        error: first.reason.clone(),
    };
    match tokio::time::timeout_at(deadline, core.store.enqueue(new, queue.max_per_device)).await {
        Ok(Ok(Enqueued::Queued)) => {
            queue.depth.fetch_add(1, Ordering::Relaxed);
            METRICS
                .retry_queued
                .with_label_values(&[notification.kind.label()])
                .inc();
            tracing::info!(
                retry_in_ms = due_at - now,
                "delivery failed for now: queued for retry"
            );
            Outcome::Queued
        }
        Ok(Ok(Enqueued::DeviceFull)) => refuse("device_full"),
        Ok(Err(e)) => {
            tracing::warn!("the retry queue cannot be written: {e}");
            refuse("store")
        }
        Err(_) => refuse("store"),
    }
}

/// Starts the worker that retries queued notifications until `stop` turns true; it then lets
/// the attempts in progress finish (each is bounded by `retry.attempt_timeout_secs`).
pub fn spawn(core: Arc<Core>, stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(run(core, stop))
}

async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    if !core.retry.enabled() {
        return;
    }
    let permits = Arc::new(Semaphore::new(core.retry.concurrency));
    let mut next_count = Instant::now();
    while !*stop.borrow() {
        if Instant::now() >= next_count {
            count(&core).await;
            next_count = Instant::now() + COUNT_EVERY;
        }
        let free = permits.available_permits().min(CLAIM_BATCH);
        let claimed = if free == 0 {
            Vec::new()
        } else {
            match claim(&core, free).await {
                Some(rows) => rows,
                None => {
                    // The database is away: look again in a while, not four times a second.
                    tokio::select! {
                        _ = tokio::time::sleep(STORE_TIMEOUT) => {}
                        gone = stop.changed() => if gone.is_err() { break },
                    }
                    continue;
                }
            }
        };
        let drained = claimed.len() < free;
        for row in claimed {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            tokio::spawn(retry_one(core.clone(), row, permit));
        }
        if drained || free == 0 {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                // Nobody can tell us to stop any more: stop now.
                gone = stop.changed() => if gone.is_err() { break },
            }
        }
    }
    let all = u32::try_from(core.retry.concurrency).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(
        core.retry.attempt_timeout + LEASE_MARGIN,
        permits.acquire_many(all),
    )
    .await;
}

/// Due rows, leased to this instance for one attempt each; `None` when the store failed.
async fn claim(core: &Core, limit: usize) -> Option<Vec<Queued>> {
    let now = now_ms();
    let lease_until = now.saturating_add(ms(core.retry.attempt_timeout + LEASE_MARGIN));
    let limit = u32::try_from(limit).unwrap_or(u32::MAX);
    match tokio::time::timeout(STORE_TIMEOUT, core.store.claim_due(now, lease_until, limit)).await {
        Ok(Ok(rows)) => Some(rows),
        Ok(Err(e)) => {
            tracing::warn!("cannot read the retry queue: {e}");
            None
        }
        Err(_) => {
            tracing::warn!("the retry queue did not answer in time");
            None
        }
    }
}

/// Refreshes the queue's size: the metrics, and the figure the total bound is checked against.
async fn count(core: &Core) {
    if let Ok(Ok(depth)) = tokio::time::timeout(STORE_TIMEOUT, core.store.queue_depth()).await {
        core.retry.depth.store(depth.rows, Ordering::Relaxed);
        METRICS
            .retry_queue_depth
            .set(i64::try_from(depth.rows).unwrap_or(i64::MAX));
        let oldest = depth
            .oldest_enqueued_at_ms
            .map_or(0, |at| (now_ms() - at).max(0) / 1000);
        METRICS.retry_queue_oldest_seconds.set(oldest);
    }
}

/// One attempt of a claimed row, and what it does to the row.
async fn retry_one(core: Arc<Core>, row: Queued, _permit: OwnedSemaphorePermit) {
    let registration = match &row.target {
        QueuedFor::Registration(id) => Some(*id),
        QueuedFor::Device(_) => None,
    };
    let span = tracing::info_span!(
        "retry",
        queued = row.id,
        registration,
        attempt = row.attempts + 1
    );
    async {
        let notification: Notification = match serde_json::from_str(&row.notification) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!("queued notification is unreadable, dropped: {e}");
                finish(&core, row.id).await;
                return;
            }
        };
        if now_ms() >= row.expires_at_ms {
            expire(&core, &row, notification.kind).await;
            return;
        }
        let reg;
        let target = match &row.target {
            QueuedFor::Registration(id) => {
                reg = match core.store.find_by_id(*id).await {
                    Ok(Some(reg)) => reg,
                    // Unregistered meanwhile: the row goes with it (or just went).
                    Ok(None) => return finish(&core, row.id).await,
                    // The lease runs out and the row comes back.
                    Err(e) => return tracing::warn!("cannot read the registration: {e}"),
                };
                Target::Registered(&reg)
            }
            QueuedFor::Device(device) => Target::Named(device),
        };
        let send_by = Instant::now() + core.retry.attempt_timeout;
        let result = delivery::attempt(&core, target, &notification, send_by).await;
        let (label, failure) = match result {
            Ok(a) => match a.outcome {
                Outcome::Transient | Outcome::OurFault => {
                    (a.outcome.label(), Some((a.retry_after, a.reason)))
                }
                done => (done.label(), None),
            },
            Err(fault) => ("error", Some((None, fault.to_string()))),
        };
        METRICS
            .retry_attempts
            .with_label_values(&[target.provider().as_str(), label])
            .inc();
        match failure {
            None => {
                tracing::info!(outcome = label, "queued notification done");
                finish(&core, row.id).await;
            }
            Some((retry_after, reason)) => {
                reschedule(&core, &row, target, notification.kind, retry_after, &reason).await;
            }
        }
    }
    .instrument(span)
    .await;
}

async fn reschedule(
    core: &Core,
    row: &Queued,
    target: Target<'_>,
    kind: Kind,
    retry_after: Option<Duration>,
    reason: &str,
) {
    let failed = row.attempts.saturating_add(1);
    let due_at =
        now_ms().saturating_add(ms(retry_delay(failed, core.retry.max_backoff, retry_after)));
    if due_at >= row.expires_at_ms {
        return expire(core, row, kind).await;
    }
    tracing::debug!(provider = %target.provider(), %reason, "retry failed; trying again later");
    if let Err(e) = core.store.requeue(row.id, due_at, failed, reason).await {
        tracing::warn!(
            "cannot reschedule a queued notification (retried when its lease ends): {e}"
        );
    }
}

async fn expire(core: &Core, row: &Queued, kind: Kind) {
    METRICS
        .retry_expired
        .with_label_values(&[kind.label()])
        .inc();
    tracing::info!(
        kind = kind.label(),
        queued_for_secs = (now_ms() - row.enqueued_at_ms) / 1000,
        attempts = row.attempts,
        "queued notification expired undelivered"
    );
    finish(core, row.id).await;
}

async fn finish(core: &Core, id: i64) {
    if let Err(e) = core.store.dequeue(id).await {
        tracing::warn!("cannot remove a queued notification (it may be tried again): {e}");
    }
}
