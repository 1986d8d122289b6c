//! The sled implementation of [`Store`].
//!
//! Layout: one tree, keys prefixed by record kind so that a message is written with a single
//! atomic `apply_batch`:
//! * `m\0<id>` → [`MessageMeta`] (postcard)
//! * `b\0<id>\0<n:u32be>` → body chunk n (bodies are split into [`BODY_CHUNK`] pieces so that
//!   no value is large enough to become a sled "blob" file)
//! * `r\0<id>\0<n:u32be>` → [`RecipientState`] of recipient n
//!
//! Durability (design.md, "sled caveat"): sled 0.34's `flush` ends in `sync_file_range`, which
//! neither flushes the drive's write cache nor the file size, and its blob files are never
//! fsynced at all. [`SledStore::sync`] therefore calls `flush` and then `fsync`s the data file
//! and any blob file it has not synced before.
//!
//! Encryption at rest (S3): opened with a [`QueueKey`], every value is sealed just before it is
//! written and opened just after it is read ([`super::seal`]), with its full key above as
//! associated data; the keys themselves (record kind, queue id, index) stay in the clear. A
//! sealed store's directory holds [`super::engine::KEY_CHECK_FILE`], a sealed known value, so that the wrong
//! key (or none) is refused before sled opens anything ([`SledStore::open_with`]). Turning a
//! plaintext store into a sealed one, and rekeying, is [`super::at_rest`]'s job.

use super::engine::{check_key, read_key_check, write_key_check};
use super::message::{MessageMeta, NewMessage, QueueId, RecipientState};
use super::seal::{EncryptionError, QueueKey};
use super::store::{Store, StoreError};
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Body chunk size: far below sled's blob threshold (segment size / 4 with the defaults).
pub const BODY_CHUNK: usize = 32 * 1024;

const META: &[u8] = b"m\0";
const BODY: &[u8] = b"b\0";
const RCPT: &[u8] = b"r\0";

/// The [`Store`] on sled, with the key layout of the module doc.
pub struct SledStore {
    dir: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    /// sled's main data file, kept open so `sync` costs one fsync and no open.
    data_file: File,
    /// Blob files already fsynced (sled creates them for very large pages).
    synced_blobs: Mutex<HashSet<PathBuf>>,
    /// The key values are sealed with (S3); `None`: a plaintext store.
    key: Option<Arc<QueueKey>>,
}

fn engine(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) => StoreError::Io(io),
        other => StoreError::Engine(other.to_string()),
    }
}

/// How long [`open_db`] waits for sled's file lock to be released in this process.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Opens sled's database in `dir`. sled 0.34 releases its file lock from its background
/// threads a moment after the last handle is dropped, so opening the same queue again right
/// after closing it in this process (re-sealing, migrating, a test) can find the lock still
/// held: that is retried for up to [`LOCK_WAIT`]. A lock held by another process (the relay
/// running while a CLI command opens the queue) is still reported after that wait.
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match sled::Config::new().path(dir).open() {
            Err(sled::Error::Io(io))
                if io.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other.map_err(engine),
        }
    }
}

fn key(prefix: &[u8], id: &QueueId, index: Option<u32>) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + id.as_str().len() + 5);
    k.extend_from_slice(prefix);
    k.extend_from_slice(id.as_str().as_bytes());
    if let Some(n) = index {
        k.push(0);
        k.extend_from_slice(&n.to_be_bytes());
    }
    k
}

/// Prefix of all chunk / recipient keys of one message.
fn children(prefix: &[u8], id: &QueueId) -> Vec<u8> {
    let mut k = key(prefix, id, None);
    k.push(0);
    k
}

fn decode<T: DeserializeOwned>(k: &[u8], v: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(v).map_err(|e| corrupt(k, e))
}

fn corrupt(k: &[u8], e: postcard::Error) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(k).replace('\0', "/"),
        reason: e.to_string(),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Engine(format!("encode: {e}")))
}

/// A record that does not open under the key: named like [`decode`] names it.
fn unopened(k: &[u8], e: EncryptionError) -> StoreError {
    StoreError::Corrupt {
        key: String::from_utf8_lossy(k).replace('\0', "/"),
        reason: e.to_string(),
    }
}

impl SledStore {
    /// Opens (creating it on first start) a plaintext store in `dir`, and syncs the directory
    /// so that sled's new files are durable. A sealed store is refused
    /// ([`EncryptionError::KeyRequired`]).
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        SledStore::open_with(dir, None)
    }

    /// Opens the store in `dir` sealed with `key` (S3), or in plaintext when `key` is `None`.
    /// The key is checked first, before sled opens anything: a sealed store with another key
    /// or without one is refused unchanged. A new store with a key gets its key check first.
    /// An existing plaintext store with a key is refused here: [`super::at_rest::open_store`]
    /// re-seals it.
    pub fn open_with(dir: &Path, key: Option<Arc<QueueKey>>) -> Result<SledStore, StoreError> {
        check_key(dir, key.as_deref())?;
        if let Some(key) = &key {
            if read_key_check(dir)?.is_none() {
                if dir.join("db").exists() {
                    return Err(StoreError::Engine(format!(
                        "{}: a plaintext queue; it must be re-sealed before it is opened with a key",
                        dir.display()
                    )));
                }
                write_key_check(dir, key)?;
            }
        }
        super::engine::private_dir(dir)?;
        let db = open_db(dir)?;
        let tree = db.open_tree("queue").map_err(engine)?;
        let data_file = File::open(dir.join("db"))?;
        // The directory entries of sled's files must be durable too (first start).
        File::open(dir)?.sync_all()?;
        Ok(SledStore {
            dir: dir.to_path_buf(),
            db,
            tree,
            data_file,
            synced_blobs: Mutex::new(HashSet::new()),
            key,
        })
    }

    /// The raw tree, for tests that tamper with stored values.
    #[cfg(test)]
    pub(crate) fn raw_tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// True when values are sealed (S3).
    pub fn is_sealed(&self) -> bool {
        self.key.is_some()
    }

    /// The value stored for `plain` under record key `k`: sealed when the store has a key.
    fn stored(&self, k: &[u8], plain: &[u8]) -> Result<sled::IVec, StoreError> {
        match &self.key {
            Some(key) => Ok(key
                .sealer()
                .seal(k, plain)
                .map_err(StoreError::from)?
                .into()),
            None => Ok(plain.into()),
        }
    }

    /// Decodes the stored value `v` of record `k`, opening it first when the store is sealed.
    /// The plaintext of a stored value: opened with the queue key when there is one.
    fn plain<'v>(&self, k: &[u8], v: &'v [u8]) -> Result<std::borrow::Cow<'v, [u8]>, StoreError> {
        match &self.key {
            Some(key) => Ok(std::borrow::Cow::Owned(
                key.sealer().open(k, v).map_err(|e| unopened(k, e))?,
            )),
            None => Ok(std::borrow::Cow::Borrowed(v)),
        }
    }

    fn decode_stored<T: DeserializeOwned>(&self, k: &[u8], v: &[u8]) -> Result<T, StoreError> {
        match &self.key {
            Some(key) => {
                let plain = key.sealer().open(k, v).map_err(|e| unopened(k, e))?;
                decode(k, &plain)
            }
            None => decode(k, v),
        }
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sync_new_blobs(&self) -> Result<(), StoreError> {
        let blob_dir = self.dir.join("blobs");
        let entries = match std::fs::read_dir(&blob_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut synced = self
            .synced_blobs
            .lock()
            .map_err(|_| StoreError::Engine("blob set lock poisoned".into()))?;
        let mut any_new = false;
        for entry in entries {
            let path = entry?.path();
            if synced.contains(&path) {
                continue;
            }
            match File::open(&path) {
                Ok(f) => f.sync_all()?,
                // sled garbage-collects blobs; one gone since read_dir needs no sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            }
            synced.insert(path);
            any_new = true;
        }
        if any_new {
            File::open(&blob_dir)?.sync_all()?;
            synced.retain(|p| p.exists());
        }
        Ok(())
    }
}

impl Store for SledStore {
    fn write_message(&self, msg: &NewMessage, states: &[RecipientState]) -> Result<(), StoreError> {
        let id = &msg.meta.id;
        let mut batch = sled::Batch::default();
        let k = key(META, id, None);
        let v = self.stored(&k, &encode(&msg.meta)?)?;
        batch.insert(k, v);
        for (n, chunk) in msg.body.chunks(BODY_CHUNK).enumerate() {
            let k = key(BODY, id, Some(n as u32));
            let v = self.stored(&k, chunk)?;
            batch.insert(k, v);
        }
        for (n, state) in states.iter().enumerate() {
            let k = key(RCPT, id, Some(n as u32));
            let v = self.stored(&k, &encode(state)?)?;
            batch.insert(k, v);
        }
        self.tree.apply_batch(batch).map_err(engine)
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(engine)?;
        self.data_file.sync_all()?;
        self.sync_new_blobs()
    }

    fn message(&self, id: &QueueId) -> Result<Option<MessageMeta>, StoreError> {
        let k = key(META, id, None);
        match self.tree.get(&k).map_err(engine)? {
            Some(v) => {
                let plain = self.plain(&k, &v)?;
                MessageMeta::decode(&plain)
                    .map(Some)
                    .map_err(|e| corrupt(&k, e))
            }
            None => Ok(None),
        }
    }

    fn body(&self, id: &QueueId) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(meta) = self.message(id)? else {
            return Ok(None);
        };
        let mut body = Vec::with_capacity(usize::try_from(meta.size).unwrap_or(0));
        for item in self.tree.scan_prefix(children(BODY, id)) {
            let (k, chunk) = item.map_err(engine)?;
            match &self.key {
                // Opened in place at the end of the body: no copy per chunk besides sled's.
                Some(key) => key
                    .sealer()
                    .open_append(&k, &chunk, &mut body)
                    .map_err(|e| unopened(&k, e))?,
                None => body.extend_from_slice(&chunk),
            }
        }
        if body.len() as u64 != meta.size {
            return Err(StoreError::Corrupt {
                key: format!("b/{id}"),
                reason: format!("body has {} octets, expected {}", body.len(), meta.size),
            });
        }
        Ok(Some(body))
    }

    fn recipient_states(&self, id: &QueueId) -> Result<Vec<RecipientState>, StoreError> {
        self.tree
            .scan_prefix(children(RCPT, id))
            .map(|item| {
                let (k, v) = item.map_err(engine)?;
                self.decode_stored(&k, &v)
            })
            .collect()
    }

    fn set_recipient_state(
        &self,
        id: &QueueId,
        index: usize,
        state: &RecipientState,
    ) -> Result<(), StoreError> {
        let index =
            u32::try_from(index).map_err(|_| StoreError::Engine("recipient index".into()))?;
        let k = key(RCPT, id, Some(index));
        let v = self.stored(&k, &encode(state)?)?;
        self.tree.insert(k, v).map_err(engine)?;
        Ok(())
    }

    fn message_ids(&self) -> Result<Vec<QueueId>, StoreError> {
        let mut ids = Vec::new();
        for item in self.tree.scan_prefix(META) {
            let (k, _) = item.map_err(engine)?;
            let raw = String::from_utf8_lossy(&k[META.len()..]).into_owned();
            match QueueId::parse(&raw) {
                Some(id) => ids.push(id),
                None => {
                    return Err(StoreError::Corrupt {
                        key: format!("m/{raw}"),
                        reason: "not a queue id".into(),
                    })
                }
            }
        }
        Ok(ids)
    }

    fn remove_message(&self, id: &QueueId) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        batch.remove(key(META, id, None));
        for prefix in [BODY, RCPT] {
            for item in self.tree.scan_prefix(children(prefix, id)) {
                let (k, _) = item.map_err(engine)?;
                batch.remove(k);
            }
        }
        self.tree.apply_batch(batch).map_err(engine)
    }
}

#[cfg(test)]
pub(crate) mod tests;
