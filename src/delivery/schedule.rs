//! The timetable: which queued message is due when, and which are being worked on.
//!
//! T6 (retries until expiry) and S5 (nothing acknowledged is lost) meet here. The store is the
//! truth; the timetable is only an index over it, rebuilt at start from every message's
//! recipient states ([`load_backlog`]), so a restart resumes where the last run stopped. A
//! message is either planned (idle, due at some second) or active (one task works on it): it
//! is never handled by two tasks at once, nor planned while active.

use crate::metrics::Metrics;
use crate::queue::message::{unix_now, QueueId, RecipientState, RecipientStatus};
use crate::queue::{Store, StoreError};
use std::collections::{BTreeSet, HashMap, HashSet};

/// The messages the delivery engine knows about, planned or active.
#[derive(Default)]
pub(super) struct Timetable {
    /// Idle messages ordered by the second they are due, so the next due is the first.
    due: BTreeSet<(u64, QueueId)>,
    /// When each idle message is due (to move it without scanning `due`).
    planned: HashMap<QueueId, u64>,
    /// Messages a task (delivery or an admin operation) is working on right now.
    active: HashSet<QueueId>,
    /// Messages on hold (every open recipient held): never due until released, but still in
    /// the queue and counted in its gauges.
    held: HashSet<QueueId>,
}

/// A message is being worked on; it cannot be claimed by anyone else now.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Busy;

impl Timetable {
    /// Plans `id` for the second `at`, moving it if it was planned before. A message being
    /// worked on is left alone: its worker plans it again when it releases it.
    pub(super) fn add(&mut self, id: QueueId, at: u64) {
        if self.active.contains(&id) {
            return;
        }
        self.held.remove(&id);
        if let Some(old) = self.planned.insert(id.clone(), at) {
            self.due.remove(&(old, id.clone()));
        }
        self.due.insert((at, id));
    }

    /// Removes up to `limit` messages due at `now` and marks them active, earliest first.
    /// The rest stay planned, still due: the scheduler takes no more than it has delivery
    /// slots for, so a large due backlog (after a restart or an outage) does not become one
    /// waiting task per message (issue 16 item 5: memory follows the slots, not the queue).
    pub(super) fn take_due(&mut self, now: u64, limit: usize) -> Vec<QueueId> {
        let mut ready = Vec::new();
        while let Some((at, _)) = self.due.first() {
            if *at > now || ready.len() >= limit {
                break;
            }
            if let Some((_, id)) = self.due.pop_first() {
                self.planned.remove(&id);
                self.active.insert(id.clone());
                ready.push(id);
            }
        }
        ready
    }

    /// Takes `id` out of the plan and marks it active, whether it was planned or not (a
    /// message committed a moment ago may not be announced yet), unless it is active already.
    pub(super) fn claim(&mut self, id: &QueueId) -> Result<(), Busy> {
        if self.active.contains(id) {
            return Err(Busy);
        }
        if let Some(at) = self.planned.remove(id) {
            self.due.remove(&(at, id.clone()));
        }
        self.held.remove(id);
        self.active.insert(id.clone());
        Ok(())
    }

    /// Ends the work on `id` and keeps it as held: not planned until it is released.
    pub(super) fn park(&mut self, id: &QueueId) {
        self.active.remove(id);
        self.held.insert(id.clone());
    }

    /// Ends the work on `id`: plans it for `next`, or forgets it when `None` (it is done and
    /// removed from the store).
    pub(super) fn release(&mut self, id: &QueueId, next: Option<u64>) {
        self.active.remove(id);
        if let Some(at) = next {
            self.add(id.clone(), at);
        }
    }

    /// The second the earliest planned message is due.
    pub(super) fn next_due(&self) -> Option<u64> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Queue size and the age of the oldest message (queue ids encode their arrival time).
    pub(super) fn update_gauges(&self, metrics: &Metrics) {
        let count = self.planned.len() + self.active.len() + self.held.len();
        metrics.queue_messages.set(count as i64);
        let oldest = self
            .planned
            .keys()
            .chain(self.active.iter())
            .chain(self.held.iter())
            .filter_map(QueueId::arrival_micros)
            .min();
        let age = oldest.map_or(0, |micros| unix_now().saturating_sub(micros / 1_000_000));
        metrics.queue_oldest_message_age_seconds.set(age as i64);
    }
}

/// When a message is next due: its earliest undelivered recipient's next attempt, `None` when
/// every recipient is final or held (a held recipient waits for its release, issue 14).
pub(super) fn next_attempt(states: &[RecipientState]) -> Option<u64> {
    states
        .iter()
        .filter(|s| !s.status.is_final() && s.status != RecipientStatus::Held)
        .map(|s| s.next_attempt)
        .min()
}

/// Is the message on hold: some recipient held, none other open (issue 14)?
pub(super) fn on_hold(states: &[RecipientState]) -> bool {
    states.iter().any(|s| s.status == RecipientStatus::Held) && next_attempt(states).is_none()
}

/// Every message in the store with the second it is next due, `None` for a message on hold
/// (run at start, blocking; the hold lives in the store, so it survives a restart).
pub(super) fn load_backlog(store: &dyn Store) -> Result<Vec<(QueueId, Option<u64>)>, StoreError> {
    let now = unix_now();
    let mut out = Vec::new();
    let ids = store.message_ids()?;
    // Ids sort by time: the last one is the newest.
    if let Some(newest) = ids.last() {
        QueueId::observe(newest);
    }
    for id in ids {
        let states = store.recipient_states(&id)?;
        if on_hold(&states) {
            out.push((id, None));
            continue;
        }
        // All final: a crash came between the last result and the removal; finish it now.
        let due = next_attempt(&states).unwrap_or(now);
        out.push((id, Some(due)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> QueueId {
        QueueId::parse(&format!("{n:014X}")).unwrap()
    }

    fn due(t: &Timetable) -> Vec<(u64, QueueId)> {
        t.due.iter().cloned().collect()
    }

    #[test]
    fn takes_what_is_due_earliest_first_and_leaves_the_rest() {
        let mut t = Timetable::default();
        t.add(id(3), 300);
        t.add(id(1), 100);
        t.add(id(2), 200);
        assert_eq!(t.next_due(), Some(100));
        assert_eq!(t.take_due(99, usize::MAX), Vec::<QueueId>::new());
        assert_eq!(t.take_due(200, usize::MAX), vec![id(1), id(2)]);
        assert_eq!(t.next_due(), Some(300));
        assert_eq!(due(&t), vec![(300, id(3))]);
        assert!(t.active.contains(&id(1)) && t.active.contains(&id(2)));
    }

    /// Issue 16 item 5: no more taken than there are slots; the rest stay due, in order.
    #[test]
    fn takes_no_more_than_the_limit_and_keeps_the_rest_due() {
        let mut t = Timetable::default();
        for n in 1..=5 {
            t.add(id(n), 100 + n);
        }
        assert_eq!(t.take_due(1000, 2), vec![id(1), id(2)]);
        assert_eq!(t.next_due(), Some(103));
        assert_eq!(t.take_due(1000, 0), Vec::<QueueId>::new());
        assert_eq!(t.take_due(1000, 10), vec![id(3), id(4), id(5)]);
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn planning_again_moves_a_message_instead_of_duplicating_it() {
        let mut t = Timetable::default();
        t.add(id(1), 500);
        t.add(id(1), 100);
        assert_eq!(due(&t), vec![(100, id(1))]);
        assert_eq!(t.planned.get(&id(1)), Some(&100));
        t.add(id(1), 900);
        assert_eq!(due(&t), vec![(900, id(1))]);
        assert_eq!(t.take_due(899, usize::MAX), Vec::<QueueId>::new());
        assert_eq!(t.take_due(900, usize::MAX), vec![id(1)]);
    }

    #[test]
    fn an_active_message_is_neither_planned_nor_claimed_until_released() {
        let mut t = Timetable::default();
        t.add(id(1), 100);
        assert_eq!(t.take_due(100, usize::MAX), vec![id(1)]);
        // A new announcement for a message being worked on does not plan it a second time.
        t.add(id(1), 100);
        assert_eq!(t.next_due(), None);
        assert_eq!(t.claim(&id(1)), Err(Busy));
        // Its worker plans it again when it is done with it.
        t.release(&id(1), Some(400));
        assert_eq!(due(&t), vec![(400, id(1))]);
        assert!(t.active.is_empty());
    }

    #[test]
    fn claiming_unplans_and_releasing_without_a_time_removes() {
        let mut t = Timetable::default();
        t.add(id(1), 100);
        t.add(id(2), 200);
        assert_eq!(t.claim(&id(1)), Ok(()));
        assert_eq!(due(&t), vec![(200, id(2))]);
        assert!(!t.planned.contains_key(&id(1)));
        // A message not planned yet (committed, not announced) can be claimed too.
        assert_eq!(t.claim(&id(7)), Ok(()));
        t.release(&id(1), None);
        t.release(&id(7), None);
        assert!(t.active.is_empty());
        assert!(!t.planned.contains_key(&id(1)));
        assert_eq!(t.take_due(u64::MAX, usize::MAX), vec![id(2)]);
    }

    #[test]
    fn a_message_is_due_at_its_earliest_open_recipient() {
        let state = |status, next_attempt| RecipientState {
            status,
            next_attempt,
            ..RecipientState::new_pending(0)
        };
        let states = [
            state(RecipientStatus::Delivered, 10),
            state(RecipientStatus::Deferred, 500),
            state(RecipientStatus::Pending, 300),
            state(RecipientStatus::Failed, 20),
        ];
        assert_eq!(next_attempt(&states), Some(300));
        // Held recipients wait for their release (issue 14).
        let held = [
            state(RecipientStatus::Held, 10),
            state(RecipientStatus::Delivered, 10),
        ];
        assert_eq!(next_attempt(&held), None);
        assert!(on_hold(&held));
        assert!(!on_hold(&states));
        assert_eq!(next_attempt(&states[..1]), None);
        assert_eq!(next_attempt(&[]), None);
    }
}
