//! What `tlsgate domains status` shows (issue 15 items 3 and 5), served by the admin API's
//! `GET /domains/status`: the list in force and where it comes from (file, URL, the last
//! fetch), and the background partner check's latest verdicts.

use super::list_fetch::{FetchStatus, ListFetcher};
use super::partners::{PartnerMonitor, PartnerStatus, RunSummary};
use crate::compliance::Verdict;
use crate::policy::domain_list::DomainListHandle;
use serde::{Deserialize, Serialize};

/// The answer of `GET /domains/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainsStatus {
    /// `domain_list.path`; `None`: no list configured.
    pub path: Option<String>,
    /// Domains on the list in force.
    pub domains: usize,
    /// `domain_list.url`; `None`: not fetched.
    pub url: Option<String>,
    /// `domain_list.fetch_interval` in words, when `url` is set.
    pub fetch_interval: Option<String>,
    /// The last fetch of `url`.
    pub last_fetch: Option<FetchStatus>,
    /// `domain_list.check_schedule` in words; `None`: partner monitoring is off.
    pub check_schedule: Option<String>,
    /// The last background run that ended.
    pub last_run: Option<RunSummary>,
    /// The latest verdict per listed domain, in domain order.
    #[serde(default)]
    pub partners: Vec<PartnerStatus>,
}

impl DomainsStatus {
    /// The status now, from the list in force and the monitor and fetcher that run (each
    /// `None` when off).
    pub fn gather(
        list: &DomainListHandle,
        monitor: Option<&PartnerMonitor>,
        fetcher: Option<&ListFetcher>,
    ) -> DomainsStatus {
        let words = |d| humantime::format_duration(d).to_string();
        DomainsStatus {
            path: list.path().map(|p| p.display().to_string()),
            domains: list.current().len(),
            url: fetcher.map(|f| f.url().to_string()),
            fetch_interval: fetcher.map(|f| words(f.every())),
            last_fetch: fetcher.and_then(ListFetcher::status),
            check_schedule: monitor.map(|m| words(m.every())),
            last_run: monitor.and_then(PartnerMonitor::last_run),
            partners: monitor.map(PartnerMonitor::partners).unwrap_or_default(),
        }
    }
}

/// The status as text: the list, the fetch, the last run, then one line per domain (failures
/// first) and one per MX address.
/// A verdict as the table shows it: failures in capitals, so that they stand out.
fn shown(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Fail => "FAIL",
        other => other.as_str(),
    }
}

pub fn render(status: &DomainsStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "domain list: {} ({} domains)",
        status.path.as_deref().unwrap_or("none configured"),
        status.domains
    );
    match (&status.url, &status.last_fetch) {
        (None, _) => {
            let _ = writeln!(out, "fetched from: - (domain_list.url not set)");
        }
        (Some(url), fetch) => {
            let _ = writeln!(
                out,
                "fetched from: {url} every {}",
                status.fetch_interval.as_deref().unwrap_or("-")
            );
            let _ = match fetch {
                None => writeln!(out, "last fetch:   not yet"),
                Some(f) => writeln!(
                    out,
                    "last fetch:   {} {}: {} (last success: {})",
                    f.at,
                    f.result,
                    f.detail,
                    f.last_ok_at.as_deref().unwrap_or("none since start")
                ),
            };
        }
    }
    let Some(every) = &status.check_schedule else {
        let _ = writeln!(
            out,
            "partner check: off (domain_list.check_schedule = \"6h\" turns it on)"
        );
        return out;
    };
    let _ = match &status.last_run {
        None => writeln!(out, "partner check: every {every}; no run has ended yet"),
        Some(run) => writeln!(
            out,
            "partner check: every {every}; last run {} to {}: {} domains, {} pass, {} fail",
            run.started_at, run.finished_at, run.domains, run.passed, run.failed
        ),
    };
    if status.partners.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "\n{:<28} {:<7} {:<22} {:<22} REASON",
        "DOMAIN", "VERDICT", "SINCE", "CHECKED"
    );
    // The verdicts `domains check` gives (T7): failures first, then warnings, then passes.
    let verdict = Verdict::of;
    let mut partners: Vec<&PartnerStatus> = status.partners.iter().collect();
    partners.sort_by_key(|p| (verdict(p.pass, &p.warnings), p.domain.clone()));
    for p in partners {
        let reason = match (&p.reason, p.warnings.is_empty()) {
            (Some(reason), _) => reason.clone(),
            (None, false) => format!("warning: {}", p.warnings.join("; ")),
            (None, true) => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<28} {:<7} {:<22} {:<22} {reason}",
            p.domain,
            shown(verdict(p.pass, &p.warnings)),
            p.since,
            p.checked_at,
        );
        for h in &p.hosts {
            let tls = match (&h.tls_version, &h.cert_not_after) {
                (None, _) => "no TLS".to_string(),
                (Some(version), None) => format!("{version}, no certificate"),
                (Some(version), Some(until)) => format!("{version}, certificate until {until}"),
            };
            let _ = writeln!(
                out,
                "  {:<7} {} {} ({tls}): {}",
                shown(verdict(h.pass, &h.warnings)),
                h.mx_host,
                h.address,
                h.reason
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::partners::PartnerHost;

    fn partner(domain: &str, pass: bool) -> PartnerStatus {
        PartnerStatus {
            domain: domain.into(),
            pass,
            checked_at: "2026-11-30T12:00:00Z".into(),
            since: "2026-11-30T06:00:00Z".into(),
            reason: (!pass).then(|| "no MX host meets the verify policy".into()),
            hosts: vec![PartnerHost {
                mx_host: format!("mx.{domain}"),
                address: "192.0.2.1:25".into(),
                pass,
                tls_version: Some("TLSv1.3".into()),
                cert_not_after: Some("2027-01-01T00:00:00Z".into()),
                reason: if pass {
                    "certificate valid for policy".into()
                } else {
                    "certificate expired".into()
                },
                warnings: Vec::new(),
            }],
            warnings: Vec::new(),
        }
    }

    /// Issue 15 item 3: failures first, each with its reason and its hosts' certificates.
    #[test]
    fn the_table_shows_failures_first_with_their_reasons() {
        let status = DomainsStatus {
            path: Some("/etc/tlsgate/tvungen-tls.csv".into()),
            domains: 2,
            url: None,
            fetch_interval: None,
            last_fetch: None,
            check_schedule: Some("6h".into()),
            last_run: None,
            partners: vec![partner("a.no", true), partner("b.no", false)],
        };
        let text = render(&status);
        let b = text.find("\nb.no ").expect("b.no line");
        let a = text.find("\na.no ").expect("a.no line");
        assert!(b < a, "failures first:\n{text}");
        assert!(text.contains("FAIL"), "{text}");
        assert!(text.contains("certificate expired"), "{text}");
        assert!(text.contains("2027-01-01T00:00:00Z"), "{text}");
        assert!(text.contains("(domain_list.url not set)"), "{text}");
    }

    /// A partner whose certificate expires within 21 days shows `warn` with the warning, as
    /// `domains check` says (review finding: the status said `pass`), between failures and
    /// passes; a host without TLS says so once, not "certificate expires -".
    #[test]
    fn a_domain_passing_with_warnings_shows_warn() {
        let mut soon = partner("soon.no", true);
        let warning = "certificate expires in 10 days (2026-12-10)".to_string();
        soon.hosts[0].warnings = vec![warning.clone()];
        soon.warnings = vec![format!("mx.soon.no: {warning}")];
        let mut plain = partner("plain.no", false);
        plain.hosts[0].tls_version = None;
        plain.hosts[0].cert_not_after = None;
        let status = DomainsStatus {
            path: None,
            domains: 3,
            url: None,
            fetch_interval: None,
            last_fetch: None,
            check_schedule: Some("6h".into()),
            last_run: None,
            partners: vec![partner("a.no", true), soon, plain],
        };
        let text = render(&status);
        let line = |domain: &str| {
            text.lines()
                .find(|l| l.starts_with(domain))
                .unwrap_or_else(|| panic!("{domain} line in\n{text}"))
                .to_string()
        };
        let soon_line = line("soon.no ");
        assert!(soon_line.contains(" warn "), "{text}");
        assert!(
            soon_line.contains("warning: mx.soon.no: certificate expires in 10 days"),
            "{text}"
        );
        assert!(line("a.no ").contains(" pass "), "{text}");
        let order: Vec<usize> = ["\nplain.no ", "\nsoon.no ", "\na.no "]
            .iter()
            .map(|d| text.find(d).expect("listed"))
            .collect();
        assert!(
            order[0] < order[1] && order[1] < order[2],
            "fail, warn, pass:\n{text}"
        );
        assert!(text.contains("  warn    mx.soon.no"), "{text}");
        assert!(text.contains("(no TLS)"), "{text}");
        assert!(!text.contains("expires -"), "{text}");
    }

    /// The admin API's answer without monitor and fetcher (`AdminState::new`'s stand-in)
    /// reads as a status with both off.
    #[test]
    fn the_answer_without_monitoring_reads() {
        let status: DomainsStatus =
            serde_json::from_str(r#"{"path":"/l.csv","domains":3,"partners":[]}"#).expect("parses");
        assert_eq!(status.domains, 3);
        assert!(render(&status).contains("partner check: off"));
    }
}
