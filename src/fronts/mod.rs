//! The doors into pushgate. A front parses its protocol into calls on `crate::core` and formats
//! the answers; it owns no registration, delivery or retry logic of its own.
//!
//! - `xmpp`: the XEP-0114 component (registration by XEP-0050 commands, XEP-0357 publishes,
//!   admin commands).
//! - `http`: the HTTP listener (health, metrics, the Tigase-style REST unregister, and the
//!   routes of the fronts that speak HTTP).
//! - `matrix`: the Matrix push gateway API (`/_matrix/push/v1/notify`), served by `http`.
//!
//! A new front is a new folder here plus its start in `main.rs` (or its routes in `http`).

pub mod http;
pub mod matrix;
pub mod sip;
pub mod xmpp;
