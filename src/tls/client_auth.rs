//! Client certificates on the smarthost listener (S2, issue 14 item 7): the internal mail
//! servers may identify themselves with a certificate issued by the organisation's own CA
//! (`[[listener]] client_ca`), and such a client may relay (the decision is
//! `inbound::relay`, S6).
//!
//! * [`load_client_ca`]: the CA file, checked at start like every certificate file
//!   (non-negotiable 5): PEM, at least one certificate, each a CA that is valid now.
//! * [`server_config_with_client_ca`]: the listener's STARTTLS configuration, the server's own
//!   certificate plus a verifier that asks for a client certificate. The verifier always
//!   allows a client *without* a certificate through the handshake: `client_cert =
//!   "required"` is enforced at `MAIL`/`RCPT`, where the client gets a readable
//!   `530 5.7.0` instead of a bare TLS alert. A client that *does* present a certificate must
//!   chain to the CA and be valid now, or the handshake fails (RFC 8446 4.4.2.4, RFC 5246
//!   7.4.6: `unknown_ca`, `certificate_expired`).
//! * [`ClientCertificate`]: what the session logs, the queue keeps and `Received:` shows.

use super::keys::{self, KeyError};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;

/// The trust anchors of one listener's `client_ca` file.
#[derive(Clone)]
pub struct ClientCa {
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("anchors", &self.roots.len())
            .finish()
    }
}

/// Reads `path` (PEM, one or more CA certificates) as the trust anchors for client
/// certificates. Refused, naming the file: unreadable, no certificate, a certificate that
/// does not parse, one that is not a CA (basicConstraints cA) or is outside its validity.
pub fn load_client_ca(path: &Path) -> Result<ClientCa, KeyError> {
    let rejected = |reason: String| KeyError::Rejected {
        path: path.display().to_string(),
        reason,
    };
    let certs = keys::load_cert_chain(path)?;
    let now = x509_parser::time::ASN1Time::now();
    let mut roots = RootCertStore::empty();
    for (i, der) in certs.into_iter().enumerate() {
        let n = i + 1;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| rejected(format!("certificate {n} does not parse: {e}")))?;
        let is_ca = cert
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(rejected(format!(
                "certificate {n} ({}) is not a CA certificate (no basicConstraints cA): \
                 client_ca names the CA that issues the client certificates, not a client's \
                 own certificate",
                cert.subject()
            )));
        }
        if !cert.validity().is_valid_at(now) {
            return Err(rejected(format!(
                "certificate {n} ({}) is not valid now (valid from {} to {})",
                cert.subject(),
                cert.validity().not_before,
                cert.validity().not_after
            )));
        }
        roots
            .add(der)
            .map_err(|e| rejected(format!("certificate {n} is not a usable trust anchor: {e}")))?;
    }
    Ok(ClientCa {
        roots: Arc::new(roots),
    })
}

/// A STARTTLS configuration that presents `base`'s certificate (the same resolver, so a
/// reloaded certificate is never out of step) and asks the client for a certificate chaining
/// to `ca`; clients without one still complete the handshake (see the module doc). TLS 1.2 and
/// 1.3 only (T8). `path` names the CA file in errors.
pub fn server_config_with_client_ca(
    base: &ServerConfig,
    ca: &ClientCa,
    path: &Path,
) -> Result<Arc<ServerConfig>, KeyError> {
    let rejected = |reason: String| KeyError::Rejected {
        path: path.display().to_string(),
        reason,
    };
    let provider = super::crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(ca.roots.clone(), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| rejected(format!("cannot build the client certificate verifier: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(super::PROTOCOL_VERSIONS)
        .map_err(|e| rejected(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(base.cert_resolver.clone());
    // Its own ticketer and cache: a session made under other client CAs is never resumed here.
    super::resumption::offer(&mut config).map_err(|e| rejected(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The client certificate a session's client presented and the listener's verifier accepted
/// (chain to `client_ca`, valid now). Stored with the message (persisted: see
/// `queue::message`), logged, and written into `Received:`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientCertificate {
    /// The leaf's subject as RFC 4514 text, e.g. `CN=exchange.example.no, O=Bank AS`.
    pub subject: String,
    /// The leaf's issuer, same form.
    pub issuer: String,
    /// The serial number, hex octets separated by `:`.
    pub serial: String,
}

impl ClientCertificate {
    /// Describes the leaf (first) certificate of a verified client chain. A leaf x509-parser
    /// cannot read (rustls already accepted it, so this should not happen) is described by
    /// the reason instead of failing the session.
    pub fn from_leaf(leaf: &CertificateDer<'_>) -> ClientCertificate {
        match x509_parser::parse_x509_certificate(leaf.as_ref()) {
            Ok((_, cert)) => ClientCertificate {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                serial: cert.raw_serial_as_string(),
            },
            Err(e) => ClientCertificate {
                subject: format!("(certificate not parsable: {e})"),
                issuer: String::new(),
                serial: String::new(),
            },
        }
    }

    /// The verified client certificate of a finished server-side handshake, if the client
    /// presented one. Only meaningful on a listener with `client_ca`: elsewhere no certificate
    /// is asked for.
    pub fn of_peer(conn: &rustls::CommonState) -> Option<ClientCertificate> {
        conn.peer_certificates()
            .and_then(|chain| chain.first())
            .map(ClientCertificate::from_leaf)
    }
}
