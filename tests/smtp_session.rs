//! SMTP server behaviour over real sockets on 127.0.0.1 (issue: core relay; RFC 5321,
//! requirements S5, S6 and non-negotiable 4).

mod common;

use common::*;
use tlsgate::config::Role;

#[tokio::test]
async fn banner_ehlo_and_simple_commands_carry_enhanced_codes() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect(server.inbound()).await;
    let banner = c.read_reply().await;
    assert_eq!(banner.code, 220);
    // RFC 5321 4.2: "220 <domain> [text]", the host name first; RFC 2034 3: no enhanced code
    // in the greeting.
    assert_eq!(
        banner.text(),
        format!("{HOSTNAME} ESMTP tlsgate"),
        "{banner:?}"
    );

    let ehlo = c.ehlo("client.example.org").await;
    let caps: Vec<String> = ehlo
        .lines
        .iter()
        .skip(1)
        .map(|l| l.to_uppercase())
        .collect();
    for want in [
        "PIPELINING",
        "SIZE 100000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "DSN",
        "STARTTLS",
    ] {
        assert!(
            caps.iter().any(|c| c.ends_with(want)),
            "missing {want} in {caps:?}"
        );
    }
    // RFC 8689: REQUIRETLS only once TLS is up.
    assert!(!caps.iter().any(|c| c.contains("REQUIRETLS")));

    for (cmd, code, enhanced) in [
        ("NOOP", 250, "2.0.0"),
        ("VRFY someone", 252, "2.5.0"),
        ("HELP", 214, "2.0.0"),
        ("RSET", 250, "2.0.0"),
        ("EXPN list", 502, "5.5.1"),
        ("FOO bar", 500, "5.5.2"),
        ("DATA", 503, "5.5.1"),
        ("RCPT TO:<a@example.no>", 503, "5.5.1"),
    ] {
        let r = c.cmd(cmd).await;
        assert_eq!((r.code, r.enhanced()), (code, enhanced), "{cmd}: {r:?}");
    }
    let r = c.cmd("QUIT").await;
    assert_eq!((r.code, r.enhanced()), (221, "2.0.0"));
    assert!(c.is_closed().await);
}

#[tokio::test]
async fn mail_before_helo_is_refused() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    let r = c.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!((r.code, r.enhanced()), (503, "5.5.1"));
}

#[tokio::test]
async fn accepted_message_is_queued_with_envelope_dsn_params_and_received_header() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("client.example.org").await;
    let r = c
        .cmd("MAIL FROM:<sender@example.org> SIZE=500 RET=HDRS ENVID=abc+2Bdef BODY=8BITMIME")
        .await;
    assert_eq!((r.code, r.enhanced()), (250, "2.1.0"), "{r:?}");
    let r = c
        .cmd("RCPT TO:<User@EXAMPLE.no> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;user+40example.no")
        .await;
    assert_eq!((r.code, r.enhanced()), (250, "2.1.5"), "{r:?}");
    let r = c.cmd("RCPT TO:<second@example.no>").await;
    assert_eq!(r.code, 250);
    let r = c.cmd("DATA").await;
    assert_eq!(r.code, 354);
    // Dot-stuffed line ("..leading dot") must be stored unstuffed (RFC 5321 4.5.2).
    c.send_raw(b"Subject: t\r\n\r\n..leading dot\r\nline\r\n.\r\n")
        .await;
    let r = c.read_reply().await;
    assert_eq!(r.enhanced(), "2.0.0");
    let id = queue_id(&r);

    let body = server.queued_body(&id).expect("queued body");
    assert_eq!(body, b"Subject: t\r\n\r\n.leading dot\r\nline\r\n");
    let meta = server.queued_meta(&id).unwrap();
    assert_eq!(meta.sender.as_deref(), Some("sender@example.org"));
    assert_eq!(meta.recipients.len(), 2);
    assert_eq!(meta.recipients[0].address, "User@example.no");
    assert!(meta.recipients[0].notify.success && meta.recipients[0].notify.failure);
    assert!(!meta.recipients[0].notify.delay);
    assert_eq!(
        meta.recipients[0].orcpt,
        Some(("rfc822".to_string(), "user@example.no".to_string()))
    );
    // Without NOTIFY the RFC 3461 default: failure and delay.
    assert!(meta.recipients[1].notify.failure && meta.recipients[1].notify.delay);
    assert_eq!(meta.envid.as_deref(), Some("abc+def"));
    assert_eq!(meta.ret, Some(tlsgate::queue::message::DsnRet::Headers));
    assert_eq!(
        meta.body_type,
        tlsgate::queue::message::BodyType::EightBitMime
    );
    assert!(meta.reception.tls.is_none());
    assert_eq!(meta.reception.helo, "client.example.org");
    assert!(meta
        .received_header
        .starts_with("Received: from client.example.org ([127.0.0.1])"));
    assert!(meta
        .received_header
        .contains(&format!("by {HOSTNAME} (tlsgate) with ESMTP id {id}")));
    assert!(
        !meta.received_header.contains("for <"),
        "two recipients must not be named"
    );
}

#[tokio::test]
async fn null_sender_is_accepted_and_stored_as_none() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    let r = c.send_mail("", &["a@example.no"], &message("bounce")).await;
    let meta = server.queued_meta(&queue_id(&r)).unwrap();
    assert_eq!(meta.sender, None);
}

#[tokio::test]
async fn pipelined_commands_get_replies_in_order() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    c.send_raw(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.no>\r\nRCPT TO:<x@elsewhere.org>\r\nDATA\r\n")
        .await;
    let codes = [250, 250, 554, 354];
    for want in codes {
        assert_eq!(c.read_reply().await.code, want);
    }
    c.send_raw(format!("{}.\r\nNOOP\r\n", message("p")).as_bytes())
        .await;
    let queued = c.read_reply().await;
    let id = queue_id(&queued);
    assert_eq!(
        c.read_reply().await.code,
        250,
        "NOOP after pipelined end of data"
    );
    let meta = server.queued_meta(&id).unwrap();
    assert_eq!(
        meta.recipients.len(),
        1,
        "refused recipient must not be queued"
    );
}

#[tokio::test]
async fn inbound_listener_is_not_an_open_relay() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    for foreign in [
        "x@gmail.com",
        "x@sub.example.no",
        "x@example.no.evil.org",
        "x@[127.0.0.1]",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{foreign}>")).await;
        assert!(r.code >= 500, "{foreign} accepted: {r:?}");
        if foreign.contains('[') {
            continue;
        }
        assert_eq!((r.code, r.enhanced()), (554, "5.7.1"), "{foreign}");
    }
    // Percent hack and source routes do not get around it either.
    let r = c.cmd("RCPT TO:<x%gmail.com@elsewhere.org>").await;
    assert_eq!(r.code, 554);
    let r = c.cmd("DATA").await;
    assert_eq!(
        (r.code, r.enhanced()),
        (554, "5.5.1"),
        "no valid recipients"
    );
    assert_eq!(server.queue_len(), 0);
}

#[tokio::test]
async fn outbound_listener_relays_for_relay_networks() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.outbound()).await;
    c.ehlo("internal").await;
    let r = c
        .send_mail(
            "user@example.no",
            &["x@gmail.com", "y@partner.no"],
            &message("out"),
        )
        .await;
    let meta = server.queued_meta(&queue_id(&r)).unwrap();
    assert_eq!(meta.reception.role, Role::Outbound);
    assert_eq!(meta.recipients.len(), 2);
}

#[tokio::test]
async fn outbound_listener_refuses_clients_outside_relay_networks() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &[HOSTNAME]);
    let text = base_config(dir.path(), &cert, &key, "").replace(
        r#"relay_networks = ["127.0.0.0/8"]"#,
        r#"relay_networks = ["10.0.0.0/8"]"#,
    );
    let server = TestServer::start_with_config(dir, ca, &text).await;
    let mut c = SmtpClient::connect_greeted(server.outbound()).await;
    c.ehlo("outsider").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    for rcpt in ["x@gmail.com", "local@example.no"] {
        let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
        assert_eq!((r.code, r.enhanced()), (554, "5.7.1"), "{rcpt}");
    }
    assert_eq!(server.queue_len(), 0);
}

#[tokio::test]
async fn size_limit_is_announced_and_enforced() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    let r = c.cmd("MAIL FROM:<a@example.org> SIZE=100001").await;
    assert_eq!((r.code, r.enhanced()), (552, "5.3.4"));
    // A client that lies about (or omits) SIZE is stopped at the end of data.
    assert_eq!(c.cmd("MAIL FROM:<a@example.org> SIZE=10").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<a@example.no>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    let line = "x".repeat(998) + "\r\n";
    for _ in 0..120 {
        c.send_raw(line.as_bytes()).await;
    }
    let r = c.cmd(".").await;
    assert_eq!((r.code, r.enhanced()), (552, "5.3.4"));
    // The session goes on.
    assert_eq!(c.cmd("NOOP").await.code, 250);
    assert_eq!(server.queue_len(), 0);
}

#[tokio::test]
async fn strict_esmtp_parameters() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    for bad in [
        "MAIL FROM:<a@example.org> FOO=bar",
        "MAIL FROM:<a@example.org> SIZE=1 SIZE=2",
        "MAIL FROM:<a@example.org> RET=MAYBE",
    ] {
        let r = c.cmd(bad).await;
        assert_eq!((r.code, r.enhanced()), (555, "5.5.4"), "{bad}: {r:?}");
    }
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    let r = c.cmd("RCPT TO:<a@example.no> NOTIFY=NEVER,SUCCESS").await;
    assert_eq!((r.code, r.enhanced()), (555, "5.5.4"));
    let r = c.cmd("RCPT TO:<a@example.no> BODY=8BITMIME").await;
    assert_eq!((r.code, r.enhanced()), (555, "5.5.4"));
    // HELO clients get no ESMTP parameters.
    let mut h = SmtpClient::connect_greeted(server.inbound()).await;
    assert_eq!(h.cmd("HELO old").await.code, 250);
    let r = h.cmd("MAIL FROM:<a@example.org> SIZE=10").await;
    assert_eq!(r.code, 555);
}

#[tokio::test]
async fn overlong_line_is_refused_and_its_tail_not_executed() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    // 5000 bytes ending in what would be a command if the line were cut at the limit.
    let long = format!("NOOP {}QUIT\r\n", "a".repeat(5000));
    c.send_raw(long.as_bytes()).await;
    let r = c.read_reply().await;
    assert_eq!((r.code, r.enhanced()), (500, "5.5.6"));
    assert_eq!(c.cmd("NOOP").await.code, 250, "session still usable");
}

#[tokio::test]
async fn too_many_recipients() {
    let server = TestServer::start_with("[limits]\nmax_recipients = 3").await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    for n in 0..3 {
        assert_eq!(c.cmd(&format!("RCPT TO:<r{n}@example.no>")).await.code, 250);
    }
    let r = c.cmd("RCPT TO:<r4@example.no>").await;
    assert_eq!((r.code, r.enhanced()), (452, "4.5.3"));
}

#[tokio::test]
async fn too_many_errors_closes_with_421() {
    let server = TestServer::start_with("[limits]\nmax_errors = 3").await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    assert_eq!(c.cmd("BOGUS").await.code, 500);
    assert_eq!(c.cmd("BOGUS").await.code, 500);
    c.send_raw(b"BOGUS\r\n").await;
    assert_eq!(c.read_reply().await.code, 500);
    let r = c.read_reply().await;
    assert_eq!((r.code, r.enhanced()), (421, "4.7.0"));
    assert!(c.is_closed().await);
}

#[tokio::test]
async fn idle_client_times_out_with_421() {
    let server = TestServer::start_with("[limits]\ncommand_timeout = \"1s\"").await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    let r = c.read_reply().await;
    assert_eq!((r.code, r.enhanced()), (421, "4.4.2"));
    assert!(c.is_closed().await);
}

#[tokio::test]
async fn slow_data_is_cut_off() {
    let server = TestServer::start_with("[limits]\ndata_timeout = \"1s\"").await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<a@example.no>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send_raw(b"Subject: slow\r\n").await;
    let r = c.read_reply().await;
    assert_eq!((r.code, r.enhanced()), (421, "4.4.2"));
    assert!(c.is_closed().await);
    assert_eq!(server.queue_len(), 0);
}

#[tokio::test]
async fn connections_per_ip_are_limited_with_421() {
    let server = TestServer::start_with("[limits]\nmax_connections_per_ip = 2").await;
    let _a = SmtpClient::connect_greeted(server.inbound()).await;
    let _b = SmtpClient::connect_greeted(server.outbound()).await;
    let mut third = SmtpClient::connect(server.inbound()).await;
    let r = third.read_reply().await;
    assert_eq!((r.code, r.enhanced()), (421, "4.7.0"));
    assert!(third.is_closed().await);
    drop(_a);
    // The slot is freed when the first session ends.
    let mut again = None;
    for _ in 0..50 {
        let mut c = SmtpClient::connect(server.inbound()).await;
        if c.read_reply().await.code == 220 {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "slot never freed");
}

#[tokio::test]
async fn total_connections_are_limited_with_421() {
    let server = TestServer::start_with("[limits]\nmax_connections = 1").await;
    let _a = SmtpClient::connect_greeted(server.inbound()).await;
    let mut second = SmtpClient::connect(server.outbound()).await;
    let r = second.read_reply().await;
    assert_eq!((r.code, r.enhanced()), (421, "4.7.0"));
}

#[tokio::test]
async fn low_disk_space_gives_452_not_250() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &[HOSTNAME]);
    // More free space demanded than any disk has: the real statvfs path refuses.
    let text = base_config(dir.path(), &cert, &key, "")
        .replace("min_free_space = 0", "min_free_space = 9223372036854775807");
    let server = TestServer::start_with_config(dir, ca, &text).await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    let r = c.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!((r.code, r.enhanced()), (452, "4.3.1"));
    assert_eq!(server.queue_len(), 0);
}

#[tokio::test]
async fn require_tls_listener_refuses_plaintext_mail() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &[HOSTNAME]);
    let text = base_config(dir.path(), &cert, &key, "").replace(
        "role = \"outbound\"",
        "role = \"outbound\"\nrequire_tls = true",
    );
    let server = TestServer::start_with_config(dir, ca, &text).await;
    let mut c = SmtpClient::connect_greeted(server.outbound()).await;
    c.ehlo("c").await;
    let r = c.cmd("MAIL FROM:<a@example.no>").await;
    assert_eq!((r.code, r.enhanced()), (530, "5.7.0"));
    c.starttls(server.ca.client_config(), HOSTNAME).await;
    c.ehlo("c").await;
    let r = c
        .send_mail("a@example.no", &["b@gmail.com"], &message("tls"))
        .await;
    assert_eq!(r.code, 250);
}

#[tokio::test]
async fn shutdown_tells_idle_sessions_421() {
    let mut server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    server.stop().await;
    let r = c.read_reply().await;
    assert_eq!((r.code, r.enhanced()), (421, "4.3.2"));
    assert!(c.is_closed().await);
}

/// A message with `n` `Received:` fields (every one folded, as real ones are) and one in the
/// body, which never counts.
fn with_received(n: usize) -> String {
    let mut m = "Received: from relay.example.org ([192.0.2.1])\r\n\tby mx.example.org; \
                 Thu, 1 Jan 2026 00:00:00 +0000\r\n"
        .repeat(n);
    m.push_str("Subject: hops\r\n\r\nReceived: not a header field\r\n");
    m
}

/// RFC 5321 6.3 (mail loops), Postfix's `hopcount_limit`: a message that arrives with
/// `limits.hop_count_limit` (default 50) `Received:` fields is refused after the final dot with
/// `554 5.4.6` (RFC 3463 X.4.6, routing loop) and not queued; one with 49 is accepted. The
/// session goes on after the refusal.
#[tokio::test]
async fn message_with_hop_count_limit_received_fields_is_refused_as_a_loop() {
    let server = TestServer::start().await;
    assert_eq!(server.config.limits.hop_count_limit, 50, "default");
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    let r = c
        .send_mail("a@example.org", &["b@example.no"], &with_received(50))
        .await;
    assert_eq!(
        (r.code, r.enhanced(), r.text().as_str()),
        (
            554,
            "5.4.6",
            "5.4.6 Too many hops: 50 Received: header fields (mail loop?)"
        ),
        "{r:?}"
    );
    assert_eq!(server.queue_len(), 0, "a looping message is never queued");

    let r = c
        .send_mail("a@example.org", &["b@example.no"], &with_received(49))
        .await;
    assert_eq!((r.code, r.enhanced()), (250, "2.0.0"), "{r:?}");
    assert_eq!(server.queue_len(), 1);
}

/// The limit is `limits.hop_count_limit`; a low one refuses early (0 is refused at start, see
/// src/config/tests.rs).
#[tokio::test]
async fn hop_count_limit_is_configurable() {
    let server = TestServer::start_with("[limits]\nhop_count_limit = 3").await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    let r = c
        .send_mail("a@example.org", &["b@example.no"], &with_received(2))
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let r = c
        .send_mail("a@example.org", &["b@example.no"], &with_received(3))
        .await;
    assert_eq!((r.code, r.enhanced()), (554, "5.4.6"), "{r:?}");
    assert_eq!(server.queue_len(), 1);
}
