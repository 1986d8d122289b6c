//! Where a recipient's mail goes: the internal next hop for local domains, otherwise the
//! domain's MX hosts (RFC 5321 5.1), each with its addresses.
//!
//! MX records are tried by preference, equal preferences in random order; a domain without MX
//! records gets its own A/AAAA as an implicit MX; a null MX (RFC 7505) and a domain that does
//! not exist are permanent failures; DNS trouble is temporary.

use crate::config::Config;
use crate::dns::{DnsError, MxRecord, Resolver, Security};
use crate::domain::Domain;
use crate::policy::decision::TlsaFacts;
use crate::smtp::reply::EnhancedStatus;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};

/// Where a group of recipients is delivered; also the key of the per-destination limit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// `inbound.next_hop`, for recipients in `inbound.local_domains`.
    NextHop,
    /// The MX hosts of this domain.
    Domain(Domain),
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Destination::NextHop => f.write_str("next-hop"),
            Destination::Domain(d) => write!(f, "{d}"),
        }
    }
}

/// The destination of one recipient address.
pub fn destination_of(config: &Config, recipient: &str) -> Result<Destination, RouteError> {
    let domain = recipient
        .rsplit_once('@')
        .and_then(|(_, d)| Domain::parse(d).ok())
        .ok_or_else(|| RouteError::Permanent {
            status: EnhancedStatus::new(5, 1, 3),
            reason: format!("recipient address {recipient} has no usable domain"),
        })?;
    // Local domains only ever go to the next hop: their MX is this gateway itself, and
    // without a configured next hop the mail waits (deferred) instead of looping.
    if config.is_local_domain(&domain) {
        Ok(Destination::NextHop)
    } else {
        Ok(Destination::Domain(domain))
    }
}

/// One host to try, with the addresses to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host name (checked against its certificate), or the literal address.
    pub name: String,
    /// Its addresses with the port to use, in the order to try.
    pub addrs: Vec<SocketAddr>,
    /// Whether its address records validated (RFC 7672 section 2.2.2: TLSA records are looked
    /// up only for hosts whose addresses are secure). A literal address is insecure.
    pub security: Security,
}

/// The hosts of a destination and whether the MX answer they came from validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The hosts to try, in order.
    pub hosts: Vec<Host>,
    /// The DNSSEC status of the MX RRset (or of its denial, for an implicit MX); the next hop
    /// and literal addresses are insecure. DANE needs it secure (RFC 7672 section 2.2.1).
    pub mx_security: Security,
}

/// Why no host could be found for a destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The destination cannot receive mail (no usable domain, no such domain, null MX of
    /// RFC 7505): fail the recipients.
    #[error("{reason}")]
    Permanent {
        /// RFC 3463 status for the DSN.
        status: EnhancedStatus,
        /// What was found, for the DSN and the log.
        reason: String,
    },
    /// Something that may change (a DNS failure, no next hop configured, no address): defer.
    #[error("{reason}")]
    Temporary {
        /// RFC 3463 status for the DSN.
        status: EnhancedStatus,
        /// What was found, for the DSN and the log.
        reason: String,
    },
}

impl RouteError {
    /// The RFC 3463 status of either variant.
    pub fn status(&self) -> EnhancedStatus {
        match self {
            RouteError::Permanent { status, .. } | RouteError::Temporary { status, .. } => *status,
        }
    }
}

/// The hosts to try for `destination`, in order. DNSSEC-bogus answers are temporary failures
/// (`4.7.5`, D5): never a reason to go on without the signatures.
pub async fn hosts_for(
    config: &Config,
    resolver: &dyn Resolver,
    destination: &Destination,
) -> Result<Route, RouteError> {
    match destination {
        Destination::NextHop => {
            let hop = config
                .inbound
                .next_hop
                .as_deref()
                .ok_or_else(|| RouteError::Temporary {
                    status: EnhancedStatus::new(4, 3, 5),
                    reason: "inbound.next_hop is not configured".into(),
                })?;
            next_hop_hosts(resolver, hop).await
        }
        Destination::Domain(domain) => mx_hosts(resolver, domain, config.outbound.smtp_port).await,
    }
}

async fn next_hop_hosts(resolver: &dyn Resolver, hop: &str) -> Result<Route, RouteError> {
    let (host, port) = hop
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| RouteError::Temporary {
            status: EnhancedStatus::new(4, 3, 5),
            reason: format!("inbound.next_hop {hop:?} is not host:port"),
        })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Route {
            hosts: vec![Host {
                name: host.to_string(),
                addrs: vec![SocketAddr::new(ip, port)],
                security: Security::Insecure,
            }],
            mx_security: Security::Insecure,
        });
    }
    let addrs = resolver
        .addresses(host)
        .await
        .map_err(|e| RouteError::Temporary {
            status: dns_status(&e),
            reason: format!("cannot resolve next hop {host}: {e}"),
        })?;
    let security = addrs.security;
    let addrs = addrs.value;
    if addrs.is_empty() {
        return Err(RouteError::Temporary {
            status: EnhancedStatus::new(4, 4, 3),
            reason: format!("next hop {host} has no address"),
        });
    }
    Ok(Route {
        hosts: vec![Host {
            name: host.to_string(),
            addrs: addrs
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            security,
        }],
        mx_security: Security::Insecure,
    })
}

/// The status of a temporary DNS failure: `4.7.5` when the data was DNSSEC-bogus (a security
/// failure, D5), else `4.4.3` (RFC 3463: directory server failure).
fn dns_status(e: &DnsError) -> EnhancedStatus {
    match e {
        DnsError::Bogus { .. } => EnhancedStatus::new(4, 7, 5),
        _ => EnhancedStatus::new(4, 4, 3),
    }
}

async fn mx_hosts(
    resolver: &dyn Resolver,
    domain: &Domain,
    port: u16,
) -> Result<Route, RouteError> {
    let records = match resolver.mx(domain).await {
        Ok(records) => records,
        Err(DnsError::NoSuchDomain(_)) => {
            return Err(RouteError::Permanent {
                status: EnhancedStatus::new(5, 1, 2),
                reason: format!("the domain {domain} does not exist"),
            })
        }
        Err(e) => {
            return Err(RouteError::Temporary {
                status: dns_status(&e),
                reason: e.to_string(),
            })
        }
    };
    let mx_security = records.security;
    let records = records.value;
    if is_null_mx(&records) {
        return Err(RouteError::Permanent {
            status: EnhancedStatus::new(5, 1, 10),
            reason: format!("the domain {domain} accepts no mail (null MX, RFC 7505)"),
        });
    }
    let names: Vec<String> = if records.is_empty() {
        // RFC 5321 5.1: no MX records, the domain itself is the implicit MX.
        vec![domain.to_string()]
    } else {
        order_mx(records)
            .into_iter()
            .filter(|r| r.exchange != ".")
            .map(|r| r.exchange)
            .collect()
    };
    let mut hosts = Vec::new();
    let mut last_error = None;
    for name in names {
        match resolver.addresses(&name).await {
            Ok(ips) if !ips.value.is_empty() => hosts.push(Host {
                addrs: ips
                    .value
                    .into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect(),
                name,
                security: ips.security,
            }),
            Ok(_) => last_error = Some(format!("{name} has no address")),
            Err(e) => last_error = Some(e.to_string()),
        }
    }
    if hosts.is_empty() {
        return Err(RouteError::Temporary {
            status: EnhancedStatus::new(4, 4, 4),
            reason: format!(
                "no reachable mail host for {domain}: {}",
                last_error.unwrap_or_else(|| "no MX host".into())
            ),
        });
    }
    Ok(Route { hosts, mx_security })
}

/// The TLSA facts of one host for the policy decision (RFC 7672 section 2.2): looked up only
/// when the policy reads them (`wanted`, from `policy::decision::wants_tlsa`), the MX RRset is
/// secure (2.2.1) and the host's addresses are secure (2.2.2), at `_<port>._tcp.<host>` with
/// the port connected to. A lookup error is a failure of this host, never "no records".
pub async fn tlsa_facts(
    resolver: &dyn Resolver,
    route: &Route,
    host: &Host,
    wanted: bool,
) -> TlsaFacts {
    let not_looked = |why: &str| TlsaFacts::NotLooked(why.to_string());
    if !wanted {
        return not_looked("the policy does not use DANE");
    }
    if route.mx_security != Security::Secure {
        return not_looked("the MX records are not DNSSEC-signed");
    }
    if host.security != Security::Secure {
        return TlsaFacts::NotLooked(format!(
            "the address records of {} are not DNSSEC-signed",
            host.name
        ));
    }
    let Some(port) = host.addrs.first().map(SocketAddr::port) else {
        return not_looked("the host has no address");
    };
    let name = format!("_{port}._tcp.{}", host.name);
    match resolver.tlsa(&name).await {
        Ok(answer) if answer.is_secure() => TlsaFacts::Secure(answer.value),
        Ok(_) => TlsaFacts::Insecure,
        Err(e) => TlsaFacts::Failed {
            bogus: matches!(e, DnsError::Bogus { .. }),
            reason: e.to_string(),
        },
    }
}

/// RFC 7505: a single MX record with the root as exchange.
fn is_null_mx(records: &[MxRecord]) -> bool {
    records.len() == 1 && records[0].exchange == "."
}

/// Sorts by preference; records of equal preference are shuffled so that load spreads
/// (RFC 5321 5.1).
pub fn order_mx(mut records: Vec<MxRecord>) -> Vec<MxRecord> {
    let random = RandomState::new();
    let mut keyed: Vec<(u16, u64, MxRecord)> = records
        .drain(..)
        .map(|r| (r.preference, random.hash_one(&r.exchange), r))
        .collect();
    keyed.sort_by_key(|(preference, shuffle, _)| (*preference, *shuffle));
    keyed.into_iter().map(|(_, _, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(preference: u16, exchange: &str) -> MxRecord {
        MxRecord {
            preference,
            exchange: exchange.into(),
        }
    }

    #[test]
    fn orders_by_preference_and_shuffles_ties() {
        let records = vec![mx(20, "c"), mx(10, "a"), mx(10, "b"), mx(30, "d")];
        let mut seen_first = std::collections::HashSet::new();
        for _ in 0..64 {
            let ordered = order_mx(records.clone());
            let prefs: Vec<u16> = ordered.iter().map(|r| r.preference).collect();
            assert_eq!(prefs, vec![10, 10, 20, 30]);
            seen_first.insert(ordered[0].exchange.clone());
        }
        // With 64 independent shuffles both tied hosts come first at some point.
        assert_eq!(seen_first.len(), 2);
    }

    #[test]
    fn null_mx_is_recognised() {
        assert!(is_null_mx(&[mx(0, ".")]));
        assert!(!is_null_mx(&[mx(0, "."), mx(10, "mx.example")]));
        assert!(!is_null_mx(&[]));
    }
}
