//! Operator control of queued messages: retry now, bounce, delete, hold, release (`tlsgate
//! queue retry|bounce|delete|hold|release`, served by [`crate::admin`], which audits every action for S1).
//!
//! An operation first claims the message in the timetable, so it never races a delivery
//! attempt on the same message: a message being delivered right now answers [`AdminError::Busy`]
//! (the API's `409`) instead of waiting. A bounce goes through the same path as a delivery
//! result, so the sender gets the failure DSN T6 promises and the audit log its entry.

use super::{lock, schedule, work_on, DeliveryEngine, Engine};
use crate::queue::message::{unix_now, QueueId, RecipientState, RecipientStatus};
use crate::queue::{Store, StoreError};
use std::sync::Arc;

/// Why an administrative queue operation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The id is not (or no longer) queued.
    #[error("no such message in the queue")]
    NotFound,
    /// A delivery attempt holds the message.
    #[error("the message is being delivered right now; try again in a moment")]
    Busy,
    /// `retry` on a held message: it stays held (and not due) until released.
    #[error("the message is held: release it first")]
    Held,
    /// `release` on a message that is not held: nothing to release.
    #[error("the message is not held")]
    NotHeld,
    /// The queue store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`EngineHandle::change_open_states`] found among the open recipients.
struct Open {
    /// Recipients given a new state.
    changed: usize,
    /// Recipients held before the change.
    held: usize,
    /// The earliest next attempt among them before the change (when the message was due).
    next_attempt: Option<u64>,
}

/// A cheap, cloneable handle for the admin API.
#[derive(Clone)]
pub struct EngineHandle {
    engine: Arc<Engine>,
}

impl DeliveryEngine {
    /// A handle for queue operations (the admin API's `queue …` commands).
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            engine: self.engine.clone(),
        }
    }
}

impl EngineHandle {
    /// Takes the message out of the timetable so that nothing else works on it meanwhile.
    async fn claim(&self, id: &QueueId) -> Result<(), AdminError> {
        if self.engine.store.message(id).await?.is_none() {
            return Err(AdminError::NotFound);
        }
        lock(&self.engine.timetable)
            .claim(id)
            .map_err(|schedule::Busy| AdminError::Busy)
    }

    /// `tlsgate queue retry`: every undelivered recipient is due now; a held message is not
    /// ([`AdminError::Held`]: it stays held until released, as `postsuper -h` mail does).
    pub async fn retry_now(&self, id: &QueueId) -> Result<(), AdminError> {
        self.claim(id).await?;
        let now = unix_now();
        let result = self
            .change_open_states(id, |s| {
                (s.status != RecipientStatus::Held).then(|| RecipientState {
                    next_attempt: now,
                    ..s.clone()
                })
            })
            .await
            .and_then(|open| match open {
                Open {
                    changed: 0, held, ..
                } if held > 0 => Err(AdminError::Held),
                _ => Ok(()),
            });
        match result {
            // Held: parked again as it was, not planned.
            Err(AdminError::Held) => lock(&self.engine.timetable).park(id),
            _ => self.engine.release(id, Some(now)),
        }
        result
    }

    /// `tlsgate queue bounce`: every undelivered recipient fails now, with a failure DSN.
    pub async fn bounce(&self, id: &QueueId, reason: &str) -> Result<(), AdminError> {
        self.claim(id).await?;
        work_on(&self.engine, id, Some(reason))
            .await
            .map_err(AdminError::from)
    }

    /// `tlsgate queue delete`: removes the message without telling anyone.
    pub async fn delete(&self, id: &QueueId) -> Result<(), AdminError> {
        self.claim(id).await?;
        let result = self.engine.committer.remove(id.clone()).await;
        let next = result.is_err().then(unix_now);
        self.engine.release(id, next);
        result.map_err(AdminError::from)
    }

    /// `tlsgate queue hold` (Postfix's `postsuper -h`): every open recipient is held, so the
    /// message is neither delivered nor expired until [`EngineHandle::release_held`]. The flag
    /// is in the recipient states in the store, so it survives a restart.
    pub async fn hold(&self, id: &QueueId) -> Result<(), AdminError> {
        self.claim(id).await?;
        let result = self
            .change_open_states(id, |s| {
                (s.status != RecipientStatus::Held).then(|| RecipientState {
                    status: RecipientStatus::Held,
                    ..s.clone()
                })
            })
            .await;
        match result {
            Ok(_) => lock(&self.engine.timetable).park(id),
            // Not held after all: it stays due as it was.
            Err(_) => self.engine.release(id, Some(unix_now())),
        }
        result.map(|_| ())
    }

    /// `tlsgate queue release` (Postfix's `postsuper -H`): held recipients are due now again,
    /// deferred when they had been tried, pending otherwise. Expiry counts from arrival as
    /// always, so mail held past `delivery.expiry` fails at this attempt. A message with no
    /// held recipient is [`AdminError::NotHeld`].
    pub async fn release_held(&self, id: &QueueId) -> Result<(), AdminError> {
        self.claim(id).await?;
        let now = unix_now();
        let result = self
            .change_open_states(id, |s| {
                (s.status == RecipientStatus::Held).then(|| RecipientState {
                    status: if s.attempts > 0 {
                        RecipientStatus::Deferred
                    } else {
                        RecipientStatus::Pending
                    },
                    next_attempt: now,
                    ..s.clone()
                })
            })
            .await;
        match result {
            // Nothing held: it stays planned as it was, not made due.
            Ok(Open {
                changed: 0,
                next_attempt,
                ..
            }) => {
                self.engine.release(id, Some(next_attempt.unwrap_or(now)));
                Err(AdminError::NotHeld)
            }
            result => {
                self.engine.release(id, Some(now));
                result.map(|_| ())
            }
        }
    }

    /// Writes `change`'s new state for every open recipient it returns one for; says how many
    /// it changed and how many were held before.
    async fn change_open_states(
        &self,
        id: &QueueId,
        change: impl Fn(&RecipientState) -> Option<RecipientState>,
    ) -> Result<Open, AdminError> {
        let states = self.engine.store.recipient_states(id).await?;
        let open = || {
            states
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.status.is_final())
        };
        let held = open()
            .filter(|(_, s)| s.status == RecipientStatus::Held)
            .count();
        let updates: Vec<(usize, RecipientState)> = open()
            .filter_map(|(i, s)| change(s).map(|new| (i, new)))
            .collect();
        let next_attempt = open().map(|(_, s)| s.next_attempt).min();
        let changed = updates.len();
        if changed > 0 {
            self.engine
                .committer
                .update_states(id.clone(), updates)
                .await?;
        }
        Ok(Open {
            changed,
            held,
            next_attempt,
        })
    }

    /// The blocking store, for the admin API's queue listing.
    pub fn store(&self) -> Arc<dyn Store> {
        self.engine.store.blocking()
    }
}
