//! The HTTP side of WebPush: the client every delivery goes through, and what a push service's
//! answer (or the lack of one) means.

use std::time::Duration;

use reqwest::StatusCode;

use super::config::WebPushConfig;
use super::policy::{PublicResolver, ResolveError};
use crate::Verdict;

/// Idle connections kept per push service host, and for how long.
const MAX_IDLE_PER_HOST: usize = 16;
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The client for every delivery. Names are resolved through [`PublicResolver`], and
/// [`crate::transport::client_builder`]'s "no redirects, no proxy" matters here: either would
/// sidestep the endpoint policy.
pub(super) fn build(
    config: &WebPushConfig,
    request_timeout: Duration,
) -> Result<reqwest::Client, reqwest::Error> {
    crate::transport::client_builder(request_timeout, &[])
        .https_only(!config.allow_http)
        .dns_resolver(PublicResolver {
            allow_private_addresses: config.allow_private_addresses,
        })
        // Connections a slow or stalled push service leaves behind are not kept forever:
        // at most a few idle ones per host, closed after a minute.
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .pool_idle_timeout(IDLE_CONNECTION_TIMEOUT)
        .build()
}

/// How much of an error response is kept for the verdict's reason.
const MAX_RESPONSE_EXCERPT_CHARS: usize = 200;

/// How much of a response body is read at all (so the connection can be reused).
const MAX_RESPONSE_READ_BYTES: usize = 8 * 1024;

/// How a push goes to its endpoint: RFC 8291-encrypted to a subscription's keys, or as plain
/// JSON to a UnifiedPush endpoint that takes it as it is (a Matrix gateway pushkey).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Form {
    Encrypted,
    Plain,
}

/// Sends one request and maps what comes of it onto a verdict; `timeout` is the request's bound,
/// for the reason.
pub(super) async fn send(
    request: reqwest::RequestBuilder,
    form: Form,
    timeout: Duration,
) -> Verdict {
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            tracing::Span::current().record("status", status.as_u16());
            let retry_after = crate::transport::retry_after(response.headers());
            let excerpt =
                excerpt_of(&crate::transport::read_capped(response, MAX_RESPONSE_READ_BYTES).await);
            classify_status(status, form, retry_after, &excerpt)
        }
        Err(e) => classify_error(e, timeout),
    }
}

/// Maps a push service's answer onto a verdict (RFC 8030, UnifiedPush SERV_1.2.0).
///
/// 401 and 403 to an encrypted push are about pushgate's VAPID key, which every subscription
/// shares: the device is not to blame. To a plain push there is no key to blame: a UnifiedPush
/// endpoint that answers 401–404 takes no more pushes (the UnifiedPush Matrix gateway rule,
/// common-proxies), and the device goes as with a 410.
pub(crate) fn classify_status(
    status: StatusCode,
    form: Form,
    retry_after: Option<Duration>,
    excerpt: &str,
) -> Verdict {
    let code = status.as_u16();
    let detail = if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    };
    match code {
        200..=299 => Verdict::Sent,
        404 | 410 => Verdict::DeadToken {
            reason: format!("push service answered {code}: subscription is gone"),
        },
        401..=403 if form == Form::Plain => Verdict::DeadToken {
            reason: format!("the UnifiedPush endpoint answered {code}: it takes no more pushes"),
        },
        429 => Verdict::Transient {
            retry_after,
            reason: format!("push service answered 429 (too many requests){detail}"),
        },
        500..=599 => Verdict::Transient {
            retry_after,
            reason: format!("push service answered {code}{detail}"),
        },
        300..=399 => Verdict::OurFault {
            reason: format!("push service answered {code} (redirects are not followed)"),
        },
        401 | 403 => Verdict::OurFault {
            reason: format!("push service answered {code}: VAPID authorization refused{detail}"),
        },
        413 => Verdict::OurFault {
            reason: format!("push service answered 413: payload too large{detail}"),
        },
        _ => Verdict::OurFault {
            reason: format!("push service answered {code}{detail}"),
        },
    }
}

/// Maps a failed request onto a verdict. reqwest errors carry the URL, which is stripped.
fn classify_error(err: reqwest::Error, timeout: Duration) -> Verdict {
    let err = err.without_url();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(resolve) = e.downcast_ref::<ResolveError>() {
            // A name that leads only inside is as dead as a 410: the registration goes, and the
            // server is told so, instead of a `wait` for every publish forever. Lookup trouble
            // may pass.
            return match resolve {
                ResolveError::NonPublic { .. } => Verdict::DeadToken {
                    reason: resolve.to_string(),
                },
                ResolveError::NoAddress { .. } | ResolveError::Lookup { .. } => {
                    Verdict::Transient {
                        retry_after: None,
                        reason: resolve.to_string(),
                    }
                }
            };
        }
        source = e.source();
    }
    crate::transport::classify_request_error(err, timeout, "the push service")
}

/// A short, printable start of the response body, for the verdict's reason; reading it also lets
/// the connection be reused.
pub(crate) fn excerpt_of(body: &[u8]) -> String {
    crate::transport::excerpt(body, MAX_RESPONSE_EXCERPT_CHARS)
}
