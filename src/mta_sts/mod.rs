//! MTA-STS, sending side (RFC 8461; D6, issue 13 item 1): which policy is in force for a
//! recipient domain, fetched when it changes, cached durably and refreshed in the background.
//!
//! Delivery asks [`MtaSts::policy_for`] before its first host (where
//! `policy::decision::wants_sts` says the policy counts) and hands the answer to
//! `policy::decision::decide`; `tlsgate probe` asks [`MtaSts::lookup`] for the same answer
//! with its reasons. The order of RFC 8461 section 5:
//! 1. the `_mta-sts.<domain>` TXT record; with the cached policy's id and the policy still
//!    fresh, the cached policy is used as it is;
//! 2. a new id, or nothing fresh cached: the policy is fetched now (the first delivery to a
//!    domain waits for it, at most 60 s) and cached; `mode: none` drops the cached policy;
//! 3. no record, or the fetch failed: a fresh cached policy stays in force (section 5.1);
//!    otherwise the domain has no policy.
//!
//! A failed fetch is counted (`tlsgate_mta_sts_fetch_total{result}`) and recorded for TLS
//! reporting with its RFC 8460 result type (section 4.3.3). [`MtaSts::refresh`] runs in the
//! background and fetches policies again once a day and before they expire (section 5.1).

pub mod cache;
pub mod fetch;

use crate::config::{Config, MtaStsSection};
use crate::dns::Resolver;
use crate::domain::Domain;
use crate::metrics::Metrics;
use crate::policy::mta_sts::{parse_record, NoRecord, StsMode, StsPolicy, StsRecord};
use crate::tls::client::ClientTls;
use crate::tls_report::{PolicyType, ReportPolicy, SessionResult, TlsReportSink};
use cache::{CachedPolicy, PolicyCache};
use fetch::{FetchError, FETCH_TIMEOUT};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A policy is fetched again when it is this old, or expires within this time (RFC 8461
/// section 5.1 asks senders to refresh before expiry; daily is what large senders do).
pub const REFRESH_AFTER: u64 = 86_400;

/// How often the background task looks for policies to refresh.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

/// What a lookup found for a domain, with the reasons (`tlsgate probe`).
#[derive(Debug, Clone)]
pub struct StsLookup {
    /// The `_mta-sts` record, or why there is none.
    pub record: Result<StsRecord, NoRecord>,
    /// The policy in force (fresh, mode `enforce` or `testing`); `None`: no policy.
    pub policy: Option<CachedPolicy>,
    /// The policy was fetched by this lookup (else it came from the cache).
    pub fetched_now: bool,
    /// A fetch this lookup made failed (the cached policy, if any, stays in force).
    pub fetch_error: Option<FetchError>,
    /// The domain published `mode: none`: any cached policy was dropped.
    pub withdrawn: bool,
}

/// The MTA-STS service: settings, the cache, and what it needs to fetch and report.
pub struct MtaSts {
    /// `mta_sts.https_port`.
    https_port: u16,
    /// Bounds one fetch ([`FETCH_TIMEOUT`] in the relay; tools may pass their own).
    fetch_timeout: Duration,
    /// The relay's resolver: TXT records and the policy host's addresses.
    resolver: Arc<dyn Resolver>,
    /// The trust roots for the policy host's certificate (T2: public roots plus
    /// `outbound.extra_trust_roots`).
    tls: ClientTls,
    /// Fetch counters and the policy gauge; `None` in tools.
    metrics: Option<Arc<Metrics>>,
    /// Where failed fetches (and `testing` results, recorded by delivery) are reported.
    sink: Arc<dyn TlsReportSink>,
    /// The policies by domain.
    cache: Mutex<PolicyCache>,
    /// Counts changes of the cache, so that an older snapshot never overwrites a newer one.
    generation: AtomicU64,
    /// The generation last written to disk; its lock serialises the writes.
    written: Arc<Mutex<u64>>,
    /// One fetch at a time per domain: concurrent deliveries wait for the first one's fetch.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Opens the relay's cache file (`Config::mta_sts_cache`). A file that cannot be read is
/// logged and replaced by an empty cache: policies are fetched again at the next delivery.
pub fn open_cache(config: &Config, persist: bool) -> PolicyCache {
    let path = config.mta_sts_cache();
    PolicyCache::open(&path, persist).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "MTA-STS policy cache not readable, starting empty");
        PolicyCache::empty(persist.then_some(path))
    })
}

impl MtaSts {
    /// The service over `cache` (see [`open_cache`]). `metrics`: `None` in tools; `sink`:
    /// where failed fetches are reported (`NoReports` in tools and tests).
    pub fn new(
        settings: &MtaStsSection,
        cache: PolicyCache,
        resolver: Arc<dyn Resolver>,
        tls: ClientTls,
        metrics: Option<Arc<Metrics>>,
        sink: Arc<dyn TlsReportSink>,
    ) -> MtaSts {
        let service = MtaSts {
            https_port: settings.https_port,
            fetch_timeout: FETCH_TIMEOUT,
            resolver,
            tls,
            metrics,
            sink,
            cache: Mutex::new(cache),
            generation: AtomicU64::new(0),
            written: Arc::new(Mutex::new(0)),
            in_flight: Mutex::new(HashMap::new()),
        };
        service.update_gauge();
        service
    }

    /// Bounds each fetch by `timeout` instead of [`FETCH_TIMEOUT`] (`tlsgate probe --timeout`).
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> MtaSts {
        self.fetch_timeout = timeout.min(FETCH_TIMEOUT);
        self
    }

    /// Where MTA-STS outcomes are reported (RFC 8460): delivery records `testing` results here.
    pub fn sink(&self) -> &dyn TlsReportSink {
        self.sink.as_ref()
    }

    /// The policy in force for `domain` (mode `enforce` or `testing`), fetched first when
    /// needed (see the module doc); `None` when the domain has none.
    pub async fn policy_for(&self, domain: &Domain) -> Option<StsPolicy> {
        self.lookup(domain).await.policy.map(|c| c.policy)
    }

    /// The lookup of RFC 8461 section 5 for `domain`, with what it found on the way.
    pub async fn lookup(&self, domain: &Domain) -> StsLookup {
        let name = format!("_mta-sts.{}", domain.as_str());
        let record = match self.resolver.txt(&name).await {
            Ok(txt) => parse_record(&txt.value),
            Err(e) => Err(NoRecord::Lookup(e.to_string())),
        };
        let mut found = StsLookup {
            record,
            policy: self.cached(domain),
            fetched_now: false,
            fetch_error: None,
            withdrawn: false,
        };
        // No usable record: a fresh cached policy stays in force (section 5.1).
        let Ok(record) = &found.record else {
            return found;
        };
        if found.policy.as_ref().is_some_and(|c| c.id == record.id) {
            return found;
        }
        let gate = {
            let mut in_flight = lock(&self.in_flight);
            in_flight
                .entry(domain.as_str().to_string())
                .or_default()
                .clone()
        };
        let _one_fetch = gate.lock().await;
        // Another delivery may have fetched this id while we waited.
        if let Some(cached) = self.cached(domain).filter(|c| c.id == record.id) {
            found.policy = Some(cached);
            return found;
        }
        match self.fetch_and_store(domain, &record.id).await {
            Ok(Some(policy)) => {
                found.policy = Some(policy);
                found.fetched_now = true;
            }
            Ok(None) => {
                found.policy = None;
                found.fetched_now = true;
                found.withdrawn = true;
            }
            // The cached policy, if fresh, stays in force (section 5.1).
            Err(e) => found.fetch_error = Some(e),
        }
        found
    }

    /// The fresh cached policy of `domain`.
    fn cached(&self, domain: &Domain) -> Option<CachedPolicy> {
        let now = unix_now();
        lock(&self.cache)
            .get(domain.as_str())
            .filter(|c| c.fresh(now))
            .cloned()
    }

    /// Fetches `domain`'s policy for record `id` and stores it; `Ok(None)` for `mode: none`,
    /// which drops the cached policy (section 5). A failure is counted, logged and reported
    /// (RFC 8460 section 4.3.3) and leaves the cache as it was.
    async fn fetch_and_store(
        &self,
        domain: &Domain,
        id: &str,
    ) -> Result<Option<CachedPolicy>, FetchError> {
        let result = fetch::fetch_policy(
            &self.tls,
            self.resolver.as_ref(),
            domain,
            self.https_port,
            self.fetch_timeout,
        )
        .await;
        let count = |label: &str| {
            if let Some(m) = &self.metrics {
                m.mta_sts_fetches.with_label_values(&[label]).inc();
            }
        };
        let fetched = match result {
            Ok(fetched) => fetched,
            Err(e) => {
                count(e.metric_label());
                tracing::warn!(domain = %domain, id = %id, result = e.metric_label(), error = %e,
                    "MTA-STS policy fetch failed");
                self.report_failure(domain, &e);
                return Err(e);
            }
        };
        count("ok");
        let now = unix_now();
        let policy = fetched.policy;
        tracing::info!(domain = %domain, id = %id, mode = %policy.mode, max_age = policy.max_age,
            mx = %policy.mx.join(","), "MTA-STS policy fetched");
        let stored = (policy.mode != StsMode::None).then(|| CachedPolicy {
            id: id.to_string(),
            text: fetched.text,
            expires: now.saturating_add(policy.max_age),
            fetched_at: now,
            policy,
        });
        {
            let mut cache = lock(&self.cache);
            match &stored {
                Some(p) => cache.put(domain.as_str(), p.clone()),
                None => {
                    cache.remove(domain.as_str());
                }
            }
        }
        self.persist().await;
        Ok(stored)
    }

    /// Records a failed fetch for TLS reporting: policy type `sts`, the recipient domain, no
    /// receiving MX host (RFC 8460 sections 4.3.3 and 4.4).
    fn report_failure(&self, domain: &Domain, error: &FetchError) {
        let cached = lock(&self.cache).get(domain.as_str()).cloned();
        self.sink.record(SessionResult {
            policy: ReportPolicy {
                policy_type: PolicyType::Sts,
                policy_domain: domain.as_str().to_string(),
                policy_strings: cached
                    .as_ref()
                    .map(|c| c.policy.lines.clone())
                    .unwrap_or_default(),
                mx_host: cached.map(|c| c.policy.mx).unwrap_or_default(),
            },
            receiving_mx_hostname: String::new(),
            receiving_ip: None,
            sending_mta_ip: None,
            result: Err(error.result_type()),
            detail: Some(error.to_string()),
        });
    }

    /// Writes the cache to disk (when persistent) and updates the gauge. Snapshots are
    /// numbered, so that of two concurrent writes the newer always ends up on disk.
    async fn persist(&self) {
        self.update_gauge();
        let (generation, snapshot) = {
            let cache = lock(&self.cache);
            (
                self.generation.fetch_add(1, Ordering::SeqCst) + 1,
                cache.snapshot(),
            )
        };
        let Some((path, bytes)) = snapshot else {
            return;
        };
        let written = self.written.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut last = lock(&written);
            if *last >= generation {
                return Ok::<(), cache::CacheError>(());
            }
            cache::write_atomically(&path, &bytes)?;
            *last = generation;
            Ok(())
        })
        .await;
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e,
                "MTA-STS policy cache not written; policies stay in memory until the next write"),
            Err(e) => tracing::warn!(error = %e, "MTA-STS policy cache writer failed"),
        }
    }

    fn update_gauge(&self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let (enforce, testing) = lock(&self.cache).count_by_mode(unix_now());
        metrics
            .mta_sts_policies
            .with_label_values(&["enforce"])
            .set(enforce);
        metrics
            .mta_sts_policies
            .with_label_values(&["testing"])
            .set(testing);
    }

    /// One round of background refreshes (RFC 8461 section 5.1): each cached policy fetched a
    /// day ago or expiring within a day is fetched again when its domain still publishes a
    /// record (a new id or the same); a failure keeps the cached policy. Expired policies are
    /// dropped.
    pub async fn refresh(&self) {
        let now = unix_now();
        let due: Vec<String> = lock(&self.cache)
            .iter()
            .filter(|(_, c)| {
                c.fresh(now)
                    && (now.saturating_sub(c.fetched_at) >= REFRESH_AFTER
                        || c.expires.saturating_sub(now) < REFRESH_AFTER)
            })
            .map(|(domain, _)| domain.clone())
            .collect();
        for name in due {
            let Ok(domain) = Domain::parse(&name) else {
                continue;
            };
            let txt = self
                .resolver
                .txt(&format!("_mta-sts.{name}"))
                .await
                .map_err(|e| NoRecord::Lookup(e.to_string()))
                .and_then(|t| parse_record(&t.value));
            match txt {
                Ok(record) => {
                    let _ = self.fetch_and_store(&domain, &record.id).await;
                }
                Err(why) => tracing::info!(domain = %name, reason = %why,
                    "MTA-STS record not found at refresh; the cached policy stays until it expires"),
            }
        }
        let dropped = lock(&self.cache).drop_expired(unix_now());
        if dropped {
            self.persist().await;
        } else {
            self.update_gauge();
        }
    }

    /// Runs [`MtaSts::refresh`] every [`REFRESH_INTERVAL`] until `shutdown`.
    pub async fn refresh_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(REFRESH_INTERVAL) => {}
            }
            self.refresh().await;
        }
    }
}
