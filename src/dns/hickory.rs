//! [`Resolver`] over hickory-resolver, with the DNSSEC status of every answer (D5).
//!
//! Three engines answer, by `dns.dnssec` and by the last self-check:
//! * `validate`: hickory's validating resolver (RFC 4035 section 5) from the trust anchor;
//!   each record carries hickory's proof, and an answer is secure when all its records are.
//! * `resolver`: the [`Stub`] asks the loopback resolver with AD and DO set, and trusts the
//!   AD bit of the reply (RFC 6840 section 5.7); its SERVFAIL with a DNSSEC extended error
//!   (RFC 8914) is bogus data.
//! * `off`, and either mode while the self-check finds no DNSSEC on the path: hickory without
//!   validation, every answer insecure.

use super::stub::{extended_errors, Stub};
use super::{
    Addresses, DnsError, DnsFuture, DnssecMode, DnssecStatus, MxRecord, Resolver, Secured,
    Security, Tlsa,
};
use crate::domain::Domain;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::dnssec::rdata::DNSSECRData;
use hickory_resolver::proto::dnssec::{DnssecSummary, Proof, TrustAnchors};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// hickory's resolver with its cache, and the DNSSEC engine of `dns.dnssec`. Built once per
/// process (`server` at start) and shared: delivery and `probe` use it through [`Resolver`],
/// sender authentication through [`HickoryResolver::tokio_resolver`].
pub struct HickoryResolver {
    /// Without validation: `dnssec = "off"`, the fallback while the path carries no DNSSEC,
    /// and sender authentication's resolver (SPF and DKIM do not depend on DNSSEC, and a
    /// broken signature must not turn their lookups into temporary errors).
    plain: TokioResolver,
    /// The DNSSEC engine of the configured mode.
    engine: Engine,
    /// `dns.dnssec`.
    mode: DnssecMode,
    /// What the last conclusive self-check found (the task in `ops::dnssec` repeats it).
    status: RwLock<DnssecStatus>,
}

enum Engine {
    Off,
    /// hickory's validating resolver (its own cache, DO bit set on every query).
    Validate(Box<Validating>),
    /// The loopback validating resolver, asked directly so that the AD bit can be read.
    Resolver(Stub),
}

/// `validate`: the resolver delivery uses, and what the self-check needs to build a fresh one.
struct Validating {
    resolver: TokioResolver,
    nameservers: Vec<SocketAddr>,
    timeout: Duration,
    anchors: Arc<TrustAnchors>,
}

/// One RRset lookup's outcome: the records of the asked type (empty for NODATA), how far they
/// can be trusted (the CNAMEs on the way included), and where a CNAME chain led.
struct Answer {
    records: Vec<RData>,
    security: Security,
    /// The end of the CNAME chain from the asked name, when it is an alias.
    canonical: Option<String>,
}

impl HickoryResolver {
    /// `nameservers` empty: the system configuration (/etc/resolv.conf). DNSSEC off: every
    /// answer insecure (for uses that need no DNSSEC).
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<HickoryResolver, DnsError> {
        Self::with_dnssec(nameservers, timeout, DnssecMode::Off, None)
    }

    /// A resolver whose answers carry their DNSSEC status as `mode` decides (`dns.dnssec`);
    /// `trust_anchor` is `dns.trust_anchor` (`validate` only; `None`: the IANA root KSKs).
    /// The self-check has not run yet ([`DnssecStatus::Unchecked`]).
    pub fn with_dnssec(
        nameservers: &[SocketAddr],
        timeout: Duration,
        mode: DnssecMode,
        trust_anchor: Option<&Path>,
    ) -> Result<HickoryResolver, DnsError> {
        let setup = |reason: String| DnsError::Temporary {
            name: "resolver set-up".into(),
            reason,
        };
        let plain = build(nameservers, timeout, None).map_err(|e| setup(e.to_string()))?;
        let engine = match mode {
            DnssecMode::Off => Engine::Off,
            DnssecMode::Validate => {
                let anchors =
                    super::anchor::load(trust_anchor).map_err(|e| DnsError::Temporary {
                        name: "dns.trust_anchor".into(),
                        reason: e.to_string(),
                    })?;
                let anchors = Arc::new(anchors);
                Engine::Validate(Box::new(Validating {
                    resolver: build(nameservers, timeout, Some(anchors.clone()))
                        .map_err(|e| setup(e.to_string()))?,
                    nameservers: nameservers.to_vec(),
                    timeout,
                    anchors,
                }))
            }
            DnssecMode::Resolver => {
                // The AD bit is only as good as the path to the resolver (RFC 6840 section
                // 5.7); the configuration refuses this too, with the key's name.
                if nameservers.is_empty() || !nameservers.iter().all(|a| a.ip().is_loopback()) {
                    return Err(setup(
                        "dns.dnssec = \"resolver\" needs dns.nameservers, all on loopback".into(),
                    ));
                }
                Engine::Resolver(Stub::new(nameservers.to_vec(), timeout, 2))
            }
        };
        let status = if mode == DnssecMode::Off {
            DnssecStatus::Off
        } else {
            DnssecStatus::Unchecked
        };
        Ok(HickoryResolver {
            plain,
            engine,
            mode,
            status: RwLock::new(status),
        })
    }

    /// The same resolver, cache included, as mail-auth takes it (mail-auth names hickory's
    /// type through its own dependency; Cargo.lock holds one hickory-resolver for both).
    /// Never validating: sender authentication does not depend on DNSSEC.
    pub fn tokio_resolver(&self) -> TokioResolver {
        self.plain.clone()
    }

    /// `dns.dnssec` as configured (or defaulted).
    pub fn dnssec_mode(&self) -> DnssecMode {
        self.mode
    }

    /// Whether the resolver path carries DNSSEC, as the last conclusive self-check found.
    pub fn dnssec_status(&self) -> DnssecStatus {
        self.status
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The DNSSEC self-check (D5): the root's DNSKEY RRset must come with its signatures and
    /// validate against the trust anchor (`validate`), or come with the AD bit set
    /// (`resolver`). A conclusive answer becomes the status every later lookup follows; a
    /// lookup that gets no answer at all (`Err`) leaves the status as it was, so that a
    /// network fault does not switch DANE off.
    pub async fn check_dnssec(&self) -> Result<DnssecStatus, DnsError> {
        let status = match &self.engine {
            Engine::Off => DnssecStatus::Off,
            Engine::Validate(v) => {
                // A fresh resolver each time: the root DNSKEY stays in a cache for up to a
                // day, and the check must see the path as it is now.
                let fresh = build(&v.nameservers, v.timeout, Some(v.anchors.clone()))
                    .map_err(|e| temporary(".", e.to_string()))?;
                check_validating(&fresh).await?
            }
            Engine::Resolver(stub) => check_resolver(stub).await?,
        };
        *self
            .status
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = status.clone();
        Ok(status)
    }

    /// One RRset, through the engine the mode and the self-check select.
    async fn lookup(&self, name: &str, record_type: RecordType) -> Result<Answer, DnsError> {
        let in_use = self.dnssec_status().in_use();
        match (&self.engine, in_use) {
            (Engine::Validate(v), true) => hickory_lookup(&v.resolver, name, record_type).await,
            (Engine::Resolver(stub), _) => stub_lookup(stub, name, record_type, in_use).await,
            _ => {
                let mut answer = hickory_lookup(&self.plain, name, record_type).await?;
                answer.security = Security::Insecure;
                Ok(answer)
            }
        }
    }
}

/// A hickory resolver on `nameservers` (the system's when empty); validating from `anchors`
/// when given.
fn build(
    nameservers: &[SocketAddr],
    timeout: Duration,
    anchors: Option<Arc<TrustAnchors>>,
) -> Result<TokioResolver, NetError> {
    let mut builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for conn in &mut ns.connections {
                    conn.port = addr.port();
                }
                ns
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    opts.timeout = timeout;
    opts.attempts = 2;
    // Names are always fully qualified here: no search-list expansion.
    opts.ndots = 0;
    if let Some(anchors) = anchors {
        opts.validate = true;
        builder = builder.with_trust_anchor(anchors);
    }
    builder.build()
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn bogus(name: &str, reason: impl Into<String>) -> DnsError {
    DnsError::Bogus {
        name: name.to_string(),
        reason: reason.into(),
    }
}

fn temporary(name: &str, reason: impl Into<String>) -> DnsError {
    DnsError::Temporary {
        name: name.to_string(),
        reason: reason.into(),
    }
}

/// The security hickory's proofs give a set of records (RRSIGs skipped: only the one used
/// carries the RRset's proof). Unvalidated records (the plain resolver) are insecure.
fn summary<'a>(
    name: &str,
    records: impl Iterator<Item = &'a Record>,
) -> Result<Security, DnsError> {
    match DnssecSummary::from_records(records) {
        DnssecSummary::Secure => Ok(Security::Secure),
        DnssecSummary::Insecure => Ok(Security::Insecure),
        DnssecSummary::Bogus => Err(bogus(
            name,
            "the answer's signatures do not validate (RFC 4035 section 5.5)",
        )),
    }
}

/// How many CNAMEs [`hickory_lookup`] follows by itself before it gives up (RFC 1034 section
/// 3.6.2 asks for a bound; resolvers use about 8 to 16).
const MAX_CNAME_HOPS: usize = 8;

/// One RRset through hickory, with the DNSSEC status of the whole CNAME chain on the way.
///
/// hickory's validator (0.26) judges the NSEC denial behind a CNAME against the alias's own
/// name, so a signed alias whose target has no records of the type (an IPv4-only host asked
/// for AAAA, RFC 4035 section 3.1.3) comes back bogus. On a bogus answer the chain is followed
/// here one alias at a time: the alias validated on its own (a CNAME query), the type asked
/// again at its target, where the denial is the target's own. Real bogus data stays bogus at
/// the hop it is in.
async fn hickory_lookup(
    resolver: &TokioResolver,
    name: &str,
    record_type: RecordType,
) -> Result<Answer, DnsError> {
    let mut current = name.to_string();
    let mut chain = Security::Secure;
    for _ in 0..MAX_CNAME_HOPS {
        let error = match hickory_lookup_once(resolver, &current, record_type).await {
            Ok(mut answer) => {
                if current != name {
                    if chain == Security::Insecure {
                        answer.security = Security::Insecure;
                    }
                    answer.canonical = answer.canonical.or(Some(normalise_host(&current)));
                }
                return Ok(answer);
            }
            Err(e @ DnsError::Bogus { .. }) if record_type != RecordType::CNAME => e,
            Err(e) => return Err(e),
        };
        // Bogus: perhaps only the denial behind an alias. The alias on its own (a CNAME query
        // is never chased); no CNAME there, or a bogus one, and the answer is bogus.
        let Ok(alias) = hickory_lookup_once(resolver, &current, RecordType::CNAME).await else {
            return Err(error);
        };
        let Some(target) = alias.records.iter().find_map(|r| match r {
            RData::CNAME(target) => Some(normalise_host(&target.0.to_ascii())),
            _ => None,
        }) else {
            return Err(error);
        };
        if alias.security == Security::Insecure {
            chain = Security::Insecure;
        }
        current = target;
    }
    Err(temporary(
        name,
        format!("more than {MAX_CNAME_HOPS} CNAMEs in a row"),
    ))
}

/// One query through hickory, CNAMEs followed by hickory.
async fn hickory_lookup_once(
    resolver: &TokioResolver,
    name: &str,
    record_type: RecordType,
) -> Result<Answer, DnsError> {
    match resolver.lookup(fqdn(name), record_type).await {
        Ok(lookup) => {
            let answers = lookup.answers();
            let security = summary(
                name,
                answers.iter().filter(|r| {
                    r.record_type() == record_type || r.record_type() == RecordType::CNAME
                }),
            )?;
            Ok(Answer {
                records: answers
                    .iter()
                    .filter(|r| r.record_type() == record_type)
                    .map(|r| r.data.clone())
                    .collect(),
                security,
                canonical: canonical_name(name, answers).or_else(|| {
                    // hickory's cache may hand back the target's records without the CNAMEs
                    // that led there: their owner is then the end of the chain.
                    answers
                        .iter()
                        .find(|r| r.record_type() == record_type)
                        .map(|r| normalise_host(&r.name.to_ascii()))
                        .filter(|owner| *owner != normalise_host(name))
                }),
            })
        }
        Err(NetError::Dns(HickoryDnsError::DnssecBogus)) => Err(bogus(
            name,
            "the answer (or its denial) does not validate from the trust anchor \
             (RFC 4035 section 5.5)",
        )),
        Err(NetError::Dns(HickoryDnsError::Nsec {
            proof: Proof::Bogus,
            ..
        })) => Err(bogus(
            name,
            "the denial of existence does not validate (RFC 4035 section 5.4)",
        )),
        // A denial hickory could not prove secure but that is not bogus (NSEC3 opt-out or
        // iterations over the limit, RFC 9276): an insecure empty answer.
        Err(NetError::Dns(HickoryDnsError::Nsec { .. })) => Ok(Answer {
            records: Vec::new(),
            security: Security::Insecure,
            canonical: None,
        }),
        Err(NetError::Dns(HickoryDnsError::NoRecordsFound(none))) => {
            // A TLSA owner name that does not exist is "no records", and its denial can be
            // secure like a NODATA one (RFC 7672 section 2.2.3); other names are NXDOMAIN.
            if none.response_code == ResponseCode::NXDomain && record_type != RecordType::TLSA {
                return Err(DnsError::NoSuchDomain(name.to_string()));
            }
            let security = match &none.authorities {
                Some(authorities) if !authorities.is_empty() => summary(name, authorities.iter())?,
                _ => Security::Insecure,
            };
            Ok(Answer {
                records: Vec::new(),
                security,
                canonical: None,
            })
        }
        Err(e) if e.is_nx_domain() => Err(DnsError::NoSuchDomain(name.to_string())),
        Err(e) => Err(temporary(name, e.to_string())),
    }
}

async fn stub_lookup(
    stub: &Stub,
    name: &str,
    record_type: RecordType,
    dnssec_in_use: bool,
) -> Result<Answer, DnsError> {
    let qname = Name::from_ascii(fqdn(name))
        .map_err(|e| temporary(name, format!("not a DNS name: {e}")))?;
    let reply = stub
        .query(&qname, record_type)
        .await
        .map_err(|e| temporary(name, e))?;
    match reply.metadata.response_code {
        ResponseCode::NoError => Ok(Answer {
            records: reply
                .answers
                .iter()
                .filter(|r| r.record_type() == record_type)
                .map(|r| r.data.clone())
                .collect(),
            security: if dnssec_in_use && reply.metadata.authentic_data {
                Security::Secure
            } else {
                Security::Insecure
            },
            canonical: canonical_name(name, &reply.answers),
        }),
        // As in the validating path: a missing TLSA owner name is an empty answer whose
        // denial the AD bit vouches for.
        ResponseCode::NXDomain if record_type == RecordType::TLSA => Ok(Answer {
            records: Vec::new(),
            security: if dnssec_in_use && reply.metadata.authentic_data {
                Security::Secure
            } else {
                Security::Insecure
            },
            canonical: None,
        }),
        ResponseCode::NXDomain => Err(DnsError::NoSuchDomain(name.to_string())),
        ResponseCode::ServFail => {
            let errors = extended_errors(&reply);
            match errors.iter().find(|e| e.is_dnssec_failure()) {
                // A validating resolver answers bogus data with SERVFAIL (RFC 4035 section
                // 5.5); the extended error says that this is why (RFC 8914).
                Some(e) if dnssec_in_use => {
                    Err(bogus(name, format!("the validating resolver reports {e}")))
                }
                _ => {
                    let detail: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    Err(temporary(
                        name,
                        if detail.is_empty() {
                            "SERVFAIL".to_string()
                        } else {
                            format!("SERVFAIL, {}", detail.join("; "))
                        },
                    ))
                }
            }
        }
        other => Err(temporary(name, format!("{other}"))),
    }
}

/// The self-check of `validate`: the root DNSKEY RRset, its RRSIGs present, validated
/// against the trust anchor.
async fn check_validating(resolver: &TokioResolver) -> Result<DnssecStatus, DnsError> {
    let unavailable = |reason: &str| DnssecStatus::Unavailable {
        reason: reason.to_string(),
    };
    match resolver.lookup(Name::root(), RecordType::DNSKEY).await {
        Ok(lookup) => {
            let answers = lookup.answers();
            let keys: Vec<&Record> = answers
                .iter()
                .filter(|r| r.record_type() == RecordType::DNSKEY)
                .collect();
            let signed = answers.iter().any(|r| {
                matches!(&r.data, RData::DNSSEC(DNSSECRData::RRSIG(sig))
                    if sig.input().type_covered == RecordType::DNSKEY)
            });
            Ok(if keys.is_empty() {
                unavailable("the resolver returns no DNSKEY for the root zone")
            } else if !signed {
                unavailable(
                    "the resolver returns the root DNSKEY without its signatures (RRSIG): \
                     it strips DNSSEC records",
                )
            } else if !keys.iter().all(|r| r.proof == Proof::Secure) {
                unavailable("the root DNSKEY does not validate against the trust anchor")
            } else {
                DnssecStatus::Available
            })
        }
        Err(NetError::Dns(HickoryDnsError::DnssecBogus)) => Ok(unavailable(
            "the root DNSKEY does not validate against the trust anchor (its signatures are \
             missing or wrong on the resolver path)",
        )),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(unavailable(
            "the resolver returns no DNSKEY for the root zone",
        )),
        Err(e) => Err(temporary(".", e.to_string())),
    }
}

/// The self-check of `resolver`: the root DNSKEY RRset with its RRSIGs and the AD bit.
async fn check_resolver(stub: &Stub) -> Result<DnssecStatus, DnsError> {
    let unavailable = |reason: &str| DnssecStatus::Unavailable {
        reason: reason.to_string(),
    };
    let reply = stub
        .query(&Name::root(), RecordType::DNSKEY)
        .await
        .map_err(|e| temporary(".", e))?;
    if reply.metadata.response_code == ResponseCode::ServFail {
        // The resolver could not get (or validate) the root's keys: no conclusion about the
        // path, try again later.
        return Err(temporary(".", "SERVFAIL for the root DNSKEY"));
    }
    let keys = reply
        .answers
        .iter()
        .any(|r| r.record_type() == RecordType::DNSKEY);
    let signed = reply
        .answers
        .iter()
        .any(|r| r.record_type() == RecordType::RRSIG);
    Ok(if !keys {
        unavailable("the resolver returns no DNSKEY for the root zone")
    } else if !signed {
        unavailable(
            "the resolver returns the root DNSKEY without its signatures (RRSIG): it strips \
             DNSSEC records",
        )
    } else if !reply.metadata.authentic_data {
        unavailable(
            "the resolver does not set the AD bit on the root DNSKEY: it does not validate \
             (configure a trust anchor in it)",
        )
    } else {
        DnssecStatus::Available
    })
}

/// The end of the CNAME chain that starts at `name` in an answer section (RFC 1034 section
/// 3.6.2), when `name` is an alias. At most one step per record, so a loop ends.
fn canonical_name(name: &str, records: &[Record]) -> Option<String> {
    let start = normalise_host(name);
    let mut current = start.clone();
    for _ in 0..records.len() {
        let next = records.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if normalise_host(&r.name.to_ascii()) == current => {
                Some(normalise_host(&target.0.to_ascii()))
            }
            _ => None,
        });
        match next {
            Some(next) => current = next,
            None => break,
        }
    }
    (current != start).then_some(current)
}

fn mx_record(data: &RData) -> Option<MxRecord> {
    match data {
        RData::MX(mx) => Some(MxRecord {
            preference: mx.preference,
            exchange: normalise_host(&mx.exchange.to_ascii()),
        }),
        _ => None,
    }
}

impl Resolver for HickoryResolver {
    fn mx<'a>(&'a self, domain: &'a Domain) -> DnsFuture<'a, Secured<Vec<MxRecord>>> {
        Box::pin(async move {
            let answer = self.lookup(domain.as_str(), RecordType::MX).await?;
            Ok(Secured {
                value: answer.records.iter().filter_map(mx_record).collect(),
                security: answer.security,
            })
        })
    }

    fn addresses<'a>(&'a self, host: &'a str) -> DnsFuture<'a, Secured<Addresses>> {
        Box::pin(async move {
            let mut ips = Vec::new();
            let mut canonical = None;
            let mut last_error = None;
            // Secure only when every RRset that exists validated (and, with none, when both
            // denials did); the CNAMEs on the way count as part of each answer.
            let mut with_records = Vec::new();
            let mut all = Vec::new();
            for record_type in [RecordType::AAAA, RecordType::A] {
                match self.lookup(host, record_type).await {
                    Ok(answer) => {
                        all.push(answer.security);
                        if !answer.records.is_empty() {
                            with_records.push(answer.security);
                            canonical = canonical.or(answer.canonical);
                        }
                        ips.extend(answer.records.iter().filter_map(|r| match r {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                            _ => None,
                        }))
                    }
                    // Bogus data is never outweighed by the other family (D5).
                    Err(e @ DnsError::Bogus { .. }) => return Err(e),
                    Err(e) => last_error = Some(e),
                }
            }
            let judged = if with_records.is_empty() {
                &all
            } else {
                &with_records
            };
            let security = if !judged.is_empty() && judged.iter().all(|s| *s == Security::Secure) {
                Security::Secure
            } else {
                Security::Insecure
            };
            if let (true, Some(e)) = (ips.is_empty(), last_error) {
                return Err(e);
            }
            let own = match (&canonical, security) {
                (None, _) | (_, Security::Secure) => security,
                // The chain as a whole is not secure: the alias itself may still be (a signed
                // zone pointing into an unsigned one). A CNAME query is answered by the alias
                // alone, never chased (RFC 1034 section 3.6.2), so its status is the alias's
                // own; RFC 7672 section 2.2.3 then allows TLSA records at the alias only.
                // Anything but a secure answer leaves it insecure.
                (Some(_), Security::Insecure) => match self.lookup(host, RecordType::CNAME).await {
                    Ok(answer) if !answer.records.is_empty() => answer.security,
                    Ok(_) => Security::Insecure,
                    Err(e @ DnsError::Bogus { .. }) => return Err(e),
                    Err(_) => Security::Insecure,
                },
            };
            Ok(Secured {
                value: Addresses {
                    ips,
                    canonical,
                    own,
                },
                security,
            })
        })
    }

    fn txt<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Secured<Vec<String>>> {
        Box::pin(async move {
            let answer = match self.lookup(name, RecordType::TXT).await {
                Ok(answer) => answer,
                Err(DnsError::NoSuchDomain(_)) => return Ok(Secured::insecure(Vec::new())),
                Err(e) => return Err(e),
            };
            Ok(Secured {
                value: answer
                    .records
                    .iter()
                    .filter_map(|r| match r {
                        RData::TXT(txt) => Some(
                            txt.txt_data
                                .iter()
                                .map(|part| String::from_utf8_lossy(part))
                                .collect::<String>(),
                        ),
                        _ => None,
                    })
                    .collect(),
                security: answer.security,
            })
        })
    }

    fn dnssec_status(&self) -> DnssecStatus {
        HickoryResolver::dnssec_status(self)
    }

    fn tlsa<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Secured<Vec<Tlsa>>> {
        Box::pin(async move {
            let answer = match self.lookup(name, RecordType::TLSA).await {
                Ok(answer) => answer,
                // No such name: no TLSA records (RFC 7672 section 2.2).
                Err(DnsError::NoSuchDomain(_)) => return Ok(Secured::insecure(Vec::new())),
                Err(e) => return Err(e),
            };
            Ok(Secured {
                value: answer
                    .records
                    .iter()
                    .filter_map(|r| match r {
                        RData::TLSA(t) => Some(Tlsa {
                            usage: t.cert_usage.into(),
                            selector: t.selector.into(),
                            matching: t.matching.into(),
                            data: t.cert_data.clone(),
                        }),
                        _ => None,
                    })
                    .collect(),
                security: answer.security,
            })
        })
    }
}

/// Lower case, no trailing dot; the root (null MX, RFC 7505) stays ".".
fn normalise_host(name: &str) -> String {
    if name == "." {
        return ".".to_string();
    }
    name.trim_end_matches('.').to_ascii_lowercase()
}
