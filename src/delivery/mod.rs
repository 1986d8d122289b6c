//! The delivery engine (RFC 5321 section 5; T3, T6): it starts and stops delivery, runs the
//! scheduler loop and works on one due message at a time per task.
//!
//! A message's turn: its due recipients are grouped by destination ([`route`]), each group is
//! delivered in one attempt ([`attempt`] over [`client`] connections, reused through the
//! [`pool`]), and every outcome becomes the recipient's new state, DSN and audit entry
//! (`outcome.rs`), written durably through the [`Committer`] — DSNs first, so a crash repeats
//! a report rather than losing one. Which message is due when lives in the timetable
//! (`schedule.rs`), operator actions on queued messages in `control.rs`.
//!
//! The store is the truth (S5): at start every message in it is planned again from its
//! recipient states, so a restart resumes where the last run stopped.

pub mod attempt;
pub mod client;
mod control;
mod outcome;
pub mod pool;
pub mod route;
mod schedule;
pub mod sts_testing;

pub use control::{AdminError, EngineHandle};

use crate::audit::AuditLog;
use crate::config::Config;
use crate::dns::Resolver;
use crate::metrics::Metrics;
use crate::mta_sts::MtaSts;
use crate::policy::domain_list::DomainListHandle;
use crate::queue::message::{
    unix_now, MessageMeta, QueueId, Recipient, RecipientState, RecipientStatus,
};
use crate::queue::retry;
use crate::queue::{AsyncStore, Committer, NewMessages, Store, StoreError, StoredMessage};
use crate::smtp::reply::EnhancedStatus;
use crate::tls::client::ClientTls;
use attempt::{AttemptContext, HostLog, Outcome};
use outcome::{Recorded, Results};
use pool::ConnectionPool;
use route::Destination;
use schedule::Timetable;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Marks a task as recording results ([`Engine::recording`]) for as long as it lives.
struct Recording<'a>(&'a Engine);

impl<'a> Recording<'a> {
    fn start(engine: &'a Engine) -> Recording<'a> {
        engine
            .recording
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Recording(engine)
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        self.0
            .recording
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Wait after a store error before the message is looked at again.
const STORE_ERROR_RETRY: u64 = 60;
/// First and longest wait between tries to record delivery results ([`until_durable`]).
const RECORD_RETRY_FIRST: Duration = Duration::from_secs(1);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(30);

/// Runs `write` (a durable write of delivery results: new recipient states, a removal, a
/// DSN) until it lands, waiting 1 s, 2 s … up to 30 s between tries (issue 16 item 4). While it
/// retries, the message stays claimed, so its delivered recipients are not attempted again;
/// before, a result that could not be written (a full disk) was dropped and the recipients
/// were delivered a second time. Gives up only when the engine shuts down or the committer is
/// gone (stalled, closed): the results are then lost with the process, and the next start
/// attempts those recipients again (at least once, S5).
async fn until_durable<F, Fut>(
    engine: &Engine,
    id: &QueueId,
    what: &'static str,
    mut write: F,
) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut wait = RECORD_RETRY_FIRST;
    loop {
        let Err(e) = write().await else {
            return Ok(());
        };
        engine.metrics.store_errors.inc();
        if matches!(e, StoreError::Closed | StoreError::Stalled) {
            return Err(e);
        }
        tracing::error!(
            queue_id = %id,
            error = %e,
            what,
            retry_in = %humantime::format_duration(wait),
            "could not record delivery results; retrying (the recipients are not attempted again meanwhile)"
        );
        tokio::select! {
            _ = engine.shutdown.cancelled() => return Err(e),
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RECORD_RETRY_MAX);
    }
}

/// The queue gauges walk every queued message, so the scheduler refreshes them at most this
/// often, not on every turn of its loop: with 100,000 messages queued, a refresh per turn
/// (a turn per acceptance and per finished attempt) left the scheduler a third as fast as
/// the acceptance (issue 16 item 5).
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Most announcements of new messages taken in one turn of the scheduler loop: a burst is
/// planned at once, and the loop still gets round to due messages and shutdown.
const ANNOUNCEMENTS_PER_TURN: usize = 10_000;

/// What every delivery task shares.
struct Engine {
    config: Arc<Config>,
    /// Reads only; every write goes through `committer`, so each is durable when it returns.
    store: AsyncStore,
    committer: Committer,
    resolver: Arc<dyn Resolver>,
    tls: ClientTls,
    /// The tvungen TLS list, reloaded behind this handle; an attempt uses the one it started
    /// with.
    domain_list: Arc<DomainListHandle>,
    metrics: Arc<Metrics>,
    audit: Option<Arc<AuditLog>>,
    /// MTA-STS policies (RFC 8461); `None` when `mta_sts.enabled = false`.
    mta_sts: Option<Arc<MtaSts>>,
    /// TLS-RPT sink (RFC 8460): every session with a recipient domain's MX host is counted.
    tls_reports: Arc<dyn crate::tls_report::TlsReportSink>,
    /// Idle connections kept for the next message to the same host and TLS mode.
    pool: ConnectionPool,
    /// Which message is due when, and which are being worked on.
    timetable: Mutex<Timetable>,
    /// Wakes the scheduler when a message is released (it may be due at once).
    wake: Notify,
    /// `delivery.max_concurrent`: messages worked on at once.
    global: Arc<Semaphore>,
    /// `delivery.max_per_destination`: attempts at once per destination, so one slow domain
    /// cannot take every slot.
    per_destination: Mutex<HashMap<Destination, Arc<Semaphore>>>,
    /// Cancelled at shutdown: the scheduler stops taking due messages.
    shutdown: CancellationToken,
    /// The tasks working on messages, waited for (up to a grace time) at shutdown.
    tasks: TaskTracker,
    /// Tasks that hold no delivery slot: their attempts are over and they are recording the
    /// results ([`until_durable`]); the scheduler does not count them as busy slots.
    recording: std::sync::atomic::AtomicUsize,
}

/// What the engine is built from.
pub struct EngineParts {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// The queue store (reads; writes go through `committer`).
    pub store: Arc<dyn Store>,
    /// The only writer of the queue (S5).
    pub committer: Committer,
    /// Ids of newly committed messages (from [`Committer::start`]).
    pub announced: NewMessages,
    /// The relay's one DNS resolver, shared with sender authentication.
    pub resolver: Arc<dyn Resolver>,
    /// Client TLS, built once at start.
    pub tls: ClientTls,
    /// The tvungen TLS list (reloadable; each attempt takes the list in force, T3).
    pub domain_list: Arc<DomainListHandle>,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// The audit log (S1); `None` only in tools and tests without one.
    pub audit: Option<Arc<AuditLog>>,
    /// MTA-STS policies (RFC 8461, D6); `None` when `mta_sts.enabled = false`.
    pub mta_sts: Option<Arc<MtaSts>>,
    /// Where sessions are counted for TLS reports (RFC 8460); `NoReports` when off.
    pub tls_reports: Arc<dyn crate::tls_report::TlsReportSink>,
}

impl Engine {
    /// Ends the work on a message (claimed by the scheduler or an admin operation): plans it
    /// for `next`, or forgets it when `None`, and wakes the scheduler to look again.
    fn release(&self, id: &QueueId, next: Option<u64>) {
        lock(&self.timetable).release(id, next);
        self.wake.notify_one();
    }
}

/// Handle to the running engine.
pub struct DeliveryEngine {
    engine: Arc<Engine>,
    scheduler: tokio::task::JoinHandle<()>,
}

impl DeliveryEngine {
    /// Loads the queue's pending work and starts the scheduler.
    pub async fn start(parts: EngineParts) -> Result<DeliveryEngine, StoreError> {
        let EngineParts {
            config,
            store,
            committer,
            announced,
            resolver,
            tls,
            domain_list,
            metrics,
            audit,
            mta_sts,
            tls_reports,
        } = parts;
        let store = AsyncStore::new(store);
        let backlog = store.run("scan", schedule::load_backlog).await?;
        tracing::info!(messages = backlog.len(), "delivery engine starting");
        let mut timetable = Timetable::default();
        for (id, at) in backlog {
            match at {
                Some(at) => timetable.add(id, at),
                None => timetable.park(&id),
            }
        }
        let d = &config.delivery;
        let engine = Arc::new(Engine {
            pool: ConnectionPool::new(d.idle_timeout, d.max_messages_per_connection),
            global: Arc::new(Semaphore::new(d.max_concurrent)),
            config: config.clone(),
            store,
            committer,
            resolver,
            tls,
            domain_list,
            metrics,
            audit,
            mta_sts,
            tls_reports,
            timetable: Mutex::new(timetable),
            wake: Notify::new(),
            per_destination: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            recording: std::sync::atomic::AtomicUsize::new(0),
        });
        let scheduler = tokio::spawn(run_scheduler(engine.clone(), announced));
        Ok(DeliveryEngine { engine, scheduler })
    }

    /// Stops scheduling, lets attempts in progress finish for up to `grace`, closes idle
    /// connections. Unfinished work stays in the store for the next start.
    pub async fn shutdown(self, grace: Duration) {
        self.engine.shutdown.cancel();
        let _ = self.scheduler.await;
        self.engine.tasks.close();
        if tokio::time::timeout(grace, self.engine.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("delivery attempts still running at shutdown; they will be retried");
        }
        for conn in self.engine.pool.drain() {
            conn.quit().await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run_scheduler(engine: Arc<Engine>, mut announced: NewMessages) {
    let mut announcements_open = true;
    let mut gauges_at: Option<Instant> = None;
    loop {
        for conn in engine.pool.expired() {
            tokio::spawn(conn.quit());
        }
        let now = unix_now();
        let (ready, next) = {
            let mut timetable = lock(&engine.timetable);
            // Only as many as there are delivery slots (`delivery.max_concurrent`) not held
            // by a task already: the rest wait in the timetable, not as tasks (issue 16 item 5).
            let recording = engine.recording.load(std::sync::atomic::Ordering::SeqCst);
            let free = engine
                .config
                .delivery
                .max_concurrent
                .saturating_sub(engine.tasks.len().saturating_sub(recording));
            let ready = timetable.take_due(now, free);
            if gauges_at.is_none_or(|at| at.elapsed() >= GAUGE_INTERVAL) {
                timetable.update_gauges(&engine.metrics);
                gauges_at = Some(Instant::now());
            }
            (ready, timetable.next_due())
        };
        for id in ready {
            let engine2 = engine.clone();
            engine.tasks.spawn(async move {
                process_message(&engine2, &id).await;
            });
        }
        // Sleep until the next due second, but wake at least every second to close idle
        // connections on time.
        let wait = next
            .map(|at| Duration::from_secs(at.saturating_sub(now)))
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::select! {
            id = announced.recv(), if announcements_open => match id {
                Some(id) => {
                    let now = unix_now();
                    let mut timetable = lock(&engine.timetable);
                    timetable.add(id, now);
                    // The rest of a burst in this turn, not one id per turn.
                    for _ in 1..ANNOUNCEMENTS_PER_TURN {
                        match announced.try_recv() {
                            Ok(id) => timetable.add(id, now),
                            Err(_) => break,
                        }
                    }
                }
                None => announcements_open = false,
            },
            _ = engine.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = engine.shutdown.cancelled() => return,
        }
    }
}

/// A due message's turn, taken by the scheduler.
async fn process_message(engine: &Arc<Engine>, id: &QueueId) {
    if let Err(e) = work_on(engine, id, None).await {
        engine.metrics.store_errors.inc();
        tracing::error!(queue_id = %id, error = %e, "queue store error during delivery");
    }
}

/// Works on a claimed message — delivers what is due, or with `bounce` fails every open
/// recipient — then releases it: planned again when next due, forgotten when done (and
/// removed), looked at again after [`STORE_ERROR_RETRY`] when the store failed.
async fn work_on(
    engine: &Arc<Engine>,
    id: &QueueId,
    bounce: Option<&str>,
) -> Result<(), StoreError> {
    let result = deliver_due(engine, id, bounce).await;
    let next = match &result {
        Ok(Due::At(at)) => Some(*at),
        Ok(Due::Held) => {
            lock(&engine.timetable).park(id);
            return Ok(());
        }
        Ok(Due::Done) => None,
        Err(_) => Some(unix_now() + STORE_ERROR_RETRY),
    };
    engine.release(id, next);
    result.map(|_| ())
}

/// What is left of a message after its turn.
enum Due {
    /// Next due at this Unix second.
    At(u64),
    /// Every open recipient is held: not planned until released.
    Held,
    /// Done (and removed), or no longer queued.
    Done,
}

/// Delivers what is due of one message; says when it is next due.
async fn deliver_due(
    engine: &Arc<Engine>,
    id: &QueueId,
    bounce: Option<&str>,
) -> Result<Due, StoreError> {
    let permit = engine
        .global
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| StoreError::Closed)?;
    // A message committed a moment ago comes from the committer's hands; any later turn
    // reads the store (issue 16 item 7).
    let loaded = match engine.committer.take_fresh(id) {
        Some(message) => Some(message),
        None => engine.store.load(id).await?,
    };
    let Some(StoredMessage { meta, states, body }) = loaded else {
        return Ok(Due::Done);
    };
    // For the log lines only (issue 14 item 3): matching a user's complaint to the queue.
    let message_id = crate::smtp::headers::message_id(&body).unwrap_or_else(|| "none".into());
    let meta = Arc::new(meta);
    let body = Arc::new(body);
    let config = &engine.config;
    let now = unix_now();
    let mut results = Results::default();

    let expired = retry::older_than(meta.reception.received_at, config.delivery.expiry, now);
    let mut groups: BTreeMap<Destination, Vec<usize>> = BTreeMap::new();
    for (i, (state, recipient)) in states.iter().zip(&meta.recipients).enumerate() {
        if state.status.is_final() {
            continue;
        }
        // A failure tlsgate decides itself (no remote reply: no Remote-MTA in the DSN).
        let mut fail_here = |status: EnhancedStatus, reason: String| {
            let outcome = Outcome::Failed {
                host: None,
                status,
                reason,
                remote: false,
            };
            let target = (i, recipient);
            note(engine, &meta, target, state, &outcome, now, &mut results);
        };
        if let Some(reason) = bounce {
            fail_here(EnhancedStatus::new(5, 0, 0), reason.to_string());
            continue;
        }
        // Held by the administrator: neither delivered nor expired until released (issue 14,
        // as Postfix's hold queue).
        if state.status == RecipientStatus::Held {
            continue;
        }
        if state.next_attempt > now {
            continue;
        }
        if expired {
            let reason = format!(
                "message expired after {} in the queue; last problem: {}",
                humantime::format_duration(config.delivery.expiry),
                state.last_reply.as_deref().unwrap_or("none recorded")
            );
            let status = state
                .last_status
                .as_deref()
                .and_then(EnhancedStatus::parse)
                .unwrap_or(EnhancedStatus::new(4, 4, 7));
            // Expiry is tlsgate's decision, whatever the last host said.
            fail_here(status, reason);
            continue;
        }
        match route::destination_of(config, &recipient.address) {
            Ok(d) => groups.entry(d).or_default().push(i),
            Err(e) => fail_here(e.status(), e.to_string()),
        }
    }

    let mut attempts = tokio::task::JoinSet::new();
    for (destination, indices) in groups {
        let engine = engine.clone();
        let meta = meta.clone();
        let body = body.clone();
        attempts.spawn(async move {
            let limit = {
                let mut map = lock(&engine.per_destination);
                map.entry(destination.clone())
                    .or_insert_with(|| {
                        Arc::new(Semaphore::new(engine.config.delivery.max_per_destination))
                    })
                    .clone()
            };
            let _slot = limit.acquire_owned().await;
            let domain_list = engine.domain_list.current();
            let ctx = AttemptContext {
                config: &engine.config,
                resolver: engine.resolver.as_ref(),
                tls: &engine.tls,
                pool: &engine.pool,
                domain_list: &domain_list,
                metrics: &engine.metrics,
                audit: &engine.audit,
                mta_sts: engine.mta_sts.as_deref(),
                tls_reports: engine.tls_reports.as_ref(),
            };
            let mut log = Vec::new();
            let attempted =
                attempt::deliver(&ctx, &meta, &body, &destination, &indices, &mut log).await;
            for (_, outcome) in &attempted.outcomes {
                let result = match outcome {
                    Outcome::Delivered { .. } => "delivered",
                    Outcome::Deferred { .. } => "deferred",
                    Outcome::Failed { .. } => "failed",
                };
                engine
                    .metrics
                    .deliveries
                    .with_label_values(&[
                        result,
                        attempted.level.as_str(),
                        attempted.source.label(),
                    ])
                    .inc();
            }
            let outcomes = attempted.outcomes;
            (destination, outcomes, log)
        });
    }
    while let Some(joined) = attempts.join_next().await {
        let Ok((destination, outcomes, log)) = joined else {
            tracing::error!(queue_id = %id, "a delivery attempt panicked; it will be retried");
            continue;
        };
        log_attempt(&meta, &destination, &outcomes, &log);
        log_delivered(&meta, &message_id, &outcomes, &log);
        for (i, outcome) in outcomes {
            if let (Some(state), Some(recipient)) = (states.get(i), meta.recipients.get(i)) {
                note(
                    engine,
                    &meta,
                    (i, recipient),
                    state,
                    &outcome,
                    now,
                    &mut results,
                );
            }
        }
    }

    // The attempts are over: recording their results must not hold a delivery slot, or a
    // store that cannot write (a full disk) would stop every delivery (issue 16 item 4).
    drop(permit);
    let _recording = Recording::start(engine);
    // DSNs first, then the states: a crash in between repeats a DSN rather than losing one.
    for (kind, recipients) in std::mem::take(&mut results.reports) {
        outcome::send_dsn(engine, &meta, &body, kind.kind(), recipients, now).await?;
    }
    // Not needed any more: a message whose results wait for room on the disk keeps only its
    // envelope and states in memory.
    drop(body);
    let mut final_states = states.clone();
    for (i, state) in &results.updates {
        if let Some(slot) = final_states.get_mut(*i) {
            *slot = state.clone();
        }
    }
    if final_states.iter().all(|s| s.status.is_final()) {
        // Done: removing the message is the one durable write needed.
        until_durable(engine, id, "removal", || {
            engine.committer.remove(id.clone())
        })
        .await?;
        tracing::info!(queue_id = %id, "message done, removed from the queue");
        return Ok(Due::Done);
    }
    if !results.updates.is_empty() {
        until_durable(engine, id, "recipient states", || {
            engine
                .committer
                .update_states(id.clone(), results.updates.clone())
        })
        .await?;
    }
    if schedule::on_hold(&final_states) {
        return Ok(Due::Held);
    }
    Ok(schedule::next_attempt(&final_states).map_or(Due::Done, Due::At))
}

/// Records an outcome for the recipient at `index` of `meta`: decides ([`outcome::record`]),
/// audits and logs the decision, and adds it to the message's `results`.
fn note(
    engine: &Engine,
    meta: &MessageMeta,
    (index, recipient): (usize, &Recipient),
    old: &RecipientState,
    outcome: &Outcome,
    now: u64,
    results: &mut Results,
) {
    let rules = outcome::Rules::of(&engine.config);
    let Recorded {
        state,
        report,
        audit,
    } = outcome::record(&rules, meta, recipient, old, outcome, now);
    if let Some(event) = audit {
        crate::audit::submit(&engine.audit, event);
    }
    tracing::info!(
        queue_id = %meta.id,
        to = %recipient.address,
        status = %state.status,
        attempts = state.attempts,
        reply = state.last_reply.as_deref().unwrap_or(""),
        "recipient result"
    );
    results.add(index, state, report);
}

/// One line per delivered recipient (issue 14 item 3, Postfix's `status=sent` line): queue
/// id, Message-ID, recipient, relay host, TLS version and cipher, the policy level and its
/// source, and the next hop's reply.
fn log_delivered(
    meta: &MessageMeta,
    message_id: &str,
    outcomes: &[(usize, Outcome)],
    log: &[HostLog],
) {
    for (i, outcome) in outcomes {
        let Outcome::Delivered {
            host,
            reply,
            tls_version,
            level,
            source,
            ..
        } = outcome
        else {
            continue;
        };
        let cipher = log
            .iter()
            .rev()
            .find(|entry| &entry.host == host)
            .and_then(|entry| entry.tls.as_ref())
            .map_or("none", |tls| tls.cipher.as_str());
        tracing::info!(
            queue_id = %meta.id,
            message_id = %message_id,
            to = meta.recipients.get(*i).map(|r| r.address.as_str()).unwrap_or(""),
            relay = %host,
            tls_version = tls_version.as_deref().unwrap_or("none"),
            tls_cipher = cipher,
            tls_level = level.as_str(),
            policy_source = source.label(),
            reply = %reply,
            "delivered"
        );
    }
}

fn log_attempt(
    meta: &MessageMeta,
    destination: &Destination,
    outcomes: &[(usize, Outcome)],
    log: &[HostLog],
) {
    for entry in log {
        tracing::info!(
            queue_id = %meta.id,
            destination = %destination,
            host = %entry.host,
            addr = %entry.addr,
            tls_version = entry.tls.as_ref().map(|t| t.version.as_str()).unwrap_or("none"),
            tls_cipher = entry.tls.as_ref().map(|t| t.cipher.as_str()).unwrap_or("none"),
            tls_level = entry.level.as_str(),
            policy_source = entry.source.label(),
            result = %entry.result,
            "delivery attempt"
        );
    }
    if log.is_empty() {
        for (i, outcome) in outcomes {
            let (result, reason) = match outcome {
                Outcome::Delivered { reply, .. } => ("delivered", reply.clone()),
                Outcome::Deferred { status, reason, .. } => {
                    ("deferred", format!("{status} {reason}"))
                }
                Outcome::Failed { status, reason, .. } => ("failed", format!("{status} {reason}")),
            };
            tracing::info!(
                queue_id = %meta.id,
                destination = %destination,
                to = meta.recipients.get(*i).map(|r| r.address.as_str()).unwrap_or(""),
                result,
                reason = %reason,
                "delivery not attempted"
            );
        }
    }
}
