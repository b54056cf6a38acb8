//! A registration as the store hands it out and takes it in: what a client asked for, what is
//! stored, and how far one registration may grow the table.

use std::fmt;

use chrono::{DateTime, Utc};

use super::StoreError;
use super::entity::Model;
use crate::ids::{BareJid, DeviceIdentity, DeviceToken, Dialect, NodeId, ProviderId, Secret};
use pushgate_providers::{Device, WebPushKeys};

/// How far one registration may grow the table. The caller's policy; the store enforces it
/// where a new device can be told from a known one, in the transaction that writes the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Registrations one account may hold: a new device beyond it is refused
    /// ([`StoreError::AccountFull`]); a known device is always refreshed.
    pub max_per_account: u32,
    /// Whether a device not registered before may be added now; false refuses new devices
    /// ([`StoreError::AddingPaused`]) and still refreshes known ones.
    pub may_add: bool,
}

/// A stored registration, and whether it is a new device rather than a known one refreshed.
#[derive(Debug)]
pub struct Registered {
    pub registration: Registration,
    pub added: bool,
}

/// What a registering client asked for.
#[derive(Clone, Debug)]
pub struct NewRegistration {
    pub dialect: Dialect,
    pub provider: ProviderId,
    pub account: BareJid,
    /// p2 dialect: device-id / android-id.
    pub device_id: Option<String>,
    /// p2 dialect: per-room registration.
    pub muc: Option<BareJid>,
    pub token: DeviceToken,
    pub second_token: Option<DeviceToken>,
    pub webpush_keys: Option<WebPushKeys>,
}

/// A stored registration, validated.
#[derive(Clone)]
pub struct Registration {
    pub id: i64,
    pub dialect: Dialect,
    pub provider: ProviderId,
    pub account: BareJid,
    /// The account's domain; publishes for this node are accepted from this domain only.
    pub domain: String,
    pub device_key: String,
    pub device_id: Option<String>,
    pub muc: Option<BareJid>,
    pub token: DeviceToken,
    pub second_token: Option<DeviceToken>,
    pub webpush_keys: Option<WebPushKeys>,
    pub node: NodeId,
    /// Present for [`Dialect::P2`] and [`Dialect::AppServer`].
    pub secret: Option<Secret>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

impl Registration {
    /// What a provider needs to deliver to this registration.
    pub fn device(&self) -> Device {
        Device {
            provider: self.provider.clone(),
            token: self.token.clone(),
            second_token: self.second_token.clone(),
            webpush_keys: self.webpush_keys.clone(),
        }
    }
}

/// Hand-written so WebPush keys (whose `Debug` shows the auth secret) stay out of logs; node,
/// secret and tokens redact themselves.
impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("id", &self.id)
            .field("dialect", &self.dialect)
            .field("provider", &self.provider)
            .field("account", &self.account)
            .field("device_id", &self.device_id)
            .field("muc", &self.muc)
            .field("token", &self.token)
            .field("second_token", &self.second_token)
            .field("webpush_keys", &self.webpush_keys.as_ref().map(|_| "…"))
            .field("node", &self.node)
            .field("secret", &self.secret)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("last_success_at", &self.last_success_at)
            .field("last_error_at", &self.last_error_at)
            .finish_non_exhaustive()
    }
}

impl TryFrom<Model> for Registration {
    type Error = StoreError;

    fn try_from(m: Model) -> Result<Self, StoreError> {
        let id = m.id;
        let corrupt = |field| StoreError::Corrupt { id, field };
        let dialect = Dialect::parse(&m.dialect).ok_or_else(|| corrupt("dialect"))?;
        let account = BareJid::new(&m.account).map_err(|_| corrupt("account"))?;
        let muc = match m.muc {
            Some(muc) => Some(BareJid::new(&muc).map_err(|_| corrupt("muc"))?),
            None => None,
        };
        let webpush_keys = match (m.webpush_p256dh, m.webpush_auth) {
            (Some(p256dh), Some(auth)) => Some(WebPushKeys { p256dh, auth }),
            (None, None) => None,
            _ => return Err(corrupt("webpush keys")),
        };
        // A p2 registration without its secret would accept unauthenticated publishes.
        let secret = match (dialect, m.secret) {
            (Dialect::P2 | Dialect::AppServer, Some(s)) => Some(Secret::from_stored(s)),
            (Dialect::P2 | Dialect::AppServer, None) => return Err(corrupt("secret")),
            (Dialect::Tigase, s) => s.map(Secret::from_stored),
        };
        Ok(Registration {
            id,
            dialect,
            provider: ProviderId::new(m.provider),
            account,
            domain: m.domain,
            device_key: m.device_key,
            device_id: m.device_id,
            muc,
            token: DeviceToken::new(m.token),
            second_token: m.second_token.map(DeviceToken::new),
            webpush_keys,
            node: NodeId::from_stored(m.node),
            secret,
            created_at: m.created_at,
            updated_at: m.updated_at,
            last_success_at: m.last_success_at,
            last_error_at: m.last_error_at,
            last_error: m.last_error,
        })
    }
}

impl NewRegistration {
    /// Which device this is, as its dialect identifies it.
    pub fn identity(&self) -> DeviceIdentity {
        DeviceIdentity::of(
            self.dialect,
            &self.token,
            self.device_id.as_deref(),
            self.muc.as_ref(),
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::storage::entity::Model;
    use sea_orm::ActiveValue::Set;

    /// Any valid registration, for tests that only need one to hold.
    pub(crate) fn registration() -> Registration {
        let new = NewRegistration {
            dialect: Dialect::Tigase,
            provider: ProviderId::new("webpush"),
            account: "alice@example.org".parse().unwrap(),
            device_id: None,
            muc: None,
            token: DeviceToken::new("https://push.example.net/t"),
            second_token: None,
            webpush_keys: None,
        };
        let mut row = super::super::writer::new_row(&new, "key");
        row.id = Set(1);
        let model = Model {
            id: 1,
            dialect: row.dialect.unwrap(),
            provider: row.provider.unwrap(),
            account: row.account.unwrap(),
            domain: row.domain.unwrap(),
            device_key: row.device_key.unwrap(),
            device_id: None,
            muc: None,
            token: row.token.unwrap(),
            second_token: None,
            webpush_p256dh: None,
            webpush_auth: None,
            node: row.node.unwrap(),
            node_hash: row.node_hash.unwrap(),
            secret: None,
            created_at: row.created_at.unwrap(),
            updated_at: row.updated_at.unwrap(),
            last_success_at: None,
            last_error_at: None,
            last_error: None,
        };
        Registration::try_from(model).unwrap()
    }
}
