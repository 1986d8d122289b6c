//! T5 (Bits 5.2.4): mail from an organisation on the tvungen TLS list must arrive over TLS.
//!
//! On an `inbound` listener, a plaintext session is refused at MAIL FROM when the envelope
//! sender's domain is listed (`530 5.7.0`), and a plaintext message is refused after DATA when
//! a domain in its `From:` header field is listed (`550 5.7.0`), so that a listed organisation's
//! mail cannot be slipped in with a forged or empty envelope sender either.

use crate::domain::Domain;
use crate::smtp::reply::Reply;

/// The reply for a plaintext MAIL FROM whose domain is listed.
pub fn envelope_refusal(domain: &Domain) -> Reply {
    Reply::new(
        530,
        "5.7.0",
        format!(
            "Must issue a STARTTLS command first: {domain} is on the tvungen TLS domain list, \
             mail from it is accepted only over TLS"
        ),
    )
}

/// The reply for a plaintext message whose `From:` names a listed domain.
pub fn header_refusal(domain: &Domain) -> Reply {
    Reply::new(
        550,
        "5.7.0",
        format!(
            "Message from {domain} refused: {domain} is on the tvungen TLS domain list, \
             mail from it is accepted only over TLS"
        ),
    )
}

/// The domains of the addresses in the message's `From:` header field(s).
///
/// Reads only the header section; folded lines are unfolded; quoted strings and comments
/// are skipped so that `"x@listed.no" <a@other.no>` yields `other.no` only.
pub fn header_from_domains(message: &[u8]) -> Vec<Domain> {
    let header_end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 2);
    let headers = String::from_utf8_lossy(&message[..header_end]);
    let mut fields: Vec<String> = Vec::new();
    for line in headers.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else if !line.is_empty() {
            fields.push(line.to_string());
        }
    }
    let mut domains = Vec::new();
    for field in fields {
        let Some((name, value)) = field.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("from") {
            continue;
        }
        for address in addresses_in(value) {
            if let Some((_, domain)) = address.rsplit_once('@') {
                if let Ok(d) = Domain::parse(domain.trim_end_matches('>')) {
                    if !domains.contains(&d) {
                        domains.push(d);
                    }
                }
            }
        }
    }
    domains
}

/// The address tokens of a header value: quoted strings and comments removed, then every
/// `<...>` or bare `local@domain` word.
fn addresses_in(value: &str) -> Vec<String> {
    let mut cleaned = String::with_capacity(value.len());
    let mut quoted = false;
    let mut comment_depth = 0u32;
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || comment_depth > 0 => escaped = true,
            '"' if comment_depth == 0 => quoted = !quoted,
            '(' if !quoted => comment_depth += 1,
            ')' if !quoted && comment_depth > 0 => comment_depth -= 1,
            c if !quoted && comment_depth == 0 => cleaned.push(c),
            _ => {}
        }
    }
    // Display names and comments are gone, so a comma now only separates mailboxes.
    let mut out = Vec::new();
    for mailbox in cleaned.split(',') {
        let address = match (mailbox.find('<'), mailbox.rfind('>')) {
            (Some(start), Some(end)) if start < end => mailbox[start + 1..end].trim(),
            _ => mailbox.trim(),
        };
        if address.contains('@') {
            out.push(address.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(message: &str) -> Vec<String> {
        header_from_domains(message.as_bytes())
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    #[test]
    fn finds_from_domains_in_the_header_only() {
        assert_eq!(
            names("Subject: x\r\nFrom: Kari <kari@Bits.NO>\r\n\r\nFrom: a@body.no\r\n"),
            vec!["bits.no"]
        );
        assert_eq!(
            names("from: a@one.no, \"B\" <b@two.no>\r\n\r\n"),
            vec!["one.no", "two.no"]
        );
        // Folded field.
        assert_eq!(
            names("From: \"Kari\"\r\n <kari@bits.no>\r\nTo: x@y.no\r\n\r\nhi"),
            vec!["bits.no"]
        );
        // A listed address inside a display name or comment does not count.
        assert_eq!(
            names("From: \"kari@bits.no\" (x@fno.no) <a@other.no>\r\n\r\n"),
            vec!["other.no"]
        );
        assert!(names("Subject: no from\r\n\r\n").is_empty());
    }
}
