//! Delivery faults found by replaying public bug reports (issue 10 items 1, 2, 5): which
//! temporary failures move a message on to the next MX, when SMTPUTF8 is really needed, and
//! DSNs that tell tlsgate's own decisions apart from what a remote host said.

mod common;

use common::mx_sink::{Behaviour, DisconnectAt};
use common::relay::*;
use common::SmtpClient;
use std::time::Duration;

/// No retry within a test's patience: whatever happens must happen in the first attempt.
const ONE_ATTEMPT: &str = "retry_schedule = [\"1h\"]";

async fn two_mx(s: &Setup) {
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_mx("partner.test", 20, "mx2.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    s.dns.add_ip("mx2.partner.test", ip(MX2));
}

/// RFC 5321 5.1: a temporary failure of the session or the whole transaction at the primary
/// MX sends the message to the next MX in the same attempt. Every kind: a 4xx to MAIL (the
/// reported case, `452 4.3.1`), to DATA, to the end of data, a `421` to RCPT, and a
/// connection closed after MAIL.
#[tokio::test]
async fn a_transaction_4xx_at_the_primary_moves_on_to_the_backup_mx() {
    let cases: Vec<(&str, Behaviour)> = vec![
        (
            "452 to MAIL",
            Behaviour {
                mail_reply: "452 4.3.1 Insufficient system storage".into(),
                ..Behaviour::default()
            },
        ),
        (
            "452 to MAIL without pipelining",
            Behaviour {
                mail_reply: "452 4.3.1 Insufficient system storage".into(),
                extensions: vec!["8BITMIME".into(), "ENHANCEDSTATUSCODES".into()],
                ..Behaviour::default()
            },
        ),
        (
            "451 to DATA",
            Behaviour {
                data_reply: "451 4.3.0 cannot take data now".into(),
                ..Behaviour::default()
            },
        ),
        (
            "451 to the end of data",
            Behaviour {
                data_end_reply: "451 4.3.0 queue file write error".into(),
                ..Behaviour::default()
            },
        ),
        ("421 to RCPT", always("421 4.3.2 shutting down")),
        (
            "connection closed after MAIL",
            Behaviour {
                disconnect: Some(DisconnectAt::AfterMail),
                ..Behaviour::default()
            },
        ),
    ];
    for (case, primary) in cases {
        let s = setup(ONE_ATTEMPT, "").await;
        two_mx(&s).await;
        let mx1 = s.sink(MX1, primary).await;
        let mx2 = s.sink(MX2, Behaviour::default()).await;
        s.submit("kari@example.no", &["ola@partner.test"], case)
            .await;
        let got = mx2.wait_for_messages(1, WAIT).await;
        assert_eq!(got[0].rcpts, vec!["ola@partner.test".to_string()], "{case}");
        assert!(
            mx1.connections() >= 1,
            "{case}: the primary was tried first"
        );
        assert!(
            mx1.messages().is_empty() || case == "451 to the end of data",
            "{case}"
        );
        s.wait_queue_empty().await;
        assert!(s.next_hop.messages().is_empty(), "{case}: no DSN");
    }
}

/// The same rules for `inbound.next_hop` when its name has several addresses: a busy first
/// address moves the message on to the second in the same attempt.
#[tokio::test]
async fn a_busy_next_hop_address_moves_on_to_the_next_address() {
    let s = setup_full("", ONE_ATTEMPT, "", Some("hop.example.internal")).await;
    s.dns.add_ip("hop.example.internal", ip("127.0.0.5"));
    s.dns.add_ip("hop.example.internal", ip(NEXT_HOP));
    let busy = s
        .sink(
            "127.0.0.5",
            Behaviour {
                mail_reply: "452 4.3.1 Insufficient system storage".into(),
                ..Behaviour::default()
            },
        )
        .await;
    let mut client = SmtpClient::connect_greeted(s.relay.inbound()).await;
    client.ehlo("mx.sender.example").await;
    assert_eq!(client.cmd("MAIL FROM:<ola@partner.test>").await.code, 250);
    assert_eq!(client.cmd("RCPT TO:<kari@example.no>").await.code, 250);
    assert_eq!(client.cmd("DATA").await.code, 354);
    client.send_raw(b"Subject: in\r\n\r\nhei\r\n.\r\n").await;
    assert_eq!(client.read_reply().await.code, 250);
    let got = s.next_hop.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["kari@example.no".to_string()]);
    assert!(busy.connections() >= 1, "the first address was tried first");
    s.wait_queue_empty().await;
}

/// A 4xx to one RCPT concerns that recipient only (RFC 5321 4.2.5): the others are delivered at
/// the primary, the refused one is deferred, and the backup MX is not contacted.
#[tokio::test]
async fn a_4xx_to_one_recipient_defers_it_without_trying_the_next_mx() {
    let s = setup(ONE_ATTEMPT, "").await;
    two_mx(&s).await;
    let mx1 = s
        .sink(MX1, reply_for(&[("busy@", "450 4.2.1 mailbox busy")]))
        .await;
    let mx2 = s.sink(MX2, Behaviour::default()).await;
    s.submit(
        "kari@example.no",
        &["ola@partner.test", "busy@partner.test"],
        "one busy",
    )
    .await;
    let got = mx1.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["ola@partner.test".to_string()]);
    let state = wait_for_deferral_of(&s, 1).await;
    assert_eq!(state.last_status.as_deref(), Some("4.2.1"));
    assert_eq!(mx2.connections(), 0, "the backup MX is not contacted");
}

/// A 5xx to MAIL fails the message; another MX would say the same (RFC 5321 4.2.1).
#[tokio::test]
async fn a_5xx_to_mail_fails_without_trying_the_next_mx() {
    let s = setup(ONE_ATTEMPT, "").await;
    two_mx(&s).await;
    let _mx1 = s
        .sink(
            MX1,
            Behaviour {
                mail_reply: "550 5.7.1 sender refused".into(),
                ..Behaviour::default()
            },
        )
        .await;
    let mx2 = s.sink(MX2, Behaviour::default()).await;
    s.submit("kari@example.no", &["ola@partner.test"], "refused")
        .await;
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Status"), Some("5.7.1"));
    // The remote's own reply: reported as such (RFC 3464 2.3.5, 2.3.6).
    assert_eq!(dsn.field(1, "Remote-MTA"), Some("dns; mx1.partner.test"));
    assert_eq!(
        dsn.field(1, "Diagnostic-Code"),
        Some("smtp; 550 5.7.1 sender refused")
    );
    assert_eq!(mx2.connections(), 0);
}

/// When every MX fails the transaction temporarily, the recipient is deferred with the last
/// remote reply, reported as that remote's words.
#[tokio::test]
async fn every_mx_busy_defers_with_the_last_remote_reply() {
    let s = setup(ONE_ATTEMPT, "").await;
    two_mx(&s).await;
    let busy = || Behaviour {
        mail_reply: "452 4.3.1 Insufficient system storage".into(),
        ..Behaviour::default()
    };
    let mx1 = s.sink(MX1, busy()).await;
    let mx2 = s.sink(MX2, busy()).await;
    s.submit("kari@example.no", &["ola@partner.test"], "all busy")
        .await;
    let state = wait_for_deferral(&s).await;
    assert_eq!(state.last_status.as_deref(), Some("4.3.1"));
    assert_eq!(
        state.last_reply.as_deref(),
        Some("452 4.3.1 Insufficient system storage")
    );
    assert!(mx1.connections() >= 1 && mx2.connections() >= 1);
}

/// Waits until recipient `index` of the only queued message is deferred.
async fn wait_for_deferral_of(s: &Setup, index: usize) -> tlsgate::queue::RecipientState {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let store = s.relay.running().store();
        if let Some(id) = store.message_ids().unwrap().first() {
            let state = store.recipient_states(id).unwrap().remove(index);
            if state.status == tlsgate::queue::RecipientStatus::Deferred {
                return state;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no deferral");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn without_smtputf8() -> Behaviour {
    Behaviour {
        extensions: vec![
            "PIPELINING".into(),
            "8BITMIME".into(),
            "SIZE 10485760".into(),
        ],
        ..Behaviour::default()
    }
}

/// RFC 6531 3.4: a message that asked for SMTPUTF8 but whose envelope and headers are all
/// ASCII goes to a server without SMTPUTF8, without the parameter.
#[tokio::test]
async fn an_all_ascii_smtputf8_message_goes_to_a_server_without_it() {
    let s = setup(ONE_ATTEMPT, "").await;
    let mx = s.single_mx(without_smtputf8()).await;
    s.submit_raw(
        "kari@example.no",
        " SMTPUTF8",
        "ola@partner.test",
        b"Subject: plain\r\n\r\nHei, \xc3\xb8 in the body is fine\r\n",
    )
    .await;
    let got = mx.wait_for_messages(1, WAIT).await;
    assert!(
        !got[0].mail_from.contains("SMTPUTF8"),
        "{}",
        got[0].mail_from
    );
    s.wait_queue_empty().await;
    assert!(s.next_hop.messages().is_empty(), "no DSN");
}

/// A non-ASCII header needs SMTPUTF8 even with an ASCII envelope (RFC 6532 3.2); the failure
/// is tlsgate's own decision: 5.6.7, no Remote-MTA, an `x-tlsgate` diagnostic (RFC 3464
/// 2.3.6, issue 10 item 5).
#[tokio::test]
async fn a_utf8_header_to_a_server_without_smtputf8_fails_with_our_own_diagnostic() {
    let s = setup(ONE_ATTEMPT, "").await;
    let mx = s.single_mx(without_smtputf8()).await;
    s.submit_raw(
        "kari@example.no",
        " SMTPUTF8",
        "ola@partner.test",
        "Subject: Møte i morgen\r\n\r\nhei\r\n".as_bytes(),
    )
    .await;
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Status"), Some("5.6.7"));
    assert_eq!(dsn.field(1, "Remote-MTA"), None, "mx1 refused nothing");
    let diagnostic = dsn.field(1, "Diagnostic-Code").unwrap_or("");
    assert!(
        diagnostic.to_ascii_lowercase().starts_with("x-tlsgate;")
            && diagnostic.contains("SMTPUTF8"),
        "{diagnostic}"
    );
    assert!(mx.messages().is_empty());
}

/// A message larger than the peer's SIZE is refused by tlsgate before sending: again our own
/// words in the DSN, no invented SMTP reply.
#[tokio::test]
async fn a_message_over_the_peers_size_fails_with_our_own_diagnostic() {
    let s = setup(ONE_ATTEMPT, "").await;
    let _mx = s
        .single_mx(Behaviour {
            extensions: vec!["PIPELINING".into(), "SIZE 1000".into()],
            ..Behaviour::default()
        })
        .await;
    let mut data = b"Subject: big\r\n\r\n".to_vec();
    for _ in 0..40 {
        data.extend_from_slice(&[b'x'; 70]);
        data.extend_from_slice(b"\r\n");
    }
    s.submit_raw("kari@example.no", "", "ola@partner.test", &data)
        .await;
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Status"), Some("5.3.4"));
    assert_eq!(dsn.field(1, "Remote-MTA"), None);
    assert!(
        dsn.field(1, "Diagnostic-Code")
            .is_some_and(|d| d.to_ascii_lowercase().starts_with("x-tlsgate;")),
        "{:?}",
        dsn.field(1, "Diagnostic-Code")
    );
}

/// A TLS policy that cannot be met is tlsgate's decision too: the delay DSN names the reason
/// in an `x-tlsgate` diagnostic and names no Remote-MTA (the MX answered nothing wrong).
#[tokio::test]
async fn a_tls_policy_deferral_reports_our_own_diagnostic() {
    let s = setup_with(
        "tls_failure_warning_after = \"1s\"",
        "retry_schedule = [\"1s\"]",
        "[[policy]]\ndomain = \"partner.test\"\ntls = \"verify\"",
    )
    .await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    // No STARTTLS offered: `verify` cannot be met.
    let _mx = s
        .sink(
            MX1,
            Behaviour {
                advertise_starttls: false,
                ..Behaviour::default()
            },
        )
        .await;
    s.submit("kari@example.no", &["ola@partner.test"], "tls")
        .await;
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Action"), Some("delayed"));
    assert_eq!(dsn.field(1, "Status"), Some("4.7.4"));
    assert_eq!(dsn.field(1, "Remote-MTA"), None);
    let diagnostic = dsn.field(1, "Diagnostic-Code").unwrap_or("");
    assert!(
        diagnostic.to_ascii_lowercase().starts_with("x-tlsgate;")
            && diagnostic.contains("no STARTTLS"),
        "{diagnostic}"
    );
}

/// Expiry is tlsgate's decision: the failure DSN carries no Remote-MTA and no `smtp`
/// diagnostic even though the last remote reply was a 451.
#[tokio::test]
async fn expiry_reports_our_own_diagnostic() {
    let s = setup(
        "retry_schedule = [\"1s\"]\nexpiry = \"3s\"\ndelay_warning = \"1s\"",
        "",
    )
    .await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let _mx = s.sink(MX1, always("451 4.3.0 temporary trouble")).await;
    s.submit("kari@example.no", &["ola@partner.test"], "expire")
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let failure = loop {
        let found = s
            .next_hop
            .messages()
            .iter()
            .map(parse_dsn)
            .find(|d| d.field(1, "Action") == Some("failed"));
        if let Some(dsn) = found {
            break dsn;
        }
        assert!(tokio::time::Instant::now() < deadline, "no failure DSN");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failure.field(1, "Status"), Some("5.3.0"));
    assert_eq!(failure.field(1, "Remote-MTA"), None);
    let diagnostic = failure.field(1, "Diagnostic-Code").unwrap_or("");
    assert!(
        diagnostic.to_ascii_lowercase().starts_with("x-tlsgate;") && diagnostic.contains("expired"),
        "{diagnostic}"
    );
}
