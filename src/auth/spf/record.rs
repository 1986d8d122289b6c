//! SPF record syntax (RFC 7208 section 4.6 and the ABNF of section 12), parsed strictly: a
//! record RFC 7208 forbids is a `permerror` (section 4.6: "if there are any syntax errors
//! anywhere in the record, check_host() returns immediately with the result "permerror",
//! without further interpretation"), never evaluated as far as it goes.
//!
//! Input: the text of one `v=spf1` record (its TXT character-strings joined, RFC 7208 3.3).
//! Output: [`Record`] (directives in order, `redirect=` and `exp=`), or [`SyntaxError`]
//! naming the fault.

use std::net::{Ipv4Addr, Ipv6Addr};

/// A syntax error in a record, an explanation string or a macro (RFC 7208 section 12).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SPF syntax: {0}")]
pub struct SyntaxError(pub String);

fn err<T>(text: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError(text.into()))
}

/// A directive's qualifier (RFC 7208 4.6.2); `+` when absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    /// `+`
    Pass,
    /// `-`
    Fail,
    /// `~`
    SoftFail,
    /// `?`
    Neutral,
}

/// One piece of a macro-string (RFC 7208 7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// Literal characters.
    Literal(String),
    /// `%%`, `%_`, `%-`: their expansion (`%`, space, `%20`).
    Escape(&'static str),
    /// `%{...}`.
    Macro(Macro),
}

/// `%{` macro-letter transformers *delimiter `}` (RFC 7208 7.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Macro {
    /// The letter, lower case.
    pub letter: char,
    /// Written in upper case: the expansion is URL-escaped (RFC 7208 7.3).
    pub escape: bool,
    /// Keep this many right-hand parts (at least 1).
    pub keep: Option<usize>,
    /// `r`: reverse the parts.
    pub reverse: bool,
    /// The delimiters to split on; empty means `.`.
    pub delimiters: String,
}

/// A macro-string, checked (RFC 7208 7.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MacroString(pub Vec<Token>);

impl MacroString {
    /// Does it use the `%{p}` macro (which needs DNS to expand, RFC 7208 7.3)?
    pub fn uses_p(&self) -> bool {
        self.0
            .iter()
            .any(|t| matches!(t, Token::Macro(m) if m.letter == 'p'))
    }
}

/// A mechanism (RFC 7208 section 5) with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    /// `all`
    All,
    /// `include:<domain-spec>`
    Include(MacroString),
    /// `a[:<domain-spec>][/<ip4-cidr>][//<ip6-cidr>]`
    A {
        domain: Option<MacroString>,
        cidr4: u8,
        cidr6: u8,
    },
    /// `mx[:<domain-spec>][/<ip4-cidr>][//<ip6-cidr>]`
    Mx {
        domain: Option<MacroString>,
        cidr4: u8,
        cidr6: u8,
    },
    /// `ptr[:<domain-spec>]`
    Ptr(Option<MacroString>),
    /// `ip4:<network>[/<cidr>]`
    Ip4(Ipv4Addr, u8),
    /// `ip6:<network>[/<cidr>]`
    Ip6(Ipv6Addr, u8),
    /// `exists:<domain-spec>`
    Exists(MacroString),
}

impl Mechanism {
    /// Does evaluating it count against the limit of 10 DNS-querying terms (RFC 7208 4.6.4)?
    pub fn queries_dns(&self) -> bool {
        !matches!(
            self,
            Mechanism::All | Mechanism::Ip4(..) | Mechanism::Ip6(..)
        )
    }
}

/// A qualifier and a mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// The result when the mechanism matches.
    pub qualifier: Qualifier,
    /// The mechanism.
    pub mechanism: Mechanism,
}

/// A parsed `v=spf1` record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The directives, in order (RFC 7208 4.6.2: evaluated left to right).
    pub directives: Vec<Directive>,
    /// `redirect=` (RFC 7208 6.1), at most once.
    pub redirect: Option<MacroString>,
    /// `exp=` (RFC 7208 6.2), at most once.
    pub exp: Option<MacroString>,
}

/// Is this TXT string an SPF record (RFC 7208 4.5: "v=spf1" exactly, then a space or the
/// end; the version is case-insensitive)?
pub fn is_spf_record(text: &[u8]) -> bool {
    text.len() >= 6
        && text[..6].eq_ignore_ascii_case(b"v=spf1")
        && (text.len() == 6 || text[6] == b' ')
}

impl Record {
    /// Parses a whole record, `v=spf1` included. Only printable ASCII and spaces may occur
    /// (RFC 7208 12: terms are separated by SP; macro-literal is %x21-24 / %x26-7E), so a
    /// record with non-ASCII bytes, CR, LF, tab or NUL is a syntax error.
    pub fn parse(text: &[u8]) -> Result<Record, SyntaxError> {
        if !is_spf_record(text) {
            return err("the record does not start with v=spf1");
        }
        if let Some(b) = text.iter().find(|b| !(0x20..=0x7e).contains(*b)) {
            return err(format!(
                "byte 0x{b:02x} is not allowed in a record (RFC 7208 12)"
            ));
        }
        // Checked above: ASCII only.
        let text = String::from_utf8_lossy(&text[6..]);
        let mut record = Record::default();
        for term in text.split(' ').filter(|t| !t.is_empty()) {
            if let Some((name, value)) = modifier(term) {
                let lower = name.to_ascii_lowercase();
                match lower.as_str() {
                    "redirect" | "exp" => {
                        let spec = domain_spec(value)?;
                        let slot = if lower == "redirect" {
                            &mut record.redirect
                        } else {
                            &mut record.exp
                        };
                        if slot.is_some() {
                            // RFC 7208 6: each of these modifiers at most once.
                            return err(format!("{lower}= appears twice"));
                        }
                        *slot = Some(spec);
                    }
                    // RFC 7208 6: unknown modifiers are ignored, but must be well formed.
                    _ => {
                        macro_string(value, false, false)?;
                    }
                }
            } else {
                record.directives.push(directive(term)?);
            }
        }
        Ok(record)
    }
}

/// `name "=" macro-string` with name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." ).
fn modifier(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    .then_some((name, value))
}

fn directive(term: &str) -> Result<Directive, SyntaxError> {
    let (qualifier, rest) = match term.as_bytes().first() {
        Some(b'+') => (Qualifier::Pass, &term[1..]),
        Some(b'-') => (Qualifier::Fail, &term[1..]),
        Some(b'~') => (Qualifier::SoftFail, &term[1..]),
        Some(b'?') => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let end = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, args) = rest.split_at(end);
    let mechanism = match name.to_ascii_lowercase().as_str() {
        "all" if args.is_empty() => Mechanism::All,
        "include" => Mechanism::Include(required_spec(args)?),
        "exists" => Mechanism::Exists(required_spec(args)?),
        "ptr" => Mechanism::Ptr(optional_spec(args)?),
        "a" | "mx" => {
            let (spec, cidr4, cidr6) = dual_cidr(args)?;
            let domain = optional_spec(spec)?;
            if name.eq_ignore_ascii_case("a") {
                Mechanism::A {
                    domain,
                    cidr4,
                    cidr6,
                }
            } else {
                Mechanism::Mx {
                    domain,
                    cidr4,
                    cidr6,
                }
            }
        }
        "ip4" => {
            let network = args
                .strip_prefix(':')
                .ok_or_else(|| SyntaxError(format!("{term}: ip4 needs an address")))?;
            let (addr, len) = match network.split_once('/') {
                Some((addr, len)) => (addr, cidr(len, 32)?),
                None => (network, 32),
            };
            Mechanism::Ip4(ip4(addr)?, len)
        }
        "ip6" => {
            let network = args
                .strip_prefix(':')
                .ok_or_else(|| SyntaxError(format!("{term}: ip6 needs an address")))?;
            let (addr, len) = match network.split_once('/') {
                Some((addr, len)) => (addr, cidr(len, 128)?),
                None => (network, 128),
            };
            let addr: Ipv6Addr = addr
                .parse()
                .map_err(|_| SyntaxError(format!("{term}: not an IPv6 address")))?;
            Mechanism::Ip6(addr, len)
        }
        _ => return err(format!("{term}: unknown mechanism or bad syntax")),
    };
    Ok(Directive {
        qualifier,
        mechanism,
    })
}

/// `":" domain-spec`
fn required_spec(args: &str) -> Result<MacroString, SyntaxError> {
    match args.strip_prefix(':') {
        Some(spec) => domain_spec(spec),
        None => err(format!("{args:?}: a domain-spec is required")),
    }
}

/// `[ ":" domain-spec ]`
fn optional_spec(args: &str) -> Result<Option<MacroString>, SyntaxError> {
    if args.is_empty() {
        return Ok(None);
    }
    required_spec(args).map(Some)
}

/// Splits `[ ":" domain-spec ] [ ip4-cidr-length ] [ "/" ip6-cidr-length ]` into its parts
/// (the domain-spec may itself contain `/`; the CIDR lengths are the trailing digits).
fn dual_cidr(args: &str) -> Result<(&str, u8, u8), SyntaxError> {
    let mut rest = args;
    let mut cidr6 = 128;
    let mut cidr4 = 32;
    if let Some((head, digits)) = trailing_length(rest) {
        if let Some(head6) = head.strip_suffix('/') {
            cidr6 = cidr(digits, 128)?;
            rest = head6;
            if let Some((head4, digits4)) = trailing_length(rest) {
                cidr4 = cidr(digits4, 32)?;
                rest = head4;
            }
        } else {
            cidr4 = cidr(digits, 32)?;
            rest = head;
        }
    }
    Ok((rest, cidr4, cidr6))
}

/// `rest` ends in `/` DIGITs: the part before the `/`, and the digits.
fn trailing_length(rest: &str) -> Option<(&str, &str)> {
    let (head, digits) = rest.rsplit_once('/')?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then_some((head, digits))
}

/// A CIDR length: "0" or a number without leading zero, at most `max` (RFC 7208 12:
/// ip4-cidr-length 0-32, ip6-cidr-length 0-128).
fn cidr(digits: &str, max: u8) -> Result<u8, SyntaxError> {
    let ok = !digits.is_empty()
        && digits.len() <= 3
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    match digits.parse::<u8>() {
        Ok(n) if ok && n <= max => Ok(n),
        _ => err(format!("/{digits}: not a CIDR length of 0 to {max}")),
    }
}

/// ip4-network: four qnums without leading zeros (RFC 7208 12).
fn ip4(text: &str) -> Result<Ipv4Addr, SyntaxError> {
    let parts: Vec<&str> = text.split('.').collect();
    let qnum = |p: &&str| {
        !p.is_empty()
            && p.len() <= 3
            && p.bytes().all(|b| b.is_ascii_digit())
            && (*p == "0" || !p.starts_with('0'))
            && p.parse::<u8>().is_ok()
    };
    if parts.len() != 4 || !parts.iter().all(qnum) {
        return err(format!("{text}: not an IPv4 address"));
    }
    text.parse()
        .map_err(|_| SyntaxError(format!("{text}: not an IPv4 address")))
}

/// domain-spec = macro-string domain-end; domain-end = ( "." toplabel [ "." ] ) /
/// macro-expand (RFC 7208 12).
pub fn domain_spec(text: &str) -> Result<MacroString, SyntaxError> {
    let spec = macro_string(text, false, false)?;
    let ok = match spec.0.last() {
        Some(Token::Macro(_) | Token::Escape(_)) => true,
        Some(Token::Literal(tail)) => {
            let tail = tail.strip_suffix('.').unwrap_or(tail);
            match tail.rsplit_once('.') {
                Some((_, top)) => is_toplabel(top),
                None => false,
            }
        }
        None => false,
    };
    if ok {
        Ok(spec)
    } else {
        err(format!(
            "{text:?}: a domain-spec must end in a top label or a macro (RFC 7208 7.1)"
        ))
    }
}

/// toplabel = ( *alphanum ALPHA *alphanum ) / ( 1*alphanum "-" *( alphanum / "-" ) alphanum ).
fn is_toplabel(label: &str) -> bool {
    let b = label.as_bytes();
    let (Some(first), Some(last)) = (b.first(), b.last()) else {
        return false;
    };
    b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && b.iter().any(|c| c.is_ascii_alphabetic() || *c == b'-')
}

/// A macro-string (RFC 7208 7.1); `explain` allows the letters `c`, `r` and `t` (only in an
/// explanation, RFC 7208 7.3), `spaces` allows SP (explain-string).
pub fn macro_string(text: &str, explain: bool, spaces: bool) -> Result<MacroString, SyntaxError> {
    let mut tokens = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            if !(c.is_ascii_graphic() || (spaces && c == ' ')) {
                return err(format!("{text:?}: character {c:?} not allowed"));
            }
            literal.push(c);
            continue;
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(std::mem::take(&mut literal)));
        }
        match chars.next() {
            Some('%') => tokens.push(Token::Escape("%")),
            Some('_') => tokens.push(Token::Escape(" ")),
            Some('-') => tokens.push(Token::Escape("%20")),
            Some('{') => {
                let letter = chars
                    .next()
                    .ok_or_else(|| SyntaxError(format!("{text:?}: unterminated macro")))?;
                let lower = letter.to_ascii_lowercase();
                let allowed = "slodiphv".contains(lower) || (explain && "crt".contains(lower));
                if !letter.is_ascii_alphabetic() || !allowed {
                    return err(format!("{text:?}: %{{{letter} is not a macro letter here"));
                }
                let mut digits = String::new();
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    digits.push(d);
                }
                let reverse = chars.next_if(|c| matches!(c, 'r' | 'R')).is_some();
                let mut delimiters = String::new();
                while let Some(d) = chars.next_if(|c| ".-+,/_=".contains(*c)) {
                    delimiters.push(d);
                }
                if chars.next() != Some('}') {
                    return err(format!("{text:?}: malformed macro"));
                }
                let keep = if digits.is_empty() {
                    None
                } else {
                    match digits.parse::<usize>() {
                        Ok(n) if n >= 1 => Some(n),
                        _ => return err(format!("{text:?}: macro transformer must be 1 or more")),
                    }
                };
                tokens.push(Token::Macro(Macro {
                    letter: lower,
                    escape: letter.is_ascii_uppercase(),
                    keep,
                    reverse,
                    delimiters,
                }));
            }
            other => {
                return err(format!(
                    "{text:?}: '%' followed by {other:?} (RFC 7208 7.1 allows %{{, %%, %_, %-)"
                ))
            }
        }
    }
    if !literal.is_empty() {
        tokens.push(Token::Literal(literal));
    }
    Ok(MacroString(tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Record, SyntaxError> {
        Record::parse(s.as_bytes())
    }

    #[test]
    fn version_is_exact_and_case_insensitive() {
        // RFC 7208 4.5: "v=spf1" followed by a space or the end.
        assert!(is_spf_record(b"v=spf1"));
        assert!(is_spf_record(b"V=SPF1 -all"));
        assert!(!is_spf_record(b"v=spf10 -all"));
        assert!(!is_spf_record(b"v=spf1-all"));
        assert!(!is_spf_record(b" v=spf1 -all"));
    }

    #[test]
    fn only_printable_ascii_and_spaces() {
        // RFC 7208 12: terms separated by SP, macro-literal printable ASCII.
        for bad in [
            "v=spf1 -all\r\n",
            "v=spf1\t-all",
            "v=spf1 a:\u{e9}.example.com",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse("v=spf1  -all  ").is_ok(), "several spaces are fine");
    }

    #[test]
    fn cidr_lengths_are_strict() {
        // RFC 7208 12: ip4-cidr-length 0-32 and ip6-cidr-length 0-128, no leading zero.
        assert!(parse("v=spf1 ip4:1.2.3.4/32 ip4:0.0.0.0/0 ip6:::/0 a/24//64").is_ok());
        for bad in [
            "v=spf1 ip4:1.2.3.4/33",
            "v=spf1 ip4:1.2.3.4/032",
            "v=spf1 ip4:1.2.3.4//32",
            "v=spf1 ip6:::1/129",
            "v=spf1 a//129",
            "v=spf1 a/33",
            "v=spf1 ip4:1.2.3",
            "v=spf1 ip4:1.2.3.04",
            "v=spf1 ip4:1.2.3.4:8080",
            "v=spf1 ip4",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn modifiers() {
        // RFC 7208 6: redirect and exp at most once; unknown modifiers with a well-formed
        // name (ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )) are ignored.
        let r = parse("v=spf1 moo.cow-far_out=man:dog/cat -all").unwrap();
        assert_eq!(r.directives.len(), 1);
        for bad in [
            "v=spf1 redirect=a.example.com redirect=b.example.com",
            "v=spf1 exp=a.example.com exp=b.example.com",
            "v=spf1 =all",
            "v=spf1 9mod=x",
            "v=spf1 redirect=-all",
            "v=spf1 redirect:foo.example.com",
            "v=spf1 foo=%x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn domain_spec_ends_in_a_toplabel_or_macro() {
        // RFC 7208 7.1 domain-end; ':' and '/' may appear inside the domain-spec.
        assert!(parse("v=spf1 a:foo:bar/baz.example.com").is_ok());
        assert!(parse("v=spf1 a:foo.example.xn--zckzah").is_ok());
        assert!(parse("v=spf1 exists:%{i}.%{d}").is_ok());
        assert!(parse("v=spf1 a:example.com.").is_ok());
        for bad in [
            "v=spf1 a:museum",
            "v=spf1 a:museum.",
            "v=spf1 a:foo.example.123",
            "v=spf1 a:",
            "v=spf1 include:",
            "v=spf1 mx:example.com:8080",
            "v=spf1 exists:foo.example.com/24",
            "v=spf1 all.",
            "v=spf1 all:x",
            "v=spf1 ptr/0",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn macros() {
        // RFC 7208 7.1: letters, transformers, delimiters; c, r, t only in explanations.
        let m = macro_string("%{ir}.%{l1r+-}.%%%_%-", false, false).unwrap();
        assert_eq!(m.0.len(), 7, "{m:?}");
        assert!(macro_string("%{c}", false, false).is_err());
        assert!(macro_string("%{c} is %{R}", true, true).is_ok());
        for bad in ["%", "%{", "%{x}", "%{d0}", "%{d", "%a", "a b"] {
            assert!(macro_string(bad, false, false).is_err(), "{bad}");
        }
    }
}
