//! The TLS-RPT recorder (RFC 8460 section 4.4; D3): counts delivery sessions per UTC day,
//! policy domain and policy, and keeps them on disk until the day's report is sent.
//!
//! [`TlsCounters::record`] is called on the delivery path: it only updates the in-memory
//! counters under a short lock. A flusher writes the days that changed every
//! [`FLUSH_INTERVAL`] (and at shutdown) as one JSON file per day under
//! `data_dir/tls-reports/YYYY-MM-DD.json`, atomically: temporary file, `fsync`, rename, `fsync`
//! of the directory. A SIGKILL therefore loses at most the sessions of the last flush
//! interval; a clean stop loses none. The sending job ([`super::send`]) marks per policy domain
//! which `rua` targets got the day's report; a day whose domains are all finished is removed,
//! and so is any day older than [`KEEP_DAYS`].

use crate::reporting::days::{self, Counted, DayStore, DomainCounts};
pub use crate::reporting::{day_name, day_of, parse_day_name, CountersError, SendState};
use crate::tls_report::{ReportPolicy, ResultType, SessionResult, TlsReportSink};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

pub use crate::reporting::days::{FLUSH_INTERVAL, KEEP_DAYS};

/// Policy domains counted per day at most; sessions to further domains are not counted (a
/// bound on memory and on the day file whatever the traffic).
pub const MAX_DOMAINS_PER_DAY: usize = 50_000;

/// Distinct failure rows per policy at most (RFC 8460 4.4 groups by result type, addresses,
/// MX host and reason); further distinct failures are counted in the summary only.
pub const MAX_FAILURE_ROWS: usize = 1_000;

/// A day file larger than this is not read (it cannot have been written by tlsgate).
const MAX_DAY_FILE: u64 = 64 << 20;

/// `failure-reason-code` texts are cut to this many characters.
const MAX_DETAIL: usize = 200;

/// One group of failed sessions (RFC 8460 4.4 `failure-details`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureCount {
    /// `result-type`.
    pub result_type: ResultType,
    /// `sending-mta-ip`.
    pub sending_mta_ip: Option<IpAddr>,
    /// `receiving-mx-hostname` (empty: none, e.g. a policy fetch failure).
    pub receiving_mx_hostname: String,
    /// `receiving-ip`.
    pub receiving_ip: Option<IpAddr>,
    /// `failure-reason-code`.
    pub detail: Option<String>,
    /// `failed-session-count`.
    pub count: u64,
}

/// The sessions of one policy on one day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyCounts {
    /// The policy (type, domain, strings, MX patterns).
    pub policy: ReportPolicy,
    /// `total-successful-session-count`.
    pub successes: u64,
    /// `total-failure-session-count` (also the failures beyond [`MAX_FAILURE_ROWS`]).
    pub failures: u64,
    /// The failures, grouped.
    pub failure_details: Vec<FailureCount>,
}

/// Everything counted for one policy domain on one day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainDay {
    /// One entry per policy the domain's sessions ran under.
    pub policies: Vec<PolicyCounts>,
    /// The report's progress.
    pub report: SendState,
}

/// One UTC day: the content of one day file, by policy domain.
pub type Day = days::Day<DomainDay>;

/// The recorder: a [`TlsReportSink`] with durable per-day counters ([`DayStore`]: `days`,
/// `update_report`, `prune`, `flush`).
pub type TlsCounters = DayStore<DomainDay>;

impl TlsCounters {
    /// Opens (creates) `dir` and reads the day files in it. A file that is not a day file
    /// tlsgate wrote is skipped with a warning (kept for the administrator to look at).
    pub fn open(dir: &Path) -> Result<TlsCounters, CountersError> {
        DayStore::open_files(dir, "TLS", MAX_DAY_FILE)
    }

    /// Counts `session` in the report of `day` (the sink counts in the current UTC day).
    pub fn record_on(&self, day: i64, session: SessionResult) {
        let domain = session.policy.policy_domain.clone();
        let counted = self.count(day, &domain, MAX_DOMAINS_PER_DAY, |domain_day, _| {
            let index = match domain_day
                .policies
                .iter()
                .position(|p| p.policy == session.policy)
            {
                Some(i) => i,
                None => {
                    domain_day.policies.push(PolicyCounts {
                        policy: session.policy.clone(),
                        successes: 0,
                        failures: 0,
                        failure_details: Vec::new(),
                    });
                    domain_day.policies.len() - 1
                }
            };
            let counts = &mut domain_day.policies[index];
            match session.result {
                Ok(()) => counts.successes += 1,
                Err(result_type) => {
                    counts.failures += 1;
                    let detail = session
                        .detail
                        .map(|d| d.chars().take(MAX_DETAIL).collect::<String>());
                    let row = FailureCount {
                        result_type,
                        sending_mta_ip: session.sending_mta_ip,
                        receiving_mx_hostname: session.receiving_mx_hostname,
                        receiving_ip: session.receiving_ip,
                        detail,
                        count: 1,
                    };
                    let same = |f: &FailureCount| {
                        f.result_type == row.result_type
                            && f.sending_mta_ip == row.sending_mta_ip
                            && f.receiving_mx_hostname == row.receiving_mx_hostname
                            && f.receiving_ip == row.receiving_ip
                            && f.detail == row.detail
                    };
                    let rows = counts.failure_details.len();
                    match counts.failure_details.iter_mut().find(|f| same(f)) {
                        Some(existing) => existing.count += 1,
                        None if rows < MAX_FAILURE_ROWS => counts.failure_details.push(row),
                        None => {}
                    }
                }
            }
        });
        if counted == (Counted::TooManyDomains { first: true }) {
            tracing::warn!(
                limit = MAX_DOMAINS_PER_DAY,
                "TLS reporting: too many policy domains today, further ones are not counted"
            );
        }
    }
}

impl DomainCounts for DomainDay {
    fn report(&self) -> &SendState {
        &self.report
    }

    fn report_mut(&mut self) -> &mut SendState {
        &mut self.report
    }
}

impl TlsReportSink for TlsCounters {
    fn record(&self, session: SessionResult) {
        self.record_on(day_of(SystemTime::now()), session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_report::PolicyType;

    fn policy(domain: &str) -> ReportPolicy {
        ReportPolicy {
            policy_type: PolicyType::NoPolicyFound,
            policy_domain: domain.into(),
            policy_strings: Vec::new(),
            mx_host: Vec::new(),
        }
    }

    fn session(domain: &str, result: Result<(), ResultType>, mx: &str) -> SessionResult {
        SessionResult {
            policy: policy(domain),
            receiving_mx_hostname: mx.into(),
            receiving_ip: Some("192.0.2.1".parse().unwrap()),
            sending_mta_ip: Some("198.51.100.7".parse().unwrap()),
            result,
            detail: None,
        }
    }

    /// RFC 8460 4.4: a summary per policy, and failures grouped by result type, addresses and
    /// MX host, each group with its count.
    #[test]
    fn sessions_are_grouped_per_day_domain_policy_and_failure() {
        let dir = tempfile::tempdir().unwrap();
        let counters = TlsCounters::open(dir.path()).unwrap();
        let mismatch = Err(ResultType::CertificateHostMismatch);
        counters.record_on(10, session("a.test", Ok(()), "mx.a.test"));
        counters.record_on(10, session("a.test", Ok(()), "mx.a.test"));
        counters.record_on(10, session("a.test", mismatch, "mx.a.test"));
        counters.record_on(10, session("a.test", mismatch, "mx.a.test"));
        counters.record_on(10, session("a.test", mismatch, "mx2.a.test"));
        counters.record_on(
            10,
            session("a.test", Err(ResultType::StarttlsNotSupported), "mx.a.test"),
        );
        counters.record_on(11, session("a.test", Ok(()), "mx.a.test"));
        counters.record_on(10, session("b.test", Ok(()), "mx.b.test"));

        let days = counters.days();
        assert_eq!(days.len(), 2);
        let a = &days[&10].domains["a.test"];
        assert_eq!(a.policies.len(), 1);
        let p = &a.policies[0];
        assert_eq!((p.successes, p.failures), (2, 4));
        let count = |rt: ResultType, mx: &str| {
            p.failure_details
                .iter()
                .find(|f| f.result_type == rt && f.receiving_mx_hostname == mx)
                .map(|f| f.count)
        };
        assert_eq!(
            count(ResultType::CertificateHostMismatch, "mx.a.test"),
            Some(2)
        );
        assert_eq!(
            count(ResultType::CertificateHostMismatch, "mx2.a.test"),
            Some(1)
        );
        assert_eq!(
            count(ResultType::StarttlsNotSupported, "mx.a.test"),
            Some(1)
        );
        assert_eq!(p.failure_details.len(), 3);
        assert_eq!(days[&10].domains["b.test"].policies[0].successes, 1);
        assert_eq!(days[&11].domains["a.test"].policies[0].successes, 1);

        // A second policy of the same domain (DANE records changed) is its own entry.
        let mut dane = session("a.test", Ok(()), "mx.a.test");
        dane.policy.policy_type = PolicyType::Tlsa;
        dane.policy.policy_strings = vec!["3 1 1 AA".into()];
        counters.record_on(10, dane);
        assert_eq!(counters.days()[&10].domains["a.test"].policies.len(), 2);
    }

    #[test]
    fn counters_survive_a_reopen_and_pruned_days_go() {
        let dir = tempfile::tempdir().unwrap();
        let counters = TlsCounters::open(dir.path()).unwrap();
        counters.record_on(20, session("a.test", Ok(()), "mx.a.test"));
        counters.record_on(
            20,
            session("a.test", Err(ResultType::CertificateExpired), "m"),
        );
        counters.record_on(21, session("a.test", Ok(()), "mx.a.test"));
        counters.update_report(20, "a.test", |r| r.sent_to.push("mailto:x@y.test".into()));
        counters.flush().unwrap();
        assert!(dir.path().join("1970-01-21.json").exists());
        drop(counters);

        let reopened = TlsCounters::open(dir.path()).unwrap();
        let days = reopened.days();
        let p = &days[&20].domains["a.test"].policies[0];
        assert_eq!((p.successes, p.failures), (1, 1));
        assert_eq!(
            days[&20].domains["a.test"].report.sent_to,
            ["mailto:x@y.test"]
        );

        // Day 20 finished: pruned once it is over; day 21 is today and stays.
        reopened.update_report(20, "a.test", |r| r.finished = true);
        reopened.prune(21);
        reopened.flush().unwrap();
        assert!(!dir.path().join("1970-01-21.json").exists());
        assert!(dir.path().join("1970-01-22.json").exists());
        // Unfinished days older than KEEP_DAYS go too.
        reopened.prune(21 + KEEP_DAYS + 1);
        reopened.flush().unwrap();
        assert!(!dir.path().join("1970-01-22.json").exists());
    }

    #[test]
    fn a_foreign_file_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("2024-05-01.json"), b"not json").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let counters = TlsCounters::open(dir.path()).unwrap();
        assert!(counters.days().is_empty());
    }
}
