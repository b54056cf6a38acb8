//! The APNs connection pool: `pool_size` HTTP/2-over-TLS clients used round-robin.
//!
//! Why it exists: APNs wants a few long-lived connections, not a connection per push (rapid
//! reconnects look like an attack) and not everything on one connection. reqwest keeps one
//! HTTP/2 connection per host per client, so the pool is several clients. Each speaks HTTP/2 only
//! (ALPN `h2`, so a cold client opens one connection, not one per concurrent request), sends PINGs
//! on idle connections so dead ones are noticed, and never times out an idle connection itself.
//! A connection that breaks is replaced on the next request through that client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How one client is set up.
#[derive(Clone)]
pub(crate) struct ClientSettings {
    pub extra_roots: Vec<reqwest::Certificate>,
    pub connect_timeout: Duration,
    /// HTTP/2 PING interval on idle connections; `None` sends no PINGs.
    pub ping_interval: Option<Duration>,
}

pub(crate) struct Pool {
    clients: Vec<reqwest::Client>,
    next: AtomicUsize,
}

impl Pool {
    /// `identity` is the TLS client certificate (PEM key + chain) for certificate auth.
    pub(crate) fn build(
        size: usize,
        settings: &ClientSettings,
        identity_pem: Option<&str>,
    ) -> Result<Self, String> {
        let identity = match identity_pem {
            Some(pem) => Some(
                reqwest::Identity::from_pem(pem.as_bytes())
                    .map_err(|e| format!("unusable client certificate: {e}"))?,
            ),
            None => None,
        };
        let clients = (0..size.max(1))
            .map(|_| {
                let mut builder = crate::transport::h2_client_builder(
                    settings.connect_timeout,
                    &settings.extra_roots,
                    settings.ping_interval,
                );
                if let Some(identity) = &identity {
                    builder = builder.identity(identity.clone());
                }
                builder
                    .build()
                    .map_err(|e| format!("cannot build the HTTP/2 client: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            clients,
            next: AtomicUsize::new(0),
        })
    }

    /// The slot for the next delivery (round-robin).
    pub(crate) fn next_slot(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len()
    }

    /// The client in `slot`, wrapping around.
    pub(crate) fn client(&self, slot: usize) -> &reqwest::Client {
        &self.clients[slot % self.clients.len()]
    }
}
