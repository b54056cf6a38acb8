//! Prometheus metrics, in one registry that `/metrics` and `get-statistics` expose.
//!
//! Names follow Prometheus conventions (`pushgate_…`, `_total`, `_seconds`). Labels are bounded:
//! provider ids come from the configuration, outcomes and kinds from closed sets; nothing that a
//! client chooses (JIDs, tokens, reasons) becomes a label. Registration happens once, at first use;
//! a name clash would be a programming error, caught by the tests.

use std::sync::LazyLock;

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Publishes answered, by outcome (`delivered`, `not_found`, `dead_token`, `transient`, …).
    pub publishes: IntCounterVec,
    /// Provider deliveries by provider id, kind and verdict.
    pub deliveries: IntCounterVec,
    /// How long providers took to answer, by provider id.
    pub delivery_seconds: HistogramVec,
    /// Registrations deleted because the provider reported the token dead, by provider id.
    pub dead_tokens_removed: IntCounterVec,
    /// Stored registrations by provider id (refreshed periodically).
    pub registrations: IntGaugeVec,
    /// Publish lookups by where they were answered (`cache`, `database`): for sizing
    /// `storage.cache_capacity`.
    pub registration_lookups: IntCounterVec,
    /// Ad-hoc commands by node and outcome.
    pub commands: IntCounterVec,
    /// 1 while the component stream is up.
    pub xmpp_connected: IntGauge,
    /// Component reconnections after a lost stream.
    pub xmpp_reconnects: IntCounter,
    /// Stanzas answered or dropped without being handled, by reason: the limit they broke
    /// (`stanza_bytes`, `depth`, …), `in_flight` (every slot busy), `unparsable`, `deadline`.
    pub stanzas_refused: IntCounterVec,
    /// Deliveries not attempted because the provider or the endpoint's host had every slot
    /// taken and its queue full, by provider id and scope (`provider`, `host`).
    pub delivery_slots_full: IntCounterVec,
    /// Unix time at which each app's APNs certificate expires (absent for token keys).
    pub apns_certificate_expiry: IntGaugeVec,
    /// 1 while an app's certificate expires within the warning window (or has expired).
    pub apns_certificate_expiring: IntGaugeVec,
    /// 1 once an app's certificate has expired.
    pub apns_certificate_expired: IntGaugeVec,
    /// Times a descriptor could not be had (EMFILE/ENFILE), by where (`http_accept`, …).
    pub fd_exhausted: IntCounterVec,
    /// HTTP requests answered, by route template (never the raw path) and status code.
    pub http_requests: IntCounterVec,
    /// Open HTTP connections (at most `http.max_connections`).
    pub http_connections: IntGauge,
    /// HTTP connections the server closed before the client was done, by reason.
    pub http_connections_closed: IntCounterVec,
    /// Notifications in the retry queue, over every instance (refreshed every second).
    pub retry_queue_depth: IntGauge,
    /// Age of the oldest notification in the retry queue, in seconds (0 when empty).
    pub retry_queue_oldest_seconds: IntGauge,
    /// Notifications queued for retry after a failed delivery, by kind.
    pub retry_queued: IntCounterVec,
    /// Failed deliveries not queued (answered `wait`), by reason (`device_full`, `queue_full`,
    /// `store`, `expired`, `too_large`).
    pub retry_refused: IntCounterVec,
    /// Retry attempts by provider id and outcome (`delivered`, `transient`, `dead_token`, …).
    pub retry_attempts: IntCounterVec,
    /// Queued notifications given up because their time to live ran out, by kind.
    pub retry_expired: IntCounterVec,
    /// Devices of Matrix notify requests, by verdict (`pushed`, `duplicate`, `dead_token`,
    /// `unknown_app`, `bad_pushkey`, `failed`).
    pub matrix_devices: IntCounterVec,
    /// How long Matrix notify requests took to answer, by status code.
    pub matrix_notify_seconds: HistogramVec,
    /// UnifiedPush endpoint registrations and unregistrations, by dialect and `action`.
    pub unifiedpush_registrations: IntCounterVec,
    /// App servers' UnifiedPush pushes, by dialect and outcome (`delivered`, `kept`, `gone`,
    /// `unavailable`, `endpoint_full`, `unauthorized`; `flushed` for kept ones delivered later).
    pub unifiedpush_pushes: IntCounterVec,
    /// Kept UnifiedPush pushes dropped because their time to live ran out.
    pub unifiedpush_expired: IntCounter,
    /// UnifiedPush endpoints by dialect (from the store, every minute).
    pub unifiedpush_endpoints: IntGaugeVec,
    /// UnifiedPush pushes kept for distributors that are away (from the store, every minute).
    pub unifiedpush_kept: IntGauge,
    /// Pushes of the SIP API, by app id, event and answer code (`unknown` app for an app id
    /// no section configures, so the label set stays the operator's).
    pub sip_pushes: IntCounterVec,
    /// How long SIP API pushes took to answer, by event.
    pub sip_push_seconds: HistogramVec,
    /// Remote log posts of the SIP API, by outcome (`sent`, `failed`, `dropped`).
    pub sip_remote_log: IntCounterVec,
    /// Devices stored through the SIP API's v2 routes (from the store, every minute).
    pub sip_devices: IntGauge,
    /// XEP-0357 remote-disable notifications for removed registrations, by outcome (`sent`,
    /// `skipped`).
    pub removal_notifications: IntCounterVec,
    /// Token-addressed (fpush-style) publishes, by module (`unknown` for one not configured) and
    /// outcome (a delivery outcome or a refusal).
    pub fpush_publishes: IntCounterVec,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    m: M,
) -> M {
    registry
        .register(Box::new(m.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    m
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, name, m)
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name}: {e}"))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    register(registry, name, m)
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let r = Registry::new();
    let delivery_seconds = HistogramVec::new(
        HistogramOpts::new(
            "pushgate_delivery_duration_seconds",
            "How long a provider took to answer a delivery.",
        )
        .buckets(vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["provider"],
    )
    .unwrap_or_else(|e| panic!("metric pushgate_delivery_duration_seconds: {e}"));
    let xmpp_connected = gauge(
        "pushgate_xmpp_connected",
        "1 while the component stream to the XMPP server is up.",
    );
    let xmpp_reconnects = IntCounter::new(
        "pushgate_xmpp_reconnects_total",
        "Component reconnections after a lost stream.",
    )
    .unwrap_or_else(|e| panic!("metric pushgate_xmpp_reconnects_total: {e}"));
    let unifiedpush_expired = IntCounter::new(
        "pushgate_unifiedpush_expired_total",
        "Kept UnifiedPush pushes dropped because their time to live ran out.",
    )
    .unwrap_or_else(|e| panic!("metric pushgate_unifiedpush_expired_total: {e}"));
    let http_connections = gauge(
        "pushgate_http_connections",
        "Open HTTP connections (at most http.max_connections).",
    );
    let matrix_notify_seconds = HistogramVec::new(
        HistogramOpts::new(
            "pushgate_matrix_notify_seconds",
            "How long Matrix notify requests took to answer, by status code.",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]),
        &["status"],
    )
    .unwrap_or_else(|e| panic!("metric pushgate_matrix_notify_seconds: {e}"));
    let sip_push_seconds = HistogramVec::new(
        HistogramOpts::new(
            "pushgate_sip_push_seconds",
            "How long SIP API pushes took to answer, by event.",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]),
        &["event"],
    )
    .unwrap_or_else(|e| panic!("metric pushgate_sip_push_seconds: {e}"));
    let retry_queue_depth = gauge(
        "pushgate_retry_queue_depth",
        "Notifications in the retry queue, over every instance.",
    );
    let retry_queue_oldest_seconds = gauge(
        "pushgate_retry_queue_oldest_seconds",
        "Age of the oldest notification in the retry queue, in seconds.",
    );
    Metrics {
        publishes: counter_vec(
            &r,
            "pushgate_publishes_total",
            "XEP-0357 publishes answered, by outcome.",
            &["outcome"],
        ),
        deliveries: counter_vec(
            &r,
            "pushgate_deliveries_total",
            "Provider deliveries by provider id, notification kind and verdict.",
            &["provider", "kind", "verdict"],
        ),
        delivery_seconds: register(&r, "pushgate_delivery_duration_seconds", delivery_seconds),
        dead_tokens_removed: counter_vec(
            &r,
            "pushgate_registrations_removed_dead_token_total",
            "Registrations deleted because the provider reported the token dead.",
            &["provider"],
        ),
        registrations: gauge_vec(
            &r,
            "pushgate_registrations",
            "Stored registrations by provider id.",
            &["provider"],
        ),
        stanzas_refused: counter_vec(
            &r,
            "pushgate_stanzas_refused_total",
            "Stanzas answered or dropped without being handled, by reason.",
            &["reason"],
        ),
        delivery_slots_full: counter_vec(
            &r,
            "pushgate_delivery_slots_full_total",
            "Deliveries refused at once because every slot of the provider or host was taken.",
            &["provider", "scope"],
        ),
        registration_lookups: counter_vec(
            &r,
            "pushgate_registration_lookups_total",
            "Registration lookups for publishes, by where they were answered (cache, database).",
            &["source"],
        ),
        commands: counter_vec(
            &r,
            "pushgate_commands_total",
            "Ad-hoc commands by node and outcome.",
            &["command", "outcome"],
        ),
        xmpp_connected: register(&r, "pushgate_xmpp_connected", xmpp_connected),
        xmpp_reconnects: register(&r, "pushgate_xmpp_reconnects_total", xmpp_reconnects),
        apns_certificate_expiry: gauge_vec(
            &r,
            "pushgate_apns_certificate_expiry_timestamp_seconds",
            "When the APNs certificate of an app expires (Unix time).",
            &["provider"],
        ),
        apns_certificate_expiring: gauge_vec(
            &r,
            "pushgate_apns_certificate_expiring",
            "1 while an app's APNs certificate expires within the warning window.",
            &["provider"],
        ),
        apns_certificate_expired: gauge_vec(
            &r,
            "pushgate_apns_certificate_expired",
            "1 once an app's APNs certificate has expired.",
            &["provider"],
        ),
        fd_exhausted: counter_vec(
            &r,
            "pushgate_fd_exhausted_total",
            "Times the process ran out of file descriptors (EMFILE/ENFILE), by where.",
            &["where"],
        ),
        http_requests: counter_vec(
            &r,
            "pushgate_http_requests_total",
            "HTTP requests answered, by route template and status code.",
            &["route", "status"],
        ),
        http_connections: register(&r, "pushgate_http_connections", http_connections),
        http_connections_closed: counter_vec(
            &r,
            "pushgate_http_connections_closed_total",
            "HTTP connections closed by the server before the client was done, by reason.",
            &["reason"],
        ),
        retry_queue_depth: register(&r, "pushgate_retry_queue_depth", retry_queue_depth),
        retry_queue_oldest_seconds: register(
            &r,
            "pushgate_retry_queue_oldest_seconds",
            retry_queue_oldest_seconds,
        ),
        retry_queued: counter_vec(
            &r,
            "pushgate_retry_queued_total",
            "Notifications queued for retry after a failed delivery, by kind.",
            &["kind"],
        ),
        retry_refused: counter_vec(
            &r,
            "pushgate_retry_refused_total",
            "Failed deliveries not queued for retry (answered wait), by reason.",
            &["reason"],
        ),
        retry_attempts: counter_vec(
            &r,
            "pushgate_retry_attempts_total",
            "Retry attempts of queued notifications, by provider id and outcome.",
            &["provider", "outcome"],
        ),
        retry_expired: counter_vec(
            &r,
            "pushgate_retry_expired_total",
            "Queued notifications given up because their time to live ran out, by kind.",
            &["kind"],
        ),
        matrix_devices: counter_vec(
            &r,
            "pushgate_matrix_devices_total",
            "Devices of Matrix notify requests, by verdict.",
            &["verdict"],
        ),
        matrix_notify_seconds: register(
            &r,
            "pushgate_matrix_notify_seconds",
            matrix_notify_seconds,
        ),
        sip_pushes: counter_vec(
            &r,
            "pushgate_sip_pushes_total",
            "Pushes of the SIP API, by app id, event and answer code.",
            &["app", "event", "code"],
        ),
        sip_push_seconds: register(&r, "pushgate_sip_push_seconds", sip_push_seconds),
        sip_remote_log: counter_vec(
            &r,
            "pushgate_sip_remote_log_total",
            "Remote log posts of the SIP API, by outcome.",
            &["outcome"],
        ),
        fpush_publishes: counter_vec(
            &r,
            "pushgate_fpush_publishes_total",
            "Token-addressed (fpush-style) publishes, by module and outcome.",
            &["module", "outcome"],
        ),
        removal_notifications: counter_vec(
            &r,
            "pushgate_removal_notifications_total",
            "XEP-0357 remote-disable notifications for removed registrations, by outcome.",
            &["outcome"],
        ),
        unifiedpush_registrations: counter_vec(
            &r,
            "pushgate_unifiedpush_registrations_total",
            "UnifiedPush endpoint registrations and unregistrations, by dialect and action.",
            &["dialect", "action"],
        ),
        unifiedpush_pushes: counter_vec(
            &r,
            "pushgate_unifiedpush_pushes_total",
            "App servers' UnifiedPush pushes, by dialect and outcome.",
            &["dialect", "outcome"],
        ),
        unifiedpush_expired: register(
            &r,
            "pushgate_unifiedpush_expired_total",
            unifiedpush_expired,
        ),
        unifiedpush_endpoints: gauge_vec(
            &r,
            "pushgate_unifiedpush_endpoints",
            "UnifiedPush endpoints by dialect.",
            &["dialect"],
        ),
        unifiedpush_kept: register(
            &r,
            "pushgate_unifiedpush_kept",
            gauge(
                "pushgate_unifiedpush_kept",
                "UnifiedPush pushes kept for distributors that are away.",
            ),
        ),
        sip_devices: register(
            &r,
            "pushgate_sip_devices",
            gauge(
                "pushgate_sip_devices",
                "Devices stored through the SIP API's v2 routes.",
            ),
        ),
        registry: r,
    }
});

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    sync_provider_counts();
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&METRICS.registry.gather(), &mut out) {
        tracing::error!("cannot encode metrics: {e}");
    }
    out
}

/// Brings `pushgate_fd_exhausted_total{where="provider_connect"}` up to the providers crate's
/// own count (it knows nothing of Prometheus).
fn sync_provider_counts() {
    // Two renders at once must not both add the same difference.
    static SYNC: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = SYNC.lock().unwrap_or_else(|e| e.into_inner());
    let counter = METRICS
        .fd_exhausted
        .with_label_values(&["provider_connect"]);
    let total = pushgate_providers::fd_exhausted_total();
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// Every sample as `(name{labels}, value)`, read from the text format so that the
/// `get-statistics` command shows exactly what `/metrics` serves (label values unquoted, as
/// form field names); histograms appear as their `_count`.
pub fn samples() -> Vec<(String, String)> {
    render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(name, _)| {
            let base = name.split('{').next().unwrap_or_default();
            !base.ends_with("_bucket") && !base.ends_with("_sum")
        })
        .map(|(name, value)| (name.replace('"', ""), value.to_owned()))
        .collect()
}
