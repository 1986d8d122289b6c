//! `[dmarc_reporting]`: DMARC aggregate reports to the author domains of inbound mail (RFC
//! 7489 section 7.2; D4, issue 17 item 4). Off unless present with `enabled = true`.

use super::{Checker, ConfigError};
use serde::Deserialize;

/// The section as serde reads it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDmarcReporting {
    pub enabled: Option<bool>,
    pub organization_name: Option<String>,
    pub contact_info: Option<String>,
    pub from: Option<String>,
}

/// `[dmarc_reporting]`, when enabled: who the reports say they come from.
#[derive(Debug, Clone, PartialEq)]
pub struct DmarcReportingSection {
    /// `org_name` of every report (RFC 7489 7.2.1.1; required).
    pub organization_name: String,
    /// `extra_contact_info` of every report: a URI or address domain owners can use
    /// (required).
    pub contact_info: String,
    /// From and envelope sender of report mails, and the report's `email` (required). Its
    /// domain is the reporting domain: the report-id's, the file name's, and the domain whose
    /// `[[outbound.dkim]]` key (or a parent's) signs the mails.
    pub from: String,
}

impl DmarcReportingSection {
    /// The domain of `from` (lower case).
    pub fn reporting_domain(&self) -> String {
        self.from
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// Validates the section; `None` when it is absent or not enabled (the default is off:
/// reports tell other domains about our traffic, which an operator turns on knowingly).
pub(super) fn section(
    c: &Checker<'_>,
    raw: Option<RawDmarcReporting>,
) -> Result<Option<DmarcReportingSection>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if raw.enabled != Some(true) {
        return Ok(None);
    }
    let text = |key: &str, value: Option<String>| -> Result<String, ConfigError> {
        let value = value.ok_or_else(|| {
            c.err(
                format!("dmarc_reporting.{key}"),
                "missing (RFC 7489 7.2.1.1 requires it in every report)",
            )
        })?;
        if value.trim().is_empty() || value.chars().any(char::is_control) {
            return Err(c.err(format!("dmarc_reporting.{key}"), "must be a non-empty line"));
        }
        Ok(value)
    };
    // Every problem of the section is recorded (check-config lists them all); the stand-ins
    // are never used, as validation then fails.
    let organization_name = c.or(
        text("organization_name", raw.organization_name),
        String::new(),
    );
    let contact_info = c.or(text("contact_info", raw.contact_info), String::new());
    let from = match raw.from {
        None => {
            c.fail(
                "dmarc_reporting.from",
                "missing: the sender address of report mails",
            );
            String::new()
        }
        Some(from) => {
            if !super::tls_reporting::is_sender_address(&from) {
                c.fail(
                    "dmarc_reporting.from",
                    format!("{from:?} is not a mail address"),
                );
            }
            from
        }
    };
    Ok(Some(DmarcReportingSection {
        organization_name,
        contact_info,
        from,
    }))
}
