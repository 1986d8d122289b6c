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
use crate::policy::domain_list::{DomainListHandle, Reloaded};
use crate::queue::{Committer, SledStore, Store};
use crate::startup::{self, ConfigFiles, Fault, StartError};
use crate::tls;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the relay did not start. A cause is either part of the message or reported as
/// `source()`, never both, so the CLI's chain says each cause once.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A file, directory or address a configuration key names: file, key and reason.
    #[error(transparent)]
    Config(#[from] StartError),
    #[error("cannot start the queue committer: {0}")]
    Committer(std::io::Error),
    #[error("DNS resolver: {0}")]
    Dns(DnsError),
    /// The admin API's address (the cause is the `source()`).
    #[error("admin API {bind}: cannot bind")]
    Bind {
        bind: SocketAddr,
        source: std::io::Error,
    },
    #[error("admin.socket: {0}")]
    AdminSocket(std::io::Error),
    #[error("sender authentication: {0}")]
    Auth(String),
}

/// Logs what list is in force and warns when it is old (T10).
fn log_domain_list(handle: &DomainListHandle, config: &Config) {
    if let Some(path) = handle.path() {
        tracing::info!(path = %path.display(), domains = handle.current().len(), "tvungen TLS domain list loaded");
    } else {
        tracing::warn!(
            "no domain_list.path configured: no domain gets mandatory TLS from the list"
        );
    }
    warn_if_old(handle, config);
}

/// T10: the list must be updated at least quarterly.
fn warn_if_old(handle: &DomainListHandle, config: &Config) {
    let max = i64::from(config.domain_list.max_age_days);
    if let Some(age) = handle.age_days(config.domain_list.age_from, std::time::SystemTime::now()) {
        if age > max {
            tracing::warn!(age_days = age, max_age_days = max,
                "the tvungen TLS domain list is older than domain_list.max_age_days: fetch the current list from bits.no/tls (T10)");
        }
    }
}

/// Reloads the list (SIGHUP, admin API): logged, counted, audited; the old list stays in
/// force when the new file is refused.
pub fn reload_list(
    handle: &DomainListHandle,
    metrics: &Metrics,
    config: &Config,
    audit_log: &Option<Arc<AuditLog>>,
) -> Result<String, String> {
    let before = handle.current().len();
    let result = match handle.reload() {
        Ok(Reloaded::Replaced { old, new }) => {
            tracing::info!(old, new, "tvungen TLS domain list reloaded");
            crate::audit::submit(
                audit_log,
                AuditEvent::DomainListReload {
                    old,
                    new,
                    ok: true,
                    error: None,
                },
            );
            Ok(format!("reloaded: {old} → {new} domains"))
        }
        Ok(Reloaded::Unchanged) => {
            tracing::info!("tvungen TLS domain list unchanged");
            Ok(format!("unchanged: {before} domains"))
        }
        Err(e) => {
            metrics.domain_list_reload_failures.inc();
            tracing::error!(error = %e, "domain list reload refused, the old list stays in force");
            crate::audit::submit(
                audit_log,
                AuditEvent::DomainListReload {
                    old: before,
                    new: before,
                    ok: false,
                    error: Some(e.to_string()),
                },
            );
            Err(e.to_string())
        }
    };
    update_list_gauges(metrics, handle, config);
    result
}

/// Removes whole audit files past `audit.retention_days`, at start and every six hours.
async fn apply_audit_retention(log: Arc<AuditLog>, shutdown: CancellationToken) {
    loop {
        let log2 = log.clone();
        match tokio::task::spawn_blocking(move || {
            log2.apply_retention(std::time::SystemTime::now())
        })
        .await
        {
            Ok(Ok(removed)) if !removed.is_empty() => {
                tracing::info!(files = removed.len(), "old audit files removed (retention)")
            }
            Ok(Err(e)) => tracing::error!(error = %e, "audit retention failed"),
            _ => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(6 * 3600)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn update_list_gauges(metrics: &Metrics, handle: &DomainListHandle, config: &Config) {
    metrics
        .domain_list_domains
        .set(handle.current().len() as i64);
    metrics
        .domain_list_max_age_days
        .set(i64::from(config.domain_list.max_age_days));
    if let Some(age) = handle.age_days(config.domain_list.age_from, std::time::SystemTime::now()) {
        metrics.domain_list_age_days.set(age);
    }
}

/// Reloads the list when its file changes (T10: "reloaded on change without restart").
async fn watch_domain_list(
    handle: Arc<DomainListHandle>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    audit_log: Option<Arc<AuditLog>>,
    shutdown: CancellationToken,
) {
    if handle.path().is_none() {
        return;
    }
    let mut last_age_warning = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.domain_list.check_interval) => {}
            _ = shutdown.cancelled() => return,
        }
        // Reading and parsing the file is blocking work: keep it off the async threads.
        let reader = handle.clone();
        let reloaded = tokio::task::spawn_blocking(move || reader.reload_if_changed())
            .await
            .unwrap_or(Ok(Reloaded::Unchanged));
        match reloaded {
            Ok(Reloaded::Replaced { old, new }) => {
                tracing::info!(
                    old,
                    new,
                    "tvungen TLS domain list changed on disk, reloaded"
                );
                let event = AuditEvent::DomainListReload {
                    old,
                    new,
                    ok: true,
                    error: None,
                };
                crate::audit::submit(&audit_log, event);
            }
            Ok(Reloaded::Unchanged) => {}
            Err(e) => {
                metrics.domain_list_reload_failures.inc();
                tracing::error!(error = %e,
                    "changed domain list refused, the old list stays in force");
                let size = handle.current().len();
                let event = AuditEvent::DomainListReload {
                    old: size,
                    new: size,
                    ok: false,
                    error: Some(e.to_string()),
                };
                crate::audit::submit(&audit_log, event);
            }
        }
        update_list_gauges(&metrics, &handle, &config);
        if last_age_warning.elapsed() >= Duration::from_secs(86_400) {
            last_age_warning = tokio::time::Instant::now();
            warn_if_old(&handle, &config);
        }
    }
}

/// How long one DNS query may take before it counts as a temporary failure.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// A started relay.
pub struct RunningServer {
    admin_addr: Option<SocketAddr>,
    admin_socket: Option<std::path::PathBuf>,
    metrics_addr: Option<SocketAddr>,
    domain_list: Arc<DomainListHandle>,
    sessions_ctx: Arc<SessionContext>,
    listeners: Vec<(Role, SocketAddr)>,
    store: Arc<SledStore>,
    committer: Committer,
    delivery: DeliveryEngine,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    accept_loops: TaskTracker,
}

/// Loads the server certificate: the configured pair, or a generated self-signed one (which
/// needs `data_dir` to exist).
pub fn load_tls(config: &Config) -> Result<TlsAcceptor, StartError> {
    let server = match startup::server_tls(config)? {
        Some(server) => server,
        None => generated_tls(config)?,
    };
    Ok(TlsAcceptor::from(server))
}

/// No `[tls]`: a self-signed pair in `data_dir/certs`, generated on first start.
fn generated_tls(config: &Config) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let fault = |e| StartError::new(config, "server.data_dir", Fault::Key(e));
    let (cert, key) =
        tls::keys::ensure_self_signed(&config.generated_cert_dir(), &config.server.hostname)
            .map_err(fault)?;
    tracing::warn!(
        cert = %cert.display(),
        "no [tls] certificate configured: using a self-signed one (development only)"
    );
    tls::server_config(&cert, &key).map_err(fault)
}

/// Starts the relay: checks every file the configuration names, then creates `data_dir`,
/// opens the queue and the audit log, and binds every listener.
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    let files = ConfigFiles::load(&config)?;
    startup::create_directory(&config, "server.data_dir", &config.server.data_dir)?;
    let acceptor = TlsAcceptor::from(match files.server_tls {
        Some(server) => server,
        None => generated_tls(&config)?,
    });

    let queue_dir = config.queue_dir();
    let store = tokio::task::spawn_blocking(move || SledStore::open(&queue_dir))
        .await
        .map_err(|e| ServerError::Committer(std::io::Error::other(e)))?
        .map_err(|cause| {
            let path = config.queue_dir().display().to_string();
            StartError::new(&config, "server.data_dir", Fault::Queue { path, cause })
        })?;
    let store = Arc::new(store);
    let (committer, announced) =
        Committer::start(store.clone() as Arc<dyn Store>).map_err(ServerError::Committer)?;
    let client_tls = files.client_tls;
    let sender_auth = match &config.inbound.auth {
        Some(a) => Some(Arc::new(
            crate::auth::Verifier::new(
                &config.dns.nameservers,
                config.server.hostname.clone(),
                a.timeout,
                a.policy.clone(),
            )
            .map_err(|e| ServerError::Auth(e.to_string()))?,
        )),
        None => None,
    };
    let dkim = files.dkim;
    log_domain_list(&files.domain_list, &config);
    let domain_list = Arc::new(files.domain_list);
    let metrics = Metrics::new();
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
    update_list_gauges(&metrics, &domain_list, &config);
    let resolver =
        HickoryResolver::new(&config.dns.nameservers, DNS_TIMEOUT).map_err(ServerError::Dns)?;

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
    let config = Arc::new(config);
    let delivery = DeliveryEngine::start(EngineParts {
        config: config.clone(),
        store: store.clone(),
        committer: committer.clone(),
        announced,
        resolver: Arc::new(resolver),
        tls: client_tls,
        domain_list: domain_list.clone(),
        metrics: metrics.clone(),
        audit: Some(audit_log.clone()),
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
        tls: std::sync::RwLock::new(Some(acceptor)),
        committer: committer.clone(),
        shutdown: shutdown.clone(),
    });
    let sessions = TaskTracker::new();
    let accept_loops = TaskTracker::new();
    let mut listeners = Vec::new();
    for (listener_config, local, socket) in bound {
        tracing::info!(bind = %local, role = %listener_config.role, "listening");
        listeners.push((listener_config.role, local));
        accept_loops.spawn(inbound::accept_loop(
            socket,
            listener_config,
            ctx.clone(),
            sessions.clone(),
        ));
    }
    accept_loops.close();
    tokio::spawn(watch_domain_list(
        domain_list.clone(),
        config.clone(),
        metrics.clone(),
        Some(audit_log.clone()),
        shutdown.clone(),
    ));
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
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
            let (handle, metrics, config, audit_log) = (
                domain_list.clone(),
                metrics.clone(),
                config.clone(),
                audit_log.clone(),
            );
            Arc::new(move || reload_list(&handle, &metrics, &config, &Some(audit_log.clone())))
        };
        let state = AdminState::new(
            delivery.handle(),
            domain_list.clone(),
            reload,
            Some(audit_log.clone()),
            access,
        );
        for listener in admin_listeners {
            match &listener {
                AdminListener::Socket(_, path) => admin_socket = Some(path.clone()),
                AdminListener::Tcp(l) => admin_addr = l.local_addr().ok(),
            }
            tokio::spawn(crate::admin::serve(
                listener,
                state.clone(),
                shutdown.clone(),
            ));
        }
    }
    tokio::spawn(apply_audit_retention(audit_log.clone(), shutdown.clone()));
    metrics.set_ready(true);
    Ok(RunningServer {
        admin_addr,
        admin_socket,
        metrics_addr,
        domain_list,
        sessions_ctx: ctx,
        listeners,
        store,
        committer,
        delivery,
        shutdown,
        sessions,
        accept_loops,
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

    pub fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    pub fn delivery(&self) -> &DeliveryEngine {
        &self.delivery
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.sessions_ctx.metrics
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
        &self.domain_list
    }

    /// Reloads the domain list now (SIGHUP); on error the old list stays in force.
    /// SIGHUP: re-reads the configuration file and reloads the certificate (new sessions use
    /// it) and the domain list. A configuration or certificate that fails to load is refused
    /// and logged; the running one stays in force. Settings other than `[tls]` and the domain
    /// list take effect at the next restart (the log says so when they changed).
    pub fn reload(&self) -> Result<(), String> {
        let ctx = &self.sessions_ctx;
        let current = &ctx.config;
        let refuse = |error: String| {
            tracing::error!(error = %error, "reload refused, the running configuration stays in force");
            crate::audit::submit(
                &ctx.audit,
                AuditEvent::ConfigReload {
                    ok: false,
                    error: Some(error.clone()),
                },
            );
            Err(error)
        };
        let new = if current.source == crate::config::EMBEDDED_DEFAULT_NAME {
            (**current).clone()
        } else {
            match Config::load(std::path::Path::new(&current.source)) {
                Ok(config) => config,
                Err(e) => return refuse(e.to_string()),
            }
        };
        let acceptor = match load_tls(&new) {
            Ok(acceptor) => acceptor,
            Err(e) => return refuse(e.to_string()),
        };
        ctx.set_tls_acceptor(acceptor);
        if crate::config::summary(&new) != crate::config::summary(current) {
            tracing::warn!("the configuration file changed beyond [tls] and the domain list: those changes take effect at the next restart");
        }
        tracing::info!("configuration reloaded: new sessions use the reloaded certificate");
        crate::audit::submit(
            &ctx.audit,
            AuditEvent::ConfigReload {
                ok: true,
                error: None,
            },
        );
        self.reload_domain_list();
        Ok(())
    }

    pub fn reload_domain_list(&self) {
        let ctx = &self.sessions_ctx;
        let _ = reload_list(&self.domain_list, &ctx.metrics, &ctx.config, &ctx.audit);
    }

    /// Stops accepting, tells idle sessions to go (421), waits up to `grace` for sessions in
    /// the middle of a transaction, then syncs the store.
    pub async fn shutdown(self, grace: Duration) {
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
        let cause = tls::keys::load_cert_chain(&missing).expect_err("no such file");
        let error = ServerError::from(StartError {
            file: "t.toml".into(),
            key: "tls.cert".into(),
            fault: Fault::Key(cause),
        });
        let text = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(text.matches("(os error").count(), 1, "{text}");
    }
}
