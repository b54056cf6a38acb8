//! Registrations for every front: register, unregister, and find the one a publish is for.
//!
//! Every registration passes the same gate here, whichever protocol it came through: the
//! account's domain (`allow_domains` / `deny_domains`), the provider (which may refuse a bad token
//! or endpoint now rather than at the first push), then the new-device limits decided in the
//! store's write (`policy.rs`). Field lengths were checked as the front read the request
//! (`limits.rs`).

use std::sync::Arc;

use pushgate_providers::{Device, Provider};

use super::Core;
use super::limits::{self, MAX_PROVIDER_ID_BYTES};
use crate::error::Fault;
use crate::ids::{BareJid, DeviceIdentity, ProviderId};
use crate::storage::{NewRegistration, Registration, StoreError};

/// Unknown node, foreign domain and wrong secret look the same from outside, so a prober learns
/// nothing about which nodes exist.
const NO_SUCH_NODE: Fault = Fault::NotFound("no such node");

/// The configured provider a client named.
pub fn provider<'a>(
    core: &'a Core,
    id: &str,
) -> Result<(&'a ProviderId, &'a Arc<dyn Provider>), Fault> {
    core.providers
        .get(limits::within("provider", id, MAX_PROVIDER_ID_BYTES)?)
        .ok_or(Fault::NotFound("unknown provider"))
}

/// Checks the account's domain, asks the provider whether it can deliver to this device, then
/// stores it within the new-device limits.
pub async fn register(core: &Core, new: NewRegistration) -> Result<Registration, Fault> {
    core.registration.check_domain(&new.account)?;
    let (_, provider) = provider(core, new.provider.as_str())?;
    let device = Device {
        provider: new.provider.clone(),
        token: new.token.clone(),
        second_token: new.second_token.clone(),
        webpush_keys: new.webpush_keys.clone(),
    };
    provider.admit(&device).await?;
    let dialect = new.dialect;
    let mut slot = core.registration.new_device(&new.account);
    let registered = match core.store.register(new, slot.admission).await {
        // Only a paused slot pauses: its refusal says why.
        Err(e @ StoreError::AddingPaused) => {
            return Err(slot.paused.take().map_or(Fault::from(e), Fault::from));
        }
        other => other?,
    };
    if registered.added {
        slot.spend();
    }
    let reg = registered.registration;
    tracing::info!(registration = reg.id, provider = %reg.provider, dialect = dialect.as_str(), added = registered.added, "device registered");
    Ok(reg)
}

/// Removes `account`'s registration of `device` with `provider`: `NotFound` when there was none
/// (an unknown provider included).
pub async fn unregister(
    core: &Core,
    provider_id: &str,
    account: &BareJid,
    device: &DeviceIdentity,
) -> Result<(), Fault> {
    const NONE: Fault = Fault::NotFound("no such registration");
    let Some((provider, _)) = core.providers.get(provider_id) else {
        return Err(NONE);
    };
    let Some(node) = core.store.unregister(provider, account, device).await? else {
        return Err(NONE);
    };
    core.removals.announce(account, &node);
    // The account's domain only: the account and the token stay out of logs.
    tracing::info!(%provider, dialect = device.dialect().as_str(), domain = %account.domain(), "device unregistered");
    Ok(())
}

/// The registration behind `node`, if `publisher_domain` may publish to it (the account's own
/// domain, as normalised in a parsed JID) with `secret` (p2 and mod_push_appserver
/// registrations have one).
pub async fn for_publish(
    core: &Core,
    publisher_domain: &str,
    node: Option<&str>,
    secret: Option<&str>,
) -> Result<Arc<Registration>, Fault> {
    let node = node.ok_or(NO_SUCH_NODE)?;
    let mut found = core.store.find_by_node(node).await?;
    // A node the client chose (mod_push_appserver dialect) is found with its secret.
    if found.is_none()
        && let Some(secret) = secret
    {
        found = core.store.find_by_keyed_node(node, secret).await?;
    }
    let Some(reg) = found else {
        tracing::info!(reason = "unknown_node", "publish refused");
        return Err(NO_SUCH_NODE);
    };
    if publisher_domain != reg.domain {
        tracing::info!(
            registration = reg.id,
            reason = "foreign_domain",
            "publish refused"
        );
        return Err(NO_SUCH_NODE);
    }
    if let Some(stored) = &reg.secret
        && !secret.is_some_and(|s| stored.matches(s))
    {
        tracing::info!(
            registration = reg.id,
            reason = "wrong_secret",
            "publish refused"
        );
        return Err(NO_SUCH_NODE);
    }
    Ok(reg)
}
