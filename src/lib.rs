//! pushgate: an XEP-0114 component that turns XEP-0357 push publishes into provider deliveries.
//!
//! A publish travels `stream` → `router` → `publish` (parse, authorise against `storage`) →
//! a provider from the `pushgate-providers` crate → `publish` maps the verdict → `router`
//! answers. Device registration travels `router` → `commands` → `storage`. See
//! docs/architecture.md.

pub mod adhoc;
pub mod cli;
pub mod commands;
pub mod config;
pub mod credentials;
pub mod disco;
pub mod error;
pub mod forms;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod publish;
pub mod rlimit;
pub mod router;
pub mod slots;
pub mod storage;
pub mod stream;
