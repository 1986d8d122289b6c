//! Sealing queue records at rest (S3, Skatteverket K5.3: stored content encrypted with AES of at
//! least 128 bits; issue 16 item 1).
//!
//! A sealed value is `VERSION || nonce (12) || ciphertext || tag (16)`, AES-256-GCM (aws-lc-rs,
//! the library our TLS already uses). Every value gets its own random 96-bit nonce (drawn by
//! aws-lc-rs's `RandomizedNonceKey`), so a nonce never repeats under one key in practice (NIST SP
//! 800-38D 8.2.2 allows 2^32 random nonces per key; a queue seals far fewer between rekeys).
//! The record's full store key (`m\0<id>`, `b\0<id>\0<n>`, `r\0<id>\0<n>`) is the associated
//! data: a value moved to another key, another message or another position does not open.
//!
//! The key file (S4) holds 32 random bytes, raw or base64 on one line, and must not be
//! accessible by group or others. The key never appears in logs, errors or `Debug` output.

use crate::tls::keys::{check_key_permissions, KeyError};
use aws_lc_rs::aead::{Aad, Nonce, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use base64::Engine as _;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// First byte of every sealed value: the format (AES-256-GCM, nonce, ciphertext, tag).
pub const VERSION: u8 = 1;
/// Bytes a sealed value adds to its plaintext: version, nonce and tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
const TAG_LEN: usize = 16;
/// Length of a queue key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// A key file is at most this long (44 base64 characters and a line end; raw is 32): a
/// bound on the read, so a wrong path (a log file, a device) is refused without reading it all.
const KEY_FILE_MAX: u64 = 256;
/// Associated data and plaintext of the key check (see [`Sealer::check_value`]).
const CHECK_AD: &[u8] = b"tlsgate queue key check";
const CHECK_PLAINTEXT: &[u8] = b"tlsgate queue sealed with this key, format 1";

/// What is wrong with a queue key or a sealed value. Messages name the key file, never a byte
/// of the key.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    /// The key file cannot be read or is accessible by others (S4).
    #[error("{0}")]
    KeyFile(KeyError),
    /// The key file does not hold 32 bytes, raw or base64.
    #[error("{path}: not a queue key: {reason} (expected 32 random bytes, raw or base64 on one line; `tlsgate gen-key` writes one)")]
    BadKey { path: String, reason: String },
    /// The queue was sealed under another key than the one configured.
    #[error("the queue in {queue} is sealed with another key than {key_file} (queue.encryption_key); nothing was changed. Configure the key it was sealed with")]
    WrongKey { queue: String, key_file: String },
    /// The queue is sealed but no key is configured.
    #[error("the queue in {queue} is encrypted but queue.encryption_key is not set; nothing was changed. Configure the key it was sealed with")]
    KeyRequired { queue: String },
    /// A stored value does not open under the key with its record key as associated data:
    /// tampered, moved from another record, or sealed under another key.
    #[error("sealed value does not open (tampered, moved, or another key)")]
    Open,
    /// A stored value is too short or has an unknown format byte.
    #[error("not a sealed value: {0}")]
    Format(&'static str),
    /// The cryptographic library refused to seal (it does so only when out of randomness).
    #[error("sealing failed")]
    Seal,
    /// Writing a new key file failed.
    #[error("{path}: {reason}")]
    Write { path: String, reason: String },
}

/// A queue key as read from its file, with the file's path (named in errors; S4: the bytes
/// are never printed).
pub struct QueueKey {
    path: PathBuf,
    sealer: Sealer,
}

impl std::fmt::Debug for QueueKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl QueueKey {
    /// Reads the key in `path`: refuses a file that group or others may access (S4), then
    /// accepts exactly 32 raw bytes or their base64 (standard alphabet, padding optional)
    /// on one line.
    pub fn load(path: &Path) -> Result<QueueKey, EncryptionError> {
        check_key_permissions(path).map_err(EncryptionError::KeyFile)?;
        let bad = |reason: &str| EncryptionError::BadKey {
            path: path.display().to_string(),
            reason: reason.to_string(),
        };
        let file = std::fs::File::open(path).map_err(|cause| {
            EncryptionError::KeyFile(KeyError::Unreadable {
                path: path.display().to_string(),
                cause,
            })
        })?;
        let mut content = Vec::new();
        file.take(KEY_FILE_MAX + 1)
            .read_to_end(&mut content)
            .map_err(|cause| {
                EncryptionError::KeyFile(KeyError::Unreadable {
                    path: path.display().to_string(),
                    cause,
                })
            })?;
        if content.len() as u64 > KEY_FILE_MAX {
            return Err(bad("the file is too long"));
        }
        let bytes = decode_key(&content).map_err(bad)?;
        let key = QueueKey::from_bytes(path, &bytes);
        // The decoded copy is overwritten so that one fewer copy of the key stays in memory.
        wipe(bytes);
        wipe(content);
        key
    }

    /// A key from its 32 bytes; `path` is what errors will name.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<QueueKey, EncryptionError> {
        Ok(QueueKey {
            path: path.to_path_buf(),
            sealer: Sealer::new(bytes).ok_or_else(|| EncryptionError::BadKey {
                path: path.display().to_string(),
                reason: format!("{} bytes, not {KEY_LEN}", bytes.len()),
            })?,
        })
    }

    /// The key file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sealer for this key.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }
}

fn wipe(mut bytes: Vec<u8>) {
    bytes.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(&bytes);
}

/// 32 raw bytes, or base64 of 32 bytes with surrounding white space.
fn decode_key(content: &[u8]) -> Result<Vec<u8>, &'static str> {
    if content.len() == KEY_LEN {
        // 32 bytes that are also base64 text would decode to 24 bytes: raw wins.
        return Ok(content.to_vec());
    }
    let text = content.trim_ascii();
    if text.is_empty() {
        return Err("the file is empty");
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(text)
        .map_err(|_| "neither 32 raw bytes nor base64")?;
    if bytes.len() != KEY_LEN {
        return Err("the base64 text does not decode to 32 bytes");
    }
    Ok(bytes)
}

/// Writes a new random key, base64 on one line, to `path` created with mode 0600 (never
/// readable by others, not even for a moment; S4). Refuses to overwrite an existing file.
pub fn write_new_key(path: &Path) -> Result<(), EncryptionError> {
    let fail = |reason: String| EncryptionError::Write {
        path: path.display().to_string(),
        reason,
    };
    let mut key = [0u8; KEY_LEN];
    aws_lc_rs::rand::fill(&mut key).map_err(|_| fail("no randomness available".into()))?;
    let mut text = base64::engine::general_purpose::STANDARD.encode(key);
    key.iter_mut().for_each(|b| *b = 0);
    text.push('\n');
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                fail("exists; refusing to overwrite a key (it may still be needed)".into())
            }
            _ => fail(format!("cannot create: {e}")),
        })?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    wipe(text.into_bytes());
    written.map_err(|e| fail(format!("cannot write: {e}")))
}

/// AES-256-GCM with a random nonce per value (module doc).
pub struct Sealer {
    key: RandomizedNonceKey,
}

impl Sealer {
    /// A sealer for a 32-byte key; `None` for any other length.
    pub fn new(key: &[u8]) -> Option<Sealer> {
        if key.len() != KEY_LEN {
            return None;
        }
        RandomizedNonceKey::new(&AES_256_GCM, key)
            .ok()
            .map(|key| Sealer { key })
    }

    /// Seals `plaintext` bound to `record_key`: one allocation, the plaintext copied once.
    pub fn seal(&self, record_key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        out.push(VERSION);
        out.extend_from_slice(&[0; NONCE_LEN]);
        out.extend_from_slice(plaintext);
        let (nonce, tag) = self
            .key
            .seal_in_place_separate_tag(Aad::from(record_key), &mut out[1 + NONCE_LEN..])
            .map_err(|_| EncryptionError::Seal)?;
        out[1..1 + NONCE_LEN].copy_from_slice(nonce.as_ref());
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a value sealed for `record_key`.
    pub fn open(&self, record_key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, EncryptionError> {
        let mut out = Vec::with_capacity(sealed.len().saturating_sub(OVERHEAD));
        self.open_append(record_key, sealed, &mut out)?;
        Ok(out)
    }

    /// Opens a value sealed for `record_key` and appends the plaintext to `out` (decrypted in
    /// place there: a body is assembled chunk by chunk without another copy). On error `out` is
    /// left as it was.
    pub fn open_append(
        &self,
        record_key: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EncryptionError> {
        if sealed.len() < OVERHEAD {
            return Err(EncryptionError::Format("too short"));
        }
        if sealed[0] != VERSION {
            return Err(EncryptionError::Format("unknown format byte"));
        }
        let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN])
            .map_err(|_| EncryptionError::Format("bad nonce"))?;
        let start = out.len();
        out.extend_from_slice(&sealed[1 + NONCE_LEN..]);
        match self
            .key
            .open_in_place(nonce, Aad::from(record_key), &mut out[start..])
        {
            Ok(plain) => {
                let len = plain.len();
                out.truncate(start + len);
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(EncryptionError::Open)
            }
        }
    }

    /// A sealed known value: stored next to a sealed queue, it tells at start whether the
    /// configured key is the one the queue was sealed with, before any record is touched.
    pub fn check_value(&self) -> Result<Vec<u8>, EncryptionError> {
        self.seal(CHECK_AD, CHECK_PLAINTEXT)
    }

    /// True when `stored` is a [`Sealer::check_value`] of this key.
    pub fn matches_check(&self, stored: &[u8]) -> bool {
        self.open(CHECK_AD, stored)
            .is_ok_and(|plain| plain == CHECK_PLAINTEXT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sealer(byte: u8) -> Sealer {
        Sealer::new(&[byte; KEY_LEN]).unwrap()
    }

    #[test]
    fn seal_then_open_gives_the_plaintext_back_with_a_fresh_nonce_each_time() {
        let s = sealer(7);
        let a = s.seal(b"b\0id\0\0\0\0\x01", b"secret body").unwrap();
        let b = s.seal(b"b\0id\0\0\0\0\x01", b"secret body").unwrap();
        assert_eq!(a.len(), b"secret body".len() + OVERHEAD);
        assert_eq!(a[0], VERSION);
        // S3: a unique nonce per record, so equal plaintexts never give equal values.
        assert_ne!(a[1..1 + NONCE_LEN], b[1..1 + NONCE_LEN]);
        assert!(!a.windows(6).any(|w| w == b"secret"));
        assert_eq!(s.open(b"b\0id\0\0\0\0\x01", &a).unwrap(), b"secret body");
        let mut out = b"prefix".to_vec();
        s.open_append(b"b\0id\0\0\0\0\x01", &b, &mut out).unwrap();
        assert_eq!(out, b"prefixsecret body");
    }

    #[test]
    fn a_flipped_byte_anywhere_is_refused() {
        let s = sealer(7);
        let sealed = s.seal(b"m\0id", b"envelope").unwrap();
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(s.open(b"m\0id", &bad), Err(EncryptionError::Open)),
                "flipped byte {i} opened"
            );
        }
        let mut bad = sealed.clone();
        bad[0] = 2;
        assert!(matches!(
            s.open(b"m\0id", &bad),
            Err(EncryptionError::Format(_))
        ));
        assert!(matches!(
            s.open(b"m\0id", &sealed[..OVERHEAD - 1]),
            Err(EncryptionError::Format(_))
        ));
    }

    #[test]
    fn another_record_key_or_another_key_does_not_open() {
        let s = sealer(7);
        let sealed = s.seal(b"r\0id-one\0\0\0\0\0", b"state").unwrap();
        // Swapped between recipients or messages: the associated data differs.
        assert!(s.open(b"r\0id-one\0\0\0\0\x01", &sealed).is_err());
        assert!(s.open(b"r\0id-two\0\0\0\0\0", &sealed).is_err());
        assert!(sealer(8).open(b"r\0id-one\0\0\0\0\0", &sealed).is_err());
        let mut out = b"kept".to_vec();
        assert!(sealer(8)
            .open_append(b"r\0id-one\0\0\0\0\0", &sealed, &mut out)
            .is_err());
        assert_eq!(out, b"kept", "a failed open leaves the buffer as it was");
    }

    #[test]
    fn the_check_value_tells_the_right_key_from_a_wrong_one() {
        let check = sealer(1).check_value().unwrap();
        assert!(sealer(1).matches_check(&check));
        assert!(!sealer(2).matches_check(&check));
        assert!(!sealer(1).matches_check(b"garbage"));
    }

    #[test]
    fn key_files_raw_base64_bad_and_too_open() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, content: &[u8], mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        };
        let raw = write("raw", &[9; 32], 0o600);
        let b64 = write(
            "b64",
            format!(
                "  {}\n",
                base64::engine::general_purpose::STANDARD.encode([9; 32])
            )
            .as_bytes(),
            0o400,
        );
        let sealed = QueueKey::load(&raw)
            .unwrap()
            .sealer()
            .seal(b"k", b"v")
            .unwrap();
        assert_eq!(
            QueueKey::load(&b64)
                .unwrap()
                .sealer()
                .open(b"k", &sealed)
                .unwrap(),
            b"v",
            "raw and base64 forms of the same bytes are the same key"
        );
        let short = write("short", b"c2hvcnQ=\n", 0o600);
        let err = QueueKey::load(&short).unwrap_err().to_string();
        assert!(err.contains("does not decode to 32 bytes"), "{err}");
        let empty = write("empty", b"\n", 0o600);
        assert!(QueueKey::load(&empty).is_err());
        // S4: group or others may read it → refused, naming the file and the fix.
        let open = write("open", &[9; 32], 0o644);
        let err = QueueKey::load(&open).unwrap_err().to_string();
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
        let debug = format!("{:?}", QueueKey::load(&raw).unwrap());
        assert!(!debug.contains("9, 9"), "{debug}");
    }

    #[test]
    fn write_new_key_makes_a_0600_file_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.key");
        write_new_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = QueueKey::load(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let err = write_new_key(&path).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let other = dir.path().join("other.key");
        write_new_key(&other).unwrap();
        let sealed = key.sealer().check_value().unwrap();
        assert!(!QueueKey::load(&other)
            .unwrap()
            .sealer()
            .matches_check(&sealed));
    }
}
