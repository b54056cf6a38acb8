//! pushgate: a push gateway. Fronts take requests in their protocol (today the XEP-0114 XMPP
//! component and its HTTP routes); one protocol-free core registers devices and delivers
//! notifications through the providers of the `pushgate-providers` crate.
//!
//! Layers, each importing only from those below it (tests/layers.rs checks):
//! `cli` (the operator's command line) → `fronts` (xmpp, http) → `core` (registry, delivery,
//! policy, slots, coalescing, credential sync) → `error` → `storage` → `config` → `ids`,
//! `metrics`. docs/architecture.md draws it.

pub mod cli;
pub mod config;
pub mod core;
pub mod error;
pub mod fronts;
#[doc(hidden)]
pub mod fuzzing;
pub mod ids;
pub mod log_limit;
pub mod metrics;
pub mod rlimit;
pub mod storage;
