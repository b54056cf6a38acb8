//! Assertions the provider tests share.
#![allow(dead_code)] // each test binary uses its own subset

use std::time::Duration;

use pushgate_providers::Verdict;

/// `v` is a send the provider held back itself (after a service asked it to slow down), for at
/// most `max`; returns its reason.
pub fn assert_held_back(v: &Verdict, max: Duration) -> &str {
    match v {
        Verdict::Transient {
            retry_after: Some(left),
            reason,
        } => {
            assert!(*left <= max, "{left:?}");
            assert!(reason.contains("holding back"), "{reason}");
            reason
        }
        other => panic!("expected a held-back transient, got {other:?}"),
    }
}
