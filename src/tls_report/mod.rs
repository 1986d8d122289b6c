//! SMTP TLS reporting, sending side (RFC 8460; D3, issue 13 item 2): what one delivery session
//! reports and where it is recorded.
//!
//! Delivery records one [`SessionResult`] per session (a connection to one MX host, successful
//! or not) through a [`TlsReportSink`]; the MTA-STS module records policy fetch failures the
//! same way. The sink keeps counters per UTC day and policy, and the daily report is built from
//! them.

use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// The result types of RFC 8460 section 4.3 (the `result-type` of a failure detail). Serialised
/// by its RFC name (`starttls-not-supported`, ...), as the report JSON and the counters on disk
/// write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    /// The peer did not offer STARTTLS (section 4.3.1).
    StarttlsNotSupported,
    /// The certificate's names do not match the host (section 4.3.1).
    CertificateHostMismatch,
    /// The certificate has expired (section 4.3.1).
    CertificateExpired,
    /// The certificate does not chain to a trusted root (section 4.3.1).
    CertificateNotTrusted,
    /// Any other failure of the TLS negotiation or validation (section 4.3.1).
    ValidationFailure,
    /// No usable TLSA record matched, or the records are invalid (section 4.3.2).
    TlsaInvalid,
    /// DNSSEC validation failed for the records the policy needs (section 4.3.2).
    DnssecInvalid,
    /// DANE was required but no usable TLSA records were found (section 4.3.2).
    DaneRequired,
    /// The MTA-STS policy could not be fetched (section 4.3.3).
    StsPolicyFetchError,
    /// The MTA-STS policy was fetched but is invalid (section 4.3.3).
    StsPolicyInvalid,
    /// The MTA-STS policy host's HTTPS certificate is invalid (section 4.3.3).
    StsWebpkiInvalid,
}

impl ResultType {
    /// The RFC 8460 name, as written in the report JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
        }
    }
}

/// The policy type of RFC 8460 section 4.4 (`policy-type`), serialised by its RFC name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyType {
    /// DANE TLSA records (RFC 7672).
    Tlsa,
    /// An MTA-STS policy (RFC 8461).
    Sts,
    /// Neither applied (also listed tvungen TLS domains without DANE or MTA-STS, item 3).
    NoPolicyFound,
}

impl PolicyType {
    /// The RFC 8460 name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyType::Tlsa => "tlsa",
            PolicyType::Sts => "sts",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The policy a session ran under, as a report names it (RFC 8460 section 4.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReportPolicy {
    /// `tlsa`, `sts` or `no-policy-found`.
    pub policy_type: PolicyType,
    /// The policy domain (section 3): the MX host's TLSA base domain for DANE, the recipient
    /// domain for MTA-STS and `no-policy-found`. Lower case, no trailing dot.
    pub policy_domain: String,
    /// `policy-string`: the TLSA records in presentation form, or the lines of the MTA-STS
    /// policy; empty for `no-policy-found`.
    pub policy_strings: Vec<String>,
    /// `mx-host`: the MX patterns of an MTA-STS policy; empty otherwise.
    pub mx_host: Vec<String>,
}

/// One delivery session (or one MTA-STS fetch) to be counted in the report of the day it
/// ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionResult {
    /// The policy it ran under.
    pub policy: ReportPolicy,
    /// The MX host connected to (`receiving-mx-hostname`); empty for a policy fetch failure.
    pub receiving_mx_hostname: String,
    /// The address connected to (`receiving-ip`), when a connection was made.
    pub receiving_ip: Option<IpAddr>,
    /// Our address on that connection (`sending-mta-ip`), when known.
    pub sending_mta_ip: Option<IpAddr>,
    /// `Ok` for a successful TLS session; the failure otherwise.
    pub result: Result<(), ResultType>,
    /// `additional-information` / `failure-reason-code`: a short text, never a secret.
    pub detail: Option<String>,
}

/// Where sessions are recorded. Implementations must not block: recording is called on the
/// delivery path.
pub trait TlsReportSink: Send + Sync + 'static {
    /// Counts one session in the current UTC day's report of its policy.
    fn record(&self, session: SessionResult);
}

/// A sink that keeps nothing (`[tls_reporting] enabled = false`, and tools that only probe).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoReports;

impl TlsReportSink for NoReports {
    fn record(&self, _session: SessionResult) {}
}

/// Records into every sink it holds: the relay's TLS-RPT counters and, in tests, a sink that
/// collects what MTA-STS reports (`server::start_with_reports`).
pub struct Fanout(pub Vec<std::sync::Arc<dyn TlsReportSink>>);

impl TlsReportSink for Fanout {
    fn record(&self, session: SessionResult) {
        for sink in &self.0 {
            sink.record(session.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serialised names are the RFC 8460 names ([`ResultType::as_str`], section 4.3).
    #[test]
    fn serde_names_are_the_rfc_names() {
        for r in [
            ResultType::StarttlsNotSupported,
            ResultType::CertificateHostMismatch,
            ResultType::CertificateExpired,
            ResultType::CertificateNotTrusted,
            ResultType::ValidationFailure,
            ResultType::TlsaInvalid,
            ResultType::DnssecInvalid,
            ResultType::DaneRequired,
            ResultType::StsPolicyFetchError,
            ResultType::StsPolicyInvalid,
            ResultType::StsWebpkiInvalid,
        ] {
            assert_eq!(serde_json::to_value(r).ok(), Some(r.as_str().into()));
        }
        for p in [PolicyType::Tlsa, PolicyType::Sts, PolicyType::NoPolicyFound] {
            assert_eq!(serde_json::to_value(p).ok(), Some(p.as_str().into()));
        }
    }
}
