//! Optional outbound DKIM signing (issue 5 §4), RSA-SHA256 or Ed25519-SHA256, relaxed/relaxed.
//! Off unless configured; the building block here loads a key and signs a message.

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use std::path::Path;

/// Header fields signed when the configuration names none (RFC 6376 §5.4.1's recommended
/// set, as far as present; absent fields are skipped by the signer).
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// Messages embed their cause; no variant reports a `source()` (the cause would be said twice).
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// The key file could not be read.
    #[error("{path}: cannot read: {cause}")]
    Read { path: String, cause: std::io::Error },
    /// [`OutboundSigner::load`]: the file holds no key the signer can use.
    #[error("{path}: not a usable DKIM private key: {reason}")]
    KeyFile { path: String, reason: String },
    /// The key material is not usable (no PEM key, not RSA or Ed25519, bad encoding).
    #[error("DKIM key: {0}")]
    Key(String),
    /// RFC 6376 §5.4: From must always be signed.
    #[error("the signed header fields must include From")]
    HeadersWithoutFrom,
    /// Signing the message failed.
    #[error("DKIM signing: {0}")]
    Sign(String),
}

/// The signature algorithm of a key (RFC 6376 3.3, RFC 8463).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimAlgorithm {
    /// `rsa-sha256`.
    RsaSha256,
    /// `ed25519-sha256`.
    Ed25519Sha256,
}

/// Signs outgoing mail of one sender domain with one `[[outbound.dkim]]` key (RFC 6376).
pub struct OutboundSigner {
    signer: DkimSigner<DkimKey, Done>,
    algorithm: DkimAlgorithm,
}

impl OutboundSigner {
    /// A signer for `d=domain; s=selector` from a PEM private key: PKCS#8 (RSA or Ed25519,
    /// as `openssl genpkey` writes) or PKCS#1 (`BEGIN RSA PRIVATE KEY`). `headers` empty:
    /// [`DEFAULT_SIGNED_HEADERS`].
    pub fn from_pem(
        domain: &str,
        selector: &str,
        pem: &str,
        headers: &[String],
    ) -> Result<OutboundSigner, SignerError> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| SignerError::Key(e.to_string()))?;
        let (key, algorithm) = match &der {
            PrivateKeyDer::Pkcs8(pkcs8) => {
                match Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der()) {
                    Ok(ed) => (DkimKey::from(ed), DkimAlgorithm::Ed25519Sha256),
                    Err(_) => (
                        DkimKey::from(rsa(der.clone_key())?),
                        DkimAlgorithm::RsaSha256,
                    ),
                }
            }
            PrivateKeyDer::Pkcs1(_) => (
                DkimKey::from(rsa(der.clone_key())?),
                DkimAlgorithm::RsaSha256,
            ),
            _ => {
                return Err(SignerError::Key(
                    "unsupported key type (RSA or Ed25519 expected)".into(),
                ))
            }
        };
        let headers: Vec<String> = if headers.is_empty() {
            DEFAULT_SIGNED_HEADERS
                .iter()
                .map(|h| h.to_string())
                .collect()
        } else {
            headers.to_vec()
        };
        if !headers.iter().any(|h| h.eq_ignore_ascii_case("From")) {
            return Err(SignerError::HeadersWithoutFrom);
        }
        let signer = DkimSigner::from_key(key)
            .domain(domain.trim_end_matches('.').to_ascii_lowercase())
            .selector(selector)
            .headers(headers)
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(OutboundSigner { signer, algorithm })
    }

    /// [`OutboundSigner::from_pem`] of a key file; errors name the file.
    pub fn load(
        domain: &str,
        selector: &str,
        key_path: &Path,
        headers: &[String],
    ) -> Result<OutboundSigner, SignerError> {
        let pem = std::fs::read_to_string(key_path).map_err(|cause| SignerError::Read {
            path: key_path.display().to_string(),
            cause,
        })?;
        Self::from_pem(domain, selector, &pem, headers).map_err(|e| match e {
            SignerError::Key(reason) => SignerError::KeyFile {
                path: key_path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> DkimAlgorithm {
        self.algorithm
    }

    /// The `DKIM-Signature: ...\r\n` field for `message` (CRLF line endings expected).
    pub fn signature_header(&self, message: &[u8]) -> Result<String, SignerError> {
        let sig = self
            .signer
            .sign(message)
            .map_err(|e| SignerError::Sign(e.to_string()))?;
        Ok(sig.to_header())
    }

    /// `message` with its DKIM-Signature prepended.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignerError> {
        let header = self.signature_header(message)?;
        let mut out = Vec::with_capacity(header.len() + message.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(message);
        Ok(out)
    }
}

fn rsa(der: PrivateKeyDer<'static>) -> Result<RsaKey<Sha256>, SignerError> {
    RsaKey::<Sha256>::from_key_der(der).map_err(|e| SignerError::Key(e.to_string()))
}
