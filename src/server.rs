//! Starting and stopping the whole relay: open the queue, load TLS material, bind every
//! listener, and on shutdown drain the sessions and sync the store.
//!
//! Everything that can be wrong with the configuration fails here, before the first
//! connection is accepted (non-negotiable 5): first every file and directory the configuration
//! names is checked ([`crate::startup::ConfigFiles::load`], shared with `check-config`), and
//! only then is anything created.

use crate::admin::{AdminListener, AdminState};
use crate::audit::{AuditConfig, AuditEvent, AuditLog};
use crate::config::{Config, Role};
use crate::delivery::{DeliveryEngine, EngineParts};
use crate::dns::{DnsError, HickoryResolver};
use crate::inbound::limits::ConnectionLimiter;
use crate::inbound::{self, SessionContext};
use crate::metrics::Metrics;
use crate::ops::domain_list::DomainListService;
use crate::ops::domains_status::DomainsStatus;
use crate::ops::list_fetch::ListFetcher;
use crate::ops::partners::{MonitorParts, PartnerMonitor};
use crate::ops::reload::{reload_config, ConfigReloadError};
use crate::ops::retention::apply_audit_retention;
use crate::policy::domain_list::DomainListHandle;
use crate::queue::reopen::Recovery;
use crate::queue::{Committer, QueueEngine, ReopeningStore, Store, StoreError};
use crate::reporting::dmarc::{DmarcCounters, DmarcReporting};
use crate::reporting::tls::{TlsCounters, TlsReporting};
use crate::startup::{self, ConfigFiles, Fault, StartError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the relay did not start. A cause is either part of the message or reported as
/// `source()`, never both, so the CLI's chain says each cause once.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file, directory or address a configuration key names: file, key and reason.
    #[error(transparent)]
    Config(#[from] StartError),
    /// The committer thread could not be started.
    #[error("cannot start the queue committer: {0}")]
    Committer(std::io::Error),
    /// The DNS resolver could not be set up.
    #[error("DNS resolver: {0}")]
    Dns(DnsError),
    /// The admin API's address (the cause is the `source()`).
    #[error("admin API {bind}: cannot bind")]
    Bind {
        /// `admin.bind`.
        bind: SocketAddr,
        /// Why it could not be bound.
        source: std::io::Error,
    },
    /// The admin Unix socket could not be set up.
    #[error("admin.socket: {0}")]
    AdminSocket(std::io::Error),
    /// TLS reporting could not be set up (its counters' directory, the HTTPS client).
    #[error("tls_reporting: {0}")]
    TlsReporting(String),
    /// The DMARC report counters could not be opened.
    #[error("dmarc_reporting: {0}")]
    DmarcReporting(String),
    /// The HTTPS client for `domain_list.url` could not be set up.
    #[error("domain_list.url: {0}")]
    ListFetch(String),
}

/// A started relay.
pub struct RunningServer {
    admin_addr: Option<SocketAddr>,
    admin_socket: Option<std::path::PathBuf>,
    metrics_addr: Option<SocketAddr>,
    domain_list: Arc<DomainListService>,
    sessions_ctx: Arc<SessionContext>,
    listeners: Vec<(Role, SocketAddr)>,
    store: Arc<dyn Store>,
    committer: Committer,
    delivery: DeliveryEngine,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    accept_loops: TaskTracker,
    tls_reporting: Option<Arc<TlsReporting>>,
    dmarc_reporting: Option<Arc<DmarcReporting>>,
}

/// Starts the relay: checks every file the configuration names, then creates `data_dir`,
/// opens the queue and the audit log, and binds every listener.
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    start_with_reports(config, Arc::new(crate::tls_report::NoReports)).await
}

/// As [`start`], with `reports` receiving what MTA-STS reports for TLS reporting (RFC 8460):
/// failed policy fetches and `testing`-mode sessions (tests pass a sink that collects them).
pub async fn start_with_reports(
    config: Config,
    reports: Arc<dyn crate::tls_report::TlsReportSink>,
) -> Result<RunningServer, ServerError> {
    let files = ConfigFiles::load(&config)?;
    startup::create_directory(&config, "server.data_dir", &config.server.data_dir)?;
    let acceptors = startup::tls_acceptors(
        &config,
        files.server_tls,
        &config.listeners,
        &files.client_cas,
    )?;

    let queue_dir = config.queue_dir();
    let queue_key = files.queue_key;
    // S3: sealed with queue.encryption_key (a plaintext queue is re-sealed first); a wrong or
    // missing key refuses the start with the store untouched.
    let engine = config.queue.engine;
    let store = tokio::task::spawn_blocking(move || {
        let store = crate::queue::at_rest::open_store(&queue_dir, engine, queue_key.clone())?;
        // Issue 16 item 4: an I/O error (a full disk) must not stick in the engine until a
        // restart; the committer reopens it with the same engine and key.
        let recovery = match engine {
            QueueEngine::Redb => Recovery::Reopen(Box::new(move || {
                crate::queue::engine::open_with(&queue_dir, engine, queue_key.clone())
            })),
            QueueEngine::Sled => Recovery::Exit(crate::ops::watchdog::exit_stalled),
        };
        Ok::<Arc<dyn Store>, StoreError>(Arc::new(ReopeningStore::new(store, recovery)))
    })
    .await
    .map_err(|e| ServerError::Committer(std::io::Error::other(e)))?
    .map_err(|cause| {
        let path = config.queue_dir().display().to_string();
        let key = match cause {
            StoreError::Encryption(_) => "queue.encryption_key",
            StoreError::WrongEngine(_) => "queue.engine",
            _ => "server.data_dir",
        };
        StartError::new(&config, key, Fault::Queue { path, cause })
    })?;
    let (committer, announced) = Committer::start(store.clone()).map_err(ServerError::Committer)?;
    let client_tls = files.client_tls;
    // One resolver for the whole relay: delivery and sender authentication share it; its
    // DNSSEC mode is `dns.dnssec` (D5).
    let resolver = HickoryResolver::with_dnssec(
        &config.dns.nameservers,
        crate::dns::QUERY_TIMEOUT,
        config.dns.dnssec,
        config.dns.trust_anchor.as_deref(),
    )
    .map_err(ServerError::Dns)?;
    for warning in config.dnssec_warnings() {
        tracing::warn!("{warning}");
    }
    let sender_auth = config.inbound.auth.as_ref().map(|a| {
        Arc::new(crate::auth::Verifier::with_resolver(
            resolver.tokio_resolver(),
            config.server.hostname.clone(),
            a.timeout,
            a.policy.clone(),
        ))
    });
    let resolver = Arc::new(resolver);
    let dkim = files.dkim;
    let domain_list = Arc::new(files.domain_list);
    let metrics = Metrics::new();
    startup::record_certificate_expiry(&config, &metrics);
    let audit_config = AuditConfig {
        dir: config.audit.dir.clone(),
        max_file_bytes: config.audit.max_file_bytes,
        retention: config.audit.retention,
    };
    let audit_log = tokio::task::spawn_blocking(move || AuditLog::open(audit_config))
        .await
        .map_err(|e| ServerError::Committer(std::io::Error::other(e)))?
        .map_err(|e| StartError::new(&config, "audit.dir", Fault::Audit(e)))?;
    let audit_log = Arc::new(audit_log);
    crate::audit::submit(
        &Some(audit_log.clone()),
        AuditEvent::Started {
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
    );
    let list_service = Arc::new(DomainListService::new(
        domain_list.clone(),
        config.domain_list.clone(),
        metrics.clone(),
        Some(audit_log.clone()),
    ));
    list_service.announce();

    let bind_fault =
        |key: &str, addr, cause| StartError::new(&config, key, Fault::Bind { addr, cause });
    let metrics_listener = match config.metrics {
        Some(addr) => Some(
            crate::metrics::bind(addr)
                .await
                .map_err(|cause| bind_fault("metrics.bind", addr, cause))?,
        ),
        None => None,
    };
    // The admin API: access rules first (token file, group), then its listeners.
    let mut admin_listeners = Vec::new();
    let admin_access = match (&config.admin, files.admin_access) {
        (Some(admin), Some(access)) => {
            if let Some(path) = &admin.socket {
                let gid = access.group.as_ref().map(|(gid, _)| *gid);
                let listener = crate::admin::bind_socket(path, admin.socket_mode, gid)
                    .await
                    .map_err(ServerError::AdminSocket)?;
                admin_listeners.push(AdminListener::Socket(listener, path.clone()));
            }
            if let Some(bind) = admin.bind {
                let listener = TcpListener::bind(bind)
                    .await
                    .map_err(|source| ServerError::Bind { bind, source })?;
                admin_listeners.push(AdminListener::Tcp(listener));
            }
            Some(access)
        }
        _ => None,
    };
    let mut bound = Vec::new();
    for (i, l) in config.listeners.iter().enumerate() {
        let key = format!("listener[{i}].bind");
        let socket = TcpListener::bind(l.bind)
            .await
            .map_err(|cause| bind_fault(&key, l.bind, cause))?;
        let local = socket
            .local_addr()
            .map_err(|cause| bind_fault(&key, l.bind, cause))?;
        bound.push((l.clone(), local, socket));
    }

    if config.listeners.iter().any(|l| l.role == Role::Inbound) && config.inbound.next_hop.is_none()
    {
        tracing::warn!(
            "inbound.next_hop is not set: mail for local domains is accepted and kept deferred \
             in the queue until it is"
        );
    }
    let tls_reporting = match &config.tls_reporting {
        Some(settings) => {
            let dir = config.server.data_dir.join("tls-reports");
            let counters = tokio::task::spawn_blocking(move || TlsCounters::open(&dir))
                .await
                .map_err(|e| ServerError::TlsReporting(e.to_string()))?
                .map_err(|e| ServerError::TlsReporting(e.to_string()))?;
            let signer = crate::reporting::tls::signer_for(&dkim, &settings.submitter).cloned();
            let parts = crate::reporting::tls::send::Parts {
                counters: Arc::new(counters),
                resolver: resolver.clone(),
                committer: committer.clone(),
                signer,
                metrics: metrics.clone(),
            };
            let reporting = TlsReporting::new(&config, settings.clone(), parts, &client_tls)
                .map_err(|e| ServerError::TlsReporting(e.to_string()))?;
            Some(Arc::new(reporting))
        }
        None => None,
    };
    let dmarc_reporting = match &config.dmarc_reporting {
        Some(settings) => {
            let dir = config.server.data_dir.join("dmarc-reports");
            let counters = tokio::task::spawn_blocking(move || DmarcCounters::open(&dir))
                .await
                .map_err(|e| ServerError::DmarcReporting(e.to_string()))?
                .map_err(|e| ServerError::DmarcReporting(e.to_string()))?;
            let signer = crate::reporting::signer_for(&dkim, &settings.reporting_domain()).cloned();
            let parts = crate::reporting::dmarc::send::Parts {
                counters: Arc::new(counters),
                resolver: resolver.clone(),
                committer: committer.clone(),
                signer,
                metrics: metrics.clone(),
            };
            Some(Arc::new(DmarcReporting::new(
                &config,
                settings.clone(),
                parts,
            )))
        }
        None => None,
    };
    let tls_reports: Arc<dyn crate::tls_report::TlsReportSink> = match &tls_reporting {
        Some(r) => r.counters().clone(),
        None => Arc::new(crate::tls_report::NoReports),
    };
    let config = Arc::new(config);
    // MTA-STS (RFC 8461, D6): the durable policy cache and its background refresh; failed
    // fetches and `testing` sessions go to the TLS-RPT counters and to `reports`.
    let reports: Arc<dyn crate::tls_report::TlsReportSink> =
        Arc::new(crate::tls_report::Fanout(vec![
            tls_reports.clone(),
            reports,
        ]));
    let mta_sts = config.mta_sts.enabled.then(|| {
        Arc::new(crate::mta_sts::MtaSts::new(
            &config.mta_sts,
            crate::mta_sts::open_cache(&config, true),
            resolver.clone(),
            client_tls.clone(),
            Some(metrics.clone()),
            reports,
        ))
    });
    // Partner monitoring (issue 15 item 3) checks with delivery's own parts; the list fetch
    // (item 5) with its HTTPS configuration and resolver.
    let partners = config.domain_list.check_schedule.map(|every| {
        if config.domain_list.path.is_none() {
            tracing::warn!(
                "domain_list.check_schedule is set but domain_list.path is not: there is no \
                 listed domain to check"
            );
        }
        Arc::new(PartnerMonitor::new(
            MonitorParts {
                config: config.clone(),
                list: domain_list.clone(),
                resolver: resolver.clone(),
                tls: client_tls.clone(),
                mta_sts: mta_sts.clone(),
                metrics: metrics.clone(),
                audit: Some(audit_log.clone()),
            },
            every,
        ))
    });
    let list_fetcher = match (&config.domain_list.url, &config.domain_list.path) {
        (Some(url), Some(path)) => Some(Arc::new(
            ListFetcher::new(
                url,
                path,
                config.domain_list.fetch_interval,
                (&client_tls, resolver.clone()),
                list_service.clone(),
                metrics.clone(),
            )
            .map_err(|e| ServerError::ListFetch(e.to_string()))?,
        )),
        _ => None,
    };
    let delivery = DeliveryEngine::start(EngineParts {
        config: config.clone(),
        store: store.clone(),
        committer: committer.clone(),
        announced,
        resolver: resolver.clone(),
        tls: client_tls,
        domain_list: domain_list.clone(),
        metrics: metrics.clone(),
        audit: Some(audit_log.clone()),
        mta_sts: mta_sts.clone(),
        tls_reports,
    })
    .await
    .map_err(|cause| {
        let path = config.queue_dir().display().to_string();
        StartError::new(&config, "server.data_dir", Fault::Queue { path, cause })
    })?;

    let shutdown = CancellationToken::new();
    let ctx = Arc::new(SessionContext {
        limiter: ConnectionLimiter::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        ),
        config: config.clone(),
        domain_list: domain_list.clone(),
        metrics: metrics.clone(),
        auth: sender_auth,
        dkim,
        audit: Some(audit_log.clone()),
        dmarc_reports: dmarc_reporting.as_ref().map(|r| r.counters().clone()),
        tls: std::sync::RwLock::new(acceptors),
        committer: committer.clone(),
        shutdown: shutdown.clone(),
        free_space: inbound::free_space::FreeSpace::new(config.server.data_dir.clone()),
    });
    let sessions = TaskTracker::new();
    let accept_loops = TaskTracker::new();
    let mut listeners = Vec::new();
    for (index, (listener_config, local, socket)) in bound.into_iter().enumerate() {
        tracing::info!(bind = %local, role = %listener_config.role, "SMTP listening");
        listeners.push((listener_config.role, local));
        accept_loops.spawn(inbound::accept_loop(
            socket,
            index,
            listener_config,
            ctx.clone(),
            sessions.clone(),
        ));
    }
    accept_loops.close();
    tokio::spawn(list_service.clone().watch(shutdown.clone()));
    if let Some(service) = mta_sts {
        tokio::spawn(service.refresh_loop(shutdown.clone()));
    }
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            if let Some(addr) = addr {
                tracing::info!(bind = %addr, "metrics listening");
            }
            tokio::spawn(crate::metrics::serve(
                listener,
                metrics.clone(),
                shutdown.clone(),
            ));
            addr
        }
        None => None,
    };
    let mut admin_addr = None;
    let mut admin_socket = None;
    if let Some(access) = admin_access {
        let reload = {
            let service = list_service.clone();
            Arc::new(move || service.reload())
        };
        let state = AdminState::new(
            delivery.handle(),
            domain_list.clone(),
            reload,
            Some(audit_log.clone()),
            access,
        )
        .with_tls_reporting(tls_reporting.clone())
        .with_dmarc_reporting(dmarc_reporting.clone())
        .with_domains_status({
            let (list, partners, fetcher) =
                (domain_list.clone(), partners.clone(), list_fetcher.clone());
            Arc::new(move || {
                let status = DomainsStatus::gather(&list, partners.as_deref(), fetcher.as_deref());
                serde_json::to_value(status).unwrap_or_default()
            })
        });
        for listener in admin_listeners {
            // Every listening address is in the log at start (issue 14 item 3).
            match &listener {
                AdminListener::Socket(_, path) => {
                    tracing::info!(socket = %path.display(), "admin API listening");
                    admin_socket = Some(path.clone());
                }
                AdminListener::Tcp(l) => {
                    admin_addr = l.local_addr().ok();
                    if let Some(addr) = admin_addr {
                        tracing::info!(bind = %addr, "admin API listening (token required)");
                    }
                }
            }
            tokio::spawn(crate::admin::serve(
                listener,
                state.clone(),
                shutdown.clone(),
            ));
        }
    }
    tokio::spawn(apply_audit_retention(audit_log.clone(), shutdown.clone()));
    if let Some(fetcher) = &list_fetcher {
        tokio::spawn(fetcher.clone().run(shutdown.clone()));
    }
    if let Some(monitor) = &partners {
        tokio::spawn(monitor.clone().run(shutdown.clone()));
    }
    if let Some(reporting) = &tls_reporting {
        tokio::spawn(reporting.clone().flush_loop(shutdown.clone()));
        tokio::spawn(reporting.clone().daily_loop(shutdown.clone()));
    }
    if let Some(reporting) = &dmarc_reporting {
        tokio::spawn(reporting.clone().flush_loop(shutdown.clone()));
        tokio::spawn(reporting.clone().daily_loop(shutdown.clone()));
    }
    tokio::spawn(crate::ops::dnssec::self_check(
        resolver.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    // Issue 16 item 2: a committer stuck for queue.stall_timeout ends the process.
    tokio::spawn(crate::ops::watchdog::run(
        committer.clone(),
        metrics.clone(),
        config.queue.stall_timeout,
        shutdown.clone(),
        crate::ops::watchdog::exit_stalled,
    ));
    // Issue 16 item 4: /readyz and tlsgate_queue_accepting follow whether the queue takes mail.
    tokio::spawn(crate::ops::watchdog::watch_acceptance(
        committer.clone(),
        metrics.clone(),
        config.server.data_dir.clone(),
        config.server.min_free_space,
        shutdown.clone(),
    ));
    // Issue 16 item 5: the queue file gives back what delivered messages freed.
    tokio::spawn(crate::ops::compaction::run(
        store.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));
    metrics.set_ready(true);
    Ok(RunningServer {
        admin_addr,
        admin_socket,
        metrics_addr,
        domain_list: list_service,
        sessions_ctx: ctx,
        listeners,
        store,
        committer,
        delivery,
        shutdown,
        sessions,
        accept_loops,
        tls_reporting,
        dmarc_reporting,
    })
}

impl RunningServer {
    /// Bound addresses (with the real port when the config said port 0).
    pub fn listeners(&self) -> &[(Role, SocketAddr)] {
        &self.listeners
    }

    /// The first listener with this role.
    pub fn local_addr(&self, role: Role) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, addr)| *addr)
    }

    /// The queue store.
    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// The queue's committer.
    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// The delivery engine.
    pub fn delivery(&self) -> &DeliveryEngine {
        &self.delivery
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.sessions_ctx.metrics
    }

    /// TLS reporting (RFC 8460), when `[tls_reporting]` is enabled.
    pub fn tls_reporting(&self) -> Option<&Arc<TlsReporting>> {
        self.tls_reporting.as_ref()
    }

    /// DMARC aggregate reporting (RFC 7489 7.2), when `[dmarc_reporting]` is enabled.
    pub fn dmarc_reporting(&self) -> Option<&Arc<DmarcReporting>> {
        self.dmarc_reporting.as_ref()
    }

    /// The admin API's TCP address, when `admin.bind` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The admin API's Unix socket, when it has one (the default).
    pub fn admin_socket(&self) -> Option<&std::path::Path> {
        self.admin_socket.as_deref()
    }

    /// The bound metrics endpoint, when `[metrics]` is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The tvungen TLS list in force.
    pub fn domain_list(&self) -> &Arc<DomainListHandle> {
        self.domain_list.handle()
    }

    /// SIGHUP: re-reads the configuration, puts its certificate in force for new sessions and
    /// reloads the domain list ([`crate::ops::reload`]). A refused configuration is logged and
    /// the running one stays in force.
    pub fn reload(&self) -> Result<(), ConfigReloadError> {
        reload_config(&self.sessions_ctx, &self.domain_list)
    }

    /// Reloads the domain list now; on error (logged) the old list stays in force.
    pub fn reload_domain_list(&self) {
        let _ = self.domain_list.reload();
    }

    /// Stops accepting, tells idle sessions to go (421), waits up to `grace` for sessions in
    /// the middle of a transaction, then syncs the store.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shutdown.cancel();
        self.accept_loops.wait().await;
        self.sessions.close();
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.sessions.len(),
                "grace period over, closing remaining sessions"
            );
        }
        self.delivery.shutdown(grace).await;
        // After the last delivery: every session counted is on disk. Its queue handle goes
        // with it, so that the committer can close.
        if let Some(reporting) = self.tls_reporting.take() {
            reporting.flush().await;
        }
        // After the last session: every message recorded is on disk.
        if let Some(reporting) = self.dmarc_reporting.take() {
            reporting.flush().await;
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.sync()).await {
            Ok(Ok(())) => tracing::info!("queue synced"),
            Ok(Err(e)) => tracing::error!(error = %e, "final queue sync failed"),
            Err(e) => tracing::error!(error = %e, "final queue sync panicked"),
        }
        drop(self.store);
        drop(self.sessions_ctx);
        if self.committer.close(Duration::from_secs(10)).await {
            tracing::info!("queue closed, shutdown complete");
        } else {
            tracing::warn!("queue committer still busy at the end of shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A start-up error wrapped for the CLI names its cause once (the CLI prints the whole
    /// chain, anyhow's `{:#}`).
    #[test]
    fn a_start_error_says_its_cause_once() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let missing = dir.path().join("missing");
        let cause = crate::tls::keys::load_cert_chain(&missing).expect_err("no such file");
        let error = ServerError::from(StartError {
            file: "t.toml".into(),
            key: "tls.cert".into(),
            fault: Fault::Key(cause),
        });
        let text = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(text.matches("(os error").count(), 1, "{text}");
    }
}
