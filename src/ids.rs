//! Identifiers and credentials of a registration: node ids, secrets, dialects.
//!
//! A node is the only credential of a Tigase-dialect registration, so nodes and secrets come
//! from the OS CSPRNG with at least 128 bits, are compared in constant time, and never appear
//! whole in `Debug` output or logs.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

pub use pushgate_providers::{DeviceToken, ProviderId};
pub use xmpp_parsers::jid::BareJid;

/// Random bytes from the OS. Failure means the OS cannot give us randomness, and minting a
/// guessable credential instead is never acceptable.
fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).unwrap_or_else(|e| panic!("OS random number generator failed: {e}"));
    URL_SAFE_NO_PAD.encode(buf)
}

fn redacted(f: &mut fmt::Formatter<'_>, name: &str, value: &str) -> fmt::Result {
    let prefix: String = value.chars().take(4).collect();
    write!(f, "{name}({prefix}…)")
}

/// The PubSub node a device's pushes are published to.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NodeId(String);

impl NodeId {
    /// 128 random bits, base64url (22 characters).
    pub fn generate() -> Self {
        Self(random_b64(16))
    }
    pub fn from_stored(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Constant-time comparison, for checking a node a peer sent against a stored one.
    pub fn matches(&self, other: &str) -> bool {
        ct_eq(&self.0, other)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        redacted(f, "NodeId", &self.0)
    }
}

/// The publish-options secret of a p2-dialect registration.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// 144 random bits, base64url (24 characters), as p2 hands out.
    pub fn generate() -> Self {
        Self(random_b64(18))
    }
    pub fn from_stored(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn matches(&self, presented: &str) -> bool {
        ct_eq(&self.0, presented)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Constant-time string equality; only the length may leak.
pub fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Which registration protocol created a registration. It decides idempotency (what counts as
/// "the same device") and whether publishes must carry a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// `register-device` / `unregister-device` (Siskin, Snikket iOS, Tigase Messenger).
    Tigase,
    /// `register-push-<provider>` / `unregister-push-<provider>` (Conversations, p2).
    P2,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Tigase => "tigase",
            Dialect::P2 => "p2",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tigase" => Some(Dialect::Tigase),
            "p2" => Some(Dialect::P2),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_are_long_and_distinct() {
        let a = NodeId::generate();
        let b = NodeId::generate();
        assert_eq!(a.as_str().len(), 22);
        assert_ne!(a, b);
        assert_eq!(Secret::generate().as_str().len(), 24);
    }

    #[test]
    fn matching_is_exact() {
        let n = NodeId::from_stored("abcdef");
        assert!(n.matches("abcdef"));
        assert!(!n.matches("abcdeg"));
        assert!(!n.matches("abcde"));
        assert!(!n.matches(""));
        let s = Secret::from_stored("xyz");
        assert!(s.matches("xyz") && !s.matches("xy"));
    }

    #[test]
    fn debug_never_shows_whole_credentials() {
        let n = NodeId::from_stored("supersecretnode");
        assert!(!format!("{n:?}").contains("supersecretnode"));
        assert!(!format!("{:?}", Secret::from_stored("hunter2")).contains("hunter2"));
    }
}
