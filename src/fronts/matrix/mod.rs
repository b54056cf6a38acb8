//! The Matrix push gateway front: `POST /_matrix/push/v1/notify` from a homeserver, delivered
//! through the core to the pushers' apps, and the answer the homeserver acts on.
//!
//! The HTTP front (`fronts/http`) serves the routes and reads the body; this module parses the
//! protocol and formats its replies. A pusher is not a registration: the homeserver keeps it and
//! names its app and pushkey in every request, so each device is a [`Target::Named`] for the
//! core, with the same slots, retry queue and verdicts as an XMPP publish.
//!
//! The answer (spec, and what Synapse does with it, ../shared/reference/other-fronts.md §4):
//! - 200 `{"rejected": [...]}`: the pushkeys Synapse must delete (a dead token, an app id no
//!   configured app matches, a pushkey that cannot be a token of the app's provider). A device
//!   whose delivery failed for now but is in the retry queue counts as accepted: Synapse holds
//!   every later push for a pusher behind a failing one and retries it for up to an hour, so
//!   pushgate answers 200 and owns the retry.
//! - 502 `{"errcode": "M_UNKNOWN", ...}` when a device's notification could neither be delivered
//!   nor queued (queue full, database away, our own fault): never 200 with a silent drop.
//! - 400 with `M_NOT_JSON`, `M_MISSING_PARAM` or `M_BAD_JSON` for a malformed body; the HTTP
//!   front adds 413 for bodies over 512 KiB and `M_UNRECOGNIZED` for unknown paths and methods.

pub mod apps;
pub mod notify;

use std::sync::Arc;
use std::time::Duration;

use pushgate_providers::Device;
use serde_json::{Value, json};
use tokio::time::Instant;
use tracing::Instrument;

use crate::core::Core;
use crate::core::delivery::{self, Outcome};
use crate::core::target::Target;
pub use apps::Apps;

/// A homeserver waits 60 s for an answer; ours comes within this.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(5);

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

/// Handles one notify request body, to be answered by `deadline`.
pub async fn notify(core: &Arc<Core>, apps: &Apps, body: &[u8], deadline: Instant) -> Answer {
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
        let Some(app) = apps.find(&device.app_id) else {
            tracing::info!("no configured app matches the pusher's app id: pushkey rejected");
            rejected.push(device.pushkey.clone());
            continue;
        };
        let Some(token) = app.token(&device.pushkey) else {
            tracing::info!("the pushkey is no token of the app's provider: rejected");
            rejected.push(device.pushkey.clone());
            continue;
        };
        let target = Device {
            provider: app.provider.clone(),
            token,
            second_token: None,
            webpush_keys: None,
        };
        let span = tracing::info_span!("deliver", provider = %app.provider);
        let outcome =
            delivery::deliver(core, Target::Named(&target), notification.clone(), deadline)
                .instrument(span)
                .await;
        match outcome {
            Ok(Outcome::Delivered | Outcome::Coalesced | Outcome::Queued) => {}
            Ok(Outcome::DeadToken) => rejected.push(device.pushkey.clone()),
            Ok(Outcome::Transient | Outcome::OurFault) | Err(_) => undelivered += 1,
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
