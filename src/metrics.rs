//! Prometheus metrics, in one registry the HTTP surface will expose.
//!
//! Names follow Prometheus conventions (`pushgate_…`, `_seconds`, `_total`). Registration happens
//! once, at first use; a name clash would be a programming error caught by the tests.

use std::sync::LazyLock;

use prometheus::{IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Unix time at which each app's APNs certificate expires (absent for token keys).
    pub apns_certificate_expiry: IntGaugeVec,
    /// 1 while an app's certificate expires within the warning window (or has expired).
    pub apns_certificate_expiring: IntGaugeVec,
    /// 1 once an app's certificate has expired.
    pub apns_certificate_expired: IntGaugeVec,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &["provider"])
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    Metrics {
        apns_certificate_expiry: gauge(
            &registry,
            "pushgate_apns_certificate_expiry_timestamp_seconds",
            "When the APNs certificate of an app expires (Unix time).",
        ),
        apns_certificate_expiring: gauge(
            &registry,
            "pushgate_apns_certificate_expiring",
            "1 while an app's APNs certificate expires within the warning window.",
        ),
        apns_certificate_expired: gauge(
            &registry,
            "pushgate_apns_certificate_expired",
            "1 once an app's APNs certificate has expired.",
        ),
        registry,
    }
});

/// The metrics in Prometheus' text format.
pub fn render() -> String {
    let mut out = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&METRICS.registry.gather(), &mut out) {
        tracing::error!("cannot encode metrics: {e}");
    }
    out
}
