//! Removal of `Authentication-Results` fields that claim our authserv-id (RFC 8601 §5): a
//! sender must not be able to forge results in our name.

/// Returns `message` without the `Authentication-Results:` header fields whose authserv-id
/// equals `authserv_id` (ASCII case-insensitive, a trailing dot ignored). Folded fields are
/// removed whole; every other byte of the message, including other fields' folding and
/// the body, is left as it was. Works on CRLF and bare-LF messages.
pub fn strip_our_authentication_results(message: &[u8], authserv_id: &str) -> Vec<u8> {
    let ours = authserv_id.trim_end_matches('.');
    let mut out = Vec::with_capacity(message.len());
    let mut pos = 0;
    while pos < message.len() {
        // The end of the header section: an empty line. Everything from here is copied.
        if message[pos..].starts_with(b"\r\n") || message[pos] == b'\n' {
            break;
        }
        let end = field_end(message, pos);
        let field = &message[pos..end];
        if !is_ours(field, ours) {
            out.extend_from_slice(field);
        }
        pos = end;
    }
    out.extend_from_slice(&message[pos..]);
    out
}

/// The end (exclusive) of the header field starting at `start`: after the line terminator of
/// its last line, where the last line is the one not followed by a continuation (SP / HT).
fn field_end(message: &[u8], start: usize) -> usize {
    let mut pos = start;
    loop {
        let line_end = match memchr::memchr(b'\n', &message[pos..]) {
            Some(i) => pos + i + 1,
            None => return message.len(),
        };
        match message.get(line_end) {
            Some(b' ') | Some(b'\t') => pos = line_end,
            _ => return line_end,
        }
    }
}

fn is_ours(field: &[u8], ours: &str) -> bool {
    let Some(colon) = memchr::memchr(b':', field) else {
        return false;
    };
    let name = trim_wsp(&field[..colon]);
    if !name.eq_ignore_ascii_case(b"Authentication-Results") {
        return false;
    }
    match authserv_id(&field[colon + 1..]) {
        Some(id) => {
            let id = id.strip_suffix(b".").unwrap_or(&id);
            id.eq_ignore_ascii_case(ours.as_bytes())
        }
        None => false,
    }
}

fn trim_wsp(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The authserv-id at the start of an `Authentication-Results` value: CFWS (folding, nested
/// comments) skipped, then a token or a quoted-string (RFC 8601 `value`).
fn authserv_id(value: &[u8]) -> Option<Vec<u8>> {
    let mut i = skip_cfws(value, 0);
    if value.get(i) == Some(&b'"') {
        let mut id = Vec::new();
        i += 1;
        while i < value.len() {
            match value[i] {
                b'"' => return Some(id),
                b'\\' if i + 1 < value.len() => {
                    id.push(value[i + 1]);
                    i += 2;
                }
                b'\r' | b'\n' => i += 1,
                c => {
                    id.push(c);
                    i += 1;
                }
            }
        }
        return None;
    }
    let start = i;
    while i < value.len()
        && !matches!(
            value[i],
            b' ' | b'\t' | b'\r' | b'\n' | b';' | b'(' | b'"' | b'\\'
        )
    {
        i += 1;
    }
    (i > start).then(|| value[start..i].to_vec())
}

fn skip_cfws(value: &[u8], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < value.len() {
        match value[i] {
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::strip_our_authentication_results as strip;

    fn s(message: &str) -> String {
        String::from_utf8(strip(message.as_bytes(), "mx.tlsgate.test")).unwrap()
    }

    #[test]
    fn removes_ours_keeps_others() {
        let m = "Received: from a\r\n\
                 Authentication-Results: mx.tlsgate.test; spf=pass smtp.mailfrom=a@b\r\n\
                 Authentication-Results: other.example; dkim=pass\r\n\
                 Subject: hi\r\n\r\nAuthentication-Results: mx.tlsgate.test; body\r\n";
        assert_eq!(
            s(m),
            "Received: from a\r\n\
             Authentication-Results: other.example; dkim=pass\r\n\
             Subject: hi\r\n\r\nAuthentication-Results: mx.tlsgate.test; body\r\n"
        );
    }

    #[test]
    fn case_insensitive_name_and_id_and_trailing_dot() {
        let m = "authentication-results : MX.TLSGATE.TEST.; dkim=pass\r\nSubject: x\r\n\r\nb";
        assert_eq!(s(m), "Subject: x\r\n\r\nb");
    }

    #[test]
    fn folded_field_removed_whole() {
        let m = "From: a@b\r\n\
                 Authentication-Results:\r\n\
                 \tmx.tlsgate.test;\r\n\
                 \tspf=pass smtp.mailfrom=a@b;\r\n \
                 dkim=pass header.d=b\r\n\
                 To: c@d\r\n\r\nbody";
        assert_eq!(s(m), "From: a@b\r\nTo: c@d\r\n\r\nbody");
    }

    #[test]
    fn comments_and_quoted_ids() {
        let m = "Authentication-Results: (forged (nested)) mx.tlsgate.test 1; none\r\n\
                 Authentication-Results: \"mx.tlsgate.test\"; none\r\n\
                 Authentication-Results: mx.tlsgate.test.evil; none\r\n\
                 Authentication-Results: evil.mx.tlsgate.test; none\r\n\
                 ARC-Authentication-Results: i=1; mx.tlsgate.test; none\r\n\
                 X: y\r\n\r\n";
        assert_eq!(
            s(m),
            "Authentication-Results: mx.tlsgate.test.evil; none\r\n\
             Authentication-Results: evil.mx.tlsgate.test; none\r\n\
             ARC-Authentication-Results: i=1; mx.tlsgate.test; none\r\n\
             X: y\r\n\r\n"
        );
    }

    #[test]
    fn bare_lf_and_no_body() {
        assert_eq!(
            s("Authentication-Results: mx.tlsgate.test; none\nA: b\n\nbody\n"),
            "A: b\n\nbody\n"
        );
        assert_eq!(
            s("A: b\r\nAuthentication-Results: mx.tlsgate.test;\r\n spf=none"),
            "A: b\r\n"
        );
        assert_eq!(s(""), "");
    }

    #[test]
    fn folded_neighbour_untouched() {
        let m = "Subject: a\r\n long\r\nAuthentication-Results: mx.tlsgate.test; none\r\n\r\n";
        assert_eq!(s(m), "Subject: a\r\n long\r\n\r\n");
    }
}
