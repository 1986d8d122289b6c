//! Sending the daily DMARC aggregate reports (RFC 7489 sections 7.1 and 7.2): once a day, for
//! each author domain with counters for a finished UTC day, look up its DMARC record, build
//! the report, and mail it to every `rua=mailto:` destination through tlsgate's own queue,
//! DKIM-signed when a `[[outbound.dkim]]` key covers the reporting domain.
//!
//! Per destination: one outside the author's organisation must authorise the reports
//! (section 7.1, `<author>._report._dmarc.<destination>` TXT `v=DMARC1`), else it gets
//! nothing; a report mail larger than the destination's `!size` limit is not sent (section
//! 6.4; logged). A destination is marked done once the queue holds the mail durably, and the
//! mark is flushed at once; a destination that failed is tried at the next daily run, and
//! after [`MAX_TRIES`] runs the day's report for that domain is given up.

use super::counters::{DmarcCounters, DomainDay};
use super::record::{self, Destination, RecordError, ReportRequest};
use super::report::{self, MailParts, Reporter};
use crate::auth::OutboundSigner;
use crate::config::{Config, DmarcReportingSection};
use crate::dns::{DnsError, Resolver};
use crate::metrics::Metrics;
use crate::queue::message::QueueId;
use crate::queue::Committer;
pub use crate::reporting::daily::MAX_TRIES;
use crate::reporting::{
    queue_report, DomainRun, Finish, LookupError, ReportJob, ReportMail, ReportSender,
};
use std::sync::Arc;
use std::time::SystemTime;

/// The parts of the relay DMARC reporting uses.
pub struct Parts {
    /// The counters (also what the inbound sessions record into).
    pub counters: Arc<DmarcCounters>,
    /// The relay's resolver.
    pub resolver: Arc<dyn Resolver>,
    /// The queue.
    pub committer: Committer,
    /// The signer of the reporting domain ([`crate::reporting::signer_for`]), when one exists.
    pub signer: Option<Arc<OutboundSigner>>,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
}

/// The relay's DMARC reporting: the counters, and the daily job that sends from them
/// ([`ReportJob`]: `counters`, `flush`, `flush_loop`, `daily_loop`, `send_due`).
pub type DmarcReporting = ReportJob<DmarcSender>;

/// What sending DMARC reports needs: the settings, the resolver for the records, the queue
/// and the signer for the report mails.
pub struct DmarcSender {
    settings: DmarcReportingSection,
    hostname: String,
    resolver: Arc<dyn Resolver>,
    committer: Committer,
    signer: Option<Arc<OutboundSigner>>,
    metrics: Arc<Metrics>,
}

/// What happened to one destination.
enum Outcome {
    /// In the queue.
    Queued,
    /// Never to be sent (not authorised, too large): done for this report.
    Skipped(&'static str, String),
    /// Try again at the next run.
    Failed(String),
}

impl DmarcReporting {
    /// Sets DMARC reporting up for `settings`.
    pub fn new(config: &Config, settings: DmarcReportingSection, parts: Parts) -> DmarcReporting {
        if parts.signer.is_none() {
            tracing::warn!(
                domain = %settings.reporting_domain(),
                "no [[outbound.dkim]] key for the DMARC report domain: reports are sent unsigned"
            );
        }
        let hostname = config.server.hostname.clone();
        let sender = DmarcSender {
            settings,
            hostname: hostname.clone(),
            resolver: parts.resolver,
            committer: parts.committer,
            signer: parts.signer,
            metrics: parts.metrics,
        };
        ReportJob::with_sender(parts.counters, hostname, sender)
    }
}

impl DmarcSender {
    async fn send_to(
        &self,
        domain: &str,
        destination: &Destination,
        built: &mail_auth::report::Report,
        gzipped: &[u8],
        reporting_domain: &str,
    ) -> Outcome {
        let target = destination.domain();
        if record::is_external(domain, &target) {
            // RFC 7489 7.1: the destination must say it takes reports about `domain`.
            let name = record::authorization_name(domain, &target);
            match self.resolver.txt(&name).await {
                Ok(txt) if record::authorizes(&txt.value) => {}
                Ok(_) | Err(DnsError::NoSuchDomain(_)) => {
                    return Outcome::Skipped(
                        "not_authorized",
                        format!(
                            "{target} is outside {domain}'s organisation and publishes no \
                             v=DMARC1 record at {name} (RFC 7489 7.1)"
                        ),
                    )
                }
                Err(e) => return Outcome::Failed(format!("{name}: {e}")),
            }
        }
        let message_id = format!("{}@{reporting_domain}", QueueId::generate());
        let date = crate::datetime::rfc5322(SystemTime::now());
        let message = report::mail(&MailParts {
            report: built,
            submitter: reporting_domain,
            from: &self.settings.from,
            to: &destination.address,
            gzipped,
            message_id: &message_id,
            date: &date,
        });
        if let Some(limit) = destination.max_size {
            // RFC 7489 6.4: the limit is the destination's; the whole mail is measured (the
            // signature adds a few hundred bytes more).
            if message.len() as u64 > limit {
                return Outcome::Skipped(
                    "too_large",
                    format!(
                        "the report mail has {} bytes, the destination takes at most {limit}",
                        message.len()
                    ),
                );
            }
        }
        let mail = ReportMail {
            from: &self.settings.from,
            to: &destination.address,
            message,
            hostname: &self.hostname,
        };
        match queue_report(&self.committer, mail, self.signer.as_deref()).await {
            Ok(()) => Outcome::Queued,
            Err(e) => Outcome::Failed(e),
        }
    }
}

/// RFC 7489 7.1 and 7.2: what [`ReportJob`] needs to send DMARC aggregate reports.
impl ReportSender for DmarcSender {
    type Counts = DomainDay;

    type Request = ReportRequest;

    /// RFC 7489 6.6.3: the record at `_dmarc.<domain>`, else at the parent domains' (the
    /// organisational domain's record covers its subdomains), as far as two labels.
    async fn lookup(&self, domain: &str) -> Result<ReportRequest, LookupError> {
        let mut name = domain;
        loop {
            let query = format!("_dmarc.{name}");
            let found = match self.resolver.txt(&query).await {
                Ok(txt) => record::parse_records(&txt.value),
                Err(DnsError::NoSuchDomain(_)) => Err(RecordError::None),
                Err(e) => return Err(LookupError::Dns(format!("{query}: {e}"))),
            };
            match found {
                Err(RecordError::None) => match name.split_once('.') {
                    Some((_, parent)) if parent.contains('.') => name = parent,
                    _ => return Err(LookupError::NoReports(RecordError::None.to_string())),
                },
                other => return other.map_err(|e| LookupError::NoReports(e.to_string())),
            }
        }
    }

    /// Builds the report and mails it to every `rua=mailto:` destination not served yet.
    async fn send(
        &self,
        run: &mut DomainRun<'_, DomainDay>,
        counts: &DomainDay,
        request: ReportRequest,
    ) -> Finish {
        let domain = run.domain;
        let reporting_domain = self.settings.reporting_domain();
        let reporter = Reporter {
            organization_name: &self.settings.organization_name,
            email: &self.settings.from,
            contact_info: &self.settings.contact_info,
            domain: &reporting_domain,
        };
        let built = report::build(reporter, domain, counts, run.range());
        let xml = report::to_xml(&built, request.pct);
        let gzipped = match report::gzip(&xml) {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "gzip of a DMARC report failed");
                return Finish::Unchanged;
            }
        };
        let mut all_done = true;
        for destination in &request.rua {
            if run.already_sent(counts, &destination.uri) {
                continue;
            }
            let outcome = self
                .send_to(domain, destination, &built, &gzipped, &reporting_domain)
                .await;
            let (label, detail) = match outcome {
                Outcome::Queued => {
                    tracing::info!(domain, rua = %destination.uri,
                        report_id = %built.report_id(), "DMARC report sent");
                    ("mailto", built.report_id().to_string())
                }
                Outcome::Skipped(label, reason) => {
                    tracing::warn!(domain, rua = %destination.uri, %reason,
                        "DMARC report not sent to this destination");
                    (label, reason)
                }
                Outcome::Failed(reason) => {
                    all_done = false;
                    tracing::warn!(domain, rua = %destination.uri, %reason,
                        "DMARC report not sent");
                    ("failed", reason)
                }
            };
            self.metrics
                .dmarc_reports_sent
                .with_label_values(&[label])
                .inc();
            if label != "failed" {
                // Sent, or never to be sent to this destination: either way done with it.
                run.mark_sent(&destination.uri);
            }
            run.push(&destination.uri, label, detail);
        }
        if request.rua.is_empty() {
            run.push("", "no_record", "no mailto: destination in rua".into());
        }
        if all_done {
            Finish::Done
        } else {
            Finish::Retry("not every destination took the report".into())
        }
    }
}
