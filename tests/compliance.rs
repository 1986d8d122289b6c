//! T7: `tlsgate domains check` and `tlsgate probe`, run as the real binary against test DNS and
//! SMTP sinks on loopback, validating exactly as delivery would.

mod common;

use common::dns::TestDns;
use common::mx_sink::{free_port, Behaviour, Sink};
use common::relay::{server_tls, server_tls_from_pem};
use common::TestCa;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

struct World {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    _dns: TestDns,
    _sinks: Vec<Sink>,
}

/// A listed domain beyond the base world's: its name, the loopback address of its one MX host
/// `mx1.<domain>`, and the TLS its sink presents.
struct Partner {
    domain: &'static str,
    ip: &'static str,
    tls: std::sync::Arc<rustls::ServerConfig>,
}

async fn world() -> World {
    world_with(|_| Vec::new()).await
}

/// The base world plus the listed `partners` (made with the world's test CA), each with its
/// own sink on the common SMTP port.
async fn world_with(partners: impl FnOnce(&TestCa) -> Vec<Partner>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let partners = partners(&ca);
    let dns = TestDns::start().await;
    let (port, good) = loop {
        let port = free_port();
        let good = Sink::try_start(
            SocketAddr::new("127.0.0.2".parse().unwrap(), port),
            Behaviour {
                tls: Some(server_tls(&ca, &["mx1.good.test"])),
                ..Behaviour::default()
            },
        )
        .await;
        if let Ok(sink) = good {
            break (port, sink);
        }
    };
    let plain = Sink::try_start(
        SocketAddr::new("127.0.0.3".parse().unwrap(), port),
        Behaviour::default(),
    )
    .await
    .expect("second sink on the same port");
    // STARTTLS offered, then garbage instead of a TLS handshake.
    let broken = Sink::try_start(
        SocketAddr::new("127.0.0.4".parse().unwrap(), port),
        Behaviour {
            tls: Some(server_tls(&ca, &["mx1.broken.test"])),
            break_handshake: true,
            ..Behaviour::default()
        },
    )
    .await
    .expect("third sink on the same port");
    dns.add_mx("broken.test", 10, "mx1.broken.test");
    dns.add_ip("mx1.broken.test", "127.0.0.4".parse().unwrap());
    dns.add_mx("good.test", 10, "mx1.good.test");
    dns.add_ip("mx1.good.test", "127.0.0.2".parse().unwrap());
    dns.add_mx("bad.test", 10, "mx1.bad.test");
    dns.add_ip("mx1.bad.test", "127.0.0.3".parse().unwrap());
    dns.add_mx("unlisted.test", 10, "mx1.bad.test");
    let mut sinks = vec![good, plain, broken];
    let mut list_text = String::from(
        "Selskapsnavn;Organisasjonsnummer;Domene med tvungen TLS;Dato innmeldt;Støtte for krav 5.2.4\n\
         Good AS;1;good.test;2026-01-01;Ja\nBad AS;2;bad.test;2026-01-01;Nei\n",
    );
    for (n, p) in partners.into_iter().enumerate() {
        let mx = format!("mx1.{}", p.domain);
        let sink = Sink::try_start(
            SocketAddr::new(p.ip.parse().unwrap(), port),
            Behaviour {
                tls: Some(p.tls),
                ..Behaviour::default()
            },
        )
        .await
        .expect("partner sink on the common port");
        sinks.push(sink);
        dns.add_mx(p.domain, 10, &mx);
        dns.add_ip(&mx, p.ip.parse().unwrap());
        list_text.push_str(&format!(
            "Partner {n} AS;{};{};2026-01-01;Ja\n",
            n + 10,
            p.domain
        ));
    }

    let list = dir.path().join("list.csv");
    std::fs::write(&list, list_text).unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, &ca.cert_pem).unwrap();
    let (cert, key) = ca.write_server_files(dir.path(), &[common::HOSTNAME]);
    let text = common::base_config(
        dir.path(),
        &cert,
        &key,
        &format!("[domain_list]\npath = \"{}\"\n", list.display()),
    )
    .replace("127.0.0.1:9", &dns.addr.to_string())
    .replace(
        "relay_networks = [\"127.0.0.0/8\"]",
        &format!(
            "relay_networks = [\"127.0.0.0/8\"]\nsmtp_port = {port}\nextra_trust_roots = [\"{}\"]",
            ca_path.display()
        ),
    );
    let config = dir.path().join("tlsgate.toml");
    std::fs::write(&config, text).unwrap();
    World {
        _dir: dir,
        config,
        _dns: dns,
        _sinks: sinks,
    }
}

/// Runs the binary with a bounded wait; returns (exit success, stdout, stderr).
async fn tlsgate(config: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("tlsgate finished in time")
        .expect("tlsgate ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn domains_check_reports_every_listed_domain_and_fails_on_any_failure() {
    let w = world().await;
    let (ok, stdout, stderr) = tlsgate(&w.config, &["domains", "check", "--json"]).await;
    assert!(!ok, "bad.test fails, so the exit status is non-zero");
    assert!(stderr.contains("bad.test"), "{stderr}");
    let reports: serde_json::Value = serde_json::from_str(&stdout).expect("JSON output");
    let reports = reports.as_array().expect("array");
    assert_eq!(reports.len(), 2);
    let by_name = |n: &str| {
        reports
            .iter()
            .find(|r| r["domain"] == n)
            .unwrap_or_else(|| panic!("{n} reported"))
    };
    let good = by_name("good.test");
    assert_eq!(good["pass"], true);
    assert_eq!(good["listed"], true);
    assert_eq!(good["level"], "verify");
    let host = &good["hosts"][0];
    assert_eq!(host["mx_host"], "mx1.good.test");
    assert!(host["tls_version"]
        .as_str()
        .is_some_and(|v| v.starts_with("TLSv1.")));
    assert!(host["cipher"].as_str().is_some_and(|c| !c.is_empty()));
    assert!(
        host["cert_issuer"]
            .as_str()
            .is_some_and(|i| i.contains("tlsgate test CA")),
        "{host}"
    );
    assert!(host["cert_not_after"].as_str().is_some());
    assert_eq!(host["cert_sha256"].as_str().map(str::len), Some(64));
    // The test CA is a root of outbound.extra_trust_roots, not a public one: the pass says so
    // (Bits 5.1.2; review finding: the report did not), without making it a warning.
    assert_eq!(host["private_root"], true, "{host}");
    assert!(
        host["reason"].as_str().is_some_and(|r| r.ends_with(
            "(the certificate chains to a root from outbound.extra_trust_roots, not to a \
             publicly trusted root)"
        )),
        "{host}"
    );
    assert_eq!(good["verdict"], "pass");

    let bad = by_name("bad.test");
    assert_eq!(bad["pass"], false);
    assert_eq!(bad["hosts"][0]["reason"], "no STARTTLS offered");
}

/// Issue 12 item 1: the probe reports what delivery would do. For an unlisted domain whose MX
/// breaks the TLS handshake, delivery retries in plaintext (`may`, RFC 7435), so the probe
/// passes and says so, naming the TLS failure; it does not report "fail".
#[tokio::test]
async fn probe_of_a_may_domain_with_broken_tls_says_it_would_deliver_without_tls() {
    let w = world().await;
    let (ok, stdout, stderr) = tlsgate(&w.config, &["probe", "broken.test", "--json"]).await;
    assert!(ok, "{stdout}{stderr}");
    let reports: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let host = &reports[0]["hosts"][0];
    assert_eq!(host["pass"], true, "{host}");
    assert_eq!(host["level"], "may");
    assert_eq!(host["policy_source"], "opportunistic");
    assert_eq!(host["tls_version"], serde_json::Value::Null);
    assert!(
        host["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("would deliver without TLS: TLS failed (")),
        "{host}"
    );
    assert!(host["tls_failed_then_plaintext"].is_string(), "{host}");
    // The test DNS serves no root DNSKEY: the self-check finds DNSSEC unavailable, and the
    // report says so instead of blaming the zone (D5).
    assert_eq!(
        host["tlsa"][0],
        "not looked up (DNSSEC UNAVAILABLE, DANE is off: the resolver returns no DNSKEY for the \
         root zone)"
    );
}

#[tokio::test]
async fn domains_check_of_passing_domains_exits_zero_with_a_table() {
    let w = world().await;
    let (ok, stdout, stderr) =
        tlsgate(&w.config, &["domains", "check", "--domain", "good.test"]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("mx1.good.test"), "{stdout}");
    assert!(stdout.contains("pass"), "{stdout}");
    assert!(stdout.contains("delivery would succeed"), "{stdout}");
}

/// Arguments that cannot work are refused before anything is checked (a zero timeout or
/// parallelism, an HTML report where no file can be written), and a domain given twice is
/// checked and counted once.
#[tokio::test]
async fn domains_check_refuses_bad_arguments_at_once_and_checks_a_repeated_domain_once() {
    let w = world().await;
    for (args, says) in [
        (
            &["domains", "check", "--timeout", "0s"][..],
            "must be more than 0s",
        ),
        (
            &["domains", "check", "--parallel", "0"][..],
            "must be at least 1",
        ),
    ] {
        let (ok, stdout, stderr) = tlsgate(&w.config, args).await;
        assert!(!ok, "{args:?} refused");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: nothing checked: {stdout}");
    }
    let page = w._dir.path().join("no-such-directory").join("report.html");
    let page_arg = page.to_str().unwrap().to_string();
    let (ok, stdout, stderr) = tlsgate(&w.config, &["domains", "check", "--html", &page_arg]).await;
    assert!(!ok, "an unwritable report path is an error");
    assert!(
        stderr.contains("creating the HTML report") && stderr.contains("report.html"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "refused before the run: {stdout}");

    let (ok, stdout, stderr) = tlsgate(
        &w.config,
        &[
            "domains",
            "check",
            "--json",
            "--domain",
            "good.test",
            "--domain",
            "GOOD.test",
        ],
    )
    .await;
    assert!(ok, "{stdout}{stderr}");
    let reports: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(reports.len(), 1, "{stdout}");
    assert_eq!(reports[0]["domain"], "good.test");
}

#[tokio::test]
async fn probe_shows_the_policy_of_an_unlisted_domain() {
    let w = world().await;
    let (ok, stdout, _) = tlsgate(&w.config, &["probe", "unlisted.test"]).await;
    // Opportunistic: plaintext is acceptable at level may, so the probe passes.
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("policy may (default (opportunistic))"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "would deliver without TLS: no STARTTLS offered, plaintext allowed at this level"
        ),
        "{stdout}"
    );
    let (ok, stdout, _) = tlsgate(&w.config, &["probe", "bad.test"]).await;
    assert!(!ok);
    assert!(
        stdout.contains("policy verify (tvungen TLS domain list), listed"),
        "{stdout}"
    );
}

#[tokio::test]
async fn domains_list_prints_the_list() {
    let w = world().await;
    let (ok, stdout, _) = tlsgate(&w.config, &["domains", "list", "--json"]).await;
    assert!(ok);
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["domain"].as_str())
        .collect();
    assert_eq!(names, vec!["bad.test", "good.test"]);
    assert_eq!(rows[0]["joined"], "2026-01-01", "{stdout}");
    assert_eq!(rows[0]["company"], "Bad AS", "{stdout}");
    // The table: a header, one row per domain with the date it joined, and the count.
    let (ok, stdout, _) = tlsgate(&w.config, &["domains", "list"]).await;
    assert!(ok);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].ends_with("(2 domains):"), "{stdout}");
    assert!(
        lines[1].starts_with("domain") && lines[1].ends_with("joined"),
        "{stdout}"
    );
    assert!(
        lines[2].starts_with("bad.test")
            && lines[2].contains("Bad AS")
            && lines[2].ends_with("2026-01-01"),
        "{stdout}"
    );
    assert_eq!(lines.last(), Some(&"2 domains"), "{stdout}");
}

/// The subject of `script.test`'s certificate: markup that must arrive in the HTML report as
/// text, never as an element (issue 15 item 2).
const MARKUP_CN: &str = "<script>alert('tlsgate')</script> & Co";

/// The base world plus three listed partners: `expired.test` (a certificate that expired in
/// 2021: fails), `soon.test` (valid, but expires in 10 days: passes with a warning) and
/// `script.test` (valid, with markup in its subject: passes).
async fn auditor_world() -> World {
    world_with(|ca| {
        let (cert, key) = ca.issue_expired(&["mx1.expired.test"]);
        let expired = server_tls_from_pem(&cert, &key);
        let (cert, key) = ca.issue_custom(
            &["mx1.soon.test"],
            "mx1.soon.test",
            Duration::from_secs(10 * 86_400 + 12 * 3_600),
        );
        let soon = server_tls_from_pem(&cert, &key);
        let (cert, key) = ca.issue_custom(
            &["mx1.script.test"],
            MARKUP_CN,
            Duration::from_secs(365 * 86_400),
        );
        let script = server_tls_from_pem(&cert, &key);
        vec![
            Partner {
                domain: "expired.test",
                ip: "127.0.0.5",
                tls: expired,
            },
            Partner {
                domain: "soon.test",
                ip: "127.0.0.6",
                tls: soon,
            },
            Partner {
                domain: "script.test",
                ip: "127.0.0.7",
                tls: script,
            },
        ]
    })
    .await
}

/// `domains check --json --html FILE` in the auditor's world: (JSON reports, HTML page,
/// standard error).
async fn check_with_html(w: &World) -> (Vec<serde_json::Value>, String, String) {
    let page = w._dir.path().join("report.html");
    let page_arg = page.to_str().unwrap().to_string();
    let (ok, stdout, stderr) = tlsgate(
        &w.config,
        &["domains", "check", "--json", "--html", &page_arg],
    )
    .await;
    assert!(!ok, "bad.test and expired.test fail: non-zero exit (T7)");
    let reports: serde_json::Value =
        serde_json::from_str(&stdout).expect("standard output is pure JSON");
    let html = std::fs::read_to_string(&page).expect("the HTML report was written");
    (reports.as_array().expect("array").clone(), html, stderr)
}

fn report<'a>(reports: &'a [serde_json::Value], domain: &str) -> &'a serde_json::Value {
    reports
        .iter()
        .find(|r| r["domain"] == domain)
        .unwrap_or_else(|| panic!("{domain} reported"))
}

/// Issue 15 items 2 and 6 (Bits 5.2.6, T7): the auditor's page is valid HTML (no parse error
/// from html5ever, the browsers' parser), names every listed domain and each MX host, puts
/// failures first, then warnings, then passes, and says when, by which version, against which
/// list. With TLSGATE_WRITE_SAMPLE=path it is also saved there (docs/
/// sample-compliance-report.html is made that way).
#[tokio::test]
async fn html_report_is_valid_html_with_every_domain_and_host_failures_first() {
    let w = auditor_world().await;
    let (reports, page, stderr) = check_with_html(&w).await;
    if let Ok(sample) = std::env::var("TLSGATE_WRITE_SAMPLE") {
        std::fs::write(&sample, &page).expect("writing the sample report");
    }
    let doc = scraper::Html::parse_document(&page);
    assert!(doc.errors.is_empty(), "HTML parse errors: {:?}", doc.errors);
    let sel = |s: &str| scraper::Selector::parse(s).unwrap();

    // One tbody per domain, every listed domain, in verdict order.
    let groups: Vec<(String, String)> = doc
        .select(&sel("table.checks > tbody"))
        .map(|b| {
            (
                b.value().attr("data-domain").unwrap().to_string(),
                b.value().attr("class").unwrap().to_string(),
            )
        })
        .collect();
    let mut domains: Vec<&str> = groups.iter().map(|(d, _)| d.as_str()).collect();
    domains.sort();
    assert_eq!(
        domains,
        [
            "bad.test",
            "expired.test",
            "good.test",
            "script.test",
            "soon.test"
        ]
    );
    let rank = |v: &str| match v {
        "fail" => 0,
        "warn" => 1,
        "pass" => 2,
        other => panic!("verdict {other}"),
    };
    let ranks: Vec<i32> = groups.iter().map(|(_, v)| rank(v)).collect();
    assert!(ranks.windows(2).all(|p| p[0] <= p[1]), "{groups:?}");
    assert_eq!(
        groups.iter().map(|(_, v)| v.as_str()).collect::<Vec<_>>(),
        ["fail", "fail", "warn", "pass", "pass"]
    );
    // Each domain's one MX host has its own row, with the JSON's verdict.
    let hosts: Vec<(String, String, String)> = doc
        .select(&sel("tr.host"))
        .map(|tr| {
            let verdict = tr.select(&sel("td.verdict")).next().unwrap();
            (
                tr.value().attr("data-domain").unwrap().to_string(),
                tr.value().attr("data-mx").unwrap().to_string(),
                verdict.text().collect::<String>(),
            )
        })
        .collect();
    assert_eq!(hosts.len(), 5, "{hosts:?}");
    for (domain, mx, verdict) in &hosts {
        assert_eq!(*mx, format!("mx1.{domain}"));
        assert_eq!(report(&reports, domain)["hosts"][0]["verdict"], *verdict);
    }
    // When, by whom, against which list (issue 15 item 2).
    let facts: String = doc
        .select(&sel("table.facts"))
        .next()
        .unwrap()
        .text()
        .collect();
    assert!(
        facts.contains(&format!("tlsgate {}", env!("CARGO_PKG_VERSION"))),
        "{facts}"
    );
    let list = std::fs::read(w._dir.path().join("list.csv")).unwrap();
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(&list)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(facts.contains(&sha), "list SHA-256 in {facts}");
    assert!(facts.contains("list.csv"), "{facts}");
    assert!(facts.contains("Domains in the list5"), "{facts}");
    assert!(facts.contains("List age0 days"), "{facts}");
    // Self-contained: nothing fetched from elsewhere.
    assert_eq!(doc.select(&sel("script, link, img, iframe")).count(), 0);
    assert!(page.contains("@media print"));
    // The summary line went to standard error, so standard output stayed JSON.
    assert!(
        stderr.contains("checked 5 domains in ") && stderr.contains(": 2 pass, 1 warn, 2 fail"),
        "{stderr}"
    );
}

/// Issue 15 item 1 (T9): a host that fails the check still shows the certificate it presented
/// (subject, SANs, issuer, expiry, SHA-256), in the JSON and on the auditor's page.
#[tokio::test]
async fn failing_host_still_shows_the_certificate_it_presented() {
    let w = auditor_world().await;
    let (reports, page, _) = check_with_html(&w).await;
    let expired = report(&reports, "expired.test");
    assert_eq!(expired["verdict"], "fail");
    let host = &expired["hosts"][0];
    assert_eq!(host["pass"], false);
    assert!(
        host["reason"]
            .as_str()
            .is_some_and(|r| r.contains("expired")),
        "{host}"
    );
    assert_eq!(host["cert_sans"][0], "DNS:mx1.expired.test", "{host}");
    assert!(
        host["cert_issuer"]
            .as_str()
            .is_some_and(|i| i.contains("tlsgate test CA")),
        "{host}"
    );
    assert!(
        host["cert_not_after"]
            .as_str()
            .is_some_and(|n| n.contains("2021")),
        "{host}"
    );
    assert!(host["cert_expires_in_days"].as_i64().is_some_and(|d| d < 0));
    let sha = host["cert_sha256"]
        .as_str()
        .expect("SHA-256 of the certificate");
    assert_eq!(sha.len(), 64);
    // An expired certificate on a failing host is a failure, not an expiry warning.
    assert_eq!(host["warnings"].as_array().map(Vec::len), Some(0));

    let doc = scraper::Html::parse_document(&page);
    let row = scraper::Selector::parse("tr.host[data-domain=\"expired.test\"]").unwrap();
    let text: String = doc.select(&row).next().unwrap().text().collect();
    assert!(text.contains(sha), "{text}");
    assert!(text.contains("DNS:mx1.expired.test"), "{text}");
    assert!(text.contains("(expired)"), "{text}");
}

/// Issue 15 item 1: a certificate that passes but expires within 21 days gives the host and
/// its domain the verdict `warn`; the domain still passes (delivery would succeed).
#[tokio::test]
async fn certificate_expiring_within_21_days_is_a_warning() {
    let w = auditor_world().await;
    let (reports, page, _) = check_with_html(&w).await;
    let soon = report(&reports, "soon.test");
    assert_eq!(soon["pass"], true);
    assert_eq!(soon["verdict"], "warn");
    let host = &soon["hosts"][0];
    assert_eq!(host["verdict"], "warn");
    // Ten and a half days less the seconds the test took: 10 whole days.
    assert_eq!(host["cert_expires_in_days"], 10, "{host}");
    let warning = host["warnings"][0].as_str().expect("a warning");
    assert!(
        warning.starts_with("certificate expires in 10 days (")
            && warning.ends_with("within 21 days"),
        "{warning}"
    );
    assert_eq!(
        soon["warnings"][0],
        format!("mx1.soon.test: {warning}").as_str()
    );
    // A certificate valid for a year is no warning.
    assert_eq!(report(&reports, "good.test")["verdict"], "pass");
    assert!(page.contains("certificate expires in 10 days"));
}

/// Issue 15 item 2: text from the network is escaped. A certificate subject holding markup
/// shows as that text and adds no element to the page.
#[tokio::test]
async fn certificate_subject_with_markup_is_escaped_in_the_html_report() {
    let w = auditor_world().await;
    let (reports, page, _) = check_with_html(&w).await;
    let host = &report(&reports, "script.test")["hosts"][0];
    assert_eq!(host["pass"], true, "{host}");
    assert!(
        host["cert_subject"]
            .as_str()
            .is_some_and(|s| s.contains("<script>")),
        "{host}"
    );
    assert!(!page.contains("<script"), "raw markup in the page");
    assert!(page.contains("&lt;script&gt;alert(&#39;tlsgate&#39;)&lt;/script&gt; &amp; Co"));
    let doc = scraper::Html::parse_document(&page);
    assert!(doc.errors.is_empty(), "{:?}", doc.errors);
    let sel = |s: &str| scraper::Selector::parse(s).unwrap();
    assert_eq!(doc.select(&sel("script")).count(), 0);
    let row: String = doc
        .select(&sel("tr.host[data-domain=\"script.test\"]"))
        .next()
        .unwrap()
        .text()
        .collect();
    assert!(row.contains(MARKUP_CN), "{row}");
}

/// Issue 15 items 1 and 6: the progress bar is drawn on standard error only when it is a
/// terminal. Through a pipe there is no bar and no carriage return; under a pseudo-terminal
/// (util-linux `script`) the bar's "N/N domains checked" appears.
#[tokio::test]
async fn progress_appears_only_on_a_terminal() {
    let w = auditor_world().await;
    let (_, stdout, stderr) = tlsgate(&w.config, &["domains", "check", "--json"]).await;
    assert!(serde_json::from_str::<serde_json::Value>(&stdout).is_ok());
    assert!(!stderr.contains('\r'), "{stderr:?}");
    assert!(!stderr.contains("domains checked"), "{stderr:?}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no terminal escapes: {stderr:?}"
    );
    assert!(stderr.contains("checked 5 domains in "), "{stderr:?}");

    // The same under a pseudo-terminal: `script -qfec CMD /dev/null` runs CMD with its
    // standard streams on a new pty and copies what it writes to our stdout.
    let command = format!(
        "{} domains check --json --config {}",
        env!("CARGO_BIN_EXE_tlsgate"),
        w.config.display()
    );
    let mut cmd = tokio::process::Command::new("script");
    cmd.args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("script finished in time")
        .expect("util-linux script ran");
    let terminal = String::from_utf8_lossy(&out.stdout);
    assert!(
        terminal.contains("5/5 domains checked, 2 failed"),
        "{terminal:?}"
    );
    assert!(terminal.contains("checked 5 domains in "), "{terminal:?}");
}
