//! Every way a request can fail, whatever front it came through. Each front turns a [`Fault`]
//! into its protocol's answer in one place: `fronts/xmpp/error.rs` (stanza errors),
//! `fronts/http` (status and JSON reason).

use pushgate_providers::RegistrationError;

use crate::storage::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The request is malformed; the text says what is wrong.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Well-formed, but the values are not acceptable (e.g. a token the provider refuses).
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// No such node, command or registration. Also used for a wrong secret or a foreign
    /// domain, so that a prober cannot tell an existing node from a missing one.
    #[error("not found: {0}")]
    NotFound(&'static str),
    /// The requester may not do this (not a server, not an admin).
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// The request breaks one of our limits; the text names it.
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    #[error("feature not implemented")]
    NotImplemented,
    #[error("service unavailable")]
    ServiceUnavailable,
    /// Our side or the provider's is in trouble; the requester should try again later.
    #[error("temporary failure: {0}")]
    Transient(String),
    /// A registration limit says no; the text names the limit.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// The provider will not take this device (bad token or keys, endpoint policy).
    #[error("device refused: {0}")]
    Device(#[from] RegistrationError),
}

/// The registration limits (`[registration]` in the configuration). Replies to a client's
/// command, so no publishing server acts on them; the conditions follow RFC 6120 §8.3.3.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `max_per_account`: the account has as many registrations as it may; re-registering one of
    /// them is still allowed.
    #[error("too many registrations for this account (limit {0})")]
    AccountQuota(u32),
    /// `rate_per_domain_per_minute`: new devices of this domain arrive faster than allowed.
    #[error(
        "too many new registrations from {domain} (limit {per_minute} a minute); try again in {retry_secs} s"
    )]
    DomainRate {
        domain: String,
        per_minute: u32,
        retry_secs: u64,
    },
    /// `allow_domains` / `deny_domains`.
    #[error("accounts of {0} may not register devices here")]
    DomainNotAllowed(String),
    /// A field longer than its limit (`commands::limits`).
    #[error("field '{field}' is too long (limit {max} bytes)")]
    TooLong { field: &'static str, max: usize },
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::AccountQuota(_) => "account_quota",
            Refusal::DomainRate { .. } => "domain_rate",
            Refusal::DomainNotAllowed(_) => "domain_not_allowed",
            Refusal::TooLong { .. } => "too_long",
        }
    }
}

impl Fault {
    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Fault::BadRequest(_) => "malformed",
            Fault::NotAcceptable(_) => "not_acceptable",
            Fault::NotFound(_) => "not_found",
            Fault::Forbidden(_) => "forbidden",
            Fault::PolicyViolation(_) => "policy_violation",
            Fault::NotImplemented => "not_implemented",
            Fault::ServiceUnavailable => "service_unavailable",
            Fault::Transient(_) => "transient",
            Fault::Refused(r) => r.label(),
            Fault::Device(RegistrationError::NotPublic(_)) => "endpoint_not_public",
            Fault::Device(RegistrationError::CheckFailed(_)) => "device_unchecked",
            Fault::Device(_) => "not_acceptable",
        }
    }
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::AccountFull { limit } => Fault::Refused(Refusal::AccountQuota(limit)),
            e => Fault::Transient(format!("storage: {e}")),
        }
    }
}
