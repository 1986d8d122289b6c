//! What the sending job needs from a domain's DMARC record (RFC 7489 section 6.3): the
//! aggregate report destinations (`rua`, each with its optional `!size` limit, section 6.4)
//! and `pct` (mail-auth 0.13 parses DMARCbis records, which have no `pct`), and the external
//! destination verification of section 7.1.
//!
//! Pure: the lookups are the caller's ([`crate::dns::Resolver::txt`]).

/// One `rua` destination tlsgate can send to (`mailto:`; RFC 7489 6.2 makes `mailto:` the one
/// scheme every receiver supports, other schemes are ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The URI as published, limit included (`mailto:dmarc@example.no!10m`): the key under
    /// which the day's sending state records it.
    pub uri: String,
    /// The mail address (percent-decoded, without `mailto:` and the limit).
    pub address: String,
    /// The `!size` limit in bytes, when one is given.
    pub max_size: Option<u64>,
}

impl Destination {
    /// The domain of the address (lower case), for the section 7.1 check.
    pub fn domain(&self) -> String {
        self.address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default()
    }
}

/// The parts of a DMARC record reports need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRequest {
    /// The `mailto:` destinations of `rua`, in record order.
    pub rua: Vec<Destination>,
    /// Other `rua` URIs, ignored (for `show` and the log).
    pub ignored: Vec<String>,
    /// `pct` (0–100; 100 when absent or malformed, RFC 7489 6.3).
    pub pct: u8,
}

/// Why a domain gets no report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No TXT record starting `v=DMARC1` (RFC 7489 6.6.3: then no policy, no reports).
    #[error("no DMARC record")]
    None,
    /// More than one (RFC 7489 6.6.3 step 5: treated as none).
    #[error("more than one DMARC record")]
    Several,
    /// The record has no `rua` tag.
    #[error("the DMARC record asks for no aggregate reports (no rua)")]
    NoRua,
}

/// Picks the DMARC record among the TXT strings of `_dmarc.<domain>` and reads it.
pub fn parse_records(txt: &[String]) -> Result<ReportRequest, RecordError> {
    let mut records = txt.iter().filter(|t| is_dmarc(t));
    let record = records.next().ok_or(RecordError::None)?;
    if records.next().is_some() {
        return Err(RecordError::Several);
    }
    parse(record)
}

/// RFC 7489 6.6.3: a record starts with `v=DMARC1` (spaces around `=` allowed, 6.4).
pub fn is_dmarc(txt: &str) -> bool {
    let Some((tag, value)) = txt.split(';').next().and_then(|t| t.split_once('=')) else {
        return false;
    };
    tag.trim() == "v" && value.trim() == "DMARC1"
}

fn parse(record: &str) -> Result<ReportRequest, RecordError> {
    let mut rua = None;
    let mut pct = 100;
    for part in record.split(';') {
        let Some((tag, value)) = part.split_once('=') else {
            continue;
        };
        match tag.trim().to_ascii_lowercase().as_str() {
            "rua" => rua = Some(value.trim().to_string()),
            "pct" => {
                pct = value
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .unwrap_or(100)
            }
            _ => {}
        }
    }
    let rua = rua.ok_or(RecordError::NoRua)?;
    let mut request = ReportRequest {
        rua: Vec::new(),
        ignored: Vec::new(),
        pct,
    };
    // RFC 7489 6.4: `dmarc-uri *(*WSP "," *WSP dmarc-uri)`; a comma inside a URI is
    // percent-encoded.
    for uri in rua.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        match destination(uri) {
            Some(d) => request.rua.push(d),
            None => request.ignored.push(uri.to_string()),
        }
    }
    Ok(request)
}

/// RFC 7489 6.4: `dmarc-uri = URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ]`, the units
/// powers of two. `None` for another scheme or a malformed limit or address.
fn destination(uri: &str) -> Option<Destination> {
    let (target, limit) = match uri.rsplit_once('!') {
        Some((target, limit)) => (target, Some(limit)),
        None => (uri, None),
    };
    let max_size = match limit {
        None => None,
        Some(limit) => {
            let (digits, shift) = match limit.chars().last()? {
                'k' | 'K' => (&limit[..limit.len() - 1], 10),
                'm' | 'M' => (&limit[..limit.len() - 1], 20),
                'g' | 'G' => (&limit[..limit.len() - 1], 30),
                't' | 'T' => (&limit[..limit.len() - 1], 40),
                _ => (limit, 0),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let n: u64 = digits.parse().ok()?;
            Some(n.saturating_mul(1u64 << shift))
        }
    };
    let scheme_end = target.find(':')?;
    if !target[..scheme_end].eq_ignore_ascii_case("mailto") {
        return None;
    }
    // `mailto:` (RFC 6068) may carry `?headers`; a report goes to the address alone.
    let address = percent_decode(target[scheme_end + 1..].split('?').next()?)?;
    let (local, domain) = address.rsplit_once('@')?;
    let valid = !local.is_empty()
        && crate::domain::Domain::parse(domain).is_ok()
        && !address.contains(|c: char| c.is_whitespace() || c.is_control() || "<>,".contains(c));
    valid.then(|| Destination {
        uri: uri.to_string(),
        address,
        max_size,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// RFC 7489 7.1: whether `destination` lies outside the organisation of `author`, so that it
/// must authorise reports for `author`. tlsgate carries no public suffix list, so it counts a
/// destination as the same organisation only when one domain is the other or a parent of it
/// (`dmarc.bank.no` for `bank.no`); every other destination is verified. A verified
/// destination loses nothing; an unneeded check costs one lookup.
pub fn is_external(author: &str, destination: &str) -> bool {
    let within = |child: &str, parent: &str| {
        child == parent
            || child
                .strip_suffix(parent)
                .is_some_and(|prefix| prefix.ends_with('.'))
    };
    let (a, d) = (
        author.to_ascii_lowercase(),
        destination.to_ascii_lowercase(),
    );
    !(within(&a, &d) || within(&d, &a))
}

/// The name of the authorisation record of section 7.1:
/// `<author-domain>._report._dmarc.<destination-domain>`.
pub fn authorization_name(author: &str, destination: &str) -> String {
    format!("{author}._report._dmarc.{destination}")
}

/// Section 7.1: the destination authorises reports when a TXT record at
/// [`authorization_name`] starts with `v=DMARC1`.
pub fn authorizes(txt: &[String]) -> bool {
    txt.iter().any(|t| is_dmarc(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(t: &[&str]) -> Result<ReportRequest, RecordError> {
        parse_records(&t.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// RFC 7489 6.4: destinations with size limits in powers of two; other schemes ignored.
    #[test]
    fn rua_with_limits() {
        let r = records(&[
            "v=spf1 -all",
            "v=DMARC1; p=reject; pct=50; rua=mailto:a@x.test!10m, mailto:b%21c@y.test,https://h.test/r, mailto:c@z.test!2k",
        ])
        .unwrap();
        assert_eq!(r.pct, 50);
        let got: Vec<(&str, Option<u64>)> = r
            .rua
            .iter()
            .map(|d| (d.address.as_str(), d.max_size))
            .collect();
        assert_eq!(
            got,
            [
                ("a@x.test", Some(10 << 20)),
                ("b!c@y.test", None),
                ("c@z.test", Some(2048))
            ]
        );
        assert_eq!(r.rua[0].uri, "mailto:a@x.test!10m");
        assert_eq!(r.ignored, ["https://h.test/r"]);
        assert_eq!(r.rua[2].domain(), "z.test");
    }

    /// RFC 7489 6.6.3: none, two, or a record without rua.
    #[test]
    fn no_usable_record() {
        assert_eq!(records(&["v=spf1 -all"]), Err(RecordError::None));
        assert_eq!(
            records(&["v=DMARC1; p=none", "v=DMARC1; p=reject"]),
            Err(RecordError::Several)
        );
        assert_eq!(records(&["v=DMARC1; p=none"]), Err(RecordError::NoRua));
        assert_eq!(
            records(&["v=DMARC1;p=none;rua=mailto:a@b.test;pct=x"])
                .unwrap()
                .pct,
            100
        );
    }

    /// RFC 7489 7.1: only destinations outside the author's organisation are verified.
    #[test]
    fn external_destinations() {
        assert!(!is_external("bank.no", "bank.no"));
        assert!(!is_external("bank.no", "dmarc.bank.no"));
        assert!(!is_external("mail.bank.no", "bank.no"));
        assert!(is_external("bank.no", "reports.test"));
        assert!(is_external("bank.no", "xbank.no"));
        assert_eq!(
            authorization_name("bank.no", "reports.test"),
            "bank.no._report._dmarc.reports.test"
        );
        assert!(authorizes(&["v=DMARC1".into()]));
        assert!(!authorizes(&["v=spf1".into()]));
    }
}
