//! The `Authentication-Results` field (RFC 8601), one method result per folded line.

use super::{ArcCheck, DkimCheck, DmarcCheck, SpfCheck, SpfIdentity};
use std::fmt::Write;

pub(super) fn format(
    authserv_id: &str,
    spf: &SpfCheck,
    dkim: &[DkimCheck],
    arc: Option<&ArcCheck>,
    dmarc: &DmarcCheck,
) -> String {
    let mut h = String::with_capacity(512);
    h.push_str("Authentication-Results: ");
    h.push_str(&pvalue(authserv_id));

    h.push_str(";\r\n\tspf=");
    h.push_str(spf.result.as_str());
    comment(&mut h, spf.reason.as_deref());
    match &spf.identity {
        SpfIdentity::MailFrom(from) => {
            let _ = write!(h, " smtp.mailfrom={}", pvalue(from));
        }
        SpfIdentity::Helo(helo) => {
            let _ = write!(h, " smtp.helo={}", pvalue(helo));
        }
    }

    if dkim.is_empty() {
        h.push_str(";\r\n\tdkim=none");
    }
    for d in dkim {
        h.push_str(";\r\n\tdkim=");
        h.push_str(d.result.as_str());
        comment(&mut h, d.reason.as_deref());
        if let Some(i) = &d.identity {
            let _ = write!(h, " header.i={}", pvalue(i));
        }
        if let Some(domain) = &d.domain {
            let _ = write!(h, " header.d={}", pvalue(domain));
        }
        if let Some(s) = &d.selector {
            let _ = write!(h, " header.s={}", pvalue(s));
        }
        if let Some(b) = &d.b_prefix {
            let _ = write!(h, " header.b={}", pvalue(b));
        }
    }

    if let Some(arc) = arc {
        h.push_str(";\r\n\tarc=");
        h.push_str(arc.result.as_str());
        comment(&mut h, arc.reason.as_deref());
    }

    h.push_str(";\r\n\tdmarc=");
    h.push_str(dmarc.result.as_str());
    comment(&mut h, dmarc.reason.as_deref());
    if let Some(from) = &dmarc.from_domain {
        let _ = write!(h, " header.from={}", pvalue(from));
    }
    if let Some(p) = dmarc.policy {
        let _ = write!(h, " policy.dmarc={}", p.as_str());
    }
    h.push_str("\r\n");
    h
}

/// ` (text)` with only printable ASCII, no parentheses or backslashes, at most 100 bytes.
fn comment(h: &mut String, text: Option<&str>) {
    let Some(text) = text else { return };
    let clean: String = text
        .chars()
        .map(|c| match c {
            '(' | ')' | '\\' => ' ',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => ' ',
        })
        .take(100)
        .collect();
    let clean = clean.trim();
    if !clean.is_empty() {
        let _ = write!(h, " ({clean})");
    }
}

/// An RFC 8601 `pvalue`: as is when made of safe characters, else a quoted-string.
fn pvalue(v: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.@".contains(c);
    if !v.is_empty() && v.chars().all(safe) && !v.starts_with('@') {
        return v.to_string();
    }
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    for c in v.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            c if c.is_ascii_control() => {}
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn pvalues() {
        assert_eq!(pvalue("a@example.org"), "a@example.org");
        assert_eq!(pvalue("a b@x"), "\"a b@x\"");
        assert_eq!(pvalue("a\"b;\r\n"), "\"a\\\"b;\"");
        assert_eq!(pvalue(""), "\"\"");
    }
}
