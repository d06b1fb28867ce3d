//! TLS for the web endpoint: a rustls server configuration built from the exporter-toolkit
//! `tls_server_config` (ring provider), client certificate policies with Go's five names, and
//! Go's courtesy answer to plain HTTP sent to the TLS port.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme, SupportedCipherSuite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::web_config::{CipherSuite, ClientAuth, Curve, TlsSettings, TlsVersion};

/// Build the rustls configuration, reading the certificate, key and client CA now.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(provider(settings));
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&settings.cert.read("cert_file")?)
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow!("cert_file {:?}: not PEM certificates: {e}", settings.cert))?;
    if chain.is_empty() {
        bail!("cert_file {:?}: no certificate in it", settings.cert);
    }
    let key = PrivateKeyDer::from_pem_slice(&settings.key.read("key_file")?)
        .map_err(|e| anyhow!("key_file {:?}: no PEM private key in it: {e}", settings.key))?;

    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if settings.min_version <= TlsVersion::Tls12 && settings.max_version >= TlsVersion::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if settings.max_version >= TlsVersion::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .context("the configured TLS versions, cipher suites and curves have nothing in common")?;
    let verifier = client_verifier(settings, &provider)?;
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| anyhow!("cert_file {:?} and key_file {:?}: {e}", settings.cert, settings.key))?;
    config.ignore_client_order = settings.prefer_server_cipher_suites;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn provider(settings: &TlsSettings) -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    if !settings.cipher_suites.is_empty() {
        // TLS 1.3 suites are not configurable (as in Go); the TLS 1.2 ones in the given order.
        let mut suites: Vec<SupportedCipherSuite> =
            provider.cipher_suites.iter().copied().filter(|s| s.version() == &rustls::version::TLS13).collect();
        suites.extend(settings.cipher_suites.iter().map(|s| tls12_suite(*s)));
        provider.cipher_suites = suites;
    }
    if !settings.curves.is_empty() {
        use rustls::crypto::ring::kx_group;
        provider.kx_groups = settings
            .curves
            .iter()
            .map(|c| match c {
                Curve::X25519 => kx_group::X25519,
                Curve::CurveP256 => kx_group::SECP256R1,
                Curve::CurveP384 => kx_group::SECP384R1,
            })
            .collect();
    }
    provider
}

fn tls12_suite(s: CipherSuite) -> SupportedCipherSuite {
    use rustls::crypto::ring::cipher_suite as cs;
    match s {
        CipherSuite::EcdsaAes128Gcm => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::EcdsaAes256Gcm => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::EcdsaChacha20 => cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        CipherSuite::RsaAes128Gcm => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::RsaAes256Gcm => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::RsaChacha20 => cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    }
}

fn client_verifier(settings: &TlsSettings, provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ClientCertVerifier>> {
    let verified = |optional: bool| -> Result<Arc<dyn ClientCertVerifier>> {
        let Some(ca) = &settings.client_ca else { bail!("client_auth_type {:?} needs a client CA", settings.client_auth) };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&ca.read("client_ca_file")?) {
            let cert = cert.map_err(|e| anyhow!("client_ca_file {ca:?}: not PEM certificates: {e}"))?;
            roots.add(cert).map_err(|e| anyhow!("client_ca_file {ca:?}: {e}"))?;
        }
        if roots.is_empty() {
            bail!("client_ca_file {ca:?}: no certificate in it");
        }
        let mut b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if optional {
            b = b.allow_unauthenticated();
        }
        b.build().map_err(|e| anyhow!("client_ca_file {ca:?}: {e}"))
    };
    let any = |mandatory: bool| -> Arc<dyn ClientCertVerifier> {
        Arc::new(AnyClientCert { mandatory, algorithms: provider.signature_verification_algorithms })
    };
    Ok(match settings.client_auth {
        ClientAuth::NoClientCert => WebPkiClientVerifier::no_client_auth(),
        ClientAuth::RequestClientCert => any(false),
        ClientAuth::RequireAnyClientCert => any(true),
        ClientAuth::VerifyClientCertIfGiven => verified(true)?,
        ClientAuth::RequireAndVerifyClientCert => verified(false)?,
    })
}

/// Go's `RequestClientCert` / `RequireAnyClientCert`: a certificate is asked for (and, when
/// mandatory, required) but not checked against any CA. The client still has to prove it holds
/// the certificate's key (the handshake signature is verified).
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(&self, _: &CertificateDer<'_>, _: &[CertificateDer<'_>], _: UnixTime) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Whether the first byte on the connection is that of a plain HTTP request (a method name)
/// rather than a TLS handshake record (0x16).
pub async fn is_plain_http(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_uppercase())
}

/// Answer plain HTTP on the TLS port as Go's net/http does, then close without a reset (the
/// request is read and dropped first).
pub async fn answer_plain_http(mut stream: TcpStream) {
    const ANSWER: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n\
Client sent an HTTP request to an HTTPS server.\n";
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        // Read what the client has sent so far, so that closing does not reset the connection.
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
        stream.write_all(ANSWER).await?;
        stream.shutdown().await?;
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}
