//! The header section of a stored message (RFC 5322 2.1): where it ends, the one field the
//! operations tools need from it, `Message-ID` (RFC 5322 3.6.4), so that an administrator can
//! match a user's complaint to a queue entry (issue 14 item 3, Postfix's `cleanup:
//! message-id=` line), and how many fields of a name it holds (the `Received:` count of mail
//! loop detection, RFC 5321 6.3). Pure: no I/O.

/// Longest header section looked at (a bound on input-derived data): a header section longer
/// than this is cut there.
pub const MAX_HEADER_SECTION: usize = 1024 * 1024;

/// Longest `Message-ID` value kept (RFC 5322 2.1.1: a line is at most 998 characters).
const MAX_MESSAGE_ID: usize = 998;

/// The header section of `message` (header fields and their CRLFs, without the empty line
/// that ends it), at most [`MAX_HEADER_SECTION`] octets. A message without a body is all
/// header section.
pub fn header_section(message: &[u8]) -> &[u8] {
    let bounded = &message[..message.len().min(MAX_HEADER_SECTION)];
    if bounded.starts_with(b"\r\n") {
        return &[];
    }
    match memchr::memmem::find(bounded, b"\r\n\r\n") {
        Some(end) => &bounded[..end + 2],
        None => bounded,
    }
}

/// The first `Message-ID` field's value, unfolded (RFC 5322 2.2.3) and trimmed, `None` when
/// the header section has none or it is empty. Not validated as a msg-id: the log shows what
/// the sender wrote, so that it can be searched for as the user reports it.
pub fn message_id(message: &[u8]) -> Option<String> {
    let header = header_section(message);
    let mut lines = header.split(|b| *b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let Some(value) = strip_name(line, b"message-id") else {
            continue;
        };
        let mut text = String::from_utf8_lossy(value).into_owned();
        // Continuation lines start with white space (folding).
        while let Some(next) = lines.peek() {
            if !next.starts_with(b" ") && !next.starts_with(b"\t") {
                break;
            }
            text.push(' ');
            text.push_str(&String::from_utf8_lossy(next));
            lines.next();
        }
        let value: Vec<&str> = text.split_whitespace().collect();
        let mut value = value.join(" ");
        if value.is_empty() {
            return None;
        }
        if value.len() > MAX_MESSAGE_ID {
            let mut cut = MAX_MESSAGE_ID;
            while !value.is_char_boundary(cut) {
                cut -= 1;
            }
            value.truncate(cut);
        }
        return Some(value);
    }
    None
}

/// How many header fields named `name` (case-insensitive, RFC 5322 1.2.2) the header section
/// of `message` holds. A folded field counts once: its continuation lines start with white
/// space (RFC 5322 2.2.3) and are never a field of their own; the body is never looked at.
pub fn count_fields(message: &[u8], name: &[u8]) -> usize {
    header_section(message)
        .split(|b| *b == b'\n')
        .filter(|line| !line.starts_with(b" ") && !line.starts_with(b"\t"))
        .filter(|line| strip_name(line, name).is_some())
        .count()
}

/// The value after `name:` when `line` is that field (name case-insensitive, RFC 5322 1.2.2).
fn strip_name<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let colon = line.iter().position(|b| *b == b':')?;
    let field = line[..colon].trim_ascii_end();
    field
        .eq_ignore_ascii_case(name)
        .then(|| line[colon + 1..].trim_ascii_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_section_ends_at_the_empty_line() {
        let m = b"Subject: x\r\nFrom: a@b\r\n\r\nbody\r\n\r\nmore";
        assert_eq!(header_section(m), b"Subject: x\r\nFrom: a@b\r\n");
        assert_eq!(header_section(b"Subject: only\r\n"), b"Subject: only\r\n");
        assert_eq!(header_section(b"\r\nbody"), b"");
    }

    #[test]
    fn message_id_is_found_unfolded_in_any_case_and_not_in_the_body() {
        let m = b"Subject: x\r\nmessage-ID:\r\n <abc@example.no>\r\n\r\nMessage-ID: <body@x>\r\n";
        assert_eq!(message_id(m).as_deref(), Some("<abc@example.no>"));
        let m = b"Message-Id: <1@x>\r\nMessage-Id: <2@x>\r\n\r\n";
        assert_eq!(message_id(m).as_deref(), Some("<1@x>"));
        assert_eq!(message_id(b"Subject: x\r\n\r\nMessage-ID: <b@x>\r\n"), None);
        assert_eq!(message_id(b"Message-ID:   \r\n\r\n"), None);
        assert_eq!(message_id(b"X-Message-ID: <no@x>\r\n\r\n"), None);
    }

    #[test]
    fn fields_are_counted_once_when_folded_in_any_case_and_not_in_the_body() {
        let m = b"Received: from a\r\n\tby b; Received: c\r\n received: d\r\nRECEIVED:e\r\n\
                  X-Received: f\r\nSubject: Received: g\r\n\r\nReceived: body\r\n";
        assert_eq!(count_fields(m, b"received"), 2);
        assert_eq!(count_fields(b"\r\nReceived: body only\r\n", b"received"), 0);
        assert_eq!(count_fields(b"Received: x\r\n", b"received"), 1);
    }
}
