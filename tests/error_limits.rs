//! Errors per session, over real sockets on 127.0.0.1 (non-negotiable 4).
//!
//! RFC 5321 3.8 / 4.3.2: `421` may answer any command and ends the session; tlsgate does so
//! after `limits.max_errors` errors (`421 4.7.0`, RFC 3463 X.7.0), and before that slows down
//! a client that keeps erring: each error reply past `limits.soft_errors` waits
//! `limits.error_sleep_time`. The defaults follow Postfix (`smtpd_hard_error_limit` = 20,
//! `smtpd_soft_error_limit` = 10, `smtpd_error_sleep_time` = 1s), which leave room for an
//! open-relay audit (16 refused tries, tests/open_relay_scan.rs) to reach its verdict.
//!
//! `452 4.5.3` to a RCPT past `limits.max_recipients` is not an error (RFC 5321 4.5.3.1.8, 3.3:
//! the client sends the rest later): it is neither counted nor delayed, and the transaction
//! goes on with its first `max_recipients`. Such RCPTs are bounded per session by
//! `limits.recipient_overshoot_limit` (1000, Postfix's `smtpd_recipient_overshoot_limit`).

mod common;

use common::*;
use std::time::Duration;
use tokio::time::Instant;

/// A command every session refuses (`500 5.5.2`), so each one is one error.
const BAD: &str = "BOGUS";

/// With the default limits (20 errors, soft limit 10) a session survives 19 errors and keeps
/// working; the 20th error reply is followed by `421 4.7.0` and the close. The sleep is
/// shortened here: this test is about the count, not the delay.
#[tokio::test]
async fn session_survives_19_errors_and_is_closed_with_421_at_the_20th() {
    let server = TestServer::start_with("[limits]\nerror_sleep_time = \"10ms\"").await;
    assert_eq!(server.config.limits.max_errors, 20, "default max_errors");
    assert_eq!(server.config.limits.soft_errors, 10, "default soft_errors");
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    for n in 1..=19 {
        let r = c.cmd(BAD).await;
        assert_eq!((r.code, r.enhanced()), (500, "5.5.2"), "error {n}: {r:?}");
    }
    // Still a working session after 19 errors.
    let r = c.cmd("NOOP").await;
    assert_eq!((r.code, r.enhanced()), (250, "2.0.0"), "{r:?}");
    c.ehlo("client.example.org").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);

    let r = c.cmd(BAD).await;
    assert_eq!((r.code, r.enhanced()), (500, "5.5.2"), "error 20: {r:?}");
    let r = c.read_reply().await;
    assert_eq!((r.code, r.enhanced()), (421, "4.7.0"), "{r:?}");
    assert!(r.text().contains("Too many errors"), "{r:?}");
    assert!(c.is_closed().await);
}

/// Postfix `smtpd_soft_error_limit` semantics: error replies 1 to 10 come at once, each error
/// reply after the 10th comes `limits.error_sleep_time` (200ms here) later; a successful reply
/// is never held back.
#[tokio::test]
async fn error_replies_past_the_soft_limit_are_delayed() {
    let sleep = Duration::from_millis(200);
    let server = TestServer::start_with("[limits]\nerror_sleep_time = \"200ms\"").await;
    assert_eq!(server.config.limits.error_sleep_time, sleep);
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;

    async fn timed(c: &mut SmtpClient, line: &str) -> (u16, Duration) {
        let start = Instant::now();
        let r = c.cmd(line).await;
        (r.code, start.elapsed())
    }

    for n in 1..=10 {
        let (code, took) = timed(&mut c, BAD).await;
        assert_eq!(code, 500);
        assert!(
            took < sleep,
            "error {n} within the soft limit took {took:?}"
        );
    }
    for n in 11..=13 {
        let (code, took) = timed(&mut c, BAD).await;
        assert_eq!(code, 500);
        assert!(
            took >= sleep && took < sleep * 5,
            "error {n} past the soft limit took {took:?}"
        );
    }
    let (code, took) = timed(&mut c, "NOOP").await;
    assert_eq!(code, 250);
    assert!(took < sleep, "a successful reply took {took:?}");
}

/// Reads `n` replies and asserts each is `code` with `enhanced` and exactly `text`.
async fn expect_replies(c: &mut SmtpClient, n: usize, code: u16, enhanced: &str, text: &str) {
    let want = format!("{enhanced} {text}");
    for i in 1..=n {
        let r = c.read_reply().await;
        assert_eq!(
            (r.code, r.text()),
            (code, want.clone()),
            "reply {i} of {n}: {r:?}"
        );
    }
}

/// MAIL + 150 RCPT + DATA pipelined, default limits (100 recipients, 20 errors, 1s sleep past
/// 10): RCPT 1-100 get `250`, 101-150 `452 4.5.3` at once (no error delay, no `421`), DATA gets
/// `354` and the message is queued with its first 100 recipients.
#[tokio::test]
async fn recipients_past_max_recipients_get_452_and_are_not_errors() {
    let server = TestServer::start().await;
    assert_eq!(server.config.limits.max_recipients, 100, "default");
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("client.example.org").await;
    let mut batch = String::from("MAIL FROM:<a@example.org>\r\n");
    for n in 1..=150 {
        batch.push_str(&format!("RCPT TO:<r{n}@example.no>\r\n"));
    }
    batch.push_str("DATA\r\n");
    let start = Instant::now();
    c.send_raw(batch.as_bytes()).await;
    expect_replies(&mut c, 1, 250, "2.1.0", "Sender ok").await;
    expect_replies(&mut c, 100, 250, "2.1.5", "Recipient ok").await;
    expect_replies(&mut c, 50, 452, "4.5.3", "Too many recipients").await;
    expect_replies(&mut c, 1, 354, "2.0.0", "End data with <CR><LF>.<CR><LF>").await;
    c.send_raw(message("many").as_bytes()).await;
    let r = c.cmd(".").await;
    assert_eq!((r.code, r.enhanced()), (250, "2.0.0"), "{r:?}");
    // Ten error delays of 1s each would have been due past the soft limit.
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}: 452s were slowed down"
    );
    let meta = server.queued_meta(&queue_id(&r)).expect("queued");
    let recipients: Vec<String> = meta.recipients.iter().map(|r| r.address.clone()).collect();
    let first_100: Vec<String> = (1..=100).map(|n| format!("r{n}@example.no")).collect();
    assert_eq!(recipients, first_100);
    // The session is still a working one.
    let r = c.cmd("NOOP").await;
    assert_eq!((r.code, r.enhanced()), (250, "2.0.0"), "{r:?}");
}

/// The bound on those RCPTs is per session (1000 by default, over transactions): 600 past the
/// limit in one transaction, 400 in the next; the 1000th gets its `452`, then `421 4.7.0` and
/// the close; nothing pipelined after it is answered.
#[tokio::test]
async fn recipients_past_the_limit_are_bounded_per_session_with_421() {
    let server = TestServer::start().await;
    assert_eq!(
        server.config.limits.recipient_overshoot_limit, 1000,
        "default"
    );
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("client.example.org").await;
    let mut batch = String::new();
    for over in [600, 400] {
        batch.push_str("MAIL FROM:<a@example.org>\r\n");
        for n in 1..=100 + over {
            batch.push_str(&format!("RCPT TO:<r{n}@example.no>\r\n"));
        }
        batch.push_str("RSET\r\n");
    }
    c.send_raw(batch.as_bytes()).await;
    expect_replies(&mut c, 1, 250, "2.1.0", "Sender ok").await;
    expect_replies(&mut c, 100, 250, "2.1.5", "Recipient ok").await;
    expect_replies(&mut c, 600, 452, "4.5.3", "Too many recipients").await;
    expect_replies(&mut c, 1, 250, "2.0.0", "Ok").await;
    expect_replies(&mut c, 1, 250, "2.1.0", "Sender ok").await;
    expect_replies(&mut c, 100, 250, "2.1.5", "Recipient ok").await;
    expect_replies(&mut c, 400, 452, "4.5.3", "Too many recipients").await;
    expect_replies(
        &mut c,
        1,
        421,
        "4.7.0",
        "Too many recipients past the limit, closing connection",
    )
    .await;
    assert!(
        c.is_closed().await,
        "RSET after the 421 must not be answered"
    );
    assert_eq!(server.queue_len(), 0);
}
