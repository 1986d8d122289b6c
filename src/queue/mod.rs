//! The durable queue: a [`Store`] (redb or sled behind a trait, [`engine`]), the [`Committer`] that makes new
//! messages durable in groups, and the [`retry`] schedule (when a message is due, when it
//! expires) that delivery and DSNs share.
//!
//! S5 / non-negotiable 1: a session answers `250` only after [`Committer::commit`] returned,
//! i.e. after the message was written *and* the store was synced to disk. Syncing costs an
//! fsync (milliseconds on real disks), so one dedicated thread takes every message waiting at
//! that moment, writes them all and syncs once (group commit): concurrent sessions share the
//! fsync, and neither sled nor fsync ever blocks an async worker thread.

pub mod at_rest;
pub mod engine;
pub mod fresh;
pub mod message;
pub mod redb_store;
pub mod reopen;
pub mod retry;
pub mod seal;
pub mod sled_store;
pub mod store;

pub use engine::QueueEngine;
pub use fresh::FreshMessages;
pub use message::{MessageMeta, NewMessage, QueueId, RecipientState, RecipientStatus};
pub use redb_store::RedbStore;
pub use reopen::ReopeningStore;
pub use seal::{EncryptionError, QueueKey};
pub use sled_store::SledStore;
pub use store::{AsyncStore, Store, StoreError, StoredMessage};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Most jobs written per sync; bounds the latency a large group adds to its first member.
const MAX_GROUP: usize = 512;

/// What the committer writes.
enum Work {
    /// A new message with all recipients pending.
    Message(Box<NewMessage>),
    /// New states for some recipients of a message (delivery results).
    States {
        id: QueueId,
        updates: Vec<(usize, RecipientState)>,
    },
    /// A message whose recipients are all final.
    Remove(QueueId),
}

struct Job {
    work: Work,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// Commit statistics, for tests, benchmarks and metrics.
#[derive(Debug, Default)]
pub struct CommitStats {
    /// New messages made durable.
    pub messages: AtomicU64,
    /// Store syncs (one per group that wrote anything).
    pub syncs: AtomicU64,
    /// Jobs (messages, state updates, removals) that failed to write or sync.
    pub failures: AtomicU64,
}

/// Whether the committer moves (issue 16 item 2, the watchdog): jobs handed in and answered,
/// and when it last made progress.
#[derive(Debug)]
struct Progress {
    /// The committer's start; times below are milliseconds since then.
    epoch: Instant,
    /// Jobs handed to the committer.
    submitted: AtomicU64,
    /// Jobs the committer answered.
    answered: AtomicU64,
    /// When a group was last answered, or work arrived at an idle committer.
    last_progress_ms: AtomicU64,
}

impl Progress {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A job is handed in; an idle committer's clock starts now (idle time is no stall).
    fn submitted(&self) {
        let before = self.submitted.fetch_add(1, Ordering::SeqCst);
        if before == self.answered.load(Ordering::SeqCst) {
            self.last_progress_ms.store(self.now_ms(), Ordering::SeqCst);
        }
    }

    /// A group of `jobs` was answered.
    fn answered(&self, jobs: u64) {
        self.last_progress_ms.store(self.now_ms(), Ordering::SeqCst);
        self.answered.fetch_add(jobs, Ordering::SeqCst);
    }
}

/// Handle to the group-commit thread. Cloning is cheap; the thread ends when every handle is
/// dropped, after finishing the jobs it already has.
///
/// Every store write goes through it (new messages, delivery results, removals), so each one
/// is durable when its call returns and concurrent writers share one sync.
#[derive(Clone)]
pub struct Committer {
    jobs: mpsc::Sender<Job>,
    stats: Arc<CommitStats>,
    /// Becomes true when the thread has ended and dropped its store handle.
    exited: tokio::sync::watch::Receiver<bool>,
    /// Jobs in and out, for the watchdog.
    progress: Arc<Progress>,
    /// Cancelled by the watchdog ([`Committer::declare_stalled`]): every waiting caller gets
    /// [`StoreError::Stalled`] at once instead of waiting on.
    stalled: CancellationToken,
    /// Whether the queue can take new mail ([`Committer::accepts`]).
    health: Arc<Health>,
    /// The store, for [`Store::is_open`].
    store: Arc<dyn Store>,
    /// Messages just committed, for their first delivery turn ([`Committer::take_fresh`]).
    fresh: Arc<FreshMessages>,
}

/// What the committer knows of the queue's health (issue 16 item 4).
#[derive(Debug, Default)]
struct Health {
    /// Set when a group failed because the file system was full, cleared when a later group
    /// commits; holds the free space seen after the failure, once [`Committer::accepts`] has
    /// looked.
    disk_full: std::sync::Mutex<Option<Option<u64>>>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Option<u64>>> {
        self.disk_full.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why the queue cannot take new mail now ([`Committer::accepts`]); the session answers
/// `452 4.3.1` when `disk_full`, `451 4.3.0` otherwise (RFC 3463).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The queue's file system is (or was, at the last failed commit) full.
    pub disk_full: bool,
    /// For the log and `/readyz`: what is wrong.
    pub reason: String,
}

/// Receives the id of every newly committed message (the scheduler listens here).
pub type NewMessages = tokio::sync::mpsc::UnboundedReceiver<QueueId>;

impl Committer {
    /// Starts the committer thread. Committed messages are announced on the returned channel;
    /// dropping the receiver is fine (announcements are then discarded).
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<(Committer, NewMessages)> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (announce, announced) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(CommitStats::default());
        let thread_stats = stats.clone();
        let (exit_tx, exited) = tokio::sync::watch::channel(false);
        let progress = Arc::new(Progress {
            epoch: Instant::now(),
            submitted: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            last_progress_ms: AtomicU64::new(0),
        });
        let thread_progress = progress.clone();
        let health = Arc::new(Health::default());
        let thread_health = health.clone();
        let thread_store = store.clone();
        let fresh = Arc::new(FreshMessages::default());
        let thread_fresh = fresh.clone();
        std::thread::Builder::new()
            .name("queue-committer".into())
            .spawn(move || {
                let shared = Shared {
                    stats: &thread_stats,
                    progress: &thread_progress,
                    health: &thread_health,
                    fresh: &thread_fresh,
                };
                run_committer(thread_store, rx, announce, shared);
                let _ = exit_tx.send(true);
            })?;
        Ok((
            Committer {
                jobs,
                stats,
                exited,
                progress,
                stalled: CancellationToken::new(),
                health,
                store,
                fresh,
            },
            announced,
        ))
    }

    /// Drops this handle and waits (up to `limit`) for the thread to end, which it does once
    /// every other handle is gone too. Then the store is closed and can be opened again.
    pub async fn close(self, limit: std::time::Duration) -> bool {
        let Committer {
            jobs,
            exited,
            store,
            ..
        } = self;
        drop(jobs);
        drop(store);
        let mut exited = exited;
        tokio::time::timeout(limit, exited.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Writes the message durably. Returns only after the data is on disk (or an error).
    pub async fn commit(&self, message: NewMessage) -> Result<(), StoreError> {
        self.submit(Work::Message(Box::new(message))).await
    }

    /// [`Committer::commit`], waiting at most `limit` for the answer ([`StoreError::Timeout`]
    /// after that). The write itself is not cancelled: it may still complete.
    pub async fn commit_within(
        &self,
        message: NewMessage,
        limit: std::time::Duration,
    ) -> Result<(), StoreError> {
        tokio::time::timeout(limit, self.commit(message))
            .await
            .unwrap_or(Err(StoreError::Timeout { limit }))
    }

    /// Durably records new states for recipients of a message.
    pub async fn update_states(
        &self,
        id: QueueId,
        updates: Vec<(usize, RecipientState)>,
    ) -> Result<(), StoreError> {
        self.submit(Work::States { id, updates }).await
    }

    /// Durably removes a message.
    pub async fn remove(&self, id: QueueId) -> Result<(), StoreError> {
        self.submit(Work::Remove(id)).await
    }

    async fn submit(&self, work: Work) -> Result<(), StoreError> {
        if self.stalled.is_cancelled() {
            return Err(StoreError::Stalled);
        }
        let (done, result) = oneshot::channel();
        self.progress.submitted();
        self.jobs
            .send(Job { work, done })
            .map_err(|_| StoreError::Closed)?;
        tokio::select! {
            result = result => result.map_err(|_| StoreError::Closed)?,
            _ = self.stalled.cancelled() => Err(StoreError::Stalled),
        }
    }

    /// How long the committer has made no progress while jobs wait; `None` when none waits
    /// (issue 16 item 2: idle is not stalled).
    pub fn stalled_for(&self) -> Option<Duration> {
        if self.waiting() == 0 {
            return None;
        }
        let since = self.progress.last_progress_ms.load(Ordering::SeqCst);
        Some(Duration::from_millis(
            self.progress.now_ms().saturating_sub(since),
        ))
    }

    /// Jobs handed in and not answered yet.
    pub fn waiting(&self) -> u64 {
        let answered = self.progress.answered.load(Ordering::SeqCst);
        self.progress
            .submitted
            .load(Ordering::SeqCst)
            .saturating_sub(answered)
    }

    /// Called by the watchdog: every caller waiting for a commit, and every later one, gets
    /// [`StoreError::Stalled`] (the session answers `451 4.3.0`).
    pub fn declare_stalled(&self) {
        self.stalled.cancel();
    }

    /// The message `id` exactly as it was committed, when it was committed a moment ago and
    /// nothing has been written for it since; `None` otherwise (read the store then). Taken
    /// once: the delivery engine's first turn of a message uses it instead of reading the
    /// store back (issue 16 item 7, [`fresh`]).
    pub fn take_fresh(&self, id: &QueueId) -> Option<StoredMessage> {
        self.fresh.take(id)
    }

    /// Counters since the committer started.
    pub fn stats(&self) -> &CommitStats {
        &self.stats
    }

    /// Whether the queue can take new mail now (issue 16 item 4; the one decision the session
    /// at `MAIL` and `/readyz` share): not while the store waits to be reopened after an
    /// error, not while the queue's file system has less than `min_free` bytes free
    /// (`server.min_free_space`; `free` is [`available_space`] of `server.data_dir`, its error
    /// refuses too), and after a commit failed on a full file system not until free space has
    /// grown since (someone made room); a later successful commit clears that.
    pub fn accepts(&self, free: std::io::Result<u64>, min_free: u64) -> Result<(), Refusal> {
        let free = free.map_err(|e| Refusal {
            disk_full: false,
            reason: format!("cannot read the free space of the queue's file system: {e}"),
        })?;
        let mut disk_full = self.health.lock();
        // The first look after a failed commit notes the free space then (the watcher looks
        // every second), so that room made later shows as growth.
        if let Some(seen @ None) = &mut *disk_full {
            *seen = Some(free);
        }
        if self.stalled.is_cancelled() {
            return Err(Refusal {
                disk_full: false,
                reason: "the queue is stalled".into(),
            });
        }
        if !self.store.is_open() {
            return Err(Refusal {
                disk_full: disk_full.is_some(),
                reason: "the queue store is being reopened after an I/O error".into(),
            });
        }
        if free < min_free {
            return Err(Refusal {
                disk_full: true,
                reason: format!(
                    "{free} bytes free in the queue's file system, below server.min_free_space ({min_free})"
                ),
            });
        }
        match &*disk_full {
            None => Ok(()),
            Some(Some(then)) if free > *then => {
                *disk_full = None;
                Ok(())
            }
            Some(_) => Err(Refusal {
                disk_full: true,
                reason: "a commit failed on a full file system and no space was freed since".into(),
            }),
        }
    }
}

/// The states a new message is written with: every recipient pending, due `now`.
fn initial_states(message: &NewMessage, now: u64) -> Vec<RecipientState> {
    vec![RecipientState::new_pending(now); message.meta.recipients.len()]
}

fn write(
    store: &dyn Store,
    fresh: &FreshMessages,
    work: &Work,
    now: u64,
) -> Result<(), StoreError> {
    match work {
        Work::Message(message) => store.write_message(message, &initial_states(message, now)),
        // The fresh copy would differ from the store from now on ([`fresh`]).
        Work::States { id, updates } => {
            fresh.forget(id);
            updates
                .iter()
                .try_for_each(|(index, state)| store.set_recipient_state(id, *index, state))
        }
        Work::Remove(id) => {
            fresh.forget(id);
            store.remove_message(id)
        }
    }
}

/// The committer thread's shared state.
struct Shared<'a> {
    stats: &'a CommitStats,
    progress: &'a Progress,
    health: &'a Health,
    fresh: &'a FreshMessages,
}

/// How long the committer waits for work before it looks at the store's health (a store
/// closed after an error is reopened then even when nothing is written).
const IDLE_CHECK: Duration = Duration::from_secs(1);

fn run_committer(
    store: Arc<dyn Store>,
    rx: mpsc::Receiver<Job>,
    announce: tokio::sync::mpsc::UnboundedSender<QueueId>,
    shared: Shared<'_>,
) {
    loop {
        let first = match rx.recv_timeout(IDLE_CHECK) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Between groups: reopening here cannot drop part of one (issue 16 item 4).
                let _ = store.reopen_if_failed();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        commit_group(store.as_ref(), group, &announce, &shared);
    }
}

/// Writes and syncs one group and answers each of its jobs.
fn commit_group(
    store: &dyn Store,
    group: Vec<Job>,
    announce: &tokio::sync::mpsc::UnboundedSender<QueueId>,
    shared: &Shared<'_>,
) {
    let jobs = group.len() as u64;
    // A store closed by an earlier error is opened again first; if it cannot be, the whole
    // group gets that error without a write (issue 16 item 4).
    if let Err(e) = store.reopen_if_failed() {
        shared.stats.failures.fetch_add(jobs, Ordering::Relaxed);
        if e.is_disk_full() {
            shared.health.lock().get_or_insert(None);
        }
        let reason = e.to_string();
        let disk_full = e.is_disk_full();
        for job in group {
            let _ = job.done.send(Err(StoreError::Unavailable {
                reason: reason.clone(),
                disk_full,
            }));
        }
        shared.progress.answered(jobs);
        return;
    }
    let now = message::unix_now();
    let written: Vec<Result<(), StoreError>> = group
        .iter()
        .map(|job| write(store, shared.fresh, &job.work, now))
        .collect();
    let synced = if written.iter().any(Result::is_ok) {
        shared.stats.syncs.fetch_add(1, Ordering::Relaxed);
        store.sync()
    } else {
        Ok(())
    };
    let mut message_committed = false;
    let mut full = false;
    let mut answers = Vec::with_capacity(group.len());
    for (Job { work, done }, write) in group.into_iter().zip(written) {
        let outcome = match (&synced, write) {
            (Ok(()), Ok(())) => {
                if let Work::Message(message) = work {
                    message_committed = true;
                    shared.stats.messages.fetch_add(1, Ordering::Relaxed);
                    let id = message.meta.id.clone();
                    // Kept for its first delivery turn before the scheduler hears of it, and
                    // only when someone listens ([`fresh`]).
                    if !announce.is_closed() {
                        let states = initial_states(&message, now);
                        shared.fresh.keep(*message, states);
                    }
                    let _ = announce.send(id);
                }
                Ok(())
            }
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => {
                if let Work::Message(message) = &work {
                    // Written but maybe not durable: take it back so that the client's
                    // retry (it gets a 4xx) does not end up delivered twice. Best effort:
                    // if this fails too, a duplicate is still better than a loss.
                    let _ = store.remove_message(&message.meta.id);
                }
                Err(StoreError::SyncFailed {
                    reason: e.to_string(),
                    disk_full: e.is_disk_full(),
                })
            }
        };
        if let Err(e) = &outcome {
            shared.stats.failures.fetch_add(1, Ordering::Relaxed);
            full |= e.is_disk_full();
        }
        answers.push((done, outcome));
    }
    // Readiness (issue 16 item 4), noted before anyone is answered so that a client's next
    // MAIL already sees it: a commit on a full file system refuses new mail until room is
    // made; a new message that lands shows the queue takes mail again (a small state update
    // landing does not: it needs far less room than a message).
    if message_committed {
        *shared.health.lock() = None;
    } else if full {
        shared.health.lock().get_or_insert(None);
    }
    for (done, outcome) in answers {
        // The caller may have gone away (client disconnected); nothing to tell then.
        let _ = done.send(outcome);
    }
    shared.progress.answered(jobs);
}

/// Free space (bytes) available to unprivileged users on the file system holding `path`.
pub fn available_space(path: &std::path::Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}
