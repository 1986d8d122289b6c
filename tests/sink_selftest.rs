//! Self-test of the scripted SMTP sink (tests/common/mx_sink.rs) that delivery tests use as the
//! remote MX and the next hop. It is driven by the hand-written client of tests/common over real
//! loopback sockets and a real rustls handshake, so that a failing delivery test can be trusted
//! to point at tlsgate and not at the sink.

mod common;

use common::mx_sink::{free_port, Behaviour, DisconnectAt, Sink};
use common::{SmtpClient, TestCa, STEP};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SINK_NAME: &str = "mx.sink.test";

const TLS_1_2_AND_1_3: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS_1_2_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// Starts a sink on `ip` at a port that is free there, trying a few ports.
async fn sink_on(ip: &str, behaviour: Behaviour) -> Sink {
    let ip: IpAddr = ip.parse().unwrap();
    for _ in 0..10 {
        let addr = SocketAddr::new(ip, free_port());
        if let Ok(sink) = Sink::try_start(addr, behaviour.clone()).await {
            return sink;
        }
    }
    panic!("no free port found on {ip}");
}

/// A server configuration for the sink, built here straight from the CA's PEM (not through
/// tlsgate's own key loading, which is code under test elsewhere).
fn sink_tls(
    ca: &TestCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ServerConfig> {
    let (chain, key) = ca.issue(&[SINK_NAME]);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    Arc::new(config)
}

fn has_line(reply: &common::Reply, line: &str) -> bool {
    reply.lines.iter().any(|l| l == line)
}

async fn expect(c: &mut SmtpClient, line: &str, code: u16) -> common::Reply {
    let reply = c.cmd(line).await;
    assert_eq!(reply.code, code, "{line}: {reply:?}");
    reply
}

/// EHLO, STARTTLS, EHLO, MAIL, two RCPT (one refused), DATA with dot-stuffing, QUIT.
#[tokio::test]
async fn starttls_transaction_is_recorded() {
    let ca = TestCa::new();
    let behaviour = Behaviour {
        tls: Some(sink_tls(&ca, TLS_1_2_AND_1_3)),
        rcpt_reply: Arc::new(|rcpt: &str| {
            if rcpt.starts_with("nobody@") {
                "550 5.1.1 no such user".to_string()
            } else {
                "250 2.1.5 ok".to_string()
            }
        }),
        ..Behaviour::default()
    };
    let sink = sink_on("127.0.0.2", behaviour).await;

    let mut c = SmtpClient::connect(sink.addr()).await;
    let banner = c.read_reply().await;
    assert_eq!(
        (banner.code, banner.text().as_str()),
        (220, "sink.test ESMTP")
    );
    let ehlo = c.ehlo("client.test").await;
    assert_eq!(
        ehlo.lines,
        [
            "sink.test hello",
            "STARTTLS",
            "PIPELINING",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "SIZE 10485760",
            "DSN"
        ]
    );
    c.starttls(ca.client_config(), SINK_NAME).await;
    let ehlo = c.ehlo("client.test").await;
    assert!(
        !has_line(&ehlo, "STARTTLS"),
        "STARTTLS offered again over TLS: {ehlo:?}"
    );
    assert!(has_line(&ehlo, "PIPELINING"), "{ehlo:?}");

    expect(
        &mut c,
        "MAIL FROM:<kari@example.no> SIZE=123 BODY=8BITMIME",
        250,
    )
    .await;
    expect(&mut c, "RCPT TO:<ola@partner.test> NOTIFY=FAILURE", 250).await;
    let refused = expect(&mut c, "RCPT TO:<nobody@partner.test>", 550).await;
    assert_eq!(refused.enhanced(), "5.1.1");
    expect(&mut c, "DATA", 354).await;
    // On the wire (stuffed): "..leading dot", "..." and ".." stand for ".leading dot", ".."
    // and "." in the message.
    c.send_raw(b"Subject: dots\r\n\r\n..leading dot\r\n...\r\n..\r\nlast line\r\n")
        .await;
    let end = expect(&mut c, ".", 250).await;
    assert_eq!(end.text(), "2.0.0 queued");
    expect(&mut c, "QUIT", 221).await;
    assert!(c.is_closed().await, "the sink closes after QUIT");

    let messages = sink.wait_for_messages(1, STEP).await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.mail_from, "<kari@example.no> SIZE=123 BODY=8BITMIME");
    assert_eq!(m.rcpts, ["ola@partner.test"]);
    assert_eq!(m.rcpt_params, ["NOTIFY=FAILURE"]);
    assert_eq!(
        String::from_utf8_lossy(&m.data),
        "Subject: dots\r\n\r\n.leading dot\r\n..\r\n.\r\nlast line\r\n"
    );
    assert_eq!(m.tls.as_deref(), Some("TLSv1_3"));
    assert_eq!(m.connection, 0);
    assert_eq!(sink.connections(), 1);
    assert_eq!(
        sink.commands(),
        [
            "EHLO client.test",
            "STARTTLS",
            "EHLO client.test",
            "MAIL FROM:<kari@example.no> SIZE=123 BODY=8BITMIME",
            "RCPT TO:<ola@partner.test> NOTIFY=FAILURE",
            "RCPT TO:<nobody@partner.test>",
            "DATA",
            "QUIT"
        ],
        "message lines and the final dot are not commands"
    );
}

/// The recorded TLS version is the negotiated one.
#[tokio::test]
async fn records_tls_1_2() {
    let ca = TestCa::new();
    let behaviour = Behaviour {
        tls: Some(sink_tls(&ca, TLS_1_2_ONLY)),
        ..Behaviour::default()
    };
    let sink = sink_on("127.0.0.2", behaviour).await;
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    c.starttls(ca.client_config(), SINK_NAME).await;
    c.ehlo("client.test").await;
    let end = c
        .send_mail(
            "a@example.no",
            &["b@partner.test"],
            "Subject: x\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(end.code, 250, "{end:?}");
    let m = &sink.wait_for_messages(1, STEP).await[0];
    assert_eq!(m.tls.as_deref(), Some("TLSv1_2"));
}

/// Without TLS: MAIL, RCPT, RCPT, DATA in one write, then data, end and the next transaction
/// in one write; replies come in order and both messages are recorded on connection 0.
#[tokio::test]
async fn pipelined_commands_in_one_write_without_tls() {
    let sink = sink_on("127.0.0.3", Behaviour::default()).await;
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    let ehlo = c.ehlo("client.test").await;
    assert!(has_line(&ehlo, "PIPELINING"), "{ehlo:?}");
    assert!(
        !has_line(&ehlo, "STARTTLS"),
        "no STARTTLS without TLS: {ehlo:?}"
    );

    c.send_raw(
        b"MAIL FROM:<kari@example.no> BODY=8BITMIME\r\n\
          RCPT TO:<a@partner.test>\r\n\
          RCPT TO:<b@partner.test> ORCPT=rfc822;b@partner.test\r\n\
          DATA\r\n",
    )
    .await;
    for code in [250, 250, 250, 354] {
        let reply = c.read_reply().await;
        assert_eq!(reply.code, code, "{reply:?}");
    }
    // The data, its end, and (pipelined after the end of data) a whole second transaction.
    c.send_raw(
        "Subject: 8-bit\r\n\r\nBlåbærsyltetøy\r\n..\r\n.\r\n\
         MAIL FROM:<>\r\nRCPT TO:<c@partner.test>\r\nDATA\r\n"
            .as_bytes(),
    )
    .await;
    for code in [250, 250, 250, 354] {
        let reply = c.read_reply().await;
        assert_eq!(reply.code, code, "{reply:?}");
    }
    c.send_raw(b"bounce\r\n.\r\nQUIT\r\n").await;
    assert_eq!(c.read_reply().await.code, 250);
    assert_eq!(c.read_reply().await.code, 221);

    let messages = sink.wait_for_messages(2, STEP).await;
    let (first, second) = (&messages[0], &messages[1]);
    assert_eq!(first.mail_from, "<kari@example.no> BODY=8BITMIME");
    assert_eq!(first.rcpts, ["a@partner.test", "b@partner.test"]);
    assert_eq!(first.rcpt_params, ["", "ORCPT=rfc822;b@partner.test"]);
    assert_eq!(
        first.data,
        "Subject: 8-bit\r\n\r\nBlåbærsyltetøy\r\n.\r\n".as_bytes()
    );
    assert_eq!(first.tls, None);
    assert_eq!(second.mail_from, "<>");
    assert_eq!(second.rcpts, ["c@partner.test"]);
    assert_eq!(second.data, b"bounce\r\n");
    assert_eq!((first.connection, second.connection), (0, 0));

    // A second connection gets the next index.
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    c.send_mail(
        "x@example.no",
        &["y@partner.test"],
        "Subject: 2\r\n\r\n2\r\n",
    )
    .await;
    let messages = sink.wait_for_messages(3, STEP).await;
    assert_eq!(messages[2].connection, 1);
    assert_eq!(sink.connections(), 2);
}

/// Data larger than one read, with stuffed dots on the read boundaries somewhere inside.
#[tokio::test]
async fn large_message_is_reassembled_exactly() {
    let sink = sink_on("127.0.0.3", Behaviour::default()).await;
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    let mut expected = String::from("Subject: big\r\n\r\n");
    let mut wire = expected.clone();
    for i in 0..5000 {
        let line = format!(".line {i} {}\r\n", "x".repeat(i % 97));
        expected.push_str(&line);
        wire.push('.');
        wire.push_str(&line);
    }
    let end = c
        .send_mail("a@example.no", &["b@partner.test"], &wire)
        .await;
    assert_eq!(end.code, 250, "{end:?}");
    let m = &sink.wait_for_messages(1, STEP).await[0];
    assert!(m.data.len() > 100_000);
    assert!(
        m.data == expected.as_bytes(),
        "data differs from what was sent"
    );
}

#[tokio::test]
async fn starttls_can_be_hidden_or_refused() {
    let ca = TestCa::new();
    let hidden = Behaviour {
        tls: Some(sink_tls(&ca, TLS_1_2_AND_1_3)),
        advertise_starttls: false,
        ..Behaviour::default()
    };
    let sink = sink_on("127.0.0.2", hidden).await;
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    let ehlo = c.ehlo("client.test").await;
    assert!(!has_line(&ehlo, "STARTTLS"), "{ehlo:?}");

    sink.set_behaviour(Behaviour {
        tls: Some(sink_tls(&ca, TLS_1_2_AND_1_3)),
        starttls_reply: "454 4.7.0 TLS not available".into(),
        ..Behaviour::default()
    });
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    let ehlo = c.ehlo("client.test").await;
    assert!(has_line(&ehlo, "STARTTLS"), "{ehlo:?}");
    let refused = expect(&mut c, "STARTTLS", 454).await;
    assert_eq!(refused.text(), "4.7.0 TLS not available");
    // The session goes on in plaintext.
    let end = c
        .send_mail(
            "a@example.no",
            &["b@partner.test"],
            "Subject: plain\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(end.code, 250, "{end:?}");
    let m = &sink.wait_for_messages(1, STEP).await[0];
    assert_eq!((m.tls.as_deref(), m.connection), (None, 1));

    // A sink without any TLS configuration refuses STARTTLS too.
    sink.set_behaviour(Behaviour::default());
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    expect(&mut c, "STARTTLS", 502).await;
}

/// The injected bytes arrive right behind the 220 (in the same write), before any handshake.
#[tokio::test]
async fn injects_bytes_after_the_starttls_reply() {
    let ca = TestCa::new();
    let behaviour = Behaviour {
        tls: Some(sink_tls(&ca, TLS_1_2_AND_1_3)),
        inject_after_starttls: Some(b"250 2.0.0 injected\r\n".to_vec()),
        ..Behaviour::default()
    };
    let sink = sink_on("127.0.0.2", behaviour).await;
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    expect(&mut c, "STARTTLS", 220).await;
    let injected = c.read_reply().await;
    assert_eq!(
        (injected.code, injected.text().as_str()),
        (250, "2.0.0 injected")
    );
    drop(c);
    assert_eq!(sink.commands(), ["EHLO client.test", "STARTTLS"]);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn failing_ehlo_leaves_helo() {
    let behaviour = Behaviour {
        ehlo_reply_override: Some("502 5.5.1 no ehlo".into()),
        ..Behaviour::default()
    };
    let sink = sink_on("127.0.0.2", behaviour).await;
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    expect(&mut c, "EHLO client.test", 502).await;
    expect(&mut c, "HELO client.test", 250).await;
    let end = c
        .send_mail(
            "a@example.no",
            &["b@partner.test"],
            "Subject: helo\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(end.code, 250, "{end:?}");
    sink.wait_for_messages(1, STEP).await;
    assert_eq!(
        &sink.commands()[..2],
        ["EHLO client.test", "HELO client.test"]
    );
}

/// DATA without an accepted recipient, RSET, NOOP, RCPT before MAIL, a refused end of data.
#[tokio::test]
async fn refusals_and_resets_record_nothing() {
    let behaviour = Behaviour {
        rcpt_reply: Arc::new(|_: &str| "550 5.1.1 no such user".to_string()),
        ..Behaviour::default()
    };
    let sink = sink_on("127.0.0.2", behaviour).await;
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    expect(&mut c, "RCPT TO:<early@partner.test>", 503).await;
    expect(&mut c, "MAIL FROM:<a@example.no>", 250).await;
    expect(&mut c, "RCPT TO:<b@partner.test>", 550).await;
    let none = expect(&mut c, "DATA", 554).await;
    assert_eq!(none.text(), "5.5.1 no valid recipients");
    expect(&mut c, "NOOP", 250).await;

    expect(&mut c, "QUIT", 221).await;

    sink.set_behaviour(Behaviour::default());
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    expect(&mut c, "MAIL FROM:<a@example.no>", 250).await;
    expect(&mut c, "RCPT TO:<b@partner.test>", 250).await;
    expect(&mut c, "RSET", 250).await;
    expect(&mut c, "DATA", 554).await;
    expect(&mut c, "FROB", 500).await;
    expect(&mut c, "QUIT", 221).await;

    sink.set_behaviour(Behaviour {
        data_end_reply: "554 5.6.0 content rejected".into(),
        ..Behaviour::default()
    });
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    let end = c
        .send_mail(
            "a@example.no",
            &["b@partner.test"],
            "Subject: no\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!((end.code, end.enhanced()), (554, "5.6.0"));
    expect(&mut c, "QUIT", 221).await;
    assert!(sink.messages().is_empty(), "{:?}", sink.messages());
}

/// A test changes the replies between attempts: 450 on the first connection, 250 on the next.
#[tokio::test]
async fn set_behaviour_changes_replies_between_attempts() {
    let behaviour = Behaviour {
        rcpt_reply: Arc::new(|_: &str| "450 4.2.1 mailbox busy".to_string()),
        ..Behaviour::default()
    };
    let sink = sink_on("127.0.0.2", behaviour).await;
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    expect(&mut c, "MAIL FROM:<a@example.no>", 250).await;
    expect(&mut c, "RCPT TO:<b@partner.test>", 450).await;
    expect(&mut c, "QUIT", 221).await;

    sink.set_behaviour(Behaviour::default());
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    let end = c
        .send_mail(
            "a@example.no",
            &["b@partner.test"],
            "Subject: retry\r\n\r\nx\r\n",
        )
        .await;
    assert_eq!(end.code, 250, "{end:?}");
    let messages = sink.wait_for_messages(1, STEP).await;
    assert_eq!((messages.len(), messages[0].connection), (1, 1));
    assert_eq!(sink.connections(), 2);
}

#[tokio::test]
async fn disconnects_where_told() {
    let sink = sink_on(
        "127.0.0.2",
        Behaviour {
            disconnect: Some(DisconnectAt::AfterGreeting),
            ..Behaviour::default()
        },
    )
    .await;
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    assert!(c.is_closed().await, "closed after the greeting");

    sink.set_behaviour(Behaviour {
        disconnect: Some(DisconnectAt::AfterMail),
        ..Behaviour::default()
    });
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    expect(&mut c, "MAIL FROM:<a@example.no>", 250).await;
    assert!(c.is_closed().await, "closed after MAIL");

    sink.set_behaviour(Behaviour {
        disconnect: Some(DisconnectAt::DuringData),
        ..Behaviour::default()
    });
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    expect(&mut c, "MAIL FROM:<a@example.no>", 250).await;
    expect(&mut c, "RCPT TO:<b@partner.test>", 250).await;
    expect(&mut c, "DATA", 354).await;
    c.send_raw(b"Subject: cut\r\n").await;
    assert!(c.is_closed().await, "closed during the data");

    assert!(sink.messages().is_empty());
    assert_eq!(sink.connections(), 3);
}

#[tokio::test]
async fn delays_every_reply() {
    let delay = Duration::from_millis(150);
    let sink = sink_on(
        "127.0.0.2",
        Behaviour {
            reply_delay: delay,
            ..Behaviour::default()
        },
    )
    .await;
    let started = Instant::now();
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    expect(&mut c, "NOOP", 250).await;
    assert!(started.elapsed() >= delay * 3, "{:?}", started.elapsed());
}

/// Several sinks share one port on different loopback addresses, as MX hosts do in the
/// delivery tests.
#[tokio::test]
async fn sinks_share_a_port_on_different_loopback_addresses() {
    let greeting = |name: &str| Behaviour {
        greeting: format!("220 {name} ESMTP"),
        ..Behaviour::default()
    };
    let (a, b) = 'found: {
        for _ in 0..10 {
            let port = free_port();
            let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), port);
            let Ok(a) = Sink::try_start(at("127.0.0.2"), greeting("a.test")).await else {
                continue;
            };
            if let Ok(b) = Sink::try_start(at("127.0.0.3"), greeting("b.test")).await {
                break 'found (a, b);
            }
        }
        panic!("no port free on both 127.0.0.2 and 127.0.0.3");
    };
    assert_eq!(a.addr().port(), b.addr().port());
    for (sink, name) in [(&a, "a.test"), (&b, "b.test")] {
        let mut c = SmtpClient::connect(sink.addr()).await;
        let banner = c.read_reply().await;
        assert_eq!(banner.text(), format!("{name} ESMTP"));
    }
    assert_eq!((a.connections(), b.connections()), (1, 1));
}

#[tokio::test]
async fn dropping_the_sink_stops_listening() {
    let sink = sink_on("127.0.0.2", Behaviour::default()).await;
    let addr = sink.addr();
    SmtpClient::connect_greeted(addr).await;
    drop(sink);
    // The listener goes away once the aborted accept task is dropped by the runtime.
    let deadline = Instant::now() + STEP;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "{addr} still accepts after the drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
#[should_panic(expected = "got 0 of 1 messages")]
async fn wait_for_messages_gives_up_with_a_clear_message() {
    let sink = sink_on("127.0.0.2", Behaviour::default()).await;
    sink.wait_for_messages(1, Duration::from_millis(100)).await;
}

/// Data is framed by CRLF.CRLF only and recorded byte for byte: a bare LF or CR stays as it
/// came, and "\n.\n" is data, not the end of it (so smuggled commands show up in the data).
#[tokio::test]
async fn data_keeps_bare_line_ends_exactly() {
    let sink = Sink::start_on_free_port("127.0.0.2".parse().unwrap(), Behaviour::default()).await;
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    expect(&mut c, "MAIL FROM:<a@example.no>", 250).await;
    expect(&mut c, "RCPT TO:<b@partner.test>", 250).await;
    expect(&mut c, "DATA", 354).await;
    c.send_raw(b"Subject: lf\r\n\r\none\ntwo\rthree\r\nx\n.\nMAIL FROM:<evil@x>\r\n..\r\n")
        .await;
    expect(&mut c, ".", 250).await;
    let m = &sink.wait_for_messages(1, STEP).await[0];
    assert_eq!(
        String::from_utf8_lossy(&m.data),
        "Subject: lf\r\n\r\none\ntwo\rthree\r\nx\n.\nMAIL FROM:<evil@x>\r\n.\r\n"
    );
    assert!(!sink.commands().iter().any(|c| c.contains("evil")));
}

#[tokio::test]
async fn dropping_the_sink_ends_open_connections() {
    let sink = Sink::start_on_free_port("127.0.0.2".parse().unwrap(), Behaviour::default()).await;
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    drop(sink);
    assert!(c.is_closed().await, "an open connection outlived the sink");
}

#[tokio::test]
async fn second_starttls_is_refused_and_its_reply_is_delayed() {
    let ca = TestCa::new();
    let delay = Duration::from_millis(200);
    let port = free_port();
    let sink = Sink::start(
        SocketAddr::new("127.0.0.2".parse().unwrap(), port),
        Behaviour {
            tls: Some(sink_tls(&ca, TLS_1_2_AND_1_3)),
            ..Behaviour::default()
        },
    )
    .await;
    assert_eq!(sink.addr().port(), port);
    let mut c = SmtpClient::connect_greeted(sink.addr()).await;
    c.ehlo("client.test").await;
    sink.set_behaviour(Behaviour {
        tls: Some(sink_tls(&ca, TLS_1_2_AND_1_3)),
        reply_delay: delay,
        ..Behaviour::default()
    });
    let started = Instant::now();
    c.starttls(ca.client_config(), SINK_NAME).await;
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    c.ehlo("client.test").await;
    expect(&mut c, "STARTTLS", 503).await;
    expect(&mut c, "NOOP", 250).await;
}
