//! Who may register, and how many new devices: `[registration]` in the configuration.
//!
//! Three limits keep one account or one domain from filling the database: the domain lists
//! (`allow_domains`, `deny_domains`), a token bucket of *new* devices per account domain
//! (`rate_per_domain_per_minute`) and the registrations one account may hold
//! (`max_per_account`). A known device re-registering is never limited by the last two: clients
//! such as Conversations re-register at every login, so a server restart brings every user
//! back at once, and refusing them would silently cost them their pushes. That is also why the
//! bucket is charged only once the store has seen that a device is new (a token taken up front
//! is given back otherwise), and why the account limit is decided inside the store's write.
//!
//! The bucket lives in this process: with several instances each counts its own, so a domain
//! gets up to the rate once per instance.

use pushgate_providers::host::{HostPattern, listed};

use crate::config::RegistrationConfig;
use crate::core::rate_limit::{RateLimiter, retry_after_secs};
use crate::error::Refusal;
use crate::ids::BareJid;
use crate::storage::Admission;

pub struct RegistrationPolicy {
    max_per_account: u32,
    /// New devices per domain; `None` when `rate_per_domain_per_minute` is 0.
    new_devices: Option<(RateLimiter<String>, u32)>,
    allow: Vec<HostPattern>,
    deny: Vec<HostPattern>,
}

/// What one registration may add, for [`crate::storage::Store::register`]. Holds the domain's
/// token, if one was taken: dropped without [`NewDevice::spend`], it goes back to the bucket.
pub struct NewDevice<'a> {
    pub admission: Admission,
    /// Why a new device would be refused: the domain's bucket is empty.
    pub paused: Option<Refusal>,
    token: Option<(&'a RateLimiter<String>, String)>,
}

impl NewDevice<'_> {
    /// The device was added: the token stays spent.
    pub fn spend(mut self) {
        self.token = None;
    }
}

impl Drop for NewDevice<'_> {
    fn drop(&mut self) {
        if let Some((limiter, domain)) = self.token.take() {
            limiter.refund(&domain);
        }
    }
}

impl RegistrationPolicy {
    pub fn from_config(c: &RegistrationConfig) -> Self {
        RegistrationPolicy {
            max_per_account: c.max_per_account,
            new_devices: (c.rate_per_domain_per_minute > 0).then(|| {
                (
                    RateLimiter::new(c.rate_per_domain_per_minute),
                    c.rate_per_domain_per_minute,
                )
            }),
            allow: RegistrationConfig::domain_patterns(&c.allow_domains),
            deny: RegistrationConfig::domain_patterns(&c.deny_domains),
        }
    }

    /// Whether accounts of `account`'s domain may register at all.
    pub fn check_domain(&self, account: &BareJid) -> Result<(), Refusal> {
        let domain = account.domain().as_str();
        if listed(&self.deny, domain) || (!self.allow.is_empty() && !listed(&self.allow, domain)) {
            return Err(Refusal::DomainNotAllowed(domain.to_owned()));
        }
        Ok(())
    }

    /// Takes a token from the domain's bucket for a device that may turn out to be new.
    pub fn new_device(&self, account: &BareJid) -> NewDevice<'_> {
        let mut new = NewDevice {
            admission: Admission {
                max_per_account: self.max_per_account,
                may_add: true,
            },
            paused: None,
            token: None,
        };
        if let Some((limiter, per_minute)) = &self.new_devices {
            let domain = account.domain().as_str().to_owned();
            match limiter.check(domain.clone()) {
                Ok(()) => new.token = Some((limiter, domain)),
                Err(wait) => {
                    new.admission.may_add = false;
                    new.paused = Some(Refusal::DomainRate {
                        domain,
                        per_minute: *per_minute,
                        retry_secs: retry_after_secs(wait),
                    });
                }
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(toml: &str) -> RegistrationPolicy {
        let c = crate::config::Config::from_toml_str(&format!(
            "[component]\njid = \"push.example.org\"\nsecret = \"s\"\n[registration]\n{toml}\n"
        ))
        .unwrap();
        RegistrationPolicy::from_config(&c.registration)
    }

    fn jid(s: &str) -> BareJid {
        BareJid::new(s).unwrap()
    }

    #[test]
    fn domain_lists() {
        let open = policy("");
        assert!(open.check_domain(&jid("a@anything.example")).is_ok());

        let p = policy(
            "allow_domains = [\"example.org\", \"*.example.net\"]\n\
             deny_domains = [\"bad.example.net\"]",
        );
        for ok in ["a@example.org", "a@chat.example.net", "a@EXAMPLE.org"] {
            assert!(p.check_domain(&jid(ok)).is_ok(), "{ok}");
        }
        for refused in [
            "a@example.net",
            "a@bad.example.net",
            "a@example.com",
            "a@sub.example.org",
        ] {
            assert_eq!(
                p.check_domain(&jid(refused)),
                Err(Refusal::DomainNotAllowed(
                    jid(refused).domain().as_str().to_owned()
                )),
                "{refused}"
            );
        }
    }

    #[test]
    fn tokens_go_back_unless_spent() {
        let p = policy("rate_per_domain_per_minute = 2");
        let alice = jid("alice@example.org");
        // Two not spent (known devices): the bucket stays full.
        for _ in 0..5 {
            let n = p.new_device(&alice);
            assert!(n.admission.may_add && n.paused.is_none());
        }
        p.new_device(&alice).spend();
        p.new_device(&alice).spend();
        let n = p.new_device(&alice);
        assert!(!n.admission.may_add);
        match &n.paused {
            Some(Refusal::DomainRate {
                domain, per_minute, ..
            }) => assert_eq!((domain.as_str(), *per_minute), ("example.org", 2)),
            other => panic!("{other:?}"),
        }
        // Another domain has its own bucket.
        assert!(p.new_device(&jid("bob@example.net")).admission.may_add);
        // 0 turns the bucket off.
        let off = policy("rate_per_domain_per_minute = 0");
        for _ in 0..10 {
            off.new_device(&alice).spend();
        }
        assert!(off.new_device(&alice).admission.may_add);
    }
}
