//! The queue store interface. The rest of tlsgate sees only this trait, never redb or sled
//! (design.md, "sled caveat"), so the storage engine, or an encrypting wrapper (S3), can change behind it.
//!
//! Methods are blocking: callers run them off the async threads (the group committer's own
//! thread, or [`AsyncStore`], which runs each read on the blocking pool).

use super::message::{MessageMeta, NewMessage, QueueId, RecipientState};
use std::sync::Arc;

/// Each variant's message is complete (it embeds its cause) and none reports a `source()`, so
/// an error chain printed link by link says every cause once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O error of the store's files.
    #[error("queue store I/O error: {0}")]
    Io(std::io::Error),
    /// An error of the storage engine other than I/O (sled's message), or an encoding error.
    #[error("queue store error: {0}")]
    Engine(String),
    /// A stored record does not decode or does not match its envelope; `key` names the record
    /// (`m/<id>`, `b/<id>` …).
    #[error("queue record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// The queue's file system has less than `server.min_free_space`; `available` in bytes.
    #[error("not enough free disk space in the queue directory ({available} bytes left)")]
    DiskFull { available: u64 },
    /// The committer thread has ended (shutdown); nothing was written.
    #[error("the queue committer has stopped")]
    Closed,
    /// The group's sync failed; every message of the group gets this (the one cause, told to
    /// each), keeping whether the file system was full so that the reply can say so.
    #[error("queue sync failed: {reason}")]
    SyncFailed { reason: String, disk_full: bool },
    /// The queue watchdog found the committer stuck (issue 16 item 2): nothing of this job is
    /// confirmed, and the process is about to exit so that it is restarted.
    #[error("the queue is stalled (no commit progress); the relay restarts")]
    Stalled,
    /// A durable write was not confirmed in time (a stuck disk or store). It may still
    /// complete: the caller treats it as failed, so a message is sent twice, never lost.
    #[error("queue commit did not finish within {}", humantime::format_duration(*.limit))]
    Timeout { limit: std::time::Duration },
    /// Queue encryption at rest (S3): the key is wrong or missing, or sealing failed. The
    /// message names the key file and the queue, never the key.
    #[error("{0}")]
    Encryption(Box<super::seal::EncryptionError>),
    /// The queue directory was written by another engine than `queue.engine` (issue 16
    /// item 2); nothing was opened or changed. Boxed: keeps every `Result` small.
    #[error("{0}")]
    WrongEngine(Box<WrongEngine>),
    /// The engine was closed after an I/O error and could not be opened again yet
    /// ([`super::reopen::ReopeningStore`], issue 16 item 4); `reason` is why the last try
    /// failed, `disk_full` whether the file system was full then.
    #[error("the queue store is unavailable after an I/O error: {reason}")]
    Unavailable { reason: String, disk_full: bool },
    /// A store call run on the blocking pool panicked or was cancelled before it returned.
    #[error("queue {operation} did not complete: {reason}")]
    Aborted {
        operation: &'static str,
        reason: String,
    },
}

/// A queue directory of another engine than the configured one ([`StoreError::WrongEngine`]).
#[derive(Debug, thiserror::Error)]
#[error("the queue in {queue} was written by {found}, but queue.engine is \"{configured}\"; nothing was changed. Set queue.engine = \"{found}\", or stop the relay and run `tlsgate queue migrate` (README, Queue engine)")]
pub struct WrongEngine {
    /// The queue directory.
    pub queue: String,
    /// The engine whose files are there.
    pub found: &'static str,
    /// `queue.engine`.
    pub configured: &'static str,
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        StoreError::Io(e)
    }
}

impl From<super::seal::EncryptionError> for StoreError {
    fn from(e: super::seal::EncryptionError) -> StoreError {
        StoreError::Encryption(Box::new(e))
    }
}

impl StoreError {
    /// True when the cause is a full file system (ENOSPC / EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull { .. } => true,
            StoreError::SyncFailed { disk_full, .. }
            | StoreError::Unavailable { disk_full, .. } => *disk_full,
            // sled hands on a copy of the OS error that keeps only its kind.
            StoreError::Io(e) => {
                matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                    || matches!(
                        e.kind(),
                        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                    )
            }
            _ => false,
        }
    }
}

/// The queue's storage engine. Blocking calls (see the module doc); only the
/// [`Committer`](super::Committer) writes, so durability has one owner (S5).
pub trait Store: Send + Sync + 'static {
    /// Writes a message, its body and the initial recipient states atomically: after a crash
    /// either all of it or none of it is there. Not durable until [`Store::sync`] returns.
    fn write_message(&self, msg: &NewMessage, states: &[RecipientState]) -> Result<(), StoreError>;

    /// Makes everything written so far durable (survives power loss).
    fn sync(&self) -> Result<(), StoreError>;

    /// The envelope of a message, `None` when it is not queued.
    fn message(&self, id: &QueueId) -> Result<Option<MessageMeta>, StoreError>;

    /// The body of a message, `None` when it is not queued; [`StoreError::Corrupt`] when its
    /// length differs from `MessageMeta::size`.
    fn body(&self, id: &QueueId) -> Result<Option<Vec<u8>>, StoreError>;

    /// The recipient states in recipient order; empty when the message is not queued.
    fn recipient_states(&self, id: &QueueId) -> Result<Vec<RecipientState>, StoreError>;

    /// Replaces the state of the recipient at position `index`. Not durable until
    /// [`Store::sync`].
    fn set_recipient_state(
        &self,
        id: &QueueId,
        index: usize,
        state: &RecipientState,
    ) -> Result<(), StoreError>;

    /// Every message in the queue, oldest first.
    fn message_ids(&self) -> Result<Vec<QueueId>, StoreError>;

    /// Removes a message, body and states in one batch; removing a message that is not there
    /// is not an error. Not durable until [`Store::sync`].
    fn remove_message(&self, id: &QueueId) -> Result<(), StoreError>;

    /// Reopens the engine when an earlier error may have stuck in it (issue 16 item 4,
    /// [`super::reopen::ReopeningStore`]); a plain engine has nothing to do. The committer calls
    /// it between groups only, never while a group is half written.
    fn reopen_if_failed(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// False while the engine waits to be reopened after an error (readiness, issue 16 item 4).
    fn is_open(&self) -> bool {
        true
    }

    /// Gives the space of removed messages back to the file system when the engine keeps it
    /// (issue 16 item 5: the queue's disk use follows what is queued); `true` when it did.
    /// It may block writes and reads while it runs, so the relay calls it only when the
    /// queue is small (`ops::compaction`). The default does nothing.
    fn compact(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
}

/// The store for async callers (the delivery engine and its admin operations).
///
/// The [`Store`] methods block on disk I/O; run on an async worker thread they would stall
/// every session and delivery scheduled on it. Each call here runs on tokio's blocking pool
/// instead, and a call that panics there comes back as [`StoreError::Aborted`].
#[derive(Clone)]
pub struct AsyncStore(Arc<dyn Store>);

/// One queued message as read for delivery: envelope, recipient states and body.
pub struct StoredMessage {
    /// The envelope.
    pub meta: MessageMeta,
    /// One state per recipient, in `meta.recipients` order (checked on load).
    pub states: Vec<RecipientState>,
    /// The message as received (empty when the store had none).
    pub body: Vec<u8>,
}

impl AsyncStore {
    /// Wraps a blocking store.
    pub fn new(store: Arc<dyn Store>) -> AsyncStore {
        AsyncStore(store)
    }

    /// The blocking store, for callers that run their own blocking work.
    pub fn blocking(&self) -> Arc<dyn Store> {
        self.0.clone()
    }

    /// Runs `f` on the blocking pool; `operation` names it in the error if it panics.
    pub async fn run<T, F>(&self, operation: &'static str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    {
        let store = self.0.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Aborted {
                operation,
                reason: e.to_string(),
            })?
    }

    /// The envelope of a message, `None` when it is not (or no longer) queued.
    pub async fn message(&self, id: &QueueId) -> Result<Option<MessageMeta>, StoreError> {
        let id = id.clone();
        self.run("read", move |store| store.message(&id)).await
    }

    /// The recipient states of a message in recipient order; empty when it is not queued.
    pub async fn recipient_states(&self, id: &QueueId) -> Result<Vec<RecipientState>, StoreError> {
        let id = id.clone();
        self.run("read", move |store| store.recipient_states(&id))
            .await
    }

    /// Everything delivery needs of a message, `None` when it is not (or no longer) queued.
    pub async fn load(&self, id: &QueueId) -> Result<Option<StoredMessage>, StoreError> {
        let id = id.clone();
        self.run("read", move |store| {
            let Some(meta) = store.message(&id)? else {
                return Ok(None);
            };
            let states = store.recipient_states(&id)?;
            // Delivery pairs each state with its recipient by position.
            if states.len() != meta.recipients.len() {
                return Err(StoreError::Corrupt {
                    key: id.to_string(),
                    reason: format!(
                        "{} recipient states for {} recipients",
                        states.len(),
                        meta.recipients.len()
                    ),
                });
            }
            let body = store.body(&id)?.unwrap_or_default();
            Ok(Some(StoredMessage { meta, states, body }))
        })
        .await
    }
}
