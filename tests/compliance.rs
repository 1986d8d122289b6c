//! T7: `tlsgate domains check` and `tlsgate probe`, run as the real binary against test DNS and
//! SMTP sinks on loopback, validating exactly as delivery would.

mod common;

use common::dns::TestDns;
use common::mx_sink::{free_port, Behaviour, Sink};
use common::relay::server_tls;
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

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
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

    let list = dir.path().join("list.csv");
    std::fs::write(
        &list,
        "Selskapsnavn;Organisasjonsnummer;Domene med tvungen TLS;Dato innmeldt;Støtte for krav 5.2.4\n\
         Good AS;1;good.test;2026-01-01;Ja\nBad AS;2;bad.test;2026-01-01;Nei\n",
    )
    .unwrap();
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
        _sinks: vec![good, plain, broken],
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
}
