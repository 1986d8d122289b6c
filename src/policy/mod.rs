//! TLS policy: the levels a destination can require (design.md, "Outbound TLS policy").
//!
//! [`resolve`] finds the level for a recipient domain. It is pure code: the domain list, DANE
//! and MTA-STS are added to its inputs as they come (issue order in design.md).

use crate::config::{PolicyEntry, PolicyTarget};
use crate::domain::Domain;
use serde::{Deserialize, Serialize};
use std::fmt;

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

/// The TLS level for mail to `domain` (design.md, "resolution order"): an explicit
/// `[[policy]]` entry (an exact entry before a `.suffix` one, the longest suffix first), then
/// REQUIRETLS from the sender (RFC 8689: `verify`), otherwise `may`. A REQUIRETLS message is
/// never sent below `verify`, whatever an explicit entry says.
pub fn resolve(policies: &[PolicyEntry], domain: &Domain, requiretls: bool) -> TlsLevel {
    let exact = policies
        .iter()
        .find(|p| matches!(&p.target, PolicyTarget::Exact(d) if d == domain));
    let suffix = || {
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
    };
    let configured = exact.or_else(suffix).map(|p| p.tls);
    let level = configured.unwrap_or(TlsLevel::May);
    if requiretls {
        level.max(TlsLevel::Verify)
    } else {
        level
    }
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
        assert_eq!(
            resolve(&policies, &d("partner.no"), false),
            TlsLevel::Verify
        );
        assert_eq!(
            resolve(&policies, &d("mx.partner.no"), false),
            TlsLevel::Secure
        );
        assert_eq!(
            resolve(&policies, &d("plain.partner.no"), false),
            TlsLevel::None
        );
        assert_eq!(resolve(&policies, &d("other.no"), false), TlsLevel::Encrypt);
        assert_eq!(resolve(&policies, &d("example.com"), false), TlsLevel::May);
        // RFC 8689: REQUIRETLS raises anything weaker to verify.
        assert_eq!(
            resolve(&policies, &d("plain.partner.no"), true),
            TlsLevel::Verify
        );
        assert_eq!(
            resolve(&policies, &d("mx.partner.no"), true),
            TlsLevel::Secure
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
