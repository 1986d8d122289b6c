//! `[tls_reporting]`: SMTP TLS reports to partners (RFC 8460; D3, issue 13 item 2).

use super::{Checker, ConfigError};
use serde::Deserialize;

/// The section as serde reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsReporting {
    pub enabled: Option<bool>,
    pub organization_name: Option<String>,
    pub contact_info: Option<String>,
    pub submitter: Option<String>,
    pub from: Option<String>,
}

/// `[tls_reporting]`, when enabled: who the reports say they come from.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsReportingSection {
    /// `organization-name` of every report (RFC 8460 4.4; required).
    pub organization_name: String,
    /// `contact-info` of every report: an address or URI partners can write to (required).
    pub contact_info: String,
    /// The submitter domain (`TLS-Report-Submitter`, RFC 8460 5.3; default
    /// `server.hostname`); `mailto:` reports are DKIM-signed by a `[[outbound.dkim]]` key of
    /// this domain or a parent of it.
    pub submitter: String,
    /// The sender address of report mails (From and envelope sender; required).
    pub from: String,
}

/// Validates the section; `None` when it is absent or `enabled = false`.
pub(super) fn section(
    c: &Checker<'_>,
    raw: Option<RawTlsReporting>,
    hostname: &str,
) -> Result<Option<TlsReportingSection>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.enabled == Some(false) {
        return Ok(None);
    }
    let text = |key: &str, value: Option<String>| -> Result<String, ConfigError> {
        let value = value.ok_or_else(|| {
            c.err(
                format!("tls_reporting.{key}"),
                "missing (RFC 8460 4.4 requires it in every report)",
            )
        })?;
        if value.trim().is_empty() || value.chars().any(char::is_control) {
            return Err(c.err(format!("tls_reporting.{key}"), "must be a non-empty line"));
        }
        Ok(value)
    };
    // Every problem of the section is recorded (issue 14 item 1: check-config lists them all);
    // the stand-ins are never used, as validation then fails.
    let organization_name = c.or(
        text("organization_name", raw.organization_name),
        String::new(),
    );
    let contact_info = c.or(text("contact_info", raw.contact_info), String::new());
    let submitter = match raw.submitter {
        Some(s) => c.or(
            c.domain("tls_reporting.submitter", &s)
                .map(|d| d.to_string()),
            hostname.to_string(),
        ),
        None => hostname.to_string(),
    };
    let from = match raw.from {
        None => {
            c.fail(
                "tls_reporting.from",
                "missing: the sender address of report mails",
            );
            String::new()
        }
        Some(from) => {
            if !is_sender_address(&from) {
                c.fail(
                    "tls_reporting.from",
                    format!("{from:?} is not a mail address"),
                );
            }
            from
        }
    };
    Ok(Some(TlsReportingSection {
        organization_name,
        contact_info,
        submitter,
        from,
    }))
}

/// A plain ASCII mail address fit for an envelope sender and a From field (report mails of
/// `[tls_reporting]` and `[dmarc_reporting]`).
pub(super) fn is_sender_address(from: &str) -> bool {
    from.rsplit_once('@').is_some_and(|(local, domain)| {
        !local.is_empty() && crate::domain::Domain::parse(domain).is_ok()
    }) && from.is_ascii()
        && !from.contains(|c: char| c.is_whitespace() || "<>\",;".contains(c))
}
