//! The audit log records every delivery decision (issue 10 item 9; S1): each delivered
//! recipient (queue id, recipient domain, host, TLS version or `none`, policy level and its
//! source), each permanent failure, and each RCPT refused for relay (peer, recipient domain).
//! The log keeps its numbering and chain (`tlsgate audit verify` style check at the end).

mod common;

use common::mx_sink::Behaviour;
use common::relay::*;
use common::SmtpClient;
use std::time::Duration;

/// The audit entries written so far, as JSON values, in file order.
fn entries(s: &Setup) -> Vec<serde_json::Value> {
    let mut paths: Vec<_> = std::fs::read_dir(&s.relay.config.audit.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    paths.sort();
    paths
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Waits until an entry of `kind` matching `pick` is in the log; returns its `event` object.
async fn wait_for_entry(
    s: &Setup,
    kind: &str,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(e) = entries(s)
            .into_iter()
            .map(|e| e["event"].clone())
            .find(|e| e["event"] == kind && pick(e))
        {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {kind} entry: {:#?}",
            entries(s)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_plain_delivery_and_a_permanent_failure_are_audited() {
    let s = setup("retry_schedule = [\"1h\"]", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    // No STARTTLS: an unlisted domain is delivered in plaintext (`may`).
    let _mx = s
        .sink(
            MX1,
            Behaviour {
                advertise_starttls: false,
                ..reply_for(&[("nobody@", "550 5.1.1 <nobody@partner.test>: no such user")])
            },
        )
        .await;
    let id = s
        .submit(
            "kari@example.no",
            &["ola@partner.test", "nobody@partner.test"],
            "audit me",
        )
        .await;

    let delivered = wait_for_entry(&s, "delivered", |e| e["queue_id"] == id.as_str()).await;
    assert_eq!(delivered["domain"], "partner.test");
    assert_eq!(delivered["host"], "mx1.partner.test");
    assert_eq!(delivered["tls_version"], "none");
    assert_eq!(delivered["level"], "may");
    assert_eq!(delivered["policy_source"], "opportunistic");

    let failed = wait_for_entry(&s, "delivery_failed", |e| e["queue_id"] == id.as_str()).await;
    assert_eq!(failed["domain"], "partner.test");
    assert_eq!(failed["host"], "mx1.partner.test");
    assert_eq!(failed["status"], "5.1.1");
    assert_eq!(failed["by"], "remote");
    // The remote's text may name the recipient; the audit log names domains only.
    assert!(failed["reason"].is_null(), "{failed}");
    let text = serde_json::to_string(&entries(&s)).unwrap();
    assert!(
        !text.contains("nobody@"),
        "no full address in the audit log"
    );

    let report = tlsgate::audit::verify(std::slice::from_ref(&s.relay.config.audit.dir)).unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// A TLS delivery records its version, the level and where the level came from.
#[tokio::test]
async fn a_tls_delivery_under_a_policy_entry_is_audited_with_its_source() {
    let s = setup(
        "retry_schedule = [\"1h\"]",
        "[[policy]]\ndomain = \"partner.test\"\ntls = \"verify\"",
    )
    .await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let _mx = s
        .tls_sink(MX1, &["mx1.partner.test"], Behaviour::default())
        .await;
    let id = s
        .submit("kari@example.no", &["ola@partner.test"], "tls")
        .await;
    let delivered = wait_for_entry(&s, "delivered", |e| e["queue_id"] == id.as_str()).await;
    assert_eq!(delivered["tls_version"], "TLSv1.3");
    assert_eq!(delivered["level"], "verify");
    assert_eq!(delivered["policy_source"], "config");
    // An authenticated delivery (here by a `verify` entry, not the list) also records the
    // certificate, with the policy source (issue 12 item 5).
    let tls = wait_for_entry(&s, "tls_delivery", |e| e["queue_id"] == id.as_str()).await;
    assert_eq!(tls["policy_source"], "config");
    assert_eq!(tls["level"], "verify");
    assert_eq!(tls["cert_sha256"].as_str().map(str::len), Some(64));
}

/// tlsgate's own permanent decision (here SMTPUTF8 not offered) carries its reason.
#[tokio::test]
async fn our_own_permanent_failure_is_audited_with_its_reason() {
    let s = setup("retry_schedule = [\"1h\"]", "").await;
    let _mx = s
        .single_mx(Behaviour {
            extensions: vec!["PIPELINING".into()],
            ..Behaviour::default()
        })
        .await;
    s.submit_raw(
        "kari@example.no",
        " SMTPUTF8",
        "øyvind@partner.test",
        b"Subject: x\r\n\r\nhei\r\n",
    )
    .await;
    let failed = wait_for_entry(&s, "delivery_failed", |_| true).await;
    assert_eq!(failed["status"], "5.6.7");
    assert_eq!(failed["by"], "tlsgate");
    assert!(
        failed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("SMTPUTF8")),
        "{failed}"
    );
}

/// S6: a refused relay attempt is evidence too (peer, recipient domain, listener).
#[tokio::test]
async fn a_refused_relay_attempt_is_audited() {
    let s = setup("", "").await;
    let mut client = SmtpClient::connect_greeted(s.relay.inbound()).await;
    client.ehlo("scanner.example").await;
    assert_eq!(client.cmd("MAIL FROM:<x@scanner.example>").await.code, 250);
    let reply = client.cmd("RCPT TO:<victim@elsewhere.example>").await;
    assert_eq!(reply.code, 554, "{reply:?}");
    let refused = wait_for_entry(&s, "relay_refused", |_| true).await;
    assert_eq!(refused["domain"], "elsewhere.example");
    assert_eq!(refused["listener"], "inbound");
    assert_eq!(refused["reason"], "relay_denied");
    assert!(
        refused["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1")),
        "{refused}"
    );
}
