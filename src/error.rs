//! Every way a request can fail, and the one place that turns it into an XMPP error.
//!
//! The reply to a publish decides whether the user's server keeps the registration
//! (../shared/reference/xep0357-interop.md §4.3): only `wait` errors are safe for transient
//! trouble on Prosody, ejabberd and Tigase alike, so anything that is not the requester's fault
//! maps to a `wait` error here, and nowhere else builds stanza errors.

use pushgate_providers::RegistrationError;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

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
    fn label(&self) -> &'static str {
        match self {
            Refusal::AccountQuota(_) => "account_quota",
            Refusal::DomainRate { .. } => "domain_rate",
            Refusal::DomainNotAllowed(_) => "domain_not_allowed",
            Refusal::TooLong { .. } => "too_long",
        }
    }

    fn condition(&self) -> (ErrorType, DefinedCondition) {
        match self {
            // Retrying the same request cannot help until a registration is removed.
            Refusal::AccountQuota(_) => (ErrorType::Cancel, DefinedCondition::PolicyViolation),
            Refusal::DomainRate { .. } => (ErrorType::Wait, DefinedCondition::PolicyViolation),
            // No credential would help (`forbidden` is type auth): the service does not do this.
            Refusal::DomainNotAllowed(_) => (ErrorType::Cancel, DefinedCondition::NotAllowed),
            Refusal::TooLong { .. } => (ErrorType::Modify, DefinedCondition::NotAcceptable),
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

    pub fn to_stanza_error(&self) -> StanzaError {
        let (kind, condition, text) = match self {
            Fault::BadRequest(t) => (
                ErrorType::Modify,
                DefinedCondition::BadRequest,
                t.to_owned(),
            ),
            Fault::NotAcceptable(t) => (
                ErrorType::Modify,
                DefinedCondition::NotAcceptable,
                t.to_owned(),
            ),
            Fault::NotFound(t) => (
                ErrorType::Cancel,
                DefinedCondition::ItemNotFound,
                (*t).to_owned(),
            ),
            Fault::Forbidden(t) => (
                ErrorType::Auth,
                DefinedCondition::Forbidden,
                (*t).to_owned(),
            ),
            Fault::PolicyViolation(t) => (
                ErrorType::Modify,
                DefinedCondition::PolicyViolation,
                t.to_owned(),
            ),
            Fault::NotImplemented => (
                ErrorType::Cancel,
                DefinedCondition::FeatureNotImplemented,
                String::new(),
            ),
            Fault::ServiceUnavailable => (
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
                String::new(),
            ),
            // Never reveal internals to the requester; the log has the details.
            Fault::Transient(_) => (
                ErrorType::Wait,
                DefinedCondition::InternalServerError,
                "temporary failure, try again later".to_owned(),
            ),
            Fault::Refused(r) => {
                let (kind, condition) = r.condition();
                (kind, condition, r.to_string())
            }
            // The client's own endpoint could not be resolved: nothing of ours is revealed.
            Fault::Device(e @ RegistrationError::CheckFailed(_)) => (
                ErrorType::Wait,
                DefinedCondition::InternalServerError,
                e.to_string(),
            ),
            Fault::Device(e) => (
                ErrorType::Modify,
                DefinedCondition::NotAcceptable,
                e.to_string(),
            ),
        };
        let mut error = StanzaError::new(kind, condition, "en", text.as_str());
        if text.is_empty() {
            error.texts.clear();
        }
        error
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_trouble_is_always_a_wait_error() {
        let e = Fault::Transient("db down".into()).to_stanza_error();
        assert_eq!(e.type_, ErrorType::Wait);
        assert_eq!(e.defined_condition, DefinedCondition::InternalServerError);
        // the internal reason stays in the log
        assert!(!format!("{:?}", e.texts).contains("db down"));
    }

    #[test]
    fn refusals_use_the_conditions_servers_act_on() {
        let e = Fault::NotFound("no such node").to_stanza_error();
        assert_eq!(
            (e.type_, e.defined_condition),
            (ErrorType::Cancel, DefinedCondition::ItemNotFound)
        );
        let e = Fault::Forbidden("x").to_stanza_error();
        assert_eq!(
            (e.type_, e.defined_condition),
            (ErrorType::Auth, DefinedCondition::Forbidden)
        );
        let e = Fault::BadRequest("x".into()).to_stanza_error();
        assert_eq!(
            (e.type_, e.defined_condition),
            (ErrorType::Modify, DefinedCondition::BadRequest)
        );
    }

    fn text(e: &StanzaError) -> String {
        e.texts.values().cloned().collect()
    }

    #[test]
    fn refusals_say_which_limit() {
        let cases = [
            (
                Refusal::AccountQuota(20),
                ErrorType::Cancel,
                DefinedCondition::PolicyViolation,
                "too many registrations for this account (limit 20)",
                "account_quota",
            ),
            (
                Refusal::DomainRate {
                    domain: "example.org".into(),
                    per_minute: 600,
                    retry_secs: 1,
                },
                ErrorType::Wait,
                DefinedCondition::PolicyViolation,
                "too many new registrations from example.org (limit 600 a minute); try again in 1 s",
                "domain_rate",
            ),
            (
                Refusal::DomainNotAllowed("example.org".into()),
                ErrorType::Cancel,
                DefinedCondition::NotAllowed,
                "accounts of example.org may not register devices here",
                "domain_not_allowed",
            ),
            (
                Refusal::TooLong {
                    field: "device-token",
                    max: 4096,
                },
                ErrorType::Modify,
                DefinedCondition::NotAcceptable,
                "field 'device-token' is too long (limit 4096 bytes)",
                "too_long",
            ),
        ];
        for (refusal, kind, condition, want, label) in cases {
            let fault = Fault::from(refusal);
            let e = fault.to_stanza_error();
            assert_eq!(text(&e), want);
            assert_eq!((e.type_, e.defined_condition), (kind, condition));
            assert_eq!(fault.label(), label);
        }
        let full = Fault::from(StoreError::AccountFull { limit: 3 });
        assert_eq!(full.label(), "account_quota");
    }

    #[test]
    fn device_refusals_tell_the_client_what_to_do() {
        let e = Fault::from(RegistrationError::NotPublic("host x".into()));
        assert_eq!(e.label(), "endpoint_not_public");
        let s = e.to_stanza_error();
        assert!(text(&s).contains("host x"), "{}", text(&s));
        assert_eq!(
            (s.type_, s.defined_condition),
            (ErrorType::Modify, DefinedCondition::NotAcceptable)
        );
        // A lookup that failed may work later: `wait`, never a permanent refusal.
        let e = Fault::from(RegistrationError::CheckFailed("timeout".into()));
        assert_eq!(e.label(), "device_unchecked");
        let s = e.to_stanza_error();
        assert_eq!(
            (s.type_, s.defined_condition),
            (ErrorType::Wait, DefinedCondition::InternalServerError)
        );
        assert_eq!(
            Fault::from(RegistrationError::InvalidToken("x".into())).label(),
            "not_acceptable"
        );
    }
}
