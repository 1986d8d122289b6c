//! DNS behind a small interface: what delivery needs to know about a domain (MX, A/AAAA).
//!
//! [`Resolver`] is the seam: production uses [`HickoryResolver`] (the system resolver, or
//! `dns.nameservers`); tests point `dns.nameservers` at a DNS server of their own on loopback,
//! so the same code path runs against zones the test controls.

mod hickory;

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
    /// A server failure, timeout or network error: try again later.
    #[error("DNS lookup for {name} failed temporarily: {reason}")]
    Temporary { name: String, reason: String },
}

/// The future every [`Resolver`] method returns (boxed, so that the trait stays object-safe).
pub type DnsFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, DnsError>> + Send + 'a>>;

/// The DNS lookups delivery needs (MX, addresses); implemented over hickory by
/// [`HickoryResolver`].
pub trait Resolver: Send + Sync + 'static {
    /// MX records of `domain`; an empty list when the domain exists but has none.
    fn mx<'a>(&'a self, domain: &'a Domain) -> DnsFuture<'a, Vec<MxRecord>>;

    /// IPv4 and IPv6 addresses of `host`; an empty list when it has none.
    fn addresses<'a>(&'a self, host: &'a str) -> DnsFuture<'a, Vec<IpAddr>>;
}
