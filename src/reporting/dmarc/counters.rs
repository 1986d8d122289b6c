//! The DMARC aggregate report recorder (RFC 7489 section 7.2; D4, issue 17 item 4): the DMARC
//! evaluation of every inbound message whose author domain publishes a DMARC record, counted
//! per UTC day and author (RFC5322.From) domain in rows of mail-auth's report types
//! (`mail_auth::report::Record`), and kept on disk until the day's report is sent.
//!
//! [`DmarcCounters::record`] is called by the inbound session once it knows what it does with
//! the message; it only updates memory under a short lock. The changed days are written every
//! [`FLUSH_INTERVAL`] and at shutdown as `data_dir/dmarc-reports/YYYY-MM-DD.json`
//! ([`crate::reporting::DayFiles`]: atomic and durable). Memory and files are bounded: at most
//! [`MAX_DOMAINS_PER_DAY`] domains a day and [`MAX_ROWS`] distinct rows per domain and day;
//! messages past the row bound are counted (`overflow`), logged once a day, and said in the
//! report's `error` element.

use crate::auth::{AuthAction, AuthOutcome, AuthResult, DmarcPolicy, SpfIdentity};
use crate::reporting::days::{self, Counted, DayStore, DomainCounts};
use crate::reporting::{day_of, CountersError, SendState};
use mail_auth::report::{
    ActionDisposition, AuthResult as ReportAuthResults, DKIMAuthResult, DkimResult, DmarcResult,
    Identifier, PolicyEvaluated, PolicyOverride, PolicyOverrideReason, PolicyPublished, Record,
    Row, SPFAuthResult, SPFDomainScope, SpfResult,
};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::Path;
use std::time::SystemTime;

pub use crate::reporting::days::{FLUSH_INTERVAL, KEEP_DAYS};

/// Author domains counted per day at most; messages from further domains are not counted.
pub const MAX_DOMAINS_PER_DAY: usize = 50_000;

/// Distinct rows (source address, results, identifiers) per domain and day at most; further
/// messages with new combinations are counted in [`DomainDay::overflow`] only.
pub const MAX_ROWS: usize = 1_000;

/// A day file larger than this is not read (it cannot have been written by tlsgate).
const MAX_DAY_FILE: u64 = 256 << 20;

/// Everything counted for one author domain on one day.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DomainDay {
    /// The policy the domain published (`p`, `sp`, `adkim`, `aspf`, `fo`), as last seen that
    /// day. `pct` is not in mail-auth 0.13's record type (DMARCbis dropped it); the report
    /// reads it from the record when it is built.
    pub policy: PolicyPublished,
    /// One row per distinct combination, each with its message count.
    pub records: Vec<Record>,
    /// Messages not itemised because the domain-day already had [`MAX_ROWS`] rows.
    pub overflow: u64,
    /// The report's progress.
    pub report: SendState,
}

/// One UTC day: the content of one day file, by author domain.
pub type Day = days::Day<DomainDay>;

/// The disposition tlsgate applied (RFC 7489 7.2.1.1 `policy_evaluated/disposition`: what
/// the receiver did, not what the domain asked): accepted as it is → `none`, accepted with
/// the quarantine tag header → `quarantine`, refused with 550 → `reject`. A temporary refusal
/// (451) is no disposition yet: the sender retries and the retry is counted.
pub fn applied_disposition(action: &AuthAction) -> Option<ActionDisposition> {
    match action {
        AuthAction::Accept => Some(ActionDisposition::None),
        AuthAction::Tag { .. } => Some(ActionDisposition::Quarantine),
        AuthAction::Reject { .. } => Some(ActionDisposition::Reject),
        AuthAction::TempFail { .. } => None,
    }
}

/// The report row of one message (count 1): `source_ip`, `policy_evaluated` (disposition as
/// applied, DKIM and SPF alignment, and `local_policy` as the reason when tlsgate applied
/// less than the domain's policy), `identifiers` and `auth_results`; `None` when the author
/// domain published no DMARC record (nothing to report to) or the message was not disposed
/// of yet.
pub fn row_of(client_ip: IpAddr, outcome: &AuthOutcome) -> Option<(String, Record)> {
    let domain = outcome.dmarc.from_domain.clone()?;
    outcome.dmarc_record.as_ref()?;
    let disposition = applied_disposition(&outcome.action)?;
    let aligned = |yes: bool| {
        if yes {
            DmarcResult::Pass
        } else {
            DmarcResult::Fail
        }
    };
    let asked = match outcome.dmarc.policy {
        Some(DmarcPolicy::Reject) if outcome.dmarc.result == AuthResult::Fail => 2,
        Some(DmarcPolicy::Quarantine) if outcome.dmarc.result == AuthResult::Fail => 1,
        _ => 0,
    };
    let applied = match disposition {
        ActionDisposition::Reject => 2,
        ActionDisposition::Quarantine => 1,
        _ => 0,
    };
    // RFC 7489 7.2.1.1 (PolicyOverrideType): the receiver's local policy exempted the message.
    let reason = if applied < asked {
        vec![PolicyOverrideReason {
            type_: PolicyOverride::LocalPolicy,
            comment: None,
        }]
    } else {
        Vec::new()
    };
    let (scope, envelope_from) = match &outcome.spf.identity {
        SpfIdentity::MailFrom(address) => (
            SPFDomainScope::MailFrom,
            address
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default(),
        ),
        // RFC 7489 4.1: with a null reverse-path SPF checked the HELO identity.
        SpfIdentity::Helo(helo) => (SPFDomainScope::Helo, helo.to_ascii_lowercase()),
    };
    let dkim = outcome
        .dkim
        .iter()
        .filter_map(|d| {
            Some(DKIMAuthResult {
                domain: d.domain.clone()?,
                selector: d.selector.clone().unwrap_or_default(),
                result: dkim_result(d.result),
                human_result: None,
            })
        })
        .collect();
    let record = Record {
        row: Row {
            source_ip: Some(client_ip),
            count: 1,
            policy_evaluated: PolicyEvaluated {
                disposition,
                dkim: aligned(outcome.dmarc.dkim_aligned),
                spf: aligned(outcome.dmarc.spf_aligned),
                reason,
            },
        },
        identifiers: Identifier {
            envelope_to: None,
            envelope_from,
            header_from: domain.clone(),
        },
        auth_results: ReportAuthResults {
            dkim,
            spf: vec![SPFAuthResult {
                domain: outcome.spf.domain.to_ascii_lowercase(),
                scope,
                result: spf_result(outcome.spf.result),
                human_result: None,
            }],
        },
        extensions: Vec::new(),
    };
    Some((domain, record))
}

fn dkim_result(r: AuthResult) -> DkimResult {
    match r {
        AuthResult::Pass => DkimResult::Pass,
        AuthResult::Fail | AuthResult::SoftFail => DkimResult::Fail,
        AuthResult::Neutral => DkimResult::Neutral,
        AuthResult::None => DkimResult::None,
        AuthResult::TempError => DkimResult::TempError,
        AuthResult::PermError => DkimResult::PermError,
    }
}

fn spf_result(r: AuthResult) -> SpfResult {
    match r {
        AuthResult::Pass => SpfResult::Pass,
        AuthResult::Fail => SpfResult::Fail,
        AuthResult::SoftFail => SpfResult::SoftFail,
        AuthResult::Neutral => SpfResult::Neutral,
        AuthResult::None => SpfResult::None,
        AuthResult::TempError => SpfResult::TempError,
        AuthResult::PermError => SpfResult::PermError,
    }
}

/// Two rows that differ only in their count.
fn same_row(a: &Record, b: &Record) -> bool {
    a.row.source_ip == b.row.source_ip
        && a.row.policy_evaluated == b.row.policy_evaluated
        && a.identifiers == b.identifiers
        && a.auth_results == b.auth_results
}

impl DomainCounts for DomainDay {
    fn report(&self) -> &SendState {
        &self.report
    }

    fn report_mut(&mut self) -> &mut SendState {
        &mut self.report
    }
}

/// The recorder, with durable per-day counters ([`DayStore`]: `days`, `update_report`,
/// `prune`, `flush`); what it counts is [`DmarcCounters::record`]'s.
pub type DmarcCounters = DayStore<DomainDay>;

impl DmarcCounters {
    /// Opens (creates) `dir` and reads the day files in it; a file tlsgate did not write is
    /// skipped with a warning.
    pub fn open(dir: &Path) -> Result<DmarcCounters, CountersError> {
        DayStore::open_files(dir, "DMARC", MAX_DAY_FILE)
    }

    /// Counts one inbound message in today's report of its author domain ([`row_of`]); does
    /// nothing for a message without a DMARC record or not disposed of yet.
    pub fn record(&self, client_ip: IpAddr, outcome: &AuthOutcome) {
        let Some((domain, row)) = row_of(client_ip, outcome) else {
            return;
        };
        let policy = outcome
            .dmarc_record
            .as_ref()
            .map(|r| PolicyPublished::from_record(domain.clone(), r))
            .unwrap_or_default();
        self.record_on(day_of(SystemTime::now()), &domain, policy, row);
    }

    /// Counts `row` (count 1) for `domain` on `day`, under `policy`.
    pub fn record_on(&self, day: i64, domain: &str, policy: PolicyPublished, row: Record) {
        let counted = self.count(day, domain, MAX_DOMAINS_PER_DAY, |domain_day, once| {
            domain_day.policy = policy;
            let rows = domain_day.records.len();
            match domain_day.records.iter_mut().find(|r| same_row(r, &row)) {
                Some(existing) => existing.row.count = existing.row.count.saturating_add(1),
                None if rows < MAX_ROWS => domain_day.records.push(row),
                None => {
                    domain_day.overflow += 1;
                    if once.first() {
                        tracing::warn!(
                            domain,
                            limit = MAX_ROWS,
                            "DMARC reporting: too many distinct rows for a domain today; \
                             further messages are counted, not itemised"
                        );
                    }
                }
            }
        });
        if counted == (Counted::TooManyDomains { first: true }) {
            tracing::warn!(
                limit = MAX_DOMAINS_PER_DAY,
                "DMARC reporting: too many author domains today, further ones are not counted"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ip: &str, dkim: DmarcResult) -> Record {
        Record {
            row: Row {
                source_ip: Some(ip.parse().unwrap()),
                count: 1,
                policy_evaluated: PolicyEvaluated {
                    disposition: ActionDisposition::None,
                    dkim,
                    spf: DmarcResult::Pass,
                    reason: Vec::new(),
                },
            },
            identifiers: Identifier {
                envelope_to: None,
                envelope_from: "a.test".into(),
                header_from: "a.test".into(),
            },
            ..Record::default()
        }
    }

    /// RFC 7489 7.2.1.1: one row per distinct source and result, with its message count.
    #[test]
    fn rows_are_grouped_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let counters = DmarcCounters::open(dir.path()).unwrap();
        let policy = PolicyPublished {
            domain: "a.test".into(),
            ..PolicyPublished::default()
        };
        for _ in 0..3 {
            counters.record_on(
                5,
                "a.test",
                policy.clone(),
                row("192.0.2.1", DmarcResult::Pass),
            );
        }
        for _ in 0..2 {
            counters.record_on(
                5,
                "a.test",
                policy.clone(),
                row("192.0.2.2", DmarcResult::Fail),
            );
        }
        counters.flush().unwrap();
        drop(counters);
        let reopened = DmarcCounters::open(dir.path()).unwrap();
        let days = reopened.days();
        let a = &days[&5].domains["a.test"];
        let counts: Vec<u32> = a.records.iter().map(|r| r.row.count).collect();
        assert_eq!(counts, [3, 2]);
        assert_eq!(a.overflow, 0);
    }

    /// Memory is bounded: rows past [`MAX_ROWS`] are counted, not kept.
    #[test]
    fn rows_past_the_bound_are_counted_as_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let counters = DmarcCounters::open(dir.path()).unwrap();
        for i in 0..(MAX_ROWS + 5) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i as u32).to_string();
            counters.record_on(
                5,
                "a.test",
                PolicyPublished::default(),
                row(&ip, DmarcResult::Pass),
            );
        }
        let days = counters.days();
        assert_eq!(days[&5].domains["a.test"].records.len(), MAX_ROWS);
        assert_eq!(days[&5].domains["a.test"].overflow, 5);
    }
}
