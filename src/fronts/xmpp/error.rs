//! The one place that turns a [`Fault`] into an XMPP stanza error.
//!
//! The reply to a publish decides whether the user's server keeps the registration. Prosody's
//! mod_cloud_notify drops it on any error but `wait` (after several in a row), ejabberd's mod_push
//! disables push on the first error of another type, and Tigase servers drop it on
//! `item-not-found`: so anything that is not the requester's fault maps to a `wait` error here,
//! and nowhere else builds stanza errors.

use pushgate_providers::RegistrationError;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType, StanzaError};

use crate::error::{Fault, Refusal};

/// The registration limits reply to a client's command, so no publishing server acts on them;
/// the conditions follow RFC 6120 §8.3.3.
fn condition(refusal: &Refusal) -> (ErrorType, DefinedCondition) {
    match refusal {
        // Retrying the same request cannot help until a registration is removed.
        Refusal::AccountQuota(_) => (ErrorType::Cancel, DefinedCondition::PolicyViolation),
        Refusal::DomainRate { .. } => (ErrorType::Wait, DefinedCondition::PolicyViolation),
        // No credential would help (`forbidden` is type auth): the service does not do this.
        Refusal::DomainNotAllowed(_) => (ErrorType::Cancel, DefinedCondition::NotAllowed),
        Refusal::TooLong { .. } => (ErrorType::Modify, DefinedCondition::NotAcceptable),
    }
}

pub fn stanza_error(fault: &Fault) -> StanzaError {
    let (kind, condition, text) = match fault {
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
            let (kind, condition) = condition(r);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::StoreError;

    #[test]
    fn transient_trouble_is_always_a_wait_error() {
        let e = stanza_error(&Fault::Transient("db down".into()));
        assert_eq!(e.type_, ErrorType::Wait);
        assert_eq!(e.defined_condition, DefinedCondition::InternalServerError);
        // the internal reason stays in the log
        assert!(!format!("{:?}", e.texts).contains("db down"));
    }

    #[test]
    fn refusals_use_the_conditions_servers_act_on() {
        let e = stanza_error(&Fault::NotFound("no such node"));
        assert_eq!(
            (e.type_, e.defined_condition),
            (ErrorType::Cancel, DefinedCondition::ItemNotFound)
        );
        let e = stanza_error(&Fault::Forbidden("x"));
        assert_eq!(
            (e.type_, e.defined_condition),
            (ErrorType::Auth, DefinedCondition::Forbidden)
        );
        let e = stanza_error(&Fault::BadRequest("x".into()));
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
            let e = stanza_error(&fault);
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
        let s = stanza_error(&e);
        assert!(text(&s).contains("host x"), "{}", text(&s));
        assert_eq!(
            (s.type_, s.defined_condition),
            (ErrorType::Modify, DefinedCondition::NotAcceptable)
        );
        // A lookup that failed may work later: `wait`, never a permanent refusal.
        let e = Fault::from(RegistrationError::CheckFailed("timeout".into()));
        assert_eq!(e.label(), "device_unchecked");
        let s = stanza_error(&e);
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
