//! Which storage engine holds the queue (`queue.engine`, issue 16 item 2), and what both
//! engines share on disk: the key check of a sealed queue (S3).
//!
//! A queue directory written by one engine is refused by the other, before anything in it is
//! opened or created: opening it anyway would start an empty queue next to the real one, and
//! the messages in the real one would never be delivered (S5).

use super::message::NewMessage;
use super::redb_store::{self, RedbStore};
use super::seal::{EncryptionError, QueueKey};
use super::sled_store::{SledStore, BODY_CHUNK};
use super::store::{Store, StoreError, WrongEngine};
pub use crate::config::QueueEngine;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// In a sealed store's directory: the key check ([`super::seal::Sealer::check_value`]).
pub const KEY_CHECK_FILE: &str = "key-check";
/// A key check file is far smaller than this; the bound on reading one.
const KEY_CHECK_MAX: u64 = 4096;
/// Messages copied per commit by [`copy`].
const COPY_BATCH: usize = 256;

/// The engine whose files are in `dir`, `None` for a new (or empty) queue directory.
/// sled keeps `db` and `conf`; redb one file, [`redb_store::FILE`].
pub fn found(dir: &Path) -> Option<QueueEngine> {
    if dir.join(redb_store::FILE).exists() {
        Some(QueueEngine::Redb)
    } else if dir.join("db").exists() || dir.join("conf").exists() {
        Some(QueueEngine::Sled)
    } else {
        None
    }
}

/// Refuses a queue directory written by another engine than `engine` (module doc).
pub fn check_engine(dir: &Path, engine: QueueEngine) -> Result<(), StoreError> {
    match found(dir) {
        Some(other) if other != engine => Err(StoreError::WrongEngine(Box::new(WrongEngine {
            queue: dir.display().to_string(),
            found: other.name(),
            configured: engine.name(),
        }))),
        _ => Ok(()),
    }
}

/// Opens the store in `dir` with `engine`, sealed with `key` or plaintext; the other engine's
/// queue is refused first ([`check_engine`]). Re-sealing a plaintext queue is
/// [`super::at_rest::open_store`]'s job; this refuses one opened with a key.
pub fn open_with(
    dir: &Path,
    engine: QueueEngine,
    key: Option<Arc<QueueKey>>,
) -> Result<Arc<dyn Store>, StoreError> {
    check_engine(dir, engine)?;
    Ok(match engine {
        QueueEngine::Redb => Arc::new(RedbStore::open_with(dir, key)?),
        QueueEngine::Sled => Arc::new(SledStore::open_with(dir, key)?),
    })
}

/// What [`copy`] wrote: what re-sealing, `queue rekey` and `queue migrate` report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Copied {
    /// Messages copied.
    pub messages: u64,
    /// Records written for them (envelopes, body chunks, recipient states).
    pub records: u64,
}

/// Copies every message (envelope, body, recipient states) of `source` into `target`,
/// committing every [`COPY_BATCH`] messages and at the end. Used to re-seal, rekey and change
/// engines ([`super::at_rest`]); a record that does not read back stops the copy.
pub fn copy(source: &dyn Store, target: &dyn Store) -> Result<Copied, StoreError> {
    let mut copied = Copied::default();
    let mut in_batch = 0;
    for id in source.message_ids()? {
        let Some(meta) = source.message(&id)? else {
            continue;
        };
        let body = source.body(&id)?.unwrap_or_default();
        let states = source.recipient_states(&id)?;
        copied.messages += 1;
        copied.records += 1 + body.len().div_ceil(BODY_CHUNK) as u64 + states.len() as u64;
        let message = NewMessage { meta, body };
        target.write_message(&message, &states)?;
        in_batch += 1;
        if in_batch == COPY_BATCH {
            target.sync()?;
            in_batch = 0;
        }
    }
    target.sync()?;
    Ok(copied)
}

/// The key check stored in `dir`, `None` when there is none (a plaintext or new store).
pub(crate) fn read_key_check(dir: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let file = match File::open(dir.join(KEY_CHECK_FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut value = Vec::new();
    file.take(KEY_CHECK_MAX).read_to_end(&mut value)?;
    Ok(Some(value))
}

/// Refuses a sealed store without its key, or with another key (S3), before anything in
/// `dir` is opened or changed.
pub fn check_key(dir: &Path, key: Option<&QueueKey>) -> Result<(), StoreError> {
    let queue = dir.display().to_string();
    match (read_key_check(dir)?, key) {
        (None, _) => Ok(()),
        (Some(_), None) => Err(StoreError::from(EncryptionError::KeyRequired { queue })),
        (Some(check), Some(key)) if key.sealer().matches_check(&check) => Ok(()),
        (Some(_), Some(key)) => Err(StoreError::from(EncryptionError::WrongKey {
            queue,
            key_file: key.path().display().to_string(),
        })),
    }
}

/// Writes the key check of `key` into `dir` (created if missing), durably: the file and the
/// directory entry are synced before the engine writes its first sealed record there.
/// Makes the queue directory `dir` exist with mode 0700 whatever the umask, and tightens an
/// existing one that group or others could enter (with a warning): the queue holds mail, and
/// no other local user may read it (S3, S4; Postfix keeps its queue directories 0700 too).
/// Both engines create their files with the process's umask (0644 under the common 022), so
/// the directory is what keeps them private when tlsgate runs outside the shipped unit (whose
/// `UMask=0077` and `StateDirectoryMode=0700` do the same).
pub(crate) fn private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            queue = %dir.display(),
            mode = %format!("{mode:04o}"),
            "the queue directory was open to other users; set to 0700"
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

pub(crate) fn write_key_check(dir: &Path, key: &QueueKey) -> Result<(), StoreError> {
    private_dir(dir)?;
    let value = key.sealer().check_value().map_err(StoreError::from)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(KEY_CHECK_FILE))?;
    file.write_all(&value)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(())
}
