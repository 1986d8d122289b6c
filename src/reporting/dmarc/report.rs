//! The DMARC aggregate report (RFC 7489 section 7.2): built as mail-auth's
//! `mail_auth::report::Report` with its builder, written as the XML of RFC 7489 Appendix C,
//! gzipped, and wrapped in the report mail of section 7.2.1.1.
//!
//! The XML is written here rather than by mail-auth's `Report::to_xml`: mail-auth 0.13 writes
//! the DMARCbis format (namespace `urn:ietf:params:xml:ns:dmarc-2.0`, `testing` and
//! `discovery_method` instead of `pct`, no `scope` for SPF), which RFC 7489 Appendix C's
//! schema does not accept (`pct` and `fo` are required there, and every SPF result has its
//! `scope`). For the same reason the mail is not mail-auth's `to_rfc5322`, which gzips its
//! own XML.

use super::counters::DomainDay;
use mail_auth::report::{
    ActionDisposition, Alignment, Disposition, DkimResult, DmarcResult, PolicyOverride, Record,
    Report, SPFDomainScope, SpfResult,
};
use std::fmt::Write as _;
use std::io::Write as _;

/// Who sends the report: `[dmarc_reporting]`.
#[derive(Debug, Clone, Copy)]
pub struct Reporter<'a> {
    /// `org_name`.
    pub organization_name: &'a str,
    /// `email`: the address of report mails (`from`).
    pub email: &'a str,
    /// `extra_contact_info`.
    pub contact_info: &'a str,
    /// The reporting domain (the domain of `from`): the report-id's and the file name's.
    pub domain: &'a str,
}

/// The report of `domain` over `[start, end]` (Unix seconds, `end` inclusive) from its
/// counters, with the record's `pct` (which mail-auth's type has no field for).
pub fn build(
    reporter: Reporter<'_>,
    domain: &str,
    counts: &DomainDay,
    (start, end): (i64, i64),
) -> Report {
    let begin = u64::try_from(start).unwrap_or(0);
    let end = u64::try_from(end).unwrap_or(0);
    let mut report = Report::new()
        .with_version(1.0)
        .with_org_name(reporter.organization_name)
        .with_email(reporter.email)
        .with_extra_contact_info(reporter.contact_info)
        // Unique per domain and range: a partial report of the running day (`--include-today`)
        // and the day's full report get different ids.
        .with_report_id(format!("{begin}.{end}.{domain}@{}", reporter.domain))
        .with_date_range_begin(begin)
        .with_date_range_end(end)
        .with_policy_published(counts.policy.clone())
        .with_domain(domain);
    if counts.overflow > 0 {
        report = report.with_error(format!(
            "{} further messages in more than {} distinct rows were not itemised",
            counts.overflow,
            counts.records.len()
        ));
    }
    for record in &counts.records {
        report.add_record(record.clone());
    }
    report
}

/// The report as RFC 7489 Appendix C XML, `pct` given separately.
pub fn to_xml(report: &Report, pct: u8) -> String {
    let mut x = String::with_capacity(1024 + report.records().len() * 600);
    let _ = writeln!(x, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>");
    let _ = writeln!(x, "<feedback>");
    let _ = writeln!(x, "  <version>1.0</version>");
    let _ = writeln!(x, "  <report_metadata>");
    element(&mut x, 4, "org_name", report.org_name());
    element(&mut x, 4, "email", report.email());
    if let Some(info) = report.extra_contact_info() {
        element(&mut x, 4, "extra_contact_info", info);
    }
    element(&mut x, 4, "report_id", report.report_id());
    let _ = writeln!(x, "    <date_range>");
    element(&mut x, 6, "begin", &report.date_range_begin().to_string());
    element(&mut x, 6, "end", &report.date_range_end().to_string());
    let _ = writeln!(x, "    </date_range>");
    for error in report.error() {
        element(&mut x, 4, "error", error);
    }
    let _ = writeln!(x, "  </report_metadata>");
    let _ = writeln!(x, "  <policy_published>");
    element(&mut x, 4, "domain", report.domain());
    element(&mut x, 4, "adkim", alignment(report.adkim()));
    element(&mut x, 4, "aspf", alignment(report.aspf()));
    element(&mut x, 4, "p", disposition(report.p()));
    // RFC 7489 6.3: `sp` defaults to `p`.
    let sp = match report.sp() {
        Disposition::Unspecified => report.p(),
        sp => sp,
    };
    element(&mut x, 4, "sp", disposition(sp));
    element(&mut x, 4, "pct", &pct.to_string());
    element(&mut x, 4, "fo", report.fo().unwrap_or("0"));
    let _ = writeln!(x, "  </policy_published>");
    for record in report.records() {
        write_record(&mut x, record);
    }
    let _ = writeln!(x, "</feedback>");
    x
}

fn write_record(x: &mut String, r: &Record) {
    let _ = writeln!(x, "  <record>");
    let _ = writeln!(x, "    <row>");
    let ip = r.row.source_ip.map(|i| i.to_string()).unwrap_or_default();
    element(x, 6, "source_ip", &ip);
    element(x, 6, "count", &r.row.count.to_string());
    let e = &r.row.policy_evaluated;
    let _ = writeln!(x, "      <policy_evaluated>");
    element(x, 8, "disposition", action(e.disposition));
    element(x, 8, "dkim", dmarc_result(e.dkim));
    element(x, 8, "spf", dmarc_result(e.spf));
    for reason in &e.reason {
        let _ = writeln!(x, "        <reason>");
        element(x, 10, "type", override_type(reason.type_));
        if let Some(comment) = &reason.comment {
            element(x, 10, "comment", comment);
        }
        let _ = writeln!(x, "        </reason>");
    }
    let _ = writeln!(x, "      </policy_evaluated>");
    let _ = writeln!(x, "    </row>");
    let _ = writeln!(x, "    <identifiers>");
    if let Some(to) = &r.identifiers.envelope_to {
        element(x, 6, "envelope_to", to);
    }
    element(x, 6, "envelope_from", &r.identifiers.envelope_from);
    element(x, 6, "header_from", &r.identifiers.header_from);
    let _ = writeln!(x, "    </identifiers>");
    let _ = writeln!(x, "    <auth_results>");
    for d in &r.auth_results.dkim {
        let _ = writeln!(x, "      <dkim>");
        element(x, 8, "domain", &d.domain);
        if !d.selector.is_empty() {
            element(x, 8, "selector", &d.selector);
        }
        element(x, 8, "result", dkim_result(d.result));
        if let Some(human) = &d.human_result {
            element(x, 8, "human_result", human);
        }
        let _ = writeln!(x, "      </dkim>");
    }
    for s in &r.auth_results.spf {
        let _ = writeln!(x, "      <spf>");
        element(x, 8, "domain", &s.domain);
        element(x, 8, "scope", scope(s.scope));
        element(x, 8, "result", spf_result(s.result));
        let _ = writeln!(x, "      </spf>");
    }
    let _ = writeln!(x, "    </auth_results>");
    let _ = writeln!(x, "  </record>");
}

fn element(x: &mut String, indent: usize, name: &str, text: &str) {
    let _ = writeln!(x, "{:indent$}<{name}>{}</{name}>", "", escape(text));
}

/// XML character data: markup characters escaped, characters XML 1.0 forbids dropped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn alignment(a: Alignment) -> &'static str {
    match a {
        Alignment::Strict => "s",
        // RFC 7489 6.3: relaxed is the default.
        Alignment::Relaxed | Alignment::Unspecified => "r",
    }
}

fn disposition(d: Disposition) -> &'static str {
    match d {
        Disposition::Quarantine => "quarantine",
        Disposition::Reject => "reject",
        Disposition::None | Disposition::Unspecified => "none",
    }
}

fn action(d: ActionDisposition) -> &'static str {
    match d {
        ActionDisposition::Quarantine => "quarantine",
        ActionDisposition::Reject => "reject",
        // RFC 7489's DispositionType has no `pass`: delivered as it is is `none`.
        ActionDisposition::None | ActionDisposition::Pass | ActionDisposition::Unspecified => {
            "none"
        }
    }
}

fn dmarc_result(r: DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail | DmarcResult::Unspecified => "fail",
    }
}

fn override_type(t: PolicyOverride) -> &'static str {
    match t {
        PolicyOverride::LocalPolicy => "local_policy",
        PolicyOverride::MailingList => "mailing_list",
        PolicyOverride::PolicyTestMode => "sampled_out",
        PolicyOverride::TrustedForwarder => "trusted_forwarder",
        PolicyOverride::Other => "other",
    }
}

fn dkim_result(r: DkimResult) -> &'static str {
    match r {
        DkimResult::None => "none",
        DkimResult::Pass => "pass",
        DkimResult::Fail => "fail",
        DkimResult::Policy => "policy",
        DkimResult::Neutral => "neutral",
        DkimResult::TempError => "temperror",
        DkimResult::PermError => "permerror",
    }
}

fn scope(s: SPFDomainScope) -> &'static str {
    match s {
        SPFDomainScope::Helo => "helo",
        SPFDomainScope::MailFrom | SPFDomainScope::Unspecified => "mfrom",
    }
}

fn spf_result(r: SpfResult) -> &'static str {
    match r {
        SpfResult::None => "none",
        SpfResult::Neutral => "neutral",
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
    }
}

/// The XML, gzipped (RFC 7489 7.2.1.1: `application/gzip`).
pub fn gzip(xml: &str) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(xml.as_bytes())?;
    encoder.finish()
}

/// The parts of a report mail.
pub struct MailParts<'a> {
    /// The report (domain, id, range).
    pub report: &'a Report,
    /// The reporting domain (`Submitter`, the file name's first part).
    pub submitter: &'a str,
    /// From.
    pub from: &'a str,
    /// To.
    pub to: &'a str,
    /// The gzipped XML.
    pub gzipped: &'a [u8],
    /// `Message-ID` without brackets.
    pub message_id: &'a str,
    /// `Date`.
    pub date: &'a str,
}

/// The report mail of RFC 7489 7.2.1.1 (CRLF line ends; not signed yet): Subject `Report
/// Domain: <domain> Submitter: <submitter> Report-ID: <id>`, a short `text/plain` part and
/// the `application/gzip` attachment `<submitter>!<domain>!<begin>!<end>.xml.gz`.
pub fn mail(p: &MailParts<'_>) -> Vec<u8> {
    use base64::Engine;
    let r = p.report;
    let boundary = format!("tlsgate-dmarc-{}", p.message_id.replace(['@', '.'], "-"));
    let file = format!(
        "{}!{}!{}!{}.xml.gz",
        p.submitter,
        r.domain(),
        r.date_range_begin(),
        r.date_range_end()
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(p.gzipped);
    let mut m = String::with_capacity(encoded.len() + 2048);
    let _ = write!(
        m,
        "From: {from}\r\nTo: {to}\r\nDate: {date}\r\nMessage-ID: <{id}>\r\n\
         Subject: Report Domain: {domain} Submitter: {submitter} Report-ID: <{report_id}>\r\n\
         Auto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n\
         DMARC aggregate report from {submitter}\r\n\r\n\
         Report Domain: {domain}\r\nSubmitter: {submitter}\r\nReport-ID: {report_id}\r\n\r\n\
         --{boundary}\r\nContent-Type: application/gzip\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{file}\"\r\n\r\n",
        from = p.from,
        to = p.to,
        date = p.date,
        id = p.message_id,
        domain = r.domain(),
        submitter = p.submitter,
        report_id = r.report_id(),
    );
    // RFC 2045 6.8: lines of at most 76 characters.
    for chunk in encoded.as_bytes().chunks(76) {
        m.push_str(&String::from_utf8_lossy(chunk));
        m.push_str("\r\n");
    }
    let _ = write!(m, "--{boundary}--\r\n");
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_auth::report::{PolicyPublished, Row};

    #[test]
    fn xml_escapes_and_defaults() {
        let counts = DomainDay {
            policy: PolicyPublished {
                domain: "a.test".into(),
                p: Disposition::Reject,
                ..PolicyPublished::default()
            },
            records: vec![Record {
                row: Row {
                    source_ip: Some("192.0.2.1".parse().unwrap()),
                    count: 3,
                    ..Row::default()
                },
                ..Record::default()
            }],
            ..DomainDay::default()
        };
        let reporter = Reporter {
            organization_name: "Bank & Co <ASA>",
            email: "dmarc@example.no",
            contact_info: "https://example.no/dmarc",
            domain: "example.no",
        };
        let report = build(reporter, "a.test", &counts, (86_400, 2 * 86_400 - 1));
        let xml = to_xml(&report, 100);
        assert!(
            xml.contains("<org_name>Bank &amp; Co &lt;ASA&gt;</org_name>"),
            "{xml}"
        );
        assert!(xml.contains("<report_id>86400.172799.a.test@example.no</report_id>"));
        // RFC 7489 6.3: sp defaults to p.
        assert!(
            xml.contains("<p>reject</p>") && xml.contains("<sp>reject</sp>"),
            "{xml}"
        );
        assert!(
            xml.contains("<pct>100</pct>") && xml.contains("<fo>0</fo>"),
            "{xml}"
        );
        assert!(xml.contains("<count>3</count>"), "{xml}");
    }
}
