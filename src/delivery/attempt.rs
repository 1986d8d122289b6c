//! One delivery attempt: the recipients of one message that share a destination, tried host by
//! host until one answers the transaction.
//!
//! Connection or TLS trouble moves on to the next address and the next MX host; a reply to
//! the transaction ends the attempt (RFC 5321 5.1). When no host could be used, every
//! recipient is deferred with the last problem seen.

use super::client::{ClientError, ConnectParams, SmtpConnection, Timeouts, TlsMode};
use super::pool::{ConnectionPool, PoolKey};
use super::route::{self, Destination, RouteError};
use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use crate::dns::Resolver;
use crate::metrics::Metrics;
use crate::policy::domain_list::DomainList;
use crate::policy::{self, PolicySource, ResolvedPolicy, TlsLevel};
use crate::queue::message::{MessageMeta, Recipient};
use crate::smtp::reply::Reply;
use crate::tls::client::{ClientTls, TlsFailure};
use crate::tls::TlsInfo;
use std::sync::Arc;

/// The result for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        host: String,
        reply: String,
        /// The next hop announced DSN, so it reports success itself (RFC 3461 6.2).
        peer_does_dsn: bool,
    },
    Deferred {
        host: Option<String>,
        status: String,
        reason: String,
        /// The TLS policy could not be met (issue 4 warns senders early about these).
        tls: bool,
    },
    Failed {
        host: Option<String>,
        status: String,
        reason: String,
    },
}

/// What the engine needs to run attempts.
pub struct AttemptContext<'a> {
    pub config: &'a Config,
    pub resolver: &'a dyn Resolver,
    pub tls: &'a ClientTls,
    pub pool: &'a ConnectionPool,
    /// The tvungen TLS list in force when the attempt started.
    pub domain_list: &'a DomainList,
    pub metrics: &'a Metrics,
    pub audit: &'a Option<Arc<AuditLog>>,
}

/// The TLS policy for a destination: `inbound.next_hop_tls` for the next hop, otherwise the
/// policy engine's answer for the recipient domain.
pub fn policy_for(
    config: &Config,
    list: &DomainList,
    destination: &Destination,
    requiretls: bool,
) -> ResolvedPolicy {
    match destination {
        Destination::NextHop => {
            let configured = config.inbound.next_hop_tls;
            let raised = requiretls && configured < TlsLevel::Verify;
            ResolvedPolicy {
                level: if raised { TlsLevel::Verify } else { configured },
                source: if raised {
                    PolicySource::RequireTls
                } else {
                    PolicySource::Config
                },
                listed: false,
                match_names: Vec::new(),
            }
        }
        Destination::Domain(domain) => policy::resolve(&config.policies, list, domain, requiretls),
    }
}

/// How a level is enforced on the wire. Levels that need DANE fail closed to certificate
/// validation until DANE lookups exist; `dane` without TLSA records is opportunistic.
pub fn tls_mode(level: TlsLevel) -> TlsMode {
    match level {
        TlsLevel::None => TlsMode::Off,
        TlsLevel::May | TlsLevel::Dane => TlsMode::Opportunistic,
        TlsLevel::Encrypt => TlsMode::Encrypted,
        TlsLevel::DaneOnly | TlsLevel::Verify | TlsLevel::Secure => TlsMode::Verified,
    }
}

/// One line per attempt on a host, for the log (issue 3: the queue must be inspectable).
#[derive(Debug, Clone)]
pub struct HostLog {
    pub host: String,
    pub addr: String,
    pub tls: Option<TlsInfo>,
    pub result: String,
}

/// Delivers `recipients` (indices into `meta.recipients`) of one message to `destination`.
pub async fn deliver(
    ctx: &AttemptContext<'_>,
    meta: &MessageMeta,
    body: &[u8],
    destination: &Destination,
    recipients: &[usize],
    log: &mut Vec<HostLog>,
) -> Vec<(usize, Outcome)> {
    let everyone = |outcome: Outcome| -> Vec<(usize, Outcome)> {
        recipients.iter().map(|&i| (i, outcome.clone())).collect()
    };
    let hosts = match route::hosts_for(ctx.config, ctx.resolver, destination).await {
        Ok(hosts) => hosts,
        Err(RouteError::Permanent { status, reason }) => {
            return everyone(Outcome::Failed {
                host: None,
                status: status.into(),
                reason,
            })
        }
        Err(RouteError::Temporary { status, reason }) => {
            return everyone(Outcome::Deferred {
                host: None,
                status: status.into(),
                reason,
                tls: false,
            })
        }
    };
    let policy = policy_for(ctx.config, ctx.domain_list, destination, meta.requiretls);
    let level = policy.level;
    let mode = tls_mode(level);
    let domain = match destination {
        Destination::Domain(d) => Some(d),
        Destination::NextHop => None,
    };
    let rcpts: Vec<&Recipient> = recipients
        .iter()
        .filter_map(|&i| meta.recipients.get(i))
        .collect();

    let mut last_problem: Option<(String, ClientError)> = None;
    let mut requiretls_refused: Option<String> = None;
    for host in &hosts {
        let names = policy::certificate_names(level, &host.name, domain, &policy.match_names);
        for &addr in &host.addrs {
            let key = PoolKey {
                addr,
                host: host.name.clone(),
                tls_mode: mode,
                names: names.clone(),
            };
            let conn = match connect(ctx, &key).await {
                Ok(conn) => conn,
                Err(e) => {
                    if let (true, ClientError::Tls(failure)) = (policy.listed, &e) {
                        ctx.metrics
                            .tls_failures
                            .with_label_values(&[failure.metric_label()])
                            .inc();
                        crate::server::audit(
                            ctx.audit,
                            AuditEvent::TlsFailure {
                                queue_id: meta.id.to_string(),
                                domain: destination.to_string(),
                                host: host.name.clone(),
                                reason: failure.to_string(),
                                level: level.to_string(),
                            },
                        );
                        tracing::warn!(queue_id = %meta.id, destination = %destination,
                            host = %host.name, %addr, level = %level, reason = %e,
                            "TLS policy not met toward a listed domain, host skipped");
                    }
                    log.push(HostLog {
                        host: host.name.clone(),
                        addr: addr.to_string(),
                        tls: None,
                        result: e.to_string(),
                    });
                    last_problem = Some((host.name.clone(), e));
                    continue;
                }
            };
            let mut conn = conn;
            // RFC 8689 4.2.1: a REQUIRETLS message is relayed only to a host that offers
            // REQUIRETLS (the final internal hop is configured, not negotiated).
            if meta.requiretls && domain.is_some() && !conn.caps.requiretls {
                requiretls_refused = Some(host.name.clone());
                log.push(HostLog {
                    host: host.name.clone(),
                    addr: addr.to_string(),
                    tls: conn.tls.clone(),
                    result: "REQUIRETLS not offered".into(),
                });
                park(ctx, key, conn);
                continue;
            }
            if let Some(outcome) = refuse_before_sending(meta, body, &conn) {
                park(ctx, key, conn);
                return everyone(outcome);
            }
            match conn.send_message(meta, &rcpts, body).await {
                Ok(result) => {
                    log.push(HostLog {
                        host: host.name.clone(),
                        addr: addr.to_string(),
                        tls: conn.tls.clone(),
                        result: summarise(&result.replies),
                    });
                    let peer_does_dsn = conn.caps.dsn;
                    if let (true, Some(tls)) = (policy.listed, &conn.tls) {
                        crate::server::audit(
                            ctx.audit,
                            AuditEvent::TlsDelivery {
                                queue_id: meta.id.to_string(),
                                domain: destination.to_string(),
                                host: host.name.clone(),
                                tls_version: tls.version.clone(),
                                cipher: tls.cipher.clone(),
                                cert_sha256: conn.peer_certificate.as_ref().map(|c| {
                                    use sha2::Digest;
                                    sha2::Sha256::digest(c.as_ref())
                                        .iter()
                                        .map(|b| format!("{b:02x}"))
                                        .collect()
                                }),
                                level: level.to_string(),
                            },
                        );
                    }
                    park(ctx, key, conn);
                    return recipients
                        .iter()
                        .zip(result.replies)
                        .map(|(&i, reply)| (i, outcome_of(&host.name, &reply, peer_does_dsn)))
                        .collect();
                }
                Err(e) => {
                    log.push(HostLog {
                        host: host.name.clone(),
                        addr: addr.to_string(),
                        tls: conn.tls.clone(),
                        result: e.to_string(),
                    });
                    last_problem = Some((host.name.clone(), e));
                }
            }
        }
    }
    if let Some(host) = requiretls_refused {
        return everyone(Outcome::Failed {
            host: Some(host.clone()),
            status: "5.7.30".into(),
            reason: format!(
                "the sender required REQUIRETLS (RFC 8689) but {host} does not support it"
            ),
        });
    }
    let (host, error) = match last_problem {
        Some(p) => p,
        None => {
            return everyone(Outcome::Deferred {
                host: None,
                status: "4.4.4".into(),
                reason: format!("no host to try for {destination}"),
                tls: false,
            })
        }
    };
    let (status, tls) = match &error {
        ClientError::Tls(TlsFailure::NoStarttls | TlsFailure::StarttlsRefused(_)) => {
            ("4.7.4", true)
        }
        ClientError::Tls(_) => ("4.7.5", true),
        ClientError::Connect { .. } => ("4.4.1", false),
        ClientError::Timeout(_) | ClientError::Io(_) => ("4.4.2", false),
        ClientError::Protocol(_) => ("4.5.0", false),
        ClientError::Refused { .. } => ("4.4.0", false),
    };
    let reason = if tls {
        format!("TLS required ({level}) but not possible with {host}: {error}")
    } else {
        format!("{host}: {error}")
    };
    everyone(Outcome::Deferred {
        host: Some(host),
        status: status.into(),
        reason,
        tls,
    })
}

/// A pooled connection when one is idle and still answers, else a new one. Opportunistic TLS
/// that fails in the handshake is retried once in plaintext, as `may` promises no more than
/// that (Postfix does the same).
async fn connect(ctx: &AttemptContext<'_>, key: &PoolKey) -> Result<SmtpConnection, ClientError> {
    while let Some(mut idle) = ctx.pool.take(key) {
        if idle.reset().await.is_ok() {
            return Ok(idle);
        }
    }
    let d = &ctx.config.delivery;
    let params = |tls_mode| ConnectParams {
        addr: key.addr,
        host: &key.host,
        helo_name: &ctx.config.server.hostname,
        tls_mode,
        cert_names: &key.names,
        tls: ctx.tls,
        timeouts: Timeouts {
            connect: d.connect_timeout,
            command: d.command_timeout,
            data: d.data_timeout,
        },
    };
    match SmtpConnection::open(&params(key.tls_mode)).await {
        // Response injection is an attack, not a broken TLS stack: no plaintext retry then.
        Err(ClientError::Tls(failure))
            if key.tls_mode == TlsMode::Opportunistic
                && failure != TlsFailure::ResponseInjection =>
        {
            tracing::info!(host = %key.host, addr = %key.addr, reason = %failure,
                "opportunistic TLS failed, retrying in plaintext");
            SmtpConnection::open(&params(TlsMode::Off)).await
        }
        other => other,
    }
}

/// Checks that need the peer's capabilities but no transaction: SIZE (RFC 1870) and SMTPUTF8
/// (RFC 6531 3.4: a message that needs it cannot go to a server without it).
fn refuse_before_sending(
    meta: &MessageMeta,
    body: &[u8],
    conn: &SmtpConnection,
) -> Option<Outcome> {
    let size = meta.received_header.len() as u64 + body.len() as u64;
    if let Some(limit) = conn.caps.size.filter(|l| *l > 0) {
        if size > limit {
            return Some(Outcome::Failed {
                host: Some(conn.host.clone()),
                status: "5.3.4".into(),
                reason: format!(
                    "message is {size} octets, {} accepts at most {limit}",
                    conn.host
                ),
            });
        }
    }
    if meta.smtputf8 && !conn.caps.smtputf8 {
        return Some(Outcome::Failed {
            host: Some(conn.host.clone()),
            status: "5.6.7".into(),
            reason: format!(
                "the message needs SMTPUTF8 (international addresses) but {} does not support it",
                conn.host
            ),
        });
    }
    None
}

fn park(ctx: &AttemptContext<'_>, key: PoolKey, conn: SmtpConnection) {
    if let Some(done) = ctx.pool.put(key, conn) {
        tokio::spawn(done.quit());
    }
}

fn outcome_of(host: &str, reply: &Reply, peer_does_dsn: bool) -> Outcome {
    let status = |default: &str| {
        reply
            .enhanced
            .map(|e| e.to_string())
            .unwrap_or_else(|| default.to_string())
    };
    match reply.code / 100 {
        2 => Outcome::Delivered {
            host: host.to_string(),
            reply: reply.to_string(),
            peer_does_dsn,
        },
        4 => Outcome::Deferred {
            host: Some(host.to_string()),
            status: status("4.0.0"),
            reason: reply.to_string(),
            tls: false,
        },
        _ => Outcome::Failed {
            host: Some(host.to_string()),
            status: status("5.0.0"),
            reason: reply.to_string(),
        },
    }
}

fn summarise(replies: &[Reply]) -> String {
    let mut parts: Vec<String> = replies.iter().map(ToString::to_string).collect();
    parts.dedup();
    parts.join(" | ")
}
