//! Host names as operators write them in allow and deny lists: exact names or `*.suffix`
//! patterns, matched in one normal form.
//!
//! The WebPush endpoint policy matches endpoint hosts with these, and the registration policy of
//! the XMPP front matches account domains with the same syntax, so an operator learns one rule.

use std::net::Ipv6Addr;

use url::Host;

/// One entry of an allow or deny list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.org`, stored as `.example.org`: any name below it, not the name itself.
    Suffix(String),
}

impl HostPattern {
    /// `Err` is a message for the operator that quotes the entry.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let pattern = pattern.trim();
        let (wildcard, rest) = match pattern.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        let invalid = || format!("`{pattern}` is not a host name or `*.suffix` pattern");
        if rest.is_empty() || rest.contains('*') {
            return Err(invalid());
        }
        let host = normalize_host(rest).ok_or_else(invalid)?;
        Ok(if wildcard {
            HostPattern::Suffix(format!(".{host}"))
        } else {
            HostPattern::Exact(host)
        })
    }

    /// Whether `host`, in the form [`normalize_host`] gives, matches this entry.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host == h,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// Whether `raw` (a host as written anywhere: any case, trailing dot, Unicode) matches one of
/// `patterns`. An empty list matches nothing and costs nothing, so it can sit on a hot path.
pub fn listed(patterns: &[HostPattern], raw: &str) -> bool {
    !patterns.is_empty()
        && normalize_host(raw).is_some_and(|host| patterns.iter().any(|p| p.matches(&host)))
}

/// Lower-case, punycode, no trailing dot, IPv6 without brackets: the form hosts are matched in.
/// `None` for what is not a host name or address.
pub fn normalize_host(raw: &str) -> Option<String> {
    let raw = raw.trim_end_matches('.');
    let raw = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(raw);
    if let Ok(v6) = raw.parse::<Ipv6Addr>() {
        return Some(v6.to_string());
    }
    match Host::parse(raw).ok()? {
        Host::Domain(d) => Some(d.trim_end_matches('.').to_owned()),
        Host::Ipv4(a) => Some(a.to_string()),
        Host::Ipv6(a) => Some(a.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_normalises_and_an_empty_list_matches_nothing() {
        let list = [
            HostPattern::parse("example.org").unwrap(),
            HostPattern::parse("*.example.net").unwrap(),
        ];
        assert!(listed(&list, "Example.ORG."));
        assert!(listed(&list, "chat.example.net"));
        assert!(!listed(&list, "example.net"));
        assert!(!listed(&list, "not a host"));
        assert!(!listed(&[], "example.org"));
    }

    #[test]
    fn host_patterns() {
        let p = HostPattern::parse("*.Example.org.").unwrap();
        assert!(p.matches("push.example.org"));
        assert!(p.matches("a.b.example.org"));
        assert!(!p.matches("example.org"));
        assert!(!p.matches("badexample.org"));
        let e = HostPattern::parse("push.example.org").unwrap();
        assert!(e.matches("push.example.org"));
        assert!(!e.matches("x.push.example.org"));
        assert_eq!(
            HostPattern::parse("[::1]").unwrap(),
            HostPattern::Exact("::1".to_owned())
        );
        for bad in ["", "*", "*.", "a.*.org", "foo*.org", "exa mple.org"] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unicode_names_match_their_punycode() {
        let p = HostPattern::parse("*.bücher.example").unwrap();
        assert!(p.matches(&normalize_host("Shop.Bücher.example.").unwrap()));
        assert!(p.matches("shop.xn--bcher-kva.example"));
        assert_eq!(normalize_host("exa mple.org"), None);
    }
}
