//! Domain names as tlsgate compares them: ASCII lower case, A-labels (IDNA), no trailing dot.
//!
//! Every comparison of domains (local domains, the tvungen TLS list, policy entries, relay
//! checks) goes through [`Domain`], so `Partner.NO.`, `partner.no` and the U-label form of an
//! internationalised name are always the same domain.

use std::fmt;
use std::str::FromStr;

/// A validated domain name in the normalised form above; build it with [`Domain::parse`]
/// (or `str::parse`). `Display` and [`Domain::as_str`] give the A-label form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

/// Why [`Domain::parse`] refused a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// Nothing (or only a dot) was given.
    #[error("empty domain name")]
    Empty,
    /// Over 253 characters in A-label form (RFC 1035 2.3.4).
    #[error("domain name is longer than 253 characters")]
    TooLong,
    /// A non-ASCII name that IDNA (UTS #46) cannot convert to A-labels.
    #[error("invalid internationalised domain name")]
    Idna,
    /// A label that is empty, longer than 63, starts or ends with `-`, or holds other than
    /// letters, digits and `-` (RFC 1123 2.1); carries the label (at most 64 characters).
    #[error("label {0:?} is not a valid host name label")]
    BadLabel(String),
    /// A name without a dot where one is required.
    #[error("a domain needs at least one dot")]
    SingleLabel,
}

impl Domain {
    /// Normalises and validates. Single-label names (`localhost`) are allowed: they are valid
    /// in local configuration; the SMTP parser decides what it accepts from the wire.
    pub fn parse(input: &str) -> Result<Domain, DomainError> {
        let trimmed = input.strip_suffix('.').unwrap_or(input);
        if trimmed.is_empty() {
            return Err(DomainError::Empty);
        }
        let ascii = if trimmed.is_ascii() {
            trimmed.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii(trimmed).map_err(|_| DomainError::Idna)?
        };
        if ascii.len() > 253 {
            return Err(DomainError::TooLong);
        }
        for label in ascii.split('.') {
            let valid = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !valid {
                return Err(DomainError::BadLabel(label.chars().take(64).collect()));
            }
        }
        Ok(Domain(ascii))
    }

    /// The normalised name: lower case, A-labels, no trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Strict subdomain: `a.b.c` of `b.c`; not `b.c` itself, not `xb.c`.
    pub fn is_subdomain_of(&self, parent: &Domain) -> bool {
        self.0.len() > parent.0.len() + 1
            && self.0.ends_with(parent.0.as_str())
            && self.0.as_bytes()[self.0.len() - parent.0.len() - 1] == b'.'
    }

    /// `parent` itself or one of its subdomains.
    pub fn is_within(&self, parent: &Domain) -> bool {
        self == parent || self.is_subdomain_of(parent)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Domain {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Domain::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_trailing_dot_and_idna() {
        assert_eq!(Domain::parse("Partner.NO.").unwrap().as_str(), "partner.no");
        assert_eq!(
            Domain::parse("bøler.no").unwrap().as_str(),
            "xn--bler-gra.no"
        );
        assert_eq!(
            Domain::parse("xn--bler-gra.no").unwrap(),
            Domain::parse("BØLER.no").unwrap()
        );
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            ".",
            "a..b",
            "-a.no",
            "a-.no",
            "a_b.no",
            "a b.no",
            "[1.2.3.4]",
            "a.no\r\n",
        ] {
            assert!(Domain::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Domain::parse(&format!("{}.no", "a".repeat(64))).is_err());
        let long = vec!["abcdefghi"; 30].join(".");
        assert_eq!(Domain::parse(&long), Err(DomainError::TooLong));
    }

    #[test]
    fn subdomains() {
        let parent = Domain::parse("b.c").unwrap();
        assert!(Domain::parse("a.b.c").unwrap().is_subdomain_of(&parent));
        assert!(!parent.is_subdomain_of(&parent));
        assert!(parent.is_within(&parent));
        assert!(!Domain::parse("xb.c").unwrap().is_subdomain_of(&parent));
    }
}
