//! A store that recovers from its own I/O errors by reopening (issue 16 item 4, S5).
//!
//! Both engines make an I/O error stick: after one failed write redb answers every later
//! call with "previous I/O error", and sled keeps reporting `StorageFull`, until the database
//! is opened again. Before this wrapper, one commit that hit a full disk left the relay
//! answering `452 4.3.1` to every message, even after space returned, until a restart.
//!
//! [`ReopeningStore`] passes every call to the engine and notes an error that may have left
//! the engine in such a state. The committer, the only writer, then calls
//! [`Store::reopen_if_failed`] at the start of its next group (or when idle, every second):
//! the engine is dropped — which releases its file lock — and opened again, and opening runs
//! the engine's own crash recovery. Only whole groups are lost by that: a group is reopened
//! only between groups, never while part of one is written, and a group whose write or sync
//! failed was answered with the failure, so nothing acknowledged is dropped with it.
//!
//! While the engine is closed (its reopening failed, e.g. the disk is still full), calls fail
//! at once with [`StoreError::Unavailable`]; reopening is tried again at most once a second.
//!
//! sled cannot be reopened in the process: dropping a sled database flushes it, and on a full
//! file system that flush was seen to block for good (tests/disk_full.rs). For sled the
//! recovery is [`Recovery::Exit`]: the process ends with EX_TEMPFAIL so that the supervisor
//! starts it again (the other remedy); nothing acknowledged is lost, it is on disk.

use super::message::{MessageMeta, NewMessage, QueueId, RecipientState};
use super::store::{Store, StoreError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Opens the engine again; called with no other handle to the old engine alive.
pub type Opener = Box<dyn Fn() -> Result<Arc<dyn Store>, StoreError> + Send + Sync>;

/// How the store recovers from an error that may stick (module doc).
pub enum Recovery {
    /// Drop the engine and open it again with this (redb).
    Reopen(Opener),
    /// End the process with this (sled; the relay passes
    /// [`crate::ops::watchdog::exit_stalled`], tests their own).
    Exit(fn()),
}

/// Reopening is tried at most this often while it keeps failing.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// The wrapper of the module doc.
pub struct ReopeningStore {
    recovery: Recovery,
    /// The open engine; `None` while reopening fails. Calls hold the read lock for their
    /// duration, so reopening (the write lock) waits until no call uses the old engine.
    inner: RwLock<Option<Arc<dyn Store>>>,
    /// An error was seen that may stick in the engine: reopen at the next group boundary.
    failed: AtomicBool,
    /// The last failed reopening: when, and its error's message and disk-full flag.
    last_attempt: Mutex<Option<(Instant, String, bool)>>,
}

/// Errors after which the engine may refuse everything until reopened: I/O errors and the
/// engine's own errors (redb's "previous I/O error" is one). A corrupt record, a sealing
/// fault or a stall say nothing about the engine's state.
fn may_stick(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Io(_) | StoreError::Engine(_) | StoreError::SyncFailed { .. }
    )
}

impl ReopeningStore {
    /// Wraps `store`, which `recovery` recovers after an error (module doc).
    pub fn new(store: Arc<dyn Store>, recovery: Recovery) -> ReopeningStore {
        ReopeningStore {
            recovery,
            inner: RwLock::new(Some(store)),
            failed: AtomicBool::new(false),
            last_attempt: Mutex::new(None),
        }
    }

    /// True while the engine is closed or waits to be reopened after an error.
    pub fn needs_reopen(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Runs `f` on the open engine and notes an error that may stick.
    fn with<T>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let guard = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let Some(store) = guard.as_ref() else {
            return Err(self.unavailable());
        };
        let result = f(store.as_ref());
        if let Err(e) = &result {
            if may_stick(e) {
                self.failed.store(true, Ordering::SeqCst);
            }
        }
        result
    }

    fn unavailable(&self) -> StoreError {
        let last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
        let (reason, disk_full) = match last.as_ref() {
            Some((_, reason, disk_full)) => (reason.clone(), *disk_full),
            None => ("it is being reopened".to_string(), false),
        };
        StoreError::Unavailable { reason, disk_full }
    }
}

impl Store for ReopeningStore {
    fn write_message(&self, msg: &NewMessage, states: &[RecipientState]) -> Result<(), StoreError> {
        self.with(|s| s.write_message(msg, states))
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.with(|s| s.sync())
    }

    fn message(&self, id: &QueueId) -> Result<Option<MessageMeta>, StoreError> {
        self.with(|s| s.message(id))
    }

    fn body(&self, id: &QueueId) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|s| s.body(id))
    }

    fn recipient_states(&self, id: &QueueId) -> Result<Vec<RecipientState>, StoreError> {
        self.with(|s| s.recipient_states(id))
    }

    fn set_recipient_state(
        &self,
        id: &QueueId,
        index: usize,
        state: &RecipientState,
    ) -> Result<(), StoreError> {
        self.with(|s| s.set_recipient_state(id, index, state))
    }

    fn message_ids(&self) -> Result<Vec<QueueId>, StoreError> {
        self.with(|s| s.message_ids())
    }

    fn remove_message(&self, id: &QueueId) -> Result<(), StoreError> {
        self.with(|s| s.remove_message(id))
    }

    fn compact(&self) -> Result<bool, StoreError> {
        self.with(|s| s.compact())
    }

    /// Drops and reopens the engine when an error may have stuck in it (module doc). Called by
    /// the committer between groups only.
    fn reopen_if_failed(&self) -> Result<(), StoreError> {
        if !self.failed.load(Ordering::SeqCst) {
            return Ok(());
        }
        {
            let last = self.last_attempt.lock().unwrap_or_else(|p| p.into_inner());
            if last
                .as_ref()
                .is_some_and(|(at, _, _)| at.elapsed() < REOPEN_INTERVAL)
            {
                drop(last);
                return Err(self.unavailable());
            }
        }
        let open = match &self.recovery {
            Recovery::Reopen(open) => open,
            Recovery::Exit(exit) => {
                tracing::error!(
                    "the queue store (sled) failed and cannot be reopened in the process; \
                     exiting so that the supervisor restarts the relay (nothing acknowledged \
                     is lost)"
                );
                exit();
                return Err(self.unavailable());
            }
        };
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        // The old engine must be gone (its file lock released) before it opens again.
        drop(inner.take());
        match open() {
            Ok(store) => {
                *inner = Some(store);
                self.failed.store(false, Ordering::SeqCst);
                *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) = None;
                tracing::warn!("queue store reopened after an I/O error");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "queue store could not be reopened; retrying");
                *self.last_attempt.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), e.to_string(), e.is_disk_full()));
                Err(self.unavailable())
            }
        }
    }

    fn is_open(&self) -> bool {
        !self.failed.load(Ordering::SeqCst)
    }
}
