//! Whom a delivery is for: a device registered with pushgate, or one a front names in its
//! request.
//!
//! The XMPP front's devices are registrations: pushgate keeps them, a dead token deletes the
//! row, and the row's id keys the coalescing interval and the operators' bookkeeping. The Matrix
//! front's devices are pushers the homeserver keeps and names in every request (provider, token,
//! keys): pushgate keeps nothing about them, and a dead token is reported back to the front.

use pushgate_providers::{Device, ProviderId};

use crate::storage::Registration;

#[derive(Clone, Copy, Debug)]
pub enum Target<'a> {
    Registered(&'a Registration),
    Named(&'a Device),
}

impl Target<'_> {
    pub fn provider(&self) -> &ProviderId {
        match self {
            Target::Registered(reg) => &reg.provider,
            Target::Named(device) => &device.provider,
        }
    }

    pub fn device(&self) -> Device {
        match self {
            Target::Registered(reg) => reg.device(),
            Target::Named(device) => (*device).clone(),
        }
    }

    pub fn registration(&self) -> Option<&Registration> {
        match self {
            Target::Registered(reg) => Some(reg),
            Target::Named(_) => None,
        }
    }
}
