//! TLS policy: the levels a destination can require (design.md, "Outbound TLS policy").
//!
//! Level resolution from `[[policy]]`, the domain list, DANE and MTA-STS builds on this type.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_ordered_by_strictness() {
        assert!(TlsLevel::May < TlsLevel::Encrypt);
        assert!(TlsLevel::Encrypt < TlsLevel::Verify);
        assert!(TlsLevel::Verify < TlsLevel::Secure);
        assert!(TlsLevel::Verify.is_mandatory());
        assert!(!TlsLevel::May.is_mandatory());
    }
}
