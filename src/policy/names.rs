//! Certificate names a TLS policy accepts (T9): the output of
//! [`certificate_names`](super::certificate_names), enforced by `tls::verify`.

/// A name the peer's certificate may carry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamePattern {
    /// Exactly this host name.
    Exact(String),
    /// Any subdomain of this domain (written `.example.no`), not the domain itself.
    Subdomains(String),
}

impl NamePattern {
    /// Parses `mx.example.no` or `.example.no` (lower-cased, trailing dot removed).
    pub fn parse(text: &str) -> NamePattern {
        let t = text.trim().trim_end_matches('.').to_ascii_lowercase();
        match t.strip_prefix('.') {
            Some(suffix) => NamePattern::Subdomains(suffix.to_string()),
            None => NamePattern::Exact(t),
        }
    }

    /// Does a certificate name (lower case, no trailing dot) match? A `.suffix` pattern takes
    /// subdomains only, never the domain itself nor a name that merely ends the same way.
    pub fn allows(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(n) => n == name,
            NamePattern::Subdomains(parent) => name
                .strip_suffix(parent.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamePattern::Exact(n) => f.write_str(n),
            NamePattern::Subdomains(p) => write!(f, ".{p}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_names_and_subdomains() {
        assert!(NamePattern::parse("MX.Partner.no.").allows("mx.partner.no"));
        let sub = NamePattern::parse(".partner.no");
        assert!(sub.allows("mx.partner.no"));
        assert!(sub.allows("a.b.partner.no"));
        assert!(!sub.allows("partner.no"));
        assert!(!sub.allows("evilpartner.no"));
    }
}
