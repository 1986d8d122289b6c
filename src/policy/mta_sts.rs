//! MTA-STS (RFC 8461; D6, issue 13 item 1), the pure part: the `_mta-sts` TXT record
//! (section 3.1), the policy file (section 3.2) and MX host matching (section 4.1).
//!
//! Nothing here does I/O: the `mta_sts` module fetches, caches and refreshes policies and hands
//! the parsed [`StsPolicy`] to `policy::decision::decide`, which makes `enforce` a `verify` row
//! of its own (design.md row 4).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The largest `max_age` a policy may carry: about one year (RFC 8461 section 3.2).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// A valid `_mta-sts.<domain>` TXT record (RFC 8461 section 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StsRecord {
    /// The policy id (1 to 32 letters and digits): a new id means a new policy to fetch.
    pub id: String,
}

/// Why a domain has no usable `_mta-sts` record (RFC 8461 section 3.1: then it has no
/// available policy, but a cached one stays in force, section 5.1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRecord {
    /// No TXT record starts with `v=STSv1`.
    #[error("no v=STSv1 TXT record")]
    Absent,
    /// Several records start with `v=STSv1` (section 3.1: not exactly one means none).
    #[error("{0} v=STSv1 TXT records (exactly one is allowed)")]
    Several(usize),
    /// The one record is not valid; carries why.
    #[error("invalid v=STSv1 TXT record: {0}")]
    Invalid(String),
    /// The DNS lookup failed; carries the error in words.
    #[error("TXT lookup failed: {0}")]
    Lookup(String),
}

/// Picks and parses the MTA-STS record out of the TXT records at `_mta-sts.<domain>`
/// (strings of each record already concatenated). RFC 8461 section 3.1: records that do not
/// begin with `v=STSv1` are discarded; exactly one must remain, and it must be valid.
pub fn parse_record(txt: &[String]) -> Result<StsRecord, NoRecord> {
    let candidates: Vec<&String> = txt.iter().filter(|t| t.starts_with("v=STSv1")).collect();
    match candidates.as_slice() {
        [] => Err(NoRecord::Absent),
        [one] => parse_one_record(one).map_err(NoRecord::Invalid),
        many => Err(NoRecord::Several(many.len())),
    }
}

/// Section 3.1's grammar: `v=STSv1` first, then `;`-separated `key=value` fields with optional
/// white space around them, exactly one `id` of 1 to 32 letters and digits, extensions with the
/// grammar's name and value characters, an optional trailing `;`.
fn parse_one_record(text: &str) -> Result<StsRecord, String> {
    let mut fields = text.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=STSv1") {
        return Err("it must start with \"v=STSv1;\"".into());
    }
    let fields: Vec<&str> = fields.collect();
    let mut id = None;
    for (i, field) in fields.iter().enumerate() {
        if field.is_empty() {
            // Only the last field may be empty: a trailing `;`.
            if i + 1 == fields.len() {
                continue;
            }
            return Err("empty field".into());
        }
        let Some((name, value)) = field.split_once('=') else {
            return Err(format!("field {field:?} is not name=value"));
        };
        if name == "id" {
            if id.is_some() {
                return Err("more than one id".into());
            }
            if value.is_empty()
                || value.len() > 32
                || !value.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                return Err(format!("id {value:?} is not 1 to 32 letters and digits"));
            }
            id = Some(value.to_string());
            continue;
        }
        let name_ok = name.len() <= 32
            && name
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        // sts-ext-value = 1*(%x21-3A / %x3C / %x3E-7E): visible ASCII except ';' and '='.
        let value_ok = !value.is_empty()
            && value
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b';' && b != b'=');
        if !name_ok || !value_ok {
            return Err(format!("extension field {field:?} is malformed"));
        }
    }
    id.map(|id| StsRecord { id })
        .ok_or_else(|| "no id field".into())
}

/// The policy mode (RFC 8461 section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StsMode {
    /// MX hosts must match a pattern and present a valid certificate for their name.
    Enforce,
    /// Deliver as without MTA-STS, report what `enforce` would have refused (RFC 8460).
    Testing,
    /// The domain withdrew its policy: forget it.
    None,
}

impl StsMode {
    /// The policy file's spelling, also the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StsMode::Enforce => "enforce",
            StsMode::Testing => "testing",
            StsMode::None => "none",
        }
    }
}

impl fmt::Display for StsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed MTA-STS policy (RFC 8461 section 3.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StsPolicy {
    /// `mode`.
    pub mode: StsMode,
    /// The `mx` patterns, lower case, without a trailing dot: `mx.example.no` or
    /// `*.example.no` (section 4.1).
    pub mx: Vec<String>,
    /// `max_age`, in seconds (at most [`MAX_AGE_LIMIT`]).
    pub max_age: u64,
    /// The policy's non-empty lines as published, for TLS reports (`policy-string`, RFC 8460
    /// section 4.4).
    pub lines: Vec<String>,
}

/// Why a policy file is not a valid policy (RFC 8461 section 3.2; reported as
/// `sts-policy-invalid`, RFC 8460 section 4.3.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MTA-STS policy: {0}")]
pub struct PolicyError(pub String);

impl StsPolicy {
    /// Parses a policy file: `key: value` lines ended by CRLF or LF, `version: STSv1`,
    /// `mode`, `max_age` (0 to 31557600) and, unless the mode is `none`, at least one `mx`.
    /// Unknown keys are ignored (section 3.2); of a known key other than `mx` the first
    /// occurrence counts.
    pub fn parse(text: &str) -> Result<StsPolicy, PolicyError> {
        let bad = |why: String| PolicyError(why);
        let mut version = None;
        let mut mode = None;
        let mut max_age = None;
        let mut mx = Vec::new();
        let mut lines = Vec::new();
        for raw in text.split('\n') {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                continue;
            }
            lines.push(line.to_string());
            let Some((key, value)) = line.split_once(':') else {
                return Err(bad(format!("line {line:?} is not \"key: value\"")));
            };
            let (key, value) = (
                key.trim_matches([' ', '\t']),
                value.trim_matches([' ', '\t']),
            );
            match key {
                "version" => {
                    version.get_or_insert(value);
                }
                "mode" => {
                    mode.get_or_insert(value);
                }
                "max_age" => {
                    max_age.get_or_insert(value);
                }
                "mx" => mx.push(parse_mx_pattern(value).map_err(bad)?),
                _ => {}
            }
        }
        if version != Some("STSv1") {
            return Err(bad(match version {
                Some(v) => format!("version {v:?} is not STSv1"),
                None => "no version field".into(),
            }));
        }
        let mode = match mode {
            Some("enforce") => StsMode::Enforce,
            Some("testing") => StsMode::Testing,
            Some("none") => StsMode::None,
            Some(other) => {
                return Err(bad(format!(
                    "mode {other:?} is not enforce, testing or none"
                )))
            }
            None => return Err(bad("no mode field".into())),
        };
        let max_age = match max_age {
            // max-age-value = 1*10(DIGIT)
            Some(v) if !v.is_empty() && v.len() <= 10 && v.bytes().all(|b| b.is_ascii_digit()) => v
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= MAX_AGE_LIMIT)
                .ok_or_else(|| bad(format!("max_age {v} is above {MAX_AGE_LIMIT}")))?,
            Some(v) => return Err(bad(format!("max_age {v:?} is not a number of seconds"))),
            None => return Err(bad("no max_age field".into())),
        };
        if mx.is_empty() && mode != StsMode::None {
            return Err(bad(format!("mode {mode} without any mx field")));
        }
        Ok(StsPolicy {
            mode,
            mx,
            max_age,
            lines,
        })
    }

    /// Does the MX host `host` match one of the policy's `mx` patterns (section 4.1)? A
    /// pattern matches its own name, case-insensitively; `*.example.no` matches exactly one
    /// more label on the left (`mx1.example.no`, not `a.b.example.no` nor `example.no`).
    pub fn matches_mx(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|pattern| mx_matches(pattern, &host))
    }
}

/// One `mx` value: a domain name, or `*.` and a domain name (section 3.2: the wildcard is the
/// whole leftmost label).
fn parse_mx_pattern(value: &str) -> Result<String, String> {
    let pattern = value.trim_end_matches('.').to_ascii_lowercase();
    let name = pattern.strip_prefix("*.").unwrap_or(&pattern);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(pattern)
    } else {
        Err(format!(
            "mx {value:?} is not a host name or *.domain pattern"
        ))
    }
}

fn mx_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .strip_suffix(parent)
            .and_then(|head| head.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(records: &[&str]) -> Vec<String> {
        records.iter().map(|s| s.to_string()).collect()
    }

    /// RFC 8461 section 3.1: exactly one record starting with v=STSv1, with an id.
    #[test]
    fn txt_records() {
        assert_eq!(
            parse_record(&txt(&["v=STSv1; id=20160831085700Z;"])),
            Ok(StsRecord {
                id: "20160831085700Z".into()
            })
        );
        assert_eq!(
            parse_record(&txt(&["v=spf1 -all", "v=STSv1;id=abc"])).map(|r| r.id),
            Ok("abc".into())
        );
        // Extensions are allowed and ignored.
        assert_eq!(
            parse_record(&txt(&["v=STSv1; id=a1; ext-x=yes"])).map(|r| r.id),
            Ok("a1".into())
        );
        assert_eq!(parse_record(&txt(&[])), Err(NoRecord::Absent));
        assert_eq!(parse_record(&txt(&["v=spf1 -all"])), Err(NoRecord::Absent));
        assert_eq!(
            parse_record(&txt(&["v=STSv1; id=a", "v=STSv1; id=b"])),
            Err(NoRecord::Several(2))
        );
        for bad in [
            "v=STSv1",
            "v=STSv1;",
            "v=STSv1; id=",
            "v=STSv1; id=has-dash",
            "v=STSv1; id=123456789012345678901234567890123",
            "v=STSv1; id=a; id=b",
            "v=STSv1; ; id=a",
            "v=STSv1x; id=a",
            "v=STSv1; id=a; ext=a=b",
        ] {
            assert!(
                matches!(parse_record(&txt(&[bad])), Err(NoRecord::Invalid(_))),
                "{bad}"
            );
        }
        // Case matters: "v=stsv1" is not the version tag (%s in the ABNF), so it is absent.
        assert_eq!(
            parse_record(&txt(&["v=stsv1; id=a"])),
            Err(NoRecord::Absent)
        );
    }

    /// RFC 8461 section 3.2: the policy fields, CRLF or LF, unknown keys ignored.
    #[test]
    fn policy_files() {
        let p = StsPolicy::parse(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\n\
             max_age: 86400\r\nextension: whatever\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, StsMode::Enforce);
        assert_eq!(p.mx, vec!["mail.example.com", "*.example.net"]);
        assert_eq!(p.max_age, 86400);
        assert_eq!(
            p.lines,
            vec![
                "version: STSv1",
                "mode: enforce",
                "mx: mail.example.com",
                "mx: *.Example.NET.",
                "max_age: 86400",
                "extension: whatever"
            ]
        );
        let lf = StsPolicy::parse("version: STSv1\nmode: testing\nmx: a.b\nmax_age: 0\n").unwrap();
        assert_eq!((lf.mode, lf.max_age), (StsMode::Testing, 0));
        let none = StsPolicy::parse("version: STSv1\nmode: none\nmax_age: 10").unwrap();
        assert_eq!(none.mode, StsMode::None);
        assert_eq!(
            StsPolicy::parse("version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557600")
                .map(|p| p.max_age),
            Ok(MAX_AGE_LIMIT)
        );
        for (bad, why) in [
            ("mode: enforce\nmx: a.b\nmax_age: 1", "no version field"),
            (
                "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1",
                "is not STSv1",
            ),
            (
                "version: STSv1\nmode: strict\nmx: a.b\nmax_age: 1",
                "is not enforce",
            ),
            ("version: STSv1\nmx: a.b\nmax_age: 1", "no mode"),
            (
                "version: STSv1\nmode: enforce\nmax_age: 1",
                "without any mx",
            ),
            ("version: STSv1\nmode: enforce\nmx: a.b", "no max_age"),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601",
                "is above",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1",
                "not a number",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 12345678901",
                "not a number",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1",
                "not a host name",
            ),
            (
                "version: STSv1\nmode: enforce\nmx: a.*.b\nmax_age: 1",
                "not a host name",
            ),
            (
                "version: STSv1\ngarbage\nmode: enforce\nmx: a.b\nmax_age: 1",
                "key: value",
            ),
            ("<html>not a policy</html>", "key: value"),
        ] {
            let err = StsPolicy::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    /// RFC 8461 section 4.1: a wildcard matches exactly one leftmost label.
    #[test]
    fn mx_patterns() {
        let p = StsPolicy::parse(
            "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\nmax_age: 1",
        )
        .unwrap();
        assert!(p.matches_mx("mail.example.com"));
        assert!(p.matches_mx("MAIL.example.com."));
        assert!(p.matches_mx("mx1.example.net"));
        assert!(!p.matches_mx("example.net"));
        assert!(!p.matches_mx("a.b.example.net"));
        assert!(!p.matches_mx("mx1.badexample.net"));
        assert!(!p.matches_mx("other.example.com"));
        assert!(!p.matches_mx("xmail.example.com"));
    }
}
