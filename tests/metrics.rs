//! The metrics endpoint (issue 6, design.md "Metrics"): scraped over a real socket, every line
//! checked against the Prometheus text format, and counters seen to move after a relayed
//! message and a refused one.

mod common;

use common::mx_sink::Behaviour;
use common::relay::*;
use common::SmtpClient;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET over a plain socket: (status code, body).
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(response).expect("UTF-8");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_string())
}

/// Strict parse of the text format: every sample has HELP and TYPE, names are `tlsgate_`,
/// label values are quoted, values are numbers. Returns sample → value.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut helped = std::collections::HashSet::new();
    let mut typed = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value in {line}"));
        let name = series.split('{').next().unwrap();
        // Ours, or the standard process metrics of the prometheus crate's collector.
        assert!(
            name.starts_with("tlsgate_") || name.starts_with("process_"),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                let inner = labels
                    .strip_prefix('{')
                    .and_then(|l| l.strip_suffix('}'))
                    .expect("braced labels");
                for pair in inner.split(',') {
                    let (k, v) = pair.split_once('=').expect("label pair");
                    assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                    assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
                    // Bounded label values: never an address or a host name (a version
                    // number is the one value with dots).
                    let version = name == "tlsgate_build_info" && k == "version";
                    assert!(!v.contains('@') && (version || !v.contains('.')), "{line}");
                }
            }
        }
        assert!(
            helped.contains(name) && typed.contains(name),
            "{name}: HELP/TYPE"
        );
        samples.insert(series.to_string(), value);
    }
    samples
}

/// `promtool check metrics` (issue 14 item 4: base units, `_total` on counters, HELP text):
/// no complaint at all. Skipped with a note when promtool is absent (`scripts/test.sh`
/// installs it, so CI always runs it).
fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        println!("promtool not found: metrics checked by the strict parser only");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "promtool check metrics complained:\n{said}"
    );
}

#[tokio::test]
async fn metrics_move_after_a_relayed_and_a_refused_message() {
    let s = setup("", "[metrics]\nbind = \"127.0.0.1:0\"").await;
    let addr = s.relay.running().metrics_addr().expect("metrics bound");
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/readyz").await.0, 200);
    let (status, before) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let before = parse(&before);
    assert_eq!(before.get("tlsgate_plaintext_refused_total"), Some(&0.0));
    // Which build runs here (issue 14 item 4).
    let build = format!(
        "tlsgate_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(before.get(&build), Some(&1.0), "{before:?}");
    // The standard process metrics (issue 14 item 4): this process's memory, descriptors and
    // start time, read from /proc.
    assert!(
        before
            .get("process_resident_memory_bytes")
            .is_some_and(|rss| *rss > 1_000_000.0),
        "{before:?}"
    );
    assert!(
        before.get("process_open_fds").is_some_and(|n| *n >= 3.0),
        "{before:?}"
    );
    let started = before
        .get("process_start_time_seconds")
        .copied()
        .unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started > 0.0 && started <= now && now - started < 3600.0,
        "{started} {now}"
    );

    // Our own certificate's expiry (issue 14 item 4): the test certificate is rcgen's default,
    // valid until 4096-01-01.
    let not_after = time::macros::datetime!(4096-01-01 0:00 UTC).unix_timestamp() as f64;
    assert_eq!(
        before.get("tlsgate_tls_certificate_expiry_timestamp_seconds"),
        Some(&not_after),
        "{before:?}"
    );
    promtool_check_metrics(&get(addr, "/metrics").await.1);

    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s.sink(MX1, Behaviour::default()).await;
    s.submit("kari@example.no", &["ola@partner.test"], "counted")
        .await;
    mx.wait_for_messages(1, WAIT).await;
    s.wait_queue_empty().await;

    // Refused: an inbound listener does not relay to other domains.
    let mut client = SmtpClient::connect_greeted(s.relay.inbound()).await;
    client.ehlo("mx.sender.test").await;
    assert_eq!(client.cmd("MAIL FROM:<a@sender.test>").await.code, 250);
    assert_eq!(client.cmd("RCPT TO:<x@elsewhere.test>").await.code, 554);
    client.cmd("QUIT").await;

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let after = parse(&get(addr, "/metrics").await.1);
        let value = |k: &str| after.get(k).copied().unwrap_or(0.0);
        let done = value("tlsgate_messages_accepted_total{listener=\"outbound\"}") == 1.0
            && value("tlsgate_deliveries_total{policy_source=\"opportunistic\",result=\"delivered\",tls_level=\"may\"}") == 1.0
            && value(
                "tlsgate_messages_rejected_total{listener=\"inbound\",reason=\"relay_denied\"}",
            ) == 1.0
            && value("tlsgate_connections_total{listener=\"inbound\",tls=\"no\"}") >= 1.0
            && value("tlsgate_queue_messages") == 0.0;
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counters did not move: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
