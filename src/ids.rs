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

/// The longest provider id: the configuration refuses longer ids, and a client's `provider`
/// field (or the suffix of a p2 command node) is refused before it is looked up.
pub const MAX_PROVIDER_ID_BYTES: usize = 256;

/// Random bytes from the OS. Failure means the OS cannot give us randomness, and minting a
/// guessable credential instead is never acceptable.
pub fn random_b64(bytes: usize) -> String {
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
    /// mod_push_appserver's `v1-register-push` / `v1-unregister-push` (Monal 2020–2022, yaxim):
    /// the client names the node (its device id), and the secret tells its accounts apart.
    AppServer,
}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Tigase => "tigase",
            Dialect::P2 => "p2",
            Dialect::AppServer => "appserver",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tigase" => Some(Dialect::Tigase),
            "p2" => Some(Dialect::P2),
            "appserver" => Some(Dialect::AppServer),
            _ => None,
        }
    }
}

/// Which device a registration is for: what makes two registrations "the same device", so that
/// re-registering refreshes a row instead of adding one and unregistering finds it. Each dialect
/// identifies a device its own way; this type owns the stored key for all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceIdentity {
    /// Tigase dialect (and its REST unregister): the token is the device.
    Token(DeviceToken),
    /// p2 dialect: the device id, so unregistering needs no token, and the room of a per-room
    /// registration.
    Device { id: String, muc: Option<BareJid> },
    /// p2 dialect from a client that sends no device id: the token, and the room.
    TokenInRoom {
        token: DeviceToken,
        muc: Option<BareJid>,
    },
    /// mod_push_appserver dialect: the node the client chose (its device id).
    Node(String),
}

impl DeviceIdentity {
    /// How `dialect` identifies a device with these fields (a stored registration or a new one).
    pub fn of(
        dialect: Dialect,
        token: &DeviceToken,
        device_id: Option<&str>,
        muc: Option<&BareJid>,
    ) -> Self {
        match (dialect, device_id) {
            (Dialect::Tigase, _) => DeviceIdentity::Token(token.clone()),
            (Dialect::P2, Some(id)) => DeviceIdentity::Device {
                id: id.to_owned(),
                muc: muc.cloned(),
            },
            (Dialect::P2, None) => DeviceIdentity::TokenInRoom {
                token: token.clone(),
                muc: muc.cloned(),
            },
            (Dialect::AppServer, id) => {
                DeviceIdentity::Node(id.unwrap_or(token.as_str()).to_owned())
            }
        }
    }

    pub fn dialect(&self) -> Dialect {
        match self {
            DeviceIdentity::Token(_) => Dialect::Tigase,
            DeviceIdentity::Device { .. } | DeviceIdentity::TokenInRoom { .. } => Dialect::P2,
            DeviceIdentity::Node(_) => Dialect::AppServer,
        }
    }

    /// The stored key: a hex SHA-256 over length-prefixed parts, so fixed length
    /// (index-friendly even for long WebPush endpoints), unambiguous, and no second copy of the
    /// token in clear.
    pub fn key(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let mut part = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        part(b"pushgate device key v1");
        part(self.dialect().as_str().as_bytes());
        let muc = match self {
            DeviceIdentity::Token(token) => {
                part(b"token");
                part(token.as_str().as_bytes());
                return hex(&h.finalize());
            }
            DeviceIdentity::Device { id, muc } => {
                part(b"device");
                part(id.as_bytes());
                muc
            }
            DeviceIdentity::TokenInRoom { token, muc } => {
                part(b"token");
                part(token.as_str().as_bytes());
                muc
            }
            DeviceIdentity::Node(node) => {
                part(b"node");
                part(node.as_bytes());
                return hex(&h.finalize());
            }
        };
        match muc {
            Some(muc) => {
                part(b"muc");
                part(muc.as_str().as_bytes());
            }
            None => part(b"no muc"),
        }
        hex(&h.finalize())
    }
}

/// Lower-case hex of `bytes`. By table, not `write!`: every publish that misses the cache hexes
/// its node hash, and the formatter cost more than the lookup's own statement setup.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case_and_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
        assert_eq!(hex(&[]), "");
    }

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

    #[test]
    fn device_keys_separate_what_they_should() {
        let t1 = DeviceToken::new("aa");
        let t2 = DeviceToken::new("bb");
        let room = BareJid::new("room@muc.example").unwrap();
        let device = |id: &str, muc: Option<&BareJid>| DeviceIdentity::Device {
            id: id.into(),
            muc: muc.cloned(),
        };
        // Tigase: the token is the identity.
        assert_ne!(
            DeviceIdentity::Token(t1.clone()).key(),
            DeviceIdentity::Token(t2.clone()).key()
        );
        // p2: device id + muc; the token is not part of it.
        assert_ne!(device("d", None).key(), device("d", Some(&room)).key());
        assert_ne!(device("d", None).key(), device("e", None).key());
        // No ambiguity between a device id and a token with the same text, or across dialects.
        let token_d = DeviceIdentity::TokenInRoom {
            token: DeviceToken::new("d"),
            muc: None,
        };
        assert_ne!(token_d.key(), device("d", None).key());
        let token_aa = DeviceIdentity::TokenInRoom {
            token: t1.clone(),
            muc: None,
        };
        assert_ne!(token_aa.key(), DeviceIdentity::Token(t1.clone()).key());
        // Stored keys must never change: these are the values rows written since the first
        // release carry (SHA-256 over length-prefixed parts, computed independently).
        assert_eq!(
            DeviceIdentity::Token(t1.clone()).key(),
            "21becd060c98a54891fbfc0eacfbd7335d7ee69519f1ade29fc966819f423db2"
        );
        assert_eq!(
            device("d", None).key(),
            "987c88262b0bbc94ef705f124c72015f9c40f017af3a13966866f36c5e07850e"
        );
        assert_eq!(
            device("d", Some(&room)).key(),
            "42ceaa4c9a40961b35ba73a90deb21568ae6bdc76ccaea21a0ed9c7d4d6fe0d2"
        );
        assert_eq!(
            DeviceIdentity::TokenInRoom {
                token: t1,
                muc: Some(room)
            }
            .key(),
            "e689fd3b38f3c42a2cf88271040d761fc72003676792c2d52a042369a7d4c9ca"
        );
    }
}
