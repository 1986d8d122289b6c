//! Sender authentication through the SMTP session (issue 5, D4): an inbound message is
//! checked, stamped with our `Authentication-Results` (a forged one claiming our authserv-id
//! removed), or refused as the DMARC policy says; outbound mail is DKIM-signed when a key is
//! configured for the sender domain, and the signature verifies.

mod common;

use common::mx_sink::Behaviour;
use common::relay::*;
use common::{base64, SmtpClient, HOSTNAME};
use std::time::Duration;

#[tokio::test]
async fn inbound_mail_is_stamped_and_a_dmarc_reject_policy_is_enforced() {
    let s = setup("", "").await;
    // bank.test: SPF allows 127.0.0.1; fraud.test: SPF allows only 192.0.2.1; both p=reject.
    s.dns.add_txt("bank.test", "v=spf1 ip4:127.0.0.1 -all");
    s.dns.add_txt("_dmarc.bank.test", "v=DMARC1; p=reject");
    s.dns.add_txt("fraud.test", "v=spf1 ip4:192.0.2.1 -all");
    s.dns.add_txt("_dmarc.fraud.test", "v=DMARC1; p=reject");

    let mut client = SmtpClient::connect_greeted(s.relay.inbound()).await;
    client.ehlo("mail.bank.test").await;
    let forged = format!(
        "Authentication-Results: {HOSTNAME}; dmarc=pass header.from=bank.test\r\n\
         Authentication-Results: other.example; spf=pass\r\n\
         From: Kari <kari@bank.test>\r\nSubject: ok\r\n\r\nhei\r\n"
    );
    let reply = client
        .send_mail("kari@bank.test", &["ola@example.no"], &forged)
        .await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    let got = s.next_hop.wait_for_messages(1, WAIT).await;
    let data = String::from_utf8_lossy(&got[0].data);
    let ours: Vec<&str> = data
        .lines()
        .filter(|l| l.starts_with(&format!("Authentication-Results: {HOSTNAME}")))
        .collect();
    assert_eq!(ours.len(), 1, "exactly our own header: {data}");
    assert!(data.contains("spf=pass"), "{data}");
    assert!(data.contains("dmarc=pass"), "{data}");
    assert!(
        !data.contains("dmarc=pass header.from=bank.test\r\nAuth"),
        "{data}"
    );
    assert!(
        data.contains("Authentication-Results: other.example; spf=pass"),
        "foreign results are kept: {data}"
    );

    // SPF fails, no DKIM: DMARC fails and the domain says reject.
    let reply = client
        .send_mail(
            "ceo@fraud.test",
            &["ola@example.no"],
            "From: CEO <ceo@fraud.test>\r\nSubject: pay now\r\n\r\npay\r\n",
        )
        .await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (550, "5.7.1"),
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("fraud.test"), "{}", reply.text());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        s.next_hop.messages().len(),
        1,
        "the refused message was not relayed"
    );
    let metrics = s.relay.running().metrics().render();
    assert!(
        metrics.contains("tlsgate_auth_results_total{method=\"dmarc\",result=\"fail\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn outbound_mail_is_dkim_signed_and_verifies() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let key_path = key_dir.path().join("example.no.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = setup_with(
        &format!(
            "[[outbound.dkim]]\ndomain = \"example.no\"\nselector = \"s2026\"\nkey = \"{}\"",
            key_path.display()
        ),
        "",
        "",
    )
    .await;
    s.dns.add_txt(
        "s2026._domainkey.example.no",
        &format!("v=DKIM1; k=ed25519; p={}", base64(key.public_key_raw())),
    );
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s.sink(MX1, Behaviour::default()).await;
    s.submit("kari@example.no", &["ola@partner.test"], "signed")
        .await;
    let got = mx.wait_for_messages(1, WAIT).await;
    let data = got[0].data.clone();
    let text = String::from_utf8_lossy(&data);
    assert!(text.contains("DKIM-Signature:"), "{text}");
    assert!(
        text.contains("d=example.no") && text.contains("s=s2026"),
        "{text}"
    );

    // The partner's view: verify the delivered message against the published key.
    let verifier = tlsgate::auth::Verifier::new(
        &[s.dns.addr],
        "mx.partner.test",
        Duration::from_secs(10),
        tlsgate::auth::AuthPolicy::default(),
    )
    .unwrap();
    let outcome = verifier
        .check(tlsgate::auth::CheckInput {
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: HOSTNAME,
            mail_from: Some("kari@example.no"),
            message: &data,
        })
        .await;
    assert_eq!(outcome.dkim.len(), 1, "{outcome:?}");
    assert_eq!(outcome.dkim[0].result.as_str(), "pass", "{outcome:?}");
}

/// Sends one message from `sender` over SMTP and returns the reply to the end of DATA and how
/// long it took.
async fn timed_send(s: &Setup, sender: &str) -> (common::Reply, Duration) {
    let mut client = SmtpClient::connect_greeted(s.relay.inbound()).await;
    client.ehlo("mail.example.org").await;
    let started = std::time::Instant::now();
    let reply = client
        .send_mail(
            sender,
            &["ola@example.no"],
            &format!("From: <{sender}>\r\nSubject: slow dns\r\n\r\nhei\r\n"),
        )
        .await;
    (reply, started.elapsed())
}

/// Issue 17 item 2, RFC 7208 6.2: an `exp=` lookup that is never answered does not change
/// the result: `spf=fail`, and the reply comes after one query's bound (3 s), well under the
/// check's 10 s budget.
#[tokio::test]
async fn unanswered_exp_lookup_still_fails_quickly() {
    let s = setup("", "").await;
    s.dns.add_txt(
        "slowexp.test",
        "v=spf1 ip4:192.0.2.1 -all exp=why.slowexp.test",
    );
    s.dns.silent("why.slowexp.test");
    let (reply, took) = timed_send(&s, "kari@slowexp.test").await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    assert!(
        took < Duration::from_secs(7),
        "one query's bound, not the whole budget: {took:?}"
    );
    let got = s.next_hop.wait_for_messages(1, WAIT).await;
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("spf=fail"), "{text}");
}

/// Issue 17 item 2, RFC 7208 4.4: the record lookup itself unanswered is `temperror`, given
/// after the query's own bound, within the check's budget.
#[tokio::test]
async fn unanswered_record_lookup_is_temperror_within_the_budget() {
    let s = setup("", "").await;
    s.dns.silent("slowrecord.test");
    let (reply, took) = timed_send(&s, "kari@slowrecord.test").await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    assert!(
        took < Duration::from_secs(9),
        "within the 10 s budget: {took:?}"
    );
    let got = s.next_hop.wait_for_messages(1, WAIT).await;
    let text = String::from_utf8_lossy(&got[0].data);
    assert!(text.contains("spf=temperror"), "{text}");
}
