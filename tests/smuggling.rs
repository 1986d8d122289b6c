//! SMTP smuggling (SEC Consult, 2023): data ends only at <CRLF>.<CRLF>. A message containing a
//! bare LF or bare CR is refused whole with 550 5.6.0 after the real end of data, so no other
//! end-of-data variant can smuggle a second message past tlsgate.

mod common;

use common::*;

/// Sends a message whose body holds `fake_end` followed by a smuggled transaction, then the
/// real end of data. Returns the reply to the real end and what follows.
async fn attempt(fake_end: &str) -> (Reply, Option<Reply>, usize) {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("attacker").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<a@example.no>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    let payload = format!(
        "Subject: one\r\n\r\nfirst{fake_end}MAIL FROM:<ceo@example.no>\r\nRCPT TO:<victim@example.no>\r\nDATA\r\nSubject: smuggled\r\n\r\nsecond\r\n.\r\n"
    );
    c.send_raw(payload.as_bytes()).await;
    let end = c.read_reply().await;
    // Nothing else may follow: the smuggled commands were data, not commands.
    let next = c.cmd("NOOP").await;
    let queued = server.queue_len();
    (end, Some(next), queued)
}

#[tokio::test]
async fn bare_lf_dot_lf_is_not_end_of_data() {
    let (end, next, queued) = attempt("\n.\n").await;
    assert_eq!((end.code, end.enhanced()), (550, "5.6.0"), "{end:?}");
    assert_eq!(next.unwrap().code, 250);
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn lf_dot_crlf_is_not_end_of_data() {
    let (end, _, queued) = attempt("\n.\r\n").await;
    assert_eq!((end.code, end.enhanced()), (550, "5.6.0"));
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn cr_dot_cr_is_not_end_of_data() {
    let (end, _, queued) = attempt("\r.\r").await;
    assert_eq!((end.code, end.enhanced()), (550, "5.6.0"));
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn crlf_dot_cr_is_not_end_of_data() {
    let (end, _, queued) = attempt("\r\n.\r").await;
    assert_eq!((end.code, end.enhanced()), (550, "5.6.0"));
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn crlf_dot_lf_is_not_end_of_data() {
    let (end, _, queued) = attempt("\r\n.\n").await;
    assert_eq!((end.code, end.enhanced()), (550, "5.6.0"));
    assert_eq!(queued, 0);
}

#[tokio::test]
async fn proper_message_after_refused_one_is_accepted() {
    let server = TestServer::start().await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    assert_eq!(c.cmd("MAIL FROM:<a@example.org>").await.code, 250);
    assert_eq!(c.cmd("RCPT TO:<a@example.no>").await.code, 250);
    assert_eq!(c.cmd("DATA").await.code, 354);
    c.send_raw(b"bare\nlf\r\n").await;
    assert_eq!(c.cmd(".").await.code, 550);
    let r = c
        .send_mail("a@example.org", &["a@example.no"], &message("clean"))
        .await;
    let id = queue_id(&r);
    assert_eq!(
        server.queued_body(&id).unwrap(),
        message("clean").as_bytes()
    );
}
