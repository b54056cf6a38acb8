//! The material of APNs authentication, parsed and checked before the transport uses it: the
//! token-based signing key (.p8) or the certificate-based identity (.p12, or PEM certificate +
//! key). The provider token signed with the .p8 key is jwt.rs's job.
//!
//! Why it exists: a credential problem must surface as a clear message when it is configured or
//! uploaded (wrong .p12 password, expired certificate, key that does not belong to the
//! certificate, a .p8 that is not an ES256 key), not as an opaque TLS or 403 failure at the first
//! push. Keychain exports are often legacy RC2-40 PKCS#12, which OpenSSL 3 refuses; p12-keystore
//! reads them in pure Rust. No message or `Debug` output ever contains key material.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use p256::pkcs8::DecodePrivateKey as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Validated credentials, ready for the transport.
#[derive(Clone)]
pub enum Credentials {
    /// Token auth: a PKCS#8 P-256 key (the .p8 Apple hands out), its key id and the team id.
    Token {
        key_pem: String,
        key_id: String,
        team_id: String,
    },
    /// Certificate auth: the leaf certificate (+ chain) and its private key, both PEM.
    Certificate { cert_pem: String, key_pem: String },
}

impl fmt::Debug for Credentials {
    /// Names the credential but never shows a key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Token {
                key_id, team_id, ..
            } => f
                .debug_struct("Token")
                .field("key_id", key_id)
                .field("team_id", team_id)
                .finish_non_exhaustive(),
            Credentials::Certificate { .. } => {
                f.debug_struct("Certificate").finish_non_exhaustive()
            }
        }
    }
}

/// What an operator needs to know about the credentials in use (admin command, logs, expiry
/// watch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialInfo {
    /// `"token"` or `"certificate"`.
    pub kind: &'static str,
    /// The certificate's subject, or `key <id>, team <id>` for token auth.
    pub subject: Option<String>,
    /// When the certificate expires; `None` for token auth (.p8 keys do not expire).
    pub not_after: Option<SystemTime>,
}

/// Why credentials were refused. Messages never contain key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("unreadable credentials: {0}")]
    Unreadable(String),
    #[error("wrong password for the PKCS#12 bundle")]
    WrongPassword,
    #[error("the key is not a P-256 private key in PKCS#8 PEM (an APNs .p8 key is)")]
    NotP256Key,
    #[error("invalid {what}: {message}")]
    InvalidIdentifier { what: &'static str, message: String },
    #[error("the certificate expired on {not_after}")]
    Expired { not_after: String },
    #[error("the certificate is not valid before {not_before}")]
    NotYetValid { not_before: String },
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
}

impl Credentials {
    /// Reads a PKCS#12 bundle: modern (AES) and legacy (RC2-40 / 3DES) encryption alike.
    pub fn from_p12(der: &[u8], password: &str) -> Result<Self, CredentialError> {
        use p12_keystore::{KeyStore, Pkcs12ImportPolicy, error::Error as P12Error};
        let store = KeyStore::from_pkcs12(der, password, Pkcs12ImportPolicy::Relaxed).map_err(
            |e| match e {
                P12Error::MacError(_) | P12Error::UnpadError => CredentialError::WrongPassword,
                other => {
                    CredentialError::Unreadable(format!("not a usable PKCS#12 bundle: {other}"))
                }
            },
        )?;
        let (_, chain) = store.private_key_chain().ok_or_else(|| {
            CredentialError::Unreadable("the PKCS#12 bundle holds no private key".to_owned())
        })?;
        if chain.certs().is_empty() {
            return Err(CredentialError::Unreadable(
                "the PKCS#12 bundle holds no certificate for its private key".to_owned(),
            ));
        }
        let cert_pem: String = chain
            .certs()
            .iter()
            .map(|c| to_pem("CERTIFICATE", c.as_der()))
            .collect();
        Ok(Credentials::Certificate {
            cert_pem,
            key_pem: to_pem("PRIVATE KEY", chain.key().as_der()),
        })
    }

    /// Takes a PEM certificate (leaf first, then any chain) and its PEM private key (PKCS#8,
    /// PKCS#1 or SEC1).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CredentialError> {
        let certs = parse_certs(cert_pem)?;
        let key = parse_key(key_pem)?;
        Ok(Credentials::Certificate {
            cert_pem: certs
                .iter()
                .map(|c| to_pem("CERTIFICATE", c.as_ref()))
                .collect(),
            key_pem: key_to_pem(&key),
        })
    }

    /// Takes the .p8 signing key (PKCS#8 PEM, P-256) with its 10-character key id and team id.
    pub fn from_p8(p8_pem: &str, key_id: &str, team_id: &str) -> Result<Self, CredentialError> {
        let key = p256::SecretKey::from_pkcs8_pem(p8_pem.trim())
            .map_err(|_| CredentialError::NotP256Key)?;
        check_identifier("key_id", key_id)?;
        check_identifier("team_id", team_id)?;
        let key_pem = p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(&key, Default::default())
            .map_err(|_| CredentialError::NotP256Key)?;
        Ok(Credentials::Token {
            key_pem: key_pem.to_string(),
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
        })
    }

    /// Parses, checks the validity period against `now`, and that the key matches the
    /// certificate.
    pub fn validate(&self, now: SystemTime) -> Result<CredentialInfo, CredentialError> {
        match self {
            Credentials::Token {
                key_pem,
                key_id,
                team_id,
            } => {
                p256::SecretKey::from_pkcs8_pem(key_pem)
                    .map_err(|_| CredentialError::NotP256Key)?;
                check_identifier("key_id", key_id)?;
                check_identifier("team_id", team_id)?;
                Ok(CredentialInfo {
                    kind: "token",
                    subject: Some(format!("key {key_id}, team {team_id}")),
                    not_after: None,
                })
            }
            Credentials::Certificate { cert_pem, key_pem } => {
                let certs = parse_certs(cert_pem)?;
                let key = parse_key(key_pem)?;
                let (_, leaf) = x509_parser::parse_x509_certificate(certs[0].as_ref())
                    .map_err(|e| CredentialError::Unreadable(format!("bad certificate: {e}")))?;
                let validity = leaf.validity();
                let not_before = epoch_time(validity.not_before.timestamp());
                let not_after = epoch_time(validity.not_after.timestamp());
                if now < not_before {
                    return Err(CredentialError::NotYetValid {
                        not_before: validity.not_before.to_string(),
                    });
                }
                if now > not_after {
                    return Err(CredentialError::Expired {
                        not_after: validity.not_after.to_string(),
                    });
                }
                let subject = leaf.subject().to_string();
                keys_match(certs, key)?;
                Ok(CredentialInfo {
                    kind: "certificate",
                    subject: Some(subject),
                    not_after: Some(not_after),
                })
            }
        }
    }

    /// The PEM the TLS client identity is built from: key first, then the certificates.
    pub(crate) fn identity_pem(&self) -> Option<String> {
        match self {
            Credentials::Certificate { cert_pem, key_pem } => Some(format!("{key_pem}{cert_pem}")),
            Credentials::Token { .. } => None,
        }
    }
}

/// Key and team ids go into the JWT header and claims; Apple's are short alphanumeric strings.
fn check_identifier(what: &'static str, value: &str) -> Result<(), CredentialError> {
    if value.is_empty() || value.len() > 64 || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(CredentialError::InvalidIdentifier {
            what,
            message: "must be 1 to 64 ASCII letters or digits (Apple's are 10 characters)"
                .to_owned(),
        });
    }
    Ok(())
}

fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, CredentialError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CredentialError::Unreadable(format!("bad certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(CredentialError::Unreadable(
            "no CERTIFICATE block in the certificate PEM".to_owned(),
        ));
    }
    Ok(certs)
}

fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, CredentialError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
        CredentialError::Unreadable(
            "no private key (PKCS#8, PKCS#1 or SEC1 PEM) in the key PEM".to_owned(),
        )
    })
}

fn key_to_pem(key: &PrivateKeyDer<'_>) -> String {
    let label = match key {
        PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
        PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
        _ => "PRIVATE KEY",
    };
    to_pem(label, key.secret_der())
}

/// Whether `key` is the private half of the leaf certificate's public key (RSA and ECDSA alike),
/// through the same rustls provider the TLS client uses.
fn keys_match(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(), CredentialError> {
    let provider = rustls::crypto::ring::default_provider();
    match rustls::sign::CertifiedKey::from_der(certs, key, &provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(CredentialError::KeyMismatch)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Err(
            CredentialError::Unreadable("cannot compare the key with the certificate".to_owned()),
        ),
        Err(e) => Err(CredentialError::Unreadable(format!(
            "unsupported private key: {e}"
        ))),
    }
}

/// `secs` since the epoch; a time the platform cannot represent is the epoch itself (X.509 times
/// end in year 9999, so only a malformed certificate gets there).
fn epoch_time(secs: i64) -> SystemTime {
    let offset = Duration::from_secs(secs.unsigned_abs());
    let at = if secs >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    at.unwrap_or(UNIX_EPOCH)
}

/// Standard PEM armour with 64-character lines.
fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_times_never_panic() {
        assert_eq!(epoch_time(86_400), UNIX_EPOCH + Duration::from_secs(86_400));
        assert_eq!(epoch_time(-60), UNIX_EPOCH - Duration::from_secs(60));
        let _ = epoch_time(i64::MIN);
        let _ = epoch_time(i64::MAX);
    }

    #[test]
    fn pem_armour_wraps_at_64() {
        let pem = to_pem("X", &[0u8; 100]);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines[0], "-----BEGIN X-----");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines.last(), Some(&"-----END X-----"));
    }

    #[test]
    fn debug_hides_keys() {
        let c = Credentials::Certificate {
            cert_pem: "CERTDATA".into(),
            key_pem: "KEYDATA".into(),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("KEYDATA") && !shown.contains("CERTDATA"),
            "{shown}"
        );
        let t = Credentials::Token {
            key_pem: "SECRET".into(),
            key_id: "ABC123DEFG".into(),
            team_id: "TEAM123456".into(),
        };
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("SECRET") && shown.contains("ABC123DEFG"),
            "{shown}"
        );
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("key_id", "ABC123DEFG").is_ok());
        for bad in ["", "has space", "quote\"", &"A".repeat(65)] {
            assert!(check_identifier("key_id", bad).is_err(), "{bad:?}");
        }
    }
}
