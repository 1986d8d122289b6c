//! The delivery engine: the scheduler that takes due recipients from the queue, delivers them
//! ([`attempt`] over [`client`] connections, reused through the [`pool`]), records every result
//! durably and tells senders what happened ([`crate::dsn`]).
//!
//! The store is the truth: at start every message in it is scheduled again from its recipient
//! states, so a restart resumes where the last run stopped. In memory there is only the
//! timetable (which message is due when) and the set of messages being worked on, so a
//! message is never handled by two tasks at once.

pub mod attempt;
pub mod client;
pub mod pool;
pub mod route;

use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use crate::dns::Resolver;
use crate::dsn::{self, DsnKind, DsnRequest, ReportedRecipient};
use crate::metrics::Metrics;
use crate::policy::domain_list::DomainListHandle;
use crate::queue::message::{unix_now, MessageMeta, QueueId, RecipientState, RecipientStatus};
use crate::queue::retry;
use crate::queue::{Committer, NewMessages, Store, StoreError};
use crate::tls::client::ClientTls;
use attempt::{AttemptContext, HostLog, Outcome};
use pool::ConnectionPool;
use route::Destination;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Wait after a store error before the message is looked at again.
const STORE_ERROR_RETRY: u64 = 60;

/// The timetable: which idle message is due when, and which are being worked on.
#[derive(Default)]
struct Timetable {
    due: BTreeSet<(u64, QueueId)>,
    /// When each idle message is due (to move it without scanning `due`).
    planned: HashMap<QueueId, u64>,
    active: HashSet<QueueId>,
}

impl Timetable {
    fn add(&mut self, id: QueueId, at: u64) {
        if self.active.contains(&id) {
            return;
        }
        if let Some(old) = self.planned.insert(id.clone(), at) {
            self.due.remove(&(old, id.clone()));
        }
        self.due.insert((at, id));
    }

    /// Removes the messages due at `now` and marks them active.
    fn take_due(&mut self, now: u64) -> Vec<QueueId> {
        let mut ready = Vec::new();
        while let Some((at, _)) = self.due.first() {
            if *at > now {
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

    /// Queue size and the age of the oldest message (queue ids encode their arrival time).
    fn update_gauges(&self, metrics: &Metrics) {
        let count = self.planned.len() + self.active.len();
        metrics.queue_messages.set(count as i64);
        let oldest = self
            .planned
            .keys()
            .chain(self.active.iter())
            .filter_map(QueueId::arrival_micros)
            .min();
        let age = oldest.map_or(0, |micros| unix_now().saturating_sub(micros / 1_000_000));
        metrics.queue_oldest_message_age_seconds.set(age as i64);
    }

    fn next_due(&self) -> Option<u64> {
        self.due.first().map(|(at, _)| *at)
    }
}

struct Engine {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    committer: Committer,
    resolver: Arc<dyn Resolver>,
    tls: ClientTls,
    domain_list: Arc<DomainListHandle>,
    metrics: Arc<Metrics>,
    audit: Option<Arc<AuditLog>>,
    pool: ConnectionPool,
    timetable: Mutex<Timetable>,
    wake: Notify,
    global: Arc<Semaphore>,
    per_destination: Mutex<HashMap<Destination, Arc<Semaphore>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// What the engine is built from.
pub struct EngineParts {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub committer: Committer,
    /// Ids of newly committed messages (from [`Committer::start`]).
    pub announced: NewMessages,
    pub resolver: Arc<dyn Resolver>,
    pub tls: ClientTls,
    pub domain_list: Arc<DomainListHandle>,
    pub metrics: Arc<Metrics>,
    pub audit: Option<Arc<AuditLog>>,
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
        } = parts;
        let loader = store.clone();
        let backlog = tokio::task::spawn_blocking(move || load_backlog(loader.as_ref()))
            .await
            .map_err(|e| StoreError::Engine(format!("queue scan panicked: {e}")))??;
        tracing::info!(messages = backlog.len(), "delivery engine starting");
        let mut timetable = Timetable::default();
        for (id, at) in backlog {
            timetable.add(id, at);
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
            timetable: Mutex::new(timetable),
            wake: Notify::new(),
            per_destination: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
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

/// Why an administrative queue operation could not be done.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no such message in the queue")]
    NotFound,
    #[error("the message is being delivered right now; try again in a moment")]
    Busy,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A cheap, cloneable handle for the admin API.
#[derive(Clone)]
pub struct EngineHandle {
    engine: Arc<Engine>,
}

impl DeliveryEngine {
    pub fn handle(&self) -> EngineHandle {
        EngineHandle {
            engine: self.engine.clone(),
        }
    }
}

impl EngineHandle {
    /// Takes the message out of the timetable so that nothing else works on it meanwhile.
    async fn claim(&self, id: &QueueId) -> Result<(), AdminError> {
        let store = self.engine.store.clone();
        let key = id.clone();
        let exists = tokio::task::spawn_blocking(move || store.message(&key))
            .await
            .map_err(|e| StoreError::Engine(e.to_string()))??
            .is_some();
        if !exists {
            return Err(AdminError::NotFound);
        }
        let mut timetable = lock(&self.engine.timetable);
        if timetable.active.contains(id) {
            return Err(AdminError::Busy);
        }
        if let Some(at) = timetable.planned.remove(id) {
            timetable.due.remove(&(at, id.clone()));
        }
        timetable.active.insert(id.clone());
        Ok(())
    }

    fn release(&self, id: &QueueId, next: Option<u64>) {
        let mut timetable = lock(&self.engine.timetable);
        timetable.active.remove(id);
        if let Some(at) = next {
            timetable.add(id.clone(), at);
        }
        drop(timetable);
        self.engine.wake.notify_one();
    }

    /// `tlsgate queue retry`: every undelivered recipient is due now.
    pub async fn retry_now(&self, id: &QueueId) -> Result<(), AdminError> {
        self.claim(id).await?;
        let store = self.engine.store.clone();
        let key = id.clone();
        let states = tokio::task::spawn_blocking(move || store.recipient_states(&key))
            .await
            .map_err(|e| StoreError::Engine(e.to_string()));
        let now = unix_now();
        let result = match states {
            Ok(Ok(states)) => {
                let updates: Vec<(usize, RecipientState)> = states
                    .into_iter()
                    .enumerate()
                    .filter(|(_, s)| !s.status.is_final())
                    .map(|(i, mut s)| {
                        s.next_attempt = now;
                        (i, s)
                    })
                    .collect();
                self.engine
                    .committer
                    .update_states(id.clone(), updates)
                    .await
                    .map_err(AdminError::from)
            }
            Ok(Err(e)) | Err(e) => Err(AdminError::from(e)),
        };
        self.release(id, Some(now));
        result
    }

    /// `tlsgate queue bounce`: every undelivered recipient fails now, with a failure DSN.
    pub async fn bounce(&self, id: &QueueId, reason: &str) -> Result<(), AdminError> {
        self.claim(id).await?;
        let result = work_on(&self.engine, id, Some(reason)).await;
        let next = match &result {
            Ok(next) => *next,
            Err(_) => Some(unix_now() + STORE_ERROR_RETRY),
        };
        self.release(id, next);
        result.map(|_| ()).map_err(AdminError::from)
    }

    /// `tlsgate queue delete`: removes the message without telling anyone.
    pub async fn delete(&self, id: &QueueId) -> Result<(), AdminError> {
        self.claim(id).await?;
        let result = self.engine.committer.remove(id.clone()).await;
        let next = result.is_err().then(unix_now);
        self.release(id, next);
        result.map_err(AdminError::from)
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.engine.store.clone()
    }
}

/// Every message in the store with the time it is next due.
fn load_backlog(store: &dyn Store) -> Result<Vec<(QueueId, u64)>, StoreError> {
    let now = unix_now();
    let mut out = Vec::new();
    let ids = store.message_ids()?;
    // Ids sort by time: the last one is the newest.
    if let Some(newest) = ids.last() {
        QueueId::observe(newest);
    }
    for id in ids {
        let states = store.recipient_states(&id)?;
        let due = states
            .iter()
            .filter(|s| !s.status.is_final())
            .map(|s| s.next_attempt)
            .min()
            // All final: a crash came between the last result and the removal; finish it.
            .unwrap_or(now);
        out.push((id, due));
    }
    Ok(out)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn run_scheduler(engine: Arc<Engine>, mut announced: NewMessages) {
    let mut announcements_open = true;
    loop {
        for conn in engine.pool.expired() {
            tokio::spawn(conn.quit());
        }
        let now = unix_now();
        let (ready, next) = {
            let mut timetable = lock(&engine.timetable);
            let ready = timetable.take_due(now);
            timetable.update_gauges(&engine.metrics);
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
                Some(id) => lock(&engine.timetable).add(id, unix_now()),
                None => announcements_open = false,
            },
            _ = engine.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = engine.shutdown.cancelled() => return,
        }
    }
}

/// What a message's recipients need after an attempt.
#[derive(Default)]
struct Results {
    updates: Vec<(usize, RecipientState)>,
    reports: BTreeMap<DsnKindKey, Vec<ReportedRecipient>>,
}

/// `DsnKind` ordered, so reports go out in a stable order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum DsnKindKey {
    Failure,
    Delay,
    Relayed,
}

impl DsnKindKey {
    fn kind(self) -> DsnKind {
        match self {
            DsnKindKey::Failure => DsnKind::Failure,
            DsnKindKey::Delay => DsnKind::Delay,
            DsnKindKey::Relayed => DsnKind::Relayed,
        }
    }
}

async fn process_message(engine: &Arc<Engine>, id: &QueueId) {
    let next = match work_on(engine, id, None).await {
        Ok(next) => next,
        Err(e) => {
            engine.metrics.store_errors.inc();
            tracing::error!(queue_id = %id, error = %e, "queue store error during delivery");
            Some(unix_now() + STORE_ERROR_RETRY)
        }
    };
    let mut timetable = lock(&engine.timetable);
    timetable.active.remove(id);
    if let Some(at) = next {
        timetable.add(id.clone(), at);
    }
    drop(timetable);
    engine.wake.notify_one();
}

/// Delivers what is due of one message. Returns when it is next due, or `None` when it is
/// done (and removed).
async fn work_on(
    engine: &Arc<Engine>,
    id: &QueueId,
    bounce: Option<&str>,
) -> Result<Option<u64>, StoreError> {
    let _permit = engine
        .global
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| StoreError::Closed)?;
    let store = engine.store.clone();
    let key = id.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let Some(meta) = store.message(&key)? else {
            return Ok(None);
        };
        let states = store.recipient_states(&key)?;
        let body = store.body(&key)?.unwrap_or_default();
        Ok::<_, StoreError>(Some((meta, states, body)))
    })
    .await
    .map_err(|e| StoreError::Engine(format!("queue read panicked: {e}")))??;
    let Some((meta, states, body)) = loaded else {
        return Ok(None);
    };
    let meta = Arc::new(meta);
    let body = Arc::new(body);
    let config = &engine.config;
    let now = unix_now();
    let mut results = Results::default();

    let expired = retry::older_than(meta.reception.received_at, config.delivery.expiry, now);
    let mut groups: BTreeMap<Destination, Vec<usize>> = BTreeMap::new();
    for (i, state) in states.iter().enumerate() {
        if state.status.is_final() {
            continue;
        }
        if let Some(reason) = bounce {
            let outcome = Outcome::Failed {
                host: None,
                status: "5.0.0".into(),
                reason: reason.to_string(),
                remote: false,
            };
            record(engine, &meta, i, state, &outcome, now, &mut results);
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
            let status = state.last_status.clone().unwrap_or_else(|| "4.4.7".into());
            // Expiry is tlsgate's decision: no Remote-MTA, whatever the last host said.
            let outcome = Outcome::Failed {
                host: None,
                status,
                reason,
                remote: false,
            };
            record(engine, &meta, i, state, &outcome, now, &mut results);
            continue;
        }
        match route::destination_of(config, &meta.recipients[i].address) {
            Ok(d) => groups.entry(d).or_default().push(i),
            Err(e) => {
                let outcome = Outcome::Failed {
                    host: None,
                    status: e.status().into(),
                    reason: e.to_string(),
                    remote: false,
                };
                record(engine, &meta, i, state, &outcome, now, &mut results);
            }
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
            };
            let mut log = Vec::new();
            let outcomes =
                attempt::deliver(&ctx, &meta, &body, &destination, &indices, &mut log).await;
            let level =
                attempt::policy_for(&engine.config, &domain_list, &destination, meta.requiretls)
                    .level;
            for (_, outcome) in &outcomes {
                let result = match outcome {
                    Outcome::Delivered { .. } => "delivered",
                    Outcome::Deferred { .. } => "deferred",
                    Outcome::Failed { .. } => "failed",
                };
                engine
                    .metrics
                    .deliveries
                    .with_label_values(&[result, level.as_str()])
                    .inc();
            }
            (destination, outcomes, log)
        });
    }
    while let Some(joined) = attempts.join_next().await {
        let Ok((destination, outcomes, log)) = joined else {
            tracing::error!(queue_id = %id, "a delivery attempt panicked; it will be retried");
            continue;
        };
        log_attempt(&meta, &destination, &outcomes, &log);
        for (i, outcome) in outcomes {
            if let Some(state) = states.get(i) {
                record(engine, &meta, i, state, &outcome, now, &mut results);
            }
        }
    }

    // DSNs first, then the states: a crash in between repeats a DSN rather than losing one.
    for (kind, recipients) in std::mem::take(&mut results.reports) {
        send_dsn(engine, &meta, &body, kind.kind(), recipients, now).await;
    }
    let mut final_states = states.clone();
    for (i, state) in &results.updates {
        if let Some(slot) = final_states.get_mut(*i) {
            *slot = state.clone();
        }
    }
    if final_states.iter().all(|s| s.status.is_final()) {
        // Done: removing the message is the one durable write needed.
        engine.committer.remove(id.clone()).await?;
        tracing::info!(queue_id = %id, "message done, removed from the queue");
        return Ok(None);
    }
    if !results.updates.is_empty() {
        engine
            .committer
            .update_states(id.clone(), results.updates)
            .await?;
    }
    Ok(final_states
        .iter()
        .filter(|s| !s.status.is_final())
        .map(|s| s.next_attempt)
        .min())
}

/// Turns an outcome into the recipient's new state and the DSN it calls for.
fn record(
    engine: &Engine,
    meta: &MessageMeta,
    index: usize,
    old: &RecipientState,
    outcome: &Outcome,
    now: u64,
    results: &mut Results,
) {
    let d = &engine.config.delivery;
    let recipient = &meta.recipients[index];
    let mut state = old.clone();
    state.attempts += 1;
    state.last_attempt = now;
    // RFC 3464 2.3.5/2.3.6: Remote-MTA and an `smtp` diagnostic only for a remote's own reply.
    let report =
        |status: &str, host: &Option<String>, remote: bool, diagnostic: &str| ReportedRecipient {
            recipient: recipient.clone(),
            status: status.to_string(),
            remote_mta: host.clone().filter(|_| remote),
            diagnostic: diagnostic.to_string(),
            last_attempt: now,
        };
    match outcome {
        Outcome::Delivered {
            host,
            reply,
            peer_does_dsn,
            tls_version,
            level,
            source,
        } => {
            crate::audit::submit(
                &engine.audit,
                AuditEvent::Delivered {
                    queue_id: meta.id.to_string(),
                    domain: recipient_domain(&recipient.address),
                    host: host.clone(),
                    tls_version: tls_version.clone().unwrap_or_else(|| "none".into()),
                    level: level.to_string(),
                    policy_source: source.label().to_string(),
                },
            );
            state.status = RecipientStatus::Delivered;
            state.last_reply = Some(reply.clone());
            state.last_status = Some("2.0.0".into());
            state.remote_mta = Some(host.clone());
            state.tls_deferral = false;
            if !peer_does_dsn && DsnKind::Relayed.wanted_by(&recipient.notify) {
                results
                    .reports
                    .entry(DsnKindKey::Relayed)
                    .or_default()
                    .push(report("2.0.0", &Some(host.clone()), true, reply));
            }
        }
        Outcome::Deferred {
            host,
            status,
            reason,
            remote,
            tls,
        } => {
            state.status = RecipientStatus::Deferred;
            state.last_reply = Some(reason.clone());
            state.last_status = Some(status.clone());
            state.remote_mta = host.clone();
            state.tls_deferral = *tls;
            state.next_attempt = retry::next_attempt(&d.retry_schedule, state.attempts, now)
                .min(retry::expires_at(meta.reception.received_at, d.expiry));
            // T6: a TLS-policy deferral is worth telling the sender about much sooner than an
            // ordinary one; a silent multi-day deferral is the worst outcome for the user.
            let received = meta.reception.received_at;
            let warn = retry::older_than(received, d.delay_warning, now)
                || (*tls
                    && retry::older_than(
                        received,
                        engine.config.outbound.tls_failure_warning_after,
                        now,
                    ));
            if warn && !state.delay_notified && DsnKind::Delay.wanted_by(&recipient.notify) {
                state.delay_notified = true;
                results
                    .reports
                    .entry(DsnKindKey::Delay)
                    .or_default()
                    .push(report(status, host, *remote, reason));
            }
        }
        Outcome::Failed {
            host,
            status,
            reason,
            remote,
        } => {
            state.status = RecipientStatus::Failed;
            state.last_reply = Some(reason.clone());
            // A failure is reported with a permanent class even when its last cause was
            // temporary (expiry): RFC 3464 2.3.4 wants the status to match the action.
            let status = match status.strip_prefix("4.") {
                Some(rest) => format!("5.{rest}"),
                None => status.clone(),
            };
            state.last_status = Some(status.clone());
            state.remote_mta = host.clone();
            crate::audit::submit(
                &engine.audit,
                AuditEvent::DeliveryFailed {
                    queue_id: meta.id.to_string(),
                    domain: recipient_domain(&recipient.address),
                    host: host.clone(),
                    status: status.clone(),
                    by: if *remote { "remote" } else { "tlsgate" }.into(),
                    reason: (!remote).then(|| reason.clone()),
                },
            );
            if DsnKind::Failure.wanted_by(&recipient.notify) {
                results
                    .reports
                    .entry(DsnKindKey::Failure)
                    .or_default()
                    .push(report(&status, host, *remote, reason));
            }
        }
    }
    tracing::info!(
        queue_id = %meta.id,
        to = %recipient.address,
        status = %state.status,
        attempts = state.attempts,
        reply = state.last_reply.as_deref().unwrap_or(""),
        "recipient result"
    );
    results.updates.push((index, state));
}

/// The domain of an address, for audit entries (which name domains, never whole addresses).
fn recipient_domain(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default()
}

async fn send_dsn(
    engine: &Engine,
    meta: &MessageMeta,
    body: &[u8],
    kind: DsnKind,
    recipients: Vec<ReportedRecipient>,
    now: u64,
) {
    let config = &engine.config;
    let request = DsnRequest {
        kind,
        reporting_mta: &config.server.hostname,
        admin_contact: config.server.admin_contact.as_deref(),
        original: meta,
        original_body: Some(body),
        recipients,
        delivery: &config.delivery,
        now,
    };
    let Some(message) = dsn::build(&request) else {
        return;
    };
    let dsn_id = message.meta.id.clone();
    match engine.committer.commit(message).await {
        Ok(()) => {
            engine
                .metrics
                .dsn_sent
                .with_label_values(&[kind.as_str()])
                .inc();
            crate::audit::submit(
                &engine.audit,
                AuditEvent::DsnSent {
                    queue_id: meta.id.to_string(),
                    dsn_id: dsn_id.to_string(),
                    kind: kind.as_str().to_string(),
                },
            );
            tracing::info!(
            queue_id = %meta.id,
            dsn_id = %dsn_id,
            kind = kind.as_str(),
            to = meta.sender.as_deref().unwrap_or(""),
            "DSN queued"
            )
        }
        Err(e) => tracing::error!(queue_id = %meta.id, error = %e, kind = kind.as_str(),
            "could not queue a DSN"),
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
            result = %entry.result,
            "delivery attempt"
        );
    }
    if log.is_empty() {
        for (i, outcome) in outcomes {
            tracing::info!(
                queue_id = %meta.id,
                destination = %destination,
                to = meta.recipients.get(*i).map(|r| r.address.as_str()).unwrap_or(""),
                outcome = ?outcome,
                "delivery not attempted"
            );
        }
    }
}
