//! DMARC aggregate reports, sending side (RFC 7489 section 7.2; D4, issue 17 item 4), end to
//! end on loopback: inbound mail from two client addresses, passing and failing DMARC, is
//! recorded per author domain; `dmarc-report send --include-today` sends one report per
//! domain: a DKIM-signed mail through tlsgate's own queue carrying the gzipped XML, whose
//! structure is checked field by field against RFC 7489 Appendix C's schema with a real XML
//! parser, and whose counts are the day's. A destination larger than its `!size` limit and an
//! external destination without authorisation (RFC 7489 7.1) get nothing.

mod common;

use common::dns::TestDns;
use common::mx_sink::Behaviour;
use common::relay::*;
use common::SmtpClient;
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::Value;
use std::time::Duration;
use tlsgate::auth::{AuthPolicy, CheckInput, Verifier};

/// The report collector: mail for `reports.test` and `unauth.test`.
const REPORTS_MX: &str = "127.0.0.5";
/// The second client address; the first is 127.0.0.1.
const SECOND_CLIENT: &str = "127.0.0.7";

/// One XML element: name, text, children (attributes are not used by the schema).
#[derive(Debug, Default)]
struct Node {
    name: String,
    text: String,
    children: Vec<Node>,
}

impl Node {
    fn child(&self, name: &str) -> &Node {
        let found: Vec<&Node> = self.children.iter().filter(|c| c.name == name).collect();
        assert_eq!(found.len(), 1, "exactly one <{name}> in <{}>", self.name);
        found[0]
    }

    fn all(&self, name: &str) -> Vec<&Node> {
        self.children.iter().filter(|c| c.name == name).collect()
    }

    fn text_of(&self, name: &str) -> &str {
        self.child(name).text.as_str()
    }
}

/// Parses `xml` with quick-xml into a tree; entity references are resolved.
fn parse_xml(xml: &str) -> Node {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack = vec![Node::default()];
    loop {
        match reader.read_event().expect("well-formed XML") {
            Event::Start(e) => stack.push(Node {
                name: e.name().into_inner().to_string(),
                ..Node::default()
            }),
            Event::Empty(e) => stack.last_mut().unwrap().children.push(Node {
                name: e.name().into_inner().to_string(),
                ..Node::default()
            }),
            Event::End(_) => {
                let node = stack.pop().unwrap();
                stack.last_mut().expect("balanced").children.push(node);
            }
            Event::Text(t) => stack
                .last_mut()
                .unwrap()
                .text
                .push_str(t.xml10_content().trim()),
            Event::GeneralRef(r) => {
                let c = match r.xml10_content().as_ref() {
                    "amp" => '&',
                    "lt" => '<',
                    "gt" => '>',
                    "quot" => '"',
                    "apos" => '\'',
                    other => panic!("unexpected entity {other}"),
                };
                stack.last_mut().unwrap().text.push(c);
            }
            Event::Eof => break,
            _ => {}
        }
    }
    let mut document = stack.pop().unwrap();
    assert!(stack.is_empty(), "unclosed elements");
    assert_eq!(document.children.len(), 1, "one root element");
    document.children.remove(0)
}

/// A `<xs:sequence>`: the children are exactly these names, in this order, each with its
/// (min, max) occurrences.
fn sequence(node: &Node, spec: &[(&str, usize, usize)]) {
    let names: Vec<&str> = node.children.iter().map(|c| c.name.as_str()).collect();
    let mut i = 0;
    for (name, min, max) in spec {
        let mut n = 0;
        while i < names.len() && names[i] == *name {
            i += 1;
            n += 1;
        }
        assert!(
            n >= *min && n <= *max,
            "<{}>: {n} <{name}> (allowed {min}..{max}): {names:?}",
            node.name
        );
    }
    assert_eq!(
        i,
        names.len(),
        "<{}>: unexpected children {names:?}",
        node.name
    );
}

/// An `<xs:all>`: any order, each name within its (min, max), nothing else.
fn all(node: &Node, spec: &[(&str, usize, usize)]) {
    for c in &node.children {
        assert!(
            spec.iter().any(|(name, _, _)| *name == c.name),
            "<{}>: unexpected <{}>",
            node.name,
            c.name
        );
    }
    for (name, min, max) in spec {
        let n = node.all(name).len();
        assert!(
            n >= *min && n <= *max,
            "<{}>: {n} <{name}> (allowed {min}..{max})",
            node.name
        );
    }
}

fn one_of(value: &str, allowed: &[&str], what: &str) {
    assert!(
        allowed.contains(&value),
        "{what}: {value:?} not in {allowed:?}"
    );
}

fn integer(value: &str, what: &str) {
    assert!(
        !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
        "{what}: {value:?} is not an xs:integer"
    );
}

/// RFC 7489 Appendix C, element by element: `feedback` is a sequence of `version`
/// (xs:decimal), `report_metadata`, `policy_published` and one or more `record`; each type's
/// sequence or all-group, required and optional elements, and enumerations.
fn assert_rfc7489_schema(feedback: &Node) {
    assert_eq!(feedback.name, "feedback");
    sequence(
        feedback,
        &[
            ("version", 1, 1),
            ("report_metadata", 1, 1),
            ("policy_published", 1, 1),
            ("record", 1, usize::MAX),
        ],
    );
    assert!(
        feedback.text_of("version").parse::<f64>().is_ok(),
        "version is an xs:decimal"
    );
    // ReportMetadataType (sequence) with DateRangeType (all).
    let meta = feedback.child("report_metadata");
    sequence(
        meta,
        &[
            ("org_name", 1, 1),
            ("email", 1, 1),
            ("extra_contact_info", 0, 1),
            ("report_id", 1, 1),
            ("date_range", 1, 1),
            ("error", 0, usize::MAX),
        ],
    );
    let range = meta.child("date_range");
    all(range, &[("begin", 1, 1), ("end", 1, 1)]);
    integer(range.text_of("begin"), "begin");
    integer(range.text_of("end"), "end");
    // PolicyPublishedType (all).
    let policy = feedback.child("policy_published");
    all(
        policy,
        &[
            ("domain", 1, 1),
            ("adkim", 0, 1),
            ("aspf", 0, 1),
            ("p", 1, 1),
            ("sp", 1, 1),
            ("pct", 1, 1),
            ("fo", 1, 1),
        ],
    );
    for key in ["adkim", "aspf"] {
        for a in policy.all(key) {
            one_of(&a.text, &["r", "s"], key);
        }
    }
    let dispositions = ["none", "quarantine", "reject"];
    one_of(policy.text_of("p"), &dispositions, "p");
    one_of(policy.text_of("sp"), &dispositions, "sp");
    integer(policy.text_of("pct"), "pct");
    for record in feedback.all("record") {
        sequence(
            record,
            &[("row", 1, 1), ("identifiers", 1, 1), ("auth_results", 1, 1)],
        );
        // RowType (all) with PolicyEvaluatedType (sequence).
        let row = record.child("row");
        all(
            row,
            &[
                ("source_ip", 1, 1),
                ("count", 1, 1),
                ("policy_evaluated", 1, 1),
            ],
        );
        assert!(
            row.text_of("source_ip").parse::<std::net::IpAddr>().is_ok(),
            "source_ip is an IPAddress"
        );
        integer(row.text_of("count"), "count");
        let evaluated = row.child("policy_evaluated");
        sequence(
            evaluated,
            &[
                ("disposition", 1, 1),
                ("dkim", 1, 1),
                ("spf", 1, 1),
                ("reason", 0, usize::MAX),
            ],
        );
        one_of(
            evaluated.text_of("disposition"),
            &dispositions,
            "disposition",
        );
        one_of(evaluated.text_of("dkim"), &["pass", "fail"], "policy dkim");
        one_of(evaluated.text_of("spf"), &["pass", "fail"], "policy spf");
        for reason in evaluated.all("reason") {
            all(reason, &[("type", 1, 1), ("comment", 0, 1)]);
            one_of(
                reason.text_of("type"),
                &[
                    "forwarded",
                    "sampled_out",
                    "trusted_forwarder",
                    "mailing_list",
                    "local_policy",
                    "other",
                ],
                "reason type",
            );
        }
        // IdentifierType (all).
        all(
            record.child("identifiers"),
            &[
                ("envelope_to", 0, 1),
                ("envelope_from", 1, 1),
                ("header_from", 1, 1),
            ],
        );
        // AuthResultType (sequence): DKIM results, then at least one SPF result.
        let auth = record.child("auth_results");
        sequence(auth, &[("dkim", 0, usize::MAX), ("spf", 1, usize::MAX)]);
        for dkim in auth.all("dkim") {
            all(
                dkim,
                &[
                    ("domain", 1, 1),
                    ("selector", 0, 1),
                    ("result", 1, 1),
                    ("human_result", 0, 1),
                ],
            );
            one_of(
                dkim.text_of("result"),
                &[
                    "none",
                    "pass",
                    "fail",
                    "policy",
                    "neutral",
                    "temperror",
                    "permerror",
                ],
                "dkim result",
            );
        }
        for spf in auth.all("spf") {
            all(spf, &[("domain", 1, 1), ("scope", 1, 1), ("result", 1, 1)]);
            one_of(spf.text_of("scope"), &["helo", "mfrom"], "spf scope");
            one_of(
                spf.text_of("result"),
                &[
                    "none",
                    "neutral",
                    "pass",
                    "fail",
                    "softfail",
                    "temperror",
                    "permerror",
                ],
                "spf result",
            );
        }
    }
}

/// The relay with `[dmarc_reporting]` on and a DKIM key for the reporting domain
/// `example.no` (kept in `keys`), on its own test DNS.
async fn start(keys: &std::path::Path) -> Setup {
    let dns = TestDns::start().await;
    let dkim = dkim_key(&dns, keys, "example.no", "dmarc");
    setup_dnssec(
        dns,
        "",
        "",
        &format!(
            r#"
[[outbound.dkim]]
domain = "example.no"
selector = "dmarc"
key = "{dkim}"

[dmarc_reporting]
enabled = true
organization_name = "Example Bank ASA"
contact_info = "https://example.no/dmarc"
from = "dmarc-noreply@example.no"
"#,
            dkim = dkim.display()
        ),
    )
    .await
}

async fn send_from(client: &mut SmtpClient, from: &str, n: usize) {
    for i in 0..n {
        let reply = client
            .send_mail(
                from,
                &["ola@example.no"],
                &format!("From: <{from}>\r\nSubject: message {i}\r\n\r\nhei\r\n"),
            )
            .await;
        assert_eq!(reply.code, 250, "{}", reply.text());
    }
}

/// Issue 17 item 4: a day with passing and failing messages gives one report for the domain
/// (RFC 7489 7.2), gzip XML that matches Appendix C with the right counts (3 passing from
/// one address, 2 failing from another, the failing ones quarantined as applied), DKIM-signed
/// by the reporting domain, queued with NOTIFY=NEVER; the `!size` limit is honoured (6.4) and
/// an external destination without authorisation gets nothing (7.1).
#[tokio::test]
async fn a_day_is_reported_to_each_domain_that_asks() {
    let keys = tempfile::tempdir().unwrap();
    let s = start(keys.path()).await;
    // bank.test: SPF allows 127.0.0.1 only; p=quarantine; two destinations at reports.test
    // (another organisation, which authorises the reports), one of them too small.
    s.dns.add_txt("bank.test", "v=spf1 ip4:127.0.0.1 -all");
    s.dns.add_txt(
        "_dmarc.bank.test",
        "v=DMARC1; p=quarantine; rua=mailto:dmarc@reports.test!10m,mailto:small@reports.test!1k",
    );
    s.dns
        .add_txt("bank.test._report._dmarc.reports.test", "v=DMARC1");
    // other.test: passes, but its destination does not authorise reports about it.
    s.dns.add_txt("other.test", "v=spf1 ip4:127.0.0.1 -all");
    s.dns.add_txt(
        "_dmarc.other.test",
        "v=DMARC1; p=none; rua=mailto:dmarc@unauth.test",
    );
    for domain in ["reports.test", "unauth.test"] {
        s.dns.add_mx(domain, 10, "mx.reports.test");
    }
    s.dns.add_ip("mx.reports.test", ip(REPORTS_MX));
    let collector = s.sink(REPORTS_MX, Behaviour::default()).await;

    let mut first = SmtpClient::connect_greeted(s.relay.inbound()).await;
    first.ehlo("mail.bank.test").await;
    send_from(&mut first, "kari@bank.test", 3).await;
    send_from(&mut first, "per@other.test", 1).await;
    let mut second = SmtpClient::connect_from(s.relay.inbound(), ip(SECOND_CLIENT)).await;
    second.ehlo("mail.bank.test").await;
    send_from(&mut second, "kari@bank.test", 2).await;

    // `dmarc-report show --json`: today's counters.
    let (status, body) = tlsgate::admin::request(&s.relay.config, "GET", "/dmarc-report")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let view: Value = serde_json::from_str(&body).unwrap();
    let today = &view["days"][0]["domains"];
    let total = |domain: &str| -> u64 {
        today[domain]["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["row"]["count"].as_u64().unwrap())
            .sum()
    };
    assert_eq!((total("bank.test"), total("other.test")), (5, 1), "{body}");

    let (status, body) = tlsgate::admin::request(
        &s.relay.config,
        "POST",
        "/dmarc-report/send?include_today=true",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let sent: Vec<Value> = serde_json::from_str(&body).unwrap();
    let result = |rua: &str| -> Vec<&str> {
        sent.iter()
            .filter(|s| s["rua"] == rua)
            .map(|s| s["result"].as_str().unwrap())
            .collect()
    };
    assert_eq!(
        result("mailto:dmarc@reports.test!10m"),
        ["mailto"],
        "{body}"
    );
    assert_eq!(
        result("mailto:small@reports.test!1k"),
        ["too_large"],
        "{body}"
    );
    assert_eq!(
        result("mailto:dmarc@unauth.test"),
        ["not_authorized"],
        "{body}"
    );
    assert_eq!(sent.len(), 3, "{body}");

    // Exactly one report mail arrives: at the one destination that takes it.
    collector.wait_for_messages(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails = collector.messages();
    assert_eq!(mails.len(), 1, "{mails:?}");
    let mail = &mails[0];
    assert_eq!(mail.rcpts, ["dmarc@reports.test"]);
    assert!(
        mail.mail_from.starts_with("<dmarc-noreply@example.no>"),
        "{}",
        mail.mail_from
    );
    // No DSN for a report (no loops between reporters).
    assert!(
        mail.rcpt_params[0].contains("NOTIFY=NEVER"),
        "{:?}",
        mail.rcpt_params
    );

    // RFC 7489 7.2.1.1: subject, attachment type and file name.
    let parsed = MessageParser::default().parse(&mail.data).expect("parses");
    let subject = parsed.subject().unwrap_or("");
    assert!(
        subject.starts_with("Report Domain: bank.test Submitter: example.no Report-ID: <"),
        "{subject}"
    );
    let attachment = parsed.attachment(0).expect("an attachment");
    let ct = attachment.content_type().unwrap();
    assert_eq!((ct.ctype(), ct.subtype()), ("application", Some("gzip")));
    let name = attachment.attachment_name().expect("a file name");
    assert!(name.ends_with(".xml.gz"), "{name}");
    let fields: Vec<&str> = name.trim_end_matches(".xml.gz").split('!').collect();
    assert_eq!(fields[..2], ["example.no", "bank.test"], "{name}");
    let begin: u64 = fields[2].parse().unwrap();
    assert_eq!(begin % 86_400, 0, "the UTC day starts the range");

    // DKIM-signed by the reporting domain's key, and the signature verifies.
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
            mail_from: Some("dmarc-noreply@example.no"),
            message: &mail.data,
        })
        .await;
    assert_eq!(outcome.dkim.len(), 1, "{outcome:?}");
    assert_eq!(outcome.dkim[0].result.as_str(), "pass", "{outcome:?}");
    assert_eq!(outcome.dkim[0].domain.as_deref(), Some("example.no"));

    // The XML: Appendix C's structure, then the day's content.
    let xml = String::from_utf8(gunzip(attachment.contents())).expect("UTF-8");
    let feedback = parse_xml(&xml);
    assert_rfc7489_schema(&feedback);
    let meta = feedback.child("report_metadata");
    assert_eq!(meta.text_of("org_name"), "Example Bank ASA");
    assert_eq!(meta.text_of("email"), "dmarc-noreply@example.no");
    assert_eq!(
        meta.text_of("extra_contact_info"),
        "https://example.no/dmarc"
    );
    assert!(subject.contains(meta.text_of("report_id")), "{subject}");
    assert_eq!(meta.child("date_range").text_of("begin"), begin.to_string());
    let policy = feedback.child("policy_published");
    assert_eq!(policy.text_of("domain"), "bank.test");
    assert_eq!(policy.text_of("p"), "quarantine");
    assert_eq!(policy.text_of("sp"), "quarantine", "sp defaults to p");
    assert_eq!(policy.text_of("pct"), "100");
    let mut rows: Vec<(String, String, String, String, String)> = feedback
        .all("record")
        .iter()
        .map(|r| {
            let row = r.child("row");
            let e = row.child("policy_evaluated");
            assert_eq!(r.child("identifiers").text_of("header_from"), "bank.test");
            assert_eq!(r.child("identifiers").text_of("envelope_from"), "bank.test");
            let spf = r.child("auth_results").child("spf");
            assert_eq!(spf.text_of("domain"), "bank.test");
            assert_eq!(spf.text_of("scope"), "mfrom");
            (
                row.text_of("source_ip").to_string(),
                row.text_of("count").to_string(),
                e.text_of("disposition").to_string(),
                e.text_of("spf").to_string(),
                spf.text_of("result").to_string(),
            )
        })
        .collect();
    rows.sort();
    let row = |a: &str, b: &str, c: &str, d: &str, e: &str| {
        (a.into(), b.into(), c.into(), d.into(), e.into())
    };
    assert_eq!(
        rows,
        [
            row("127.0.0.1", "3", "none", "pass", "pass"),
            row(SECOND_CLIENT, "2", "quarantine", "fail", "fail"),
        ]
    );

    let metrics = s.relay.running().metrics().render();
    for (result, n) in [("mailto", 1), ("too_large", 1), ("not_authorized", 1)] {
        assert!(
            metrics.contains(&format!(
                "tlsgate_dmarc_reports_sent_total{{result=\"{result}\"}} {n}"
            )),
            "{metrics}"
        );
    }
}

/// RFC 7489 7.2: a refused message is reported with the disposition applied (`reject`); a
/// destination within the author's organisation needs no authorisation record (7.1); a
/// domain whose record has no `rua` gets nothing; the counters survive a restart.
#[tokio::test]
async fn rejections_are_reported_and_counters_survive_a_restart() {
    let keys = tempfile::tempdir().unwrap();
    let mut s = start(keys.path()).await;
    // strict.test: SPF allows only 192.0.2.1, p=reject, reports to its own subdomain.
    s.dns.add_txt("strict.test", "v=spf1 ip4:192.0.2.1 -all");
    s.dns.add_txt(
        "_dmarc.strict.test",
        "v=DMARC1; p=reject; pct=100; rua=mailto:dmarc@reports.strict.test",
    );
    s.dns.add_mx("reports.strict.test", 10, "mx.reports.test");
    // quiet.test: a DMARC record without rua.
    s.dns.add_txt("quiet.test", "v=spf1 ip4:127.0.0.1 -all");
    s.dns.add_txt("_dmarc.quiet.test", "v=DMARC1; p=none");
    s.dns.add_ip("mx.reports.test", ip(REPORTS_MX));
    let collector = s.sink(REPORTS_MX, Behaviour::default()).await;

    let mut client = SmtpClient::connect_greeted(s.relay.inbound()).await;
    client.ehlo("mail.strict.test").await;
    let reply = client
        .send_mail(
            "ceo@strict.test",
            &["ola@example.no"],
            "From: <ceo@strict.test>\r\nSubject: pay\r\n\r\npay\r\n",
        )
        .await;
    assert_eq!(
        (reply.code, reply.enhanced()),
        (550, "5.7.1"),
        "{}",
        reply.text()
    );
    send_from(&mut client, "kari@quiet.test", 1).await;
    drop(client);

    // Flushed at shutdown, read again at start.
    s.restart().await;
    let (status, body) = tlsgate::admin::request(&s.relay.config, "GET", "/dmarc-report")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let view: tlsgate::admin::DmarcReportView = serde_json::from_str(&body).unwrap();
    let text = tlsgate::admin::render_dmarc_report(&view);
    assert!(text.contains("strict.test  1 messages"), "{text}");
    assert!(text.contains("quiet.test  1 messages"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("127.0.0.1") && l.contains("reject") && l.contains("spf=fail")),
        "{text}"
    );

    let (status, body) = tlsgate::admin::request(
        &s.relay.config,
        "POST",
        "/dmarc-report/send?include_today=true",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let sent: Vec<Value> = serde_json::from_str(&body).unwrap();
    let by_domain = |d: &str| -> Vec<String> {
        sent.iter()
            .filter(|s| s["domain"] == d)
            .map(|s| s["result"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(by_domain("strict.test"), ["mailto"], "{body}");
    assert_eq!(by_domain("quiet.test"), ["no_record"], "{body}");

    let mails = collector.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].rcpts, ["dmarc@reports.strict.test"]);
    let parsed = MessageParser::default()
        .parse(&mails[0].data)
        .expect("parses");
    let attachment = parsed.attachment(0).expect("an attachment");
    let xml = String::from_utf8(gunzip(attachment.contents())).expect("UTF-8");
    let feedback = parse_xml(&xml);
    assert_rfc7489_schema(&feedback);
    let policy = feedback.child("policy_published");
    assert_eq!(
        (
            policy.text_of("domain"),
            policy.text_of("p"),
            policy.text_of("pct")
        ),
        ("strict.test", "reject", "100")
    );
    let records = feedback.all("record");
    assert_eq!(records.len(), 1, "{xml}");
    let row = records[0].child("row");
    assert_eq!(row.text_of("source_ip"), "127.0.0.1");
    assert_eq!(row.text_of("count"), "1");
    let evaluated = row.child("policy_evaluated");
    assert_eq!(
        (
            evaluated.text_of("disposition"),
            evaluated.text_of("dkim"),
            evaluated.text_of("spf")
        ),
        ("reject", "fail", "fail")
    );
    assert!(
        evaluated.all("reason").is_empty(),
        "applied as asked: {xml}"
    );
}
