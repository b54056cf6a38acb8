//! What every HTTP-based provider does the same way: turning a failed request into a verdict,
//! showing the cause behind an error, and logging the verdict of a delivery.
//!
//! Kept in one place so the providers agree on what is transient (a timeout, a lost connection)
//! and what is pushgate's own fault (a request it could not even build).

use std::time::Duration;

use crate::Verdict;

/// A failure of the connection rather than of this request: another connection may work.
pub(crate) fn is_connection_error(err: &reqwest::Error) -> bool {
    !err.is_timeout() && !err.is_builder() && (err.is_connect() || err.is_request())
}

/// Maps a request that got no HTTP answer onto a verdict. reqwest errors carry the URL, which
/// can hold a token or a capability URL, so it is stripped. `service` names the peer in the
/// reason ("APNs", "FCM", "the push service").
pub(crate) fn classify_request_error(
    err: reqwest::Error,
    timeout: Duration,
    service: &str,
) -> Verdict {
    let err = err.without_url();
    if err.is_timeout() {
        return Verdict::Transient {
            retry_after: None,
            reason: format!("no answer from {service} within {} s", timeout.as_secs()),
        };
    }
    if err.is_builder() {
        return Verdict::OurFault {
            reason: format!(
                "cannot build the request to {service}: {}",
                error_chain(&err)
            ),
        };
    }
    let what = if err.is_connect() {
        "cannot connect to"
    } else {
        "request failed to"
    };
    Verdict::Transient {
        retry_after: None,
        reason: format!("{what} {service}: {}", error_chain(&err)),
    }
}

/// `err: cause: cause…`, so the underlying TLS or I/O error is visible.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

/// One log line per delivery, inside the provider's delivery span: our own faults are warnings,
/// everything else is the ordinary course of pushing.
pub(crate) fn log_verdict(what: &str, verdict: &Verdict) {
    match verdict {
        Verdict::Sent => tracing::info!(verdict = verdict.label(), "{what}"),
        Verdict::DeadToken { reason } | Verdict::Transient { reason, .. } => {
            tracing::info!(verdict = verdict.label(), reason, "{what}")
        }
        Verdict::OurFault { reason } => {
            tracing::warn!(verdict = verdict.label(), reason, "{what}")
        }
    }
}
