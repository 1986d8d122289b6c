//! One delivery attempt: the recipients of one message that share a destination, tried host by
//! host until each has a final answer or every address was tried.
//!
//! RFC 5321 5.1: the addresses of the MX hosts are tried in order. A temporary failure of the
//! session or the whole transaction — connect, greeting, EHLO, TLS, a 4xx to MAIL, DATA or the
//! end of data, a `421` anywhere, a lost connection — moves the recipients still open on to the
//! next address in the same attempt. A 4xx to one RCPT defers that recipient only; a 5xx fails
//! the recipients it answered. When no address took the message, the open recipients are
//! deferred with the last problem seen.

use super::client::{ClientError, ConnectParams, SmtpConnection, Step, Timeouts};
use super::pool::{ConnectionPool, PoolKey};
use super::route::{self, Destination, Host, HostTlsa, Route, RouteError};
use crate::audit::{AuditEvent, AuditLog};
use crate::config::Config;
use crate::dns::Resolver;
use crate::metrics::Metrics;
use crate::mta_sts::MtaSts;
use crate::policy::decision::{self, Demands, HostFacts, Requirement, Rules, Target, TlsDecision};
use crate::policy::domain_list::DomainList;
use crate::policy::mta_sts::StsPolicy;
use crate::policy::{PolicySource, TlsLevel};
use crate::queue::message::{MessageMeta, Recipient};
use crate::reporting::tls::{result_type, sending_ip_toward, SessionOutcome};
use crate::smtp::reply::{EnhancedStatus, Reply};
use crate::tls::client::{ClientTls, TlsFailure};
use crate::tls::verify::PresentedChain;
use crate::tls::TlsInfo;
use crate::tls_report::{ReportPolicy, SessionResult, TlsReportSink};
use std::net::SocketAddr;
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
    /// MTA-STS policies (RFC 8461); `None` when disabled.
    pub mta_sts: Option<&'a MtaSts>,
    /// Where each session's TLS outcome is counted for TLS reports (RFC 8460).
    pub tls_reports: &'a dyn TlsReportSink,
}

/// The policy target of a destination: the next hop with its configured level, or the
/// recipient domain.
pub fn target_of<'a>(config: &Config, destination: &'a Destination) -> Target<'a> {
    match destination {
        Destination::NextHop => Target::NextHop(config.inbound.next_hop_tls),
        Destination::Domain(domain) => Target::Domain(domain),
    }
}

/// Gathers the DNS facts of one host (its TLSA records, where the policy reads them) and makes
/// the TLS decision for it: the one sequence delivery and the compliance check share, so that
/// `probe` reports what delivery would do (issue 12 item 1). Returns the facts (for reports)
/// and the decision. `sts`: the destination's MTA-STS policy in force, looked up beforehand
/// where [`decision::wants_sts`] says so (`MtaSts::policy_for`).
pub async fn decide_for_host(
    resolver: &dyn Resolver,
    (rules, target, demands): (Rules<'_>, Target<'_>, Demands),
    route: &Route,
    host: &Host,
    wants_tlsa: bool,
    sts: Option<&StsPolicy>,
) -> (HostTlsa, TlsDecision) {
    let tlsa = route::tlsa_facts(resolver, route, host, wants_tlsa).await;
    let decision = decision::decide(
        rules,
        target,
        demands,
        HostFacts {
            host: &host.name,
            expanded: host.expanded.as_deref(),
            tlsa_base: &tlsa.base,
            mx_security: route.mx_security,
            tlsa: &tlsa.facts,
            sts,
        },
    );
    (tlsa, decision)
}

/// The rules in force for an attempt: the `[[policy]]` entries and the domain list.
pub fn rules<'a>(config: &'a Config, list: &'a DomainList) -> Rules<'a> {
    Rules {
        policies: &config.policies,
        list,
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
    /// The TLS level applied to the host (issue 12 item 5).
    pub level: TlsLevel,
    /// Which rule set it: `list`, `config`, `dane`, `requiretls`, `opportunistic`.
    pub source: PolicySource,
}

/// The result of [`deliver`]: one outcome per recipient, and the TLS policy that applied (the
/// last host's decision; the destination's base policy when no host was tried), for the
/// delivery metric's labels.
pub struct Attempted {
    /// One outcome per recipient, in no particular order.
    pub outcomes: Vec<(usize, Outcome)>,
    /// The TLS level applied.
    pub level: TlsLevel,
    /// Where it came from.
    pub source: PolicySource,
}

/// The last reason an address could not take the open recipients.
enum Problem {
    /// The TLS policy forbids using the host now (a failed TLSA lookup, `dane-only` without
    /// records): the decision's reason.
    Policy(String),
    /// Connecting, greeting, EHLO, TLS or the connection itself.
    Client(ClientError),
    /// A temporary reply to the whole transaction (or a `421`), in the remote's words.
    Reply(Reply),
}

/// Delivers `recipients` (indices into `meta.recipients`) of one message to `destination`.
/// Each host gets the TLS the policy decision (`policy::decision::decide`) gives it.
pub async fn deliver(
    ctx: &AttemptContext<'_>,
    meta: &MessageMeta,
    body: &[u8],
    destination: &Destination,
    recipients: &[usize],
    log: &mut Vec<HostLog>,
) -> Attempted {
    let rules = rules(ctx.config, ctx.domain_list);
    let target = target_of(ctx.config, destination);
    let demands = Demands {
        requiretls: meta.requiretls,
    };
    let base = decision::base_policy(rules, target, demands);
    let (mut level, mut source) = (base.level, base.source);
    let outcomes = deliver_to_hosts(
        ctx,
        meta,
        body,
        destination,
        recipients,
        log,
        (&mut level, &mut source),
    )
    .await;
    Attempted {
        outcomes,
        level,
        source,
    }
}

async fn deliver_to_hosts(
    ctx: &AttemptContext<'_>,
    meta: &MessageMeta,
    body: &[u8],
    destination: &Destination,
    recipients: &[usize],
    log: &mut Vec<HostLog>,
    applied: (&mut TlsLevel, &mut PolicySource),
) -> Vec<(usize, Outcome)> {
    let everyone = |outcome: Outcome| -> Vec<(usize, Outcome)> {
        recipients.iter().map(|&i| (i, outcome.clone())).collect()
    };
    let route = match route::hosts_for(ctx.config, ctx.resolver, destination).await {
        Ok(route) => route,
        Err(RouteError::Permanent { status, reason }) => {
            return everyone(Outcome::Failed {
                host: None,
                status,
                reason,
                remote: false,
            })
        }
        Err(RouteError::Temporary { status, reason }) => {
            // `route` gives 4.7.5 only for DNSSEC-bogus answers (D5): counted with the TLS
            // policy failures, as the MX host can then not be authenticated at all.
            if status == EnhancedStatus::new(4, 7, 5) {
                ctx.metrics
                    .tls_failures
                    .with_label_values(&["dnssec_bogus"])
                    .inc();
                tracing::warn!(queue_id = %meta.id, destination = %destination, reason = %reason,
                    "DNSSEC-bogus answer for the destination, deferred");
            }
            return everyone(Outcome::Deferred {
                host: None,
                status,
                reason,
                remote: false,
                tls: false,
            });
        }
    };
    let rules = rules(ctx.config, ctx.domain_list);
    let target = target_of(ctx.config, destination);
    let demands = Demands {
        requiretls: meta.requiretls,
    };
    let domain = match destination {
        Destination::Domain(d) => Some(d),
        Destination::NextHop => None,
    };
    let wants_tlsa = decision::wants_tlsa(rules, target);
    // RFC 8461 section 5: the policy in force, fetched before the first host when it is new.
    let sts = match (ctx.mta_sts, domain) {
        (Some(service), Some(d)) if decision::wants_sts(rules, target) => {
            service.policy_for(d).await
        }
        _ => None,
    };

    // Recipients without a final answer yet, and the answers given so far.
    let mut open: Vec<usize> = recipients.to_vec();
    let mut done: Vec<(usize, Outcome)> = Vec::with_capacity(recipients.len());
    let mut last_problem: Option<(String, Problem)> = None;
    let mut requiretls_refused: Option<String> = None;
    // The last decision made, for the deferral's wording.
    let mut level = *applied.0;
    'hosts: for host in &route.hosts {
        if open.is_empty() {
            break;
        }
        let (_, policy) = decide_for_host(
            ctx.resolver,
            (rules, target, demands),
            &route,
            host,
            wants_tlsa,
            sts.as_ref(),
        )
        .await;
        level = policy.level;
        (*applied.0, *applied.1) = (policy.level, policy.source);
        // Sessions to recipient domains are reported under this policy; the next hop is ours.
        // Under an MTA-STS `testing` policy the session is reported by `sts_testing` with the
        // result `enforce` would have had, not here (RFC 8461 section 5, RFC 8460 4.3.3).
        let report = match policy.sts_testing() {
            Some(_) => None,
            None => policy.report_policy(domain),
        };
        if let Requirement::Skip { reason, label } = &policy.require {
            tls_policy_failure(ctx, meta, destination, &host.name, &policy, reason, label);
            let session = Session {
                policy: report.as_ref(),
                require: &policy.require,
                host: &host.name,
                addr: None,
            };
            report_session(ctx, session, SessionOutcome::Skipped(label), Some(reason));
            log.push(HostLog {
                host: host.name.clone(),
                addr: "-".into(),
                tls: None,
                result: reason.clone(),
                level: policy.level,
                source: policy.source,
            });
            last_problem = Some((host.name.clone(), Problem::Policy(reason.clone())));
            continue;
        }
        for &addr in &host.addrs {
            if open.is_empty() {
                break 'hosts;
            }
            let key = PoolKey {
                addr,
                host: host.name.clone(),
                require: policy.require.clone(),
            };
            let connected = connect(ctx, &key, report.as_ref()).await;
            if let Some(service) = ctx.mta_sts {
                super::sts_testing::record(
                    service.sink(),
                    ctx.tls,
                    &policy,
                    domain,
                    &host.name,
                    addr,
                    connected.as_ref(),
                );
            }
            let conn = match connected {
                Ok(conn) => conn,
                Err(e) => {
                    if let (true, ClientError::Tls(failure)) =
                        (policy.listed || policy.require.authenticated(), &e)
                    {
                        tls_policy_failure(
                            ctx,
                            meta,
                            destination,
                            &host.name,
                            &policy,
                            &failure.to_string(),
                            failure.metric_label(),
                        );
                    }
                    log.push(HostLog {
                        host: host.name.clone(),
                        addr: addr.to_string(),
                        tls: None,
                        result: e.to_string(),
                        level: policy.level,
                        source: policy.source,
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
                    level: policy.level,
                    source: policy.source,
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
                        level: policy.level,
                        source: policy.source,
                    });
                    let delivered_with = Delivery {
                        host: &host.name,
                        peer_does_dsn: conn.caps.dsn,
                        tls_version: conn.tls.as_ref().map(|t| t.version.clone()),
                        level: policy.level,
                        source: policy.source,
                    };
                    let delivered = result.replies.iter().any(|(_, r)| r.code / 100 == 2);
                    let audited = policy.listed || policy.require.authenticated();
                    if let (true, true, Some(tls)) = (delivered, audited, &conn.tls) {
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
                                level: policy.level.to_string(),
                                policy_source: policy.source.label().to_string(),
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
                        level: policy.level,
                        source: policy.source,
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
        (Some(host), None | Some((_, Problem::Client(_) | Problem::Policy(_)))) => {
            Outcome::Failed {
                host: Some(host.clone()),
                status: EnhancedStatus::new(5, 7, 30),
                reason: format!(
                    "the sender required REQUIRETLS (RFC 8689) but {host} does not support it"
                ),
                remote: false,
            }
        }
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
        (_, Some((host, Problem::Policy(reason)))) => Outcome::Deferred {
            host: Some(host.clone()),
            status: EnhancedStatus::new(4, 7, 5),
            reason: format!("TLS required ({level}) but not possible with {host}: {reason}"),
            remote: false,
            tls: true,
        },
    };
    done.extend(open.into_iter().map(|i| (i, outcome.clone())));
    done
}

/// A host that cannot meet a mandatory TLS policy (a listed domain, DANE): the metric, the
/// audit entry and the warning that T3 promises, in one place.
fn tls_policy_failure(
    ctx: &AttemptContext<'_>,
    meta: &MessageMeta,
    destination: &Destination,
    host: &str,
    policy: &TlsDecision,
    reason: &str,
    metric_label: &'static str,
) {
    ctx.metrics
        .tls_failures
        .with_label_values(&[metric_label])
        .inc();
    crate::audit::submit(
        ctx.audit,
        AuditEvent::TlsFailure {
            queue_id: meta.id.to_string(),
            domain: destination.to_string(),
            host: host.to_string(),
            reason: reason.to_string(),
            level: policy.level.to_string(),
            policy_source: policy.source.label().to_string(),
        },
    );
    tracing::warn!(queue_id = %meta.id, destination = %destination, host = %host,
        level = %policy.level, policy_source = policy.source.label(), reason = %reason,
        "TLS policy not met, host skipped");
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

/// One session with one MX host, as TLS reporting names it.
struct Session<'a> {
    /// The policy to count it under; `None` for the next hop (not reported).
    policy: Option<&'a ReportPolicy>,
    require: &'a Requirement,
    host: &'a str,
    addr: Option<SocketAddr>,
}

/// Counts one session for TLS reporting (RFC 8460 4.4; issue 13 items 2 and 3): recipient
/// domains only, sessions that got to the TLS decision only ([`result_type`] decides).
fn report_session(
    ctx: &AttemptContext<'_>,
    session: Session<'_>,
    outcome: SessionOutcome<'_>,
    detail: Option<&str>,
) {
    let (Some(policy), Some(result)) = (session.policy, result_type(session.require, outcome))
    else {
        return;
    };
    ctx.tls_reports.record(SessionResult {
        policy: policy.clone(),
        receiving_mx_hostname: session.host.to_string(),
        receiving_ip: session.addr.map(|a| a.ip()),
        sending_mta_ip: session.addr.and_then(sending_ip_toward),
        result,
        detail: result.err().and(detail).map(str::to_string),
    });
}

/// A pooled connection when one is idle and still answers, else a new one (see
/// [`open_for_policy`]). A new connection is one session for TLS reporting under `report`
/// (a pooled one was counted when it was opened).
async fn connect(
    ctx: &AttemptContext<'_>,
    key: &PoolKey,
    report: Option<&ReportPolicy>,
) -> Result<SmtpConnection, ClientError> {
    while let Some(mut idle) = ctx.pool.take(key) {
        if idle.ready_for_reuse().await.is_ok() {
            return Ok(idle);
        }
    }
    let d = &ctx.config.delivery;
    let params = ConnectParams {
        addr: key.addr,
        host: &key.host,
        helo_name: &ctx.config.server.hostname,
        require: &key.require,
        tls: ctx.tls,
        timeouts: Timeouts {
            connect: d.connect_timeout,
            command: d.command_timeout,
            data: d.data_timeout,
        },
    };
    let opened = open_for_policy(&params, None).await;
    let (outcome, detail) = match &opened {
        Ok((conn, _)) if conn.tls.is_some() => (SessionOutcome::Tls, None),
        Ok((_, fallback)) => (
            SessionOutcome::Plaintext(fallback.as_ref()),
            Some(fallback.as_ref().map_or_else(
                || "no STARTTLS offered, or STARTTLS refused".to_string(),
                |f| f.to_string(),
            )),
        ),
        Err(ClientError::Tls(failure)) => {
            (SessionOutcome::Failed(failure), Some(failure.to_string()))
        }
        Err(_) => (SessionOutcome::NotReached, None),
    };
    let session = Session {
        policy: report,
        require: &key.require,
        host: &key.host,
        addr: Some(key.addr),
    };
    report_session(ctx, session, outcome, detail.as_deref());
    opened.map(|(conn, _)| conn)
}

/// Opens a connection under `params.require` exactly as delivery does: opportunistic TLS that
/// fails is retried once in plaintext, as `may` promises no more than that (RFC 7435; Postfix
/// does the same). Returns the connection and, after such a retry, the TLS failure that caused
/// it (`tlsgate probe` reports it). Delivery and the compliance check both open connections
/// here, so the check reports what delivery would do. `observer` keeps the chain the server
/// presents, also when it is refused (reports only).
pub async fn open_for_policy(
    params: &ConnectParams<'_>,
    observer: Option<&PresentedChain>,
) -> Result<(SmtpConnection, Option<TlsFailure>), ClientError> {
    let first = match observer {
        Some(chain) => SmtpConnection::open_observed(params, chain).await,
        None => SmtpConnection::open(params).await,
    };
    match first {
        // Response injection is an attack, not a broken TLS stack: no plaintext retry then.
        Err(ClientError::Tls(failure))
            if *params.require == Requirement::Opportunistic
                && failure != TlsFailure::ResponseInjection =>
        {
            tracing::info!(host = %params.host, addr = %params.addr, reason = %failure,
                "opportunistic TLS failed, retrying in plaintext");
            let plaintext = ConnectParams {
                require: &Requirement::Plaintext,
                ..*params
            };
            let conn = SmtpConnection::open(&plaintext).await?;
            Ok((conn, Some(failure)))
        }
        other => other.map(|conn| (conn, None)),
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
