//! Sending the daily TLS reports (RFC 8460 sections 3 and 5): once a day, for each policy
//! domain with counters for a finished UTC day, look up its TLSRPT record, build the report and
//! send it to every `rua`: `mailto:` as a DKIM-signed message through tlsgate's own queue,
//! `https:` by POST.
//!
//! A report is marked sent to a target after the target took it (the queue committed the
//! mail durably, or the server answered 2xx), and the mark is flushed at once: a crash in
//! between sends that report again at the next run (the same `report-id` lets the partner see
//! the duplicate) rather than lose it. A target that fails is tried again at the next daily
//! run; after [`MAX_TRIES`] runs the day's report for that domain is given up.

use super::counters::{DomainDay, TlsCounters};
use super::record::{parse_records, Rua};
use super::report::{self, Reporter};
use crate::auth::OutboundSigner;
use crate::config::{Config, TlsReportingSection};
use crate::dns::Resolver;
use crate::metrics::Metrics;
use crate::queue::Committer;
use crate::reporting::{
    queue_report, DomainRun, Finish, LookupError, ReportJob, ReportMail, ReportSender,
};
use crate::tls::client::ClientTls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::reporting::daily::MAX_TRIES;

/// Bound of one HTTPS POST, connection included (RFC 8460 5.4 sets none; a minute is what a
/// healthy collector needs at most).
const HTTPS_TIMEOUT: Duration = Duration::from_secs(60);
const HTTPS_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub use crate::reporting::Sent;

/// The relay's TLS reporting: the counters, and the daily job that sends from them
/// ([`ReportJob`]: `counters`, `flush`, `flush_loop`, `daily_loop`, `send_due`).
pub type TlsReporting = ReportJob<TlsSender>;

/// What sending TLS reports needs: the settings, the resolver for the records, the queue and
/// the signer for `mailto:` reports, the HTTPS client for `https:` ones.
pub struct TlsSender {
    settings: TlsReportingSection,
    hostname: String,
    resolver: Arc<dyn Resolver>,
    committer: Committer,
    signer: Option<Arc<OutboundSigner>>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

/// Why TLS reporting could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The HTTPS client could not be built.
    #[error("TLS reporting: HTTPS client: {0}")]
    Http(String),
}

pub use crate::reporting::signer_for;

/// The `check-config` warning for `[tls_reporting]` without a DKIM key for the submitter
/// (RFC 8460 3: `mailto:` reports must be signed, so they are not sent).
pub fn missing_key_warning(config: &Config) -> Option<String> {
    let settings = config.tls_reporting.as_ref()?;
    let covered = config.outbound.dkim.iter().any(|k| {
        let d = k.domain.as_str();
        settings.submitter == d || settings.submitter.ends_with(&format!(".{d}"))
    });
    (!covered).then(|| {
        format!(
            "tls_reporting: no [[outbound.dkim]] key for the submitter domain {} (or a parent): \
             mailto: TLS reports will not be sent (RFC 8460 3 requires DKIM), https: ones will",
            settings.submitter
        )
    })
}

/// Resolves host names of `https:` targets through the relay's resolver (the test DNS in
/// tests, and the same answers delivery sees).
struct ViaResolver(Arc<dyn Resolver>);

impl reqwest::dns::Resolve for ViaResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let answer = resolver
                .addresses(&host)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            let addrs: Vec<SocketAddr> = answer
                .value
                .ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The parts of the relay TLS reporting uses.
pub struct Parts {
    /// The counters (also the delivery path's sink).
    pub counters: Arc<TlsCounters>,
    /// The relay's resolver.
    pub resolver: Arc<dyn Resolver>,
    /// The queue, for `mailto:` reports.
    pub committer: Committer,
    /// The signer of the submitter domain ([`signer_for`]), when configured.
    pub signer: Option<Arc<OutboundSigner>>,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
}

impl TlsReporting {
    /// Sets TLS reporting up for `settings`; `client_tls` gives the trust roots of `https:`
    /// targets (the same as delivery's).
    pub fn new(
        config: &Config,
        settings: TlsReportingSection,
        parts: Parts,
        client_tls: &ClientTls,
    ) -> Result<TlsReporting, SetupError> {
        let Parts {
            counters,
            resolver,
            committer,
            signer,
            metrics,
        } = parts;
        let tls = client_tls
            .https_client_config()
            .map_err(|e| SetupError::Http(e.to_string()))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            // RFC 8460 5.4 posts to the URI as published; a redirect could point anywhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(HTTPS_CONNECT_TIMEOUT)
            .timeout(HTTPS_TIMEOUT)
            .user_agent(concat!("tlsgate/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(ViaResolver(resolver.clone())))
            .build()
            .map_err(|e| SetupError::Http(e.to_string()))?;
        if signer.is_none() {
            tracing::warn!(
                submitter = %settings.submitter,
                "no [[outbound.dkim]] key for the TLS report submitter: mailto: reports will \
                 not be sent"
            );
        }
        let hostname = config.server.hostname.clone();
        let sender = TlsSender {
            settings,
            hostname: hostname.clone(),
            resolver,
            committer,
            signer,
            http,
            metrics,
        };
        Ok(ReportJob::with_sender(counters, hostname, sender))
    }
}

impl TlsSender {
    /// RFC 8460 5.3: the report mail, DKIM-signed (section 3), into the queue from
    /// `tls_reporting.from` with NOTIFY=NEVER (a report that cannot be delivered makes no
    /// DSN: no mail loops between reporters).
    async fn send_mail(
        &self,
        report: &report::Report,
        domain: &str,
        to: &str,
        gzipped: &[u8],
        range: (i64, i64),
    ) -> Result<(), SendError> {
        let Some(signer) = &self.signer else {
            return Err(SendError {
                label: "no_dkim_key",
                reason: format!(
                    "no [[outbound.dkim]] key for {}: mailto: reports must be DKIM-signed \
                     (RFC 8460 3)",
                    self.settings.submitter
                ),
            });
        };
        let failed = |reason: String| SendError {
            label: "failed",
            reason,
        };
        let mail = report
            .mail(
                domain,
                &self.settings.submitter,
                &self.settings.from,
                to,
                gzipped,
                range,
            )
            .map_err(|e| failed(e.to_string()))?;
        let mail = ReportMail {
            from: &self.settings.from,
            to,
            message: mail,
            hostname: &self.hostname,
        };
        queue_report(&self.committer, mail, Some(signer))
            .await
            .map_err(failed)
    }

    /// RFC 8460 5.4: POST with `Content-Type: application/tlsrpt+gzip`; a 2xx is success.
    async fn post(&self, url: &str, gzipped: &[u8]) -> Result<(), SendError> {
        let failed = |reason: String| SendError {
            label: "failed",
            reason,
        };
        let response = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/tlsrpt+gzip")
            .body(gzipped.to_vec())
            .send()
            .await
            .map_err(|e| failed(format!("{url}: {}", error_chain(&e))))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(failed(format!("{url}: HTTP {status}")))
        }
    }
}

/// RFC 8460 3 and 5: what [`ReportJob`] needs to send TLS reports.
impl ReportSender for TlsSender {
    type Counts = DomainDay;

    type Request = Vec<Rua>;

    /// RFC 8460 3: the TLSRPT record at `_smtp._tls.<domain>`.
    async fn lookup(&self, domain: &str) -> Result<Vec<Rua>, LookupError> {
        let name = format!("_smtp._tls.{domain}");
        let records = self
            .resolver
            .txt(&name)
            .await
            .map_err(|e| LookupError::Dns(format!("{name}: {e}")))?;
        // No usable TLSRPT record: the domain takes no reports (RFC 8460 3).
        parse_records(&records.value).map_err(|e| LookupError::NoReports(e.to_string()))
    }

    /// Builds the report and sends it to every `rua` not served yet, `mailto:` through the
    /// queue and `https:` by POST.
    async fn send(
        &self,
        run: &mut DomainRun<'_, DomainDay>,
        counts: &DomainDay,
        ruas: Vec<Rua>,
    ) -> Finish {
        let domain = run.domain;
        let range = run.range();
        let reporter = Reporter {
            organization_name: &self.settings.organization_name,
            contact_info: &self.settings.contact_info,
            submitter: &self.settings.submitter,
        };
        let report = report::build(reporter, domain, counts, range);
        let gzipped = match report.gzipped() {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(error = %e, "gzip of a TLS report failed");
                return Finish::Unchanged;
            }
        };
        let mut all_sent = true;
        for rua in ruas {
            let uri = rua.uri();
            if run.already_sent(counts, &uri) {
                continue;
            }
            let result = match &rua {
                Rua::Mailto(address) => self
                    .send_mail(&report, domain, address, &gzipped, range)
                    .await
                    .map(|()| "mailto"),
                Rua::Https(url) => self.post(url, &gzipped).await.map(|()| "https"),
            };
            match result {
                Ok(how) => {
                    self.metrics
                        .tls_reports_sent
                        .with_label_values(&[how])
                        .inc();
                    tracing::info!(domain, rua = %uri, report_id = %report.report_id,
                        "TLS report sent");
                    run.mark_sent(&uri);
                    run.push(&uri, how, report.report_id.clone());
                }
                Err(SendError { label, reason }) => {
                    all_sent = false;
                    self.metrics
                        .tls_reports_sent
                        .with_label_values(&[label])
                        .inc();
                    tracing::warn!(domain, rua = %uri, %reason, "TLS report not sent");
                    run.push(&uri, label, reason);
                }
            }
        }
        if all_sent {
            Finish::Done
        } else {
            Finish::Retry("not every rua took the report".into())
        }
    }
}

/// reqwest's errors hide the cause (certificate, DNS) in their source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

struct SendError {
    label: &'static str,
    reason: String,
}
