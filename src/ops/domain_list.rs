//! The tvungen TLS domain list in a running relay (T10): announced at start (with the age
//! warning), reloaded on SIGHUP and through the admin API, reloaded by the watcher when the
//! file changes, and warned about daily when it is older than `domain_list.max_age_days`.
//!
//! Every reload is logged, audited (S1) and counted; a refused file leaves the old list in
//! force ([`DomainListHandle::reload`]). Parsing and the list itself are pure code in
//! [`crate::policy::domain_list`]; this module is the list's life around it.

use crate::audit::{AuditEvent, AuditLog};
use crate::config::DomainListSection;
use crate::domain::Domain;
use crate::metrics::Metrics;
use crate::policy::domain_list::{DomainEntry, DomainListHandle, ListError, Reloaded};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// The list in force and what its reloads report to: log, metrics, audit log.
pub struct DomainListService {
    /// Shared with sessions and delivery, which read the list in force from it.
    handle: Arc<DomainListHandle>,
    /// Check interval and age limits (read at start; a changed section needs a restart).
    settings: DomainListSection,
    /// `tlsgate_domain_list_*` gauges and the reload failure counter.
    metrics: Arc<Metrics>,
    /// Reloads are S1 evidence; `None` only in tests.
    audit: Option<Arc<AuditLog>>,
}

/// Why a reload happened (the log says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// SIGHUP or the admin API.
    Request,
    /// The watcher saw the file's modification time change.
    FileChanged,
}

impl DomainListService {
    /// The service for the list `handle` holds, with the `[domain_list]` settings read at start.
    pub fn new(
        handle: Arc<DomainListHandle>,
        settings: DomainListSection,
        metrics: Arc<Metrics>,
        audit: Option<Arc<AuditLog>>,
    ) -> DomainListService {
        DomainListService {
            handle,
            settings,
            metrics,
            audit,
        }
    }

    /// The list in force.
    pub fn handle(&self) -> &Arc<DomainListHandle> {
        &self.handle
    }

    /// At start: logs which list is in force, warns when it is old, sets the gauges.
    pub fn announce(&self) {
        match self.handle.path() {
            Some(path) => tracing::info!(
                path = %path.display(),
                domains = self.handle.current().len(),
                sha256 = self.handle.sha256().as_deref().unwrap_or("-"),
                "tvungen TLS domain list loaded"
            ),
            None => tracing::warn!(
                "no domain_list.path configured: no domain gets mandatory TLS from the list"
            ),
        }
        self.warn_if_old();
        self.update_gauges();
    }

    /// Reloads the file now (SIGHUP, admin API). On error the old list stays in force.
    pub fn reload(&self) -> Result<Reloaded, ListError> {
        let result = self.handle.reload();
        self.record(result, Trigger::Request)
    }

    /// Reloads the list whenever its file changes (T10: "reloaded on change without restart")
    /// and repeats the age warning daily, until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        if self.handle.path().is_none() {
            return;
        }
        let mut last_age_warning = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.check_interval) => {}
                _ = shutdown.cancelled() => return,
            }
            // Reading and parsing the file is blocking work: keep it off the async threads.
            let reader = self.handle.clone();
            let result = tokio::task::spawn_blocking(move || reader.reload_if_changed())
                .await
                .unwrap_or_else(|_| {
                    Ok(Reloaded::Unchanged {
                        domains: self.handle.current().len(),
                        sha256: self.handle.sha256(),
                    })
                });
            let _ = self.record(result, Trigger::FileChanged);
            if last_age_warning.elapsed() >= Duration::from_secs(86_400) {
                last_age_warning = tokio::time::Instant::now();
                self.warn_if_old();
            }
        }
    }

    /// Logs, audits and counts one reload's result, and updates the gauges. A replaced list
    /// is logged and audited with the SHA-256 of its file and the domains added and removed
    /// (S1: which list was in force when, and what changed); the log line names at most
    /// [`LOGGED_NAMES`] of each, the audit entry all of them.
    fn record(
        &self,
        result: Result<Reloaded, ListError>,
        trigger: Trigger,
    ) -> Result<Reloaded, ListError> {
        match &result {
            Ok(Reloaded::Replaced {
                old,
                new,
                sha256,
                added,
                removed,
            }) => {
                let shown_added = capped_names(added);
                let shown_removed = capped_names(removed);
                match trigger {
                    Trigger::Request => tracing::info!(
                        old,
                        new,
                        sha256 = %sha256,
                        added = %shown_added,
                        removed = %shown_removed,
                        "tvungen TLS domain list reloaded"
                    ),
                    Trigger::FileChanged => tracing::info!(
                        old,
                        new,
                        sha256 = %sha256,
                        added = %shown_added,
                        removed = %shown_removed,
                        "tvungen TLS domain list changed on disk, reloaded"
                    ),
                }
                crate::audit::submit(
                    &self.audit,
                    AuditEvent::DomainListReload {
                        old: *old,
                        new: *new,
                        ok: true,
                        error: None,
                        sha256: Some(sha256.clone()),
                        added: added.iter().map(|d| d.as_str().to_string()).collect(),
                        removed: removed.iter().map(|d| d.as_str().to_string()).collect(),
                    },
                );
            }
            Ok(Reloaded::Unchanged { sha256, .. }) => {
                if trigger == Trigger::Request {
                    tracing::info!(
                        sha256 = sha256.as_deref().unwrap_or("-"),
                        "tvungen TLS domain list unchanged"
                    );
                }
            }
            Err(e) => {
                self.metrics.domain_list_reload_failures.inc();
                match trigger {
                    Trigger::Request => tracing::error!(error = %e,
                        "domain list reload refused, the old list stays in force"),
                    Trigger::FileChanged => tracing::error!(error = %e,
                        "changed domain list refused, the old list stays in force"),
                }
                let size = self.handle.current().len();
                crate::audit::submit(
                    &self.audit,
                    AuditEvent::DomainListReload {
                        old: size,
                        new: size,
                        ok: false,
                        error: Some(e.to_string()),
                        sha256: None,
                        added: Vec::new(),
                        removed: Vec::new(),
                    },
                );
            }
        }
        self.update_gauges();
        result
    }

    /// T10: the list must be updated at least quarterly.
    fn warn_if_old(&self) {
        let max = i64::from(self.settings.max_age_days);
        if let Some(age) = self.age_days() {
            if age > max {
                tracing::warn!(age_days = age, max_age_days = max,
                    "the tvungen TLS domain list is older than domain_list.max_age_days: fetch the current list from bits.no/tls (T10)");
            }
        }
    }

    fn age_days(&self) -> Option<i64> {
        self.handle
            .age_days(self.settings.age_from, SystemTime::now())
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        m.domain_list_domains
            .set(self.handle.current().len() as i64);
        m.domain_list_max_age_seconds
            .set(i64::from(self.settings.max_age_days) * 86_400);
        if let Some(age) = self
            .handle
            .age_seconds(self.settings.age_from, SystemTime::now())
        {
            m.domain_list_age_seconds.set(age);
        }
    }
}

/// How many added or removed domains one log line names; the rest are counted. A new list can
/// differ in hundreds of domains, and one log line should stay readable (the audit entry has
/// them all).
pub const LOGGED_NAMES: usize = 20;

/// `a.no, b.no, … and 5 more` (at most [`LOGGED_NAMES`] names), or `-` when there are none.
pub fn capped_names(domains: &[Domain]) -> String {
    if domains.is_empty() {
        return "-".into();
    }
    let shown: Vec<&str> = domains
        .iter()
        .take(LOGGED_NAMES)
        .map(|d| d.as_str())
        .collect();
    let more = domains.len().saturating_sub(LOGGED_NAMES);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// `tlsgate domains list` as text: `header` with the count (when given), a column header,
/// one row per entry, the count. Columns are as wide as their longest value (in characters,
/// so that `Bærum Bølgeskvulp AS` lines up too).
pub fn render_entries(header: Option<&str>, entries: &[DomainEntry]) -> String {
    use std::fmt::Write;
    let count = crate::text::counted(u64::try_from(entries.len()).unwrap_or(u64::MAX), "domain");
    let width = |title: &str, value: fn(&DomainEntry) -> &str| {
        entries
            .iter()
            .map(|e| value(e).chars().count())
            .chain([title.chars().count()])
            .max()
            .unwrap_or(0)
    };
    let domain_w = width("domain", |e| &e.domain);
    let company_w = width("company", |e| &e.company);
    let org_w = width("org number", |e| &e.org_number);
    let mut out = String::new();
    if let Some(header) = header {
        let _ = writeln!(out, "{header} ({count}):");
    }
    let _ = writeln!(
        out,
        "{:<domain_w$}  {:<company_w$}  {:<org_w$}  joined",
        "domain", "company", "org number"
    );
    for e in entries {
        let _ = writeln!(
            out,
            "{:<domain_w$}  {:<company_w$}  {:<org_w$}  {}",
            e.domain,
            e.company,
            e.org_number,
            e.joined.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out, "{count}");
    out
}

#[cfg(test)]
mod entry_tests {
    use super::*;

    fn entry(domain: &str, company: &str) -> DomainEntry {
        DomainEntry {
            domain: domain.to_string(),
            company: company.to_string(),
            org_number: "987654321".to_string(),
            joined: Some("2026-01-31".to_string()),
            joined_days_since_epoch: Some(20_484),
            supports_5_2_4: None,
        }
    }

    #[test]
    fn columns_are_as_wide_as_their_longest_value() {
        let long = "Bærum Kommunale Eiendomsforvaltning og Bølgeskvulp AS";
        let text = render_entries(
            Some("/etc/tlsgate/domains.csv"),
            &[entry("a.no", "Kort AS"), entry("b.no", long)],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "/etc/tlsgate/domains.csv (2 domains):");
        assert_eq!(lines.last(), Some(&"2 domains"));
        // Every row's org number and date start in the same column as the header's.
        let column = |line: &str, at: &str| line.find(at).map(|i| line[..i].chars().count());
        let org = column(lines[1], "org number");
        assert_eq!(column(lines[2], "987654321"), org, "{text}");
        assert_eq!(column(lines[3], "987654321"), org, "{text}");
        assert!(
            lines[3].contains(long) && lines[3].ends_with("2026-01-31"),
            "{text}"
        );
        // Without a source: no header line.
        assert!(render_entries(None, &[]).starts_with("domain"));
    }
}
