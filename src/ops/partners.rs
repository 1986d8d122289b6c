//! Partner monitoring in the background (issue 15 item 3; T7, Bits 5.2.6: "after any change
//! … test that the domain list configuration still holds", and partners' certificates expire
//! without warning): with `domain_list.check_schedule` set, every listed domain is checked
//! periodically by the same check as `tlsgate domains check` ([`crate::compliance::
//! check_domains`], called, not copied), and the results are exported
//! (`tlsgate_partner_tls_ok{domain}`, `tlsgate_partner_certificate_expiry_timestamp_seconds
//! {domain,host}`, `tlsgate_partner_check_timestamp_seconds`), kept for `tlsgate domains
//! status` and the admin API, and every change of a partner's verdict is audited (S1).
//!
//! Load on the partners is kept low: at most [`PARALLEL`] domains are checked at a time, each
//! with delivery's own timeouts, and a run never starts while the previous one is going (the
//! next run waits for it). The first run comes after a random delay of up to a minute (at most
//! the period): soon after a start, because a restart is often the "change or replacement of
//! the server" T7 asks to test after, yet not at the same second on every relay of a fleet
//! restarted together. Later runs start one period after the previous run started.

use crate::audit::{AuditEvent, AuditLog};
use crate::compliance::{self, DomainReport};
use crate::config::Config;
use crate::dns::Resolver;
use crate::domain::Domain;
use crate::metrics::Metrics;
use crate::mta_sts::MtaSts;
use crate::policy::domain_list::DomainListHandle;
use crate::tls::client::ClientTls;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Domains checked at the same time in a background run: few, so that a run is a trickle of
/// connections for the partners, not a burst (issue 15 item 3: "bounded concurrency").
pub const PARALLEL: usize = 4;

/// The first run starts within this delay after start (or within the period, if shorter).
const FIRST_RUN_WITHIN: Duration = Duration::from_secs(60);

/// One MX address of a partner as the last run found it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerHost {
    /// The MX host name.
    pub mx_host: String,
    /// The address connected to (`-` when the host was skipped).
    pub address: String,
    /// Delivery would hand mail to this host.
    pub pass: bool,
    /// `TLSv1.2`/`TLSv1.3`; `None` without a TLS session.
    pub tls_version: Option<String>,
    /// When the certificate it presented expires (RFC 3339); `None` without a certificate.
    pub cert_not_after: Option<String>,
    /// Why it passes or fails, in words.
    pub reason: String,
    /// What needs attention although it passes (a certificate expiring within 21 days, as
    /// `domains check` warns); empty in states written before this was kept.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The latest verdict for one listed domain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerStatus {
    /// The listed domain.
    pub domain: String,
    /// Delivery would succeed over the TLS its policy demands.
    pub pass: bool,
    /// When it was last checked (RFC 3339).
    pub checked_at: String,
    /// Since when (RFC 3339) the verdict has been the same: the first run that found it.
    pub since: String,
    /// Why it fails; `None` when it passes.
    pub reason: Option<String>,
    /// Each MX address tried.
    pub hosts: Vec<PartnerHost>,
    /// Its hosts' warnings, each prefixed with the host, as `domains check` reports them: a
    /// domain that passes with warnings is shown as `warn`, not `pass`.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// What one background run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339).
    pub finished_at: String,
    /// Domains checked.
    pub domains: usize,
    /// Domains that passed.
    pub passed: usize,
    /// Domains that failed.
    pub failed: usize,
}

/// What a background run needs: the same parts as delivery's (one resolver, one TLS client
/// configuration, the MTA-STS service), so that the check sees what delivery would see.
pub struct MonitorParts {
    /// The running configuration.
    pub config: Arc<Config>,
    /// The list in force; each run checks the domains on it at that moment.
    pub list: Arc<DomainListHandle>,
    /// The relay's resolver.
    pub resolver: Arc<dyn Resolver>,
    /// The outbound TLS client configuration (public roots plus `extra_trust_roots`).
    pub tls: ClientTls,
    /// The MTA-STS service, when `mta_sts.enabled`.
    pub mta_sts: Option<Arc<MtaSts>>,
    /// Where the results are exported.
    pub metrics: Arc<Metrics>,
    /// Verdict changes are S1 evidence; `None` only in tests.
    pub audit: Option<Arc<AuditLog>>,
}

/// The background check of the listed domains and its latest results.
pub struct PartnerMonitor {
    /// What a run uses.
    parts: MonitorParts,
    /// `domain_list.check_schedule`.
    every: Duration,
    /// Held for the whole of a run: a second run cannot start while one is going.
    running: tokio::sync::Mutex<()>,
    /// The latest results, read by `domains status` and the admin API.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The latest verdict per domain on the list.
    partners: BTreeMap<String, PartnerStatus>,
    /// The last run that ended.
    last_run: Option<RunSummary>,
    /// The `{domain, host}` pairs with an exported certificate expiry, to remove the ones that
    /// went away.
    expiry_series: BTreeSet<(String, String)>,
}

impl PartnerMonitor {
    /// A monitor that checks every listed domain every `every` once [`PartnerMonitor::run`]
    /// runs.
    pub fn new(parts: MonitorParts, every: Duration) -> PartnerMonitor {
        PartnerMonitor {
            parts,
            every,
            running: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
        }
    }

    /// `domain_list.check_schedule`.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The latest verdict of every domain checked, in domain order.
    pub fn partners(&self) -> Vec<PartnerStatus> {
        self.lock().partners.values().cloned().collect()
    }

    /// The last run that ended; `None` before the first.
    pub fn last_run(&self) -> Option<RunSummary> {
        self.lock().last_run.clone()
    }

    /// Runs the check periodically until `shutdown` (which also ends a run in progress).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let first = spread(self.every.min(FIRST_RUN_WITHIN));
        tokio::select! {
            _ = tokio::time::sleep(first) => {}
            _ = shutdown.cancelled() => return,
        }
        loop {
            let started = tokio::time::Instant::now();
            tokio::select! {
                _ = self.run_once() => {}
                _ = shutdown.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep_until(started + self.every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Checks every domain on the list in force now and records the results; `None` when a
    /// run is already going (nothing is done then).
    pub async fn run_once(&self) -> Option<RunSummary> {
        let _running = self.running.try_lock().ok()?;
        let started = SystemTime::now();
        let list = self.parts.list.current();
        let domains: Vec<Domain> = list.iter().map(|d| d.domain.clone()).collect();
        let config = &self.parts.config;
        // Delivery's own bound for every connect and reply (T7: checked as delivery would).
        let timeout = config
            .delivery
            .command_timeout
            .max(config.delivery.connect_timeout);
        let reports = compliance::check_domains(
            config.clone(),
            list,
            self.parts.resolver.clone(),
            (self.parts.tls.clone(), self.parts.mta_sts.clone()),
            domains,
            timeout,
            PARALLEL,
        )
        .await;
        Some(self.record(&reports, started, SystemTime::now()))
    }

    /// Keeps, exports and audits one run's reports.
    fn record(
        &self,
        reports: &[DomainReport],
        started: SystemTime,
        finished: SystemTime,
    ) -> RunSummary {
        let now = rfc3339(finished);
        let metrics = &self.parts.metrics;
        let mut state = self.lock();
        let mut partners = BTreeMap::new();
        let mut expiry_series = BTreeSet::new();
        for report in reports {
            let previous = state.partners.get(&report.domain);
            let status = status_of(report, &now, previous);
            if previous.map(|p| p.pass) != Some(status.pass) {
                self.verdict_changed(&status, previous.map(|p| p.pass));
            }
            metrics
                .partner_tls_ok
                .with_label_values(&[report.domain.as_str()])
                .set(i64::from(status.pass));
            for (host, expiry) in earliest_expiry(report) {
                metrics
                    .partner_certificate_expiry
                    .with_label_values(&[report.domain.as_str(), host.as_str()])
                    .set(expiry);
                expiry_series.insert((report.domain.clone(), host));
            }
            partners.insert(report.domain.clone(), status);
        }
        // Series of domains that left the list (and hosts that left a domain's MX set) go.
        for gone in state.partners.keys().filter(|d| !partners.contains_key(*d)) {
            let _ = metrics.partner_tls_ok.remove_label_values(&[gone.as_str()]);
        }
        for (domain, host) in state.expiry_series.difference(&expiry_series) {
            let _ = metrics
                .partner_certificate_expiry
                .remove_label_values(&[domain.as_str(), host.as_str()]);
        }
        metrics.partner_check_timestamp.set(unix(finished));
        let passed = partners.values().filter(|p| p.pass).count();
        let summary = RunSummary {
            started_at: rfc3339(started),
            finished_at: now,
            domains: partners.len(),
            passed,
            failed: partners.len() - passed,
        };
        tracing::info!(
            domains = summary.domains,
            passed = summary.passed,
            failed = summary.failed,
            "partner check done"
        );
        state.partners = partners;
        state.expiry_series = expiry_series;
        state.last_run = Some(summary.clone());
        summary
    }

    /// Logs and audits a new verdict (S1).
    fn verdict_changed(&self, status: &PartnerStatus, previous: Option<bool>) {
        if status.pass {
            tracing::info!(domain = %status.domain, "partner check: delivery would succeed");
        } else {
            tracing::warn!(domain = %status.domain,
                reason = status.reason.as_deref().unwrap_or(""),
                "partner check: delivery would be deferred (T3); `tlsgate probe` shows details");
        }
        crate::audit::submit(
            &self.parts.audit,
            AuditEvent::PartnerVerdict {
                domain: status.domain.clone(),
                pass: status.pass,
                previous,
                reason: status.reason.clone(),
            },
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The status kept for one report; `since` carries over while the verdict stays.
fn status_of(report: &DomainReport, now: &str, previous: Option<&PartnerStatus>) -> PartnerStatus {
    let since = match previous {
        Some(p) if p.pass == report.pass => p.since.clone(),
        _ => now.to_string(),
    };
    PartnerStatus {
        domain: report.domain.clone(),
        pass: report.pass,
        checked_at: now.to_string(),
        since,
        reason: if report.pass {
            None
        } else {
            report.reason.clone()
        },
        hosts: report
            .hosts
            .iter()
            .map(|h| PartnerHost {
                mx_host: h.mx_host.clone(),
                address: h.address.clone(),
                pass: h.pass,
                tls_version: h.tls_version.clone(),
                cert_not_after: h
                    .cert_not_after_unix
                    .map(|t| rfc3339(UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))),
                reason: h.reason.clone(),
                warnings: h.warnings.clone(),
            })
            .collect(),
        warnings: report.warnings.clone(),
    }
}

/// Per MX host, the earliest expiry (Unix seconds) of the certificates its addresses
/// presented: the one that will fail first.
fn earliest_expiry(report: &DomainReport) -> BTreeMap<String, i64> {
    let mut found: BTreeMap<String, i64> = BTreeMap::new();
    for host in &report.hosts {
        if let Some(t) = host.cert_not_after_unix {
            found
                .entry(host.mx_host.clone())
                .and_modify(|e| *e = (*e).min(t))
                .or_insert(t);
        }
    }
    found
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn rfc3339(t: SystemTime) -> String {
    crate::datetime::format_rfc3339(t)
}

/// A delay in `[0, within)`, different from one process and start to the next (the clock's
/// nanoseconds and the process id): no need for a random number generator to keep relays
/// started together apart.
fn spread(within: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(nanos ^ std::process::id().rotate_left(16));
    let millis = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
    if millis == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(seed % millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_run_is_spread_within_its_bound() {
        for _ in 0..100 {
            assert!(spread(Duration::from_secs(1)) < Duration::from_secs(1));
        }
        assert_eq!(spread(Duration::ZERO), Duration::ZERO);
    }
}
