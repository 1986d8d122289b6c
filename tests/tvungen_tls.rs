//! Tvungen TLS end to end (issue 4): for a listed domain, every way TLS can be missing or
//! unvalidated ends in no delivery, a `4.7.x` deferral naming the reason and an early delay
//! DSN (T3, T4, T6, T8, T9, T11); the positive cases deliver; plaintext from listed senders is
//! refused inbound (T5); REQUIRETLS (RFC 8689).

mod common;

use common::mx_sink::{Behaviour, Sink};
use common::relay::*;
use common::{SmtpClient, TestCa};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A relay whose domain list names `partner.test`, retrying every second and warning the
/// sender about TLS trouble after one second.
async fn listed(extra: &str) -> (Setup, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("tvungen-tls.csv");
    std::fs::write(
        &list,
        "Selskapsnavn;Organisasjonsnummer;Domene med tvungen TLS;Dato innmeldt;Støtte for krav 5.2.4\n\
         Partner AS;999888777;partner.test;2026-01-05;Ja\n",
    )
    .unwrap();
    let s = setup_with(
        "tls_failure_warning_after = \"1s\"",
        "retry_schedule = [\"1s\"]",
        &format!(
            "[domain_list]\npath = \"{}\"\ncheck_interval = \"1s\"\n{extra}",
            list.display()
        ),
    )
    .await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    (s, dir, list)
}

/// Submits to the listed domain (with `TLS-Required: No`, which must change nothing, T4),
/// waits for the early delay DSN and checks that nothing reached the MX. Returns the DSN.
async fn expect_tls_deferral(s: &Setup, mx: &Sink, status: &str, reason: &str) -> Dsn {
    let mut client = SmtpClient::connect_greeted(s.relay.outbound()).await;
    client.ehlo("exchange.example.no").await;
    let body = "From: <kari@example.no>\r\nTo: <ola@partner.test>\r\nTLS-Required: No\r\nSubject: secret\r\n\r\nKonfidensielt.\r\n";
    let reply = client
        .send_mail("kari@example.no", &["ola@partner.test"], body)
        .await;
    assert_eq!(reply.code, 250);
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.subject, "Delayed Mail (still being retried)");
    assert_eq!(dsn.field(1, "Action"), Some("delayed"));
    assert_eq!(dsn.field(1, "Status"), Some(status), "{}", dsn.human);
    assert!(
        dsn.human.contains(reason),
        "DSN must name the reason {reason:?}: {}",
        dsn.human
    );
    assert!(dsn.human.contains("TLS required (verify)"), "{}", dsn.human);
    assert!(
        dsn.human.contains("postmaster@example.no"),
        "T11 admin contact: {}",
        dsn.human
    );
    assert!(mx.messages().is_empty(), "nothing delivered");
    assert!(
        !mx.commands().iter().any(|c| c.starts_with("MAIL")),
        "no transaction ever started: {:?}",
        mx.commands()
    );
    // The DSN was committed before the state that records it: wait for that state.
    let state = wait_for_state(s, |st| {
        st.status == tlsgate::queue::RecipientStatus::Deferred && st.delay_notified
    })
    .await;
    assert!(state.tls_deferral);
    // The original waits in the queue (the DSN may or may not have left it already).
    let store = s.relay.running().store();
    let waiting = store.message_ids().unwrap().into_iter().any(|id| {
        store
            .message(&id)
            .unwrap()
            .is_some_and(|m| m.recipients[0].address == "ola@partner.test")
    });
    assert!(waiting, "the message to the listed domain is still queued");
    dsn
}

#[tokio::test]
async fn no_starttls_offered_defers() {
    let (s, _dir, _) = listed("").await;
    let mx = s.sink(MX1, Behaviour::default()).await;
    expect_tls_deferral(&s, &mx, "4.7.4", "no STARTTLS offered").await;
}

#[tokio::test]
async fn starttls_answered_with_454_defers() {
    let (s, _dir, _) = listed("").await;
    let mx = s
        .tls_sink(
            MX1,
            &["mx1.partner.test"],
            Behaviour {
                starttls_reply: "454 4.7.0 TLS not available due to temporary reason".into(),
                ..Behaviour::default()
            },
        )
        .await;
    expect_tls_deferral(&s, &mx, "4.7.4", "STARTTLS refused: 454").await;
}

#[tokio::test]
async fn failed_handshake_defers() {
    let (s, _dir, _) = listed("").await;
    let mx = s
        .tls_sink(
            MX1,
            &["mx1.partner.test"],
            Behaviour {
                break_handshake: true,
                ..Behaviour::default()
            },
        )
        .await;
    expect_tls_deferral(&s, &mx, "4.7.5", "TLS handshake failed").await;
}

#[tokio::test]
async fn self_signed_certificate_defers() {
    let (s, _dir, _) = listed("").await;
    let stranger = TestCa::new();
    let b = Behaviour {
        tls: Some(server_tls(&stranger, &["mx1.partner.test"])),
        ..Behaviour::default()
    };
    let mx = s.sink(MX1, b).await;
    expect_tls_deferral(&s, &mx, "4.7.5", "certificate not trusted").await;
}

#[tokio::test]
async fn expired_certificate_defers() {
    let (s, _dir, _) = listed("").await;
    let (cert, key) = s.relay.ca.issue_expired(&["mx1.partner.test"]);
    let b = Behaviour {
        tls: Some(server_tls_from_pem(&cert, &key)),
        ..Behaviour::default()
    };
    let mx = s.sink(MX1, b).await;
    expect_tls_deferral(&s, &mx, "4.7.5", "certificate expired").await;
}

#[tokio::test]
async fn certificate_for_another_name_defers() {
    let (s, _dir, _) = listed("").await;
    let mx = s
        .tls_sink(MX1, &["mail.elsewhere.test"], Behaviour::default())
        .await;
    expect_tls_deferral(
        &s,
        &mx,
        "4.7.5",
        "certificate does not match mx1.partner.test",
    )
    .await;
}

/// Kills the Python peer when the test ends, however it ends.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn tls_1_0_and_1_1_only_peer_defers() {
    let (s, dir, _) = listed("").await;
    // An OpenSSL peer (Python's ssl module): rustls cannot be made to offer TLS 1.0/1.1.
    let (cert, key) = s.relay.ca.issue(&["mx1.partner.test"]);
    let cert_path = dir.path().join("old.pem");
    let key_path = dir.path().join("old.key");
    std::fs::write(&cert_path, cert).unwrap();
    std::fs::write(&key_path, key).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/old_tls_smtp.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(MX1)
        .arg(s.port.to_string())
        .arg(&cert_path)
        .arg(&key_path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is installed by .ci/run");
    let stdout = child.stdout.take().unwrap();
    let peer = Peer(child);
    let mut first = String::new();
    BufReader::new(stdout).read_line(&mut first).unwrap();
    assert_eq!(first.trim(), "ready", "the old-TLS peer started");

    let mut client = SmtpClient::connect_greeted(s.relay.outbound()).await;
    client.ehlo("exchange.example.no").await;
    let reply = client
        .send_mail(
            "kari@example.no",
            &["ola@partner.test"],
            &common::message("old tls"),
        )
        .await;
    assert_eq!(reply.code, 250);
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Status"), Some("4.7.5"));
    assert!(
        dsn.human
            .contains("TLS protocol version not acceptable (TLS 1.2 or newer required)"),
        "{}",
        dsn.human
    );
    drop(peer);
}

#[tokio::test]
async fn valid_certificate_from_a_configured_root_delivers() {
    let (s, _dir, _) = listed("").await;
    let mx = s
        .tls_sink(MX1, &["mx1.partner.test"], Behaviour::default())
        .await;
    s.submit("kari@example.no", &["ola@partner.test"], "over tls")
        .await;
    let got = mx.wait_for_messages(1, WAIT).await;
    assert!(got[0].tls.is_some());
    s.wait_queue_empty().await;
    assert!(s.next_hop.messages().is_empty(), "no DSN");
}

#[tokio::test]
async fn secure_accepts_the_domain_and_its_subdomains_and_configured_names() {
    let (s, _dir, _) = listed(
        "[[policy]]\ndomain = \"partner.test\"\ntls = \"secure\"\n\
         [[policy]]\ndomain = \"hosted.test\"\ntls = \"secure\"\nmatch = [\".provider.test\"]\n",
    )
    .await;
    // partner.test: MX certificate names a subdomain of the recipient domain.
    let mx = s
        .tls_sink(MX1, &["mx1.partner.test"], Behaviour::default())
        .await;
    s.submit("kari@example.no", &["ola@partner.test"], "secure")
        .await;
    mx.wait_for_messages(1, WAIT).await;

    // hosted.test: the MX is the provider's; only the `match` entry makes it acceptable.
    s.dns.add_mx("hosted.test", 10, "mx.provider.test");
    s.dns.add_ip("mx.provider.test", ip(MX2));
    let hosted = s
        .tls_sink(MX2, &["mx.provider.test"], Behaviour::default())
        .await;
    s.submit("kari@example.no", &["per@hosted.test"], "hosted")
        .await;
    hosted.wait_for_messages(1, WAIT).await;
    s.wait_queue_empty().await;
}

#[tokio::test]
async fn secure_refuses_an_mx_certificate_outside_the_domain() {
    let (s, _dir, _) = listed("[[policy]]\ndomain = \"partner.test\"\ntls = \"secure\"\n").await;
    s.dns.add_mx("other.test", 10, "mx.provider.test");
    let mx = s
        .tls_sink(MX1, &["mx1.provider.test"], Behaviour::default())
        .await;
    let mut client = SmtpClient::connect_greeted(s.relay.outbound()).await;
    client.ehlo("exchange.example.no").await;
    client
        .send_mail(
            "kari@example.no",
            &["ola@partner.test"],
            &common::message("x"),
        )
        .await;
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert!(
        dsn.human
            .contains("certificate does not match partner.test or .partner.test"),
        "{}",
        dsn.human
    );
    assert!(dsn.human.contains("TLS required (secure)"), "{}", dsn.human);
    assert!(mx.messages().is_empty());
}

#[tokio::test]
async fn a_policy_that_weakens_a_listed_domain_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "partner.test\n").unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &[common::HOSTNAME]);
    let text = common::base_config(
        dir.path(),
        &cert,
        &key,
        &format!(
            "[domain_list]\npath = \"{}\"\n[[policy]]\ndomain = \"partner.test\"\ntls = \"may\"\n",
            list.display()
        ),
    );
    let config = tlsgate::config::Config::from_toml(&text, "tlsgate.toml").unwrap();
    let err = match tlsgate::server::start(config).await {
        Ok(_) => panic!("a weakening policy must refuse to start"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("partner.test"), "{err}");
    assert!(err.contains("never below \"verify\""), "{err}");
}

#[tokio::test]
async fn plaintext_from_a_listed_sender_is_refused_inbound() {
    let (s, _dir, _) = listed("").await;
    let mut client = SmtpClient::connect_greeted(s.relay.inbound()).await;
    client.ehlo("mx.partner.test").await;
    let refused = client.cmd("MAIL FROM:<ola@partner.test>").await;
    assert_eq!(refused.code, 530);
    assert_eq!(refused.enhanced(), "5.7.0");
    assert!(refused.text().contains("tvungen TLS"), "{}", refused.text());

    // Header From listed, envelope sender not: refused after DATA.
    assert_eq!(client.cmd("MAIL FROM:<bounce@mailer.test>").await.code, 250);
    assert_eq!(client.cmd("RCPT TO:<kari@example.no>").await.code, 250);
    assert_eq!(client.cmd("DATA").await.code, 354);
    client
        .send_raw(b"From: Ola <ola@partner.test>\r\nSubject: x\r\n\r\nhei\r\n")
        .await;
    let reply = client.cmd(".").await;
    assert_eq!((reply.code, reply.enhanced()), (550, "5.7.0"));

    // Over TLS the same sender is welcome.
    let mut tls = SmtpClient::connect_greeted(s.relay.inbound()).await;
    tls.ehlo("mx.partner.test").await;
    tls.starttls(s.relay.ca.client_config(), common::HOSTNAME)
        .await;
    tls.ehlo("mx.partner.test").await;
    let ok = tls
        .send_mail(
            "ola@partner.test",
            &["kari@example.no"],
            "From: Ola <ola@partner.test>\r\nSubject: ok\r\n\r\nhei\r\n",
        )
        .await;
    assert_eq!(ok.code, 250);
    assert_eq!(
        s.relay.running().metrics().plaintext_refused.get(),
        2,
        "both refusals counted"
    );
}

#[tokio::test]
async fn plaintext_refusal_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "partner.test\n").unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &[common::HOSTNAME]);
    let text = common::base_config(
        dir.path(),
        &cert,
        &key,
        &format!("[domain_list]\npath = \"{}\"\n", list.display()),
    )
    .replace(
        "local_domains = [\"example.no\"]",
        "local_domains = [\"example.no\"]\nrefuse_plaintext_from_listed = false",
    );
    let server = common::TestServer::start_with_config(dir, ca, &text).await;
    let mut client = SmtpClient::connect_greeted(server.inbound()).await;
    client.ehlo("mx.partner.test").await;
    let reply = client
        .send_mail(
            "ola@partner.test",
            &["kari@example.no"],
            &common::message("plain"),
        )
        .await;
    assert_eq!(reply.code, 250);
}

#[tokio::test]
async fn requiretls_message_bounces_when_the_next_hop_lacks_requiretls() {
    let s = setup("", "").await;
    s.dns.add_mx("unlisted.test", 10, "mx1.unlisted.test");
    s.dns.add_ip("mx1.unlisted.test", ip(MX1));
    // Valid certificate but no REQUIRETLS extension (RFC 8689 4.2.1).
    let mx = s
        .tls_sink(MX1, &["mx1.unlisted.test"], Behaviour::default())
        .await;
    let mut client = SmtpClient::connect_greeted(s.relay.outbound()).await;
    client.ehlo("exchange.example.no").await;
    client
        .starttls(s.relay.ca.client_config(), common::HOSTNAME)
        .await;
    let ehlo = client.ehlo("exchange.example.no").await;
    assert!(ehlo.text().contains("REQUIRETLS"), "advertised after TLS");
    assert_eq!(
        client
            .cmd("MAIL FROM:<kari@example.no> REQUIRETLS")
            .await
            .code,
        250
    );
    assert_eq!(client.cmd("RCPT TO:<ola@unlisted.test>").await.code, 250);
    assert_eq!(client.cmd("DATA").await.code, 354);
    client.send_raw(b"Subject: rt\r\n\r\nhi\r\n.\r\n").await;
    assert_eq!(client.read_reply().await.code, 250);
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Status"), Some("5.7.30"));
    assert!(dsn.human.contains("REQUIRETLS"), "{}", dsn.human);
    assert!(mx.messages().is_empty());
}

#[tokio::test]
async fn a_changed_list_is_picked_up_and_a_broken_one_refused() {
    let (s, _dir, list) = listed("").await;
    let handle = s.relay.running().domain_list().clone();
    let d = |n: &str| tlsgate::domain::Domain::parse(n).unwrap();
    assert!(!handle.current().is_listed(&d("newpartner.test")));
    // Bump the modification time clearly past the one seen at load.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&list, "partner.test\nnewpartner.test\n").unwrap();
    wait_until(
        || handle.current().is_listed(&d("newpartner.test")),
        "the watcher reloads the changed list",
    )
    .await;
    // A broken file never replaces a good list; SIGHUP-style reload says so and keeps it.
    std::fs::write(&list, "partner.test\nnot a domain\n").unwrap();
    s.relay.running().reload_domain_list();
    assert!(handle.current().is_listed(&d("newpartner.test")));
    assert_eq!(handle.current().len(), 2);
}

#[tokio::test]
async fn unlisted_domains_in_the_same_situations_are_delivered_opportunistically() {
    let (s, _dir, _) = listed("").await;
    let ca = &s.relay.ca;
    let stranger = TestCa::new();
    let (expired_cert, expired_key) = ca.issue_expired(&["mx.any.test"]);
    let scenarios: Vec<(&str, Behaviour)> = vec![
        ("nostarttls", Behaviour::default()),
        (
            "refused",
            Behaviour {
                tls: Some(server_tls(ca, &["mx.any.test"])),
                starttls_reply: "454 4.7.0 TLS not available".into(),
                ..Behaviour::default()
            },
        ),
        (
            "broken",
            Behaviour {
                tls: Some(server_tls(ca, &["mx.any.test"])),
                break_handshake: true,
                ..Behaviour::default()
            },
        ),
        (
            "selfsigned",
            Behaviour {
                tls: Some(server_tls(&stranger, &["mx.any.test"])),
                ..Behaviour::default()
            },
        ),
        (
            "expired",
            Behaviour {
                tls: Some(server_tls_from_pem(&expired_cert, &expired_key)),
                ..Behaviour::default()
            },
        ),
        (
            "wrongname",
            Behaviour {
                tls: Some(server_tls(ca, &["somewhere.else.test"])),
                ..Behaviour::default()
            },
        ),
    ];
    let mut sinks = Vec::new();
    for (i, (name, behaviour)) in scenarios.into_iter().enumerate() {
        let ip = format!("127.0.1.{}", i + 1);
        let domain = format!("{name}.test");
        let mx = format!("mx.{name}.test");
        s.dns.add_mx(&domain, 10, &mx);
        s.dns.add_ip(&mx, ip.parse().unwrap());
        let sink = s.sink(&ip, behaviour).await;
        s.submit(
            "kari@example.no",
            &[&format!("ola@{domain}")],
            &format!("to {name}"),
        )
        .await;
        sinks.push((name, sink));
    }
    for (name, sink) in &sinks {
        let got = sink.wait_for_messages(1, WAIT).await;
        let expect_tls = matches!(*name, "selfsigned" | "expired" | "wrongname");
        assert_eq!(
            got[0].tls.is_some(),
            expect_tls,
            "{name}: TLS when the peer can do it, plaintext otherwise (level may)"
        );
    }
    s.wait_queue_empty().await;
}

#[tokio::test]
async fn unlisted_plaintext_senders_are_accepted_inbound() {
    let (s, _dir, _) = listed("").await;
    let mut client = SmtpClient::connect_greeted(s.relay.inbound()).await;
    client.ehlo("mx.unlisted.test").await;
    let reply = client
        .send_mail(
            "someone@unlisted.test",
            &["kari@example.no"],
            "From: <someone@unlisted.test>\r\nSubject: plain\r\n\r\nhei\r\n",
        )
        .await;
    assert_eq!(reply.code, 250);
}
