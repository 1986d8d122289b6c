//! A mail loop end to end (RFC 5321 6.3): `inbound.next_hop` pointing at tlsgate's own inbound
//! listener. Each pass adds a `Received:` field; at `limits.hop_count_limit` the listener
//! refuses the message with `554 5.4.6`, the delivery fails permanently and the sender gets a
//! DSN, instead of the message going round for ever.

mod common;

use common::mx_sink::Behaviour;
use common::relay::*;
use common::*;

#[tokio::test]
async fn a_next_hop_that_is_our_own_listener_ends_in_a_bounce_not_a_loop() {
    let s = setup_next_hop_to_self("[limits]\nhop_count_limit = 5").await;
    // The sender's domain, where the DSN goes.
    let mx = s.single_mx(Behaviour::default()).await;
    let mut c = SmtpClient::connect_greeted(s.relay.inbound()).await;
    c.ehlo("mx1.partner.test").await;
    let r = c
        .send_mail(
            "sender@partner.test",
            &["user@example.no"],
            &message("loop"),
        )
        .await;
    assert_eq!(r.code, 250, "{r:?}");

    // Bounded: WAIT, however the loop goes.
    let dsns = mx.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Action"), Some("failed"));
    assert_eq!(dsn.field(1, "Status"), Some("5.4.6"));
    assert!(
        dsn.field(1, "Diagnostic-Code")
            .is_some_and(|d| d.contains("554 5.4.6 Too many hops: 5 Received: header fields")),
        "{:?}",
        dsn.fields
    );
    s.wait_queue_empty().await;
    let metrics = s.relay.running().metrics();
    let passes = metrics
        .messages_accepted
        .with_label_values(&["inbound"])
        .get();
    // The submission and 4 passes round (each arrives with one more Received:), then refusal.
    assert_eq!(passes, 5, "accepted on the inbound listener");
    let refused = metrics
        .messages_rejected
        .with_label_values(&["inbound", "too_many_hops"])
        .get();
    assert_eq!(refused, 1);
    assert_eq!(mx.messages().len(), 1, "one DSN, nothing else");
}
