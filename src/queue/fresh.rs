//! Messages committed a moment ago, kept in memory for their first delivery turn (issue 16
//! item 7, CPU per message).
//!
//! Almost every message is delivered within milliseconds of its commit. Reading it back from
//! the store for that first turn (envelope, recipient states and body: three reads and a task
//! on the blocking pool) cost about a twelfth of tlsgate's CPU per message in the e2e bench,
//! to get bytes the committer had in its hands a moment before. So the committer keeps what it
//! has just made durable here, and the delivery engine takes it instead of reading.
//!
//! The store stays the truth (S5): an entry is exactly what was committed, and it is dropped
//! the moment anything else is written for the message. Only the committer writes the queue,
//! and it calls [`FreshMessages::forget`] before it writes new states or removes a message
//! (an operator's hold, bounce or delete), so what is taken here never differs from what a
//! read of the store would return. An entry is taken once: later turns (after a deferral)
//! read the store. Memory is bounded by [`FRESH_BYTES`]: past it, new messages are not kept
//! and their first turn reads the store as before (a backlog, a 50 MB message), so the
//! queue's memory still follows the delivery slots, not the queue (issue 16 item 5).

use super::message::{QueueId, RecipientState};
use super::store::StoredMessage;
use super::NewMessage;
use std::collections::HashMap;
use std::sync::Mutex;

/// Most bytes of bodies kept at once (16 MiB: about 4,000 messages of 4 KiB waiting for their
/// first turn).
pub const FRESH_BYTES: usize = 16 * 1024 * 1024;

/// The messages committed and not yet taken for delivery (module doc).
#[derive(Default)]
pub struct FreshMessages {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    messages: HashMap<QueueId, StoredMessage>,
    /// Sum of the kept bodies' lengths.
    bytes: usize,
}

impl FreshMessages {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `message`, committed with `states`, unless the bodies kept would then pass
    /// [`FRESH_BYTES`]. Called by the committer after the sync, before the message is
    /// announced.
    pub(super) fn keep(&self, message: NewMessage, states: Vec<RecipientState>) {
        let mut inner = self.lock();
        let size = message.body.len();
        if inner.bytes.saturating_add(size) > FRESH_BYTES {
            return;
        }
        inner.bytes += size;
        let id = message.meta.id.clone();
        let stored = StoredMessage {
            meta: message.meta,
            states,
            body: message.body,
        };
        if let Some(old) = inner.messages.insert(id, stored) {
            inner.bytes -= old.body.len();
        }
    }

    /// Drops the entry of `id`, if any: something else is about to be written for it.
    pub(super) fn forget(&self, id: &QueueId) {
        let mut inner = self.lock();
        if let Some(old) = inner.messages.remove(id) {
            inner.bytes -= old.body.len();
        }
    }

    /// Takes the entry of `id`: the message as committed, `None` when it is not kept (taken
    /// already, changed since, or not kept for room).
    pub fn take(&self, id: &QueueId) -> Option<StoredMessage> {
        let mut inner = self.lock();
        let taken = inner.messages.remove(id)?;
        inner.bytes -= taken.body.len();
        Some(taken)
    }

    /// Bytes of bodies kept now (for tests).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::sled_store::tests::sample_message;

    fn message(size: usize) -> NewMessage {
        sample_message(vec![b'x'; size], 1)
    }

    #[test]
    fn a_kept_message_is_taken_once() {
        let fresh = FreshMessages::default();
        let m = message(100);
        let id = m.meta.id.clone();
        fresh.keep(m, vec![RecipientState::new_pending(7)]);
        assert_eq!(fresh.bytes(), 100);
        let taken = fresh.take(&id).expect("kept");
        assert_eq!(taken.body.len(), 100);
        assert_eq!(taken.states, vec![RecipientState::new_pending(7)]);
        assert_eq!(taken.meta.id, id);
        assert!(fresh.take(&id).is_none());
        assert_eq!(fresh.bytes(), 0);
    }

    #[test]
    fn a_forgotten_message_is_not_taken() {
        let fresh = FreshMessages::default();
        let m = message(10);
        let id = m.meta.id.clone();
        fresh.keep(m, vec![]);
        fresh.forget(&id);
        assert!(fresh.take(&id).is_none());
        assert_eq!(fresh.bytes(), 0);
    }

    /// Issue 16 item 5: memory stays bounded; what does not fit is read from the store.
    #[test]
    fn nothing_is_kept_past_the_byte_budget() {
        let fresh = FreshMessages::default();
        let big = message(FRESH_BYTES - 10);
        let big_id = big.meta.id.clone();
        fresh.keep(big, vec![]);
        let small = message(11);
        let small_id = small.meta.id.clone();
        fresh.keep(small, vec![]);
        assert!(fresh.take(&small_id).is_none());
        assert_eq!(fresh.bytes(), FRESH_BYTES - 10);
        assert!(fresh.take(&big_id).is_some());
        let fits = message(11);
        let fits_id = fits.meta.id.clone();
        fresh.keep(fits, vec![]);
        assert!(fresh.take(&fits_id).is_some());
    }
}
