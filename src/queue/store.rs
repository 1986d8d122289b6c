//! The queue store interface. The rest of tlsgate sees only this trait, never sled (design.md,
//! "sled caveat"), so the storage engine, or an encrypting wrapper (S3), can change behind it.
//!
//! Methods are blocking: callers run them off the async threads (the group committer's own
//! thread, or `spawn_blocking`).

use super::message::{MessageMeta, NewMessage, QueueId, RecipientState};

/// Each variant's message is complete (it embeds its cause) and none reports a `source()`, so
/// an error chain printed link by link says every cause once.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("queue store I/O error: {0}")]
    Io(std::io::Error),
    #[error("queue store error: {0}")]
    Engine(String),
    #[error("queue record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("not enough free disk space in the queue directory ({available} bytes left)")]
    DiskFull { available: u64 },
    #[error("the queue committer has stopped")]
    Closed,
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> StoreError {
        StoreError::Io(e)
    }
}

impl StoreError {
    /// True when the cause is a full file system (ENOSPC / EDQUOT).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::DiskFull { .. } => true,
            StoreError::Io(e) => {
                matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
            }
            _ => false,
        }
    }
}

pub trait Store: Send + Sync + 'static {
    /// Writes a message, its body and the initial recipient states atomically: after a crash
    /// either all of it or none of it is there. Not durable until [`Store::sync`] returns.
    fn write_message(&self, msg: &NewMessage, states: &[RecipientState]) -> Result<(), StoreError>;

    /// Makes everything written so far durable (survives power loss).
    fn sync(&self) -> Result<(), StoreError>;

    fn message(&self, id: &QueueId) -> Result<Option<MessageMeta>, StoreError>;

    fn body(&self, id: &QueueId) -> Result<Option<Vec<u8>>, StoreError>;

    fn recipient_states(&self, id: &QueueId) -> Result<Vec<RecipientState>, StoreError>;

    fn set_recipient_state(
        &self,
        id: &QueueId,
        index: usize,
        state: &RecipientState,
    ) -> Result<(), StoreError>;

    /// Every message in the queue, oldest first.
    fn message_ids(&self) -> Result<Vec<QueueId>, StoreError>;

    fn remove_message(&self, id: &QueueId) -> Result<(), StoreError>;
}
