//! The rustls side of [`super::connect`]: one client configuration per
//! `sslmode`, on the `ring` provider (no OpenSSL).
//!
//! - `prefer`, `require` (without roots): encrypted, certificate not
//!   checked ([`NameUnchecked`] without roots): libpq's meaning, protection
//!   from passive eavesdropping only. The handshake's signatures are still
//!   verified, so the session is bound to the key the server presented.
//! - `verify-ca`: the chain must lead to a trusted root; the host name is
//!   not checked ([`NameUnchecked`] with roots).
//! - `verify-full`: rustls's standard verifier, chain and host name (an IP
//!   address is matched against the certificate's IP addresses).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{WebPkiServerVerifier, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::connect::{RootCerts, SslMode, TlsSettings};

/// The client configuration `settings` call for; root certificates are
/// read here.
pub(crate) fn client_config(settings: &TlsSettings) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, &settings.roots) {
        (SslMode::Disable | SslMode::Prefer | SslMode::Require, _) | (_, None) => {
            Arc::new(NameUnchecked {
                roots: None,
                algorithms,
            })
        }
        (SslMode::VerifyCa, Some(roots)) => Arc::new(NameUnchecked {
            roots: Some(load_roots(roots)?),
            algorithms,
        }),
        (SslMode::VerifyFull, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(Arc::new(load_roots(roots)?), provider)
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn load_roots(roots: &RootCerts) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match roots {
        RootCerts::File(path) => {
            let shown = path.display();
            let certificates = CertificateDer::pem_file_iter(path)
                .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("sslrootcert {shown}: {}", pem_problem(&e)))?;
            if certificates.is_empty() {
                return Err(format!("sslrootcert {shown}: no PEM certificate in it"));
            }
            for certificate in certificates {
                store
                    .add(certificate)
                    .map_err(|e| format!("sslrootcert {shown}: {e}"))?;
            }
        }
        RootCerts::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(
                    "sslrootcert=system: the system has no trusted root certificates".to_owned(),
                );
            }
        }
    }
    Ok(store)
}

/// The reading error of a PEM file, in words (the I/O error's own text).
fn pem_problem(error: &rustls::pki_types::pem::Error) -> String {
    match error {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not a PEM file ({other:?})"),
    }
}

/// `prefer` and `require` (no roots: any certificate) and `verify-ca` (the
/// chain must lead to one of `roots`); never the host name.
#[derive(Debug)]
struct NameUnchecked {
    roots: Option<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NameUnchecked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let certificate = ParsedCertificate::try_from(end_entity)?;
            verify_server_cert_signed_by_trust_anchor(
                &certificate,
                roots,
                intermediates,
                now,
                self.algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
