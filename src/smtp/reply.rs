//! SMTP replies (RFC 5321 4.2) with enhanced status codes (RFC 2034, RFC 3463).
//!
//! Used both ways: the server writes its own replies with [`Reply::write_to`]; the delivery
//! client parses the peers' replies with [`Reply::parse`].

use std::fmt;

/// RFC 3463 `class.subject.detail`, e.g. 5.7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedStatus {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject (RFC 3463 3), e.g. 7 for security or policy.
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedStatus {
    /// A status tlsgate states itself, e.g. `EnhancedStatus::new(4, 4, 1)`.
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedStatus {
        EnhancedStatus {
            class,
            subject,
            detail,
        }
    }

    /// Parses `2.0.0`; RFC 3463 2: class 2, 4 or 5, subject and detail 1–3 digits.
    pub fn parse(text: &str) -> Option<EnhancedStatus> {
        let mut parts = text.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let digits = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
        };
        if !(digits(class, 1) && digits(subject, 3) && digits(detail, 3)) {
            return None;
        }
        let class: u8 = class.parse().ok()?;
        if !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(EnhancedStatus {
            class,
            subject: subject.parse().ok()?,
            detail: detail.parse().ok()?,
        })
    }
}

impl fmt::Display for EnhancedStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: code, optional enhanced status code, text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code (RFC 5321 4.2).
    pub code: u16,
    /// The enhanced status code; `None` when absent (e.g. a peer without
    /// ENHANCEDSTATUSCODES).
    pub enhanced: Option<EnhancedStatus>,
    /// One or more lines separated by '\n'.
    pub text: String,
}

/// Why a peer's reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyParseError {
    /// A line that is not `NNN text` / `NNN-text`; carries its first 80 characters.
    #[error("reply line is not `NNN text`: {0:?}")]
    Malformed(String),
    /// The lines of a multi-line reply carry different codes (RFC 5321 4.2.1).
    #[error("reply lines carry different codes")]
    MixedCodes,
    /// No reply line.
    #[error("empty reply")]
    Empty,
    /// A line longer than the limit, in octets.
    #[error("reply line longer than {0} octets")]
    TooLong(usize),
}

impl Reply {
    /// A reply; `enhanced` is `"5.7.1"` style text, and text that does not parse (e.g. `""`)
    /// means no enhanced code.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: EnhancedStatus::parse(enhanced),
            text: text.into(),
        }
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx: try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx (or any code above 599).
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Writes the reply, every line with the code and the enhanced code (RFC 2034 3). Control
    /// characters in the text are replaced: a reply can never be split or forged by its text.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self.text.split('\n').collect();
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            out.extend_from_slice(format!("{}{}", self.code, sep).as_bytes());
            if let Some(e) = self.enhanced {
                out.extend_from_slice(format!("{e} ").as_bytes());
            }
            out.extend(
                line.bytes()
                    .map(|b| if b.is_ascii_control() { b'?' } else { b }),
            );
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Parses a complete reply received from a server (lines without their CRLF).
    pub fn parse(lines: &[&[u8]]) -> Result<Reply, ReplyParseError> {
        let mut code = None;
        let mut texts = Vec::with_capacity(lines.len());
        for raw in lines {
            let line = String::from_utf8_lossy(raw);
            let malformed = || ReplyParseError::Malformed(line.chars().take(80).collect());
            let digits = line.get(..3).ok_or_else(malformed)?;
            let this: u16 = digits
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| digits.parse().ok())
                .flatten()
                .ok_or_else(malformed)?;
            if !(200..600).contains(&this) {
                return Err(malformed());
            }
            match line.as_bytes().get(3) {
                None | Some(b' ') | Some(b'-') => {}
                Some(_) => return Err(malformed()),
            }
            if *code.get_or_insert(this) != this {
                return Err(ReplyParseError::MixedCodes);
            }
            texts.push(line.get(4..).unwrap_or("").to_string());
        }
        let code = code.ok_or(ReplyParseError::Empty)?;
        // The enhanced code, if any, leads the first line and its class matches the code's.
        let mut enhanced = None;
        if let Some(first) = texts.first().cloned() {
            let candidate = first.split(' ').next().unwrap_or("");
            if let Some(e) = EnhancedStatus::parse(candidate) {
                if u16::from(e.class) == code / 100 {
                    enhanced = Some(e);
                    for t in &mut texts {
                        if let Some(rest) = t.strip_prefix(candidate) {
                            *t = rest.trim_start().to_string();
                        }
                    }
                }
            }
        }
        Ok(Reply {
            code,
            enhanced,
            text: texts.join("\n"),
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        let text = self.text.replace('\n', " ");
        if !text.is_empty() {
            write!(f, " {text}")?;
        }
        Ok(())
    }
}

/// Is a complete reply buffered? Returns the number of octets through the last line's LF.
/// A continuation line is `NNN-`; the last line is `NNN ` or just `NNN`.
pub fn reply_complete(buf: &[u8], max_line: usize) -> Result<Option<usize>, ReplyParseError> {
    let mut start = 0;
    while start < buf.len() {
        let Some(rel) = buf[start..].iter().position(|&b| b == b'\n') else {
            if buf.len() - start > max_line {
                return Err(ReplyParseError::TooLong(max_line));
            }
            return Ok(None);
        };
        if rel > max_line {
            return Err(ReplyParseError::TooLong(max_line));
        }
        let line = &buf[start..start + rel];
        let end = start + rel + 1;
        if line.get(3) != Some(&b'-') {
            return Ok(Some(end));
        }
        start = end;
    }
    Ok(None)
}

/// Splits a complete reply buffer into lines without line endings.
pub fn reply_lines(buf: &[u8]) -> Vec<&[u8]> {
    buf.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_enhanced_code_on_every_line() {
        let mut out = Vec::new();
        Reply::new(250, "2.0.0", "first\nsecond\r\ninjected").write_to(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "250-2.0.0 first\r\n250-2.0.0 second?\r\n250 2.0.0 injected\r\n"
        );
    }

    #[test]
    fn parses_multiline_with_enhanced_code() {
        let r = Reply::parse(&[b"550-5.1.1 No such", b"550 5.1.1 user here"]).unwrap();
        assert_eq!(r.code, 550);
        assert_eq!(r.enhanced.unwrap().to_string(), "5.1.1");
        assert_eq!(r.text, "No such\nuser here");
        assert!(r.is_permanent());
        assert_eq!(r.to_string(), "550 5.1.1 No such user here");
    }

    #[test]
    fn enhanced_code_class_must_match() {
        let r = Reply::parse(&[b"250 5.0.0 odd"]).unwrap();
        assert_eq!(r.enhanced, None);
        assert_eq!(r.text, "5.0.0 odd");
        let r = Reply::parse(&[b"221"]).unwrap();
        assert_eq!((r.code, r.text.as_str()), (221, ""));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            &b"hello"[..],
            b"99 x",
            b"600 x",
            b"25",
            b"250xtext",
            b"2a0 x",
        ] {
            assert!(Reply::parse(&[bad]).is_err(), "{bad:?}");
        }
        assert_eq!(
            Reply::parse(&[b"250-a", b"251 b"]),
            Err(ReplyParseError::MixedCodes)
        );
    }

    #[test]
    fn finds_complete_replies() {
        assert_eq!(reply_complete(b"250-a\r\n250-b\r\n", 100), Ok(None));
        assert_eq!(
            reply_complete(b"250-a\r\n250 b\r\n354 x\r\n", 100),
            Ok(Some(14))
        );
        assert_eq!(reply_complete(b"250 partial", 100), Ok(None));
        assert!(reply_complete(&[b'x'; 200], 100).is_err());
        let lines = reply_lines(b"250-a\r\n250 b\r\n");
        assert_eq!(lines, vec![&b"250-a"[..], b"250 b"]);
    }

    #[test]
    fn enhanced_status_parse() {
        assert!(EnhancedStatus::parse("4.7.0").is_some());
        assert!(EnhancedStatus::parse("5.7.100").is_some());
        for bad in ["3.0.0", "5.7", "5.7.1.1", "5.x.1", "", "55.1.1", "5.1234.1"] {
            assert!(EnhancedStatus::parse(bad).is_none(), "{bad}");
        }
    }
}
