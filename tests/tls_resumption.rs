//! TLS session resumption (issue 16 item 8): a client that comes back resumes its session
//! inbound (TLS 1.3 tickets, TLS 1.2 tickets or session ids), and delivery resumes its
//! session to the same MX — but only under the trust policy the session was made under
//! (RFC 8446 §2.2: a resumed session skips the certificate check), so a session made for
//! `may` is never resumed where the domain list demands `verify` (T2, T9).

mod common;

use common::mx_sink::Behaviour;
use common::relay::*;
use common::{SmtpClient, TestServer, HOSTNAME};
use rustls::HandshakeKind;
use std::sync::Arc;

/// Two STARTTLS sessions with one client configuration (its session cache): the first is a
/// full handshake, the second resumes.
async fn second_session_resumes(server: &TestServer, config: Arc<rustls::ClientConfig>) {
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let mut c = SmtpClient::connect_greeted(server.inbound()).await;
        c.ehlo("client.test").await;
        c.starttls(config.clone(), HOSTNAME).await;
        // The session is usable after resuming: a command gets its reply.
        c.ehlo("client.test").await;
        // TLS 1.3 tickets arrive after the handshake; the QUIT reply makes sure the client
        // has read them before the next connection.
        assert_eq!(c.cmd("QUIT").await.code, 221);
        kinds.push(c.handshake_kind);
    }
    assert_eq!(
        kinds,
        vec![Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]
    );
}

#[tokio::test]
async fn inbound_tls13_session_is_resumed() {
    let server = TestServer::start().await;
    second_session_resumes(&server, server.ca.client_config()).await;
}

#[tokio::test]
async fn inbound_tls12_session_is_resumed() {
    let server = TestServer::start().await;
    let base = server.ca.client_config();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(server.ca.cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls12 = rustls::ClientConfig::builder_with_provider(tlsgate::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    drop(base);
    // With tickets (RFC 5077) and without, i.e. by session id (RFC 5246 §7.3).
    second_session_resumes(&server, Arc::new(tls12.clone())).await;
    let mut ids_only = tls12;
    ids_only.resumption = ids_only
        .resumption
        .tls12_resumption(rustls::client::Tls12Resumption::SessionIdOnly);
    second_session_resumes(&server, Arc::new(ids_only)).await;
}

/// Submits one message to `to` and waits until the MX holds `n` messages; returns whether
/// the last one came over a resumed TLS session, and on which connection.
async fn deliver(s: &Setup, mx: &common::mx_sink::Sink, to: &str, n: usize) -> (bool, usize) {
    s.submit("kari@example.no", &[to], "resume").await;
    let got = mx.wait_for_messages(n, WAIT).await;
    let last = got.last().expect("a message");
    assert!(last.tls.is_some(), "delivered over TLS");
    s.wait_queue_empty().await;
    (last.resumed, last.connection)
}

#[tokio::test]
async fn delivery_resumes_only_under_the_same_trust() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("tvungen-tls.csv");
    std::fs::write(
        &list,
        "Selskapsnavn;Organisasjonsnummer;Domene med tvungen TLS;Dato innmeldt;Støtte for krav 5.2.4\n\
         Partner AS;999888777;partner.test;2026-01-05;Ja\n",
    )
    .unwrap();
    // One message per connection, so that each delivery makes a new TLS session.
    let s = setup(
        "max_messages_per_connection = 1",
        &format!("[domain_list]\npath = \"{}\"\n", list.display()),
    )
    .await;
    // One MX host serves a listed domain (verify, T2) and an unlisted one (may): the same
    // server name, so only the trust policy keeps their sessions apart.
    for domain in ["partner.test", "other.test"] {
        s.dns.add_mx(domain, 10, "mx1.partner.test");
    }
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s
        .tls_sink(MX1, &["mx1.partner.test"], Behaviour::default())
        .await;

    let (resumed, first) = deliver(&s, &mx, "ola@other.test", 1).await;
    assert!(!resumed, "the first session is a full handshake");
    let (resumed, second) = deliver(&s, &mx, "ola@partner.test", 2).await;
    assert_ne!(first, second, "a new connection");
    assert!(
        !resumed,
        "a session made without checking the certificate (may) must not be resumed for a \
         listed domain (verify)"
    );
    let (resumed, third) = deliver(&s, &mx, "per@partner.test", 3).await;
    assert_ne!(second, third, "a new connection");
    assert!(
        resumed,
        "the verified session is resumed under the same policy"
    );
    let (resumed, _) = deliver(&s, &mx, "per@other.test", 4).await;
    assert!(resumed, "the opportunistic session is resumed for may");
}
