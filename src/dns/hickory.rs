//! [`Resolver`] over hickory-resolver.

use super::{DnsError, DnsFuture, MxRecord, Resolver, Secured, Tlsa};
use crate::domain::Domain;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// hickory's resolver with its cache. Built once per process (`server` at start) and shared:
/// delivery and `probe` use it through [`Resolver`], sender authentication through
/// [`HickoryResolver::tokio_resolver`].
pub struct HickoryResolver {
    inner: TokioResolver,
}

impl HickoryResolver {
    /// `nameservers` empty: the system configuration (/etc/resolv.conf).
    pub fn new(nameservers: &[SocketAddr], timeout: Duration) -> Result<HickoryResolver, DnsError> {
        let setup = |e: NetError| DnsError::Temporary {
            name: "resolver set-up".into(),
            reason: e.to_string(),
        };
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(setup)?
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
        let inner = builder.build().map_err(setup)?;
        Ok(HickoryResolver { inner })
    }

    /// The same resolver, cache included, as mail-auth takes it (mail-auth names hickory's
    /// type through its own dependency; Cargo.lock holds one hickory-resolver for both).
    pub fn tokio_resolver(&self) -> TokioResolver {
        self.inner.clone()
    }
}

fn classify(name: &str, e: NetError) -> DnsError {
    if e.is_nx_domain() {
        DnsError::NoSuchDomain(name.to_string())
    } else {
        DnsError::Temporary {
            name: name.to_string(),
            reason: e.to_string(),
        }
    }
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

impl Resolver for HickoryResolver {
    fn mx<'a>(&'a self, domain: &'a Domain) -> DnsFuture<'a, Secured<Vec<MxRecord>>> {
        Box::pin(async move {
            let lookup = match self.inner.mx_lookup(fqdn(domain.as_str())).await {
                Ok(lookup) => lookup,
                Err(e) if e.is_no_records_found() && !e.is_nx_domain() => {
                    return Ok(Secured::insecure(Vec::new()))
                }
                Err(e) => return Err(classify(domain.as_str(), e)),
            };
            Ok(Secured::insecure(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => Some(MxRecord {
                            preference: mx.preference,
                            exchange: normalise_host(&mx.exchange.to_ascii()),
                        }),
                        _ => None,
                    })
                    .collect(),
            ))
        })
    }

    fn addresses<'a>(&'a self, host: &'a str) -> DnsFuture<'a, Secured<Vec<IpAddr>>> {
        Box::pin(async move {
            let mut addresses = Vec::new();
            let mut last_error = None;
            for record_type in [RecordType::AAAA, RecordType::A] {
                match self.inner.lookup(fqdn(host), record_type).await {
                    Ok(lookup) => {
                        addresses.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                            _ => None,
                        }))
                    }
                    Err(e) if e.is_no_records_found() && !e.is_nx_domain() => {}
                    Err(e) => last_error = Some(classify(host, e)),
                }
            }
            match (addresses.is_empty(), last_error) {
                (true, Some(e)) => Err(e),
                _ => Ok(Secured::insecure(addresses)),
            }
        })
    }

    fn tlsa<'a>(&'a self, name: &'a str) -> DnsFuture<'a, Secured<Vec<Tlsa>>> {
        Box::pin(async move {
            let lookup = match self.inner.lookup(fqdn(name), RecordType::TLSA).await {
                Ok(lookup) => lookup,
                Err(e) if e.is_no_records_found() => return Ok(Secured::insecure(Vec::new())),
                Err(e) => return Err(classify(name, e)),
            };
            Ok(Secured::insecure(
                lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::TLSA(t) => Some(Tlsa {
                            usage: t.cert_usage.into(),
                            selector: t.selector.into(),
                            matching: t.matching.into(),
                            data: t.cert_data.clone(),
                        }),
                        _ => None,
                    })
                    .collect(),
            ))
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
