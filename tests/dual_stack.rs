//! IPv4 clients on a dual-stack listener (issue 17 item 3): with `bind = "[::]:PORT"` an
//! IPv4 client arrives as `::ffff:a.b.c.d` (RFC 4291 2.5.5.2, RFC 3493 3.7); tlsgate
//! canonicalises the peer once at accept, so every check sees `a.b.c.d`: SPF (`ip4:` and
//! `%{i}`, RFC 7208 5.6 and 7.3), `outbound.relay_networks` (S6), per-IP connection limits,
//! the `Received:` field (RFC 5321 4.4) and the queued reception record.

mod common;

use common::relay::{setup_binds, WAIT};
use common::SmtpClient;
use std::net::SocketAddr;

/// Dual-stack sockets need IPv6 in the kernel; without it the test says so loudly and
/// checks nothing (it cannot).
fn ipv6_available() -> bool {
    let disabled = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6")
        .map(|v| v.trim() == "1")
        .unwrap_or(true);
    if disabled {
        eprintln!(
            "\n*** SKIPPED: IPv6 is disabled in this kernel (/proc/sys/net/ipv6); \
             dual-stack listeners cannot be tested here ***\n"
        );
    }
    !disabled
}

/// The IPv4 loopback address on the listener's port.
fn v4(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new("127.0.0.1".parse().unwrap(), addr.port())
}

#[tokio::test]
async fn ipv4_client_on_dual_stack_listener_is_ipv4_everywhere() {
    if !ipv6_available() {
        return;
    }
    let s = setup_binds("[::]:0", "[::]:0", "").await;
    assert!(
        s.relay.inbound().is_ipv6(),
        "the listener is dual-stack: {}",
        s.relay.inbound()
    );
    // RFC 7208 5.6: ip4 matches an IPv4 client only; 7.3: %{i} is the dotted quad.
    s.dns.add_txt("ip4.test", "v=spf1 ip4:127.0.0.1 -all");
    s.dns
        .add_txt("macro.test", "v=spf1 exists:%{i}.in.macro.test -all");
    s.dns
        .add_ip("127.0.0.1.in.macro.test", "127.0.0.2".parse().unwrap());

    let mut client = SmtpClient::connect_greeted(v4(s.relay.inbound())).await;
    client.ehlo("client.ip4.test").await;
    for domain in ["ip4.test", "macro.test"] {
        let reply = client
            .send_mail(
                &format!("kari@{domain}"),
                &["ola@example.no"],
                &format!("From: <kari@{domain}>\r\nSubject: {domain}\r\n\r\nhei\r\n"),
            )
            .await;
        assert_eq!(reply.code, 250, "{}", reply.text());
    }
    let got = s.next_hop.wait_for_messages(2, WAIT).await;
    for m in &got {
        let text = String::from_utf8_lossy(&m.data);
        assert!(text.contains("spf=pass"), "SPF saw 127.0.0.1: {text}");
        assert!(
            text.contains("Received: from client.ip4.test ([127.0.0.1])"),
            "Received: names the IPv4 address: {text}"
        );
        assert!(!text.contains("::ffff:"), "{text}");
    }

    // S6: relay_networks = ["127.0.0.0/8"] matches the IPv4 client on the dual-stack
    // outbound listener (a mapped address would be refused with 554 5.7.1).
    let mut client = SmtpClient::connect_greeted(v4(s.relay.outbound())).await;
    client.ehlo("internal.example.no").await;
    assert_eq!(client.cmd("MAIL FROM:<kari@example.no>").await.code, 250);
    let reply = client.cmd("RCPT TO:<someone@partner.test>").await;
    assert_eq!(reply.code, 250, "relay_networks matched: {}", reply.text());
    let reply = client.cmd("DATA").await;
    assert_eq!(reply.code, 354);
    client
        .send_raw(b"From: <kari@example.no>\r\nSubject: out\r\n\r\nhei\r\n.\r\n")
        .await;
    let reply = client.read_reply().await;
    assert_eq!(reply.code, 250, "{}", reply.text());
    let meta = s
        .relay
        .queued_meta(&common::queue_id(&reply))
        .expect("queued");
    assert_eq!(
        meta.reception.client_ip.to_string(),
        "127.0.0.1",
        "the queue records the IPv4 address"
    );
}

#[tokio::test]
async fn per_ip_limit_counts_an_ipv4_client_once_across_socket_families() {
    if !ipv6_available() {
        return;
    }
    // One connection per IP: the client holds one on the dual-stack inbound listener; its
    // second, on the IPv4-only outbound listener, is the same client (421, RFC 5321 3.1).
    let s = setup_binds(
        "[::]:0",
        "127.0.0.1:0",
        "[limits]\nmax_connections_per_ip = 1\n",
    )
    .await;
    let _held = SmtpClient::connect_greeted(v4(s.relay.inbound())).await;
    let mut second = SmtpClient::connect(s.relay.outbound()).await;
    let reply = second.read_reply().await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (421, "4.7.0"),
        "{}",
        reply.text()
    );
}
