//! Admin API, queue CLI and audit log end to end (issue 6; S1): a deferred message is listed,
//! shown, retried, bounced and deleted through the running server's admin API and through the
//! `tlsgate` binary; every action lands in the hash-chained audit log, which verifies.

mod common;

use common::mx_sink::Behaviour;
use common::relay::*;
use std::path::PathBuf;
use std::time::Duration;
use tlsgate::admin::{request, QueueEntry};

/// A config file for the CLI that points at the admin API actually bound (the test server
/// binds port 0).
fn cli_config(s: &Setup) -> PathBuf {
    let path = s.relay.dir.path().join("tlsgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let admin = s.relay.running().admin_addr().expect("admin bound");
    let marker = "[admin]\nbind = \"127.0.0.1:0\"";
    assert!(text.contains(marker));
    let cli = s.relay.dir.path().join("cli.toml");
    std::fs::write(
        &cli,
        text.replace(marker, &format!("[admin]\nbind = \"{admin}\"")),
    )
    .unwrap();
    cli
}

async fn tlsgate(config: &PathBuf, args: &[&str]) -> (bool, String, String) {
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

async fn list(config: &tlsgate::config::Config) -> Vec<QueueEntry> {
    let (status, body) = request(config, "GET", "/queue").await.unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn queue_is_listed_retried_bounced_and_deleted_and_every_action_is_audited() {
    let s = setup(
        "retry_schedule = [\"1h\"]",
        "[admin]\nbind = \"127.0.0.1:0\"",
    )
    .await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s.sink(MX1, always("450 4.2.1 mailbox busy")).await;
    let first = s
        .submit("kari@example.no", &["ola@partner.test"], "one")
        .await;
    let second = s
        .submit("kari@example.no", &["per@partner.test"], "two")
        .await;
    let mut config = s.relay.config.clone();
    config.admin.as_mut().unwrap().bind = s.relay.running().admin_addr().unwrap();

    // Both deferred after their first attempt.
    let deadline = tokio::time::Instant::now() + WAIT;
    let entries = loop {
        let entries = list(&config).await;
        if entries.len() == 2 && entries.iter().all(|e| e.recipients[0].status == "deferred") {
            break entries;
        }
        assert!(tokio::time::Instant::now() < deadline, "{entries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let one = entries.iter().find(|e| e.id == first).unwrap();
    assert_eq!(one.sender, "kari@example.no");
    assert_eq!(one.recipients[0].attempts, 1);
    assert!(one.recipients[0]
        .last_reply
        .as_deref()
        .is_some_and(|r| r.contains("450 4.2.1")));

    // The CLI prints the same, mailq style.
    let cli = cli_config(&s);
    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "list"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&first) && stdout.contains("ola@partner.test"),
        "{stdout}"
    );
    assert!(stdout.contains("deferred, 1 attempts"), "{stdout}");
    let (ok, stdout, _) = tlsgate(&cli, &["queue", "show", &first]).await;
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains(&first) && stdout.contains("ola@partner.test"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("per@partner.test"),
        "only the one message: {stdout}"
    );

    // Retry: the server accepts now, so the first message goes out at once.
    mx.set_behaviour(Behaviour::default());
    let (ok, _, stderr) = tlsgate(&cli, &["queue", "retry", &first]).await;
    assert!(ok, "{stderr}");
    mx.wait_for_messages(1, WAIT).await;

    // Bounce the second (after making the MX refuse again so it cannot slip out meanwhile).
    mx.set_behaviour(always("450 4.2.1 mailbox busy"));
    let (ok, _, stderr) = tlsgate(&cli, &["queue", "bounce", &second]).await;
    assert!(ok, "{stderr}");
    let dsns = s.next_hop.wait_for_messages(1, WAIT).await;
    let dsn = parse_dsn(&dsns[0]);
    assert_eq!(dsn.field(1, "Status"), Some("5.0.0"));
    assert!(dsn.human.contains("mail administrator"), "{}", dsn.human);
    s.wait_queue_empty().await;

    // Delete: a third message disappears without a DSN.
    let third = s
        .submit("kari@example.no", &["kim@partner.test"], "three")
        .await;
    wait_until(
        || {
            s.relay
                .queued_meta(&third)
                .is_some_and(|_| !mx.commands().is_empty())
        },
        "third attempted",
    )
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (ok, _, stderr) = tlsgate(&cli, &["queue", "delete", &third]).await;
        if ok {
            break;
        }
        // 409 while its first attempt is still running.
        assert!(stderr.contains("409"), "{stderr}");
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.wait_queue_empty().await;
    let (ok, _, stderr) = tlsgate(&cli, &["queue", "delete", &third]).await;
    assert!(!ok && stderr.contains("404"), "{stderr}");
    assert_eq!(s.next_hop.messages().len(), 1, "no DSN for a deletion");

    // Audit log: every action recorded, and the chain verifies.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit_dir = s.relay.config.audit.dir.clone();
    let mut text = String::new();
    for entry in std::fs::read_dir(&audit_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            text.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    for action in ["queue retry", "queue bounce", "queue delete"] {
        assert!(text.contains(action), "{action} audited: {text}");
    }
    assert!(text.contains("\"event\":\"started\""), "{text}");
    assert!(text.contains("\"event\":\"dsn_sent\""), "{text}");
    let (ok, stdout, stderr) = tlsgate(&cli, &["audit", "verify"]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("audit log ok"), "{stdout}");
}

#[tokio::test]
async fn a_token_protects_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = setup(
        "",
        &format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"",
            token.display()
        ),
    )
    .await;
    let mut config = s.relay.config.clone();
    config.admin.as_mut().unwrap().bind = s.relay.running().admin_addr().unwrap();
    let (status, _) = request(&config, "GET", "/queue").await.unwrap();
    assert_eq!(status, 200, "the right token is accepted");
    config.admin.as_mut().unwrap().token_file = None;
    let (status, _) = request(&config, "GET", "/queue").await.unwrap();
    assert_eq!(status, 401, "no token, no access");
}

#[test]
fn a_non_loopback_admin_bind_needs_a_token() {
    let text = "[server]\ndata_dir = \"/tmp/x\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nrole = \"outbound\"\n[outbound]\nrelay_networks = [\"10.0.0.0/8\"]\n[admin]\nbind = \"0.0.0.0:9465\"\n";
    let err = tlsgate::config::Config::from_toml(text, "t.toml").unwrap_err();
    assert!(err.to_string().contains("admin.bind"), "{err}");
    assert!(err.to_string().contains("token_file"), "{err}");
}
