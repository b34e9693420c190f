//! TLS trust for outbound HTTPS (JWKS endpoints now; token endpoints and compartment lookups
//! later): rustls with the ring provider, configured as skip / public roots / custom CA bundle.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{TlsConfig, TlsMode};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read CA bundle {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CA bundle {file} holds no usable PEM certificate")]
    NoCertificates { file: String },
    #[error("CA bundle {file}: {message}")]
    Invalid { file: String, message: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM CA bundle into a root store.
pub fn roots_from_pem(file: &str, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsError::Invalid {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsError::Invalid {
            file: file.to_string(),
            message: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificates {
            file: file.to_string(),
        });
    }
    Ok(roots)
}

/// Builds the client config for one TLS setting. `dir` is the config directory that holds
/// the CA files.
pub fn client_config(tls: &TlsConfig, dir: &Path) -> Result<ClientConfig, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match tls.mode {
        TlsMode::SkipVerification => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth(),
        TlsMode::DefaultBundle => {
            let roots = RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsMode::CustomBundle => {
            let file = tls.ca_file.as_deref().unwrap_or_default();
            let pem = std::fs::read(dir.join(file)).map_err(|source| TlsError::Read {
                file: file.to_string(),
                source,
            })?;
            builder
                .with_root_certificates(roots_from_pem(file, &pem)?)
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// `SkipVerification`: accepts any certificate but still checks handshake signatures, so the
/// connection is encrypted (just not authenticated). For development only.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
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

/// An HTTP client that uses exactly this trust, with bounded timeouts and no redirects (a
/// redirect could move a key fetch to a host the trust setting was not meant for).
pub fn http_client(tls: &TlsConfig, dir: &Path) -> Result<reqwest::Client, TlsError> {
    let config = client_config(tls, dir)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| TlsError::Invalid {
            file: String::new(),
            message: e.to_string(),
        })
}
