//! The aggregate report (RFC 8460 section 4): its JSON, gzip, and the mail that carries it
//! (section 5.3).
//!
//! The JSON is written by tlsgate's own serde types rather than mail-auth's `TlsReport`: that
//! type serialises absent optional fields as `null` (`"sending-mta-ip": null`,
//! `"contact-info": null`), which the schema of RFC 8460 Appendix B does not allow (those
//! fields are strings when present). The mail around it is mail-auth's
//! `TlsReport::write_rfc5322_from_bytes`, which writes section 5.3's format:
//! `multipart/report; report-type="tlsrpt"`, a `text/plain` part, the `application/tlsrpt+gzip`
//! attachment named `<submitter>!<policy-domain>!<begin>!<end>.json.gz`, the subject
//! `Report Domain: … Submitter: … Report-ID: <…>` and the `TLS-Report-Domain` and
//! `TLS-Report-Submitter` header fields.

use super::counters::{DomainDay, PolicyCounts};
use crate::tls_report::{PolicyType, ResultType};
use serde::Serialize;
use std::io::Write;
use std::net::IpAddr;

/// RFC 8460 4.4, the whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `organization-name`.
    #[serde(rename = "organization-name")]
    pub organization_name: String,
    /// `date-range`.
    #[serde(rename = "date-range")]
    pub date_range: DateRange,
    /// `contact-info`.
    #[serde(rename = "contact-info")]
    pub contact_info: String,
    /// `report-id`.
    #[serde(rename = "report-id")]
    pub report_id: String,
    /// `policies`.
    pub policies: Vec<PolicyReport>,
}

/// `date-range`: RFC 3339 UTC date-times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DateRange {
    /// `start-datetime`.
    #[serde(rename = "start-datetime")]
    pub start: String,
    /// `end-datetime`.
    #[serde(rename = "end-datetime")]
    pub end: String,
}

/// One element of `policies`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyReport {
    /// `policy`.
    pub policy: PolicyDetails,
    /// `summary`.
    pub summary: Summary,
    /// `failure-details` (left out when empty).
    #[serde(rename = "failure-details", skip_serializing_if = "Vec::is_empty")]
    pub failure_details: Vec<FailureDetail>,
}

/// `policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyDetails {
    /// `policy-type`.
    #[serde(rename = "policy-type")]
    pub policy_type: PolicyType,
    /// `policy-string` (left out for `no-policy-found`).
    #[serde(rename = "policy-string", skip_serializing_if = "Vec::is_empty")]
    pub policy_string: Vec<String>,
    /// `policy-domain`.
    #[serde(rename = "policy-domain")]
    pub policy_domain: String,
    /// `mx-host` (MTA-STS only).
    #[serde(rename = "mx-host", skip_serializing_if = "Vec::is_empty")]
    pub mx_host: Vec<String>,
}

/// `summary`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// `total-successful-session-count`.
    #[serde(rename = "total-successful-session-count")]
    pub successes: u64,
    /// `total-failure-session-count`.
    #[serde(rename = "total-failure-session-count")]
    pub failures: u64,
}

/// One element of `failure-details`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureDetail {
    /// `result-type`.
    #[serde(rename = "result-type")]
    pub result_type: ResultType,
    /// `sending-mta-ip`.
    #[serde(rename = "sending-mta-ip", skip_serializing_if = "Option::is_none")]
    pub sending_mta_ip: Option<IpAddr>,
    /// `receiving-mx-hostname`.
    #[serde(
        rename = "receiving-mx-hostname",
        skip_serializing_if = "Option::is_none"
    )]
    pub receiving_mx_hostname: Option<String>,
    /// `receiving-ip`.
    #[serde(rename = "receiving-ip", skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<IpAddr>,
    /// `failed-session-count`.
    #[serde(rename = "failed-session-count")]
    pub failed_session_count: u64,
    /// `failure-reason-code`.
    #[serde(
        rename = "failure-reason-code",
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_reason_code: Option<String>,
}

/// Who sends the report: `[tls_reporting]`.
#[derive(Debug, Clone, Copy)]
pub struct Reporter<'a> {
    /// `organization-name`.
    pub organization_name: &'a str,
    /// `contact-info`.
    pub contact_info: &'a str,
    /// The submitter domain (`TLS-Report-Submitter`, the filename's first part).
    pub submitter: &'a str,
}

/// The report of `domain` over `[start, end]` (Unix seconds, `end` inclusive) from its
/// counters.
pub fn build(
    reporter: Reporter<'_>,
    domain: &str,
    counts: &DomainDay,
    (start, end): (i64, i64),
) -> Report {
    Report {
        organization_name: reporter.organization_name.to_string(),
        date_range: DateRange {
            start: rfc3339(start),
            end: rfc3339(end),
        },
        contact_info: reporter.contact_info.to_string(),
        // Unique per domain and range: a partial report of the running day (`--include-today`)
        // and the day's full report get different ids.
        report_id: format!("{start}.{end}.{domain}@{}", reporter.submitter),
        policies: counts.policies.iter().map(policy_report).collect(),
    }
}

fn policy_report(p: &PolicyCounts) -> PolicyReport {
    PolicyReport {
        policy: PolicyDetails {
            policy_type: p.policy.policy_type,
            policy_string: p.policy.policy_strings.clone(),
            policy_domain: p.policy.policy_domain.clone(),
            mx_host: p.policy.mx_host.clone(),
        },
        summary: Summary {
            successes: p.successes,
            failures: p.failures,
        },
        failure_details: p
            .failure_details
            .iter()
            .map(|f| FailureDetail {
                result_type: f.result_type,
                sending_mta_ip: f.sending_mta_ip,
                receiving_mx_hostname: Some(f.receiving_mx_hostname.clone())
                    .filter(|h| !h.is_empty()),
                receiving_ip: f.receiving_ip,
                failed_session_count: f.count,
                failure_reason_code: f.detail.clone(),
            })
            .collect(),
    }
}

/// `2024-05-01T00:00:00Z`.
pub fn rfc3339(unix: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

impl Report {
    /// The JSON text (RFC 8460 4).
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising these plain types cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The JSON, gzipped (RFC 8460 5.1: `application/tlsrpt+gzip`).
    pub fn gzipped(&self) -> std::io::Result<Vec<u8>> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&self.to_json())?;
        encoder.finish()
    }

    /// The report mail of RFC 8460 5.3 for `policy_domain`, from `from` to `to`, carrying
    /// `gzipped` (CRLF line ends; not signed yet).
    pub fn mail(
        &self,
        policy_domain: &str,
        submitter: &str,
        from: &str,
        to: &str,
        gzipped: &[u8],
        (start, end): (i64, i64),
    ) -> std::io::Result<Vec<u8>> {
        use mail_auth::report::tlsrpt as rpt;
        let envelope = rpt::TlsReport {
            organization_name: Some(self.organization_name.clone()),
            date_range: rpt::DateRange::from_timestamps(start, end),
            contact_info: Some(self.contact_info.clone()),
            report_id: self.report_id.clone(),
            policies: Vec::new(),
        };
        let mut out = Vec::new();
        envelope.write_rfc5322_from_bytes(
            policy_domain,
            submitter,
            from,
            std::iter::once(to),
            gzipped,
            &mut out,
        )?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reporting::tls::counters::{FailureCount, SendState};
    use crate::tls_report::ReportPolicy;

    fn counts() -> DomainDay {
        DomainDay {
            policies: vec![PolicyCounts {
                policy: ReportPolicy {
                    policy_type: PolicyType::NoPolicyFound,
                    policy_domain: "partner.test".into(),
                    policy_strings: Vec::new(),
                    mx_host: Vec::new(),
                },
                successes: 3,
                failures: 1,
                failure_details: vec![FailureCount {
                    result_type: ResultType::CertificateExpired,
                    sending_mta_ip: Some("192.0.2.5".parse().unwrap()),
                    receiving_mx_hostname: "mx1.partner.test".into(),
                    receiving_ip: None,
                    detail: Some("certificate expired".into()),
                    count: 1,
                }],
            }],
            report: SendState::default(),
        }
    }

    /// RFC 8460 4.4 field names and types; absent optional fields are left out, never null.
    #[test]
    fn json_has_rfc8460_fields() {
        let reporter = Reporter {
            organization_name: "Example Bank ASA",
            contact_info: "mailto:tlsrpt@example.no",
            submitter: "mx1.example.no",
        };
        let start = 19_844 * 86_400;
        let report = build(reporter, "partner.test", &counts(), (start, start + 86_399));
        let json: serde_json::Value = serde_json::from_slice(&report.to_json()).unwrap();
        assert_eq!(json["organization-name"], "Example Bank ASA");
        assert_eq!(json["date-range"]["start-datetime"], "2024-05-01T00:00:00Z");
        assert_eq!(json["date-range"]["end-datetime"], "2024-05-01T23:59:59Z");
        assert_eq!(json["contact-info"], "mailto:tlsrpt@example.no");
        assert_eq!(
            json["report-id"],
            format!("{start}.{}.partner.test@mx1.example.no", start + 86_399)
        );
        let p = &json["policies"][0];
        assert_eq!(p["policy"]["policy-type"], "no-policy-found");
        assert_eq!(p["policy"]["policy-domain"], "partner.test");
        assert!(p["policy"].get("policy-string").is_none());
        assert_eq!(p["summary"]["total-successful-session-count"], 3);
        assert_eq!(p["summary"]["total-failure-session-count"], 1);
        let f = &p["failure-details"][0];
        assert_eq!(f["result-type"], "certificate-expired");
        assert_eq!(f["sending-mta-ip"], "192.0.2.5");
        assert_eq!(f["receiving-mx-hostname"], "mx1.partner.test");
        assert!(f.get("receiving-ip").is_none());
        assert_eq!(f["failed-session-count"], 1);
        assert_eq!(f["failure-reason-code"], "certificate expired");

        // Another implementation reads it back.
        let parsed = mail_auth::report::tlsrpt::TlsReport::parse_json(&report.to_json()).unwrap();
        assert_eq!(parsed.policies[0].summary.total_success, 3);
    }
}
