//! DSNs parsed back with mail-parser, every field checked (T6, T12).

use super::*;
use crate::config::Config;
use crate::queue::message::{BodyType, DsnNotify, Reception};
use mail_parser::{MessageParser, MimeHeaders, PartType};

const ORIGINAL: &[u8] = b"From: Kari <kari@bank.no>\r\nTo: ola@partner.no\r\nSubject: Kvartalsrapport\r\nMessage-ID: <q3@bank.no>\r\n\r\nHei Ola,\r\nrapporten kommer her.\r\n";

fn config() -> Config {
    Config::from_toml(
        r#"
        [server]
        hostname = "mx1.bank.no"
        data_dir = "/tmp/unused"
        admin_contact = "postmaster@bank.no"
        [[listener]]
        bind = "127.0.0.1:0"
        role = "outbound"
        [outbound]
        relay_networks = ["10.0.0.0/8"]
        "#,
        "test.toml",
    )
    .unwrap()
}

fn original(sender: Option<&str>, ret: Option<DsnRet>, envid: Option<&str>) -> MessageMeta {
    MessageMeta {
        id: QueueId::generate(),
        sender: sender.map(str::to_string),
        recipients: vec![recipient("ola@partner.no", Some("ola@partner.no"))],
        ret,
        envid: envid.map(str::to_string),
        body_type: BodyType::SevenBit,
        smtputf8: false,
        requiretls: false,
        reception: Reception {
            client_ip: "10.1.2.3".parse().unwrap(),
            helo: "exchange.bank.no".into(),
            role: crate::config::Role::Outbound,
            tls: None,
            received_at: 1_700_000_000,
        },
        received_header: "Received: from exchange.bank.no by mx1.bank.no; x\r\n".into(),
        size: ORIGINAL.len() as u64,
    }
}

fn recipient(address: &str, orcpt: Option<&str>) -> Recipient {
    Recipient {
        address: address.into(),
        notify: DsnNotify::default(),
        orcpt: orcpt.map(|o| ("rfc822".to_string(), o.to_string())),
    }
}

fn reported(meta: &MessageMeta, status: &str, host: Option<&str>, why: &str) -> ReportedRecipient {
    ReportedRecipient {
        recipient: meta.recipients[0].clone(),
        status: status.into(),
        remote_mta: host.map(str::to_string),
        diagnostic: why.into(),
        last_attempt: 1_700_000_100,
    }
}

fn request<'a>(
    kind: DsnKind,
    config: &'a Config,
    meta: &'a MessageMeta,
    recipients: Vec<ReportedRecipient>,
) -> DsnRequest<'a> {
    DsnRequest {
        kind,
        reporting_mta: &config.server.hostname,
        admin_contact: config.server.admin_contact.as_deref(),
        original: meta,
        original_body: Some(ORIGINAL),
        recipients,
        delivery: &config.delivery,
        now: 1_700_000_200,
    }
}

/// The `message/delivery-status` part as groups of (field, value): per-message first, then
/// one group per recipient.
fn status_groups(text: &str) -> Vec<Vec<(String, String)>> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter(|g| !g.trim().is_empty())
        .map(|group| {
            group
                .lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect()
        })
        .collect()
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    group
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

struct Parsed {
    subject: String,
    from: String,
    to: String,
    auto_submitted: String,
    report_type: String,
    human: String,
    status: Vec<Vec<(String, String)>>,
    third_type: String,
    third: Vec<u8>,
}

fn parse(message: &NewMessage) -> Parsed {
    let full = [message.meta.received_header.as_bytes(), &message.body].concat();
    let parsed = MessageParser::default().parse(&full).expect("DSN parses");
    let root = parsed.content_type().expect("content type");
    assert_eq!(root.ctype(), "multipart");
    assert_eq!(root.subtype(), Some("report"));
    let subparts = parsed.parts[0].sub_parts().expect("multipart").to_vec();
    assert_eq!(subparts.len(), 3, "human text, delivery-status, original");
    let part = |i: usize| &parsed.parts[subparts[i] as usize];
    let ctype = |i: usize| {
        let ct = part(i).content_type().expect("part content type");
        format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
    };
    assert_eq!(ctype(0), "text/plain");
    assert_eq!(ctype(1), "message/delivery-status");
    let third = match &part(2).body {
        PartType::Message(m) => m.raw_message().to_vec(),
        _ => part(2).contents().to_vec(),
    };
    Parsed {
        subject: parsed.subject().unwrap_or("").to_string(),
        from: parsed
            .from()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or("")
            .to_string(),
        to: parsed
            .to()
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .unwrap_or("")
            .to_string(),
        auto_submitted: parsed
            .header_raw("Auto-Submitted")
            .unwrap_or("")
            .trim()
            .to_string(),
        report_type: root.attribute("report-type").unwrap_or("").to_string(),
        human: part(0).text_contents().unwrap_or("").to_string(),
        status: status_groups(&String::from_utf8_lossy(part(1).contents())),
        third_type: ctype(2),
        third,
    }
}

#[test]
fn failure_dsn_has_every_field_and_the_whole_message() {
    let config = config();
    let meta = original(Some("kari@bank.no"), None, Some("Q3-2026"));
    let why = "550 5.1.1 <ola@partner.no>: no such user";
    let req = request(
        DsnKind::Failure,
        &config,
        &meta,
        vec![reported(&meta, "5.1.1", Some("mx.partner.no"), why)],
    );
    let dsn = build(&req).expect("a DSN");

    // Envelope: from the null sender to the original sender, never a DSN about it.
    assert_eq!(dsn.meta.sender, None);
    assert_eq!(dsn.meta.recipients.len(), 1);
    assert_eq!(dsn.meta.recipients[0].address, "kari@bank.no");
    assert!(dsn.meta.recipients[0].notify.never);

    let p = parse(&dsn);
    assert_eq!(p.subject, "Undelivered Mail Returned to Sender");
    assert_eq!(p.from, "MAILER-DAEMON@mx1.bank.no");
    assert_eq!(p.to, "kari@bank.no");
    assert_eq!(p.auto_submitted, "auto-replied");
    assert_eq!(p.report_type, "delivery-status");
    assert!(p.human.contains("could not be delivered"), "{}", p.human);
    assert!(
        p.human.contains(&format!("host mx.partner.no said: {why}")),
        "{}",
        p.human
    );
    assert!(p.human.contains("postmaster@bank.no"), "T11: {}", p.human);

    let per_message = &p.status[0];
    assert_eq!(
        field(per_message, "Reporting-MTA"),
        Some("dns; mx1.bank.no")
    );
    assert_eq!(field(per_message, "Original-Envelope-Id"), Some("Q3-2026"));
    assert!(field(per_message, "Arrival-Date").is_some_and(|d| d.contains("2023")));
    let rcpt = &p.status[1];
    assert_eq!(
        field(rcpt, "Original-Recipient"),
        Some("rfc822; ola@partner.no")
    );
    assert_eq!(
        field(rcpt, "Final-Recipient"),
        Some("rfc822; ola@partner.no")
    );
    assert_eq!(field(rcpt, "Action"), Some("failed"));
    assert_eq!(field(rcpt, "Status"), Some("5.1.1"));
    assert_eq!(field(rcpt, "Remote-MTA"), Some("dns; mx.partner.no"));
    assert_eq!(
        field(rcpt, "Diagnostic-Code"),
        Some(format!("smtp; {why}").as_str())
    );
    assert!(field(rcpt, "Last-Attempt-Date").is_some());
    assert!(field(rcpt, "Will-Retry-Until").is_none());

    // RET absent: a failure returns the whole message, with our Received: header.
    assert_eq!(p.third_type, "message/rfc822");
    let returned = String::from_utf8_lossy(&p.third);
    assert!(returned.contains("Subject: Kvartalsrapport"), "{returned}");
    assert!(returned.contains("rapporten kommer her"), "{returned}");
}

#[test]
fn ret_hdrs_returns_only_the_headers() {
    let config = config();
    let meta = original(Some("kari@bank.no"), Some(DsnRet::Headers), None);
    let req = request(
        DsnKind::Failure,
        &config,
        &meta,
        vec![reported(
            &meta,
            "5.1.10",
            None,
            "the domain accepts no mail",
        )],
    );
    let p = parse(&build(&req).unwrap());
    assert_eq!(p.third_type, "text/rfc822-headers");
    let headers = String::from_utf8_lossy(&p.third);
    assert!(headers.contains("Subject: Kvartalsrapport"));
    assert!(!headers.contains("rapporten kommer her"), "{headers}");
    // No remote host: a local diagnostic, no Remote-MTA.
    assert_eq!(field(&p.status[1], "Remote-MTA"), None);
    assert_eq!(
        field(&p.status[1], "Diagnostic-Code"),
        Some("X-tlsgate; the domain accepts no mail")
    );
    assert!(field(&p.status[0], "Original-Envelope-Id").is_none());
}

#[test]
fn delay_dsn_says_until_when_and_returns_headers() {
    let config = config();
    let meta = original(Some("kari@bank.no"), None, None);
    let req = request(
        DsnKind::Delay,
        &config,
        &meta,
        vec![reported(
            &meta,
            "4.7.5",
            Some("mx.partner.no"),
            "TLS required (verify) but not possible with mx.partner.no: certificate expired",
        )],
    );
    let p = parse(&build(&req).unwrap());
    assert_eq!(p.subject, "Delayed Mail (still being retried)");
    assert_eq!(field(&p.status[1], "Action"), Some("delayed"));
    assert_eq!(field(&p.status[1], "Status"), Some("4.7.5"));
    // Arrival 1_700_000_000 + default expiry of 5 days.
    let until = field(&p.status[1], "Will-Retry-Until").expect("Will-Retry-Until");
    assert!(until.contains("19 Nov 2023"), "{until}");
    assert!(p.human.contains("certificate expired"), "{}", p.human);
    assert!(p.human.contains("do not need to resend"), "{}", p.human);
    assert_eq!(p.third_type, "text/rfc822-headers");
}

#[test]
fn relayed_dsn_for_notify_success() {
    let config = config();
    let meta = original(Some("kari@bank.no"), None, None);
    let req = request(
        DsnKind::Relayed,
        &config,
        &meta,
        vec![reported(
            &meta,
            "2.0.0",
            Some("mx.partner.no"),
            "250 2.0.0 queued",
        )],
    );
    let p = parse(&build(&req).unwrap());
    assert_eq!(p.subject, "Successful Mail Delivery Report");
    assert_eq!(field(&p.status[1], "Action"), Some("relayed"));
    assert_eq!(field(&p.status[1], "Status"), Some("2.0.0"));
}

#[test]
fn never_a_dsn_about_a_message_from_the_null_sender() {
    let config = config();
    let meta = original(None, None, None);
    let req = request(
        DsnKind::Failure,
        &config,
        &meta,
        vec![reported(&meta, "5.1.1", Some("mx.partner.no"), "550 no")],
    );
    assert!(build(&req).is_none());
}

#[test]
fn notify_decides_which_dsns_are_wanted() {
    let default = DsnNotify::default();
    assert!(DsnKind::Failure.wanted_by(&default));
    assert!(DsnKind::Delay.wanted_by(&default));
    assert!(!DsnKind::Relayed.wanted_by(&default));
    let never = DsnNotify {
        never: true,
        success: false,
        failure: false,
        delay: false,
    };
    assert!(!DsnKind::Failure.wanted_by(&never));
    let success = DsnNotify {
        never: false,
        success: true,
        failure: false,
        delay: false,
    };
    assert!(DsnKind::Relayed.wanted_by(&success));
    assert!(!DsnKind::Failure.wanted_by(&success));
}

#[test]
fn norwegian_text_comes_first_when_configured() {
    let mut config = config();
    config.delivery.dsn_language = crate::config::DsnLanguage::Norwegian;
    let meta = original(Some("kari@bank.no"), None, None);
    let req = request(
        DsnKind::Failure,
        &config,
        &meta,
        vec![reported(
            &meta,
            "5.1.1",
            Some("mx.partner.no"),
            "550 5.1.1 no",
        )],
    );
    let p = parse(&build(&req).unwrap());
    let norwegian = p.human.find("kunne ikke leveres").expect("Norwegian text");
    let english = p
        .human
        .find("could not be delivered")
        .expect("English text");
    assert!(norwegian < english);
    assert!(p.human.contains("tjeneren mx.partner.no svarte"));
}
