//! Routed local parts at RCPT on an inbound listener, over real sockets on 127.0.0.1 (S6,
//! non-negotiable 3: never an open relay).
//!
//! RFC 5321 2.3.11: only the host of the domain interprets a local part; 3.6.1: a server MAY
//! decline addresses that route. A recipient in a local domain whose local part carries a
//! route onwards (`%` hack, `!` bang path, quoted `@`) would ask the internal mail system to
//! relay it on; from a client outside `outbound.relay_networks` it gets `550 5.7.1`, as with
//! Postfix's default `allow_untrusted_routing = no`.

mod common;

use common::*;

/// The forms a relay tester (nmap smtp-open-relay, the classic relay test lists) tries.
const ROUTED: [&str; 5] = [
    "victim%remote.example@example.no",
    "\"victim@remote.example\"@example.no",
    "\"victim%remote.example\"@example.no",
    "remote.example!victim@example.no",
    "remote.example!victim%other.example@example.no",
];

/// A server whose relay networks do not include 127.0.0.1: the test client is untrusted, as an
/// internet client on an MX is. `inbound_extra` goes into the [inbound] section.
async fn untrusted_server(inbound_extra: &str) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &[HOSTNAME]);
    let text = base_config(dir.path(), &cert, &key, "")
        .replace(
            "relay_networks = [\"127.0.0.0/8\"]",
            "relay_networks = [\"192.0.2.0/24\"]",
        )
        .replace(
            "local_domains = [\"example.no\"]",
            &format!("local_domains = [\"example.no\"]\n{inbound_extra}"),
        );
    assert!(text.contains("192.0.2.0/24"));
    TestServer::start_with_config(dir, ca, &text).await
}

/// RFC 5321 3.6.1 (and S6): every routed form of a local recipient is refused with 550 5.7.1
/// and a clear text for an untrusted client; a plain local recipient is still accepted, and a
/// routed recipient in a foreign domain stays a relay refusal (554 5.7.1).
#[tokio::test]
async fn routed_local_parts_from_untrusted_clients_get_550_5_7_1() {
    let server = untrusted_server("").await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("client.example.org").await;
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").await.code, 250);
    for routed in ROUTED {
        let r = c.cmd(&format!("RCPT TO:<{routed}>")).await;
        assert_eq!((r.code, r.enhanced()), (550, "5.7.1"), "{routed}: {r:?}");
        assert!(
            r.text().contains("Routed address refused"),
            "{routed}: {r:?}"
        );
    }
    let r = c.cmd("RCPT TO:<victim%example.no@remote.example>").await;
    assert_eq!((r.code, r.enhanced()), (554, "5.7.1"), "{r:?}");
    // Nothing routed made it into the transaction.
    let r = c.cmd("DATA").await;
    assert_eq!((r.code, r.enhanced()), (554, "5.5.1"), "{r:?}");
    assert_eq!(server.queue_len(), 0);
    assert_eq!(c.cmd("RSET").await.code, 250);

    let r = c
        .send_mail(
            "sender@example.org",
            &["victim@example.no"],
            &message("plain"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    let metrics = server.running().metrics().render();
    assert!(
        metrics.contains(
            "tlsgate_messages_rejected_total{listener=\"inbound\",reason=\"routed_address\"} 5"
        ),
        "{metrics}"
    );
}

/// Postfix `allow_untrusted_routing` semantics: clients in `outbound.relay_networks` are
/// trusted and may use routed local parts, on the inbound listener too.
#[tokio::test]
async fn routed_local_parts_from_relay_networks_are_accepted() {
    // The base configuration trusts 127.0.0.0/8.
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("internal.example.no").await;
    let r = c
        .send_mail("sender@example.no", &ROUTED, &message("routed"))
        .await;
    let id = queue_id(&r);
    let meta = server.queued_meta(&id).unwrap();
    let stored: Vec<&str> = meta.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(stored, ROUTED);
}

/// `inbound.allow_routed_local_parts = true` turns the refusal off for everyone, without
/// opening relaying to foreign domains.
#[tokio::test]
async fn allow_routed_local_parts_turns_the_refusal_off() {
    let server = untrusted_server("allow_routed_local_parts = true").await;
    assert!(server.config.inbound.allow_routed_local_parts);
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("client.example.org").await;
    assert_eq!(c.cmd("MAIL FROM:<sender@example.org>").await.code, 250);
    for routed in ROUTED {
        let r = c.cmd(&format!("RCPT TO:<{routed}>")).await;
        assert_eq!(r.code, 250, "{routed}: {r:?}");
    }
    let r = c.cmd("RCPT TO:<victim%example.no@remote.example>").await;
    assert_eq!((r.code, r.enhanced()), (554, "5.7.1"), "{r:?}");
}
