//! The daily sending job both aggregate reports run: DMARC (RFC 7489 section 7.2: a report
//! per author domain and UTC day) and TLS reporting (RFC 8460 sections 3 and 4: a report per
//! policy domain and UTC day). Which days are due, which domains still wait for their
//! report, how a run's outcome is booked ([`super::SendState`]: finished, retried, given
//! up), and when the counters are flushed and pruned is the same for both ([`ReportJob`]);
//! how one domain's report is looked up, built and delivered is each report's own
//! ([`ReportSender`]).

use super::days::{DayStore, DomainCounts, FLUSH_INTERVAL};
use super::{day_name, day_of, run_daily, Sent};
use crate::queue::message::unix_now;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;

/// Daily runs that may fail to send a day's report before it is given up.
pub const MAX_TRIES: u32 = 3;

/// How sending one domain's report went, for its [`super::SendState`] (booked for finished
/// days only: the running day's report is a preview, and the full one still goes out after
/// midnight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The domain asks for no reports (no usable record): finished for good, with why.
    NoReports(String),
    /// Every target took the report or never will: finished.
    Done,
    /// Something failed (a lookup, a target): tried again at the next run, with why, until
    /// [`MAX_TRIES`] runs gave up on it.
    Retry(String),
    /// Nothing was tried (the report could not be built): the state stays as it is.
    Unchanged,
}

/// One domain's report of one day while it is being sent: what it is about, and the lines
/// of the run's answer ([`Sent`]) it adds.
pub struct DomainRun<'a, D> {
    /// The UTC day number.
    pub day: i64,
    /// The running day, sent so far (`include_today`): nothing is marked as sent.
    pub partial: bool,
    /// The domain the report is about (author domain, policy domain).
    pub domain: &'a str,
    day_text: String,
    counters: &'a DayStore<D>,
    out: &'a mut Vec<Sent>,
}

impl<D: DomainCounts> DomainRun<'_, D> {
    /// Adds the answer line for target `rua` (empty: none) with its `result` label and
    /// `detail` (the report id, or what went wrong).
    pub fn push(&mut self, rua: &str, result: &str, detail: String) {
        self.out.push(Sent {
            day: self.day_text.clone(),
            domain: self.domain.to_string(),
            rua: rua.to_string(),
            result: result.to_string(),
            detail,
        });
    }

    /// The report's time range in Unix seconds: the whole UTC day, or for the running day
    /// its start until now.
    pub fn range(&self) -> (i64, i64) {
        let start = self.day * 86_400;
        let end = if self.partial {
            i64::try_from(unix_now()).unwrap_or(start)
        } else {
            start + 86_399
        };
        (start, end)
    }

    /// Whether target `uri` took this day's report at an earlier run (RFC 7489 7.2, RFC 8460
    /// 3: each target gets it once). Never for the running day, whose report is a preview.
    pub fn already_sent(&self, counts: &D, uri: &str) -> bool {
        !self.partial && counts.report().sent_to.iter().any(|sent| sent == uri)
    }

    /// Marks target `uri` done with this day's report (it took it, or never will); nothing
    /// for the running day. Written at the flush after the domain.
    pub fn mark_sent(&self, uri: &str) {
        if !self.partial {
            self.counters
                .update_report(self.day, self.domain, |r| r.sent_to.push(uri.to_string()));
        }
    }
}

/// What a domain's record says about its reports, when it does not name a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The domain asks for no reports (no usable record): nothing to send, ever.
    NoReports(String),
    /// The lookup failed: try again at the next run.
    Dns(String),
}

/// How one kind of report is looked up and sent for one domain: implemented by the DMARC
/// sender (RFC 7489 7.1 and 7.2) and the TLS report sender (RFC 8460 3 and 5); the job
/// around it is [`ReportJob`]'s.
pub trait ReportSender: Send + Sync + 'static {
    /// What one domain's day holds.
    type Counts: DomainCounts;

    /// What the domain's record asks for (its targets, and what else the report needs).
    type Request: Send;

    /// Looks up what `domain` asks for.
    fn lookup(
        &self,
        domain: &str,
    ) -> impl Future<Output = Result<Self::Request, LookupError>> + Send;

    /// Builds `run.domain`'s report from `counts` and sends it to every target of `request`
    /// not in [`DomainRun::already_sent`], marking each done with [`DomainRun::mark_sent`]
    /// and answering a line per target with [`DomainRun::push`].
    fn send(
        &self,
        run: &mut DomainRun<'_, Self::Counts>,
        counts: &Self::Counts,
        request: Self::Request,
    ) -> impl Future<Output = Finish> + Send;
}

/// The relay's reporting of one kind: its counters ([`DayStore`]), and the daily job that
/// sends the reports from them with `S`.
pub struct ReportJob<S: ReportSender> {
    counters: Arc<DayStore<S::Counts>>,
    /// `server.hostname`: the daily run's time is derived from it.
    hostname: String,
    /// One run at a time (the daily job and `… send` from the admin API).
    running: tokio::sync::Mutex<()>,
    sender: S,
}

impl<S: ReportSender> ReportJob<S> {
    /// The job over `counters` for the relay `hostname`, sending with `sender`.
    pub fn with_sender(
        counters: Arc<DayStore<S::Counts>>,
        hostname: String,
        sender: S,
    ) -> ReportJob<S> {
        ReportJob {
            counters,
            hostname,
            running: tokio::sync::Mutex::new(()),
            sender,
        }
    }

    /// The counters (also what the relay records into).
    pub fn counters(&self) -> &Arc<DayStore<S::Counts>> {
        &self.counters
    }

    /// Writes the counters to disk now (off the async threads); a failure is logged and
    /// tried again at the next flush.
    pub async fn flush(&self) {
        let counters = self.counters.clone();
        let name = counters.name();
        match tokio::task::spawn_blocking(move || counters.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "{name} report counters not written"),
            Err(e) => tracing::error!(error = %e, "{name} report counters flush panicked"),
        }
    }

    /// Flushes every [`FLUSH_INTERVAL`] until `shutdown`, then once more (a clean stop loses
    /// no counts).
    pub async fn flush_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_INTERVAL) => self.flush().await,
                _ = shutdown.cancelled() => break,
            }
        }
        self.flush().await;
    }

    /// Runs [`ReportJob::send_due`] a minute after start (catching up on days a stopped
    /// relay missed) and then daily shortly after 00:00 UTC ([`run_daily`]), until
    /// `shutdown`.
    pub async fn daily_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let hostname = self.hostname.clone();
        run_daily(&hostname, shutdown, self.counters.name(), || {
            let reporting = self.clone();
            async move { reporting.send_due(false).await.len() }
        })
        .await;
    }

    /// Sends every due report: the finished days' reports not sent yet (and with
    /// `include_today`, the running day's so far, without marking it: the full day's report
    /// still goes out after midnight). A finished day's outcome is flushed after each
    /// domain, so that a crash does not forget which targets got their report; at the end
    /// the days no longer needed are pruned. Returns one line per target tried.
    pub async fn send_due(&self, include_today: bool) -> Vec<Sent> {
        let _one_run = self.running.lock().await;
        let today = day_of(SystemTime::now());
        let mut out = Vec::new();
        for (day, counts) in self.counters.days() {
            let partial = day == today;
            if day > today || (partial && !include_today) {
                continue;
            }
            for (domain, domain_day) in &counts.domains {
                if !partial && domain_day.report().finished {
                    continue;
                }
                let mut run = DomainRun {
                    day,
                    partial,
                    domain,
                    day_text: day_name(day),
                    counters: &self.counters,
                    out: &mut out,
                };
                let finish = match self.sender.lookup(domain).await {
                    Ok(request) => self.sender.send(&mut run, domain_day, request).await,
                    Err(LookupError::NoReports(why)) => {
                        // Nothing to send, ever: booked as finished with why.
                        run.push("", "no_record", why.clone());
                        Finish::NoReports(why)
                    }
                    Err(LookupError::Dns(why)) => {
                        run.push("", "failed", why.clone());
                        Finish::Retry(why)
                    }
                };
                if !partial {
                    book(&self.counters, day, domain, finish);
                    self.flush().await;
                }
            }
        }
        self.counters.prune(today);
        self.flush().await;
        out
    }
}

/// Books `finish` in the report state of `domain` on `day`. A retry counts a try; the
/// [`MAX_TRIES`]-th gives the report up (finished, logged) rather than keep it for ever.
fn book<D: DomainCounts>(counters: &DayStore<D>, day: i64, domain: &str, finish: Finish) {
    let name = counters.name();
    match finish {
        Finish::NoReports(note) => counters.update_report(day, domain, |r| {
            r.finished = true;
            r.note = Some(note);
        }),
        Finish::Done => counters.update_report(day, domain, |r| {
            r.finished = true;
            r.note = None;
        }),
        Finish::Retry(note) => counters.update_report(day, domain, |r| {
            r.tries += 1;
            if r.tries >= MAX_TRIES {
                r.finished = true;
                tracing::warn!(domain, tries = r.tries, "{name} report given up");
            }
            r.note = Some(note);
        }),
        Finish::Unchanged => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reporting::days::tests::Hits;

    /// A failing report is retried at the next runs and given up after `MAX_TRIES`; a report
    /// that went out clears the note of an earlier failure.
    #[test]
    fn retries_are_counted_and_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let counters = DayStore::<Hits>::open_files(dir.path(), "test", 1 << 20).unwrap();
        counters.count(1, "a.test", 10, |_, _| {});
        counters.count(1, "b.test", 10, |_, _| {});
        let state = |domain: &str| counters.days()[&1].domains[domain].report.clone();
        for n in 1..MAX_TRIES {
            book(&counters, 1, "a.test", Finish::Retry("down".into()));
            assert_eq!(
                (state("a.test").tries, state("a.test").finished),
                (n, false)
            );
        }
        book(&counters, 1, "a.test", Finish::Retry("down".into()));
        assert!(state("a.test").finished);
        assert_eq!(state("a.test").note.as_deref(), Some("down"));

        book(&counters, 1, "b.test", Finish::Retry("down".into()));
        book(&counters, 1, "b.test", Finish::Unchanged);
        assert_eq!(state("b.test").tries, 1);
        book(&counters, 1, "b.test", Finish::Done);
        assert!(state("b.test").finished);
        assert_eq!(state("b.test").note, None);
    }
}
