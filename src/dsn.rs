//! Delivery status notifications (RFC 3464, RFC 3461; T6, T12).
//!
//! A DSN is an ordinary message from the null sender to the original envelope sender:
//! `multipart/report; report-type=delivery-status` with a human-readable part that says in
//! plain words what happened and which host said it, a `message/delivery-status` part, and the
//! original headers (`text/rfc822-headers`) or the whole message (`message/rfc822`, RET=FULL).
//! It goes through the same durable queue as any other message. There is never a DSN about a
//! message whose sender is null (RFC 5321 6.1: no bounce loops).

use crate::config::{DeliverySection, DsnLanguage};
use crate::datetime::rfc5322;
use crate::queue::message::{
    BodyType, DsnNotify, DsnRet, MessageMeta, NewMessage, QueueId, Reception, Recipient,
};
use std::fmt::Write;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, UNIX_EPOCH};

/// What a DSN reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// Permanent failure, or expiry.
    Failure,
    /// Still undelivered after the warning time; retries go on.
    Delay,
    /// Delivered to a next hop that does not speak DSN itself (RFC 3461 6.2, "relayed").
    Relayed,
}

impl DsnKind {
    fn action(self) -> &'static str {
        match self {
            DsnKind::Failure => "failed",
            DsnKind::Delay => "delayed",
            DsnKind::Relayed => "relayed",
        }
    }

    /// Label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            DsnKind::Failure => "failure",
            DsnKind::Delay => "delay",
            DsnKind::Relayed => "success",
        }
    }

    /// Does this recipient's NOTIFY ask for this kind of DSN?
    pub fn wanted_by(self, notify: &DsnNotify) -> bool {
        if notify.never {
            return false;
        }
        match self {
            DsnKind::Failure => notify.failure,
            DsnKind::Delay => notify.delay,
            DsnKind::Relayed => notify.success,
        }
    }
}

/// One recipient in a DSN.
#[derive(Debug, Clone)]
pub struct ReportedRecipient {
    /// The recipient as queued (address, NOTIFY, ORCPT).
    pub recipient: Recipient,
    /// RFC 3463 status, e.g. "5.1.1".
    pub status: String,
    /// The host whose reply is reported, if a remote host gave one.
    pub remote_mta: Option<String>,
    /// The remote reply ("550 5.1.1 no such user") or local reason.
    pub diagnostic: String,
    /// Seconds since the Unix epoch of the last attempt; 0 (none yet) leaves out
    /// `Last-Attempt-Date` (RFC 3464 2.3.7).
    pub last_attempt: u64,
}

/// Everything a DSN is built from.
pub struct DsnRequest<'a> {
    /// Failure, delay or success (relayed) report.
    pub kind: DsnKind,
    /// Our host name (`server.hostname`): Reporting-MTA and the From address's domain.
    pub reporting_mta: &'a str,
    /// `server.admin_contact`, named in the text for help (T11); `None` leaves the sentence out.
    pub admin_contact: Option<&'a str>,
    /// The envelope of the message reported on (sender, ENVID, RET, received time).
    pub original: &'a MessageMeta,
    /// The original body (without our `Received:`); `None` attaches nothing.
    pub original_body: Option<&'a [u8]>,
    /// The recipients this DSN reports.
    pub recipients: Vec<ReportedRecipient>,
    /// Expiry (for `Will-Retry-Until` in delay DSNs) and the text's language.
    pub delivery: &'a DeliverySection,
    /// Seconds since the Unix epoch: the DSN's `Date:` and its queue arrival time.
    pub now: u64,
}

/// Builds the DSN as a message ready for the queue, or `None` when there must be none (null
/// sender, or no recipient left to report).
pub fn build(req: &DsnRequest<'_>) -> Option<NewMessage> {
    let sender = req.original.sender.as_deref()?;
    if req.recipients.is_empty() {
        return None;
    }
    let id = QueueId::generate();
    let boundary = format!("{}.{}/{}", id, req.now, req.reporting_mta);
    let date = rfc5322(UNIX_EPOCH + Duration::from_secs(req.now));
    let subject = match req.kind {
        DsnKind::Failure => "Undelivered Mail Returned to Sender",
        DsnKind::Delay => "Delayed Mail (still being retried)",
        DsnKind::Relayed => "Successful Mail Delivery Report",
    };
    let mut msg = String::new();
    let _ = write!(
        msg,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n\
         To: <{sender}>\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{host}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n",
        host = req.reporting_mta,
    );
    msg.push_str(&fit_lines(&human_text(req).replace('\n', "\r\n"), ""));
    let _ = write!(
        msg,
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n"
    );
    msg.push_str(&fit_lines(&delivery_status(req), " "));

    let mut body = msg.into_bytes();
    let mut body_type = BodyType::SevenBit;
    if let Some(original) = req.original_body {
        let full = req.kind == DsnKind::Failure && req.original.ret != Some(DsnRet::Headers);
        let full = full || req.original.ret == Some(DsnRet::Full);
        let header_end = header_end(original);
        let (content_type, description, part) = if full {
            ("message/rfc822", "Undelivered Message", original)
        } else {
            (
                "text/rfc822-headers",
                "Message headers",
                &original[..header_end],
            )
        };
        body.extend_from_slice(
            format!(
                "\r\n--{boundary}\r\nContent-Description: {description}\r\n\
                 Content-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(req.original.received_header.as_bytes());
        body.extend_from_slice(part);
        if !part.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        if part.iter().any(|b| *b >= 0x80) {
            body_type = BodyType::EightBitMime;
        }
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());

    // The report itself carries UTF-8 text when the language needs it.
    if req.delivery.dsn_language == DsnLanguage::Norwegian {
        body_type = BodyType::EightBitMime;
    }
    let received_header = format!(
        "Received: by {host} (tlsgate) id {id};\r\n\t{date}\r\n",
        host = req.reporting_mta
    );
    let meta = MessageMeta {
        id,
        sender: None,
        recipients: vec![Recipient {
            address: sender.to_string(),
            notify: DsnNotify {
                never: true,
                success: false,
                failure: false,
                delay: false,
            },
            orcpt: None,
        }],
        ret: None,
        envid: None,
        body_type,
        smtputf8: !sender.is_ascii(),
        requiretls: false,
        reception: Reception {
            client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
            helo: req.reporting_mta.to_string(),
            role: req.original.reception.role,
            tls: None,
            received_at: req.now,
        },
        size: body.len() as u64,
        received_header,
    };
    Some(NewMessage { meta, body })
}

/// Where the header section of a message ends (after the empty line), or its length.
fn header_end(message: &[u8]) -> usize {
    memchr::memmem::find(message, b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(message.len())
}

fn human_text(req: &DsnRequest<'_>) -> String {
    let mut t = String::new();
    if req.delivery.dsn_language == DsnLanguage::Norwegian {
        t.push_str(&norwegian_text(req));
        t.push_str("\n------------------------------------------------------------\n\n");
    }
    let _ = writeln!(t, "This is the mail system at {}.\n", req.reporting_mta);
    match req.kind {
        DsnKind::Failure => t.push_str(
            "Your message could not be delivered to one or more recipients.\n\
             It has been given up; the details are below.\n",
        ),
        DsnKind::Delay => {
            let until = crate::queue::retry::expires_at(
                req.original.reception.received_at,
                req.delivery.expiry,
            );
            let _ = writeln!(
                t,
                "Your message has not been delivered yet to one or more recipients.\n\
                 Delivery is being retried until {}. You do not need to resend it.",
                rfc5322(UNIX_EPOCH + Duration::from_secs(until))
            );
        }
        DsnKind::Relayed => t.push_str(
            "Your message was delivered to the next mail server for the recipients below.\n\
             That server does not confirm final delivery, so this is the last report.\n",
        ),
    }
    t.push('\n');
    for r in &req.recipients {
        let _ = writeln!(t, "<{}>:", one_line(&r.recipient.address));
        match &r.remote_mta {
            Some(host) => {
                let _ = writeln!(
                    t,
                    "    host {} said: {}",
                    one_line(host),
                    one_line(&r.diagnostic)
                );
            }
            None => {
                let _ = writeln!(t, "    {}", one_line(&r.diagnostic));
            }
        }
    }
    if let Some(contact) = req.admin_contact {
        let _ = writeln!(
            t,
            "\nIf you need help, contact the mail administrator at <{contact}>."
        );
    }
    t
}

fn norwegian_text(req: &DsnRequest<'_>) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "Dette er e-postsystemet på {}.\n", req.reporting_mta);
    t.push_str(match req.kind {
        DsnKind::Failure => {
            "Meldingen din kunne ikke leveres til en eller flere mottakere, og er gitt opp.\n"
        }
        DsnKind::Delay => {
            "Meldingen din er ennå ikke levert til en eller flere mottakere.\n\
             Vi fortsetter å prøve; du trenger ikke sende den på nytt.\n"
        }
        DsnKind::Relayed => {
            "Meldingen din er levert til neste e-posttjener for mottakerne under.\n"
        }
    });
    t.push('\n');
    for r in &req.recipients {
        let _ = writeln!(t, "<{}>:", one_line(&r.recipient.address));
        match &r.remote_mta {
            Some(host) => {
                let _ = writeln!(
                    t,
                    "    tjeneren {} svarte: {}",
                    one_line(host),
                    one_line(&r.diagnostic)
                );
            }
            None => {
                let _ = writeln!(t, "    {}", one_line(&r.diagnostic));
            }
        }
    }
    if let Some(contact) = req.admin_contact {
        let _ = writeln!(
            t,
            "\nTrenger du hjelp, kontakt e-postansvarlig på <{contact}>."
        );
    }
    t
}

/// The `message/delivery-status` part (RFC 3464 2.2, 2.3).
fn delivery_status(req: &DsnRequest<'_>) -> String {
    let date = |secs: u64| rfc5322(UNIX_EPOCH + Duration::from_secs(secs));
    let mut s = String::new();
    let _ = write!(s, "Reporting-MTA: dns; {}\r\n", req.reporting_mta);
    if let Some(envid) = &req.original.envid {
        let _ = write!(s, "Original-Envelope-Id: {}\r\n", one_line(envid));
    }
    let _ = write!(
        s,
        "Arrival-Date: {}\r\n",
        date(req.original.reception.received_at)
    );
    for r in &req.recipients {
        s.push_str("\r\n");
        if let Some((kind, addr)) = &r.recipient.orcpt {
            let _ = write!(
                s,
                "Original-Recipient: {}; {}\r\n",
                one_line(kind),
                one_line(addr)
            );
        }
        let _ = write!(
            s,
            "Final-Recipient: rfc822; {}\r\n",
            one_line(&r.recipient.address)
        );
        let _ = write!(s, "Action: {}\r\n", req.kind.action());
        let _ = write!(s, "Status: {}\r\n", r.status);
        if let Some(host) = &r.remote_mta {
            let _ = write!(s, "Remote-MTA: dns; {}\r\n", one_line(host));
            let _ = write!(s, "Diagnostic-Code: smtp; {}\r\n", one_line(&r.diagnostic));
        } else {
            let _ = write!(
                s,
                "Diagnostic-Code: X-tlsgate; {}\r\n",
                one_line(&r.diagnostic)
            );
        }
        if r.last_attempt > 0 {
            let _ = write!(s, "Last-Attempt-Date: {}\r\n", date(r.last_attempt));
        }
        if req.kind == DsnKind::Delay {
            let until = crate::queue::retry::expires_at(
                req.original.reception.received_at,
                req.delivery.expiry,
            );
            let _ = write!(s, "Will-Retry-Until: {}\r\n", date(until));
        }
    }
    s
}

/// RFC 5322 2.1.1: a line is at most 998 octets without its CRLF.
const MAX_LINE: usize = 998;

/// Cuts every CRLF line of `text` longer than [`MAX_LINE`] octets. A remote reply, an address
/// or an ORCPT is not bounded by tlsgate, and a longer line may be cut or refused on its way
/// back to the sender. The cut prefers a space in the second half of the line; the line goes
/// on after CRLF, prefixed by `continuation` when the cut was not at a space: `" "` folds a
/// header field (RFC 5322 2.2.3; delivery-status fields, RFC 3464 2.1), `""` continues text.
fn fit_lines(text: &str, continuation: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for (i, line) in text.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let mut rest = line;
        let mut room = MAX_LINE;
        while rest.len() > room {
            let mut cut = room;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let at_space = match rest[..cut].rfind(' ') {
                Some(space) if space > room / 2 => {
                    cut = space;
                    true
                }
                _ => false,
            };
            out.push_str(&rest[..cut]);
            out.push_str("\r\n");
            rest = &rest[cut..];
            if at_space {
                room = MAX_LINE;
            } else {
                out.push_str(continuation);
                room = MAX_LINE - continuation.len();
            }
        }
        out.push_str(rest);
    }
    out
}

/// Header field values must not break the report's structure: control characters (CR, LF,
/// NUL, NEL …) become spaces, so a field cannot end early or inject another (RFC 3464 2.1).
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests;
