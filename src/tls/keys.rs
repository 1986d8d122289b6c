//! Certificate and private-key files.
//!
//! S4 (Skatteverket K5.4, Sambi C.3): key material must not be readable by anyone but the
//! service. A private key file that group or others can read or write is refused at start,
//! with the file name, its mode and the fix, rather than used.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a certificate or key file could not be used; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read.
    #[error("{path}: cannot read: {cause}")]
    Unreadable { path: String, cause: std::io::Error },
    /// A private key file that group or others may access (S4); `mode` is the permission bits.
    #[error("{path}: private key is accessible by group or others (mode {mode:04o}); run `chmod 600 {path}`")]
    InsecurePermissions { path: String, mode: u32 },
    /// No PEM certificate in the file.
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: String },
    /// No PEM private key in the file.
    #[error("{path}: no PEM private key found (PKCS#8, PKCS#1 or SEC1 expected)")]
    NoPrivateKey { path: String },
    /// The file's content is not usable (bad PEM, a key that does not fit the certificate …).
    #[error("{path}: {reason}")]
    Rejected { path: String, reason: String },
    /// Generating a self-signed certificate failed.
    #[error("cannot generate certificate: {0}")]
    Generate(String),
    /// Writing a generated certificate or key failed.
    #[error("{path}: cannot write: {cause}")]
    Write { path: String, cause: std::io::Error },
}

fn unreadable(path: &Path, cause: std::io::Error) -> KeyError {
    KeyError::Unreadable {
        path: path.display().to_string(),
        cause,
    }
}

/// Reads every certificate of a PEM chain (leaf first).
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    let pem = std::fs::read(path).map_err(|e| unreadable(path, e))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| KeyError::Rejected {
            path: path.display().to_string(),
            reason: format!("bad PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(KeyError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(chain)
}

/// The end of the validity of the first (leaf) certificate in `path`, as Unix seconds: the
/// `tlsgate_tls_certificate_expiry_timestamp_seconds` gauge (issue 14 item 4). Errors when the
/// file does not read, holds no certificate, or the leaf does not parse as X.509.
pub fn certificate_not_after(path: &Path) -> Result<i64, KeyError> {
    let chain = load_cert_chain(path)?;
    let (_, leaf) =
        x509_parser::parse_x509_certificate(chain.first().map_or(&[][..], |c| c.as_ref()))
            .map_err(|e| KeyError::Rejected {
                path: path.display().to_string(),
                reason: format!("the certificate does not parse: {e}"),
            })?;
    Ok(leaf.validity().not_after.timestamp())
}

/// Refuses a key file that group or others may read or write (S4).
pub fn check_key_permissions(path: &Path) -> Result<(), KeyError> {
    let meta = std::fs::metadata(path).map_err(|e| unreadable(path, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::InsecurePermissions {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// Reads a private key after checking the file's permissions.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, KeyError> {
    check_key_permissions(path)?;
    let pem = std::fs::read(path).map_err(|e| unreadable(path, e))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| KeyError::NoPrivateKey {
        path: path.display().to_string(),
    })
}

/// A freshly generated self-signed certificate and its key, both PEM.
pub struct GeneratedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM.
    pub key_pem: String,
}

/// Generates a self-signed certificate for `hosts` (the first is the subject CN), valid for one
/// year, with an ECDSA P-256 key. For tests and first start; production uses a CA-issued chain.
pub fn generate_self_signed(hosts: &[String]) -> Result<GeneratedCert, KeyError> {
    let generate = |e: rcgen::Error| KeyError::Generate(e.to_string());
    let mut params = rcgen::CertificateParams::new(hosts.to_vec()).map_err(generate)?;
    // rcgen's defaults are the subject "rcgen self signed cert" and validity 1975–4096; the
    // certificate says whom it is for and expires like a real one (review finding).
    let mut subject = rcgen::DistinguishedName::new();
    if let Some(first) = hosts.first() {
        subject.push(rcgen::DnType::CommonName, first.as_str());
    }
    params.distinguished_name = subject;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok(GeneratedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes a certificate (mode 0644) and key (mode 0600, created with that mode so it is never
/// readable by others even for a moment) into `dir`. Returns (cert path, key path).
pub fn write_cert_files(
    dir: &Path,
    generated: &GeneratedCert,
) -> Result<(PathBuf, PathBuf), KeyError> {
    let write_err = |path: &Path, cause| KeyError::Write {
        path: path.display().to_string(),
        cause,
    };
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    let mut key_file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(|e| write_err(&key_path, e))?;
    key_file
        .write_all(generated.key_pem.as_bytes())
        .and_then(|_| key_file.sync_all())
        .map_err(|e| write_err(&key_path, e))?;
    std::fs::write(&cert_path, generated.cert_pem.as_bytes())
        .map_err(|e| write_err(&cert_path, e))?;
    Ok((cert_path, key_path))
}

/// The certificate files of the development default: generated into `dir` on first start,
/// reused afterwards.
pub fn ensure_self_signed(dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), KeyError> {
    let cert_path = dir.join("server.pem");
    let key_path = dir.join("server.key");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    let generated = generate_self_signed(&[hostname.to_string()])?;
    // A half-written pair from an interrupted first start is replaced.
    let _ = std::fs::remove_file(&key_path);
    let _ = std::fs::remove_file(&cert_path);
    write_cert_files(dir, &generated)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated certificate names its first host as the subject and is valid for about
    /// a year from now, as documented (not rcgen's "rcgen self signed cert", 1975–4096).
    #[test]
    fn a_generated_certificate_names_its_host_and_expires_in_a_year() {
        let hosts = [
            "mx.example.test".to_string(),
            "other.example.test".to_string(),
        ];
        let generated = generate_self_signed(&hosts).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(generated.cert_pem.as_bytes()).unwrap();
        let cert = pem.parse_x509().unwrap();
        let cn: Vec<&str> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .collect();
        assert_eq!(cn, vec!["mx.example.test"]);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let not_after = cert.validity().not_after.timestamp();
        let not_before = cert.validity().not_before.timestamp();
        assert!(
            not_before <= now && now - not_before < 2 * 3600,
            "{not_before}"
        );
        let year = 365 * 24 * 3600;
        assert!((not_after - now - year).abs() < 3600, "{not_after}");
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let generated = generate_self_signed(&["mx.test".to_string()]).unwrap();
        let (_cert, key) = write_cert_files(dir.path(), &generated).unwrap();
        assert!(load_private_key(&key).is_ok());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_private_key(&key).unwrap_err();
        assert!(matches!(
            err,
            KeyError::InsecurePermissions { mode: 0o644, .. }
        ));
        assert!(err.to_string().contains("chmod 600"));
    }

    #[test]
    fn generated_pair_builds_a_server_config() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ensure_self_signed(dir.path(), "mx.test").unwrap();
        crate::tls::server_config(&cert, &key).unwrap();
        // Second call reuses the files.
        let again = ensure_self_signed(dir.path(), "mx.test").unwrap();
        assert_eq!(again, (cert, key));
    }

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = load_cert_chain(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.pem"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            load_cert_chain(&empty),
            Err(KeyError::NoCertificate { .. })
        ));
    }
}
