//! Every way a request can fail, and the one place that turns it into an XMPP error.
//!
//! The reply to a publish decides whether the user's server keeps the registration
//! (../shared/reference/xep0357-interop.md §4.3): only `wait` errors are safe for transient
//! trouble on Prosody, ejabberd and Tigase alike, so anything that is not the requester's fault
//! maps to a `wait` error here, and nowhere else builds stanza errors.

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
        }
    }

    pub fn to_stanza_error(&self) -> StanzaError {
        let (kind, condition, text) = match self {
            Fault::BadRequest(t) => (ErrorType::Modify, DefinedCondition::BadRequest, t.as_str()),
            Fault::NotAcceptable(t) => (
                ErrorType::Modify,
                DefinedCondition::NotAcceptable,
                t.as_str(),
            ),
            Fault::NotFound(t) => (ErrorType::Cancel, DefinedCondition::ItemNotFound, *t),
            Fault::Forbidden(t) => (ErrorType::Auth, DefinedCondition::Forbidden, *t),
            Fault::PolicyViolation(t) => (
                ErrorType::Modify,
                DefinedCondition::PolicyViolation,
                t.as_str(),
            ),
            Fault::NotImplemented => (
                ErrorType::Cancel,
                DefinedCondition::FeatureNotImplemented,
                "",
            ),
            Fault::ServiceUnavailable => {
                (ErrorType::Cancel, DefinedCondition::ServiceUnavailable, "")
            }
            // Never reveal internals to the requester; the log has the details.
            Fault::Transient(_) => (
                ErrorType::Wait,
                DefinedCondition::InternalServerError,
                "temporary failure, try again later",
            ),
        };
        let mut error = StanzaError::new(kind, condition, "en", text);
        if text.is_empty() {
            error.texts.clear();
        }
        error
    }
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Self {
        Fault::Transient(format!("storage: {e}"))
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
}
