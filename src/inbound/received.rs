//! The `Received:` trace header field tlsgate adds to every message (RFC 5321 4.4, RFC 5322
//! 3.6.7), with the protocol keyword of RFC 3848 (`ESMTPS` when TLS was used) and the TLS
//! version and cipher as a comment, so the recipient can see how the hop was protected. A client
//! that authenticated with a certificate on the smarthost listener (S2) is named in a second
//! comment, `(client certificate "CN=…" issued by "CN=…")`, as Postfix's `(Client CN …,
//! Issuer …)`.

use crate::tls::TlsInfo;
use std::net::IpAddr;
use std::time::SystemTime;

/// What goes into one `Received:` header field ([`received_header`]).
pub struct ReceivedFields<'a> {
    /// The client's HELO/EHLO name (sanitised on output).
    pub helo: &'a str,
    /// The client's address.
    pub client_ip: IpAddr,
    /// Our name (`server.hostname`), after `by`.
    pub hostname: &'a str,
    /// The client said EHLO (`ESMTP`/`ESMTPS` rather than `SMTP`/`SMTPS`, RFC 3848).
    pub esmtp: bool,
    /// The session's TLS; `None` for plaintext.
    pub tls: Option<&'a TlsInfo>,
    /// The queue id, after `id`.
    pub queue_id: &'a str,
    /// Named in `for <…>` only when the message has exactly one recipient, so the header
    /// never discloses the other (possibly Bcc) recipients.
    pub single_recipient: Option<&'a str>,
    /// The date-time written after `;`.
    pub when: SystemTime,
}

/// Characters from the client (its HELO name) are reduced to a safe subset: a CR or LF would
/// inject header fields, and parentheses would break the comment structure.
fn sanitize(text: &str) -> String {
    text.chars()
        .take(255)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._:[]".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Certificate names (which a CA, not the client, wrote, but which may hold anything) inside a
/// comment: RFC 5322 3.2.2 ctext is printable ASCII without `(`, `)` and `\`; CR and LF would
/// inject header fields; `"` would end our quoting. Each of those, and anything not printable
/// ASCII, becomes `?`; at most 255 characters are kept.
fn comment_text(text: &str) -> String {
    text.chars()
        .take(255)
        .map(|c| {
            if (' '..='~').contains(&c) && !"()\\\"".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// The complete header field, folded, ending in CRLF.
pub fn received_header(f: &ReceivedFields<'_>) -> String {
    let protocol = match (f.esmtp, f.tls.is_some()) {
        (true, true) => "ESMTPS",
        (true, false) => "ESMTP",
        (false, true) => "SMTPS",
        (false, false) => "SMTP",
    };
    let mut h = format!(
        "Received: from {} ([{}])\r\n\tby {} (tlsgate) with {}",
        sanitize(f.helo),
        f.client_ip,
        f.hostname,
        protocol
    );
    if let Some(tls) = f.tls {
        h.push_str(&format!(
            "\r\n\t(version={} cipher={})",
            sanitize(&tls.version),
            sanitize(&tls.cipher)
        ));
        if let Some(cert) = &tls.client_certificate {
            h.push_str(&format!(
                "\r\n\t(client certificate \"{}\" issued by \"{}\")",
                comment_text(&cert.subject),
                comment_text(&cert.issuer)
            ));
        }
    }
    h.push_str(&format!(" id {}", f.queue_id));
    if let Some(rcpt) = f.single_recipient {
        h.push_str(&format!("\r\n\tfor <{rcpt}>"));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", crate::datetime::rfc5322(f.when)));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn esmtps_with_tls_details() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            client_certificate: None,
        };
        let h = received_header(&ReceivedFields {
            helo: "client.example\r\nBcc: evil",
            client_ip: "192.0.2.7".parse().unwrap(),
            hostname: "mx1.example.no",
            esmtp: true,
            tls: Some(&tls),
            queue_id: "0123456789ABCD",
            single_recipient: Some("a@example.no"),
            when: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        });
        assert_eq!(
            h,
            "Received: from client.example??Bcc:?evil ([192.0.2.7])\r\n\tby mx1.example.no (tlsgate) \
             with ESMTPS\r\n\t(version=TLSv1.3 cipher=TLS13_AES_256_GCM_SHA384) id 0123456789ABCD\r\n\t\
             for <a@example.no>;\r\n\tTue, 14 Nov 2023 22:13:20 +0000\r\n"
        );
    }

    #[test]
    fn plaintext_is_esmtp_without_comment() {
        let h = received_header(&ReceivedFields {
            helo: "c",
            client_ip: "::1".parse().unwrap(),
            hostname: "h",
            esmtp: true,
            tls: None,
            queue_id: "X",
            single_recipient: None,
            when: UNIX_EPOCH,
        });
        assert!(h.contains("with ESMTP id X;"));
        assert!(!h.contains("version="));
    }

    /// S2: the verified client certificate is named in a comment (RFC 5321 4.4 allows CFWS
    /// before `id`), with every character that could break the comment or the header replaced.
    #[test]
    fn client_certificate_is_named_in_a_safe_comment() {
        let tls = TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            client_certificate: Some(crate::tls::ClientCertificate {
                subject: "CN=exchange.example.no, O=Bank (Norge) \"AS\"\r\nBcc: x\\y æ".into(),
                issuer: "CN=Bank internal CA".into(),
                serial: "01".into(),
            }),
        };
        let h = received_header(&ReceivedFields {
            helo: "exchange.example.no",
            client_ip: "10.0.0.5".parse().unwrap(),
            hostname: "mx1.example.no",
            esmtp: true,
            tls: Some(&tls),
            queue_id: "X",
            single_recipient: None,
            when: UNIX_EPOCH,
        });
        assert!(
            h.contains(
                "(version=TLSv1.3 cipher=TLS13_AES_128_GCM_SHA256)\r\n\t(client certificate \
                 \"CN=exchange.example.no, O=Bank ?Norge? ?AS???Bcc: x?y ?\" issued by \
                 \"CN=Bank internal CA\") id X;"
            ),
            "{h}"
        );
    }
}
