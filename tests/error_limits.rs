//! Errors per session, over real sockets on 127.0.0.1 (non-negotiable 4).
//!
//! RFC 5321 3.8 / 4.3.2: `421` may answer any command and ends the session; tlsgate does so
//! after `limits.max_errors` errors (`421 4.7.0`, RFC 3463 X.7.0), and before that slows down
//! a client that keeps erring: each error reply past `limits.soft_errors` waits
//! `limits.error_sleep_time`. The defaults follow Postfix (`smtpd_hard_error_limit` = 20,
//! `smtpd_soft_error_limit` = 10, `smtpd_error_sleep_time` = 1s), which leave room for an
//! open-relay audit (16 refused tries, tests/open_relay_scan.rs) to reach its verdict.

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
