//! The delivery side of TLS: rustls client configurations for each kind of outbound TLS.
//!
//! * [`ClientTls::opportunistic`]: levels `may` and `encrypt`. The peer's certificate is not
//!   authenticated (RFC 7435: opportunistic security protects against passive listeners only),
//!   but the handshake itself is verified, and only TLS 1.2 and 1.3 are spoken (T8).
//! * [`ClientTls::verified_for`]: levels `verify` and stricter (T2, T3, T9). The chain must lead to
//!   a public root (webpki-roots, Mozilla's list) or to a root from
//!   `outbound.extra_trust_roots`, the certificate must be time-valid, and its subjectAltName
//!   must match the name delivery asks for.
//!
//! Failures are classified into [`TlsFailure`] so that deferrals, DSNs, logs and metrics can
//! say precisely what went wrong.

use super::dane::{self, DaneError, DaneVerifier};
use super::keys::{self, KeyError};
use super::verify::PolicyVerifier;
use crate::dns::Tlsa;
use crate::policy::NamePattern;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
use std::path::PathBuf;
use std::sync::Arc;

/// Why a TLS connection to a peer could not be used. The `Display` text is what senders read in
/// DSNs and administrators in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsFailure {
    /// The peer's EHLO reply did not offer STARTTLS.
    #[error("no STARTTLS offered")]
    NoStarttls,
    /// The peer answered STARTTLS with an error; carries its reply.
    #[error("STARTTLS refused: {0}")]
    StarttlsRefused(String),
    /// The chain does not lead to a trusted root (T2), or is otherwise invalid (bad
    /// signature, wrong purpose, revoked).
    #[error("certificate not trusted")]
    CertUntrusted,
    /// The certificate's validity has ended.
    #[error("certificate expired")]
    CertExpired,
    /// The certificate's validity has not begun.
    #[error("certificate not yet valid")]
    CertNotYetValid,
    /// No certificate name matches what the policy requires (T9); carries the name that was
    /// checked.
    #[error("certificate does not match {0}")]
    HostnameMismatch(String),
    /// The peer does not speak TLS 1.2 or 1.3 (T8).
    #[error("TLS protocol version not acceptable (TLS 1.2 or newer required)")]
    ProtocolVersion,
    /// Any other handshake error; carries its text.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// Bytes arrived after the `220` to STARTTLS, before the handshake (CVE-2021-38371 style
    /// response injection).
    #[error("server sent data after its STARTTLS reply (response injection)")]
    ResponseInjection,
    /// DANE authentication failed (RFC 7672 §3): no usable TLSA record matched the chain, or a
    /// DANE-TA(2) anchor matched but the chain to it or the name is wrong. Carries the reason
    /// ([`DaneError`]'s text: the records, the leaf's key digest).
    #[error("{0}")]
    DaneMismatch(String),
}

impl TlsFailure {
    /// A low-cardinality label for metrics (design.md, "Metrics").
    pub fn metric_label(&self) -> &'static str {
        match self {
            TlsFailure::NoStarttls | TlsFailure::StarttlsRefused(_) => "no_starttls",
            TlsFailure::CertUntrusted => "cert_untrusted",
            TlsFailure::CertExpired | TlsFailure::CertNotYetValid => "cert_expired",
            TlsFailure::HostnameMismatch(_) => "hostname_mismatch",
            TlsFailure::ProtocolVersion => "protocol_version",
            TlsFailure::Handshake(_) | TlsFailure::ResponseInjection => "handshake",
            TlsFailure::DaneMismatch(_) => "dane_mismatch",
        }
    }

    /// Classifies the error of a failed client handshake; `name` is the name that was checked.
    pub fn from_handshake_error(error: &std::io::Error, name: &str) -> TlsFailure {
        let rustls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(dane) = rustls_error.and_then(DaneError::from_rustls) {
            return TlsFailure::DaneMismatch(dane.to_string());
        }
        match rustls_error {
            Some(rustls::Error::InvalidCertificate(cert)) => match cert {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    TlsFailure::CertExpired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    TlsFailure::CertNotYetValid
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    TlsFailure::HostnameMismatch(name.to_string())
                }
                CertificateError::UnknownIssuer
                | CertificateError::BadSignature
                | CertificateError::UnhandledCriticalExtension
                | CertificateError::InvalidPurpose
                | CertificateError::Revoked => TlsFailure::CertUntrusted,
                other => TlsFailure::Handshake(format!("invalid certificate: {other:?}")),
            },
            Some(rustls::Error::PeerIncompatible(p)) => {
                let text = format!("{p:?}");
                if text.contains("Version") || text.contains("version") {
                    TlsFailure::ProtocolVersion
                } else {
                    TlsFailure::Handshake(format!("peer incompatible: {text}"))
                }
            }
            Some(rustls::Error::AlertReceived(alert)) => {
                if *alert == rustls::AlertDescription::ProtocolVersion {
                    TlsFailure::ProtocolVersion
                } else {
                    TlsFailure::Handshake(format!("peer sent alert {alert:?}"))
                }
            }
            Some(other) => TlsFailure::Handshake(other.to_string()),
            None => TlsFailure::Handshake(error.to_string()),
        }
    }
}

/// Client TLS, built once at start (loading roots is not free): the opportunistic
/// configuration, and the trust roots from which a validating configuration is made for the
/// names each connection accepts.
#[derive(Clone)]
pub struct ClientTls {
    /// For levels that do not validate (`may`, `encrypt`): accepts any certificate, TLS 1.2+
    /// only.
    pub opportunistic: Arc<ClientConfig>,
    webpki: Arc<WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientTls {
    /// `extra_roots`: PEM files whose certificates are trusted in addition to the public roots.
    pub fn new(extra_roots: &[PathBuf]) -> Result<ClientTls, KeyError> {
        let provider = super::crypto_provider();
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for path in extra_roots {
            for cert in keys::load_cert_chain(path)? {
                roots.add(cert).map_err(|e| KeyError::Rejected {
                    path: path.display().to_string(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        let rejected = |e: rustls::Error| KeyError::Rejected {
            path: "<client TLS configuration>".into(),
            reason: e.to_string(),
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| KeyError::Rejected {
                path: "<trust roots>".into(),
                reason: e.to_string(),
            })?;
        let opportunistic = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(super::PROTOCOL_VERSIONS)
            .map_err(rejected)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(UnauthenticatedPeer {
                provider: provider.clone(),
            }))
            .with_no_client_auth();
        Ok(ClientTls {
            opportunistic: Arc::new(opportunistic),
            webpki,
            provider,
        })
    }

    /// A validating configuration that accepts a certificate for any of `names` (T9).
    pub fn verified_for(&self, names: Vec<NamePattern>) -> Result<Arc<ClientConfig>, TlsFailure> {
        let verifier = PolicyVerifier::new(self.webpki.clone(), names);
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(super::PROTOCOL_VERSIONS)
            .map_err(|e| TlsFailure::Handshake(format!("client configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A configuration that authenticates the peer by the TLSA records of its MX host
    /// (RFC 7672, D1; see [`super::dane`]). `names`: the reference names a DANE-TA(2) chain
    /// must carry (RFC 7672 §3.2.2: the MX host name and the recipient domain), and with
    /// `pkix` the names the PKIX check uses; `pkix`: also require the public-root validation
    /// (for a listed domain: DANE only ever adds to what `verify` demands, T2, T9).
    ///
    /// `tlsa` should be the [`dane::usable`] records; if none of them is usable this is an
    /// error, not a configuration that accepts anything: a TLSA RRset without usable records
    /// calls for unauthenticated TLS (RFC 7672 §2.2), which is [`ClientTls::opportunistic`]
    /// with STARTTLS required — a decision for the caller.
    pub fn dane_for(
        &self,
        tlsa: Vec<Tlsa>,
        names: Vec<NamePattern>,
        pkix: bool,
    ) -> Result<Arc<ClientConfig>, TlsFailure> {
        let usable = dane::usable(&tlsa);
        if usable.is_empty() {
            return Err(TlsFailure::DaneMismatch(format!(
                "none of the {} TLSA record(s) is usable (RFC 7672 §3.1)",
                tlsa.len()
            )));
        }
        let verifier = DaneVerifier::new(
            &usable,
            names,
            pkix.then(|| self.webpki.clone()),
            self.provider.clone(),
        );
        let config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(super::PROTOCOL_VERSIONS)
            .map_err(|e| TlsFailure::Handshake(format!("client configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// Accepts any certificate but still checks the handshake signatures, so the session key is
/// bound to the key in the certificate presented (only authentication is skipped).
#[derive(Debug)]
struct UnauthenticatedPeer {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for UnauthenticatedPeer {
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

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
