//! DNS behind a small interface: what delivery needs to know about a domain (MX, A/AAAA,
//! TLSA), each answer with its DNSSEC status (D5).
//!
//! [`Resolver`] is the seam: production uses [`HickoryResolver`] (the system resolver, or
//! `dns.nameservers`); tests point `dns.nameservers` at a DNS server of their own on loopback,
//! so the same code path runs against zones the test controls.
//!
//! DNSSEC comes in three modes ([`DnssecMode`], `dns.dnssec`): validated in-process against a
//! trust anchor ([`anchor`]), taken from the AD bit of a validating resolver on loopback
//! (`stub.rs`), or off. A self-check ([`HickoryResolver::check_dnssec`]) decides whether the
//! resolver path carries DNSSEC at all; where it does not, every answer is insecure instead of
//! bogus, so a resolver that strips signatures costs DANE, not all mail to signed domains.

pub mod anchor;
mod hickory;
mod stub;

pub use hickory::HickoryResolver;

use crate::domain::Domain;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

/// How long the relay's resolver waits for one answer before it asks again (two attempts);
/// a lookup that gets no answer is a temporary failure. resolv.conf's default, and what the
/// sender authentication check's default bound (`inbound.auth.timeout`, 10s) gives each query.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How far an answer can be trusted (RFC 4033 section 5, RFC 4035 section 4.3). Bogus data
/// is never a value: it is [`DnsError::Bogus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// Validated by a chain of signatures from the trust anchor (`dns.dnssec = "validate"`), or
    /// carried the AD bit from a trusted local resolver (`"resolver"`).
    Secure,
    /// Provably unsigned, or DNSSEC is off or unavailable on the resolver path (D5).
    Insecure,
}

impl Security {
    /// `secure` or `insecure`, for logs, `probe` and audit entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Secure => "secure",
            Security::Insecure => "insecure",
        }
    }
}

/// How DNS answers get their DNSSEC status (`dns.dnssec`, D5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DnssecMode {
    /// No DNSSEC: every answer is insecure (DANE never applies).
    Off,
    /// Trust the AD bit of the configured resolvers, which must all be on loopback: a local
    /// validating resolver such as unbound (RFC 6840 section 5.7: the AD bit is only as good
    /// as the path to the resolver).
    Resolver,
    /// Validate in-process from the trust anchor (`dns.trust_anchor`, default the IANA root
    /// KSKs), RFC 4035 section 5.
    Validate,
}

impl DnssecMode {
    /// `off`, `resolver` or `validate`, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            DnssecMode::Off => "off",
            DnssecMode::Resolver => "resolver",
            DnssecMode::Validate => "validate",
        }
    }
}

impl std::fmt::Display for DnssecMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the resolver path carries DNSSEC, as the last self-check found (D5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnssecStatus {
    /// `dns.dnssec = "off"`: nothing to check, every answer is insecure.
    Off,
    /// No conclusive self-check yet: answers are treated as if DNSSEC were available, so that
    /// bogus data is never accepted on the strength of a check that has not run.
    Unchecked,
    /// The root's DNSKEY validated (or came with the AD bit): answers are secure, insecure or
    /// bogus as they validate.
    Available,
    /// The resolver path strips or breaks DNSSEC: DANE is unavailable and every answer counts
    /// as insecure (never bogus) until a later check passes.
    Unavailable {
        /// What the self-check saw.
        reason: String,
    },
}

impl DnssecStatus {
    /// True when answers are validated (or their AD bit trusted): available or not yet checked.
    pub fn in_use(&self) -> bool {
        matches!(self, DnssecStatus::Available | DnssecStatus::Unchecked)
    }
}

impl std::fmt::Display for DnssecStatus {
    /// One line for logs, `probe` and `check-config`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnssecStatus::Off => f.write_str("off (DANE unavailable)"),
            DnssecStatus::Unchecked => f.write_str("not checked yet"),
            DnssecStatus::Available => f.write_str("available"),
            DnssecStatus::Unavailable { reason } => {
                write!(f, "UNAVAILABLE, DANE is off: {reason}")
            }
        }
    }
}

/// A lookup result with its DNSSEC status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secured<T> {
    /// The records (empty when the name exists without records of the type).
    pub value: T,
    /// Whether the answer (or its denial) validated.
    pub security: Security,
}

impl<T> Secured<T> {
    /// An answer from a path without DNSSEC.
    pub fn insecure(value: T) -> Secured<T> {
        Secured {
            value,
            security: Security::Insecure,
        }
    }

    /// True when the answer validated.
    pub fn is_secure(&self) -> bool {
        self.security == Security::Secure
    }
}

/// One TLSA record (RFC 6698 section 2.1; the DANE for SMTP subset is RFC 7672 section 3.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tlsa {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// Selector: 0 the full certificate, 1 the SubjectPublicKeyInfo.
    pub selector: u8,
    /// Matching type: 0 exact, 1 SHA-256, 2 SHA-512.
    pub matching: u8,
    /// The association data (the certificate, SPKI or digest).
    pub data: Vec<u8>,
}

impl std::fmt::Display for Tlsa {
    /// Zone-file presentation: `3 1 1 <hex>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {} ", self.usage, self.selector, self.matching)?;
        for b in &self.data {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The addresses of a host and the name they were found at (RFC 7672 section 2.2.3: a CNAME'd
/// MX host's TLSA base domain depends on how far its alias chain is DNSSEC-secure).
///
/// In [`Secured<Addresses>`], `security` covers the whole answer: every CNAME of the chain and
/// the address RRsets at its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    /// The IPv4 and IPv6 addresses (empty when there are none).
    pub ips: Vec<IpAddr>,
    /// The fully CNAME-expanded name (lower case, no trailing dot), when the asked name is an
    /// alias; `None` when the address records are at the asked name itself.
    pub canonical: Option<String>,
    /// The DNSSEC status of the asked name's own records: its CNAME when it is an alias (known
    /// from a CNAME query when the whole chain is not secure), else the same as the whole
    /// answer's. A secure alias whose target zone is unsigned has a secure `own` and an insecure
    /// whole answer: its TLSA records are then looked up at the asked name only.
    pub own: Security,
}

/// One MX record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxRecord {
    /// Lower is preferred (RFC 5321 5.1).
    pub preference: u16,
    /// The exchange host, normalised; `.` (the root) for a null MX.
    pub exchange: String,
}

/// Why a lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// The name does not exist (NXDOMAIN): a permanent condition.
    #[error("domain {0} does not exist")]
    NoSuchDomain(String),
    /// The answer is signed but does not validate (RFC 4035 section 5.5), or a validating
    /// resolver said so (SERVFAIL with an extended DNS error, RFC 8914): a temporary failure
    /// of the destination, never a reason to go on without DNSSEC (D5).
    #[error("DNSSEC bogus: {name}: {reason}")]
    Bogus { name: String, reason: String },
    /// A server failure, timeout or network error: try again later.
    #[error("DNS lookup for {name} failed temporarily: {reason}")]
    Temporary { name: String, reason: String },
}

/// The future every [`Resolver`] method returns (boxed, so that the trait stays object-safe).
pub type DnsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DnsError>> + Send + 'a>>;

/// The DNS lookups delivery needs (MX, addresses, TLSA), each with its DNSSEC status;
/// implemented over hickory by [`HickoryResolver`].
pub trait Resolver: Send + Sync + 'static {
    /// MX records of `domain`; an empty list when the domain exists but has none.
    fn mx<'a>(&'a self, domain: &'a Domain) -> DnsFuture<'a, Secured<Vec<MxRecord>>>;

    /// IPv4 and IPv6 addresses of `host`, following CNAMEs; an empty list when it has none.
    /// Secure only when every CNAME of the chain and every address RRset that exists
    /// validated; [`Addresses::canonical`] names the end of the chain and [`Addresses::own`]
    /// the status of `host`'s own records.
    fn addresses<'a>(&'a self, host: &'a str) -> DnsFuture<'a, Secured<Addresses>>;

    /// TLSA records at `name` (`_25._tcp.mx.example.no`, RFC 7672 section 2.2), following
    /// CNAMEs; an empty list when there are none.
    fn tlsa<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Secured<Vec<Tlsa>>>;

    /// TXT records at `name` (`_mta-sts.example.no`, RFC 8461 section 3.1;
    /// `_smtp._tls.example.no`, RFC 8460 section 3), following CNAMEs: one string per record,
    /// its character-strings concatenated without separator (RFC 7208 section 3.3 and RFC 8461
    /// section 3.1 read them so). Bytes that are not UTF-8 are replaced (U+FFFD): the callers'
    /// grammars are ASCII and reject such a record. An empty list when there are none or the
    /// name does not exist.
    fn txt<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Secured<Vec<String>>>;

    /// The DNSSEC status of the resolver path (D5): every answer is insecure unless it is
    /// in use, and reports say why (`off`, or what the self-check saw) instead of blaming the
    /// zone. Resolvers without DNSSEC say `Off`.
    fn dnssec_status(&self) -> DnssecStatus {
        DnssecStatus::Off
    }
}
