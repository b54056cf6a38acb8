//! Which bucket an HTTP client's requests are counted in (the buckets are
//! `core::rate_limit::RateLimiter`).
//!
//! IPv6 clients are counted per /64 ([`bucket_key`]: what one subscriber usually gets), so
//! hopping through addresses of one prefix does not multiply the allowance.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::HeaderMap;

/// A client's bucket: IPv4 (and IPv4-mapped IPv6) addresses as they are; other IPv6 addresses
/// by their /64.
pub fn bucket_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The client's IP: the TCP peer, or with `trust_forwarded_for` the last `X-Forwarded-For` hop
/// (what the proxy in front of us appended). An unparsable header falls back to the peer.
pub fn client_ip(
    headers: &HeaderMap,
    peer: Option<&ConnectInfo<SocketAddr>>,
    trust_forwarded_for: bool,
) -> IpAddr {
    let peer_ip = peer
        .map(|ConnectInfo(addr)| addr.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    if !trust_forwarded_for {
        return peer_ip;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|hop| parse_hop(hop.trim()))
        .unwrap_or(peer_ip)
}

/// A hop is an IP, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rate_limit::{RateLimiter, retry_after_secs};
    use std::time::{Duration, Instant};

    /// What the HTTP middleware does with a client's address.
    fn check_ip(l: &RateLimiter, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        l.check_at(bucket_key(ip), now)
    }

    #[test]
    fn bucket_empties_then_refills() {
        let l: RateLimiter = RateLimiter::new(60);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..60 {
            assert!(check_ip(&l, ip, t0).is_ok());
        }
        let wait = check_ip(&l, ip, t0).unwrap_err();
        assert_eq!(retry_after_secs(wait), 1);
        assert!(check_ip(&l, "192.0.2.2".parse().unwrap(), t0).is_ok());
        assert!(check_ip(&l, ip, t0 + Duration::from_millis(1100)).is_ok());
        assert!(check_ip(&l, ip, t0 + Duration::from_millis(1100)).is_err());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let l: RateLimiter = RateLimiter::new(1);
        let t0 = Instant::now();
        assert!(check_ip(&l, "2001:db8::1".parse().unwrap(), t0).is_ok());
        assert!(check_ip(&l, "2001:db8::2".parse().unwrap(), t0).is_err());
        assert!(check_ip(&l, "2001:db8:0:1::1".parse().unwrap(), t0).is_ok());
    }

    #[test]
    fn forwarded_for_is_used_only_when_trusted() {
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "203.0.113.7, 198.51.100.2".parse().unwrap(),
        );
        let peer = ConnectInfo("127.0.0.1:4000".parse::<SocketAddr>().unwrap());
        assert_eq!(
            client_ip(&h, Some(&peer), true),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(&h, Some(&peer), false),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
        h.append("x-forwarded-for", "[2001:db8::5]:443".parse().unwrap());
        assert_eq!(
            client_ip(&h, Some(&peer), true),
            "2001:db8::5".parse::<IpAddr>().unwrap()
        );
        let mut bad = HeaderMap::new();
        bad.append("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(
            client_ip(&bad, Some(&peer), true),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }
}
