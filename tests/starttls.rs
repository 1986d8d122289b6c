//! STARTTLS (RFC 3207) with real rustls handshakes: TLS 1.2/1.3 only (T8), state reset after
//! the handshake, plaintext injection discarded (CVE-2011-0411), TLS details recorded (S2).

mod common;

use common::*;
use std::sync::Arc;

#[tokio::test]
async fn starttls_resets_state_and_records_tls_in_queue_and_received_header() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    c.starttls(server.ca.client_config(), HOSTNAME).await;
    // RFC 3207 4.2: the client must EHLO again; the earlier MAIL is forgotten.
    let r = c.cmd("RCPT TO:<a@example.no>").await;
    assert_eq!(r.code, 503, "{r:?}");
    let ehlo = c.ehlo("c").await;
    let caps = ehlo.text().to_uppercase();
    assert!(!caps.contains("STARTTLS"), "STARTTLS offered again: {caps}");
    assert!(caps.contains("REQUIRETLS"), "{caps}");
    let r = c.cmd("STARTTLS").await;
    assert_eq!(r.code, 503);
    let r = c
        .send_mail("a@example.org", &["a@example.no"], &message("tls"))
        .await;
    let id = queue_id(&r);
    let meta = server.queued_meta(&id).unwrap();
    let tls = meta.reception.tls.expect("TLS recorded");
    assert_eq!(tls.version, "TLSv1.3");
    assert!(tls.cipher.starts_with("TLS13_"), "{}", tls.cipher);
    assert!(
        meta.received_header.contains("with ESMTPS"),
        "{}",
        meta.received_header
    );
    assert!(meta.received_header.contains("version=TLSv1.3"));
    assert!(meta
        .received_header
        .contains(&format!("cipher={}", tls.cipher)));
    assert!(meta.received_header.contains("for <a@example.no>"));
}

#[tokio::test]
async fn tls12_client_is_accepted_and_recorded() {
    let server = TestServer::start().await;
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(server.ca.cert_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(tlsgate::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c = SmtpClient::connect_greeted(server.outbound()).await;
    c.ehlo("c").await;
    c.starttls(Arc::new(config), HOSTNAME).await;
    c.ehlo("c").await;
    let r = c
        .send_mail("a@example.no", &["b@gmail.com"], &message("tls12"))
        .await;
    let meta = server.queued_meta(&queue_id(&r)).unwrap();
    let tls = meta.reception.tls.unwrap();
    assert_eq!(tls.version, "TLSv1.2");
    assert!(tls.cipher.starts_with("TLS_ECDHE_"), "{}", tls.cipher);
}

#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    // The injected NOOP (and a MAIL) arrive in the same segment as STARTTLS.
    c.send_raw(b"STARTTLS\r\nNOOP\r\nMAIL FROM:<injected@example.org>\r\n")
        .await;
    let r = c.read_reply().await;
    assert_eq!(r.code, 220);
    c.handshake(server.ca.client_config(), HOSTNAME)
        .await
        .unwrap();
    // Had the NOOP been executed, its 250 would arrive before the EHLO reply; had the MAIL,
    // the next MAIL would get 503 (nested).
    let ehlo = c.cmd("EHLO c").await;
    assert_eq!(ehlo.code, 250);
    assert!(
        ehlo.text().contains(HOSTNAME),
        "first reply after TLS must answer EHLO: {ehlo:?}"
    );
    let r = c.cmd("MAIL FROM:<real@example.org>").await;
    assert_eq!(r.code, 250, "{r:?}");
}

#[tokio::test]
async fn failed_handshake_closes_the_session_without_harm() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    assert_eq!(c.cmd("STARTTLS").await.code, 220);
    // Not a TLS ClientHello.
    c.send_raw(b"HELLO THIS IS NOT TLS\r\n\r\n").await;
    assert!(c.is_closed().await);
    // The server goes on serving others.
    let mut d = SmtpClient::connect_greeted(server.inbound()).await;
    d.ehlo("d").await;
}

#[tokio::test]
async fn untrusting_client_sees_the_configured_certificate() {
    // The server presents the chain from [tls]: a client trusting another CA must fail.
    let server = TestServer::start().await;
    let other = TestCa::new();
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    assert_eq!(c.cmd("STARTTLS").await.code, 220);
    let err = c.handshake(other.client_config(), HOSTNAME).await;
    assert!(err.is_err());
}
