//! TLS policy: the levels a destination can require (design.md, "Outbound TLS policy").
//!
//! [`resolve`] finds the level for a recipient domain. It is pure code: the domain list, DANE
//! and MTA-STS are added to its inputs as they come (issue order in design.md); [`mta_sts`]
//! parses MTA-STS records and policies (RFC 8461).

pub mod decision;
pub mod domain_list;
pub mod list_file;
pub mod mta_sts;
mod names;

use crate::domain::Domain;
use domain_list::DomainList;
use serde::{Deserialize, Serialize};
use std::fmt;

pub use names::NamePattern;

/// How much TLS a hop requires, in Postfix's `smtp_tls_policy_maps` vocabulary.
///
/// The order of the variants is the order of strictness, so `a < b` means "a is weaker".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsLevel {
    /// Plaintext only, TLS is not even attempted.
    None,
    /// Opportunistic: STARTTLS when offered, no certificate checks (RFC 3207, D2).
    May,
    /// TLS required, certificate not checked.
    Encrypt,
    /// DANE when usable TLSA records exist, else opportunistic (RFC 7672, D1).
    Dane,
    /// DANE required.
    DaneOnly,
    /// TLS required, chain to a trusted root, host name = MX host name (T3, T9).
    Verify,
    /// As `Verify`, but the name must be the recipient domain or a subdomain of it.
    Secure,
}

impl TlsLevel {
    /// True when delivery must never happen without validated (or DANE-authenticated) TLS.
    pub fn is_mandatory(self) -> bool {
        !matches!(self, TlsLevel::None | TlsLevel::May | TlsLevel::Dane)
    }

    /// The configuration spelling (`none`, `may`, …, `dane-only`), also used in logs and audit
    /// entries.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsLevel::None => "none",
            TlsLevel::May => "may",
            TlsLevel::Encrypt => "encrypt",
            TlsLevel::Dane => "dane",
            TlsLevel::DaneOnly => "dane-only",
            TlsLevel::Verify => "verify",
            TlsLevel::Secure => "secure",
        }
    }
}

impl fmt::Display for TlsLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a `[[policy]]` entry applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyTarget {
    /// Exactly this domain.
    Exact(Domain),
    /// Every subdomain of this domain (written `.partner.no`), not the domain itself.
    Suffix(Domain),
}

/// One `[[policy]]` entry of the configuration (validated by `config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    /// The domain or suffix the entry applies to.
    pub target: PolicyTarget,
    /// The level it sets (never below `verify` for a listed domain: checked at load, T3).
    pub tls: TlsLevel,
    /// Extra names the peer's certificate may carry (exact, or `.suffix`).
    pub match_names: Vec<String>,
}

/// Where a destination's TLS level came from (logs, `tlsgate probe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicySource {
    /// An explicit `[[policy]]` entry.
    Config,
    /// The tvungen TLS domain list (T3).
    DomainList,
    /// The sender asked for REQUIRETLS (RFC 8689).
    RequireTls,
    /// DNSSEC-secure TLSA records of the MX host (RFC 7672; D1).
    Dane,
    /// The recipient domain's MTA-STS policy in `enforce` mode (RFC 8461; D6).
    MtaSts,
    /// Nothing applies: opportunistic TLS.
    Default,
}

impl PolicySource {
    /// A short stable name for audit entries, log fields and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            PolicySource::Config => "config",
            PolicySource::DomainList => "list",
            PolicySource::RequireTls => "requiretls",
            PolicySource::Dane => "dane",
            PolicySource::MtaSts => "mta-sts",
            PolicySource::Default => "opportunistic",
        }
    }
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicySource::Config => "[[policy]] entry",
            PolicySource::DomainList => "tvungen TLS domain list",
            PolicySource::RequireTls => "REQUIRETLS",
            PolicySource::Dane => "DANE (DNSSEC-signed TLSA records)",
            PolicySource::MtaSts => "MTA-STS policy (enforce)",
            PolicySource::Default => "default (opportunistic)",
        })
    }
}

/// The policy for one recipient domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPolicy {
    /// The level delivery enforces.
    pub level: TlsLevel,
    /// Which rule set the level.
    pub source: PolicySource,
    /// The domain is on the tvungen TLS list: never below `verify`, failures logged at warn.
    pub listed: bool,
    /// Extra certificate names from the `[[policy]]` entry (`match`).
    pub match_names: Vec<String>,
}

fn configured_entry<'a>(policies: &'a [PolicyEntry], domain: &Domain) -> Option<&'a PolicyEntry> {
    let exact = policies
        .iter()
        .find(|p| matches!(&p.target, PolicyTarget::Exact(d) if d == domain));
    exact.or_else(|| {
        policies
            .iter()
            .filter_map(|p| match &p.target {
                PolicyTarget::Suffix(parent) if domain.is_subdomain_of(parent) => {
                    Some((parent.as_str().len(), p))
                }
                _ => None,
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, p)| p)
    })
}

/// The TLS policy for mail to `domain` (design.md, "resolution order"): an explicit
/// `[[policy]]` entry (an exact entry before a `.suffix` one, the longest suffix first); the
/// domain list, which makes the level at least `verify` whatever an entry says (T3, T4);
/// REQUIRETLS from the sender, likewise at least `verify` (RFC 8689); otherwise `may`.
pub fn resolve(
    policies: &[PolicyEntry],
    list: &DomainList,
    domain: &Domain,
    requiretls: bool,
) -> ResolvedPolicy {
    let entry = configured_entry(policies, domain);
    let listed = list.is_listed(domain);
    let mut level = entry.map_or(TlsLevel::May, |e| e.tls);
    let mut source = if entry.is_some() {
        PolicySource::Config
    } else {
        PolicySource::Default
    };
    if listed && level < TlsLevel::Verify {
        level = TlsLevel::Verify;
        source = PolicySource::DomainList;
    }
    // `dane-only` authenticates by DANE, which REQUIRETLS accepts (RFC 8689 section 4.2.1).
    if requiretls && level < TlsLevel::Verify && level != TlsLevel::DaneOnly {
        level = TlsLevel::Verify;
        source = PolicySource::RequireTls;
    }
    ResolvedPolicy {
        level,
        source,
        listed,
        match_names: entry.map(|e| e.match_names.clone()).unwrap_or_default(),
    }
}

/// Exact `[[policy]]` entries that name a listed domain with a level below `verify`: a
/// configuration that tries to weaken the list (refused at start).
pub fn weakening_entries(policies: &[PolicyEntry], list: &DomainList) -> Vec<(Domain, TlsLevel)> {
    policies
        .iter()
        .filter_map(|p| match &p.target {
            PolicyTarget::Exact(d) if list.is_listed(d) && p.tls < TlsLevel::Verify => {
                Some((d.clone(), p.tls))
            }
            _ => None,
        })
        .collect()
}

/// The names a peer's certificate may carry at `level` (T9): `verify` the host connected to,
/// `secure` the recipient domain or its subdomains; both plus the policy's `match` names.
pub fn certificate_names(
    level: TlsLevel,
    host: &str,
    domain: Option<&Domain>,
    match_names: &[String],
) -> Vec<NamePattern> {
    let mut names = match (level, domain) {
        (TlsLevel::Secure, Some(d)) => vec![
            NamePattern::Exact(d.as_str().to_string()),
            NamePattern::Subdomains(d.as_str().to_string()),
        ],
        _ => vec![NamePattern::parse(host)],
    };
    names.extend(match_names.iter().map(|m| NamePattern::parse(m)));
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(target: &str, tls: TlsLevel) -> PolicyEntry {
        let target = match target.strip_prefix('.') {
            Some(s) => PolicyTarget::Suffix(Domain::parse(s).unwrap()),
            None => PolicyTarget::Exact(Domain::parse(target).unwrap()),
        };
        PolicyEntry {
            target,
            tls,
            match_names: Vec::new(),
        }
    }

    #[test]
    fn exact_entries_win_over_suffixes_and_longest_suffix_wins() {
        let policies = vec![
            entry(".no", TlsLevel::Encrypt),
            entry(".partner.no", TlsLevel::Secure),
            entry("partner.no", TlsLevel::Verify),
            entry("plain.partner.no", TlsLevel::None),
        ];
        let d = |s: &str| Domain::parse(s).unwrap();
        let none = DomainList::default();
        let level = |name: &str, requiretls| resolve(&policies, &none, &d(name), requiretls).level;
        assert_eq!(level("partner.no", false), TlsLevel::Verify);
        assert_eq!(level("mx.partner.no", false), TlsLevel::Secure);
        assert_eq!(level("plain.partner.no", false), TlsLevel::None);
        assert_eq!(level("other.no", false), TlsLevel::Encrypt);
        assert_eq!(level("example.com", false), TlsLevel::May);
        // RFC 8689: REQUIRETLS raises anything weaker to verify.
        let raised = resolve(&policies, &none, &d("plain.partner.no"), true);
        assert_eq!(
            (raised.level, raised.source),
            (TlsLevel::Verify, PolicySource::RequireTls)
        );
        assert_eq!(level("mx.partner.no", true), TlsLevel::Secure);
    }

    #[test]
    fn listed_domains_are_never_below_verify() {
        let list = DomainList::parse("bits.no\nfno.no\nsecure.no\n").unwrap();
        let policies = vec![
            entry(".no", TlsLevel::May),
            entry("fno.no", TlsLevel::None),
            entry("secure.no", TlsLevel::Secure),
        ];
        let d = |s: &str| Domain::parse(s).unwrap();
        let bits = resolve(&policies, &list, &d("bits.no"), false);
        assert_eq!(bits.level, TlsLevel::Verify);
        assert_eq!(bits.source, PolicySource::DomainList);
        assert!(bits.listed);
        assert_eq!(
            resolve(&[], &list, &d("bits.no"), false).level,
            TlsLevel::Verify
        );
        // An entry may make a listed domain stricter, never weaker (T4).
        let fno = resolve(&policies, &list, &d("fno.no"), false);
        assert_eq!(fno.level, TlsLevel::Verify);
        assert_eq!(
            resolve(&policies, &list, &d("secure.no"), false).level,
            TlsLevel::Secure
        );
        // Not listed: the entry applies.
        assert_eq!(
            resolve(&policies, &list, &d("other.no"), false).level,
            TlsLevel::May
        );
        // The exact weakening entry is reported (a config error at start).
        assert_eq!(
            weakening_entries(&policies, &list),
            vec![(d("fno.no"), TlsLevel::None)]
        );
    }

    #[test]
    fn certificate_names_per_level() {
        let domain = Domain::parse("partner.no").unwrap();
        let names = |level| {
            certificate_names(
                level,
                "mx1.hosted.example",
                Some(&domain),
                &[".outlook.com".into()],
            )
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
        };
        assert_eq!(
            names(TlsLevel::Verify),
            vec!["mx1.hosted.example", ".outlook.com"]
        );
        assert_eq!(
            names(TlsLevel::Secure),
            vec!["partner.no", ".partner.no", ".outlook.com"]
        );
    }

    #[test]
    fn levels_are_ordered_by_strictness() {
        assert!(TlsLevel::May < TlsLevel::Encrypt);
        assert!(TlsLevel::Encrypt < TlsLevel::Verify);
        assert!(TlsLevel::Verify < TlsLevel::Secure);
        assert!(TlsLevel::Verify.is_mandatory());
        assert!(!TlsLevel::May.is_mandatory());
    }
}
