//! check_host() of RFC 7208 (section 4): record lookup and selection (4.4, 4.5), evaluation of
//! the directives left to right (4.6, 5), `redirect=` and `exp=` (6), macro expansion (7) and
//! the processing limits (4.6.4): at most 10 DNS-querying terms, at most 2 void lookups, at
//! most 10 MX names per `mx` and 10 PTR names per `ptr` / `%{p}`.
//!
//! Input: the client's address, the HELO name, the sender, the receiver's name, and an
//! [`SpfDns`]. Output: [`SpfVerdict`]. DNS failures are `temperror`; a record RFC 7208
//! forbids, or a name that cannot be a DNS name, is `permerror`.

use super::dns::{reverse_name, SpfDns};
use super::record::{
    is_spf_record, macro_string, MacroString, Mechanism, Qualifier, Record, Token,
};
use crate::auth::AuthResult;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

/// RFC 7208 4.6.4: terms that cause DNS queries (include, a, mx, ptr, exists, redirect).
const MAX_DNS_TERMS: u32 = 10;
/// RFC 7208 4.6.4: lookups that return no records (NXDOMAIN or NODATA).
const MAX_VOID_LOOKUPS: u32 = 2;
/// RFC 7208 4.6.4: names looked at per `mx` and per `ptr` (and `%{p}`).
const MAX_NAMES: usize = 10;
/// RFC 7208 7.3 (and RFC 1035 2.3.4): the longest domain name queried.
const MAX_NAME_LEN: usize = 253;

/// What SPF is asked about one SMTP transaction.
#[derive(Debug, Clone, Copy)]
pub struct SpfRequest<'a> {
    /// The client's address (an IPv4-mapped IPv6 address counts as IPv4, RFC 7208 5).
    pub ip: IpAddr,
    /// The HELO/EHLO name.
    pub helo: &'a str,
    /// The MAIL FROM address; `None` for the null reverse-path (then the HELO identity is
    /// checked as `postmaster@<helo>`, RFC 7208 2.4).
    pub sender: Option<&'a str>,
    /// Our own host name (`%{r}`, RFC 7208 7.2).
    pub receiver: &'a str,
}

/// The result of check_host() for the request's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfVerdict {
    /// The result (RFC 7208 2.6).
    pub result: AuthResult,
    /// The domain whose record was evaluated first (lower case).
    pub domain: String,
    /// The expanded `exp=` text for a `fail` (RFC 7208 6.2), when the domain has one.
    pub explanation: Option<String>,
    /// Why the result is an error (`temperror` / `permerror`), for the log and header.
    pub problem: Option<String>,
}

/// Runs check_host() (RFC 7208 4) for the request.
pub async fn check_host(dns: &dyn SpfDns, request: SpfRequest<'_>) -> SpfVerdict {
    let ip = match request.ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(request.ip, IpAddr::V4),
        v4 => v4,
    };
    let helo = request.helo.trim();
    let (local, domain) = match request.sender.map(str::trim).filter(|s| !s.is_empty()) {
        Some(sender) => match sender.rsplit_once('@') {
            Some((local, domain)) => (local, domain),
            None => ("", sender),
        },
        None => ("", helo),
    };
    // RFC 7208 4.3: no local-part → "postmaster".
    let local = if local.is_empty() {
        "postmaster"
    } else {
        local
    };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let verdict = |result, problem: &str| SpfVerdict {
        result,
        domain: domain.clone(),
        explanation: None,
        problem: Some(problem.to_string()),
    };
    // RFC 7208 4.3: a malformed or single-label domain gets "none" without any lookup.
    if !is_valid_domain(&domain) {
        return verdict(AuthResult::None, "not a usable domain name");
    }
    let mut evaluator = Evaluator {
        dns,
        ip,
        sender: format!("{local}@{domain}"),
        local: local.to_string(),
        sender_domain: domain.clone(),
        helo: helo.to_string(),
        receiver: request.receiver.to_string(),
        dns_terms: 0,
        voids: 0,
    };
    let out = evaluator.check_host(domain.clone()).await;
    SpfVerdict {
        result: out.result,
        domain,
        explanation: out.explanation,
        problem: out.problem,
    }
}

/// RFC 7208 4.3: labels of 1 to 63 octets, at most 253 octets, more than one label; not an
/// address literal.
fn is_valid_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    domain.len() <= MAX_NAME_LEN
        && labels.len() >= 2
        && labels.iter().all(|l| !l.is_empty() && l.len() <= 63)
        && !domain.starts_with('[')
        && domain.parse::<IpAddr>().is_err()
}

struct Outcome {
    result: AuthResult,
    explanation: Option<String>,
    problem: Option<String>,
}

impl Outcome {
    fn of(result: AuthResult) -> Outcome {
        Outcome {
            result,
            explanation: None,
            problem: None,
        }
    }
}

/// An evaluation that ends with an error result.
enum Abort {
    Temp(String),
    Perm(String),
}

impl From<Abort> for Outcome {
    fn from(a: Abort) -> Outcome {
        match a {
            Abort::Temp(p) => Outcome {
                result: AuthResult::TempError,
                explanation: None,
                problem: Some(p),
            },
            Abort::Perm(p) => Outcome {
                result: AuthResult::PermError,
                explanation: None,
                problem: Some(p),
            },
        }
    }
}

fn temp(e: super::dns::LookupError) -> Abort {
    Abort::Temp(e.to_string())
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

struct Evaluator<'d> {
    dns: &'d dyn SpfDns,
    ip: IpAddr,
    /// `%{s}`: local-part@domain of the identity.
    sender: String,
    local: String,
    sender_domain: String,
    helo: String,
    receiver: String,
    /// DNS-querying terms evaluated so far (RFC 7208 4.6.4).
    dns_terms: u32,
    /// Void lookups so far (RFC 7208 4.6.4).
    voids: u32,
}

impl<'d> Evaluator<'d> {
    fn check_host(&mut self, domain: String) -> BoxFuture<'_, Outcome> {
        Box::pin(async move {
            // RFC 7208 4.4: a DNS error other than NXDOMAIN is a temperror.
            let records = match self.dns.txt(&domain).await {
                Ok(records) => records,
                Err(e) => return temp(e).into(),
            };
            let mut spf = records.iter().filter(|r| is_spf_record(r));
            let (Some(text), None) = (spf.next(), spf.next()) else {
                return if records.iter().any(|r| is_spf_record(r)) {
                    // RFC 7208 4.5: more than one record is a permerror.
                    Abort::Perm(format!("{domain} publishes more than one v=spf1 record")).into()
                } else {
                    Outcome::of(AuthResult::None)
                };
            };
            let record = match Record::parse(text) {
                Ok(r) => r,
                Err(e) => return Abort::Perm(format!("{domain}: {}", e.0)).into(),
            };
            match self.evaluate(&record, &domain).await {
                Ok(outcome) => outcome,
                Err(abort) => abort.into(),
            }
        })
    }

    async fn evaluate(&mut self, record: &Record, domain: &str) -> Result<Outcome, Abort> {
        for directive in &record.directives {
            if self.matches(&directive.mechanism, domain).await? {
                let result = match directive.qualifier {
                    Qualifier::Pass => AuthResult::Pass,
                    Qualifier::Fail => AuthResult::Fail,
                    Qualifier::SoftFail => AuthResult::SoftFail,
                    Qualifier::Neutral => AuthResult::Neutral,
                };
                let mut out = Outcome::of(result);
                if result == AuthResult::Fail {
                    if let Some(exp) = &record.exp {
                        out.explanation = self.explain(exp, domain).await;
                    }
                }
                return Ok(out);
            }
        }
        // RFC 7208 6.1: redirect only when no mechanism matched (an `all` always does).
        if let Some(redirect) = &record.redirect {
            self.count_dns_term()?;
            let target = self.target(redirect, domain).await?;
            let mut out = self.check_host(target.clone()).await;
            if out.result == AuthResult::None {
                // RFC 7208 6.1: a redirect to a domain without a record is a permerror.
                out = Abort::Perm(format!("redirect={target}: no SPF record")).into();
            }
            return Ok(out);
        }
        // RFC 7208 4.7: no match, no redirect.
        Ok(Outcome::of(AuthResult::Neutral))
    }

    fn count_dns_term(&mut self) -> Result<(), Abort> {
        self.dns_terms += 1;
        if self.dns_terms > MAX_DNS_TERMS {
            return Err(Abort::Perm(format!(
                "more than {MAX_DNS_TERMS} DNS-querying terms (RFC 7208 4.6.4)"
            )));
        }
        Ok(())
    }

    fn count_void(&mut self, name: &str) -> Result<(), Abort> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(Abort::Perm(format!(
                "more than {MAX_VOID_LOOKUPS} void lookups, the last for {name} (RFC 7208 4.6.4)"
            )));
        }
        Ok(())
    }

    fn matches<'a>(
        &'a mut self,
        mechanism: &'a Mechanism,
        domain: &'a str,
    ) -> BoxFuture<'a, Result<bool, Abort>> {
        Box::pin(async move {
            if mechanism.queries_dns() {
                self.count_dns_term()?;
            }
            match mechanism {
                Mechanism::All => Ok(true),
                Mechanism::Ip4(net, len) => Ok(in_network(self.ip, IpAddr::V4(*net), *len)),
                Mechanism::Ip6(net, len) => Ok(in_network(self.ip, IpAddr::V6(*net), *len)),
                Mechanism::Include(spec) => {
                    let target = self.target(spec, domain).await?;
                    let out = self.check_host(target.clone()).await;
                    // RFC 7208 5.2: the table of include results.
                    match out.result {
                        AuthResult::Pass => Ok(true),
                        AuthResult::Fail | AuthResult::SoftFail | AuthResult::Neutral => Ok(false),
                        AuthResult::TempError => Err(Abort::Temp(
                            out.problem.unwrap_or_else(|| format!("include:{target}")),
                        )),
                        AuthResult::None => {
                            Err(Abort::Perm(format!("include:{target}: no SPF record")))
                        }
                        AuthResult::PermError => Err(Abort::Perm(
                            out.problem.unwrap_or_else(|| format!("include:{target}")),
                        )),
                    }
                }
                Mechanism::A {
                    domain: spec,
                    cidr4,
                    cidr6,
                } => {
                    let name = self.target_or(spec.as_ref(), domain).await?;
                    let addresses = self
                        .dns
                        .addresses(&name, self.ip.is_ipv6())
                        .await
                        .map_err(temp)?;
                    if addresses.is_empty() {
                        self.count_void(&name)?;
                    }
                    Ok(self.any_in(&addresses, *cidr4, *cidr6))
                }
                Mechanism::Mx {
                    domain: spec,
                    cidr4,
                    cidr6,
                } => {
                    let name = self.target_or(spec.as_ref(), domain).await?;
                    let exchanges = self.dns.mx(&name).await.map_err(temp)?;
                    if exchanges.is_empty() {
                        self.count_void(&name)?;
                    }
                    if exchanges.len() > MAX_NAMES {
                        return Err(Abort::Perm(format!(
                            "mx:{name}: more than {MAX_NAMES} MX records (RFC 7208 4.6.4)"
                        )));
                    }
                    for exchange in exchanges.iter().filter(|e| !e.is_empty()) {
                        let addresses = self
                            .dns
                            .addresses(exchange, self.ip.is_ipv6())
                            .await
                            .map_err(temp)?;
                        if self.any_in(&addresses, *cidr4, *cidr6) {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }
                Mechanism::Ptr(spec) => {
                    let target = self.target_or(spec.as_ref(), domain).await?;
                    let names = self.validated_names().await;
                    Ok(names.iter().any(|n| is_same_or_sub(n, &target)))
                }
                Mechanism::Exists(spec) => {
                    let name = self.target(spec, domain).await?;
                    // RFC 7208 5.7: an A query, whatever the client's address family.
                    let addresses = self.dns.addresses(&name, false).await.map_err(temp)?;
                    if addresses.is_empty() {
                        self.count_void(&name)?;
                    }
                    Ok(!addresses.is_empty())
                }
            }
        })
    }

    fn any_in(&self, addresses: &[IpAddr], cidr4: u8, cidr6: u8) -> bool {
        addresses.iter().any(|a| {
            let len = if a.is_ipv4() { cidr4 } else { cidr6 };
            in_network(self.ip, *a, len)
        })
    }

    /// RFC 7208 5.5: the PTR names of the client whose A/AAAA records include its address
    /// (at most 10 names looked at); DNS errors make a name not validated.
    async fn validated_names(&self) -> Vec<String> {
        let Ok(names) = self.dns.ptr(self.ip).await else {
            return Vec::new();
        };
        let mut validated = Vec::new();
        for name in names.iter().take(MAX_NAMES) {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Ok(addresses) = self.dns.addresses(&name, self.ip.is_ipv6()).await {
                if addresses.contains(&self.ip) {
                    validated.push(name);
                }
            }
        }
        validated
    }

    /// `%{p}` (RFC 7208 7.3): a validated name of the client, the domain itself or one
    /// below it first; "unknown" when there is none.
    async fn p_macro(&self, domain: &str) -> String {
        let names = self.validated_names().await;
        names
            .iter()
            .find(|n| n.as_str() == domain)
            .or_else(|| names.iter().find(|n| is_same_or_sub(n, domain)))
            .or_else(|| names.first())
            .cloned()
            .unwrap_or_else(|| "unknown".to_string())
    }

    async fn target_or(
        &mut self,
        spec: Option<&MacroString>,
        domain: &str,
    ) -> Result<String, Abort> {
        match spec {
            Some(spec) => self.target(spec, domain).await,
            None => Ok(domain.to_string()),
        }
    }

    /// The name a domain-spec asks for: expanded, a trailing dot dropped, cut to 253 octets
    /// from the left (RFC 7208 7.3); a name that still cannot be a DNS name (an empty label,
    /// one longer than 63 octets) is a permerror (RFC 7208 4.8, 7.1).
    async fn target(&mut self, spec: &MacroString, domain: &str) -> Result<String, Abort> {
        let expanded = self.expand(spec, domain).await;
        let mut name = expanded.strip_suffix('.').unwrap_or(&expanded);
        while name.len() > MAX_NAME_LEN {
            match name.split_once('.') {
                Some((_, rest)) => name = rest,
                None => break,
            }
        }
        let usable = !name.is_empty()
            && name.len() <= MAX_NAME_LEN
            && name.split('.').all(|l| !l.is_empty() && l.len() <= 63);
        if !usable {
            return Err(Abort::Perm(format!(
                "{expanded:?} is not a usable DNS name (RFC 7208 4.8)"
            )));
        }
        Ok(name.to_string())
    }

    /// The explanation of a `fail` (RFC 7208 6.2): any failure on the way (DNS, not exactly
    /// one TXT record, bad syntax) means no explanation, never a different result.
    async fn explain(&mut self, exp: &MacroString, domain: &str) -> Option<String> {
        let name = self.target(exp, domain).await.ok()?;
        let records = self.dns.txt(&name).await.ok()?;
        let [text] = records.as_slice() else {
            return None;
        };
        if !text.iter().all(|b| (0x20..=0x7e).contains(b)) {
            return None;
        }
        let text = std::str::from_utf8(text).ok()?;
        let spec = macro_string(text, true, true).ok()?;
        Some(self.expand(&spec, domain).await)
    }

    /// Macro expansion (RFC 7208 7.3, 7.4).
    async fn expand(&self, spec: &MacroString, domain: &str) -> String {
        let p = if spec.uses_p() {
            Some(self.p_macro(domain).await)
        } else {
            None
        };
        let mut out = String::new();
        for token in &spec.0 {
            match token {
                Token::Literal(text) => out.push_str(text),
                Token::Escape(text) => out.push_str(text),
                Token::Macro(m) => {
                    let value = match m.letter {
                        's' => self.sender.clone(),
                        'l' => self.local.clone(),
                        'o' => self.sender_domain.clone(),
                        'd' => domain.to_string(),
                        'i' => dotted(self.ip),
                        'p' => p.clone().unwrap_or_default(),
                        'v' => if self.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
                        'h' => self.helo.clone(),
                        'c' => self.ip.to_string(),
                        'r' => self.receiver.clone(),
                        't' => std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs())
                            .to_string(),
                        _ => String::new(),
                    };
                    let delimiters = if m.delimiters.is_empty() {
                        "."
                    } else {
                        m.delimiters.as_str()
                    };
                    let mut parts: Vec<&str> = value.split(|c| delimiters.contains(c)).collect();
                    if m.reverse {
                        parts.reverse();
                    }
                    if let Some(keep) = m.keep {
                        let skip = parts.len().saturating_sub(keep);
                        parts.drain(..skip);
                    }
                    let joined = parts.join(".");
                    if m.escape {
                        out.push_str(&url_escape(&joined));
                    } else {
                        out.push_str(&joined);
                    }
                }
            }
        }
        out
    }
}

/// `%{i}` (RFC 7208 7.3): dotted quad, or 32 dot-separated nibbles for IPv6.
fn dotted(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(_) => {
            // The reverse name is the nibbles reversed: reverse it back.
            let reverse = reverse_name(ip);
            let nibbles: Vec<&str> = reverse.split('.').take(32).collect();
            nibbles.into_iter().rev().collect::<Vec<_>>().join(".")
        }
    }
}

/// Uppercase macro letters are URL-escaped (RFC 7208 7.3, RFC 3986 unreserved kept).
fn url_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_same_or_sub(name: &str, domain: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    name == domain || name.ends_with(&format!(".{domain}"))
}

/// Is `ip` in `network/len`? Families never match each other (RFC 7208 5.6: ip4 for IPv4
/// clients, ip6 for IPv6 clients).
fn in_network(ip: IpAddr, network: IpAddr, len: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
