//! A throw-away certificate authority for local TLS servers: a CA, a server certificate for
//! 127.0.0.1 / localhost signed by it, client certificates on demand (APNs certificate auth), and
//! the rustls server configuration that presents the server certificate.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::SupportError;

/// A test CA with a server certificate for 127.0.0.1 / localhost.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate, for the client's `ca_file`.
    pub ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: Vec<u8>,
}

/// A certificate and key as files on disk would hold them.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: Vec<u8>,
}

impl Pki {
    /// A fresh CA named `ca_name` and its server certificate.
    pub fn generate(ca_name: &str) -> Result<Self, SupportError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn(ca_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_pem = ca.pem();

        let server_key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        params.distinguished_name = dn("localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = params.signed_by(&server_key, &ca)?;
        Ok(Self {
            ca,
            ca_pem,
            server_cert: server_cert.der().clone(),
            server_key: server_key.serialize_der(),
        })
    }

    /// The tests' CA; generation only fails on a broken crypto backend.
    pub fn new() -> Self {
        Self::generate("pushgate test CA").expect("test CA")
    }

    /// A client certificate (APNs certificate auth) named `cn`, valid between the given dates
    /// (year, month, day).
    pub fn client_cert(
        &self,
        cn: &str,
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        }
    }

    /// A client certificate valid from 2020 to 2099.
    pub fn valid_client_cert(&self, cn: &str) -> Issued {
        self.client_cert(cn, (2020, 1, 1), (2099, 12, 31))
    }

    /// A server configuration presenting the server certificate, offering `alpn`, and, with
    /// `client_auth`, requiring a client certificate signed by this CA.
    pub fn server_config(
        &self,
        client_auth: bool,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ServerConfig>, SupportError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = if client_auth {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.ca.der().clone())?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(
            vec![self.server_cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone())),
        )?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}
