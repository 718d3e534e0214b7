//! TLS settings (rustls) for `wss://` clients and TLS servers.

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

/// Which certificates a `wss://` client trusts. Default: the Mozilla roots compiled in
/// (webpki-roots).
#[derive(Clone, Default)]
pub struct TlsConfig {
    roots: Roots,
    extra_ca: Vec<CertificateDer<'static>>,
    custom: Option<Arc<ClientConfig>>,
}

#[derive(Clone, Default)]
enum Roots {
    #[default]
    Webpki,
    Native,
    None,
    Insecure,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("extra_ca", &self.extra_ca.len())
            .field("custom", &self.custom.is_some())
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Trust the operating system's certificate store instead of the compiled-in roots.
    pub fn native_roots(mut self) -> Self {
        self.roots = Roots::Native;
        self
    }

    /// Trust only the CAs added with [`add_ca_pem`](Self::add_ca_pem) (for a private CA).
    pub fn only_added_cas(mut self) -> Self {
        self.roots = Roots::None;
        self
    }

    /// Also trust the CA certificates in this PEM data.
    pub fn add_ca_pem(mut self, pem: &[u8]) -> io::Result<Self> {
        for cert in CertificateDer::pem_slice_iter(pem) {
            self.extra_ca.push(cert.map_err(invalid)?);
        }
        if self.extra_ca.is_empty() {
            return Err(invalid("no certificate found in PEM data"));
        }
        Ok(self)
    }

    /// Also trust the CA certificates in this PEM file.
    pub fn add_ca_file(self, path: impl AsRef<Path>) -> io::Result<Self> {
        let pem = std::fs::read(path)?;
        self.add_ca_pem(&pem)
    }

    /// Accept any server certificate. **Dangerous:** anyone on the path can impersonate the
    /// server. Only for tests and an explicit user opt-out (the CLI's `--insecure`).
    pub fn danger_accept_invalid_certs(mut self) -> Self {
        self.roots = Roots::Insecure;
        self
    }

    /// Use a rustls client configuration built elsewhere, as it is.
    pub fn from_rustls(config: Arc<ClientConfig>) -> Self {
        Self {
            custom: Some(config),
            ..Self::default()
        }
    }

    /// The rustls configuration for these settings. The default one is built once per process.
    pub(crate) fn client_config(&self) -> io::Result<Arc<ClientConfig>> {
        if let Some(c) = &self.custom {
            return Ok(c.clone());
        }
        if matches!(self.roots, Roots::Webpki) && self.extra_ca.is_empty() {
            static DEFAULT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
            if let Some(c) = DEFAULT.get() {
                return Ok(c.clone());
            }
            let c = self.build()?;
            return Ok(DEFAULT.get_or_init(|| c).clone());
        }
        self.build()
    }

    fn build(&self) -> io::Result<Arc<ClientConfig>> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(invalid)?;
        let mut config = if let Roots::Insecure = self.roots {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider())))
                .with_no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            match self.roots {
                Roots::Webpki => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
                Roots::Native => {
                    let found = rustls_native_certs::load_native_certs();
                    for cert in found.certs {
                        // Skip certificates the store holds but rustls cannot parse.
                        let _ = roots.add(cert);
                    }
                }
                Roots::None | Roots::Insecure => {}
            }
            for ca in &self.extra_ca {
                roots.add(ca.clone()).map_err(invalid)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Builds a TLS server configuration from a PEM certificate chain and private key.
pub fn server_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    if certs.is_empty() {
        return Err(invalid("no certificate found in PEM data"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(invalid)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(invalid)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(invalid)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Builds a TLS server configuration from PEM files.
pub fn server_config_from_pem_files(
    cert: impl AsRef<Path>,
    key: impl AsRef<Path>,
) -> io::Result<Arc<ServerConfig>> {
    server_config_from_pem(&std::fs::read(cert)?, &std::fs::read(key)?)
}

pub(crate) fn server_name(host: &str) -> io::Result<ServerName<'static>> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(invalid)
}

#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
