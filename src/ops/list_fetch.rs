//! Fetching the domain list from `domain_list.url` (T10: "an optional HTTPS URL can be fetched
//! on a schedule"; issue 15 item 5), at start and every `domain_list.fetch_interval`.
//!
//! The fetch is HTTPS only (config refuses `http:`), checked against the public roots plus
//! `outbound.extra_trust_roots` (`ClientTls::https_client_config`, as MTA-STS fetches), names
//! resolved by the relay's own resolver, redirects followed only to `https:` and at most
//! [`MAX_REDIRECTS`], the body bounded to [`MAX_LIST_BYTES`] and the whole fetch to
//! [`FETCH_TIMEOUT`]. A fetched body is written next to `domain_list.path` with the same
//! extension and loaded with the same function and refusal rules as the file itself
//! ([`DomainList::load`]); only a body that loads replaces the file, atomically (temporary
//! file, fsync, rename, fsync of the directory), and then goes through the normal reload
//! (logged, audited, counted). A fetch that fails — TLS, HTTP status, size, time, a body the
//! rules refuse, an empty list — changes nothing: the list in force and its file stay.
//!
//! A body equal to the file is not written again, so the file's modification time keeps
//! saying when the list last changed (`domain_list.age_from = "file"`, the T10 age warning).

use crate::dns::Resolver;
use crate::metrics::Metrics;
use crate::ops::domain_list::DomainListService;
use crate::policy::domain_list::{DomainList, ListError, Reloaded};
use crate::tls::client::ClientTls;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// The largest list accepted: the published list has a few hundred rows; an `.xlsx` of it is
/// well under a megabyte.
pub const MAX_LIST_BYTES: usize = 16 * 1024 * 1024;

/// The whole fetch, name resolution and body included, ends after this.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Redirects followed (each to `https:` only).
pub const MAX_REDIRECTS: usize = 5;

/// Why a fetch changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The list could not be fetched: connection, TLS, HTTP status, size or time.
    #[error("{0}")]
    Fetch(String),
    /// The body is no list the rules accept (the same rules as for the file).
    #[error("the fetched list is refused: {0}")]
    Refused(ListError),
    /// The list could not be saved to `domain_list.path`.
    #[error("cannot save the fetched list to {path}: {cause}")]
    Save {
        /// The file written (the temporary file or the list itself).
        path: String,
        /// Why.
        cause: std::io::Error,
    },
}

impl FetchError {
    /// The `result` label of `tlsgate_domain_list_fetch_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            FetchError::Fetch(_) => "fetch_error",
            FetchError::Refused(_) => "refused",
            FetchError::Save { .. } => "save_error",
        }
    }
}

/// The last fetch, for `tlsgate domains status` and the admin API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FetchStatus {
    /// When it ended (RFC 3339).
    pub at: String,
    /// `ok`, `fetch_error`, `refused` or `save_error`.
    pub result: String,
    /// What happened in words (`unchanged: 12 domains`, `reloaded: 12 → 13 domains`, or the
    /// error).
    pub detail: String,
    /// The last fetch that succeeded (RFC 3339); `None` when none has since start.
    pub last_ok_at: Option<String>,
}

/// Fetches `domain_list.url` on schedule and installs what loads.
pub struct ListFetcher {
    /// `domain_list.url`.
    url: reqwest::Url,
    /// `domain_list.path`: where the fetched list is saved.
    path: PathBuf,
    /// `domain_list.fetch_interval`.
    every: Duration,
    /// The HTTPS client (roots, redirect rule, resolver, bounds).
    client: reqwest::Client,
    /// The list in force; a saved list is reloaded through it (logged, audited, counted).
    service: Arc<DomainListService>,
    /// `tlsgate_domain_list_fetch_*`.
    metrics: Arc<Metrics>,
    /// The last fetch.
    status: Mutex<Option<FetchStatus>>,
}

impl ListFetcher {
    /// A fetcher of `url` into `path` every `every`, over `tls`'s HTTPS configuration, names
    /// resolved by `resolver`. Fails only when the HTTP client cannot be built.
    pub fn new(
        url: &str,
        path: &Path,
        every: Duration,
        (tls, resolver): (&ClientTls, Arc<dyn Resolver>),
        service: Arc<DomainListService>,
        metrics: Arc<Metrics>,
    ) -> Result<ListFetcher, FetchError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| FetchError::Fetch(format!("domain_list.url {url:?}: {e}")))?;
        let config = tls
            .https_client_config()
            .map_err(|e| FetchError::Fetch(format!("TLS configuration: {e}")))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .redirect(reqwest::redirect::Policy::custom(|attempt| {
                // The list must come over validated TLS all the way: a redirect to http:
                // would let anyone on the path shorten it.
                if attempt.url().scheme() != "https" {
                    let to = attempt.url().to_string();
                    attempt.error(format!("refused redirect to {to}: not https"))
                } else if attempt.previous().len() > MAX_REDIRECTS {
                    attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
                } else {
                    attempt.follow()
                }
            }))
            .dns_resolver(Arc::new(RelayResolver(resolver)))
            .no_proxy()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("tlsgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Fetch(format!("HTTP client: {e}")))?;
        Ok(ListFetcher {
            url,
            path: path.to_path_buf(),
            every,
            client,
            service,
            metrics,
            status: Mutex::new(None),
        })
    }

    /// `domain_list.url`.
    pub fn url(&self) -> &str {
        self.url.as_str()
    }

    /// `domain_list.fetch_interval`.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The last fetch; `None` before the first.
    pub fn status(&self) -> Option<FetchStatus> {
        self.lock().clone()
    }

    /// Fetches at once and then every `fetch_interval`, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let started = tokio::time::Instant::now();
            tokio::select! {
                _ = self.fetch_once() => {}
                _ = shutdown.cancelled() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep_until(started + self.every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One fetch: download, check, save, reload; logged, counted and kept for the status.
    pub async fn fetch_once(&self) -> Result<Reloaded, FetchError> {
        let result = self.fetch_and_install().await;
        let now = SystemTime::now();
        self.metrics.domain_list_fetch_timestamp.set(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        );
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => e.metric_label(),
        };
        self.metrics
            .domain_list_fetches
            .with_label_values(&[label])
            .inc();
        let at = crate::datetime::format_rfc3339(now);
        let mut status = self.lock();
        let last_ok_at = match &result {
            Ok(_) => Some(at.clone()),
            Err(_) => status.as_ref().and_then(|s| s.last_ok_at.clone()),
        };
        let detail = match &result {
            Ok(done) => done.to_string(),
            Err(e) => {
                tracing::error!(url = %self.url, error = %e,
                    "domain list fetch failed, the list in force stays (T10)");
                e.to_string()
            }
        };
        *status = Some(FetchStatus {
            at,
            result: label.to_string(),
            detail,
            last_ok_at,
        });
        result
    }

    async fn fetch_and_install(&self) -> Result<Reloaded, FetchError> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.download())
            .await
            .unwrap_or_else(|_| {
                Err(FetchError::Fetch(format!(
                    "{}: no answer within {}",
                    self.url,
                    humantime::format_duration(FETCH_TIMEOUT)
                )))
            })?;
        let path = self.path.clone();
        // Writing, fsync and loading are blocking work: off the async threads.
        let changed = tokio::task::spawn_blocking(move || install(&path, &body))
            .await
            .map_err(|e| FetchError::Save {
                path: self.path.display().to_string(),
                cause: std::io::Error::other(e.to_string()),
            })??;
        if !changed {
            let handle = self.service.handle();
            return Ok(Reloaded::Unchanged {
                domains: handle.current().len(),
                sha256: handle.sha256(),
            });
        }
        tracing::info!(url = %self.url, path = %self.path.display(),
            "fetched domain list saved, reloading it");
        // The normal reload: logged, audited and counted like SIGHUP's.
        let service = self.service.clone();
        tokio::task::spawn_blocking(move || service.reload())
            .await
            .map_err(|e| FetchError::Save {
                path: self.path.display().to_string(),
                cause: std::io::Error::other(e.to_string()),
            })?
            .map_err(FetchError::Refused)
    }

    /// The body, when the server answers 200 with at most [`MAX_LIST_BYTES`].
    async fn download(&self) -> Result<Vec<u8>, FetchError> {
        let url = &self.url;
        let mut response = self
            .client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| FetchError::Fetch(format!("{url}: {}", error_chain(&e))))?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(FetchError::Fetch(format!(
                "{url} answered HTTP {}",
                response.status()
            )));
        }
        let too_large =
            || FetchError::Fetch(format!("{url} is larger than {MAX_LIST_BYTES} bytes"));
        if response
            .content_length()
            .is_some_and(|n| n > MAX_LIST_BYTES as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Fetch(format!("{url}: {}", error_chain(&e))))?
        {
            if body.len() + chunk.len() > MAX_LIST_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn lock(&self) -> MutexGuard<'_, Option<FetchStatus>> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Writes `body` next to `path` (same directory, same extension, so the loader reads it as it
/// would read the list itself), loads it with [`DomainList::load`], and renames it over `path`
/// when it loads and differs from the file. `Ok(false)`: the file already holds this list.
fn install(path: &Path, body: &[u8]) -> Result<bool, FetchError> {
    let temp = temp_path(path);
    let save_error = |p: &Path, cause| FetchError::Save {
        path: p.display().to_string(),
        cause,
    };
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(body)?;
        file.sync_all()?;
        // The list keeps its file's permissions.
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&temp, meta.permissions())?;
        }
        Ok(())
    })();
    if let Err(cause) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(save_error(&temp, cause));
    }
    if let Err(e) = DomainList::load(&temp) {
        let _ = std::fs::remove_file(&temp);
        return Err(FetchError::Refused(e));
    }
    if std::fs::read(path).is_ok_and(|current| current == body) {
        let _ = std::fs::remove_file(&temp);
        return Ok(false);
    }
    if let Err(cause) = std::fs::rename(&temp, path) {
        let _ = std::fs::remove_file(&temp);
        return Err(save_error(path, cause));
    }
    // The rename is durable once the directory is synced.
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|cause| save_error(dir, cause))?;
    }
    Ok(true)
}

/// `dir/.NAME.fetched.EXT` for `dir/NAME.EXT`: hidden, and with the list's own extension.
fn temp_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "domain-list".into());
    let name = match path.extension() {
        Some(ext) => format!(".{stem}.fetched.{}", ext.to_string_lossy()),
        None => format!(".{stem}.fetched"),
    };
    path.with_file_name(name)
}

/// An error with its causes, for the log (reqwest's own text stops at the outermost).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut words = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        words = format!("{words}: {c}");
        cause = c.source();
    }
    words
}

/// Names in the URL (and in redirects) resolved by the relay's resolver, like every other
/// name tlsgate looks up (tests serve it from their zones).
struct RelayResolver(Arc<dyn Resolver>);

impl reqwest::dns::Resolve for RelayResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found = resolver.addresses(&host).await.map_err(
                |e| -> Box<dyn std::error::Error + Send + Sync> { e.to_string().into() },
            )?;
            // Port 0: reqwest puts in the URL's port (or 443).
            let addrs: Vec<SocketAddr> = found
                .value
                .ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} has no address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temporary_file_keeps_the_extension() {
        assert_eq!(
            temp_path(Path::new("/etc/tlsgate/tvungen-tls.xlsx")),
            Path::new("/etc/tlsgate/.tvungen-tls.fetched.xlsx")
        );
        assert_eq!(
            temp_path(Path::new("/etc/tlsgate/list")),
            Path::new("/etc/tlsgate/.list.fetched")
        );
    }

    #[test]
    fn a_body_that_does_not_load_leaves_the_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("list.csv");
        std::fs::write(&path, "partner.no\n").expect("write");
        let refused = install(&path, b"# nothing here\n").expect_err("empty list refused");
        assert!(matches!(
            refused,
            FetchError::Refused(ListError::Empty { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "partner.no\n"
        );
        assert!(!temp_path(&path).exists(), "temporary file removed");
        assert!(install(&path, b"partner.no\n").is_ok_and(|changed| !changed));
        assert!(install(&path, b"partner.no\nother.no\n").is_ok_and(|changed| changed));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "partner.no\nother.no\n"
        );
    }
}
