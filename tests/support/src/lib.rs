//! Local stand-ins for the push services, shared by pushgate's tests and its benchmark: APNs
//! ([`apns`], HTTP/2 over TLS), FCM HTTP v1 with its OAuth token endpoint ([`fcm`]), the legacy
//! FCM XMPP connection server ([`ccs`]), WebPush push resources ([`webpush`] with RFC 8291
//! decryption and VAPID checks; [`http1`], a lean counting one; [`status`], one that answers what
//! the test sets and can hold a push in flight; [`serve`], what the HTTP ones share), the test CA
//! they present
//! ([`pki`]), and the provider tests' common fixtures ([`fixtures`]).
//!
//! Each mock checks what it receives from the public specifications, independently of the
//! provider code, so the tests compare pushgate's wire format with the services' rather than a
//! library with itself. Not published; test and benchmark code only.

pub mod apns;
pub mod ccs;
pub mod fcm;
pub mod fixtures;
pub mod http1;
pub mod jwt;
pub mod pki;
pub mod serve;
pub mod status;
pub mod webpush;

/// Why a stand-in could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("openssl {args}: {detail}")]
    Openssl { args: String, detail: String },
    #[error("a temporary path is not UTF-8")]
    NonUtf8Path,
}

/// Makes ring the process's rustls provider (several backends may be compiled in); a second
/// call is a no-op.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
