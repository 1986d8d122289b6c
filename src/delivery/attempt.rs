//! One delivery attempt: the recipients of one message that share a destination, tried host by
//! host until each has a final answer or every address was tried.
//!
//! RFC 5321 5.1: the addresses of the MX hosts are tried in order. A temporary failure of the
//! session or the whole transaction — connect, greeting, EHLO, TLS, a 4xx to MAIL, DATA or the
//! end of data, a `421` anywhere, a lost connection — moves the recipients still open on to the
//! next address in the same attempt. A 4xx to one RCPT defers that recipient only; a 5xx fails
//! the recipients it answered. When no address took the message, the open recipients are
//! deferred with the last problem seen.

use super::client::{ClientError, ConnectParams, SmtpConnection, Step, Timeouts, TlsMode};
use super::pool::{ConnectionPool, PoolKey};
use super::route::{self, Destination, RouteError};
use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use crate::dns::Resolver;
use crate::metrics::Metrics;
use crate::policy::domain_list::DomainList;
use crate::policy::{self, PolicySource, ResolvedPolicy, TlsLevel};
use crate::queue::message::{MessageMeta, Recipient};
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::tls::client::{ClientTls, TlsFailure};
use crate::tls::TlsInfo;
use std::sync::Arc;

/// The result for one recipient.
///
/// `remote` says whose words `reason` is: `true` when it is the reply `host` actually sent
/// (reported in a DSN as `Remote-MTA` and `Diagnostic-Code: smtp`), `false` when it is
/// tlsgate's own decision or observation (TLS policy, SIZE, SMTPUTF8, REQUIRETLS, a lost
/// connection, expiry: `Diagnostic-Code: x-tlsgate`, RFC 3464 2.3.6; issue 10 item 5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The next hop accepted the recipient (2xx after the data).
    Delivered {
        /// The host that accepted it.
        host: String,
        /// Its reply, as text.
        reply: String,
        /// The next hop announced DSN, so it reports success itself (RFC 3461 6.2).
        peer_does_dsn: bool,
        /// The TLS version of the connection (`None`: plaintext), for the audit entry (S1).
        tls_version: Option<String>,
        /// The TLS level applied and where it came from.
        level: TlsLevel,
        /// Where `level` came from.
        source: PolicySource,
    },
    /// A temporary failure: try again later.
    Deferred {
        /// The host involved; `None` when no host was reached (DNS, no usable address).
        host: Option<String>,
        /// RFC 3463 status for the DSN and the queue listing.
        status: EnhancedStatus,
        /// Why, in words for the DSN and the queue listing.
        reason: String,
        /// See the enum doc.
        remote: bool,
        /// The TLS policy could not be met (issue 4 warns senders early about these).
        tls: bool,
    },
    /// A permanent failure: the recipient is final, the sender gets a failure DSN.
    Failed {
        /// The host involved; `None` when no host was reached.
        host: Option<String>,
        /// RFC 3463 status; a 4.x cause (expiry) is reported as 5.x (`delivery::outcome`).
        status: EnhancedStatus,
        /// Why, in words for the DSN.
        reason: String,
        /// See the enum doc.
        remote: bool,
    },
}

/// What the engine needs to run attempts.
pub struct AttemptContext<'a> {
    /// The configuration in force.
    pub config: &'a Config,
    /// The relay's DNS resolver.
    pub resolver: &'a dyn Resolver,
    /// Client TLS.
    pub tls: &'a ClientTls,
    /// Idle connections to reuse.
    pub pool: &'a ConnectionPool,
    /// The tvungen TLS list in force when the attempt started.
    pub domain_list: &'a DomainList,
    /// Counters.
    pub metrics: &'a Metrics,
    /// The audit log (S1); `None` in tools and tests without one.
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
    /// The host name tried.
    pub host: String,
    /// The address tried.
    pub addr: String,
    /// The TLS negotiated; `None` when the connection failed before or stayed plaintext.
    pub tls: Option<TlsInfo>,
    /// What happened, as text (the error or the replies).
    pub result: String,
}

/// The last reason an address could not take the open recipients.
enum Problem {
    /// Connecting, greeting, EHLO, TLS or the connection itself.
    Client(ClientError),
    /// A temporary reply to the whole transaction (or a `421`), in the remote's words.
    Reply(Reply),
}

/// Delivers `recipients` (indices into `meta.recipients`) of one message to `destination`.
/// Returns one outcome per recipient, in no particular order.
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
        Ok(route) => route.hosts,
        Err(RouteError::Permanent { status, reason }) => {
            return everyone(Outcome::Failed {
                host: None,
                status,
                reason,
                remote: false,
            })
        }
        Err(RouteError::Temporary { status, reason }) => {
            return everyone(Outcome::Deferred {
                host: None,
                status,
                reason,
                remote: false,
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

    // Recipients without a final answer yet, and the answers given so far.
    let mut open: Vec<usize> = recipients.to_vec();
    let mut done: Vec<(usize, Outcome)> = Vec::with_capacity(recipients.len());
    let mut last_problem: Option<(String, Problem)> = None;
    let mut requiretls_refused: Option<String> = None;
    'hosts: for host in &hosts {
        let names = policy::certificate_names(level, &host.name, domain, &policy.match_names);
        for &addr in &host.addrs {
            if open.is_empty() {
                break 'hosts;
            }
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
                        crate::audit::submit(
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
                    last_problem = Some((host.name.clone(), Problem::Client(e)));
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
            let rcpts: Vec<&Recipient> = open
                .iter()
                .filter_map(|&i| meta.recipients.get(i))
                .collect();
            if let Some(outcome) = refuse_before_sending(meta, &rcpts, body, &conn) {
                park(ctx, key, conn);
                done.extend(open.drain(..).map(|i| (i, outcome.clone())));
                break 'hosts;
            }
            match conn.send_message(meta, &rcpts, body).await {
                Ok(result) => {
                    log.push(HostLog {
                        host: host.name.clone(),
                        addr: addr.to_string(),
                        tls: conn.tls.clone(),
                        result: summarise(&result.replies),
                    });
                    let delivered_with = Delivery {
                        host: &host.name,
                        peer_does_dsn: conn.caps.dsn,
                        tls_version: conn.tls.as_ref().map(|t| t.version.clone()),
                        level,
                        source: policy.source,
                    };
                    let delivered = result.replies.iter().any(|(_, r)| r.code / 100 == 2);
                    if let (true, true, Some(tls)) = (delivered, policy.listed, &conn.tls) {
                        crate::audit::submit(
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
                    // A 421 means the server is closing the connection (RFC 5321 3.8).
                    let closing = result.replies.iter().any(|(_, r)| r.code == 421);
                    if closing {
                        tokio::spawn(conn.quit());
                    } else {
                        park(ctx, key, conn);
                    }
                    let mut still_open = Vec::new();
                    for (&i, (step, reply)) in open.iter().zip(result.replies) {
                        if moves_on(step, &reply) {
                            still_open.push(i);
                            last_problem = Some((host.name.clone(), Problem::Reply(reply)));
                        } else {
                            done.push((i, outcome_of(&delivered_with, &reply)));
                        }
                    }
                    open = still_open;
                }
                Err(e) => {
                    log.push(HostLog {
                        host: host.name.clone(),
                        addr: addr.to_string(),
                        tls: conn.tls.clone(),
                        result: e.to_string(),
                    });
                    last_problem = Some((host.name.clone(), Problem::Client(e)));
                }
            }
        }
    }
    if open.is_empty() {
        return done;
    }
    let outcome = match (requiretls_refused, last_problem) {
        // Only hosts without REQUIRETLS took part: RFC 8689 4.2.1 makes that permanent.
        (Some(host), None | Some((_, Problem::Client(_)))) => Outcome::Failed {
            host: Some(host.clone()),
            status: EnhancedStatus::new(5, 7, 30),
            reason: format!(
                "the sender required REQUIRETLS (RFC 8689) but {host} does not support it"
            ),
            remote: false,
        },
        (_, None) => Outcome::Deferred {
            host: None,
            status: EnhancedStatus::new(4, 4, 4),
            reason: format!("no host to try for {destination}"),
            remote: false,
            tls: false,
        },
        (_, Some((host, Problem::Reply(reply)))) => Outcome::Deferred {
            host: Some(host),
            status: reply.enhanced.unwrap_or(EnhancedStatus::new(4, 0, 0)),
            reason: reply.to_string(),
            remote: true,
            tls: false,
        },
        (_, Some((host, Problem::Client(error)))) => deferral(level, host, error),
    };
    done.extend(open.into_iter().map(|i| (i, outcome.clone())));
    done
}

/// Does this reply send the recipient on to the next MX address (issue 10 item 1)? A
/// temporary reply to the whole transaction or a `421` does; a 4xx to its RCPT does not.
fn moves_on(step: Step, reply: &Reply) -> bool {
    reply.code / 100 == 4 && (step != Step::Rcpt || reply.code == 421)
}

/// The deferral for recipients no address could take, from the last connection problem.
fn deferral(level: TlsLevel, host: String, error: ClientError) -> Outcome {
    let ((class, subject, detail), tls) = match &error {
        // RFC 3463 X.7.4 "security features not supported": STARTTLS missing, refused or never
        // answered; X.7.5 "cryptographic failure": everything from the 220 on.
        ClientError::Tls(
            TlsFailure::NoStarttls
            | TlsFailure::StarttlsRefused(_)
            | TlsFailure::StarttlsTimeout(_)
            | TlsFailure::StarttlsLost(_),
        ) => ((4, 7, 4), true),
        ClientError::Tls(_) => ((4, 7, 5), true),
        ClientError::Connect { .. } => ((4, 4, 1), false),
        ClientError::Timeout(_) | ClientError::Io(_) | ClientError::Closed(_) => ((4, 4, 2), false),
        ClientError::Protocol(_) => ((4, 5, 0), false),
        ClientError::Refused { .. } => ((4, 4, 0), false),
    };
    let status = EnhancedStatus::new(class, subject, detail);
    // A refused greeting or EHLO is the remote's own reply; everything else is what tlsgate
    // saw or decided.
    if let ClientError::Refused { reply, .. } = &error {
        return Outcome::Deferred {
            host: Some(host),
            status: reply.enhanced.filter(|e| e.class == 4).unwrap_or(status),
            reason: reply.to_string(),
            remote: true,
            tls,
        };
    }
    let reason = if tls {
        format!("TLS required ({level}) but not possible with {host}: {error}")
    } else {
        format!("{host}: {error}")
    };
    Outcome::Deferred {
        host: Some(host),
        status,
        reason,
        remote: false,
        tls,
    }
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

/// Checks that need the peer's capabilities but no transaction: SIZE (RFC 1870) and SMTPUTF8.
/// These are tlsgate's own decisions, so the outcome is not a remote reply.
fn refuse_before_sending(
    meta: &MessageMeta,
    rcpts: &[&Recipient],
    body: &[u8],
    conn: &SmtpConnection,
) -> Option<Outcome> {
    let size = meta.received_header.len() as u64 + body.len() as u64;
    if let Some(limit) = conn.caps.size.filter(|l| *l > 0) {
        if size > limit {
            return Some(Outcome::Failed {
                host: Some(conn.host.clone()),
                status: EnhancedStatus::new(5, 3, 4),
                reason: format!(
                    "message is {size} octets, {} accepts at most {limit} (its EHLO SIZE)",
                    conn.host
                ),
                remote: false,
            });
        }
    }
    if !conn.caps.smtputf8 && needs_smtputf8(meta, rcpts, body) {
        return Some(Outcome::Failed {
            host: Some(conn.host.clone()),
            status: EnhancedStatus::new(5, 6, 7),
            reason: format!(
                "the message needs SMTPUTF8 (a non-ASCII address or header) but {} does not \
                 offer it",
                conn.host
            ),
            remote: false,
        });
    }
    None
}

/// RFC 6531 3.4: a message received with SMTPUTF8 needs it on the next hop only when this
/// transaction's envelope (sender, these recipients) or the message's header section really
/// contains non-ASCII; otherwise it is sent without the parameter (issue 10 item 2).
pub fn needs_smtputf8(meta: &MessageMeta, rcpts: &[&Recipient], body: &[u8]) -> bool {
    if !meta.smtputf8 {
        return false;
    }
    let sender = meta.sender.as_deref().unwrap_or("");
    if !sender.is_ascii() || rcpts.iter().any(|r| !r.address.is_ascii()) {
        return true;
    }
    let header_end = memchr::memmem::find(body, b"\r\n\r\n").unwrap_or(body.len());
    !body[..header_end].is_ascii()
}

fn park(ctx: &AttemptContext<'_>, key: PoolKey, conn: SmtpConnection) {
    if let Some(done) = ctx.pool.put(key, conn) {
        tokio::spawn(done.quit());
    }
}

/// The connection facts a delivered recipient's outcome records.
struct Delivery<'a> {
    host: &'a str,
    peer_does_dsn: bool,
    tls_version: Option<String>,
    level: TlsLevel,
    source: PolicySource,
}

fn outcome_of(with: &Delivery<'_>, reply: &Reply) -> Outcome {
    let host = with.host;
    let status = |default: EnhancedStatus| reply.enhanced.unwrap_or(default);
    match reply.code / 100 {
        2 => Outcome::Delivered {
            host: host.to_string(),
            reply: reply.to_string(),
            peer_does_dsn: with.peer_does_dsn,
            tls_version: with.tls_version.clone(),
            level: with.level,
            source: with.source,
        },
        4 => Outcome::Deferred {
            host: Some(host.to_string()),
            status: status(EnhancedStatus::new(4, 0, 0)),
            reason: reply.to_string(),
            remote: true,
            tls: false,
        },
        _ => Outcome::Failed {
            host: Some(host.to_string()),
            status: status(EnhancedStatus::new(5, 0, 0)),
            reason: reply.to_string(),
            remote: true,
        },
    }
}

fn summarise(replies: &[(Step, Reply)]) -> String {
    let mut parts: Vec<String> = replies.iter().map(|(_, r)| r.to_string()).collect();
    parts.dedup();
    parts.join(" | ")
}
