//! The receiving side: listeners accept connections, each connection runs a [`Session`].
//!
//! Shape after mini-redis: one accept loop per listener that enforces the connection limits
//! and backs off on accept errors, one task per connection, and one cancellation token that
//! tells all of them to stop.

#[doc(hidden)]
pub mod client_override;
pub mod connection;
pub mod free_space;
pub mod hops;
pub mod limits;
pub mod received;
pub mod relay;
pub mod session;
pub mod tvungen;

use crate::config::{Config, ListenerConfig};
use crate::metrics::Metrics;
use crate::policy::domain_list::DomainListHandle;
use crate::queue::Committer;
use limits::{ConnectionLimiter, LimitExceeded};
use session::Session;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every session shares.
pub struct SessionContext {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// The tvungen TLS list, for refusing plaintext from listed senders (T5).
    pub domain_list: Arc<DomainListHandle>,
    /// Counters and gauges.
    pub metrics: Arc<Metrics>,
    /// Sender authentication for inbound listeners (D4); `None` when turned off.
    pub auth: Option<Arc<crate::auth::Verifier>>,
    /// DKIM signers for outbound mail, by sender domain.
    pub dkim: std::collections::HashMap<crate::domain::Domain, Arc<crate::auth::OutboundSigner>>,
    /// The audit log (S1); `None` only in tests that build a context by hand.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    /// DMARC aggregate report counters (RFC 7489 7.2): every inbound DMARC evaluation is
    /// recorded here; `None` when `[dmarc_reporting]` is off.
    pub dmarc_reports: Option<Arc<crate::reporting::dmarc::DmarcCounters>>,
    /// The STARTTLS acceptor of each `[[listener]]`, in configuration order (a listener with
    /// `client_ca` asks for client certificates, the others do not; S2); empty when no
    /// certificate is configured (STARTTLS then not offered). Replaced whole when the
    /// certificate is reloaded (SIGHUP): sessions that start after that use the new one.
    pub tls: std::sync::RwLock<Vec<TlsAcceptor>>,
    /// The queue's only writer: a message is answered `250` after it returns (S5).
    pub committer: Committer,
    /// Total and per-IP connection limits (`421 4.7.0` past them).
    pub limiter: ConnectionLimiter,
    /// Cancelled at shutdown: a session waiting for a command answers `421 4.3.2` and closes.
    pub shutdown: CancellationToken,
    /// Free space of `server.data_dir`'s file system, checked at MAIL (`452 4.3.1`).
    pub free_space: free_space::FreeSpace,
}

impl SessionContext {
    /// The STARTTLS acceptor in force now for the listener at `index` in `[[listener]]`
    /// order; `None` without TLS.
    pub fn tls_acceptor(&self, index: usize) -> Option<TlsAcceptor> {
        self.tls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(index)
            .cloned()
    }

    /// Puts new STARTTLS acceptors in force, one per listener in order (certificate reload);
    /// sessions already in TLS keep theirs.
    pub fn set_tls_acceptors(&self, acceptors: Vec<TlsAcceptor>) {
        *self.tls.write().unwrap_or_else(|p| p.into_inner()) = acceptors;
    }
}

/// Accepts connections on one listener until shutdown; `index` is its place in
/// `[[listener]]` order (which STARTTLS acceptor it uses).
pub async fn accept_loop(
    listener: TcpListener,
    index: usize,
    config: ListenerConfig,
    ctx: Arc<SessionContext>,
    sessions: TaskTracker,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = ctx.shutdown.cancelled() => return,
        };
        let (socket, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(10);
                pair
            }
            Err(e) => {
                // Typically EMFILE/ENFILE: wait for descriptors to free up instead of spinning.
                tracing::error!(bind = %config.bind, error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        // Issue 17 item 3: from here on an IPv4 client is an IPv4 client, on a dual-stack
        // socket too (per-IP limits, relay_networks, SPF, Received:, logs, audit, metrics).
        let peer = canonical_peer(peer);
        let permit = match ctx.limiter.try_acquire(peer.ip()) {
            Ok(permit) => permit,
            Err(exceeded) => {
                let limit = match exceeded {
                    crate::inbound::limits::LimitExceeded::Total => "max_connections",
                    crate::inbound::limits::LimitExceeded::PerIp => "max_connections_per_ip",
                };
                tracing::warn!(peer = %peer, limit, "connection refused: limit reached");
                sessions.spawn(refuse(socket, exceeded));
                continue;
            }
        };
        let ctx = ctx.clone();
        let listener_config = config.clone();
        sessions.spawn(async move {
            let _permit = permit;
            let conn = connection::Connection::new(socket);
            Session::new(conn, ctx, index, listener_config, peer)
                .run()
                .await;
        });
    }
}

/// The peer address in the form every check uses: an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, what an IPv4 client looks like on a dual-stack `[::]` socket, RFC 4291
/// 2.5.5.2) becomes the IPv4 address `a.b.c.d`; other addresses are unchanged.
pub fn canonical_peer(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => peer,
        },
        v4 => v4,
    }
}

/// Tells a client over a connection limit why it is turned away (RFC 5321 3.1: 421).
async fn refuse(mut socket: TcpStream, exceeded: LimitExceeded) {
    let text: &[u8] = match exceeded {
        LimitExceeded::Total => b"421 4.7.0 Too many connections, try again later\r\n",
        LimitExceeded::PerIp => b"421 4.7.0 Too many connections from your address\r\n",
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        socket.write_all(text).await?;
        socket.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::canonical_peer;

    #[test]
    fn ipv4_mapped_peers_become_ipv4() {
        // RFC 4291 2.5.5.2: ::ffff:a.b.c.d is the IPv4 client a.b.c.d.
        let mapped = "[::ffff:192.0.2.7]:4711".parse().unwrap();
        assert_eq!(canonical_peer(mapped), "192.0.2.7:4711".parse().unwrap());
        for same in ["[2001:db8::1]:25", "[::1]:25", "127.0.0.1:25"] {
            let addr = same.parse().unwrap();
            assert_eq!(canonical_peer(addr), addr);
        }
    }
}
