//! Opening the queue with or without encryption at rest (S3), and changing its key or its
//! engine: sealing a plaintext queue at start when a key is first configured, `tlsgate queue
//! rekey` and `tlsgate queue migrate` (issue 16 item 2).
//!
//! All of them rewrite the whole store into a fresh directory next to it and then swap
//! directories, rather than re-sealing records in place: sled keeps superseded values in its
//! log segments until it happens to rewrite them, and redb leaves freed pages in its file until
//! they are reused, so in-place re-sealing would leave plaintext (or values under the old key)
//! on disk. A fresh directory holds only what was written to it.
//!
//! The swap is crash-safe (S5: no acknowledged message is lost at any moment). With `queue`
//! the store, `queue.new` the copy being built and `queue.old` the store being replaced:
//! 1. `queue.new` is built completely and synced (its key check first);
//! 2. `queue` → `queue.old`, parent directory synced;
//! 3. `queue.new` → `queue`, parent directory synced;
//! 4. `queue.old` is removed.
//!
//! [`recover`] runs before every open and finishes or undoes what a crash interrupted: `queue`
//! missing with both others present means step 3 is due (`queue.new` is complete, step 2 only
//! happens after it is); `queue` present means any `queue.new` is an unfinished copy (removed,
//! the rewrite starts over) and any `queue.old` is a replaced store (removed). Every state is
//! therefore either the old store or the new one, never a mix, and rewriting is idempotent.

use super::engine::{self, QueueEngine, KEY_CHECK_FILE};
use super::seal::QueueKey;
use super::store::{Store, StoreError};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The sibling of `dir` named `<dir's name>.<suffix>`.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

fn parent(dir: &Path) -> &Path {
    dir.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Finishes or undoes an interrupted rewrite of the store in `dir` (module doc). Returns true
/// when it changed anything.
pub fn recover(dir: &Path) -> Result<bool, StoreError> {
    let new = sibling(dir, "new");
    let old = sibling(dir, "old");
    let mut changed = false;
    if !dir.exists() {
        match (new.exists(), old.exists()) {
            (true, true) => {
                std::fs::rename(&new, dir)?;
                sync_dir(parent(dir))?;
                changed = true;
            }
            (true, false) => {
                return Err(StoreError::Engine(format!(
                    "{} exists without {}: an interrupted queue rewrite that cannot be \
                     completed safely; move it to {} by hand if it is a complete queue",
                    new.display(),
                    dir.display(),
                    dir.display()
                )))
            }
            _ => {}
        }
    }
    for leftover in [&new, &old] {
        if dir.exists() && leftover.exists() {
            std::fs::remove_dir_all(leftover)?;
            sync_dir(parent(dir))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// True when `dir` holds a store (of either engine) without a key check: a plaintext queue.
fn is_plaintext_store(dir: &Path) -> bool {
    engine::found(dir).is_some() && !dir.join(KEY_CHECK_FILE).exists()
}

/// Opens the queue in `dir` with `engine` for the relay (S3). With a key: a new queue is
/// created sealed; a plaintext queue is re-sealed first (the whole store rewritten, module
/// doc); a sealed one opens only with the key it was sealed with. Without a key: a plaintext
/// queue opens, a sealed one is refused. A queue of the other engine is refused
/// ([`engine::check_engine`]). A refused open leaves `dir` as it was (key and engine are
/// checked before anything is opened); only an interrupted rewrite is completed first
/// ([`recover`]).
pub fn open_store(
    dir: &Path,
    engine: QueueEngine,
    key: Option<Arc<QueueKey>>,
) -> Result<Arc<dyn Store>, StoreError> {
    if recover(dir)? {
        tracing::warn!(queue = %dir.display(), "completed an interrupted queue rewrite");
    }
    engine::check_engine(dir, engine)?;
    engine::check_key(dir, key.as_deref())?;
    if let Some(key) = &key {
        if is_plaintext_store(dir) {
            let copied = rewrite(dir, (engine, None), (engine, Some(key.clone())))?;
            tracing::info!(
                queue = %dir.display(),
                key_file = %key.path().display(),
                messages = copied.messages,
                records = copied.records,
                "queue encryption enabled: every record re-sealed (S3)"
            );
        }
    }
    engine::open_with(dir, engine, key)
}

/// What [`rekey`] or [`migrate`] did: the messages and records rewritten.
pub use super::engine::Copied as Rekeyed;

/// Re-seals the queue in `dir` (of `engine`), opened with `current` (its key, `None` for
/// plaintext), under `new` (`None`: decrypt). Offline: both engines lock their files, so this
/// fails while the relay runs. Crash-safe (module doc): after a crash the queue is under the
/// old key or the new one.
pub fn rekey(
    dir: &Path,
    engine: QueueEngine,
    current: Option<Arc<QueueKey>>,
    new: Option<Arc<QueueKey>>,
) -> Result<Rekeyed, StoreError> {
    recover(dir)?;
    engine::check_engine(dir, engine)?;
    engine::check_key(dir, current.as_deref())?;
    if engine::found(dir).is_none() {
        return Err(StoreError::Engine(format!(
            "{}: no queue here (check server.data_dir)",
            dir.display()
        )));
    }
    rewrite(dir, (engine, current), (engine, new))
}

/// Moves the queue in `dir` to the engine `to` (`tlsgate queue migrate`, issue 16 item 2),
/// keeping its key (`key`, `None` for plaintext). Offline and crash-safe like [`rekey`]; a
/// queue already of engine `to` is left alone (`None`).
pub fn migrate(
    dir: &Path,
    to: QueueEngine,
    key: Option<Arc<QueueKey>>,
) -> Result<Option<Rekeyed>, StoreError> {
    recover(dir)?;
    engine::check_key(dir, key.as_deref())?;
    let from = match engine::found(dir) {
        None => {
            return Err(StoreError::Engine(format!(
                "{}: no queue here (check server.data_dir)",
                dir.display()
            )))
        }
        Some(from) if from == to => return Ok(None),
        Some(from) => from,
    };
    rewrite(dir, (from, key.clone()), (to, key)).map(Some)
}

/// Copies the store in `dir` (engine and key `from`) into a fresh `queue.new` (engine and key
/// `to`), then swaps the directories (module doc). Returns what was copied.
fn rewrite(
    dir: &Path,
    from: (QueueEngine, Option<Arc<QueueKey>>),
    to: (QueueEngine, Option<Arc<QueueKey>>),
) -> Result<Rekeyed, StoreError> {
    let new = sibling(dir, "new");
    let old = sibling(dir, "old");
    if new.exists() {
        std::fs::remove_dir_all(&new)?;
    }
    let copied = {
        let source = engine::open_with(dir, from.0, from.1)?;
        let target = engine::open_with(&new, to.0, to.1)?;
        engine::copy(source.as_ref(), target.as_ref())?
        // Both closed here (the engines flush on drop), and the directories may then move.
    };
    // Offline rekey and migrate run as root (README): the copy must keep the queue's owner
    // and mode, or the service user could not open it and other users might read it (S3).
    adopt_owner_and_mode(dir, &new)?;
    sync_dir(&new)?;
    sync_dir(parent(dir))?;
    std::fs::rename(dir, &old)?;
    sync_dir(parent(dir))?;
    std::fs::rename(&new, dir)?;
    sync_dir(parent(dir))?;
    std::fs::remove_dir_all(&old)?;
    sync_dir(parent(dir))?;
    Ok(copied)
}

/// Gives `tree` and everything under it the owner and group of `template`, directories its
/// mode and files its mode without execute bits (a 0700 queue gets 0600 files). Entries are
/// few (an engine's files), so the walk is bounded by what the engine wrote.
fn adopt_owner_and_mode(template: &Path, tree: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(template)?;
    let (uid, gid) = (meta.uid(), meta.gid());
    let dir_mode = meta.mode() & 0o777;
    let file_mode = dir_mode & 0o666;
    // Only root can give files away; any other user wrote them as itself already (and a
    // chown to a group it is not in would fail needlessly).
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut pending = vec![tree.to_path_buf()];
    while let Some(path) = pending.pop() {
        let entry = std::fs::symlink_metadata(&path)?;
        if entry.file_type().is_symlink() {
            continue;
        }
        if as_root {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        }
        let mode = if entry.is_dir() { dir_mode } else { file_mode };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        if entry.is_dir() {
            for child in std::fs::read_dir(&path)? {
                pending.push(child?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::message::{NewMessage, RecipientState};
    use crate::queue::sled_store::tests::sample_message;
    use crate::queue::{SledStore, Store};

    /// Each test runs with both engines (issue 16 item 2: sled stays selectable).
    macro_rules! both_engines {
        ($($name:ident),* $(,)?) => {$(
            mod $name {
                #[test]
                fn redb() {
                    super::$name(super::QueueEngine::Redb)
                }
                #[test]
                fn sled() {
                    super::$name(super::QueueEngine::Sled)
                }
            }
        )*};
    }

    both_engines!(
        a_plaintext_queue_is_resealed_and_reads_back,
        wrong_or_missing_key_is_refused,
        rekey_moves_to_the_new_key,
        an_interrupted_rewrite_recovers_to_one_whole_store,
        migrate_moves_the_queue_to_the_other_engine,
        the_other_engines_queue_is_refused_untouched,
        a_rewritten_queue_keeps_its_owner_and_mode,
    );

    /// Review finding: `tlsgate queue migrate` run as root left a root-owned 0755/0644 queue
    /// the service user could not open (and others could read).
    fn a_rewritten_queue_keeps_its_owner_and_mode(engine: QueueEngine) {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("queue");
        {
            let store = open_store(&dir, engine, None).unwrap();
            write(store.as_ref(), &message("owner"));
            store.sync().unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // As root (the machine and CI), hand the queue to another user first, as a service
        // user would own it.
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        }
        let want_uid = std::fs::metadata(&dir).unwrap().uid();
        migrate(&dir, other(engine), None).unwrap();
        let mut pending = vec![dir.clone()];
        let mut seen = 0;
        while let Some(path) = pending.pop() {
            let meta = std::fs::metadata(&path).unwrap();
            seen += 1;
            assert_eq!(meta.uid(), want_uid, "{}", path.display());
            if meta.is_dir() {
                assert_eq!(meta.mode() & 0o777, 0o700, "{}", path.display());
                for child in std::fs::read_dir(&path).unwrap() {
                    pending.push(child.unwrap().path());
                }
            } else {
                assert_eq!(
                    meta.mode() & 0o077,
                    0,
                    "{} readable by others",
                    path.display()
                );
            }
        }
        assert!(seen > 1, "the migrated queue has files");
    }

    fn key(dir: &Path, name: &str, byte: u8) -> Arc<QueueKey> {
        Arc::new(QueueKey::from_bytes(&dir.join(name), &[byte; 32]).unwrap())
    }

    fn other(engine: QueueEngine) -> QueueEngine {
        match engine {
            QueueEngine::Redb => QueueEngine::Sled,
            QueueEngine::Sled => QueueEngine::Redb,
        }
    }

    /// A message with `marker` in its body (over several chunks) and its sender.
    fn message(marker: &str) -> NewMessage {
        let body = format!("Subject: {marker}\r\n\r\n{}\r\n", marker.repeat(9000)).into_bytes();
        let mut msg = sample_message(body, 1);
        msg.meta.sender = Some(format!("{marker}@example.no"));
        msg
    }

    fn files_contain(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if std::fs::read(&path)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle)
                {
                    found.push(path);
                }
            }
        }
        found
    }

    fn write(store: &dyn Store, msg: &NewMessage) {
        let states = vec![RecipientState::new_pending(1); msg.meta.recipients.len()];
        store.write_message(msg, &states).unwrap();
        store.sync().unwrap();
    }

    /// S3: a plaintext queue opened with a key is re-sealed whole; nothing of it stays in
    /// any file, and every message reads back the same.
    fn a_plaintext_queue_is_resealed_and_reads_back(engine: QueueEngine) {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("queue");
        let msg = message("plainmarker");
        {
            let store = engine::open_with(&dir, engine, None).unwrap();
            write(store.as_ref(), &msg);
        }
        assert!(!files_contain(data.path(), b"plainmarker").is_empty());
        let k = key(data.path(), "k", 1);
        let store = open_store(&dir, engine, Some(k.clone())).unwrap();
        assert!(dir.join(KEY_CHECK_FILE).exists());
        assert_eq!(store.body(&msg.meta.id).unwrap().unwrap(), msg.body);
        assert_eq!(store.message(&msg.meta.id).unwrap().unwrap(), msg.meta);
        assert_eq!(store.recipient_states(&msg.meta.id).unwrap().len(), 1);
        drop(store);
        assert_eq!(
            files_contain(data.path(), b"plainmarker"),
            Vec::<PathBuf>::new()
        );
        assert!(!sibling(&dir, "new").exists() && !sibling(&dir, "old").exists());
        // Idempotent: opening again with the key changes nothing and reads the same.
        let store = open_store(&dir, engine, Some(k)).unwrap();
        assert_eq!(store.body(&msg.meta.id).unwrap().unwrap(), msg.body);
    }

    /// S3: the wrong key and no key are refused, naming the key file; the store is unchanged.
    fn wrong_or_missing_key_is_refused(engine: QueueEngine) {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("queue");
        let msg = message("m1");
        {
            let store = open_store(&dir, engine, Some(key(data.path(), "right", 1))).unwrap();
            write(store.as_ref(), &msg);
        }
        let err = open_store(&dir, engine, Some(key(data.path(), "wrong.key", 2)))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("wrong.key") && err.contains("another key"),
            "{err}"
        );
        let err = open_store(&dir, engine, None).err().unwrap().to_string();
        assert!(err.contains("encryption_key is not set"), "{err}");
        let err = engine::open_with(&dir, engine, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("encrypted"), "{err}");
    }

    /// `queue rekey`: afterwards the new key opens the queue and the old one does not.
    fn rekey_moves_to_the_new_key(engine: QueueEngine) {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("queue");
        let msg = message("m2");
        let old = key(data.path(), "old", 1);
        let new = key(data.path(), "new", 2);
        {
            let store = open_store(&dir, engine, Some(old.clone())).unwrap();
            write(store.as_ref(), &msg);
        }
        let done = rekey(&dir, engine, Some(old.clone()), Some(new.clone())).unwrap();
        assert_eq!(done.messages, 1);
        assert_eq!(
            done.records,
            1 + 1 + msg.body.len().div_ceil(32 * 1024) as u64
        );
        assert!(open_store(&dir, engine, Some(old)).is_err());
        let store = open_store(&dir, engine, Some(new)).unwrap();
        assert_eq!(store.body(&msg.meta.id).unwrap().unwrap(), msg.body);
    }

    /// Crash safety of the directory swap: every interrupted state recovers to one whole store.
    fn an_interrupted_rewrite_recovers_to_one_whole_store(engine: QueueEngine) {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("queue");
        let msg = message("m3");
        let k = key(data.path(), "k", 1);
        {
            let store = engine::open_with(&dir, engine, None).unwrap();
            write(store.as_ref(), &msg);
        }
        // Killed while building queue.new: it is thrown away, the plaintext store stays and
        // is re-sealed again.
        std::fs::create_dir_all(sibling(&dir, "new")).unwrap();
        std::fs::write(sibling(&dir, "new").join("db"), b"half").unwrap();
        let store = open_store(&dir, engine, Some(k.clone())).unwrap();
        assert_eq!(store.body(&msg.meta.id).unwrap().unwrap(), msg.body);
        drop(store);
        // Killed between the two renames: queue.new (complete) becomes the store.
        std::fs::rename(&dir, sibling(&dir, "new")).unwrap();
        std::fs::create_dir_all(sibling(&dir, "old")).unwrap();
        let store = open_store(&dir, engine, Some(k)).unwrap();
        assert_eq!(store.body(&msg.meta.id).unwrap().unwrap(), msg.body);
        assert!(!sibling(&dir, "old").exists());
    }

    /// Issue 16 item 2: `queue migrate` moves every message, its states and its sealing to
    /// the other engine; afterwards only the new engine opens the queue.
    fn migrate_moves_the_queue_to_the_other_engine(engine: QueueEngine) {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("queue");
        let k = key(data.path(), "k", 1);
        let a = message("migrate-a");
        let b = message("migrate-b");
        {
            let store = open_store(&dir, engine, Some(k.clone())).unwrap();
            write(store.as_ref(), &a);
            write(store.as_ref(), &b);
            let delivered = RecipientState {
                attempts: 3,
                ..RecipientState::new_pending(9)
            };
            store
                .set_recipient_state(&b.meta.id, 0, &delivered)
                .unwrap();
            store.sync().unwrap();
        }
        let target = other(engine);
        let done = migrate(&dir, target, Some(k.clone()))
            .unwrap()
            .expect("moved");
        assert_eq!(done.messages, 2);
        assert_eq!(
            done.records,
            2 * (1 + 1 + a.body.len().div_ceil(32 * 1024) as u64)
        );
        assert_eq!(engine::found(&dir), Some(target));
        assert!(open_store(&dir, engine, Some(k.clone())).is_err());
        let store = open_store(&dir, target, Some(k.clone())).unwrap();
        let mut ids = store.message_ids().unwrap();
        ids.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        let mut want = vec![a.meta.id.clone(), b.meta.id.clone()];
        want.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(ids, want);
        assert_eq!(store.body(&b.meta.id).unwrap().unwrap(), b.body);
        assert_eq!(store.recipient_states(&b.meta.id).unwrap()[0].attempts, 3);
        drop(store);
        // Nothing of the plaintext in any file (the old engine's files are gone).
        assert_eq!(
            files_contain(data.path(), b"migrate-b"),
            Vec::<PathBuf>::new()
        );
        // Migrating to the engine it already has changes nothing.
        assert_eq!(migrate(&dir, target, Some(k)).unwrap(), None);
    }

    /// Issue 16 item 2: a queue written by the other engine is refused, naming both
    /// engines, and nothing is created beside it.
    fn the_other_engines_queue_is_refused_untouched(engine: QueueEngine) {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("queue");
        {
            let store = engine::open_with(&dir, other(engine), None).unwrap();
            write(store.as_ref(), &message("m4"));
        }
        let before: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        let err = open_store(&dir, engine, None).err().unwrap().to_string();
        assert!(
            err.contains(&format!("written by {}", other(engine).name()))
                && err.contains(&format!("queue.engine is \"{}\"", engine.name())),
            "{err}"
        );
        let after: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(before, after);
    }

    #[test]
    fn swapped_records_do_not_open() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("queue");
        let k = key(data.path(), "k", 1);
        let a = message("aaaa");
        let b = message("bbbb");
        let store = SledStore::open_with(&dir, Some(k)).unwrap();
        write(&store, &a);
        write(&store, &b);
        // Move b's envelope under a's key: the associated data no longer matches.
        let tree = store.raw_tree();
        let mut ka = b"m\0".to_vec();
        ka.extend_from_slice(a.meta.id.as_str().as_bytes());
        let mut kb = b"m\0".to_vec();
        kb.extend_from_slice(b.meta.id.as_str().as_bytes());
        let vb = tree.get(&kb).unwrap().unwrap();
        tree.insert(&ka, vb).unwrap();
        let err = store.message(&a.meta.id).unwrap_err().to_string();
        assert!(err.contains("does not open"), "{err}");
    }
}
