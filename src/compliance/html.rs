//! The compliance report for the auditor (issue 15 item 2; Bits 5.2.6, T7): one
//! self-contained HTML page — inline CSS only, no scripts, fonts or images from elsewhere —
//! saying when the check ran, by which tlsgate and on which host, against which domain list
//! (file, SHA-256, number of domains, age), then one row per domain and MX host with verdict,
//! TLS version, cipher, certificate facts and reason: failures first, then warnings, then
//! passes. It prints on paper as it shows on screen (`@media print`).
//!
//! Every text that came from the network or DNS (certificate subjects, host names, reasons)
//! goes through [`escape`], the one escaping function: a certificate subject may hold `<`.

use super::{DomainReport, HostReport, Verdict};
use crate::policy::domain_list::{AgeFrom, DomainListHandle};
use std::fmt::Write;
use std::io::Read;
use std::time::SystemTime;

/// What the report says about the run: when, by whom, against which list.
#[derive(Debug, Clone)]
pub struct ReportContext {
    /// When the check started.
    pub started: SystemTime,
    /// How long it took.
    pub took: std::time::Duration,
    /// The tlsgate version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The relay's name (`server.hostname`).
    pub server_hostname: String,
    /// The machine's host name, when it can be read and differs from `server_hostname`.
    pub machine_hostname: Option<String>,
    /// The configuration file used.
    pub config_source: String,
    /// The domain list in force; `None` when no `domain_list.path` is configured.
    pub list: Option<ListFacts>,
    /// Only the `--domain` ones were checked, not the whole list.
    pub selected_domains: bool,
}

/// The domain list a check ran against (T10: which list, how old).
#[derive(Debug, Clone)]
pub struct ListFacts {
    /// The list file's path.
    pub file: String,
    /// SHA-256 of the list file in force (as loaded), hex; or why it is not known.
    pub sha256: Result<String, String>,
    /// Number of domains in the list in force.
    pub domains: usize,
    /// Age in whole days, measured as `domain_list.age_from` says; `None`: unknown.
    pub age_days: Option<i64>,
    /// How the age is measured, in words.
    pub age_from: &'static str,
}

impl ListFacts {
    /// The facts of the list `handle` holds, its age measured `from` at `now`; `None` when
    /// the handle has no file.
    pub fn of(handle: &DomainListHandle, from: AgeFrom, now: SystemTime) -> Option<ListFacts> {
        let path = handle.path()?;
        Some(ListFacts {
            file: path.display().to_string(),
            // The digest of the list in force, taken when it was loaded (the file may have
            // changed since without a reload).
            sha256: handle
                .sha256()
                .ok_or_else(|| "not known for this list".to_string()),
            domains: handle.current().len(),
            age_days: handle.age_days(from, now),
            age_from: match from {
                AgeFrom::File => "since the file was modified",
                AgeFrom::NewestEntry => "since the newest \"Dato innmeldt\"",
            },
        })
    }
}

/// The machine's host name from the kernel (Linux), for the report's "where"; `None` when it
/// cannot be read.
pub fn machine_hostname() -> Option<String> {
    let mut text = String::new();
    std::fs::File::open("/proc/sys/kernel/hostname")
        .ok()?
        .take(256)
        .read_to_string(&mut text)
        .ok()?;
    let name = text.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// Escapes text for HTML element content and quoted attribute values (the five characters
/// with a meaning in HTML). Every text not written by this module goes through it.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The inline style sheet: readable on screen, and on paper (table headers repeated on each
/// page, rows not split, verdict colours kept).
const STYLE: &str = "
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 2em; color: #1a1a1a; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.5em; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #c8c8c8; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
th { background: #eeeeee; }
table.facts { width: auto; }
table.facts th { width: 14em; }
table.checks { font-size: 0.85em; }
tr.domain td { background: #f6f6f6; font-weight: 600; }
.verdict { font-weight: 700; text-transform: uppercase; white-space: nowrap; }
.verdict.v-fail { color: #ffffff; background: #b00020; }
.verdict.v-warn { color: #1a1a1a; background: #ffc107; }
.verdict.v-pass { color: #ffffff; background: #2e7d32; }
td.cipher { white-space: nowrap; word-break: normal; }
.mono { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; font-size: 0.9em; word-break: break-all; }
.note { color: #555555; }
ul.cert { list-style: none; margin: 0; padding: 0; }
.summary span { margin-right: 1.5em; }
@media print {
  body { margin: 0; font-size: 9pt; }
  table.checks { font-size: 8pt; }
  thead { display: table-header-group; }
  tr { page-break-inside: avoid; break-inside: avoid; }
  .verdict, tr.domain td, th { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  @page { size: A4 landscape; margin: 12mm; }
}
";

/// The whole page for `reports` (in any order; the page orders them: failures, warnings,
/// passes, each group in the order given).
pub fn render(reports: &[DomainReport], context: &ReportContext) -> String {
    let mut ordered: Vec<&DomainReport> = reports.iter().collect();
    // Stable: within a verdict the domains keep the list's order.
    ordered.sort_by_key(|r| r.verdict);
    let count = |v: Verdict| reports.iter().filter(|r| r.verdict == v).count();
    let when = crate::datetime::format_rfc3339(context.started);
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>tlsgate compliance report {}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <h1>Tvungen TLS compliance report</h1>\n\
         <p class=\"note\">Bits \"Krav til tvungen TLS\" 5.2.6: after any change or replacement \
         of the mail server, test that mail to every listed domain still goes over validated \
         TLS. Produced by <span class=\"mono\">tlsgate domains check --html</span>, which checks \
         each domain exactly as delivery would.</p>\n",
        escape(&when)
    );
    out.push_str("<h2>The check</h2>\n<table class=\"facts\">\n");
    fact(&mut out, "Checked at (UTC)", &escape(&when));
    fact(
        &mut out,
        "Duration",
        &escape(&format!("{:.1} s", context.took.as_secs_f64())),
    );
    fact(
        &mut out,
        "tlsgate version",
        &escape(&format!("tlsgate {}", context.version)),
    );
    let host = match &context.machine_hostname {
        Some(machine) if *machine != context.server_hostname => format!(
            "{} (server.hostname), on machine {machine}",
            context.server_hostname
        ),
        _ => context.server_hostname.clone(),
    };
    fact(&mut out, "Host", &escape(&host));
    fact(
        &mut out,
        "Configuration",
        &format!(
            "<span class=\"mono\">{}</span>",
            escape(&context.config_source)
        ),
    );
    match &context.list {
        None => fact(
            &mut out,
            "Domain list",
            "none configured (<span class=\"mono\">domain_list.path</span>)",
        ),
        Some(list) => {
            fact(
                &mut out,
                "Domain list file",
                &format!("<span class=\"mono\">{}</span>", escape(&list.file)),
            );
            let sha = match &list.sha256 {
                Ok(hex) => format!("<span class=\"mono\">{}</span>", escape(hex)),
                Err(why) => escape(why),
            };
            fact(&mut out, "List SHA-256", &sha);
            fact(
                &mut out,
                "Domains in the list",
                &escape(&list.domains.to_string()),
            );
            let age = match list.age_days {
                Some(days) => format!("{days} days ({})", list.age_from),
                None => format!("unknown ({})", list.age_from),
            };
            fact(&mut out, "List age", &escape(&age));
        }
    }
    let checked = if context.selected_domains {
        format!("{} (only those named with --domain)", reports.len())
    } else {
        reports.len().to_string()
    };
    fact(&mut out, "Domains checked", &escape(&checked));
    out.push_str("</table>\n");
    let _ = writeln!(
        out,
        "<p class=\"summary\"><span class=\"verdict v-fail\">&nbsp;{} fail&nbsp;</span>\
         <span class=\"verdict v-warn\">&nbsp;{} warn&nbsp;</span>\
         <span class=\"verdict v-pass\">&nbsp;{} pass&nbsp;</span></p>",
        count(Verdict::Fail),
        count(Verdict::Warn),
        count(Verdict::Pass),
    );
    let _ = write!(
        out,
        "<h2>Domains and MX hosts</h2>\n<p class=\"note\">Failures first, then warnings (a \
         certificate expiring within {} days), then passes.</p>\n",
        super::EXPIRY_WARNING_DAYS
    );
    out.push_str(
        "<table class=\"checks\">\n<thead><tr><th>Verdict</th><th>Domain / MX host</th>\
         <th>Policy</th><th>TLS</th><th>Cipher</th><th>Certificate</th><th>Reason</th></tr>\
         </thead>\n",
    );
    for report in ordered {
        domain_rows(&mut out, report);
    }
    out.push_str("</table>\n</body>\n</html>\n");
    out
}

/// One row of the facts table; `value` is HTML already escaped.
fn fact(out: &mut String, name: &str, value: &str) {
    let _ = writeln!(out, "<tr><th>{}</th><td>{value}</td></tr>", escape(name));
}

/// A verdict cell.
fn verdict_cell(v: Verdict) -> String {
    format!("<td class=\"verdict v-{0}\">{0}</td>", escape(v.as_str()))
}

/// A `<tbody>` per domain: the domain's row, then one row per MX host address.
fn domain_rows(out: &mut String, r: &DomainReport) {
    let domain = escape(&r.domain);
    let _ = write!(
        out,
        "<tbody class=\"{}\" data-domain=\"{domain}\">\n<tr class=\"domain\">{}\
         <td>{domain}{}</td><td>{}</td><td colspan=\"3\">{}</td><td>{}</td></tr>\n",
        r.verdict.as_str(),
        verdict_cell(r.verdict),
        if r.listed { " (listed)" } else { "" },
        escape(&format!("{} ({})", r.level, r.policy_source)),
        escape(&format!("TLSRPT: {}", r.tls_rpt))
            + &r.mta_sts
                .as_ref()
                .map(|s| format!("<br>{}", escape(&s.line())))
                .unwrap_or_default(),
        domain_reason(r),
    );
    for h in &r.hosts {
        host_row(out, &r.domain, h);
    }
    out.push_str("</tbody>\n");
}

/// The domain's reason cell: the verdict in words, and its warnings.
fn domain_reason(r: &DomainReport) -> String {
    let mut text = if r.pass {
        "delivery would succeed".to_string()
    } else {
        format!(
            "delivery would be deferred: {}",
            r.reason.as_deref().unwrap_or("")
        )
    };
    for w in &r.warnings {
        text.push_str("; warning: ");
        text.push_str(w);
    }
    escape(&text)
}

/// One MX host address.
fn host_row(out: &mut String, domain: &str, h: &HostReport) {
    let mut reason = h.reason.clone();
    for w in &h.warnings {
        reason.push_str("; warning: ");
        reason.push_str(w);
    }
    let _ = writeln!(
        out,
        "<tr class=\"host\" data-domain=\"{}\" data-mx=\"{}\">{}<td>&#8627; {} \
         <span class=\"mono\">{}</span></td><td>{}</td><td>{}</td><td class=\"mono cipher\">{}</td>\
         <td>{}</td><td>{}</td></tr>",
        escape(domain),
        escape(&h.mx_host),
        verdict_cell(h.verdict),
        escape(&h.mx_host),
        escape(&h.address),
        escape(&format!(
            "{} ({}); MX DNSSEC {}; TLSA {}",
            h.level,
            h.policy_source,
            h.mx_dnssec,
            h.tlsa.join("; ")
        )),
        escape(h.tls_version.as_deref().unwrap_or("-")),
        escape(h.cipher.as_deref().unwrap_or("-")),
        certificate(h),
        escape(&reason),
    );
}

/// The certificate facts as a small list; `-` when no certificate was presented.
fn certificate(h: &HostReport) -> String {
    let Some(sha) = &h.cert_sha256 else {
        return "-".into();
    };
    let mut items = Vec::new();
    let mut item = |name: &str, value: &str, class: &str| {
        items.push(format!(
            "<li><b>{}</b> <span class=\"{class}\">{}</span></li>",
            escape(name),
            escape(value)
        ))
    };
    item("subject", h.cert_subject.as_deref().unwrap_or("-"), "");
    if !h.cert_sans.is_empty() {
        item("SAN", &h.cert_sans.join(", "), "");
    }
    item("issuer", h.cert_issuer.as_deref().unwrap_or("-"), "");
    let expiry = match (&h.cert_not_after, h.cert_expires_in_days) {
        (Some(when), Some(days)) if days < 0 => format!("{when} (expired)"),
        (Some(when), Some(days)) => format!("{when} (in {days} days)"),
        (Some(when), None) => when.clone(),
        (None, _) => "-".into(),
    };
    item("expires", &expiry, "");
    item("SHA-256", sha, "mono");
    format!("<ul class=\"cert\">{}</ul>", items.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("CN=<script>alert('x')</script> & \"q\""),
            "CN=&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
