//! The Matrix push gateway front: `POST /_matrix/push/v1/notify` from a homeserver, delivered
//! through the core to the pushers' apps, and the answer the homeserver acts on.
//!
//! The HTTP front (`fronts/http`) serves the routes and reads the body; this module parses the
//! protocol and formats its replies. A pusher is not a registration: the homeserver keeps it and
//! names its app and pushkey in every request, so each device is a [`Target::Named`] for the
//! core, with the same slots, retry queue and verdicts as an XMPP publish.
//!
//! The answer (spec, and what Synapse does with it, ../shared/reference/other-fronts.md §4):
//! - 200 `{"rejected": [...]}`: the pushkeys Synapse must delete (a dead token, now or found by
//!   a retry within the last day, an app id no configured app matches, a pushkey that cannot be
//!   a token of the app's provider, a `default_payload` that is not an object or is larger than
//!   any provider's payload). An event already pushed to a pushkey in the last two
//!   minutes is not pushed again (a homeserver that missed our answer sends it again). A device
//!   whose delivery failed for now but is in the retry queue counts as accepted: Synapse holds
//!   every later push for a pusher behind a failing one and retries it for up to an hour, so
//!   pushgate answers 200 and owns the retry.
//! - 502 `{"errcode": "M_UNKNOWN", ...}` when a device's notification could neither be delivered
//!   nor queued (queue full, database away) or the provider refuses pushgate itself (its
//!   credentials or VAPID key): never 200 with a silent drop, and the homeserver keeps the
//!   notification until the operator has fixed what is wrong. A push that cannot be built is
//!   not among these: `notify.rs` bounds every request to what every provider carries.
//! - 400 with `M_NOT_JSON`, `M_MISSING_PARAM` or `M_BAD_JSON` for a malformed body; the HTTP
//!   front adds 413 for bodies over 512 KiB and `M_UNRECOGNIZED` for unknown paths and methods.

pub mod apps;
pub mod notify;

use std::sync::Arc;
use std::time::Duration;

use pushgate_providers::{Device, Kind, Notification};
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::MatrixConfig;
use crate::core::Core;
use crate::core::delivery::{self, Outcome};
use crate::core::recent::Recent;
use crate::core::target::Target;
use crate::metrics::METRICS;
pub use apps::Apps;

/// A homeserver waits 60 s for an answer; ours comes within this.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// A homeserver that did not see our answer sends the same event again: within this long, an
/// event already pushed to a pushkey is not pushed again.
const DUPLICATES_WITHIN: Duration = Duration::from_secs(120);
const PUSHED_KEPT: usize = 100_000;

/// An answer: HTTP status and JSON body.
pub type Answer = (u16, Value);

fn error(status: u16, errcode: &str, error: &str) -> Answer {
    (status, json!({ "errcode": errcode, "error": error }))
}

/// `GET /_matrix/push/v1/notify`: how UnifiedPush distributors and Matrix clients find out
/// that this endpoint is a Matrix gateway.
pub fn discovery() -> Answer {
    (200, json!({ "unifiedpush": { "gateway": "matrix" } }))
}

/// The answer for an unknown path or method under `/_matrix`.
pub fn unrecognized(status: u16) -> Answer {
    error(status, "M_UNRECOGNIZED", "Unrecognized request")
}

/// The front's state: the configured apps, and which events went to which pushkeys lately.
pub struct Matrix {
    apps: Apps,
    pushed: Recent,
}

impl Default for Matrix {
    fn default() -> Self {
        Matrix::new(&MatrixConfig::default())
    }
}

impl Matrix {
    pub fn new(config: &MatrixConfig) -> Self {
        Matrix {
            apps: Apps::from_config(config),
            pushed: Recent::new(PUSHED_KEPT, DUPLICATES_WITHIN),
        }
    }

    /// Handles one notify request body, to be answered by `deadline`.
    pub async fn notify(&self, core: &Arc<Core>, body: &[u8], deadline: Instant) -> Answer {
        let started = Instant::now();
        let answer = self.answer(core, body, deadline).await;
        METRICS
            .matrix_notify_seconds
            .with_label_values(&[&answer.0.to_string()])
            .observe(started.elapsed().as_secs_f64());
        answer
    }

    async fn answer(&self, core: &Arc<Core>, body: &[u8], deadline: Instant) -> Answer {
        let request = match notify::parse(body) {
            Ok(r) => r,
            Err(bad) => return error(400, bad.errcode, &bad.error),
        };
        let body = request.notification;
        let Some(notification) = body.notification() else {
            // Neither an event nor counts: nothing to tell any device.
            return (200, json!({ "rejected": [] }));
        };
        let mut rejected = Vec::new();
        let mut undelivered = 0;
        for device in &body.devices {
            let verdict = self
                .push(core, device, &body, &notification, deadline)
                .await;
            METRICS
                .matrix_devices
                .with_label_values(&[verdict.label()])
                .inc();
            match verdict {
                Verdict::Pushed | Verdict::Duplicate | Verdict::NotForThisApp => {}
                Verdict::Rejected(_) => rejected.push(device.pushkey.clone()),
                Verdict::Failed => undelivered += 1,
            }
        }
        if undelivered > 0 {
            return error(
                502,
                "M_UNKNOWN",
                "a notification could be neither delivered nor queued; try again later",
            );
        }
        (200, json!({ "rejected": rejected }))
    }

    /// Delivers `notification` to one device of the request.
    async fn push(
        &self,
        core: &Core,
        device: &notify::Device,
        body: &notify::Body,
        notification: &Notification,
        deadline: Instant,
    ) -> Verdict {
        let Some(app) = self.apps.find(&device.app_id) else {
            tracing::info!("no configured app matches the pusher's app id: pushkey rejected");
            return Verdict::Rejected("unknown_app");
        };
        let Some(token) = app.token(&device.pushkey) else {
            tracing::info!("the pushkey is no token of the app's provider: rejected");
            return Verdict::Rejected("bad_pushkey");
        };
        if core
            .dead_tokens
            .contains(&[app.provider.as_str(), token.as_str()])
        {
            return Verdict::Rejected("dead_token");
        }
        let event = body.event_id.as_deref().unwrap_or_default();
        let pushed = [device.app_id.as_str(), device.pushkey.as_str(), event];
        if !event.is_empty() && self.pushed.contains(&pushed) {
            tracing::info!("event already pushed to this pushkey: not again");
            return Verdict::Duplicate;
        }
        let mut notification = notification.clone();
        if notification.kind == Kind::Alert && device.has_tweaks(&app.call_tweaks) {
            notification.kind = Kind::Voip;
        }
        if app.voip && notification.kind != Kind::Voip {
            // A PushKit token takes calls only; the app's other pusher gets the rest.
            return Verdict::NotForThisApp;
        }
        let data = match body.app_data(device, &app.default_payload) {
            Ok(data) => data,
            Err(bad) => {
                tracing::info!(
                    ?bad,
                    "the pusher's default_payload cannot be sent: pushkey rejected"
                );
                return Verdict::Rejected("bad_default_payload");
            }
        };
        notification.data = data;
        notification.badge = body.badge().filter(|_| app.send_badge_counts);
        let target = Device {
            provider: app.provider.clone(),
            // The provider sends calls to the second token as VoIP pushes.
            second_token: app.voip.then(|| token.clone()),
            token,
            webpush_keys: None,
        };
        // What a registration is checked for (an APNs token is hex, a WebPush endpoint a URL
        // the endpoint policy allows), checked here for every request: the pushkey comes from
        // whoever sends the request.
        if let Some((_, provider)) = core.providers.get(app.provider.as_str())
            && provider.validate(&target).is_err()
        {
            tracing::info!("the pushkey is no valid token for the app's provider: rejected");
            return Verdict::Rejected("bad_pushkey");
        }
        let span = tracing::info_span!("deliver", provider = %app.provider);
        let outcome = delivery::deliver(core, Target::Named(&target), notification, deadline)
            .instrument(span)
            .await;
        match outcome {
            Ok(Outcome::Delivered | Outcome::Coalesced | Outcome::Queued) => {
                if !event.is_empty() {
                    self.pushed.remember(&pushed);
                }
                Verdict::Pushed
            }
            Ok(Outcome::DeadToken) => Verdict::Rejected("dead_token"),
            Ok(Outcome::Transient | Outcome::OurFault) | Err(_) => Verdict::Failed,
        }
    }
}

/// What became of one device of a request.
enum Verdict {
    /// Delivered, coalesced or queued: pushgate answers for it.
    Pushed,
    /// This event went to this pushkey moments ago.
    Duplicate,
    /// Not a call, and the pushkey takes calls only.
    NotForThisApp,
    /// Listed in `rejected`, for the reason given.
    Rejected(&'static str),
    /// Neither delivered nor queued: the request gets a 502.
    Failed,
}

impl Verdict {
    fn label(&self) -> &'static str {
        match self {
            Verdict::Pushed => "pushed",
            Verdict::Duplicate => "duplicate",
            Verdict::NotForThisApp => "not_for_app",
            Verdict::Rejected(why) => why,
            Verdict::Failed => "failed",
        }
    }
}
