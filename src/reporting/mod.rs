//! Aggregate reports tlsgate sends to other domains: SMTP TLS reports (RFC 8460, D3) in
//! [`tls`] and DMARC aggregate reports (RFC 7489 section 7.2, D4) in [`dmarc`].
//!
//! What both share lives here, once: the UTC day arithmetic (both count per UTC day), the
//! durable day files ([`DayFiles`]: one JSON file per day, written atomically), where a day's
//! report to one domain stands ([`SendState`]), the counters kept per day and domain
//! ([`DayStore`]), the daily job that sends the reports ([`ReportJob`]), the DKIM signer
//! of a reporting domain ([`signer_for`]) and the hand-over of a report mail to tlsgate's
//! own queue ([`queue_report`]).

pub mod daily;
pub mod days;
pub mod dmarc;
pub mod tls;

pub use daily::{DomainRun, Finish, LookupError, ReportJob, ReportSender};
pub use days::{Counted, Day, DayStore, DomainCounts, OncePerDay};

use crate::auth::OutboundSigner;
use crate::config::Role;
use crate::domain::Domain;
use crate::queue::message::{
    unix_now, DsnNotify, MessageMeta, NewMessage, QueueId, Reception, Recipient,
};
use crate::queue::Committer;
use crate::smtp::command::BodyType;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The number of the UTC day of `t` (days since 1970-01-01).
pub fn day_of(t: SystemTime) -> i64 {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    secs.div_euclid(86_400)
}

/// `YYYY-MM-DD` of a day number.
pub fn day_name(day: i64) -> String {
    let start = time::OffsetDateTime::from_unix_timestamp(day.saturating_mul(86_400))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let d = start.date();
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The day number of a `YYYY-MM-DD` name.
pub fn parse_day_name(name: &str) -> Option<i64> {
    let mut parts = name.splitn(3, '-');
    let year = parts.next()?.parse().ok()?;
    let month = parts.next()?.parse().ok()?;
    let day = parts.next()?.parse().ok()?;
    crate::datetime::days_since_epoch(year, month, day)
}

/// Where the day's report to one domain stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendState {
    /// The `rua` targets that got the report (RFC 8460 3, RFC 7489 7.2: each at most once).
    pub sent_to: Vec<String>,
    /// Runs of the sending job that did not finish the report.
    pub tries: u32,
    /// Nothing more to do: sent to every `rua`, no record asking for reports, or given up.
    pub finished: bool,
    /// What the last run saw, for `… show` (`no TLSRPT record`, an error).
    pub note: Option<String>,
}

/// What one run of a sending job did for one target, for the admin API and the log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// The domain the report is about (policy domain, author domain).
    pub domain: String,
    /// The target URI; empty when the domain asks for no reports.
    pub rua: String,
    /// What happened: `mailto`, `https`, `failed`, `no_record`, and the job's own values.
    pub result: String,
    /// The report id, or what went wrong.
    pub detail: String,
}

/// Runs `run` a minute after start (catching up on days a stopped relay missed) and then
/// daily shortly after 00:00 UTC, at a fixed offset of 5 to 35 minutes derived from
/// `hostname` so that many relays do not all send at once; until `shutdown`. `run` returns
/// how many targets it tried (logged with `what`).
pub async fn run_daily<F, Fut>(
    hostname: &str,
    shutdown: tokio_util::sync::CancellationToken,
    what: &str,
    mut run: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let offset = 300 + hostname.bytes().map(u64::from).sum::<u64>() % 1800;
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
        let targets = run().await;
        tracing::info!(targets, "daily {what} report run done");
        let now = unix_now();
        let next_midnight = (now / 86_400 + 1) * 86_400;
        wait = Duration::from_secs(next_midnight + offset - now);
    }
}

/// A day file that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct CountersError {
    /// The file or directory.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// One directory of day files `YYYY-MM-DD.json`, each the counters of one UTC day, written
/// atomically (temporary file, `fsync`, rename, `fsync` of the directory) so that a crash
/// leaves either the old or the new file, never half of one.
pub struct DayFiles {
    dir: PathBuf,
    /// A file larger than this is not read (it cannot have been written by tlsgate).
    max_size: u64,
}

impl DayFiles {
    /// Opens (creates) `dir` and reads every day file in it as `T`. A file that does not
    /// parse is skipped with a warning naming `what` (kept for the administrator to look at);
    /// files with other names are ignored.
    pub fn open<T: DeserializeOwned>(
        dir: &Path,
        max_size: u64,
        what: &str,
    ) -> Result<(DayFiles, BTreeMap<i64, T>), CountersError> {
        let fail = |path: &Path, e: std::io::Error| CountersError {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
        let files = DayFiles {
            dir: dir.to_path_buf(),
            max_size,
        };
        let mut days = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(|e| fail(dir, e))? {
            let entry = entry.map_err(|e| fail(dir, e))?;
            let path = entry.path();
            let Some(number) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(parse_day_name)
            else {
                continue;
            };
            match files.read(&path) {
                Ok(day) => {
                    days.insert(number, day);
                }
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "{what} counters not read")
                }
            }
        }
        Ok((files, days))
    }

    fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<T, String> {
        use std::io::Read;
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        let mut text = Vec::new();
        file.take(self.max_size + 1)
            .read_to_end(&mut text)
            .map_err(|e| e.to_string())?;
        if text.len() as u64 > self.max_size {
            return Err(format!("larger than {} bytes", self.max_size));
        }
        serde_json::from_slice(&text).map_err(|e| format!("not a day file of tlsgate: {e}"))
    }

    fn path_of(&self, day: i64) -> PathBuf {
        self.dir.join(format!("{}.json", day_name(day)))
    }

    /// Writes `value` as the file of `day`, atomically and durably. Blocking.
    pub fn write<T: Serialize>(&self, day: i64, value: &T) -> Result<(), CountersError> {
        let path = self.path_of(day);
        let temporary = self.dir.join(format!(".{}.json.tmp", day_name(day)));
        let fail = |p: &Path, e: std::io::Error| CountersError {
            path: p.display().to_string(),
            reason: e.to_string(),
        };
        let json = serde_json::to_vec_pretty(value).map_err(|e| CountersError {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut file = std::fs::File::create(&temporary).map_err(|e| fail(&temporary, e))?;
        file.write_all(&json).map_err(|e| fail(&temporary, e))?;
        file.sync_all().map_err(|e| fail(&temporary, e))?;
        drop(file);
        std::fs::rename(&temporary, &path).map_err(|e| fail(&path, e))?;
        // The rename is durable only once the directory is synced.
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(&self.dir, e))
    }

    /// Removes the file of `day` (gone already is fine). Blocking.
    pub fn remove(&self, day: i64) -> Result<(), CountersError> {
        let path = self.path_of(day);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CountersError {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

/// The `[[outbound.dkim]]` signer for `domain`: its own key, else the key of the nearest
/// parent domain (`mx1.example.no` → `example.no`), which RFC 6376 relaxed alignment accepts.
pub fn signer_for<'a, S>(signers: &'a HashMap<Domain, S>, domain: &str) -> Option<&'a S> {
    let mut name = domain;
    loop {
        if let Some(signer) = Domain::parse(name).ok().and_then(|d| signers.get(&d)) {
            return Some(signer);
        }
        let (_, parent) = name.split_once('.')?;
        if !parent.contains('.') {
            return None;
        }
        name = parent;
    }
}

/// Bound of committing a report mail to the queue.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A report mail for the queue: who sends it to whom, and its text.
pub struct ReportMail<'a> {
    /// Envelope sender (the report's From).
    pub from: &'a str,
    /// The one recipient (a `mailto:` target).
    pub to: &'a str,
    /// The whole message, CRLF line ends, not signed yet.
    pub message: Vec<u8>,
    /// `server.hostname`, for the `Received:` field.
    pub hostname: &'a str,
}

/// Puts a report mail into tlsgate's own queue, DKIM-signed by `signer` when given: it is
/// delivered like any mail (TLS policy, retries). NOTIFY=NEVER: a report that cannot be
/// delivered makes no DSN, so that reporters never send each other mail in a loop (RFC 7489
/// 7.2.1.1 asks for that not to happen; RFC 8460 5.3 alike). Returns once the queue holds it
/// durably, or why not.
pub async fn queue_report(
    committer: &Committer,
    mail: ReportMail<'_>,
    signer: Option<&OutboundSigner>,
) -> Result<(), String> {
    let body = match signer {
        Some(signer) => signer.sign(&mail.message).map_err(|e| e.to_string())?,
        None => mail.message,
    };
    let id = QueueId::generate();
    let received_header = format!(
        "Received: by {host} (tlsgate) id {id};\r\n\t{date}\r\n",
        host = mail.hostname,
        date = crate::datetime::rfc5322(SystemTime::now()),
    );
    let meta = MessageMeta {
        id,
        sender: Some(mail.from.to_string()),
        recipients: vec![Recipient {
            address: mail.to.to_string(),
            notify: DsnNotify {
                never: true,
                success: false,
                failure: false,
                delay: false,
            },
            orcpt: None,
        }],
        ret: None,
        envid: None,
        // The report travels base64-encoded; the rest is ASCII.
        body_type: BodyType::SevenBit,
        smtputf8: !mail.to.is_ascii(),
        requiretls: false,
        reception: Reception {
            client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            helo: mail.hostname.to_string(),
            role: Role::Outbound,
            tls: None,
            received_at: unix_now(),
        },
        size: body.len() as u64,
        received_header,
    };
    committer
        .commit_within(NewMessage { meta, body }, COMMIT_TIMEOUT)
        .await
        .map_err(|e| format!("could not queue the report: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_names_round_trip() {
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(day_name(19_844), "2024-05-01");
        assert_eq!(parse_day_name("2024-05-01"), Some(19_844));
        assert_eq!(parse_day_name("2024-02-30"), None);
        assert_eq!(
            day_of(UNIX_EPOCH + Duration::from_secs(19_844 * 86_400 + 86_399)),
            19_844
        );
    }

    #[test]
    fn the_domain_or_a_parent_signs() {
        let mut signers = HashMap::new();
        signers.insert(Domain::parse("example.no").unwrap(), 1);
        assert_eq!(signer_for(&signers, "mx1.example.no"), Some(&1));
        assert_eq!(signer_for(&signers, "example.no"), Some(&1));
        assert_eq!(signer_for(&signers, "example.com"), None);
        assert_eq!(signer_for(&signers, "no"), None);
    }

    #[test]
    fn day_files_round_trip_and_skip_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("2024-05-02.json"), b"not json").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let (files, days) = DayFiles::open::<Vec<u32>>(dir.path(), 1 << 20, "test").unwrap();
        assert!(days.is_empty());
        files.write(19_844, &vec![1u32, 2]).unwrap();
        let (files, days) = DayFiles::open::<Vec<u32>>(dir.path(), 1 << 20, "test").unwrap();
        assert_eq!(days[&19_844], [1, 2]);
        files.remove(19_844).unwrap();
        files.remove(19_844).unwrap();
        assert!(!dir.path().join("2024-05-01.json").exists());
    }
}
