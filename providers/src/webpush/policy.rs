//! Which endpoints pushgate may POST to: the endpoint policy (scheme, credentials, allow and
//! deny lists, non-public IP literals) and the resolver that drops non-public addresses.
//!
//! An endpoint URL comes from a registering client, so without these pushgate would POST to any
//! address it is told to. The policy runs at registration and again at every send; the resolver
//! runs for registrations (so a name that leads only inside is refused before it is stored) and
//! for every connection the HTTP client opens.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use url::{Host, Url};

use super::keys::decode_keys;
use crate::host::HostPattern;
use crate::{Device, RegistrationError};

/// UnifiedPush (AND_3) caps endpoint URLs at 1000 bytes; longer ones are not real endpoints.
pub const MAX_ENDPOINT_BYTES: usize = 1000;

/// How long a registration waits for the endpoint's host name to resolve.
const ADMIT_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct EndpointPolicy {
    pub(super) allow_http: bool,
    pub(super) allow_private_addresses: bool,
    pub(super) allowed_hosts: Vec<HostPattern>,
    pub(super) denied_hosts: Vec<HostPattern>,
}

/// An endpoint that passed the policy.
pub(super) struct Endpoint {
    pub(super) url: Url,
    /// Normalized host, the only part of the URL that may be logged.
    pub(super) host: String,
    /// `scheme://host[:port]`, the VAPID audience.
    pub(super) origin: String,
}

impl EndpointPolicy {
    pub(super) fn check(&self, token: &str) -> Result<Endpoint, RegistrationError> {
        if token.len() > MAX_ENDPOINT_BYTES {
            return Err(RegistrationError::InvalidToken(format!(
                "endpoint URL is {} bytes, more than {MAX_ENDPOINT_BYTES}",
                token.len()
            )));
        }
        let url = Url::parse(token)
            .map_err(|e| RegistrationError::InvalidToken(format!("endpoint is not a URL: {e}")))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(RegistrationError::Refused(
                    "plain http:// endpoints are not allowed".to_owned(),
                ));
            }
            other => {
                return Err(RegistrationError::InvalidToken(format!(
                    "endpoint scheme must be https, not {other}"
                )));
            }
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RegistrationError::InvalidToken(
                "endpoint URL must not carry credentials".to_owned(),
            ));
        }
        let (host, ip) = match url.host() {
            Some(Host::Domain(d)) => (d.trim_end_matches('.').to_ascii_lowercase(), None),
            Some(Host::Ipv4(a)) => (a.to_string(), Some(IpAddr::V4(a))),
            Some(Host::Ipv6(a)) => (a.to_string(), Some(IpAddr::V6(a))),
            None => {
                return Err(RegistrationError::InvalidToken(
                    "endpoint URL has no host".to_owned(),
                ));
            }
        };
        if host.is_empty() {
            return Err(RegistrationError::InvalidToken(
                "endpoint URL has no host".to_owned(),
            ));
        }
        if self.denied_hosts.iter().any(|p| p.matches(&host)) {
            return Err(RegistrationError::Refused(format!(
                "endpoint host {host} is denied"
            )));
        }
        if !self.allowed_hosts.is_empty() && !self.allowed_hosts.iter().any(|p| p.matches(&host)) {
            return Err(RegistrationError::Refused(format!(
                "endpoint host {host} is not among the allowed hosts"
            )));
        }
        if let Some(ip) = ip
            && !self.allow_private_addresses
            && !is_public_ip(ip)
        {
            return Err(RegistrationError::Refused(format!(
                "endpoint address {ip} is not a public address"
            )));
        }
        Ok(Endpoint {
            origin: url.origin().ascii_serialization(),
            host,
            url,
        })
    }

    /// The endpoint and, if the device has them, its subscription keys.
    pub(super) fn check_device(&self, device: &Device) -> Result<Endpoint, RegistrationError> {
        let endpoint = self.check(device.token.as_str())?;
        if let Some(keys) = &device.webpush_keys {
            decode_keys(keys)?;
        }
        Ok(endpoint)
    }

    /// Resolves a host name endpoint the way deliveries will, within
    /// [`ADMIT_RESOLVE_TIMEOUT`]. A name with only non-public addresses is refused for good; a
    /// failed or slow lookup may be passing trouble, so the client is told to try again later
    /// (nothing is stored either way). IP literals were checked by [`EndpointPolicy::check`].
    pub(super) async fn check_resolves(
        &self,
        endpoint: &Endpoint,
    ) -> Result<(), RegistrationError> {
        if self.allow_private_addresses || endpoint.url.domain().is_none() {
            return Ok(());
        }
        let host = endpoint.host.as_str();
        match tokio::time::timeout(ADMIT_RESOLVE_TIMEOUT, resolve_public(host, false)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e @ ResolveError::NonPublic { .. })) => {
                Err(RegistrationError::NotPublic(e.to_string()))
            }
            Ok(Err(e)) => Err(RegistrationError::CheckFailed(e.to_string())),
            Err(_) => Err(RegistrationError::CheckFailed(format!(
                "endpoint host {host} did not resolve within {} s",
                ADMIT_RESOLVE_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// Whether `ip` is an ordinary globally routed unicast address, the only kind an endpoint may
/// use unless `allow_private_addresses` is set.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network", includes the unspecified address
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 169 && b == 254) // link-local
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    // NAT64 well-known prefix: as public as the IPv4 address it carries.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return is_public_v4(v4);
    }
    // 6to4 embeds an IPv4 address too.
    if s[0] == 0x2002 {
        let v4 = Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8);
        return is_public_v4(v4);
    }
    !(s[0..6] == [0, 0, 0, 0, 0, 0] // unspecified, loopback, IPv4-compatible
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0]) // discard-only
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00) // multicast
}

/// Resolves endpoint host names, keeping only the addresses the policy allows, so a name that
/// points at an internal service cannot be used to reach it.
pub(super) struct PublicResolver {
    pub(super) allow_private_addresses: bool,
}

/// Why the resolver refused a name.
#[derive(Debug, thiserror::Error)]
pub(super) enum ResolveError {
    #[error(
        "endpoint host {host} resolves only to non-public addresses (allow_private_addresses is off)"
    )]
    NonPublic { host: String },
    #[error("endpoint host {host} resolves to no address")]
    NoAddress { host: String },
    #[error("cannot resolve endpoint host {host}: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
}

/// The addresses of `host` that the policy allows: the one resolution rule for registrations
/// and deliveries alike.
async fn resolve_public(host: &str, allow_private: bool) -> Result<Vec<SocketAddr>, ResolveError> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|source| ResolveError::Lookup {
            host: host.to_owned(),
            source,
        })?
        .collect();
    if found.is_empty() {
        return Err(ResolveError::NoAddress {
            host: host.to_owned(),
        });
    }
    let kept: Vec<SocketAddr> = found
        .iter()
        .copied()
        .filter(|a| allow_private || is_public_ip(a.ip()))
        .collect();
    if kept.is_empty() {
        tracing::debug!(%host, addresses = ?found, "refusing non-public endpoint addresses");
        return Err(ResolveError::NonPublic {
            host: host.to_owned(),
        });
    }
    Ok(kept)
}

impl reqwest::dns::Resolve for PublicResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private_addresses;
        Box::pin(async move {
            let kept = resolve_public(&host, allow_private).await?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_classes() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::1",
            "2001:db8::1",
        ] {
            assert!(!is_public_ip(private.parse().unwrap()), "{private}");
        }
        for public in [
            "8.8.8.8",
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(is_public_ip(public.parse().unwrap()), "{public}");
        }
    }
}
