//! Mailbox addresses in SMTP paths (RFC 5321 4.1.2, with RFC 6531 UTF-8 where allowed).
//!
//! Only domain addresses are accepted: address literals (`user@[192.0.2.1]`) are refused,
//! because tlsgate relays by domain and policy (T3) is per domain.
//!
//! Length: the local part has no limit of its own. RFC 5321 4.5.3.1.1 gives 64 octets as the
//! least a server must accept, and 4.5.3.1 asks servers to avoid fixed maximums where they
//! can; SRS-rewritten senders and mailing-list confirmation addresses exceed 64 in daily use.
//! What is bounded is the whole path (256 octets, 4.5.3.1.3, `split_path`) and, before that,
//! the command line (`limits.max_line_length`).

use crate::domain::Domain;
use std::fmt;

/// `local-part@domain`, the local part kept exactly as sent (quoted form included, RFC 5321
/// 2.4: only the receiving host may interpret it); the domain normalised.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    local_part: String,
    domain: Domain,
}

/// MAIL FROM's reverse-path: `<>` (the null sender of bounces) or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: the null reverse-path of DSNs and other automatic replies (RFC 5321 4.5.5).
    Null,
    /// A sender mailbox.
    Address(Address),
}

impl ReversePath {
    /// The sender's address; `None` for `<>`.
    pub fn address(&self) -> Option<&Address> {
        match self {
            ReversePath::Null => None,
            ReversePath::Address(a) => Some(a),
        }
    }
}

/// RCPT TO's forward-path: an address, or the bare `<Postmaster>` that RFC 5321 4.5.1 says
/// every server must accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// A recipient mailbox.
    Address(Address),
    /// The bare `<Postmaster>` with no domain.
    Postmaster,
}

/// Why a path or mailbox was refused; the parser's caller turns it into a `553` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The path is not enclosed in `<` … `>`.
    #[error("missing angle brackets")]
    Brackets,
    /// `<>` or an empty mailbox where an address is required.
    #[error("empty address")]
    Empty,
    /// No `@` separating local part and domain.
    #[error("no @domain")]
    NoDomain,
    /// The local part is neither a dot-string nor a quoted string (RFC 5321 4.1.2).
    #[error("invalid local part")]
    LocalPart,
    /// The path exceeds 256 octets (RFC 5321 4.5.3.1.3).
    #[error("path longer than 256 octets")]
    TooLong,
    /// The domain is an address literal (`[192.0.2.1]`), which tlsgate refuses (see the module
    /// doc).
    #[error("address literals are not accepted")]
    AddressLiteral,
    /// The domain part is not a valid domain; carries the
    /// [`DomainError`](crate::domain::DomainError) text.
    #[error("invalid domain: {0}")]
    Domain(String),
    /// A malformed source route (`@a,@b:`, RFC 5321 4.1.2).
    #[error("invalid source route")]
    Route,
}

impl Address {
    /// An address from its parts; the local part must be a valid dot-string or quoted string
    /// ([`AddressError::LocalPart`] otherwise).
    pub fn new(local_part: &str, domain: Domain) -> Result<Address, AddressError> {
        check_local_part(local_part)?;
        Ok(Address {
            local_part: local_part.to_string(),
            domain,
        })
    }

    /// `postmaster@domain` (RFC 5321 4.5.1).
    pub fn postmaster(domain: Domain) -> Address {
        Address {
            local_part: "postmaster".to_string(),
            domain,
        }
    }

    /// The local part exactly as sent (quotes included).
    pub fn local_part(&self) -> &str {
        &self.local_part
    }

    /// The normalised domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// True when the local part is ASCII; false means the address needs SMTPUTF8 (RFC 6531).
    /// The domain is always ASCII (A-labels).
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii()
    }

    /// Parses `local@domain` (no brackets).
    pub fn parse(mailbox: &str) -> Result<Address, AddressError> {
        if mailbox.is_empty() {
            return Err(AddressError::Empty);
        }
        // The domain follows the last '@' outside a quoted local part; '@' is not allowed in
        // a domain, so the last '@' is the separator.
        let at = mailbox.rfind('@').ok_or(AddressError::NoDomain)?;
        let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
        if domain.starts_with('[') {
            return Err(AddressError::AddressLiteral);
        }
        check_local_part(local)?;
        let domain = Domain::parse(domain).map_err(|e| AddressError::Domain(e.to_string()))?;
        Ok(Address {
            local_part: local.to_string(),
            domain,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

/// RFC 5321 atext, plus any non-ASCII character (RFC 6531 3.3; whether UTF-8 is allowed at all
/// is decided by the SMTPUTF8 parameter, checked by the caller).
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn check_local_part(local: &str) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::LocalPart);
    }
    if let Some(inner) = local.strip_prefix('"') {
        // Quoted-string: qtextSMTP or quoted-pairSMTP, then the closing quote at the very end.
        let inner = inner.strip_suffix('"').ok_or(AddressError::LocalPart)?;
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(q) if (' '..='~').contains(&q) => {}
                    _ => return Err(AddressError::LocalPart),
                },
                '"' => return Err(AddressError::LocalPart),
                c if (' '..='~').contains(&c) || !c.is_ascii() => {}
                _ => return Err(AddressError::LocalPart),
            }
        }
        return Ok(());
    }
    // Dot-string: atoms separated by single dots.
    if local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
    {
        Ok(())
    } else {
        Err(AddressError::LocalPart)
    }
}

/// Splits a path `<...>` from the start of `input`, honouring quotes so that a `>` inside a
/// quoted local part does not end it. Returns (inside of the brackets, rest after `>`).
pub(crate) fn split_path(input: &str) -> Result<(&str, &str), AddressError> {
    let rest = input.strip_prefix('<').ok_or(AddressError::Brackets)?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                let inside = &rest[..i];
                if inside.len() > 256 {
                    return Err(AddressError::TooLong);
                }
                return Ok((inside, &rest[i + 1..]));
            }
            _ => {}
        }
    }
    Err(AddressError::Brackets)
}

/// Removes an RFC 5321 source route (`@a,@b:`), which must be accepted and ignored (4.1.2, C).
fn strip_route(path: &str) -> Result<&str, AddressError> {
    if !path.starts_with('@') {
        return Ok(path);
    }
    let colon = path.find(':').ok_or(AddressError::Route)?;
    for hop in path[..colon].split(',') {
        let host = hop.strip_prefix('@').ok_or(AddressError::Route)?;
        Domain::parse(host).map_err(|_| AddressError::Route)?;
    }
    Ok(&path[colon + 1..])
}

pub(crate) fn parse_reverse_path(inside: &str) -> Result<ReversePath, AddressError> {
    if inside.is_empty() {
        return Ok(ReversePath::Null);
    }
    Ok(ReversePath::Address(Address::parse(strip_route(inside)?)?))
}

pub(crate) fn parse_forward_path(inside: &str) -> Result<ForwardPath, AddressError> {
    if inside.eq_ignore_ascii_case("postmaster") {
        return Ok(ForwardPath::Postmaster);
    }
    if inside.is_empty() {
        return Err(AddressError::Empty);
    }
    Ok(ForwardPath::Address(Address::parse(strip_route(inside)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ordinary_and_quoted_addresses() {
        let a = Address::parse("First.Last+tag@Example.NO").unwrap();
        assert_eq!(a.local_part(), "First.Last+tag");
        assert_eq!(a.domain().as_str(), "example.no");
        assert_eq!(a.to_string(), "First.Last+tag@example.no");
        let q = Address::parse(r#""john \"q\" doe@x"@example.no"#).unwrap();
        assert_eq!(q.local_part(), r#""john \"q\" doe@x""#);
        let u = Address::parse("støle@bøler.no").unwrap();
        assert!(!u.is_ascii());
        assert_eq!(u.domain().as_str(), "xn--bler-gra.no");
    }

    #[test]
    fn refuses_bad_addresses() {
        for bad in [
            "",
            "nodomain",
            "@example.no",
            "a..b@example.no",
            ".a@example.no",
            "a.@example.no",
            "a b@example.no",
            "a@",
            "a@[192.0.2.1]",
            "a@exa mple.no",
            "\"unterminated@x.no",
            "a\u{0}b@example.no",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// RFC 5321 4.5.3.1: 64 octets is a minimum to accept, not a maximum to enforce.
    #[test]
    fn local_parts_longer_than_64_octets_are_accepted_within_the_path_limit() {
        let srs = format!("SRS0=HHH=TT=example.org={}", "a".repeat(100));
        let a = Address::parse(&format!("{srs}@example.no")).unwrap();
        assert_eq!(a.local_part(), srs);
        let quoted = format!("\"{}\"", "q ".repeat(60));
        assert!(Address::parse(&format!("{quoted}@example.no")).is_ok());
        // The path limit (256 octets inside the brackets) still holds.
        let inside = format!("{}@example.no", "a".repeat(256 - "@example.no".len()));
        assert_eq!(split_path(&format!("<{inside}>")).unwrap().0, inside);
        let over = format!("<a{inside}>");
        assert_eq!(split_path(&over), Err(AddressError::TooLong));
    }

    #[test]
    fn paths() {
        assert_eq!(
            split_path("<a@b.no> SIZE=1").unwrap(),
            ("a@b.no", " SIZE=1")
        );
        assert_eq!(split_path(r#"<"x>y"@b.no>"#).unwrap().0, r#""x>y"@b.no"#);
        assert!(split_path("a@b.no").is_err());
        assert!(split_path("<a@b.no").is_err());
        assert_eq!(parse_reverse_path("").unwrap(), ReversePath::Null);
        assert_eq!(
            parse_forward_path("@relay.no,@r2.no:u@b.no").unwrap(),
            ForwardPath::Address(Address::parse("u@b.no").unwrap())
        );
        assert_eq!(
            parse_forward_path("PostMaster").unwrap(),
            ForwardPath::Postmaster
        );
        assert!(parse_forward_path("@-bad:u@b.no").is_err());
        assert!(parse_forward_path("").is_err());
    }
}
