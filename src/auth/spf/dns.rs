//! The DNS queries SPF makes (RFC 7208 sections 4.4, 5 and 6.2), behind [`SpfDns`] so that the
//! evaluator can be tested on zones held in memory, and [`HickorySpfDns`], the relay's hickory
//! resolver with a bound on every single query.
//!
//! Each query gets at most [`QUERY_TIMEOUT`] (issue 17 item 2): one unanswered query must not
//! use up the whole check's budget (`inbound.auth.timeout`, 10 s by default), or an
//! unanswered `exp=` lookup, which must never change the result (RFC 7208 6.2), would turn
//! a `fail` into a `temperror` at the budget's end.

use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

/// The bound of one SPF DNS query. RFC 7208 4.6.4 asks for at least 20 s for a whole
/// evaluation of up to 10 DNS-querying terms; a few seconds per query keeps a single slow
/// server from deciding the result while a normal answer (milliseconds) is never cut short.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// A lookup that failed: no answer in time, or an error other than NXDOMAIN (RFC 7208 2.6.6:
/// a transient error, `temperror`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DNS lookup of {name} failed: {reason}")]
pub struct LookupError {
    /// The name asked for.
    pub name: String,
    /// What went wrong (`timeout`, the response code, ...).
    pub reason: String,
}

/// The records of one lookup; empty for NXDOMAIN or NODATA (a "void lookup", RFC 7208 4.6.4).
pub type SpfLookup<'a, T> = Pin<Box<dyn Future<Output = Result<Vec<T>, LookupError>> + Send + 'a>>;

/// The DNS SPF needs. Names are given without a trailing dot and are already checked to be
/// usable DNS names (labels of 1 to 63 octets, at most 253 octets in all).
pub trait SpfDns: Send + Sync {
    /// The TXT records at `name`, each one's character-strings joined (RFC 7208 3.3).
    fn txt<'a>(&'a self, name: &'a str) -> SpfLookup<'a, Vec<u8>>;
    /// The A (`v6` false) or AAAA (`v6` true) records at `name`.
    fn addresses<'a>(&'a self, name: &'a str, v6: bool) -> SpfLookup<'a, IpAddr>;
    /// The exchanges of the MX records at `name` (without trailing dot).
    fn mx<'a>(&'a self, name: &'a str) -> SpfLookup<'a, String>;
    /// The names of the PTR records for `ip` (in-addr.arpa / ip6.arpa, without trailing dot).
    fn ptr<'a>(&'a self, ip: IpAddr) -> SpfLookup<'a, String>;
}

/// [`SpfDns`] over the relay's hickory resolver, every query bounded by `timeout`.
#[derive(Clone)]
pub struct HickorySpfDns {
    resolver: TokioResolver,
    timeout: Duration,
}

impl HickorySpfDns {
    /// SPF lookups through `resolver`, each at most `timeout` (normally [`QUERY_TIMEOUT`]).
    pub fn new(resolver: TokioResolver, timeout: Duration) -> HickorySpfDns {
        HickorySpfDns { resolver, timeout }
    }

    async fn query(&self, name: Name, record_type: RecordType) -> Result<Vec<RData>, LookupError> {
        let text = name.to_ascii();
        let fail = |reason: String| LookupError {
            name: text.trim_end_matches('.').to_string(),
            reason,
        };
        let lookup = tokio::time::timeout(self.timeout, self.resolver.lookup(name, record_type))
            .await
            .map_err(|_| fail("timeout".into()))?;
        match lookup {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter(|r| r.record_type() == record_type)
                .map(|r| r.data.clone())
                .collect()),
            // NXDOMAIN and NODATA: no records (RFC 7208 4.4 and 4.6.4 treat both alike).
            Err(NetError::Dns(HickoryDnsError::NoRecordsFound(none)))
                if matches!(
                    none.response_code,
                    ResponseCode::NXDomain | ResponseCode::NoError
                ) =>
            {
                Ok(Vec::new())
            }
            Err(e) if e.is_nx_domain() => Ok(Vec::new()),
            Err(e) => Err(fail(e.to_string())),
        }
    }
}

/// `name` as a fully qualified DNS name; labels are taken as they are (RFC 7208 allows any
/// printable character in a domain-spec, e.g. `:`).
fn dns_name(name: &str) -> Result<Name, LookupError> {
    let mut n = Name::from_labels(name.split('.').map(str::as_bytes)).map_err(|e| LookupError {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    n.set_fqdn(true);
    Ok(n)
}

/// The reverse-mapping name of `ip` (RFC 1035 3.5, RFC 3596 2.5).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                out.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            out.push_str("ip6.arpa");
            out
        }
    }
}

/// A name from an answer (MX exchange, PTR target) as SPF uses it: its labels joined by
/// dots as they are (`to_ascii` would escape characters such as `:` or space), no trailing
/// dot; the root is "".
fn host(name: &Name) -> String {
    name.iter()
        .map(String::from_utf8_lossy)
        .collect::<Vec<_>>()
        .join(".")
}

impl SpfDns for HickorySpfDns {
    fn txt<'a>(&'a self, name: &'a str) -> SpfLookup<'a, Vec<u8>> {
        Box::pin(async move {
            let records = self.query(dns_name(name)?, RecordType::TXT).await?;
            Ok(records
                .into_iter()
                .filter_map(|r| match r {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .flat_map(|s| s.iter())
                            .copied()
                            .collect(),
                    ),
                    _ => None,
                })
                .collect())
        })
    }

    fn addresses<'a>(&'a self, name: &'a str, v6: bool) -> SpfLookup<'a, IpAddr> {
        Box::pin(async move {
            let record_type = if v6 { RecordType::AAAA } else { RecordType::A };
            let records = self.query(dns_name(name)?, record_type).await?;
            Ok(records
                .into_iter()
                .filter_map(|r| match r {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                    _ => None,
                })
                .collect())
        })
    }

    fn mx<'a>(&'a self, name: &'a str) -> SpfLookup<'a, String> {
        Box::pin(async move {
            let records = self.query(dns_name(name)?, RecordType::MX).await?;
            Ok(records
                .into_iter()
                .filter_map(|r| match r {
                    RData::MX(mx) => Some(host(&mx.exchange)),
                    _ => None,
                })
                .collect())
        })
    }

    fn ptr<'a>(&'a self, ip: IpAddr) -> SpfLookup<'a, String> {
        Box::pin(async move {
            let records = self
                .query(dns_name(&reverse_name(ip))?, RecordType::PTR)
                .await?;
            Ok(records
                .into_iter()
                .filter_map(|r| match r {
                    RData::PTR(ptr) => Some(host(&ptr.0)),
                    _ => None,
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        // RFC 1035 3.5 and RFC 3596 2.5.
        assert_eq!(
            reverse_name("192.0.2.3".parse().unwrap()),
            "3.2.0.192.in-addr.arpa"
        );
        assert_eq!(
            reverse_name("2001:db8::1".parse().unwrap()),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
    }

    #[test]
    fn names_keep_unusual_characters() {
        // RFC 7208 7.1: a domain-spec may contain ':' or '/'.
        let name = dns_name("foo:bar/baz.example.com").unwrap();
        assert_eq!(name.num_labels(), 3);
        assert!(name.is_fqdn());
    }
}
