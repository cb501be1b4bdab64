//! TLS with the ring provider only (aws-lc-rs would need cmake), for test servers and their
//! clients: a client that accepts any certificate (`--insecure`) and a server with a
//! self-signed certificate made at start-up (`ws-echo --tls-listen`).
//!
//! The client accepts any certificate chain for any name, but the server must still prove it
//! holds the certificate's key, because handshake signatures are verified.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use thiserror::Error;

/// The only application protocol offered and accepted.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Why the server side could not be set up.
#[derive(Debug, Error)]
pub enum ServerTlsError {
    /// rcgen could not make the certificate.
    #[error("generating a self-signed certificate for {names:?}")]
    Certificate {
        /// The subject alternative names asked for.
        names: Vec<String>,
        /// Why it failed.
        #[source]
        source: rcgen::Error,
    },
    /// The ring provider offers none of the safe default protocol versions.
    #[error("configuring TLS protocol versions")]
    ProtocolVersions(#[source] rustls::Error),
    /// rustls refused the certificate or its key.
    #[error("loading the self-signed certificate")]
    LoadCertificate(#[source] rustls::Error),
}

/// Client settings that accept any server certificate.
pub fn insecure_client_config() -> Result<ClientConfig, rustls::Error> {
    let provider = ring_provider();
    let verifier = Arc::new(AcceptAnyCertificate {
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(config)
}

/// Server settings with a new self-signed certificate for `cert_names` (IP addresses, also
/// bracketed IPv6 ones such as `[::1]`, become IP SANs).
pub fn self_signed_server_config(cert_names: &[String]) -> Result<ServerConfig, ServerTlsError> {
    let names: Vec<String> = cert_names.iter().map(|name| san_name(name)).collect();
    let certified = rcgen::generate_simple_self_signed(names.clone())
        .map_err(|source| ServerTlsError::Certificate { names, source })?;
    let cert = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut config = ServerConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(ServerTlsError::ProtocolVersions)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(ServerTlsError::LoadCertificate)?;
    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    Ok(config)
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Normalises a certificate name: `[::1]` becomes `::1` so that it is used as an IP SAN
/// (rcgen turns every name that parses as an IP address into an IP SAN).
fn san_name(name: &str) -> String {
    let unbracketed = name.strip_prefix('[').and_then(|n| n.strip_suffix(']'));
    match unbracketed.map(str::parse::<IpAddr>) {
        Some(Ok(ip)) => ip.to_string(),
        _ => name.to_owned(),
    }
}

/// Trusts any certificate chain for any name; checks handshake signatures.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
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
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
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
    fn bracketed_ipv6_cert_names_become_addresses() {
        assert_eq!(san_name("[::1]"), "::1");
        assert_eq!(san_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(san_name("localhost"), "localhost");
    }

    #[test]
    fn self_signed_server_config_builds() {
        let names = ["localhost", "127.0.0.1", "[::1]"].map(String::from);
        self_signed_server_config(&names).unwrap();
    }

    #[test]
    fn insecure_client_config_builds() {
        insecure_client_config().unwrap();
    }
}
