//! Partner monitoring in the background and fetching the domain list (issue 15 items 3, 5 and
//! 6; T7, T10, S1): a relay with `domain_list.check_schedule = "1s"` checks its listed partner
//! (MX sink on loopback, certificate from the test CA, real rustls handshakes) and exports,
//! audits and shows the verdict; a relay with `domain_list.url` fetches the list from a
//! loopback HTTPS server and replaces file and list only with a list that loads.

mod common;

use common::https::{bind_https_port, serve_https, HttpsServer};
use common::mx_sink::Behaviour;
use common::relay::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tlsgate::ops::domains_status::DomainsStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where the list server `lists.partner.test` lives.
const LIST_HOST_IP: &str = "127.0.0.6";

/// The metrics text, scraped over HTTP from the relay's `/metrics` like Prometheus does.
async fn scrape(addr: SocketAddr) -> String {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).expect("UTF-8")
    };
    let text = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("metrics answered in time");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

/// The value of `series` (name with its labels, as exported) in a scrape; `None` when absent.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Scrapes until `series` has `want` (`None`: is absent); bounded by [`WAIT`].
async fn wait_for_sample(s: &Setup, series: &str, want: Option<f64>) -> String {
    let addr = s.relay.running().metrics_addr().expect("[metrics] bound");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(addr).await;
        if sample(&text, series) == want {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never became {want:?}; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every audit entry's `event` object, oldest first.
fn audit_events(s: &Setup) -> Vec<serde_json::Value> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&s.relay.config.audit.dir)
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
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The `partner_verdict` entries written since the relay last started.
fn verdicts_since_start(s: &Setup) -> Vec<serde_json::Value> {
    let events = audit_events(s);
    let start = events
        .iter()
        .rposition(|e| e["event"] == "started")
        .expect("a started entry");
    events[start..]
        .iter()
        .filter(|e| e["event"] == "partner_verdict")
        .cloned()
        .collect()
}

async fn status(s: &Setup) -> DomainsStatus {
    let (code, body) = tlsgate::admin::request(&s.relay.config, "GET", "/domains/status")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `tlsgate ARGS --config <the relay's file>`: (success, stdout, stderr).
async fn tlsgate(s: &Setup, args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"));
    cmd.args(args)
        .arg("--config")
        .arg(s.relay.dir.path().join("tlsgate.toml"))
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

fn write_list(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("tvungen-tls.txt");
    std::fs::write(&path, text).unwrap();
    path
}

const OK: &str = "tlsgate_partner_tls_ok{domain=\"partner.test\"}";
const EXPIRY: &str = "tlsgate_partner_certificate_expiry_timestamp_seconds{domain=\"partner.test\",host=\"mx1.partner.test\"}";

/// Issue 15 items 3 and 6 (T7, Bits 5.2.6): the background check flips
/// `tlsgate_partner_tls_ok` from 1 to 0 when the partner's MX presents an expired certificate
/// (RFC 5280 4.1.2.5, T9: delivery would defer) and back to 1 when it is valid again; the
/// certificate's expiry is exported per host; each change of verdict, and the first, is one
/// audit entry (S1); `domains status` (admin API and CLI) shows the latest verdict; a domain
/// that leaves the list loses its series.
#[tokio::test]
async fn background_check_follows_a_partner_certificate_and_audits_each_verdict() {
    let lists = tempfile::tempdir().unwrap();
    let list = write_list(lists.path(), "partner.test\n");
    let mut s = setup(
        "",
        &format!(
            "[domain_list]\npath = \"{}\"\ncheck_schedule = \"1s\"\n\n[metrics]\nbind = \"127.0.0.1:0\"\n",
            list.display()
        ),
    )
    .await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let sink = s
        .tls_sink(MX1, &["mx1.partner.test"], Behaviour::default())
        .await;
    // A fresh start with the partner in DNS: its first verdict is a pass.
    s.restart().await;

    let text = wait_for_sample(&s, OK, Some(1.0)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let expiry = sample(&text, EXPIRY).expect("expiry exported for the MX host");
    assert!(expiry > now, "a valid certificate expires in the future");
    let checked = sample(&text, "tlsgate_partner_check_timestamp_seconds").unwrap();
    assert!((now - checked).abs() < 60.0, "checked {checked}, now {now}");

    // The partner's MX now presents an expired certificate: delivery would defer (T3, T9).
    let (cert, key) = s.relay.ca.issue_expired(&["mx1.partner.test"]);
    sink.set_behaviour(Behaviour {
        tls: Some(server_tls_from_pem(&cert, &key)),
        ..Behaviour::default()
    });
    let text = wait_for_sample(&s, OK, Some(0.0)).await;
    // The expired certificate's own date (2021-01-01T00:00:00Z), shown although it failed.
    assert_eq!(sample(&text, EXPIRY), Some(1_609_459_200.0));

    let shown = status(&s).await;
    assert_eq!(shown.check_schedule.as_deref(), Some("1s"));
    assert_eq!(shown.domains, 1);
    let partner = shown
        .partners
        .iter()
        .find(|p| p.domain == "partner.test")
        .expect("partner.test in the status");
    assert!(!partner.pass);
    assert!(
        partner.hosts.iter().any(|h| h.reason.contains("expired")),
        "{partner:?}"
    );
    let (ok, out, err) = tlsgate(&s, &["domains", "status"]).await;
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("partner.test "))
        .unwrap_or_else(|| panic!("no partner.test line:\n{out}"));
    assert!(line.contains("FAIL"), "{line}");
    assert!(out.contains("partner check: every 1s"), "{out}");
    let (ok, out, err) = tlsgate(&s, &["domains", "status", "--json"]).await;
    assert!(ok, "{err}");
    let json: DomainsStatus = serde_json::from_str(&out).unwrap();
    assert_eq!(json.partners.len(), 1);

    // Valid again: back to 1.
    sink.set_behaviour(Behaviour {
        tls: Some(server_tls(&s.relay.ca, &["mx1.partner.test"])),
        ..Behaviour::default()
    });
    wait_for_sample(&s, OK, Some(1.0)).await;

    // S1: first verdict, the failure, the recovery — one entry each, nothing for the runs
    // in between that found the same verdict.
    wait_until(
        || verdicts_since_start(&s).len() >= 3,
        "three verdict entries",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let verdicts = verdicts_since_start(&s);
    let seen: Vec<(bool, Option<bool>)> = verdicts
        .iter()
        .map(|v| (v["pass"].as_bool().unwrap(), v["previous"].as_bool()))
        .collect();
    assert_eq!(
        seen,
        [(true, None), (false, Some(true)), (true, Some(false))],
        "{verdicts:?}"
    );
    assert!(verdicts.iter().all(|v| v["domain"] == "partner.test"));
    assert!(verdicts[1]["reason"].is_string(), "a failure says why");

    // partner.test leaves the list: its series go.
    std::fs::write(&list, "other.test\n").unwrap();
    s.relay.running().reload_domain_list();
    wait_for_sample(&s, OK, None).await;
    wait_for_sample(&s, EXPIRY, None).await;
    // The entries keep the hash chain intact (S1).
    tlsgate::audit::verify(std::slice::from_ref(&s.relay.config.audit.dir)).unwrap();
}

/// Starts a relay whose list (`old.test`) comes from `https://lists.partner.test:<port>/…`
/// every second, and the list server (certificate from the relay's test CA) serving `body`.
async fn relay_fetching(body: &[u8]) -> (Setup, HttpsServer, PathBuf, tempfile::TempDir) {
    let lists = tempfile::tempdir().unwrap();
    let list = write_list(lists.path(), "old.test\n");
    let (listener, port) = bind_https_port(LIST_HOST_IP).await;
    let s = setup(
        "",
        &format!(
            "[domain_list]\npath = \"{}\"\nurl = \"https://lists.partner.test:{port}/tvungen-tls.txt\"\n\
             fetch_interval = \"1s\"\n\n[metrics]\nbind = \"127.0.0.1:0\"\n",
            list.display()
        ),
    )
    .await;
    // Serving first, then the name: no fetch can reach a listener that does not answer.
    let server = serve_https(
        listener,
        server_tls(&s.relay.ca, &["lists.partner.test"]),
        body,
    );
    s.dns.add_ip("lists.partner.test", ip(LIST_HOST_IP));
    (s, server, list, lists)
}

fn fetches(text: &str, result: &str) -> f64 {
    sample(
        text,
        &format!("tlsgate_domain_list_fetch_total{{result=\"{result}\"}}"),
    )
    .unwrap_or(0.0)
}

/// Waits until one more fetch than `before` ended with `result`.
async fn wait_for_fetch(s: &Setup, result: &str, before: f64) -> String {
    let addr = s.relay.running().metrics_addr().unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(addr).await;
        if fetches(&text, result) > before {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {result} fetch; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 15 items 5 and 6 (T10): the list fetched over HTTPS (test CA through
/// `outbound.extra_trust_roots`) replaces the file and the list in force; a server error (HTTP
/// 500), a body that is no list, and a list that names no domain each leave file and list as
/// they are; every fetch is counted by result and timed, and `domains status` shows the last.
#[tokio::test]
async fn fetched_list_replaces_the_list_and_a_failing_fetch_leaves_it() {
    let (s, server, list, _lists) = relay_fetching(b"partner.test\nnew.test\n").await;
    let running = s.relay.running();
    let new = tlsgate::domain::Domain::parse("new.test").unwrap();
    wait_until(
        || running.domain_list().current().is_listed(&new),
        "the fetched list in force",
    )
    .await;
    assert_eq!(running.domain_list().current().len(), 2);
    assert_eq!(
        std::fs::read_to_string(&list).unwrap(),
        "partner.test\nnew.test\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(list.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
    let text = wait_for_fetch(&s, "ok", 0.0).await;
    let at = sample(&text, "tlsgate_domain_list_fetch_timestamp_seconds").unwrap();
    assert!(at > 1_700_000_000.0, "fetch time {at}");
    assert_eq!(sample(&text, "tlsgate_domain_list_domains"), Some(2.0));

    let in_force = || {
        assert_eq!(running.domain_list().current().len(), 2);
        assert!(running.domain_list().current().is_listed(&new));
        assert_eq!(
            std::fs::read_to_string(&list).unwrap(),
            "partner.test\nnew.test\n"
        );
    };
    // HTTP 500: a fetch error, nothing changes.
    let before = fetches(&text, "fetch_error");
    server.set_status(500);
    wait_for_fetch(&s, "fetch_error", before).await;
    in_force();
    // Garbage (an error page served as 200): refused by the list's rules.
    server.set_status(200);
    server.set_body(b"<html><body>Service temporarily unavailable</body></html>\n");
    let text = scrape(running.metrics_addr().unwrap()).await;
    let before = fetches(&text, "refused");
    let text = wait_for_fetch(&s, "refused", before).await;
    in_force();
    // A list that names no domain would turn tvungen TLS off: refused too.
    server.set_body(b"# the list\n\n");
    let before = fetches(&text, "refused");
    wait_for_fetch(&s, "refused", before).await;
    in_force();

    let shown = status(&s).await;
    assert_eq!(shown.domains, 2);
    assert!(shown.url.as_deref().unwrap().ends_with("/tvungen-tls.txt"));
    let last = shown.last_fetch.expect("a fetch is shown");
    assert_eq!(last.result, "refused");
    assert!(last.last_ok_at.is_some(), "{last:?}");
    assert!(server.requests() >= 4);
    let (ok, out, err) = tlsgate(&s, &["domains", "status"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("last fetch:"), "{out}");
    assert!(out.contains("refused"), "{out}");
    assert!(out.contains("partner check: off"), "{out}");
}

/// `tlsgate domains list` shows the list in force (review finding): a file edited without a
/// reload, or refused at reload, does not change what it prints while the relay runs; with
/// the relay stopped it shows the file as it would load, and says so on standard error.
#[tokio::test]
async fn domains_list_shows_the_list_in_force_and_the_file_only_without_a_relay() {
    let lists = tempfile::tempdir().unwrap();
    let list = write_list(lists.path(), "a.test\nb.test\nc.test\n");
    // The watcher looks once an hour: the edits below stay unloaded until asked.
    let mut s = setup(
        "",
        &format!(
            "[domain_list]\npath = \"{}\"\ncheck_interval = \"1h\"\n",
            list.display()
        ),
    )
    .await;
    let names = |json: &str| -> Vec<String> {
        let rows: Vec<serde_json::Value> = serde_json::from_str(json).expect("a JSON array");
        rows.iter()
            .map(|r| r["domain"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    let in_force = || async {
        let (ok, out, err) = tlsgate(&s, &["domains", "list"]).await;
        assert!(ok, "{err}");
        assert!(err.is_empty(), "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[0].starts_with("in force in the running relay, from ")
                && lines[0].ends_with("(3 domains):"),
            "{out}"
        );
        assert_eq!(lines.last(), Some(&"3 domains"), "{out}");
        let (ok, json, err) = tlsgate(&s, &["domains", "list", "--json"]).await;
        assert!(ok, "{err}");
        assert_eq!(names(&json), ["a.test", "b.test", "c.test"], "{json}");
    };
    in_force().await;

    // Edited, not reloaded: still the three in force.
    std::fs::write(&list, "a.test\n").unwrap();
    in_force().await;
    // A bad line: the reload is refused and the three stay in force, and are shown.
    std::fs::write(&list, "a.test\nnot a domain!\n").unwrap();
    let (ok, _, err) = tlsgate(&s, &["domains", "reload"]).await;
    assert!(!ok, "a bad file was loaded: {err}");
    in_force().await;

    // No relay: the file as it would load, with the note.
    std::fs::write(&list, "a.test\n").unwrap();
    s.relay.stop().await;
    let (ok, out, err) = tlsgate(&s, &["domains", "list"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        err.trim(),
        "relay not running: showing the list file as it would load"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("{} (1 domain):", list.display()), "{out}");
    assert!(lines[2].starts_with("a.test"), "{out}");
    let (ok, json, err) = tlsgate(&s, &["domains", "list", "--json"]).await;
    assert!(ok, "{err}");
    assert_eq!(names(&json), ["a.test"], "{json}");
}
