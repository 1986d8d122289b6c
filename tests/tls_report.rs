//! SMTP TLS reporting, sending side (RFC 8460; D3, issue 13 items 2, 3 and 5), end to end on
//! loopback: the relay delivers to a listed partner (one success, two kinds of failure),
//! restarts, and `tls-report send --include-today` sends one report to the partner's `rua`
//! targets: a DKIM-signed mail in RFC 8460 5.3's format through tlsgate's own queue, and the
//! same JSON by HTTPS POST (5.4) to a server whose certificate comes from the test CA
//! (`outbound.extra_trust_roots`).

mod common;

use common::dns::TestDns;
use common::mx_sink::Behaviour;
use common::relay::*;
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tlsgate::auth::{AuthPolicy, CheckInput, Verifier};
use tlsgate::queue::{QueueId, RecipientStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The reports' collector: mail for `reports.test` and HTTPS at `collector.reports.test`.
const REPORTS_MX: &str = "127.0.0.5";
const COLLECTOR: &str = "127.0.0.6";

/// One POST as the test HTTPS server received it.
#[derive(Debug, Clone)]
struct Post {
    request_line: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// A one-request-at-a-time HTTPS server answering 200 to every request, keeping each.
async fn https_collector(ca: &common::TestCa) -> (u16, Arc<Mutex<Vec<Post>>>) {
    let tls = server_tls(ca, &["collector.reports.test"]);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind(at(COLLECTOR, 0))
        .await
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let posts = Arc::new(Mutex::new(Vec::new()));
    let kept = posts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let Ok(Ok(mut tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                continue;
            };
            let mut data = Vec::new();
            let mut buf = [0u8; 8192];
            // Bounded: 1 MiB and 10 s per request.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            let post = loop {
                let n = match tokio::time::timeout_at(deadline, tls.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => n,
                    _ => break None,
                };
                data.extend_from_slice(&buf[..n]);
                assert!(data.len() < 1 << 20, "request too large");
                let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&data[..end]).to_string();
                let header = |name: &str| {
                    head.lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.trim().to_string())
                };
                let length: usize = header("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                if data.len() >= end + 4 + length {
                    break Some(Post {
                        request_line: head.lines().next().unwrap_or("").to_string(),
                        content_type: header("content-type"),
                        body: data[end + 4..end + 4 + length].to_vec(),
                    });
                }
            };
            if let Some(post) = post {
                kept.lock().unwrap().push(post);
            }
            let _ = tls
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
            let _ = tls.shutdown().await;
        }
    });
    (port, posts)
}

/// RFC 8460 Appendix B, checked field by field: the required members with their JSON types,
/// the optional ones with theirs when present, no `null` anywhere.
fn assert_rfc8460_schema(report: &Value) {
    let string = |v: &Value, what: &str| {
        assert!(v.is_string(), "{what} must be a string: {report}");
    };
    let datetime = |v: &Value, what: &str| {
        string(v, what);
        assert!(
            tlsgate::datetime::parse_rfc3339(v.as_str().unwrap()).is_some(),
            "{what} must be an RFC 3339 date-time: {v}"
        );
    };
    let count = |v: &Value, what: &str| {
        assert!(
            v.is_u64(),
            "{what} must be a non-negative integer: {report}"
        );
    };
    let ip = |v: &Value, what: &str| {
        string(v, what);
        assert!(
            v.as_str().unwrap().parse::<std::net::IpAddr>().is_ok(),
            "{what} must be an IP address: {v}"
        );
    };
    string(&report["organization-name"], "organization-name");
    datetime(&report["date-range"]["start-datetime"], "start-datetime");
    datetime(&report["date-range"]["end-datetime"], "end-datetime");
    string(&report["contact-info"], "contact-info");
    string(&report["report-id"], "report-id");
    let policies = report["policies"].as_array().expect("policies is an array");
    assert!(!policies.is_empty());
    for p in policies {
        let policy = &p["policy"];
        let kind = policy["policy-type"].as_str().expect("policy-type");
        assert!(["tlsa", "sts", "no-policy-found"].contains(&kind), "{kind}");
        string(&policy["policy-domain"], "policy-domain");
        for key in ["policy-string", "mx-host"] {
            if let Some(list) = policy.get(key) {
                let list = list.as_array().expect("an array of strings");
                list.iter().for_each(|s| string(s, key));
            }
        }
        count(
            &p["summary"]["total-successful-session-count"],
            "success count",
        );
        count(
            &p["summary"]["total-failure-session-count"],
            "failure count",
        );
        for f in p
            .get("failure-details")
            .map(|f| f.as_array().expect("failure-details is an array").clone())
            .unwrap_or_default()
        {
            let rt = f["result-type"].as_str().expect("result-type");
            assert!(
                [
                    "starttls-not-supported",
                    "certificate-host-mismatch",
                    "certificate-expired",
                    "certificate-not-trusted",
                    "validation-failure",
                    "tlsa-invalid",
                    "dnssec-invalid",
                    "dane-required",
                    "sts-policy-fetch-error",
                    "sts-policy-invalid",
                    "sts-webpki-invalid"
                ]
                .contains(&rt),
                "{rt}"
            );
            count(&f["failed-session-count"], "failed-session-count");
            for (key, value) in f.as_object().unwrap() {
                match key.as_str() {
                    "sending-mta-ip" | "receiving-ip" => ip(value, key),
                    "receiving-mx-hostname"
                    | "receiving-mx-helo"
                    | "additional-information"
                    | "failure-reason-code"
                    | "result-type" => string(value, key),
                    "failed-session-count" => {}
                    other => panic!("unknown failure-details member {other}"),
                }
            }
        }
    }
}

async fn wait_status(s: &Setup, id: &str, status: RecipientStatus) {
    let id = QueueId::parse(id).unwrap();
    wait_until(
        || {
            s.relay
                .running()
                .store()
                .recipient_states(&id)
                .ok()
                .and_then(|states| states.first().map(|r| r.status))
                == Some(status)
        },
        "recipient state",
    )
    .await;
}

/// Issue 13 items 2, 3 and 5: one success and two kinds of failure to a listed domain without
/// DANE (`no-policy-found`, item 3), counted across a restart, reported once by mail (RFC
/// 8460 5.3, DKIM-signed, section 3) and once by HTTPS POST (5.4) with the same JSON.
#[tokio::test]
async fn a_day_is_reported_by_mail_and_https() {
    let keys = tempfile::tempdir().unwrap();
    let list = keys.path().join("list.txt");
    std::fs::write(&list, "partner.test\n").unwrap();
    let dns = TestDns::start().await;
    let dkim = dkim_key(&dns, keys.path(), "example.no", "tlsrpt");
    let mut s = setup_on(
        dns,
        r#"retry_schedule = ["1h"]
max_messages_per_connection = 1"#,
        &format!(
            r#"
[domain_list]
path = "{list}"

[[outbound.dkim]]
domain = "example.no"
selector = "tlsrpt"
key = "{dkim}"

[tls_reporting]
enabled = true
organization_name = "Example Bank ASA"
contact_info = "mailto:tlsrpt-contact@example.no"
submitter = "example.no"
from = "tlsrpt-noreply@example.no"
"#,
            list = list.display(),
            dkim = dkim.display()
        ),
    )
    .await;
    let (https_port, posts) = https_collector(&s.relay.ca).await;
    s.dns.add_txt(
        "_smtp._tls.partner.test",
        &format!(
            "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test,https://collector.reports.test:{https_port}/v1/tlsrpt"
        ),
    );
    s.dns.add_ip("collector.reports.test", ip(COLLECTOR));
    s.dns.add_mx("reports.test", 10, "mx.reports.test");
    s.dns.add_ip("mx.reports.test", ip(REPORTS_MX));
    let collector_mx = s.sink(REPORTS_MX, Behaviour::default()).await;

    // 1. A good session: valid certificate for the MX host name (T9).
    let mx = s
        .tls_sink(MX1, &["mx1.partner.test"], Behaviour::default())
        .await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    s.submit("kari@example.no", &["ola@partner.test"], "one")
        .await;
    mx.wait_for_messages(1, WAIT).await;
    // Delivered and removed from the queue: the session is over and counted.
    s.wait_queue_empty().await;
    // 2. A certificate for another name: certificate-host-mismatch (RFC 8460 4.3.1).
    mx.set_behaviour(Behaviour {
        tls: Some(server_tls(&s.relay.ca, &["other.test"])),
        ..Behaviour::default()
    });
    let second = s
        .submit("kari@example.no", &["ola@partner.test"], "two")
        .await;
    wait_status(&s, &second, RecipientStatus::Deferred).await;
    // 3. No STARTTLS at a listed domain: starttls-not-supported.
    mx.set_behaviour(Behaviour {
        advertise_starttls: false,
        ..Behaviour::default()
    });
    let third = s
        .submit("kari@example.no", &["ola@partner.test"], "three")
        .await;
    wait_status(&s, &third, RecipientStatus::Deferred).await;

    // The counters survive a restart (flushed at shutdown).
    s.restart().await;

    let (status, body) = tlsgate::admin::request(
        &s.relay.config,
        "POST",
        "/tls-report/send?include_today=true",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let sent: Vec<Value> = serde_json::from_str(&body).unwrap();
    let for_partner: Vec<&Value> = sent
        .iter()
        .filter(|s| s["domain"] == "partner.test")
        .collect();
    assert_eq!(for_partner.len(), 2, "{body}");
    assert!(
        for_partner.iter().any(|s| s["result"] == "mailto"),
        "{body}"
    );
    assert!(for_partner.iter().any(|s| s["result"] == "https"), "{body}");

    // Exactly one report mail reaches the rua's MX.
    collector_mx.wait_for_messages(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reports: Vec<_> = collector_mx
        .messages()
        .into_iter()
        .filter(|m| m.rcpts == ["tlsrpt@reports.test"])
        .collect();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let mail = &reports[0];
    // From the configured sender, never asking for a DSN (no report loops).
    assert!(
        mail.mail_from.starts_with("<tlsrpt-noreply@example.no>"),
        "{}",
        mail.mail_from
    );
    assert!(
        mail.rcpt_params[0].contains("NOTIFY=NEVER"),
        "{:?}",
        mail.rcpt_params
    );

    // RFC 8460 5.3: the MIME structure and header fields.
    let parsed = MessageParser::default().parse(&mail.data).expect("parses");
    let ct = parsed.content_type().expect("content type");
    assert_eq!((ct.ctype(), ct.subtype()), ("multipart", Some("report")));
    assert_eq!(ct.attribute("report-type"), Some("tlsrpt"));
    let header = |name: &str| {
        parsed
            .header_raw(name)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(header("TLS-Report-Domain"), "partner.test");
    assert_eq!(header("TLS-Report-Submitter"), "example.no");
    let subject = parsed.subject().unwrap_or("");
    assert!(
        subject.starts_with("Report Domain: partner.test Submitter: example.no Report-ID: <"),
        "{subject}"
    );
    assert!(
        !header("DKIM-Signature").is_empty(),
        "DKIM-signed (RFC 8460 3)"
    );
    let parts = parsed.parts[0].sub_parts().expect("multipart").to_vec();
    assert_eq!(parts.len(), 2);
    let text = &parsed.parts[parts[0] as usize];
    let text_ct = text.content_type().unwrap();
    assert_eq!(
        (text_ct.ctype(), text_ct.subtype()),
        ("text", Some("plain"))
    );
    let attachment = &parsed.parts[parts[1] as usize];
    let att_ct = attachment.content_type().unwrap();
    assert_eq!(
        (att_ct.ctype(), att_ct.subtype()),
        ("application", Some("tlsrpt+gzip"))
    );
    let name = attachment.attachment_name().expect("a file name");
    let fields: Vec<&str> = name.trim_end_matches(".json.gz").split('!').collect();
    assert!(name.ends_with(".json.gz"), "{name}");
    assert_eq!(fields[..2], ["example.no", "partner.test"], "{name}");
    let (begin, end): (i64, i64) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
    assert_eq!(begin % 86_400, 0, "the UTC day starts the range");
    assert!(end > begin && end < begin + 86_400);

    // The signature verifies with the published key.
    let verifier = Verifier::new(
        &[s.dns.addr],
        "mx.reports.test",
        Duration::from_secs(10),
        AuthPolicy::default(),
    )
    .unwrap();
    let outcome = verifier
        .check(CheckInput {
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "mx.tlsgate.test",
            mail_from: Some("tlsrpt-noreply@example.no"),
            message: &mail.data,
        })
        .await;
    assert_eq!(outcome.dkim.len(), 1, "{outcome:?}");
    assert_eq!(outcome.dkim[0].result.as_str(), "pass", "{outcome:?}");

    // The JSON: RFC 8460 schema, and the day's counts.
    let json = gunzip(attachment.contents());
    let report: Value = serde_json::from_slice(&json).expect("JSON");
    assert_rfc8460_schema(&report);
    assert_eq!(report["organization-name"], "Example Bank ASA");
    assert_eq!(report["contact-info"], "mailto:tlsrpt-contact@example.no");
    assert!(subject.contains(report["report-id"].as_str().unwrap()));
    let policies = report["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 1, "{report}");
    let p = &policies[0];
    // Item 3: a listed domain without DANE or MTA-STS is reported as no-policy-found.
    assert_eq!(p["policy"]["policy-type"], "no-policy-found");
    assert_eq!(p["policy"]["policy-domain"], "partner.test");
    assert_eq!(p["summary"]["total-successful-session-count"], 1);
    assert_eq!(p["summary"]["total-failure-session-count"], 2);
    let mut failures: Vec<(String, u64)> = p["failure-details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["receiving-mx-hostname"], "mx1.partner.test");
            assert_eq!(f["receiving-ip"], MX1);
            assert_eq!(f["sending-mta-ip"], "127.0.0.1");
            (
                f["result-type"].as_str().unwrap().to_string(),
                f["failed-session-count"].as_u64().unwrap(),
            )
        })
        .collect();
    failures.sort();
    assert_eq!(
        failures,
        [
            ("certificate-host-mismatch".to_string(), 1),
            ("starttls-not-supported".to_string(), 1)
        ]
    );

    // RFC 8460 5.4: the same report by POST, gzipped, with its media type.
    let posts = posts.lock().unwrap().clone();
    assert_eq!(posts.len(), 1, "{posts:?}");
    assert_eq!(posts[0].request_line, "POST /v1/tlsrpt HTTP/1.1");
    assert_eq!(
        posts[0].content_type.as_deref(),
        Some("application/tlsrpt+gzip")
    );
    assert_eq!(gunzip(&posts[0].body), json);
}

/// As [`setup`], with the test's own DNS (the DKIM key is published before the relay starts).
async fn setup_on(dns: TestDns, delivery: &str, extra: &str) -> Setup {
    setup_dnssec(dns, "", delivery, extra).await
}
