//! The TLSRPT policy record (RFC 8460 section 3): `_smtp._tls.<domain>` TXT,
//! `v=TLSRPTv1; rua=mailto:reports@example.net,https://reporting.example.net/v1`.

/// Where a report goes (RFC 8460 3, `tlsrpt-uri`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// `mailto:` (section 5.3), with the address decoded (RFC 6068: `%xx` escapes; the query
    /// part after `?` is ignored).
    Mailto(String),
    /// `https:` (section 5.4), the whole URI.
    Https(String),
}

impl Rua {
    /// The URI as the record wrote it, the key of "sent to" marks.
    pub fn uri(&self) -> String {
        match self {
            Rua::Mailto(address) => format!("mailto:{address}"),
            Rua::Https(uri) => uri.clone(),
        }
    }
}

/// Why a domain gets no report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// No TXT record starts with `v=TLSRPTv1` (the domain does not take reports).
    #[error("no TLSRPT record")]
    None,
    /// More than one does: RFC 8460 3 says the domain then has no policy.
    #[error("{0} TLSRPT records (exactly one is allowed)")]
    Several(usize),
    /// The record does not follow the grammar; carries what is wrong.
    #[error("invalid TLSRPT record: {0}")]
    Invalid(String),
}

/// The `rua` targets of a domain from its TXT records at `_smtp._tls.<domain>`. RFC 8460 3:
/// records not starting with `v=TLSRPTv1` are ignored; exactly one must remain. Extensions
/// (`name=value`) are ignored; URIs of other schemes are skipped; a record with no usable
/// `rua` is invalid.
pub fn parse_records(records: &[String]) -> Result<Vec<Rua>, RecordError> {
    let ours: Vec<&String> = records
        .iter()
        .filter(|r| version_field(r).is_some())
        .collect();
    match ours.as_slice() {
        [] => Err(RecordError::None),
        [one] => parse_record(one),
        several => Err(RecordError::Several(several.len())),
    }
}

/// The rest of the record after `v=TLSRPTv1` and the first `;`, when it starts so.
fn version_field(record: &str) -> Option<&str> {
    let rest = record.strip_prefix("v=TLSRPTv1")?;
    let rest = rest.trim_start_matches([' ', '\t']);
    rest.strip_prefix(';')
}

/// Parses one record (`tlsrpt-record` of RFC 8460 3).
pub fn parse_record(record: &str) -> Result<Vec<Rua>, RecordError> {
    let invalid = |why: String| RecordError::Invalid(why);
    let rest = version_field(record)
        .ok_or_else(|| invalid("does not start with \"v=TLSRPTv1;\"".into()))?;
    let mut ruas = None;
    for field in rest.split(';') {
        let field = field.trim_matches([' ', '\t']);
        if field.is_empty() {
            // A trailing `;` (the grammar allows one at the end).
            continue;
        }
        let (name, value) = field
            .split_once('=')
            .ok_or_else(|| invalid(format!("field {field:?} has no '='")))?;
        // The grammar has no space around '='; published records sometimes do.
        let (name, value) = (name.trim_end(), value.trim_start());
        if name == "rua" {
            if ruas.is_some() {
                return Err(invalid("more than one rua field".into()));
            }
            ruas = Some(parse_rua(value)?);
        } else if !is_extension_name(name) || value.is_empty() {
            return Err(invalid(format!("field {field:?} is not an extension")));
        }
    }
    let ruas = ruas.ok_or_else(|| invalid("no rua field".into()))?;
    if ruas.is_empty() {
        return Err(invalid("no mailto: or https: URI in rua".into()));
    }
    Ok(ruas)
}

/// `tlsrpt-ext-name = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")`.
fn is_extension_name(name: &str) -> bool {
    name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn parse_rua(value: &str) -> Result<Vec<Rua>, RecordError> {
    let mut out = Vec::new();
    for uri in value.split(',') {
        let uri = uri.trim_matches([' ', '\t']);
        if uri.is_empty() {
            return Err(RecordError::Invalid("empty URI in rua".into()));
        }
        let lower = uri.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("mailto:").map(|_| &uri[7..]) {
            let address = rest.split('?').next().unwrap_or("");
            let address = percent_decode(address)
                .ok_or_else(|| RecordError::Invalid(format!("{uri:?}: bad % escape")))?;
            let valid = address
                .rsplit_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && domain.contains('.'))
                && !address.contains(|c: char| c.is_whitespace() || c == '<' || c == '>');
            if !valid {
                return Err(RecordError::Invalid(format!(
                    "{uri:?} is not a mail address"
                )));
            }
            out.push(Rua::Mailto(address));
        } else if lower.starts_with("https://") {
            out.push(Rua::Https(uri.to_string()));
        } else {
            // RFC 8460 3 defines mailto: and https:; anything else we cannot send to.
            tracing::debug!(uri, "TLSRPT rua with an unsupported scheme ignored");
        }
    }
    Ok(out)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn records(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    /// RFC 8460 3's own examples.
    #[test]
    fn rfc_examples() {
        assert_eq!(
            parse_records(&records(&["v=TLSRPTv1;rua=mailto:reports@example.com"])),
            Ok(vec![Rua::Mailto("reports@example.com".into())])
        );
        assert_eq!(
            parse_records(&records(&[
                "v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt"
            ])),
            Ok(vec![Rua::Https(
                "https://reporting.example.com/v1/tlsrpt".into()
            )])
        );
        assert_eq!(
            parse_records(&records(&[
                "v=TLSRPTv1; rua=mailto:reports@example.com,https://reporting.example.com/v1/tlsrpt"
            ])),
            Ok(vec![
                Rua::Mailto("reports@example.com".into()),
                Rua::Https("https://reporting.example.com/v1/tlsrpt".into())
            ])
        );
    }

    #[test]
    fn other_records_extensions_and_schemes_are_ignored() {
        let got = parse_records(&records(&[
            "v=spf1 -all",
            "v=TLSRPTv1 ; ext_1=x ; rua = mailto:a%2Bb@r.test?subject=x , ftp://x.test ;",
        ]));
        assert_eq!(got, Ok(vec![Rua::Mailto("a+b@r.test".into())]));
        assert_eq!(Rua::Mailto("a+b@r.test".into()).uri(), "mailto:a+b@r.test");
    }

    /// RFC 8460 3: not exactly one record → no policy.
    #[test]
    fn none_or_several_records_mean_no_policy() {
        assert_eq!(parse_records(&records(&[])), Err(RecordError::None));
        assert_eq!(
            parse_records(&records(&["v=TLSRPTv2; rua=mailto:a@b.test"])),
            Err(RecordError::None)
        );
        assert_eq!(
            parse_records(&records(&[
                "v=TLSRPTv1; rua=mailto:a@b.test",
                "v=TLSRPTv1; rua=mailto:c@b.test"
            ])),
            Err(RecordError::Several(2))
        );
    }

    #[test]
    fn malformed_records_are_refused() {
        for bad in [
            "v=TLSRPTv1;",
            "v=TLSRPTv1; rua=",
            "v=TLSRPTv1; rua=mailto:nobody",
            "v=TLSRPTv1; rua=mailto:a@b.test; rua=mailto:c@d.test",
            "v=TLSRPTv1; rua=ftp://x.test",
            "v=TLSRPTv1; garbage",
            "v=TLSRPTv1; rua=mailto:a%zz@b.test",
        ] {
            assert!(
                matches!(parse_record(bad), Err(RecordError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
