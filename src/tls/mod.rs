//! TLS material and rustls configurations.
//!
//! * [`keys`]: loading certificate chains and private keys from PEM files, with the permission
//!   check of S4, and generating self-signed certificates (`tlsgate gen-cert`, first start).
//! * [`server_config`]: the STARTTLS server side, TLS 1.2 and 1.3 only (T8).
//! * [`dane`]: authenticating a delivery peer by its TLSA records (RFC 7672, D1).
//! * [`client_auth`]: client certificates on the smarthost listener (S2).
//! * [`resumption`]: TLS session resumption, inbound tickets and ids, outbound per trust policy.

pub mod client;
pub mod client_auth;
pub mod dane;
pub mod keys;
pub mod resumption;
pub mod stream;
pub mod verify;

use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

pub use client_auth::ClientCertificate;
pub use keys::{generate_self_signed, KeyError};

/// The protocol versions tlsgate speaks, both directions (T8): TLS 1.2 and 1.3, never older.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The cryptographic provider used everywhere, so that client and server agree on suites:
/// aws-lc-rs, whose signature algorithms include ECDSA P-521 and RSA-PSS (issue 12 item 4:
/// ring has neither, and MXes with such certificates could not be reached).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds the STARTTLS server configuration from a PEM chain and key file.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, KeyError> {
    let chain = keys::load_cert_chain(cert)?;
    let key_der = keys::load_private_key(key)?;
    server_config_from(chain, key_der, key)
}

/// The STARTTLS server configuration from a loaded chain and key; `key_path` names the key
/// file when the two do not form a pair.
pub fn server_config_from(
    chain: Vec<CertificateDer<'static>>,
    key_der: PrivateKeyDer<'static>,
    key_path: &Path,
) -> Result<Arc<ServerConfig>, KeyError> {
    let rejected = |reason: String| KeyError::Rejected {
        path: key_path.display().to_string(),
        reason,
    };
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(|e| rejected(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            rejected(format!(
                "certificate and key do not form a usable pair: {e}"
            ))
        })?;
    resumption::offer(&mut config).map_err(|e| rejected(e.to_string()))?;
    Ok(Arc::new(config))
}

/// What was negotiated on a TLS connection, recorded with each message and in `Received:`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsInfo {
    /// "TLSv1.2" or "TLSv1.3".
    pub version: String,
    /// IANA-style suite name, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// The client's verified certificate, on a listener with `client_ca` (S2); `None` on
    /// delivery connections and where the client presented none. Appended last: records
    /// written before it existed are read by `queue::message`'s fallback.
    pub client_certificate: Option<ClientCertificate>,
}

impl TlsInfo {
    /// Reads the negotiated version and suite of a finished handshake (`"unknown"` where rustls
    /// has none).
    pub fn from_connection(conn: &rustls::CommonState) -> TlsInfo {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown")
            .to_string();
        TlsInfo {
            version,
            cipher,
            client_certificate: None,
        }
    }
}
