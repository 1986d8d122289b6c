//! Address lengths at MAIL FROM and RCPT TO over real sockets on 127.0.0.1.
//!
//! RFC 5321 4.5.3.1: "To the maximum extent possible, implementation techniques that impose no
//! limits on the length of these objects should be used"; 4.5.3.1.1 makes 64 octets the least
//! a server must accept for a local part, not a ceiling. SRS-rewritten senders (Sender
//! Rewriting Scheme) and mailing-list confirmation addresses are longer than 64 every day, so
//! tlsgate accepts them. What stays bounded: the whole path, 256 octets (4.5.3.1.3), and the
//! command line (`limits.max_line_length`).

mod common;

use common::*;
use tlsgate::config::Role;

/// An SRS0 sender as a forwarder writes it: hash, timestamp, original domain and local part.
fn srs_sender() -> String {
    format!(
        "SRS0=k3Zq=5Y=lists.example.org=confirm+{}@forwarder.example.org",
        "9f1c2d3e4b5a6978".repeat(4)
    )
}

/// A list's confirmation address in a local domain, local part well over 64 octets.
fn long_recipient() -> String {
    format!("owner-confirm+{}@example.no", "a1b2c3d4e5".repeat(9))
}

fn local_len(address: &str) -> usize {
    address.rfind('@').unwrap()
}

/// RFC 5321 4.5.3.1 / 4.5.3.1.1: local parts longer than 64 octets are accepted at MAIL FROM
/// and RCPT TO, queued and stored exactly as sent.
#[tokio::test]
async fn local_parts_longer_than_64_octets_are_accepted_and_queued() {
    let server = TestServer::start().await;
    let sender = srs_sender();
    let recipient = long_recipient();
    assert!(local_len(&sender) > 64 && local_len(&recipient) > 64);

    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("client.example.org").await;
    let r = c.cmd(&format!("MAIL FROM:<{sender}>")).await;
    assert_eq!((r.code, r.enhanced()), (250, "2.1.0"), "MAIL: {r:?}");
    let r = c.cmd(&format!("RCPT TO:<{recipient}>")).await;
    assert_eq!((r.code, r.enhanced()), (250, "2.1.5"), "RCPT: {r:?}");
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send_raw(message("long local parts").as_bytes()).await;
    let id = queue_id(&c.cmd(".").await);

    let meta = server.queued_meta(&id).expect("queued");
    assert_eq!(meta.sender.as_deref(), Some(sender.as_str()));
    let stored: Vec<&str> = meta.recipients.iter().map(|r| r.address.as_str()).collect();
    assert_eq!(stored, [recipient.as_str()]);

    // The same on the outbound (smarthost) listener, for a sender and a remote recipient.
    let mut o = SmtpClient::connect_greeted(server.outbound()).await;
    o.ehlo("internal.example.no").await;
    let far = format!("{}@gmail.com", "x".repeat(100));
    let r = o.send_mail(&sender, &[&far], &message("out")).await;
    assert_eq!(r.code, 250, "{r:?}");
}

/// RFC 5321 4.5.3.1.3: the path limit of 256 octets stays, for the sender (553 5.1.7) and the
/// recipient (553 5.1.3); a path of exactly 256 octets is accepted.
#[tokio::test]
async fn paths_longer_than_256_octets_are_still_refused() {
    let server = TestServer::start().await;
    let domain = "@example.no";
    let at_limit = format!("{}{domain}", "a".repeat(256 - domain.len()));
    let over = format!("b{at_limit}");
    assert_eq!((at_limit.len(), over.len()), (256, 257));

    let mut c = SmtpClient::connect_greeted(server.addr(Role::Inbound)).await;
    c.ehlo("client.example.org").await;
    let r = c.cmd(&format!("MAIL FROM:<{over}>")).await;
    assert_eq!((r.code, r.enhanced()), (553, "5.1.7"), "{r:?}");
    assert!(r.text().contains("256"), "{r:?}");
    let r = c.cmd(&format!("MAIL FROM:<{at_limit}>")).await;
    assert_eq!(r.code, 250, "{r:?}");
    let r = c.cmd(&format!("RCPT TO:<{over}>")).await;
    assert_eq!((r.code, r.enhanced()), (553, "5.1.3"), "{r:?}");
    let r = c.cmd(&format!("RCPT TO:<{at_limit}>")).await;
    assert_eq!(r.code, 250, "{r:?}");
}
