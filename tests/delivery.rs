//! Delivery engine end to end on loopback: tlsgate relays to scripted SMTP sinks found through
//! a test DNS server (issue 3; T6, T12). DSNs for the sender (a local domain) arrive at the
//! next-hop sink and are parsed with mail-parser.

mod common;

use common::mx_sink::{Behaviour, DisconnectAt};
use common::relay::*;
use common::SmtpClient;
use std::time::Duration;

#[tokio::test]
async fn delivers_over_tls_and_records_it() {
    let s = setup("", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s
        .tls_sink(MX1, &["mx1.partner.test"], Behaviour::default())
        .await;

    let id = s
        .submit("kari@example.no", &["ola@partner.test"], "hello")
        .await;
    let got = mx.wait_for_messages(1, WAIT).await;
    let m = &got[0];
    assert_eq!(m.rcpts, vec!["ola@partner.test".to_string()]);
    assert!(
        m.mail_from.starts_with("<kari@example.no>"),
        "{}",
        m.mail_from
    );
    assert!(
        m.mail_from.contains("SIZE="),
        "SIZE announced: {}",
        m.mail_from
    );
    assert!(m.tls.is_some(), "STARTTLS used when offered");
    let data = String::from_utf8_lossy(&m.data);
    assert!(data.starts_with("Received: from "), "{data}");
    assert!(data.contains(&id), "queue id in Received: {data}");
    assert!(data.contains("Subject: hello"));
    s.wait_queue_empty().await;
    // No DSN: the default NOTIFY does not ask for success reports.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.next_hop.messages().is_empty());
}

#[tokio::test]
async fn local_domains_go_to_the_next_hop() {
    let s = setup("", "").await;
    let mut client = SmtpClient::connect_greeted(s.relay.inbound()).await;
    client.ehlo("mail.sender.test").await;
    let reply = client
        .send_mail(
            "someone@sender.test",
            &["kari@example.no"],
            &common::message("inbound"),
        )
        .await;
    assert_eq!(reply.code, 250);
    let got = s.next_hop.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].rcpts, vec!["kari@example.no".to_string()]);
    s.wait_queue_empty().await;
}

#[tokio::test]
async fn retries_after_a_temporary_failure_then_delivers() {
    let s = setup("retry_schedule = [\"1s\"]", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s
        .sink(MX1, always("450 4.2.1 mailbox busy, try later"))
        .await;
    s.submit("kari@example.no", &["ola@partner.test"], "retry")
        .await;
    wait_until(
        || mx.commands().iter().any(|c| c.starts_with("RCPT")),
        "first attempt",
    )
    .await;
    assert!(mx.messages().is_empty());
    mx.set_behaviour(Behaviour::default());
    let got = mx.wait_for_messages(1, WAIT).await;
    assert_eq!(got.len(), 1);
    s.wait_queue_empty().await;
    assert!(
        s.next_hop.messages().is_empty(),
        "no DSN for a retried success"
    );
}

#[tokio::test]
async fn permanent_failure_bounces_at_once_with_a_full_dsn() {
    let s = setup("", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s
        .sink(
            MX1,
            reply_for(&[("nobody@", "550 5.1.1 <nobody@partner.test>: no such user")]),
        )
        .await;
    s.submit(
        "kari@example.no",
        &["ola@partner.test", "nobody@partner.test"],
        "mixed",
    )
    .await;
    let delivered = mx.wait_for_messages(1, WAIT).await;
    assert_eq!(delivered[0].rcpts, vec!["ola@partner.test".to_string()]);

    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    assert_eq!(dsns[0].rcpts, vec!["kari@example.no".to_string()]);
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.subject, "Undelivered Mail Returned to Sender");
    assert_eq!(dsn.field(0, "Reporting-MTA"), Some("dns; mx.tlsgate.test"));
    assert_eq!(
        dsn.field(1, "Final-Recipient"),
        Some("rfc822; nobody@partner.test")
    );
    assert_eq!(dsn.field(1, "Action"), Some("failed"));
    assert_eq!(dsn.field(1, "Status"), Some("5.1.1"));
    assert_eq!(dsn.field(1, "Remote-MTA"), Some("dns; mx1.partner.test"));
    assert!(dsn
        .field(1, "Diagnostic-Code")
        .is_some_and(|d| d.contains("550 5.1.1")));
    assert!(dsn.field(1, "Last-Attempt-Date").is_some());
    assert!(
        dsn.fields.len() == 2,
        "only the failed recipient is reported"
    );
    assert!(
        dsn.human.contains("host mx1.partner.test said"),
        "{}",
        dsn.human
    );
    s.wait_queue_empty().await;
}

#[tokio::test]
async fn expiry_bounces_and_delay_warning_comes_once_before() {
    let s = setup(
        "retry_schedule = [\"1s\"]\nexpiry = \"4s\"\ndelay_warning = \"1s\"",
        "",
    )
    .await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let _mx = s.sink(MX1, always("451 4.3.0 temporary trouble")).await;
    s.submit("kari@example.no", &["ola@partner.test"], "expire")
        .await;
    let dsns = s.next_hop.wait_for_messages(2, WAIT).await;
    let delay = parse_dsn(&dsns[0]);
    assert_eq!(delay.subject, "Delayed Mail (still being retried)");
    assert_eq!(delay.field(1, "Action"), Some("delayed"));
    assert_eq!(delay.field(1, "Status"), Some("4.3.0"));
    assert!(delay.field(1, "Will-Retry-Until").is_some());
    let failure = parse_dsn(&dsns[1]);
    assert_eq!(failure.subject, "Undelivered Mail Returned to Sender");
    assert_eq!(failure.field(1, "Action"), Some("failed"));
    assert_eq!(failure.field(1, "Status"), Some("5.3.0"));
    assert!(failure.human.contains("expired"), "{}", failure.human);
    s.wait_queue_empty().await;
    assert_eq!(s.next_hop.messages().len(), 2, "exactly one delay DSN");
}

#[tokio::test]
async fn falls_back_to_the_next_mx_host() {
    let s = setup("", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_mx("partner.test", 20, "mx2.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    s.dns.add_ip("mx2.partner.test", ip(MX2));
    let broken = s
        .sink(
            MX1,
            Behaviour {
                disconnect: Some(DisconnectAt::AfterGreeting),
                ..Behaviour::default()
            },
        )
        .await;
    let backup = s.sink(MX2, Behaviour::default()).await;
    s.submit("kari@example.no", &["ola@partner.test"], "fallback")
        .await;
    backup.wait_for_messages(1, WAIT).await;
    assert!(broken.connections() >= 1, "the first MX was tried first");
    assert!(broken.messages().is_empty());
    s.wait_queue_empty().await;
}

#[tokio::test]
async fn null_mx_fails_permanently() {
    let s = setup("", "").await;
    s.dns.add_null_mx("nomail.test");
    s.submit("kari@example.no", &["ola@nomail.test"], "null mx")
        .await;
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Status"), Some("5.1.10"));
    assert!(dsn.human.contains("null MX"), "{}", dsn.human);
    assert_eq!(dsn.field(1, "Remote-MTA"), None);
    s.wait_queue_empty().await;
}

#[tokio::test]
async fn restart_in_the_middle_of_the_retry_schedule_delivers_once() {
    let mut s = setup("retry_schedule = [\"2s\"]", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s.sink(MX1, always("450 4.2.1 busy")).await;
    s.submit("kari@example.no", &["ola@partner.test"], "restart")
        .await;
    wait_until(
        || mx.commands().iter().any(|c| c.starts_with("RCPT")),
        "first attempt",
    )
    .await;
    s.restart().await;
    assert_eq!(
        s.relay.queue_len(),
        1,
        "the deferred message survived the restart"
    );
    let state = {
        let store = s.relay.running().store();
        let id = store.message_ids().unwrap().remove(0);
        store.recipient_states(&id).unwrap().remove(0)
    };
    assert_eq!(state.attempts, 1);
    assert_eq!(
        state.status,
        tlsgate::queue::RecipientStatus::Deferred,
        "{state:?}"
    );
    mx.set_behaviour(Behaviour::default());
    mx.wait_for_messages(1, WAIT).await;
    s.wait_queue_empty().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mx.messages().len(), 1, "delivered exactly once");
}

/// One connection carries several messages (RFC 5321 3.3: several transactions per session),
/// and (issue 16 item 7) a pooled connection whose server has said nothing since the last
/// transaction ended is reused without an RSET round trip (RFC 5321 4.1.1.4: the reply to the
/// final dot ends the transaction; the server waits for MAIL).
#[tokio::test]
async fn reuses_a_silent_connection_for_several_messages_without_rset() {
    let s = setup("", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s.sink(MX1, Behaviour::default()).await;
    for n in 1..=3 {
        s.submit("kari@example.no", &["ola@partner.test"], &format!("m{n}"))
            .await;
        mx.wait_for_messages(n, WAIT).await;
    }
    assert_eq!(mx.connections(), 1, "one connection carried all three");
    let got = mx.messages();
    assert!(got.iter().all(|m| m.connection == got[0].connection));
    let commands = mx.commands();
    assert_eq!(
        commands.iter().filter(|c| c.starts_with("MAIL")).count(),
        3,
        "{commands:?}"
    );
    assert!(!commands.iter().any(|c| c == "RSET"), "{commands:?}");
}

/// A pooled connection the server closed with `421` (RFC 5321 3.8, an idle timeout) is not
/// reused: the next message goes over a new connection at once, not deferred.
#[tokio::test]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    let s = setup("", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s
        .sink(
            MX1,
            Behaviour {
                disconnect: Some(DisconnectAt::AfterMessage),
                ..Behaviour::default()
            },
        )
        .await;
    s.submit("kari@example.no", &["ola@partner.test"], "m1")
        .await;
    mx.wait_for_messages(1, WAIT).await;
    s.wait_queue_empty().await;
    // The 421 and the close reach tlsgate's idle socket before the next message is queued.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.submit("kari@example.no", &["ola@partner.test"], "m2")
        .await;
    let got = mx.wait_for_messages(2, WAIT).await;
    s.wait_queue_empty().await;
    assert_eq!(
        mx.connections(),
        2,
        "a new connection for the second message"
    );
    assert_ne!(got[0].connection, got[1].connection);
    let mails = mx
        .commands()
        .iter()
        .filter(|c| c.starts_with("MAIL"))
        .count();
    assert_eq!(mails, 2, "one MAIL per message");
}

#[tokio::test]
async fn response_injection_after_starttls_drops_the_connection() {
    // `encrypt` so that the failure cannot be retried in plaintext either.
    let s = setup(
        "retry_schedule = [\"1h\"]",
        "[[policy]]\ndomain = \"partner.test\"\ntls = \"encrypt\"",
    )
    .await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s
        .tls_sink(
            MX1,
            &["mx1.partner.test"],
            Behaviour {
                inject_after_starttls: Some(b"250 2.0.0 injected\r\n".to_vec()),
                ..Behaviour::default()
            },
        )
        .await;
    s.submit("kari@example.no", &["ola@partner.test"], "inject")
        .await;
    wait_until(|| mx.commands().iter().any(|c| c == "STARTTLS"), "STARTTLS").await;
    let id = wait_for_deferral(&s).await;
    assert!(
        id.last_reply
            .as_deref()
            .is_some_and(|r| r.contains("response injection")),
        "{id:?}"
    );
    assert!(id.tls_deferral);
    assert!(
        !mx.commands().iter().any(|c| c.starts_with("MAIL")),
        "nothing sent after the injected reply: {:?}",
        mx.commands()
    );
    assert!(mx.messages().is_empty());
}

#[tokio::test]
async fn smtputf8_message_to_a_server_without_it_fails_clearly() {
    let s = setup("", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let _mx = s
        .sink(
            MX1,
            Behaviour {
                extensions: vec!["PIPELINING".into(), "8BITMIME".into()],
                ..Behaviour::default()
            },
        )
        .await;
    let mut client = SmtpClient::connect_greeted(s.relay.outbound()).await;
    client.ehlo("exchange.example.no").await;
    assert_eq!(
        client
            .cmd("MAIL FROM:<kari@example.no> SMTPUTF8")
            .await
            .code,
        250
    );
    assert_eq!(client.cmd("RCPT TO:<øyvind@partner.test>").await.code, 250);
    assert_eq!(client.cmd("DATA").await.code, 354);
    client.send_raw(b"Subject: utf8\r\n\r\nhei\r\n.\r\n").await;
    assert_eq!(client.read_reply().await.code, 250);
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Status"), Some("5.6.7"));
    assert!(dsn.human.contains("SMTPUTF8"), "{}", dsn.human);
}

#[tokio::test]
async fn without_pipelining_or_ehlo_the_client_still_delivers() {
    let s = setup("", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s
        .sink(
            MX1,
            Behaviour {
                ehlo_reply_override: Some("502 5.5.1 EHLO not implemented".into()),
                ..Behaviour::default()
            },
        )
        .await;
    s.submit(
        "kari@example.no",
        &["a@partner.test", "b@partner.test"],
        "helo",
    )
    .await;
    let got = mx.wait_for_messages(1, WAIT).await;
    assert_eq!(got[0].rcpts.len(), 2, "both recipients in one transaction");
    assert!(mx.commands().iter().any(|c| c.starts_with("HELO")));
    assert!(
        !got[0].mail_from.contains("SIZE="),
        "no ESMTP parameters after HELO"
    );
}

#[tokio::test]
async fn notify_success_to_a_peer_without_dsn_gets_a_relayed_report() {
    let s = setup("", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s
        .sink(
            MX1,
            Behaviour {
                extensions: vec!["PIPELINING".into(), "8BITMIME".into()],
                ..Behaviour::default()
            },
        )
        .await;
    let mut client = SmtpClient::connect_greeted(s.relay.outbound()).await;
    client.ehlo("exchange.example.no").await;
    assert_eq!(
        client
            .cmd("MAIL FROM:<kari@example.no> RET=HDRS ENVID=receipt-42")
            .await
            .code,
        250
    );
    assert_eq!(
        client
            .cmd("RCPT TO:<ola@partner.test> NOTIFY=SUCCESS ORCPT=rfc822;ola@partner.test")
            .await
            .code,
        250
    );
    assert_eq!(client.cmd("DATA").await.code, 354);
    client
        .send_raw(b"Subject: receipt\r\n\r\nhi\r\n.\r\n")
        .await;
    assert_eq!(client.read_reply().await.code, 250);
    mx.wait_for_messages(1, WAIT).await;
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.subject, "Successful Mail Delivery Report");
    assert_eq!(dsn.field(0, "Original-Envelope-Id"), Some("receipt-42"));
    assert_eq!(
        dsn.field(1, "Original-Recipient"),
        Some("rfc822; ola@partner.test")
    );
    assert_eq!(dsn.field(1, "Action"), Some("relayed"));
}

#[tokio::test]
async fn a_server_too_slow_to_answer_times_out_and_the_next_mx_is_used() {
    let s = setup("", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_mx("partner.test", 20, "mx2.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    s.dns.add_ip("mx2.partner.test", ip(MX2));
    // Slower than delivery.command_timeout (3s in the harness) on every reply.
    let slow = s
        .sink(
            MX1,
            Behaviour {
                reply_delay: Duration::from_secs(5),
                ..Behaviour::default()
            },
        )
        .await;
    let backup = s.sink(MX2, Behaviour::default()).await;
    s.submit("kari@example.no", &["ola@partner.test"], "slow")
        .await;
    backup.wait_for_messages(1, WAIT).await;
    assert!(slow.connections() >= 1, "the slow MX was tried first");
    assert!(slow.messages().is_empty());
    s.wait_queue_empty().await;
}
