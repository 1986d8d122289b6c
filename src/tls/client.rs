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
use super::resumption::{ClientConfigs, TrustPolicy};
use super::verify::{PolicyVerifier, PresentedChain};
use crate::dns::Tlsa;
use crate::policy::NamePattern;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct, PeerIncompatible,
    RootCertStore,
};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why a TLS connection to a peer could not be used. The `Display` text is what senders read in
/// DSNs and administrators in logs: plain words, never a Rust `Debug` rendering.
///
/// Everything from sending `STARTTLS` up to and including the first reply after the handshake
/// belongs to the TLS attempt (issue 12 item 4): a peer that closes, stalls or sends an alert
/// anywhere in there fails TLS, not "the connection", so that a listed domain gets the TLS
/// deferral, warning, audit entry and metric (T3, T6) and `may` gets its plaintext retry.
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
    /// Any other handshake error; carries its description in words.
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
    /// No reply to `STARTTLS` within the command timeout (or the server did not take the
    /// command in that time).
    #[error("no reply to STARTTLS within {}", humantime::format_duration(*.0))]
    StarttlsTimeout(Duration),
    /// The connection broke between sending `STARTTLS` and its reply; carries how.
    #[error("connection lost at STARTTLS: {0}")]
    StarttlsLost(String),
    /// The server said `220` to STARTTLS and then closed the connection instead of completing
    /// a handshake.
    #[error("server closed the connection after its 220 to STARTTLS")]
    ClosedAfterStarttls,
    /// The handshake did not finish within the command timeout.
    #[error("TLS handshake not finished within {}", humantime::format_duration(*.0))]
    HandshakeTimeout(Duration),
    /// The server demands a client certificate (tlsgate presents none). In TLS 1.3 the alert
    /// arrives with the first read after the client's side of the handshake is done.
    #[error("the server demands a client certificate (TLS alert certificate_required)")]
    ClientCertificateRequired,
    /// An intermediate certificate of the chain has expired while the server's own is valid.
    #[error("intermediate certificate {subject} expired on {not_after}")]
    IntermediateExpired {
        /// The intermediate's subject DN.
        subject: String,
        /// Its end of validity (RFC 2822 date).
        not_after: String,
    },
    /// An intermediate certificate of the chain is not valid yet.
    #[error("intermediate certificate {subject} not valid before {not_before}")]
    IntermediateNotYetValid {
        /// The intermediate's subject DN.
        subject: String,
        /// Its start of validity (RFC 2822 date).
        not_before: String,
    },
    /// The handshake finished but the session failed before the server's first reply over it
    /// (its EHLO reply): an alert, a close, a reset or silence; carries which, in words.
    #[error("TLS session failed before the first reply after the handshake: {0}")]
    AfterHandshake(String),
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
    /// A low-cardinality label for metrics (design.md, "Metrics"). Every label is registered at
    /// start by `metrics.rs` ([`TlsFailure::METRIC_LABELS`]).
    pub fn metric_label(&self) -> &'static str {
        match self {
            TlsFailure::NoStarttls | TlsFailure::StarttlsRefused(_) => "no_starttls",
            TlsFailure::CertUntrusted => "cert_untrusted",
            TlsFailure::CertExpired
            | TlsFailure::CertNotYetValid
            | TlsFailure::IntermediateExpired { .. }
            | TlsFailure::IntermediateNotYetValid { .. } => "cert_expired",
            TlsFailure::HostnameMismatch(_) => "hostname_mismatch",
            TlsFailure::ProtocolVersion => "protocol_version",
            TlsFailure::StarttlsTimeout(_) | TlsFailure::StarttlsLost(_) => "starttls_no_reply",
            TlsFailure::ClosedAfterStarttls | TlsFailure::HandshakeTimeout(_) => {
                "handshake_aborted"
            }
            TlsFailure::ClientCertificateRequired => "client_cert_required",
            TlsFailure::AfterHandshake(_) => "after_handshake",
            TlsFailure::Handshake(_) | TlsFailure::ResponseInjection => "handshake",
            TlsFailure::DaneMismatch(_) => "dane_mismatch",
        }
    }

    /// Every value [`TlsFailure::metric_label`] can return, so that each series exists (at 0)
    /// from the start and alerts see the first failure of each kind.
    pub const METRIC_LABELS: &'static [&'static str] = &[
        "no_starttls",
        "cert_untrusted",
        "cert_expired",
        "hostname_mismatch",
        "protocol_version",
        "starttls_no_reply",
        "handshake_aborted",
        "client_cert_required",
        "after_handshake",
        "handshake",
        "dane_mismatch",
    ];

    /// Classifies the error of a failed client handshake; `name` is the name that was checked.
    pub fn from_handshake_error(error: &io::Error, name: &str) -> TlsFailure {
        match rustls_error(error) {
            Some(e) => TlsFailure::from_rustls(e, name),
            // tokio-rustls reports the end of the stream in mid-handshake as UnexpectedEof
            // ("tls handshake eof"): the server hung up instead of answering our hello.
            None if error.kind() == io::ErrorKind::UnexpectedEof => TlsFailure::ClosedAfterStarttls,
            None => TlsFailure::Handshake(format!("connection lost: {error}")),
        }
    }

    /// Classifies an I/O error of the first exchange after the handshake (our EHLO, its reply).
    /// In TLS 1.3 the client's side of the handshake ends before the server has checked the
    /// client's (empty) certificate message, so a demand for a client certificate arrives here
    /// as an alert (RFC 8446 4.4.2.4: `certificate_required`).
    pub fn after_handshake(error: &io::Error) -> TlsFailure {
        match rustls_error(error) {
            Some(rustls::Error::AlertReceived(AlertDescription::CertificateRequired)) => {
                TlsFailure::ClientCertificateRequired
            }
            Some(rustls::Error::AlertReceived(alert)) => {
                let mut text = format!("{} alert from the server", alert_name(*alert));
                if *alert == AlertDescription::HandshakeFailure {
                    text.push_str(
                        " (servers that demand a client certificate send it at this point)",
                    );
                }
                TlsFailure::AfterHandshake(text)
            }
            Some(e) => TlsFailure::AfterHandshake(rustls_words(e)),
            None if error.kind() == io::ErrorKind::UnexpectedEof => {
                TlsFailure::AfterHandshake("the server closed the connection".into())
            }
            None => TlsFailure::AfterHandshake(error.to_string()),
        }
    }

    /// The failure a rustls error means, in the vocabulary of reports and metrics; `name` is
    /// the host the certificate was checked for (named in a host mismatch). Also used for the
    /// HTTPS of MTA-STS policy fetches (RFC 8461 section 3.3).
    pub fn from_rustls(error: &rustls::Error, name: &str) -> TlsFailure {
        // The DANE verifier's own error travels inside rustls' (RFC 7672 section 3.1).
        if let Some(dane) = DaneError::from_rustls(error) {
            return TlsFailure::DaneMismatch(dane.to_string());
        }
        match error {
            rustls::Error::InvalidCertificate(cert) => match cert {
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
                | CertificateError::InvalidPurposeContext { .. }
                | CertificateError::Revoked => TlsFailure::CertUntrusted,
                // A precise failure found by our own verifier (`verify::name_time_fault`).
                CertificateError::Other(other) => match other.0.downcast_ref::<TlsFailure>() {
                    Some(failure) => failure.clone(),
                    None => TlsFailure::Handshake(format!("invalid certificate: {}", other.0)),
                },
                other => TlsFailure::Handshake(certificate_words(other).to_string()),
            },
            rustls::Error::PeerIncompatible(p) => match p {
                PeerIncompatible::ServerDoesNotSupportTls12Or13
                | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
                | PeerIncompatible::SupportedVersionsExtensionRequired
                | PeerIncompatible::Tls12NotOffered
                | PeerIncompatible::Tls12NotOfferedOrEnabled => TlsFailure::ProtocolVersion,
                other => TlsFailure::Handshake(incompatibility_words(other).to_string()),
            },
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion) => {
                TlsFailure::ProtocolVersion
            }
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
                TlsFailure::ClientCertificateRequired
            }
            rustls::Error::AlertReceived(AlertDescription::HandshakeFailure) => {
                // RFC 8446 6.2 / RFC 5246 7.2.2: the server found nothing acceptable in our
                // hello. It does not say what; these are the usual causes.
                TlsFailure::Handshake(
                    "handshake_failure alert from the server: it found no cipher suite, key \
                     exchange group or signature algorithm in common with ours, or it wants a \
                     client certificate"
                        .into(),
                )
            }
            other => TlsFailure::Handshake(rustls_words(other)),
        }
    }
}

/// The rustls error inside an I/O error from tokio-rustls, if there is one.
fn rustls_error(error: &io::Error) -> Option<&rustls::Error> {
    error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// An alert's name as the TLS RFCs write it (`handshake_failure`), from rustls' variant name.
pub fn alert_name(alert: AlertDescription) -> String {
    let Some(camel) = alert.as_str() else {
        return match alert {
            AlertDescription::Unknown(code) => format!("unknown ({code})"),
            _ => "unknown".into(),
        };
    };
    let mut name = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_lowercase());
    }
    name
}

/// Words for a rustls error that has no [`TlsFailure`] of its own.
fn rustls_words(error: &rustls::Error) -> String {
    match error {
        rustls::Error::AlertReceived(alert) => {
            format!("{} alert from the server", alert_name(*alert))
        }
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. } => {
            "the server sent something that is not valid TLS".into()
        }
        rustls::Error::PeerMisbehaved(_) => "the server broke the TLS protocol".into(),
        rustls::Error::PeerIncompatible(p) => incompatibility_words(p).into(),
        rustls::Error::DecryptError => "cannot decrypt the server's data".into(),
        rustls::Error::PeerSentOversizedRecord => "the server sent an oversized record".into(),
        rustls::Error::InvalidCertificate(c) => certificate_words(c).into(),
        rustls::Error::General(text) => text.clone(),
        _ => "TLS error".into(),
    }
}

fn incompatibility_words(p: &PeerIncompatible) -> &'static str {
    match p {
        PeerIncompatible::NoCipherSuitesInCommon => "no cipher suite in common",
        PeerIncompatible::NoKxGroupsInCommon => "no key exchange group in common",
        PeerIncompatible::NoSignatureSchemesInCommon
        | PeerIncompatible::NoCertificateRequestSignatureSchemesInCommon => {
            "no signature algorithm in common"
        }
        PeerIncompatible::ServerDoesNotSupportTls12Or13
        | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
        | PeerIncompatible::Tls12NotOffered
        | PeerIncompatible::Tls12NotOfferedOrEnabled
        | PeerIncompatible::SupportedVersionsExtensionRequired => "no TLS version in common",
        PeerIncompatible::NoEcPointFormatsInCommon
        | PeerIncompatible::UncompressedEcPointsRequired
        | PeerIncompatible::EcPointsExtensionRequired => "no elliptic curve point format in common",
        _ => "the server's TLS is incompatible with ours",
    }
}

fn certificate_words(c: &CertificateError) -> &'static str {
    match c {
        CertificateError::BadEncoding => "the server's certificate cannot be parsed",
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "a certificate of the chain is signed with an algorithm tlsgate cannot check"
        }
        CertificateError::UnknownRevocationStatus
        | CertificateError::ExpiredRevocationList
        | CertificateError::ExpiredRevocationListContext { .. } => {
            "the certificate's revocation status is unknown"
        }
        _ => "the server's certificate is not acceptable",
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
    /// Delivery's validating configurations, one per trust policy, so that their sessions
    /// resume (issue 16 item 8; see [`super::resumption`]).
    kept: Arc<ClientConfigs>,
    /// The public roots alone, and the public roots with `outbound.extra_trust_roots` when any
    /// are configured: [`ClientTls::chains_only_to_extra_roots`].
    public_roots: Arc<RootCertStore>,
    all_roots: Option<Arc<RootCertStore>>,
}

impl ClientTls {
    /// `extra_roots`: PEM files whose certificates are trusted in addition to the public roots.
    pub fn new(extra_roots: &[PathBuf]) -> Result<ClientTls, KeyError> {
        let provider = super::crypto_provider();
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let public_roots = Arc::new(roots.clone());
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
        let roots = Arc::new(roots);
        let all_roots = (!extra_roots.is_empty()).then(|| roots.clone());
        let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| KeyError::Rejected {
                path: "<trust roots>".into(),
                reason: e.to_string(),
            })?;
        // One configuration, one verifier: its sessions resume (rustls's own cache).
        let opportunistic = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(super::PROTOCOL_VERSIONS)
            .map_err(rejected)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(UnauthenticatedPeer {
                provider: provider.clone(),
                presented: None,
            }))
            .with_no_client_auth();
        Ok(ClientTls {
            opportunistic: Arc::new(opportunistic),
            webpki,
            provider,
            kept: Arc::new(ClientConfigs::default()),
            public_roots,
            all_roots,
        })
    }

    /// Whether `chain` (as presented, leaf first) leads to a root of
    /// `outbound.extra_trust_roots` and to no public root, now; names are not looked at.
    /// `domains check` warns then: Bits 5.1.2 asks partners for certificates from publicly
    /// trusted roots, and a pass that rests on a locally added root is not that. False without
    /// extra roots, and for a chain that leads to no root at all (self-signed, DANE-EE).
    pub fn chains_only_to_extra_roots(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some(all_roots) = &self.all_roots else {
            return false;
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        let Ok(leaf) = rustls::server::ParsedCertificate::try_from(leaf) else {
            return false;
        };
        let now = UnixTime::now();
        let algorithms = self.provider.signature_verification_algorithms.all;
        let leads_to = |roots: &RootCertStore| {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &leaf,
                roots,
                intermediates,
                now,
                algorithms,
            )
            .is_ok()
        };
        leads_to(all_roots) && !leads_to(&self.public_roots)
    }

    /// The configuration of an HTTPS client (TLS reports to `https:` targets, RFC 8460 5.4):
    /// TLS 1.2/1.3, the same roots as delivery (public roots plus
    /// `outbound.extra_trust_roots`), standard web PKI checks of the URL's host name, ALPN
    /// `http/1.1`.
    pub fn https_client_config(&self) -> Result<ClientConfig, rustls::Error> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(super::PROTOCOL_VERSIONS)?
            .with_webpki_verifier(self.webpki.clone())
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    /// A validating configuration that accepts a certificate for any of `names` (T9). The
    /// same configuration for the same names, so that delivery resumes its sessions (see
    /// [`super::resumption`]).
    pub fn verified_for(&self, names: Vec<NamePattern>) -> Result<Arc<ClientConfig>, TlsFailure> {
        self.kept
            .get_or_make(TrustPolicy::Pkix(names.clone()), |resumption| {
                let verifier = PolicyVerifier::new(self.webpki.clone(), names);
                self.with_verifier(Arc::new(verifier), resumption)
            })
    }

    /// As [`ClientTls::verified_for`], keeping the chain the server presents in `slot`, also
    /// when it is refused (for `probe` and `domains check`, T7). Never resumes a session: a
    /// report shows the certificate presented now.
    pub fn verified_recording(
        &self,
        names: Vec<NamePattern>,
        slot: PresentedChain,
    ) -> Result<Arc<ClientConfig>, TlsFailure> {
        let verifier = PolicyVerifier::new(self.webpki.clone(), names).recording(slot);
        self.with_verifier(Arc::new(verifier), Resumption::disabled())
            .map(Arc::new)
    }

    /// As [`ClientTls::opportunistic`], keeping the chain the server presents in `slot`. A
    /// configuration of its own (the shared one records nothing), so only for reports.
    pub fn opportunistic_recording(
        &self,
        slot: PresentedChain,
    ) -> Result<Arc<ClientConfig>, TlsFailure> {
        self.with_verifier(
            Arc::new(UnauthenticatedPeer {
                provider: self.provider.clone(),
                presented: Some(slot),
            }),
            Resumption::disabled(),
        )
        .map(Arc::new)
    }

    /// Checks a chain the server presented (leaf first) as `verify` would have: a trusted
    /// root, time-valid, a name valid for `host` (T9). For MTA-STS `testing` mode, where the
    /// connection itself does not check (RFC 8461 section 5: report what `enforce` would have
    /// refused).
    pub fn check_chain(
        &self,
        chain: &[CertificateDer<'static>],
        host: &str,
    ) -> Result<(), TlsFailure> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(TlsFailure::Handshake("no certificate presented".into()));
        };
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| TlsFailure::Handshake(format!("{host} is not a valid TLS server name")))?;
        let now = UnixTime::now();
        let verifier = PolicyVerifier::new(self.webpki.clone(), vec![NamePattern::parse(host)]);
        verifier
            .verify_server_cert(leaf, intermediates, &server_name, &[], now)
            .map(|_| ())
            .map_err(|e| TlsFailure::from_rustls(&e, host))
    }

    /// A configuration checking with `verifier`, with the given session resumption.
    fn with_verifier(
        &self,
        verifier: Arc<dyn ServerCertVerifier>,
        resumption: Resumption,
    ) -> Result<ClientConfig, TlsFailure> {
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(super::PROTOCOL_VERSIONS)
            .map_err(|e| TlsFailure::Handshake(format!("client configuration: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.resumption = resumption;
        Ok(config)
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
        let usable = usable_or_refuse(&tlsa)?;
        let policy = TrustPolicy::Dane {
            tlsa: usable.clone(),
            names: names.clone(),
            pkix,
        };
        self.kept.get_or_make(policy, |resumption| {
            let verifier = DaneVerifier::new(
                &usable,
                names,
                pkix.then(|| self.webpki.clone()),
                self.provider.clone(),
            );
            self.with_verifier(Arc::new(verifier), resumption)
        })
    }

    /// As [`ClientTls::dane_for`], keeping the chain the server presents in `slot`, also when
    /// it is refused (for `probe` and `domains check`).
    pub fn dane_recording(
        &self,
        tlsa: Vec<Tlsa>,
        names: Vec<NamePattern>,
        pkix: bool,
        slot: PresentedChain,
    ) -> Result<Arc<ClientConfig>, TlsFailure> {
        let usable = usable_or_refuse(&tlsa)?;
        let verifier = DaneVerifier::new(
            &usable,
            names,
            pkix.then(|| self.webpki.clone()),
            self.provider.clone(),
        )
        .recording(slot);
        self.with_verifier(Arc::new(verifier), Resumption::disabled())
            .map(Arc::new)
    }
}

/// The usable TLSA records (RFC 7672 §3.1.3), or the failure when there are none.
fn usable_or_refuse(tlsa: &[Tlsa]) -> Result<Vec<Tlsa>, TlsFailure> {
    let usable = dane::usable(tlsa);
    if usable.is_empty() {
        return Err(TlsFailure::DaneMismatch(format!(
            "none of the {} TLSA record(s) is usable (RFC 7672 §3.1)",
            tlsa.len()
        )));
    }
    Ok(usable)
}

/// Accepts any certificate but still checks the handshake signatures, so the session key is
/// bound to the key in the certificate presented (only authentication is skipped).
#[derive(Debug)]
struct UnauthenticatedPeer {
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// Where the presented chain is kept, for reports only.
    presented: Option<PresentedChain>,
}

impl ServerCertVerifier for UnauthenticatedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(slot) = &self.presented {
            slot.record(end_entity, intermediates);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        super::verify::tls12_signature(&self.provider, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        super::verify::tls13_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        super::verify::signature_schemes(&self.provider)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `domains check` marks a pass that rests on a root of `outbound.extra_trust_roots`
    /// (Bits 5.1.2): true only for a chain that leads to such a root and to no public one.
    #[test]
    fn a_chain_to_an_extra_root_is_told_apart() {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let root_key = KeyPair::generate().unwrap();
        let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        root_params
            .distinguished_name
            .push(DnType::CommonName, "private root");
        let root = root_params.self_signed(&root_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["mx.partner.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &root, &root_key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root_file = dir.path().join("root.pem");
        std::fs::write(&root_file, root.pem()).unwrap();
        let chain = vec![leaf.der().clone()];

        let with_extra = ClientTls::new(std::slice::from_ref(&root_file)).unwrap();
        assert!(with_extra.chains_only_to_extra_roots(&chain));
        assert!(!with_extra.chains_only_to_extra_roots(&[]));
        // A self-signed leaf leads to no root at all (as with DANE-EE): not marked.
        let other_key = KeyPair::generate().unwrap();
        let self_signed = CertificateParams::new(vec!["mx.partner.test".to_string()])
            .unwrap()
            .self_signed(&other_key)
            .unwrap();
        assert!(!with_extra.chains_only_to_extra_roots(&[self_signed.der().clone()]));
        // Without extra roots nothing is marked.
        let public_only = ClientTls::new(&[]).unwrap();
        assert!(!public_only.chains_only_to_extra_roots(&chain));
    }

    fn tls_error(e: rustls::Error) -> io::Error {
        // What tokio-rustls hands back for a rustls error.
        io::Error::new(io::ErrorKind::InvalidData, e)
    }

    #[test]
    fn alerts_are_named_as_the_rfcs_name_them() {
        assert_eq!(
            alert_name(AlertDescription::HandshakeFailure),
            "handshake_failure"
        );
        assert_eq!(
            alert_name(AlertDescription::CertificateRequired),
            "certificate_required"
        );
        assert_eq!(alert_name(AlertDescription::Unknown(200)), "unknown (200)");
    }

    /// Issue 12 item 4: the reasons are words, not rustls' Debug names.
    #[test]
    fn handshake_errors_are_said_in_words() {
        let classify = |e: rustls::Error| TlsFailure::from_handshake_error(&tls_error(e), "mx");
        assert_eq!(
            classify(rustls::Error::PeerIncompatible(
                PeerIncompatible::NoCipherSuitesInCommon
            )),
            TlsFailure::Handshake("no cipher suite in common".into())
        );
        assert_eq!(
            classify(rustls::Error::PeerIncompatible(
                PeerIncompatible::NoSignatureSchemesInCommon
            ))
            .to_string(),
            "TLS handshake failed: no signature algorithm in common"
        );
        assert_eq!(
            classify(rustls::Error::PeerIncompatible(
                PeerIncompatible::ServerDoesNotSupportTls12Or13
            )),
            TlsFailure::ProtocolVersion
        );
        assert_eq!(
            classify(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            )),
            TlsFailure::ClientCertificateRequired
        );
        let text = classify(rustls::Error::AlertReceived(AlertDescription::DecodeError));
        assert_eq!(
            text.to_string(),
            "TLS handshake failed: decode_error alert from the server"
        );
        let text = classify(rustls::Error::AlertReceived(
            AlertDescription::HandshakeFailure,
        ))
        .to_string();
        assert!(
            text.contains("handshake_failure alert from the server"),
            "{text}"
        );
        assert!(!text.contains("HandshakeFailure"), "{text}");
        let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "tls handshake eof");
        assert_eq!(
            TlsFailure::from_handshake_error(&eof, "mx"),
            TlsFailure::ClosedAfterStarttls
        );
        // A precise failure from our verifier comes back out of rustls' error unchanged.
        let precise = TlsFailure::IntermediateExpired {
            subject: "CN=x".into(),
            not_after: "then".into(),
        };
        let wrapped = rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(precise.clone())),
        ));
        assert_eq!(classify(wrapped), precise);
    }

    #[test]
    fn the_first_read_after_the_handshake_names_a_client_certificate_demand() {
        let alert = |a| TlsFailure::after_handshake(&tls_error(rustls::Error::AlertReceived(a)));
        assert_eq!(
            alert(AlertDescription::CertificateRequired),
            TlsFailure::ClientCertificateRequired
        );
        assert_eq!(
            alert(AlertDescription::BadCertificate).to_string(),
            "TLS session failed before the first reply after the handshake: bad_certificate \
             alert from the server"
        );
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer");
        assert_eq!(
            TlsFailure::after_handshake(&reset),
            TlsFailure::AfterHandshake("connection reset by peer".into())
        );
    }

    /// Every label a failure can be counted under exists from the start (alerts use
    /// `increase()`, which misses the first event of a series that did not exist).
    #[test]
    fn every_metric_label_is_registered() {
        let all = [
            TlsFailure::NoStarttls,
            TlsFailure::StarttlsRefused(String::new()),
            TlsFailure::CertUntrusted,
            TlsFailure::CertExpired,
            TlsFailure::CertNotYetValid,
            TlsFailure::HostnameMismatch(String::new()),
            TlsFailure::ProtocolVersion,
            TlsFailure::Handshake(String::new()),
            TlsFailure::StarttlsTimeout(Duration::from_secs(1)),
            TlsFailure::StarttlsLost(String::new()),
            TlsFailure::ClosedAfterStarttls,
            TlsFailure::HandshakeTimeout(Duration::from_secs(1)),
            TlsFailure::ClientCertificateRequired,
            TlsFailure::IntermediateExpired {
                subject: String::new(),
                not_after: String::new(),
            },
            TlsFailure::IntermediateNotYetValid {
                subject: String::new(),
                not_before: String::new(),
            },
            TlsFailure::AfterHandshake(String::new()),
            TlsFailure::ResponseInjection,
            TlsFailure::DaneMismatch(String::new()),
        ];
        for failure in &all {
            assert!(
                TlsFailure::METRIC_LABELS.contains(&failure.metric_label()),
                "{failure}"
            );
        }
        assert_eq!(
            TlsFailure::StarttlsTimeout(Duration::from_secs(30)).to_string(),
            "no reply to STARTTLS within 30s"
        );
    }
}
