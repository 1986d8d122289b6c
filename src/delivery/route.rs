//! Where a recipient's mail goes: the internal next hop for local domains, otherwise the
//! domain's MX hosts (RFC 5321 5.1), each with its addresses.
//!
//! MX records are tried by preference, equal preferences in random order; a domain without MX
//! records gets its own A/AAAA as an implicit MX; a null MX (RFC 7505) and a domain that does
//! not exist are permanent failures; DNS trouble is temporary.

use crate::config::Config;
use crate::dns::{Addresses, DnsError, MxRecord, Resolver, Secured, Security};
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
    /// The host name as the MX record (or the configuration) gives it, or the literal address:
    /// checked against the certificate by PKIX, the SMTP client's name for the host.
    pub name: String,
    /// The fully CNAME-expanded name, when `name` is an alias and every CNAME of the chain and
    /// the address records at its end validated (RFC 7672 section 2.2.3): the first TLSA base
    /// domain to try, and a DANE-TA reference identifier (section 3.2.2). `None` for a name
    /// that is no alias, and for an alias whose expansion is not secure (its target must not
    /// be trusted as a name of the host).
    pub expanded: Option<String>,
    /// Its addresses with the port to use, in the order to try.
    pub addrs: Vec<SocketAddr>,
    /// Whether `name`'s own records validated: its address records, or for an alias its
    /// CNAME (RFC 7672 section 2.2.3: TLSA records are looked up only for hosts whose name is
    /// secure; an alias into an unsigned zone keeps its TLSA records at the alias). A literal
    /// address is insecure.
    pub security: Security,
}

impl Host {
    /// A host from its name and the answer to its address lookup (empty addresses: `None`).
    fn resolved(name: String, port: u16, answer: Secured<Addresses>) -> Option<Host> {
        if answer.value.ips.is_empty() {
            return None;
        }
        let expanded = match answer.security {
            Security::Secure => answer.value.canonical,
            Security::Insecure => None,
        };
        Some(Host {
            addrs: answer
                .value
                .ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
            expanded,
            security: answer.value.own,
            name,
        })
    }
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
                expanded: None,
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
    let host =
        Host::resolved(host.to_string(), port, addrs).ok_or_else(|| RouteError::Temporary {
            status: EnhancedStatus::new(4, 4, 3),
            reason: format!("next hop {host} has no address"),
        })?;
    Ok(Route {
        hosts: vec![host],
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
            Ok(answer) => match Host::resolved(name.clone(), port, answer) {
                Some(host) => hosts.push(host),
                None => last_error = Some(format!("{name} has no address")),
            },
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

/// A host's TLSA facts and the TLSA base domain they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTlsa {
    /// Where the records were looked up last: the host's expanded name when records were
    /// found there, else its own name (RFC 7672 section 2.2.3). The SNI of a DANE connection
    /// (section 8.1).
    pub base: String,
    /// What was found.
    pub facts: TlsaFacts,
}

/// The TLSA facts of one host for the policy decision (RFC 7672 section 2.2): looked up only
/// when the policy reads them (`wanted`, from `policy::decision::wants_tlsa`), the MX RRset is
/// secure (2.2.1) and the host's name is secure (2.2.3), with the port connected to.
///
/// Where (RFC 7672 section 2.2.3): for an alias whose whole CNAME chain validated, first at
/// `_<port>._tcp.<expanded name>`; when no secure records are there, at
/// `_<port>._tcp.<host>`. For an alias whose expansion is not secure, and for a name that is no
/// alias, only at `_<port>._tcp.<host>`. A lookup error is a failure of this host, never "no
/// records", and is not passed over for the original name.
pub async fn tlsa_facts(
    resolver: &dyn Resolver,
    route: &Route,
    host: &Host,
    wanted: bool,
) -> HostTlsa {
    let not_looked = |why: String| HostTlsa {
        base: host.name.clone(),
        facts: TlsaFacts::NotLooked(why),
    };
    if !wanted {
        return not_looked("the policy does not use DANE".into());
    }
    if route.mx_security != Security::Secure {
        // Say why: DNSSEC off or unavailable on the resolver path is not the zone's fault.
        let status = resolver.dnssec_status();
        return not_looked(if status.in_use() {
            "the MX records are not DNSSEC-signed".into()
        } else {
            format!("DNSSEC {status}")
        });
    }
    if host.security != Security::Secure {
        return not_looked(format!(
            "the address records of {} are not DNSSEC-signed",
            host.name
        ));
    }
    let Some(port) = host.addrs.first().map(SocketAddr::port) else {
        return not_looked("the host has no address".into());
    };
    if let Some(expanded) = &host.expanded {
        let facts = tlsa_at(resolver, port, expanded).await;
        let found = matches!(&facts, TlsaFacts::Secure(records) if !records.is_empty());
        if found || matches!(facts, TlsaFacts::Failed { .. }) {
            return HostTlsa {
                base: expanded.clone(),
                facts,
            };
        }
    }
    HostTlsa {
        base: host.name.clone(),
        facts: tlsa_at(resolver, port, &host.name).await,
    }
}

/// The TLSA records at `_<port>._tcp.<base>`.
async fn tlsa_at(resolver: &dyn Resolver, port: u16, base: &str) -> TlsaFacts {
    match resolver.tlsa(&format!("_{port}._tcp.{base}")).await {
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
    use crate::dns::{DnsFuture, Tlsa};

    fn mx(preference: u16, exchange: &str) -> MxRecord {
        MxRecord {
            preference,
            exchange: exchange.into(),
        }
    }

    /// One TLSA answer of [`TlsaZone`].
    type TlsaAnswer = Result<Secured<Vec<Tlsa>>, DnsError>;

    /// TLSA answers by owner name (a secure denial for any other name), and the names asked.
    struct TlsaZone {
        answers: std::collections::HashMap<String, TlsaAnswer>,
        asked: std::sync::Mutex<Vec<String>>,
    }

    impl Resolver for TlsaZone {
        fn mx<'a>(&'a self, _: &'a Domain) -> DnsFuture<'a, Secured<Vec<MxRecord>>> {
            Box::pin(async { Ok(Secured::insecure(Vec::new())) })
        }
        fn addresses<'a>(&'a self, _: &'a str) -> DnsFuture<'a, Secured<Addresses>> {
            unreachable!("tlsa_facts looks up TLSA records only")
        }
        fn txt<'a>(&'a self, _: &'a str) -> DnsFuture<'a, Secured<Vec<String>>> {
            unreachable!("tlsa_facts looks up TLSA records only")
        }
        fn tlsa<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Secured<Vec<Tlsa>>> {
            self.asked.lock().unwrap().push(name.to_string());
            let answer = self.answers.get(name).cloned().unwrap_or(Ok(Secured {
                value: Vec::new(),
                security: Security::Secure,
            }));
            Box::pin(async move { answer })
        }
    }

    fn record() -> Tlsa {
        Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![7; 32],
        }
    }

    fn zone(answers: &[(&str, TlsaAnswer)]) -> TlsaZone {
        TlsaZone {
            answers: answers
                .iter()
                .map(|(n, a)| (n.to_string(), a.clone()))
                .collect(),
            asked: Default::default(),
        }
    }

    fn secure(records: Vec<Tlsa>) -> TlsaAnswer {
        Ok(Secured {
            value: records,
            security: Security::Secure,
        })
    }

    /// `mx1.partner.example`, an alias of `real.hosting.example` (securely expanded or not).
    fn alias(expanded: bool) -> (Route, Host) {
        let host = Host {
            name: "mx1.partner.example".into(),
            expanded: expanded.then(|| "real.hosting.example".into()),
            addrs: vec!["127.0.0.1:25".parse().unwrap()],
            security: Security::Secure,
        };
        let route = Route {
            hosts: vec![host.clone()],
            mx_security: Security::Secure,
        };
        (route, host)
    }

    const EXPANDED: &str = "_25._tcp.real.hosting.example";
    const ORIGINAL: &str = "_25._tcp.mx1.partner.example";

    /// RFC 7672 section 2.2.3: a secure alias's TLSA records are looked up at the expanded
    /// name first; found there, that is the TLSA base domain and the original is not asked.
    #[tokio::test]
    async fn tlsa_at_the_expanded_name_first() {
        let dns = zone(&[(EXPANDED, secure(vec![record()]))]);
        let (route, host) = alias(true);
        let got = tlsa_facts(&dns, &route, &host, true).await;
        assert_eq!(got.base, "real.hosting.example");
        assert_eq!(got.facts, TlsaFacts::Secure(vec![record()]));
        assert_eq!(*dns.asked.lock().unwrap(), vec![EXPANDED]);
    }

    /// RFC 7672 section 2.2.3: no records at the expanded name (securely denied, or an
    /// insecure answer): the original name is tried and is the TLSA base domain.
    #[tokio::test]
    async fn tlsa_falls_back_to_the_original_name() {
        for at_expanded in [secure(Vec::new()), Ok(Secured::insecure(vec![record()]))] {
            let dns = zone(&[(EXPANDED, at_expanded), (ORIGINAL, secure(vec![record()]))]);
            let (route, host) = alias(true);
            let got = tlsa_facts(&dns, &route, &host, true).await;
            assert_eq!(got.base, "mx1.partner.example");
            assert_eq!(got.facts, TlsaFacts::Secure(vec![record()]));
            assert_eq!(*dns.asked.lock().unwrap(), vec![EXPANDED, ORIGINAL]);
        }
    }

    /// A failed lookup at the expanded name is a failure of the host (RFC 7672 section 2.2),
    /// not an absence to pass over: records at the original name would let an attacker who can
    /// block the expanded name's answers choose the weaker of two policies.
    #[tokio::test]
    async fn tlsa_failure_at_the_expanded_name_is_not_passed_over() {
        let failed = Err(DnsError::Temporary {
            name: EXPANDED.into(),
            reason: "SERVFAIL".into(),
        });
        let dns = zone(&[(EXPANDED, failed), (ORIGINAL, secure(vec![record()]))]);
        let (route, host) = alias(true);
        let got = tlsa_facts(&dns, &route, &host, true).await;
        assert_eq!(got.base, "real.hosting.example");
        assert!(matches!(got.facts, TlsaFacts::Failed { bogus: false, .. }));
        assert_eq!(*dns.asked.lock().unwrap(), vec![EXPANDED]);
    }

    /// RFC 7672 section 2.2.3: an alias whose expansion is not secure has its TLSA records at
    /// the original name only; the expanded name is never asked.
    #[tokio::test]
    async fn insecure_expansion_looks_at_the_original_name_only() {
        let dns = zone(&[
            (EXPANDED, secure(vec![record()])),
            (ORIGINAL, secure(Vec::new())),
        ]);
        let (route, host) = alias(false);
        let got = tlsa_facts(&dns, &route, &host, true).await;
        assert_eq!(got.base, "mx1.partner.example");
        assert_eq!(got.facts, TlsaFacts::Secure(Vec::new()));
        assert_eq!(*dns.asked.lock().unwrap(), vec![ORIGINAL]);
    }

    /// Only a secure expansion names the host (RFC 7672 section 2.2.3); the alias's own
    /// status decides whether TLSA records are looked up at all.
    #[test]
    fn a_host_keeps_only_a_secure_expansion() {
        let answer = |security, own| Secured {
            value: Addresses {
                ips: vec!["127.0.0.1".parse().unwrap()],
                canonical: Some("real.hosting.example".into()),
                own,
            },
            security,
        };
        let secure = Host::resolved(
            "mx1.partner.example".into(),
            25,
            answer(Security::Secure, Security::Secure),
        )
        .unwrap();
        assert_eq!(secure.expanded.as_deref(), Some("real.hosting.example"));
        assert_eq!(secure.security, Security::Secure);
        let into_unsigned = Host::resolved(
            "mx1.partner.example".into(),
            25,
            answer(Security::Insecure, Security::Secure),
        )
        .unwrap();
        assert_eq!(into_unsigned.expanded, None);
        assert_eq!(into_unsigned.security, Security::Secure);
        assert_eq!(into_unsigned.addrs, vec!["127.0.0.1:25".parse().unwrap()]);
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
