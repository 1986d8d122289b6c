//! The redb implementation of [`Store`] (issue 16 item 2: the default engine).
//!
//! Layout: one file, [`FILE`], with one table whose keys are those of the sled store
//! ([`super::sled_store`]'s module doc: `m\0<id>`, `b\0<id>\0<n:u32be>`, `r\0<id>\0<n:u32be>`),
//! so that both engines hold the same records and sealing binds the same associated data.
//!
//! Group commit (S5): the writes of one committer group go into one open write transaction;
//! [`RedbStore::sync`] commits it with `Durability::Immediate`, which returns only after redb
//! has fsynced its file. Nothing is visible to readers, nor durable, before that commit: the
//! committer announces a message only after `sync`, so no reader looks for it earlier.
//!
//! A write that fails inside the open transaction may have left part of a message in it;
//! redb cannot take back part of a transaction, so the whole transaction is dropped (aborted)
//! and the following `sync` fails. The committer then answers every job of the group with
//! the failure: nothing of the group is acknowledged, so nothing acknowledged is lost.
//!
//! redb frees the pages of removed records for reuse at the commit after no reader needs
//! them, so the file stops growing once the queue's size is steady, but it never gives them
//! back to the file system: a queue that once held many messages keeps its largest size.
//! [`Store::compact`] does (issue 16 item 5: the disk use follows what is queued). redb
//! compacts only through `&mut Database` with no transaction alive, so the database sits in a
//! `RwLock`: every transaction is begun under its read side, compaction holds the write side
//! and the group lock (so no group's transaction is open), and a read transaction still alive
//! from before makes compaction give up until the next try (redb checks that itself).
//!
//! Encryption at rest (S3): as in the sled store, every value is sealed with its full key as
//! associated data and the directory holds [`super::engine::KEY_CHECK_FILE`].

use super::engine::{read_key_check, write_key_check};
use super::message::{MessageMeta, NewMessage, QueueId, RecipientState};
use super::seal::QueueKey;
use super::sled_store::BODY_CHUNK;
use super::store::{Store, StoreError};
use redb::{Database, Durability, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard};

/// The database file inside the queue directory; its presence marks a redb queue.
pub const FILE: &str = "queue.redb";

/// redb's page cache: far below its 1 GiB default, so that a large queue does not cost a
/// gigabyte of memory (issue 16 item 5: 100,000 queued messages under 200 MB RSS). The
/// scheduler reads envelopes, not bodies, so a small cache serves it.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Compaction is tried only on a file at least this large: below it, the space is reused
/// soon anyway. (redb's own page statistics still count the pages freed by the last
/// removals until a later commit, so the file's length is the measure.)
const COMPACT_MIN_FILE: u64 = 16 * 1024 * 1024;

/// A record read back: its key and stored value.
type Record = (Vec<u8>, Vec<u8>);

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("queue");

const META: &[u8] = b"m\0";
const BODY: &[u8] = b"b\0";
const RCPT: &[u8] = b"r\0";

/// The [`Store`] on redb, with the layout of the module doc.
pub struct RedbStore {
    dir: PathBuf,
    /// Read side for every transaction, write side for compaction (module doc).
    db: RwLock<Database>,
    /// Messages removed since the last compaction: none, nothing to give back.
    removed: AtomicU64,
    /// The write transaction of the current group, begun by its first write and committed
    /// by [`RedbStore::sync`] (module doc).
    pending: Mutex<Pending>,
    /// The key values are sealed with (S3); `None`: a plaintext store.
    key: Option<Arc<QueueKey>>,
}

/// The group's open write transaction, or why the group failed.
#[derive(Default)]
struct Pending {
    txn: Option<WriteTransaction>,
    /// Set when a write failed inside the group: its transaction was dropped, and the next
    /// `sync` reports this so that no job of the group is acknowledged (module doc).
    failed: Option<String>,
}

/// Maps any redb error to a [`StoreError`]: I/O stays I/O; the file lock held by another
/// process becomes `WouldBlock` so that the CLI can say "stop the relay first".
fn engine(e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Io(io) => StoreError::Io(io),
        redb::Error::DatabaseAlreadyOpen => StoreError::Io(std::io::Error::new(
            std::io::ErrorKind::WouldBlock,
            "could not acquire lock: the queue is open in another process",
        )),
        other => StoreError::Engine(format!("redb: {other}")),
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

/// The key range of every record whose key starts with `prefix`, which ends in a NUL byte:
/// from `prefix` (inclusive) to the same bytes ending in 1 (exclusive).
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    (prefix.to_vec(), end)
}

/// Prefix of all chunk / recipient keys of one message.
fn children(prefix: &[u8], id: &QueueId) -> Vec<u8> {
    let mut k = key(prefix, id, None);
    k.push(0);
    k
}

fn record_name(k: &[u8]) -> String {
    String::from_utf8_lossy(k).replace('\0', "/")
}

fn corrupt(k: &[u8], reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: record_name(k),
        reason: reason.to_string(),
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_stdvec(value).map_err(|e| StoreError::Engine(format!("encode: {e}")))
}

impl RedbStore {
    /// Opens (creating it on first start) the store in `dir`, sealed with `key` (S3) or in
    /// plaintext when `key` is `None`. As [`super::SledStore::open_with`]: the key is checked
    /// before the database is opened; a new store with a key gets its key check first; an
    /// existing plaintext store with a key is refused ([`super::at_rest::open_store`] re-seals
    /// it).
    pub fn open_with(dir: &Path, key: Option<Arc<QueueKey>>) -> Result<RedbStore, StoreError> {
        super::engine::check_key(dir, key.as_deref())?;
        let file = dir.join(FILE);
        if let Some(key) = &key {
            if read_key_check(dir)?.is_none() {
                if file.exists() {
                    return Err(StoreError::Engine(format!(
                        "{}: a plaintext queue; it must be re-sealed before it is opened with a key",
                        dir.display()
                    )));
                }
                write_key_check(dir, key)?;
            }
        }
        super::engine::private_dir(dir)?;
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&file)
            .map_err(engine)?;
        // The table exists from the first start on, so that readers never meet a missing one.
        let txn = db.begin_write().map_err(engine)?;
        txn.open_table(TABLE).map_err(engine)?;
        txn.commit().map_err(engine)?;
        // The directory entry of a new database file must be durable too.
        File::open(dir)?.sync_all()?;
        Ok(RedbStore {
            dir: dir.to_path_buf(),
            db: RwLock::new(db),
            removed: AtomicU64::new(0),
            pending: Mutex::new(Pending::default()),
            key,
        })
    }

    /// Opens a plaintext store in `dir` (see [`RedbStore::open_with`]).
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_with(dir, None)
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database for beginning a transaction (module doc: compaction waits for none).
    fn db(&self) -> Result<RwLockReadGuard<'_, Database>, StoreError> {
        self.db
            .read()
            .map_err(|_| StoreError::Engine("redb database lock poisoned".into()))
    }

    fn lock(&self) -> Result<MutexGuard<'_, Pending>, StoreError> {
        self.pending
            .lock()
            .map_err(|_| StoreError::Engine("redb transaction lock poisoned".into()))
    }

    /// Runs `f` in the group's write transaction (begun here if this is the group's first
    /// write). If `f` fails, the transaction is dropped and the group marked failed.
    fn in_group(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, &'static [u8], &'static [u8]>) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut pending = self.lock()?;
        if let Some(reason) = &pending.failed {
            return Err(StoreError::Engine(format!(
                "an earlier write of this group failed: {reason}"
            )));
        }
        if pending.txn.is_none() {
            let mut txn = self.db()?.begin_write().map_err(engine)?;
            txn.set_durability(Durability::Immediate);
            pending.txn = Some(txn);
        }
        let result = match &pending.txn {
            Some(txn) => txn
                .open_table(TABLE)
                .map_err(engine)
                .and_then(|mut table| f(&mut table)),
            None => Err(StoreError::Engine("no write transaction".into())),
        };
        if let Err(e) = &result {
            // Dropping a write transaction aborts it (module doc).
            pending.txn = None;
            pending.failed = Some(e.to_string());
        }
        result
    }

    /// The value stored for `plain` under record key `k`: sealed when the store has a key,
    /// else `plain` itself (not copied: a 50 MB body is not held twice, issue 16 item 5).
    fn stored<'a>(&self, k: &[u8], plain: &'a [u8]) -> Result<Cow<'a, [u8]>, StoreError> {
        match &self.key {
            Some(key) => key
                .sealer()
                .seal(k, plain)
                .map(Cow::Owned)
                .map_err(StoreError::from),
            None => Ok(Cow::Borrowed(plain)),
        }
    }

    /// The plaintext of stored value `v` of record `k`.
    fn plain(&self, k: &[u8], v: &[u8]) -> Result<Vec<u8>, StoreError> {
        match &self.key {
            Some(key) => key.sealer().open(k, v).map_err(|e| corrupt(k, e)),
            None => Ok(v.to_vec()),
        }
    }

    fn decode_stored<T: DeserializeOwned>(&self, k: &[u8], v: &[u8]) -> Result<T, StoreError> {
        let plain = self.plain(k, v)?;
        postcard::from_bytes(&plain).map_err(|e| corrupt(k, e))
    }

    fn read_table(&self) -> Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError> {
        let txn = self.db()?.begin_read().map_err(engine)?;
        txn.open_table(TABLE).map_err(engine)
    }

    /// Every (key, value) whose key starts with `prefix` (ending in NUL), in key order.
    fn scan(&self, prefix: &[u8]) -> Result<Vec<Record>, StoreError> {
        let table = self.read_table()?;
        let (start, end) = prefix_range(prefix);
        let mut out = Vec::new();
        for item in table
            .range::<&[u8]>(start.as_slice()..end.as_slice())
            .map_err(engine)?
        {
            let (k, v) = item.map_err(engine)?;
            out.push((k.value().to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }
}

/// A group's write transaction still open when the store goes (a sync that never came: the
/// committer's best-effort take-back after a failed sync, or a reopening after an I/O error,
/// issue 16 item 4) is aborted first: redb's own drop begins a write transaction and would
/// wait for the open one for ever, and fields drop in declaration order, `db` before `pending`.
impl Drop for RedbStore {
    fn drop(&mut self) {
        let pending = self.pending.get_mut().unwrap_or_else(|p| p.into_inner());
        drop(pending.txn.take());
    }
}

impl Store for RedbStore {
    fn write_message(&self, msg: &NewMessage, states: &[RecipientState]) -> Result<(), StoreError> {
        // Everything is sealed first, so that a sealing error leaves the group untouched.
        let id = &msg.meta.id;
        let mut records = Vec::with_capacity(1 + msg.body.len() / BODY_CHUNK + 1 + states.len());
        let k = key(META, id, None);
        let v = self.stored(&k, &encode(&msg.meta)?)?.into_owned();
        records.push((k, Cow::Owned(v)));
        for (n, chunk) in msg.body.chunks(BODY_CHUNK).enumerate() {
            let k = key(BODY, id, Some(n as u32));
            let v = self.stored(&k, chunk)?;
            records.push((k, v));
        }
        for (n, state) in states.iter().enumerate() {
            let k = key(RCPT, id, Some(n as u32));
            let v = self.stored(&k, &encode(state)?)?.into_owned();
            records.push((k, Cow::Owned(v)));
        }
        self.in_group(|table| {
            for (k, v) in &records {
                table.insert(k.as_slice(), v.as_ref()).map_err(engine)?;
            }
            Ok(())
        })
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut pending = self.lock()?;
        if let Some(reason) = pending.failed.take() {
            return Err(StoreError::Engine(format!(
                "a write of this group failed, nothing of it was committed: {reason}"
            )));
        }
        match pending.txn.take() {
            // Durability::Immediate: commit returns after redb's fsync (module doc).
            Some(txn) => txn.commit().map_err(engine),
            None => Ok(()),
        }
    }

    fn message(&self, id: &QueueId) -> Result<Option<MessageMeta>, StoreError> {
        let k = key(META, id, None);
        let table = self.read_table()?;
        let Some(v) = table.get(k.as_slice()).map_err(engine)? else {
            return Ok(None);
        };
        let plain = self.plain(&k, v.value())?;
        MessageMeta::decode(&plain)
            .map(Some)
            .map_err(|e| corrupt(&k, e))
    }

    fn body(&self, id: &QueueId) -> Result<Option<Vec<u8>>, StoreError> {
        let Some(meta) = self.message(id)? else {
            return Ok(None);
        };
        let mut body = Vec::with_capacity(usize::try_from(meta.size).unwrap_or(0));
        let table = self.read_table()?;
        let (start, end) = prefix_range(&children(BODY, id));
        for item in table
            .range::<&[u8]>(start.as_slice()..end.as_slice())
            .map_err(engine)?
        {
            let (k, chunk) = item.map_err(engine)?;
            match &self.key {
                Some(key) => key
                    .sealer()
                    .open_append(k.value(), chunk.value(), &mut body)
                    .map_err(|e| corrupt(k.value(), e))?,
                None => body.extend_from_slice(chunk.value()),
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
        self.scan(&children(RCPT, id))?
            .iter()
            .map(|(k, v)| self.decode_stored(k, v))
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
        let v = self.stored(&k, &encode(state)?)?.into_owned();
        self.in_group(|table| {
            table.insert(k.as_slice(), v.as_slice()).map_err(engine)?;
            Ok(())
        })
    }

    fn message_ids(&self) -> Result<Vec<QueueId>, StoreError> {
        let table = self.read_table()?;
        let (start, end) = prefix_range(META);
        let mut ids = Vec::new();
        for item in table
            .range::<&[u8]>(start.as_slice()..end.as_slice())
            .map_err(engine)?
        {
            let (k, _) = item.map_err(engine)?;
            let raw = String::from_utf8_lossy(&k.value()[META.len()..]).into_owned();
            match QueueId::parse(&raw) {
                Some(id) => ids.push(id),
                None => return Err(corrupt(k.value(), "not a queue id")),
            }
        }
        Ok(ids)
    }

    fn remove_message(&self, id: &QueueId) -> Result<(), StoreError> {
        let meta = key(META, id, None);
        let ranges = [
            prefix_range(&children(BODY, id)),
            prefix_range(&children(RCPT, id)),
        ];
        self.in_group(|table| {
            table.remove(meta.as_slice()).map_err(engine)?;
            for (start, end) in &ranges {
                table
                    .retain_in::<&[u8], _>(start.as_slice()..end.as_slice(), |_, _| false)
                    .map_err(engine)?;
            }
            Ok(())
        })?;
        self.removed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// redb's compaction, when messages were removed since the last one and the file has at
    /// least [`COMPACT_MIN_FILE`] bytes (the caller asks only when the queue is small, so
    /// most of such a file is unused). Blocks the committer's
    /// writes and every reader while it runs (module doc); a group in progress or a reader
    /// still alive skips this turn (`Ok(false)`).
    fn compact(&self) -> Result<bool, StoreError> {
        if self.removed.load(Ordering::Relaxed) == 0 {
            return Ok(false);
        }
        // The group lock first, as in_group takes it: no group's transaction can begin now.
        let pending = self.lock()?;
        if pending.txn.is_some() || pending.failed.is_some() {
            return Ok(false);
        }
        let mut db = self
            .db
            .write()
            .map_err(|_| StoreError::Engine("redb database lock poisoned".into()))?;
        if std::fs::metadata(self.dir.join(FILE))?.len() < COMPACT_MIN_FILE {
            return Ok(false);
        }
        self.removed.store(0, Ordering::Relaxed);
        match db.compact() {
            Ok(done) => Ok(done),
            // A read transaction begun before is still alive: try again next time.
            Err(redb::CompactionError::TransactionInProgress) => {
                self.removed.fetch_add(1, Ordering::Relaxed);
                Ok(false)
            }
            Err(e) => Err(engine(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::message::RecipientState;
    use crate::queue::sled_store::tests::sample_message;

    /// A store dropped with a group's write transaction still open (written, never synced)
    /// goes at once and can be opened again; before, redb's drop waited for the open
    /// transaction for ever (seen as a hanging test). The unsynced message is not there.
    #[test]
    fn a_store_dropped_with_an_open_group_does_not_hang() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let msg = sample_message(b"never synced".to_vec(), 1);
        let id = msg.meta.id.clone();
        store
            .write_message(&msg, &[RecipientState::new_pending(1)])
            .unwrap();
        let (done, dropped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(store);
            let _ = done.send(());
        });
        dropped
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the store was dropped in time");
        let again = RedbStore::open(dir.path()).unwrap();
        assert_eq!(again.message(&id).unwrap(), None);
    }

    /// Issue 16 item 5: once a large queue has been delivered, compaction gives the file's
    /// unused space back; with nothing removed since, it does nothing.
    #[test]
    fn compaction_gives_back_the_space_of_removed_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        let file = dir.path().join(FILE);
        let mut ids = Vec::new();
        for _ in 0..40 {
            let msg = sample_message(vec![b'x'; 1 << 20], 1);
            store
                .write_message(&msg, &[RecipientState::new_pending(0)])
                .unwrap();
            ids.push(msg.meta.id.clone());
            store.sync().unwrap();
        }
        let kept = sample_message(b"Subject: kept\r\n\r\nstill queued\r\n".to_vec(), 1);
        store
            .write_message(&kept, &[RecipientState::new_pending(0)])
            .unwrap();
        store.sync().unwrap();
        let full = std::fs::metadata(&file).unwrap().len();
        assert!(full > 40 << 20, "{full}");
        for id in &ids {
            store.remove_message(id).unwrap();
        }
        store.sync().unwrap();
        assert!(store.compact().unwrap());
        let compacted = std::fs::metadata(&file).unwrap().len();
        assert!(compacted < 4 << 20, "{full} -> {compacted}");
        // The message still queued reads back whole.
        assert_eq!(store.body(&kept.meta.id).unwrap().unwrap(), kept.body);
        assert_eq!(store.message_ids().unwrap(), vec![kept.meta.id.clone()]);
        // Nothing removed since: no work.
        assert!(!store.compact().unwrap());
    }

    #[test]
    fn prefix_ranges_end_after_the_prefix() {
        assert_eq!(
            prefix_range(b"b\0id\0"),
            (b"b\0id\0".to_vec(), b"b\0id\x01".to_vec())
        );
    }
}
