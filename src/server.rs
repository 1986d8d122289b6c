//! Starting and stopping the whole relay: open the queue, load TLS material, bind every
//! listener, and on shutdown drain the sessions and sync the store.
//!
//! Everything that can be wrong with the configuration fails here, before the first
//! connection is accepted (non-negotiable 5).

use crate::config::{Config, Role};
use crate::delivery::DeliveryEngine;
use crate::dns::{DnsError, HickoryResolver};
use crate::inbound::limits::ConnectionLimiter;
use crate::inbound::{self, SessionContext};
use crate::queue::{Committer, SledStore, Store, StoreError};
use crate::tls::client::ClientTls;
use crate::tls::{self, KeyError};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the queue in {path}: {source}")]
    Queue { path: String, source: StoreError },
    #[error("TLS: {0}")]
    Tls(#[from] KeyError),
    #[error("listener {bind}: cannot bind: {source}")]
    Bind {
        bind: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the queue committer: {0}")]
    Committer(std::io::Error),
    #[error("DNS resolver: {0}")]
    Dns(#[from] DnsError),
}

/// How long one DNS query may take before it counts as a temporary failure.
const DNS_TIMEOUT: Duration = Duration::from_secs(10);

/// A started relay.
pub struct RunningServer {
    listeners: Vec<(Role, SocketAddr)>,
    store: Arc<SledStore>,
    committer: Committer,
    delivery: DeliveryEngine,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    accept_loops: TaskTracker,
}

/// Loads the server certificate: the configured pair, or a generated self-signed one.
pub fn load_tls(config: &Config) -> Result<TlsAcceptor, KeyError> {
    let (cert, key) = match &config.tls.cert_and_key {
        Some(pair) => pair.clone(),
        None => {
            let pair = tls::keys::ensure_self_signed(
                &config.generated_cert_dir(),
                &config.server.hostname,
            )?;
            tracing::warn!(
                cert = %pair.0.display(),
                "no [tls] certificate configured: using a self-signed one (development only)"
            );
            pair
        }
    };
    Ok(TlsAcceptor::from(tls::server_config(&cert, &key)?))
}

pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    let data_dir = config.server.data_dir.clone();
    std::fs::create_dir_all(&data_dir).map_err(|source| ServerError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let acceptor = load_tls(&config)?;

    let queue_dir = config.queue_dir();
    let store = tokio::task::spawn_blocking(move || SledStore::open(&queue_dir))
        .await
        .map_err(|e| ServerError::Committer(std::io::Error::other(e)))?
        .map_err(|source| ServerError::Queue {
            path: config.queue_dir().display().to_string(),
            source,
        })?;
    let store = Arc::new(store);
    let (committer, announced) =
        Committer::start(store.clone() as Arc<dyn Store>).map_err(ServerError::Committer)?;
    let client_tls = ClientTls::new(&config.outbound.extra_trust_roots)?;
    let resolver = HickoryResolver::new(&config.dns.nameservers, DNS_TIMEOUT)?;

    let mut bound = Vec::new();
    for l in &config.listeners {
        let socket = TcpListener::bind(l.bind)
            .await
            .map_err(|source| ServerError::Bind {
                bind: l.bind,
                source,
            })?;
        let local = socket.local_addr().map_err(|source| ServerError::Bind {
            bind: l.bind,
            source,
        })?;
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
    let delivery = DeliveryEngine::start(
        config.clone(),
        store.clone(),
        committer.clone(),
        announced,
        Arc::new(resolver),
        client_tls,
    )
    .await
    .map_err(|source| ServerError::Queue {
        path: config.queue_dir().display().to_string(),
        source,
    })?;

    let shutdown = CancellationToken::new();
    let ctx = Arc::new(SessionContext {
        limiter: ConnectionLimiter::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        ),
        config,
        tls: Some(acceptor),
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
    Ok(RunningServer {
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
        if self.committer.close(Duration::from_secs(10)).await {
            tracing::info!("queue closed, shutdown complete");
        } else {
            tracing::warn!("queue committer still busy at the end of shutdown");
        }
    }
}
