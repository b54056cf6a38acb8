//! What the providers do the same way: loading an extra trusted CA, building an HTTP client,
//! turning a failed request into a verdict, showing the cause behind an error and an excerpt of
//! an error answer, running a delivery in its span and logging its verdict, reading
//! `Retry-After` and holding back sends after a service asked to slow down.
//!
//! Kept in one place so the providers agree on what is transient (a timeout, a lost connection),
//! what is pushgate's own fault (a request it could not even build), and how long a peer may make
//! pushgate wait: a `Retry-After` is a number from outside, so it is read once, here, and capped.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use tracing::Instrument as _;

use crate::Verdict;

static FD_EXHAUSTED: AtomicU64 = AtomicU64::new(0);

/// Provider requests that failed because the process had no file descriptor left
/// (EMFILE/ENFILE) since start. This crate knows nothing of Prometheus; the front exposes it.
pub fn fd_exhausted_total() -> u64 {
    FD_EXHAUSTED.load(Ordering::Relaxed)
}

/// Why a `ca_file` (an extra trusted CA for a test server or a private relay) cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a PEM certificate bundle: {reason}")]
    NotPem { path: String, reason: String },
    #[error("{path} holds no certificate")]
    Empty { path: String },
}

/// The certificates of the PEM bundle at `path`; a file without any is refused, so a wrong
/// path or file is found at start rather than as a TLS failure at the first delivery.
pub(crate) fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaFileError> {
    let shown = || path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: shown(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaFileError::NotPem {
            path: shown(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaFileError::Empty { path: shown() });
    }
    Ok(certs)
}

/// The extra roots of an HTTP provider's client: those of `ca_file`, none without one.
pub(crate) fn extra_roots(
    ca_file: Option<&Path>,
) -> Result<Vec<reqwest::Certificate>, CaFileError> {
    let Some(path) = ca_file else {
        return Ok(Vec::new());
    };
    load_ca_file(path)?
        .iter()
        .map(|der| {
            reqwest::Certificate::from_der(der).map_err(|e| CaFileError::NotPem {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        })
        .collect()
}

/// What every provider's HTTP client has: no redirects followed and no proxy from the
/// environment (a delivery goes where it was addressed, or nowhere), `connect_timeout`,
/// `extra_roots` on top of the system's, and pushgate's user agent.
pub(crate) fn client_builder(
    connect_timeout: Duration,
    extra_roots: &[reqwest::Certificate],
) -> reqwest::ClientBuilder {
    // reqwest is built without a rustls provider of its own; whoever installs first wins.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(connect_timeout)
        .user_agent(concat!("pushgate/", env!("CARGO_PKG_VERSION")));
    if extra_roots.is_empty() {
        builder
    } else {
        builder.tls_certs_merge(extra_roots.iter().cloned())
    }
}

/// [`client_builder`] for a service spoken to over HTTP/2 only, on TLS (ALPN `h2`, so
/// concurrent deliveries share one connection instead of opening one each). Idle connections are
/// kept and, with a `ping_interval`, PINGed so a connection that died silently is noticed
/// before a send.
pub(crate) fn h2_client_builder(
    connect_timeout: Duration,
    extra_roots: &[reqwest::Certificate],
    ping_interval: Option<Duration>,
) -> reqwest::ClientBuilder {
    let builder = client_builder(connect_timeout, extra_roots)
        .http2_prior_knowledge()
        .https_only(true)
        .pool_idle_timeout(None);
    match ping_interval {
        Some(interval) => builder
            .http2_keep_alive_interval(interval)
            .http2_keep_alive_timeout(connect_timeout)
            .http2_keep_alive_while_idle(true),
        None => builder,
    }
}

/// Whether an I/O error somewhere in `err`'s chain is EMFILE or ENFILE.
fn out_of_descriptors(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Counts a failed request whose cause is EMFILE or ENFILE (see [`fd_exhausted_total`]).
pub(crate) fn count_if_out_of_descriptors(err: &(dyn std::error::Error + 'static)) {
    if out_of_descriptors(err) {
        FD_EXHAUSTED.fetch_add(1, Ordering::Relaxed);
    }
}

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
    count_if_out_of_descriptors(&err);
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

/// When a delivery that starts now and may take `timeout` must be over. A timeout beyond the
/// clock's range (none the configuration allows) means at once rather than a panic.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or(now)
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

/// The start of a response body, at most `max` bytes: enough for a reason, and reading it lets
/// the connection be reused, while a flood is never buffered.
pub(crate) async fn read_capped(mut response: reqwest::Response, max: usize) -> Vec<u8> {
    let mut buf = Vec::new();
    while buf.len() < max {
        match response.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    buf.truncate(max);
    buf
}

/// A printable excerpt of an error answer, at most `max_chars` characters: `pick` reads what a
/// JSON body says (empty when it says nothing), any other body is shown as text.
pub(crate) fn error_reason(
    body: &[u8],
    max_chars: usize,
    pick: impl FnOnce(&serde_json::Value) -> String,
) -> String {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => printable(&pick(&v), max_chars),
        Err(_) => excerpt(body, max_chars),
    }
}

/// The start of `body` as text, at most `max_chars` printable characters.
pub(crate) fn excerpt(body: &[u8], max_chars: usize) -> String {
    printable(&String::from_utf8_lossy(body), max_chars)
}

/// `text` with control characters blanked, cut to `max` characters and trimmed: safe for logs.
pub(crate) fn printable(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The span of one delivery to a device token: the fields every such provider records (`status`
/// and `verdict` later), then the provider's own `extra` fields, recorded later too. The token
/// shows only its prefix (`DeviceToken`'s `Debug`). A debug span: one per push, and at the
/// default level spans and lines per push were a third of pushgate's CPU (docs/performance.md).
macro_rules! delivery_span {
    ($name:literal, $provider:expr, $device:expr, $notification:expr $(, $extra:ident)*) => {
        tracing::debug_span!(
            $name,
            provider = %$provider,
            kind = $notification.kind.label(),
            token = ?$device.token,
            status = tracing::field::Empty,
            verdict = tracing::field::Empty,
            $($extra = tracing::field::Empty,)*
        )
    };
}
pub(crate) use delivery_span;

/// Runs one delivery inside its `span` (which declares a `verdict` field) and ends it with one
/// log line `what` there.
pub(crate) async fn in_delivery_span(
    span: tracing::Span,
    what: &str,
    delivery: impl Future<Output = Verdict>,
) -> Verdict {
    async {
        let verdict = delivery.await;
        tracing::Span::current().record("verdict", verdict.label());
        log_verdict(what, &verdict);
        verdict
    }
    .instrument(span)
    .await
}

/// One debug line per delivery, inside the provider's delivery span, with what only the
/// provider knows (status, ids). What operators need at the default level the core logs: dead
/// tokens, and failures rate-limited with counts (`core/delivery.rs`).
fn log_verdict(what: &str, verdict: &Verdict) {
    match verdict {
        Verdict::Sent => tracing::debug!(verdict = verdict.label(), "{what}"),
        Verdict::DeadToken { reason }
        | Verdict::Transient { reason, .. }
        | Verdict::OurFault { reason } => {
            tracing::debug!(verdict = verdict.label(), reason, "{what}")
        }
    }
}

/// The longest pushgate honours a `Retry-After`: a service that asks for more (or a relay that
/// says "in a billion seconds") is tried again after an hour rather than never.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A `Retry-After` value (RFC 9110 §10.2.3): delta-seconds or an HTTP date (IMF-fixdate and the
/// obsolete forms httpdate reads). A date in the past is zero, anything longer is
/// [`MAX_RETRY_AFTER`] (also digits too many for a u64), anything else (negative, fractional,
/// garbage) is `None`.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// The response's `Retry-After`, read by [`parse_retry_after`].
pub(crate) fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

/// Exponential backoff with jitter, per key: after the n-th failure in a row a key is held back
/// for `base · 2^(n−1)` (at most `max`) shortened by up to 20 %, or for as long as the service
/// asked (`Retry-After`, at most [`MAX_RETRY_AFTER`]) if that is longer. A success clears the
/// key. Holding back answers the caller at once instead of adding load to a service that said it
/// is overloaded.
pub(crate) struct Backoff<K> {
    base: Duration,
    max: Duration,
    state: Mutex<HashMap<K, (Instant, u32)>>,
}

/// Above this many keys, keys whose hold has ended are forgotten.
const BACKOFF_PRUNE_ABOVE: usize = 10_000;

impl<K: Hash + Eq + Clone> Backoff<K> {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Holds a key only as long as the service asked (`Retry-After`), never on its own.
    pub(crate) fn as_asked() -> Self {
        Self::new(Duration::ZERO, Duration::ZERO)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, (Instant, u32)>> {
        // A poisoned lock only means a panic elsewhere mid-update; the map is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How much longer `key` is held back, if it is.
    pub(crate) fn blocked<Q>(&self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let until = self.lock().get(key).map(|(until, _)| *until)?;
        let left = until.saturating_duration_since(now);
        (!left.is_zero()).then_some(left)
    }

    /// Records a failure; returns how long `key` is now held back.
    pub(crate) fn failed(&self, key: K, asked: Option<Duration>, now: Instant) -> Duration {
        let mut state = self.lock();
        if state.len() >= BACKOFF_PRUNE_ABOVE {
            state.retain(|_, (until, _)| *until > now);
        }
        let failures = state.get(&key).map_or(0, |(_, n)| *n).saturating_add(1);
        let exponential = self
            .base
            .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
            .min(self.max);
        let asked = asked.unwrap_or_default().min(MAX_RETRY_AFTER);
        let hold = jitter(exponential).max(asked);
        match now.checked_add(hold) {
            Some(until) => {
                state.insert(key, (until, failures));
                hold
            }
            // Only a clock at the end of its range gets here: better no hold than a panic.
            None => Duration::ZERO,
        }
    }

    pub(crate) fn succeeded<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().remove(key);
    }
}

/// `d` shortened by up to 20 %, so that many held-back senders do not return in step (and a
/// capped hold stays within its cap).
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh RandomState is randomly keyed: enough randomness for spreading retries.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.8 + (r % 201) as f64 / 1000.0;
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(d)
}

/// What a provider's answer asks pushgate to hold back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hold {
    /// The device token the answer was about.
    Device,
    /// Every send through the provider.
    Service,
}

/// What a provider's last answer to a delivery means for later sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answered {
    /// No answer, or one that neither clears nor starts a hold.
    Nothing,
    /// Delivered: whatever held the device or the service back is over.
    Delivered,
    Hold(Hold),
}

/// The holds of one provider: per device token and for the whole service.
pub(crate) struct Holds {
    /// Names the service in reasons ("FCM", "APNs").
    service_name: &'static str,
    devices: Backoff<String>,
    service: Backoff<()>,
}

impl Holds {
    pub(crate) fn new(
        service_name: &'static str,
        devices: Backoff<String>,
        service: Backoff<()>,
    ) -> Self {
        Holds {
            service_name,
            devices,
            service,
        }
    }

    /// A transient verdict when the service or `token` is held back at `now`.
    pub(crate) fn check(&self, token: &str, now: Instant) -> Option<Verdict> {
        let left = self
            .service
            .blocked(&(), now)
            .or_else(|| self.devices.blocked(token, now))?;
        Some(held_back(self.service_name, left))
    }

    /// Starts or clears holds after `answered` to a delivery to `token`; `asked` is how long the
    /// answer asked to wait (its `Retry-After`, or the provider's floor).
    pub(crate) fn record(
        &self,
        token: &str,
        answered: Answered,
        asked: Option<Duration>,
        now: Instant,
    ) {
        match answered {
            Answered::Nothing => {}
            Answered::Delivered => {
                self.service.succeeded(&());
                self.devices.succeeded(token);
            }
            Answered::Hold(Hold::Device) => {
                self.devices.failed(token.to_owned(), asked, now);
            }
            Answered::Hold(Hold::Service) => {
                self.service.failed((), asked, now);
            }
        }
    }
}

/// The verdict for a send that was not made because `service` asked to slow down.
pub(crate) fn held_back(service: &str, left: Duration) -> Verdict {
    Verdict::Transient {
        retry_after: Some(left),
        reason: format!(
            "holding back after {service} asked to slow down ({} s left)",
            left.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = MAX_RETRY_AFTER;

    /// How hyper and reqwest wrap the socket error: an outer error whose source is the io::Error.
    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Wrapped(#[source] std::io::Error);

    #[test]
    fn ca_files_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            load_ca_file(&missing),
            Err(CaFileError::Read { .. })
        ));
        assert!(matches!(
            load_ca_file(&write("text.pem", "hello")),
            Err(CaFileError::Empty { .. })
        ));
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = load_ca_file(&write("broken.pem", broken)).unwrap_err();
        assert!(matches!(err, CaFileError::NotPem { .. }), "{err}");
        assert!(err.to_string().contains("broken.pem"), "{err}");

        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let bundle = write("ca.pem", &format!("{}{}", ca.cert.pem(), ca.cert.pem()));
        assert_eq!(load_ca_file(&bundle).unwrap().len(), 2);
        assert_eq!(extra_roots(Some(&bundle)).unwrap().len(), 2);
        assert!(extra_roots(None).unwrap().is_empty());
    }

    #[test]
    fn error_reasons_are_printable_and_cut() {
        let reason = |body: &[u8]| {
            error_reason(body, 10, |v| {
                v.get("reason")
                    .and_then(|r| r.as_str())
                    .unwrap_or_default()
                    .to_owned()
            })
        };
        assert_eq!(reason(br#"{"reason":"BadDeviceToken"}"#), "BadDeviceT");
        assert_eq!(reason(br#"{"reason":"a\nb"}"#), "a b");
        assert_eq!(reason(br#"{"other":1}"#), "", "JSON that says nothing");
        assert_eq!(reason(b"\x00<html>\xff"), "<html>\u{fffd}");
        assert_eq!(excerpt("ünïcödé text".as_bytes(), 7), "ünïcödé");
    }

    #[test]
    fn out_of_descriptors_is_found_anywhere_in_the_chain() {
        let emfile = Wrapped(std::io::Error::from_raw_os_error(libc::EMFILE));
        assert!(out_of_descriptors(&emfile));
        assert!(out_of_descriptors(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        let refused = Wrapped(std::io::Error::from_raw_os_error(libc::ECONNREFUSED));
        assert!(!out_of_descriptors(&refused));
    }

    #[test]
    fn backoff_doubles_with_jitter_honours_retry_after_and_resets() {
        let b = Backoff::new(Duration::from_secs(60), Duration::from_secs(3600));
        let t0 = Instant::now();
        assert_eq!(b.blocked(&"tok", t0), None);
        let first = b.failed("tok", None, t0);
        assert!((48..=60).contains(&first.as_secs()), "{first:?}");
        assert!(b.blocked(&"tok", t0).is_some());
        assert_eq!(b.blocked(&"other", t0), None, "keys are independent");
        let second = b.failed("tok", None, t0);
        assert!((96..=120).contains(&second.as_secs()), "{second:?}");
        let asked = b.failed("tok", Some(Duration::from_secs(1800)), t0);
        assert_eq!(
            asked,
            Duration::from_secs(1800),
            "Retry-After beyond the backoff wins"
        );
        assert_eq!(b.blocked(&"tok", t0 + Duration::from_secs(1801)), None);
        b.succeeded(&"tok");
        let again = b.failed("tok", None, t0);
        assert!(
            (48..=60).contains(&again.as_secs()),
            "a success starts over: {again:?}"
        );
    }

    #[test]
    fn backoff_is_capped_and_so_is_what_a_service_asks_for() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let t0 = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..100 {
            last = b.failed((), None, t0);
        }
        assert!(last <= Duration::from_secs(60), "{last:?}");
        assert_eq!(b.failed((), Some(Duration::MAX), t0), HOUR);
        assert_eq!(b.blocked(&(), t0), Some(HOUR));
    }

    #[test]
    fn as_asked_holds_only_when_asked() {
        let b = Backoff::as_asked();
        let t0 = Instant::now();
        assert_eq!(b.failed("host", None, t0), Duration::ZERO);
        assert_eq!(b.blocked("host", t0), None);
        assert_eq!(
            b.failed("host", Some(Duration::from_secs(5)), t0),
            Duration::from_secs(5)
        );
        assert_eq!(b.blocked("host", t0), Some(Duration::from_secs(5)));
        assert_eq!(b.blocked("other", t0), None);
    }

    #[test]
    fn holds_name_the_service_and_clear_on_success() {
        let h = Holds::new("FCM", Backoff::as_asked(), Backoff::as_asked());
        let t0 = Instant::now();
        let (device, service) = (Answered::Hold(Hold::Device), Answered::Hold(Hold::Service));
        h.record("a", device, Some(Duration::from_secs(9)), t0);
        assert!(matches!(
            h.check("a", t0),
            Some(Verdict::Transient { retry_after: Some(d), reason })
                if d == Duration::from_secs(9) && reason.contains("FCM")
        ));
        assert_eq!(h.check("b", t0), None, "only that device");
        h.record("b", service, Some(Duration::from_secs(3)), t0);
        assert!(h.check("c", t0).is_some(), "every device");
        h.record("b", Answered::Nothing, None, t0);
        assert!(
            h.check("c", t0).is_some(),
            "an answer that says nothing changes nothing"
        );
        h.record("a", Answered::Delivered, None, t0);
        assert_eq!(h.check("a", t0), None);
        assert_eq!(h.check("c", t0), None);
    }

    /// 2030-01-01T00:00:00Z.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_456_000)
    }

    #[test]
    fn retry_after_reads_seconds_clamped() {
        let at = |v| parse_retry_after(v, now());
        assert_eq!(at("120"), Some(Duration::from_secs(120)));
        assert_eq!(at("0"), Some(Duration::ZERO));
        assert_eq!(at(" \t120 "), Some(Duration::from_secs(120)), "whitespace");
        assert_eq!(at("3600"), Some(HOUR));
        for huge in [
            "3601",
            "1000000000",
            "18446744073709551615",
            "99999999999999999999999999",
        ] {
            assert_eq!(at(huge), Some(HOUR), "{huge}");
        }
    }

    #[test]
    fn retry_after_reads_http_dates() {
        let at = |v| parse_retry_after(v, now());
        assert_eq!(
            at("Tue, 01 Jan 2030 00:02:00 GMT"),
            Some(Duration::from_secs(120))
        );
        // The obsolete RFC 850 and asctime forms, as httpdate reads them.
        assert_eq!(
            at("Tuesday, 01-Jan-30 00:02:00 GMT"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            at("Tue Jan  1 00:02:00 2030"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            at("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(HOUR),
            "far future"
        );
        assert_eq!(
            at("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO),
            "a past date is now"
        );
    }

    #[test]
    fn retry_after_refuses_garbage() {
        for bad in [
            "",
            "   ",
            "soon",
            "-5",
            "+5",
            "1.5",
            "12 34",
            "0x10",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now()), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_comes_from_the_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(http::header::RETRY_AFTER, "1000000000".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(HOUR));
        headers.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
