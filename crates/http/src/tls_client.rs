//! The client side of the API's TLS, for the CLI: trust a CA file or one pinned certificate,
//! and optionally present a client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::tls::{fingerprint, load_roots, provider, TlsError};

pub use rustls::ClientConfig;

/// How the client decides the server is the right one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// A certificate chain to one of the CAs in this PEM file, for the name connected to.
    CaFile(std::path::PathBuf),
    /// The server's certificate has exactly this SHA-256 (lowercase hex).
    Pin(String),
}

/// A `--pin` value: 64 hex digits, colons allowed (as `openssl x509 -fingerprint` prints).
pub fn parse_pin(text: &str) -> Result<String, TlsError> {
    let hex: String = text
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TlsError(format!(
            "{text:?} is not a SHA-256 fingerprint (64 hex digits)"
        )));
    }
    Ok(hex)
}

/// What `--pin` would be for the first certificate of a PEM file.
pub fn file_fingerprint(path: &Path) -> Result<String, TlsError> {
    let der = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?
        .next()
        .ok_or_else(|| TlsError(format!("{}: no PEM CERTIFICATE block", path.display())))?
        .map_err(|e| TlsError(format!("{}: {e}", path.display())))?;
    Ok(fingerprint(&der))
}

/// The rustls client config for `trust`, with `identity` (certificate chain file, key file)
/// presented when the server asks for a client certificate.
pub fn client_config(
    trust: &ServerTrust,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError(format!("TLS settings: {e}")))?;
    let builder = match trust {
        ServerTrust::CaFile(path) => builder.with_root_certificates(load_roots(path)?),
        ServerTrust::Pin(sha256) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                sha256: sha256.clone(),
                provider: provider(),
            })),
    };
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .map_err(|e| TlsError(format!("client certificate {}: {e}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| TlsError(format!("client key {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError(format!("client certificate: {e}")))
        }
    }
}

/// Accepts exactly one server certificate, by its SHA-256; the handshake's signatures are
/// still verified against it (so the server must hold its key).
#[derive(Debug)]
struct PinnedCert {
    sha256: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate has SHA-256 {got}, not the pinned {}",
                self.sha256
            )))
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_64_hex_digits_with_or_without_colons() {
        let plain = "ab".repeat(32);
        assert_eq!(parse_pin(&plain).unwrap(), plain);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&colons).unwrap(), plain);
        assert!(parse_pin("abcd").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }
}
