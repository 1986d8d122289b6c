//! Admin API, queue CLI and audit log end to end (issue 6; S1): a deferred message is listed,
//! shown, retried, bounced and deleted through the running server's admin API and through the
//! `tlsgate` binary; every action lands in the hash-chained audit log, which verifies.

mod common;

use common::mx_sink::Behaviour;
use common::relay::*;
use std::path::PathBuf;
use std::time::Duration;
use tlsgate::admin::{request, QueueEntry};

/// The relay's own config file: the CLI finds the admin socket (`data_dir/admin.sock`, the
/// default) from it, as an administrator's `tlsgate queue list` would.
fn cli_config(s: &Setup) -> PathBuf {
    s.relay.dir.path().join("tlsgate.toml")
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
    // No [admin] section: the admin API is on, on its Unix socket (issue 10 item 0b).
    let s = setup("retry_schedule = [\"1h\"]", "").await;
    s.dns.add_mx("partner.test", 10, "mx1.partner.test");
    s.dns.add_ip("mx1.partner.test", ip(MX1));
    let mx = s.sink(MX1, always("450 4.2.1 mailbox busy")).await;
    let first = s
        .submit("kari@example.no", &["ola@partner.test"], "one")
        .await;
    let second = s
        .submit("kari@example.no", &["per@partner.test"], "two")
        .await;
    let config = s.relay.config.clone();
    let socket = s
        .relay
        .running()
        .admin_socket()
        .expect("admin socket by default");
    assert_eq!(socket, s.relay.config.server.data_dir.join("admin.sock"));
    assert!(
        s.relay.running().admin_addr().is_none(),
        "no TCP by default"
    );

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

    // One message by id: that message's entry as the listing has it (read alone, not picked
    // out of a whole listing); an id that is not queued is 404.
    let (status, body) = request(&config, "GET", &format!("/queue/{first}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let shown: QueueEntry = serde_json::from_str(&body).unwrap();
    assert_eq!(shown.id, first);
    assert_eq!(shown.sender, one.sender);
    assert_eq!(shown.recipients[0].address, "ola@partner.test");
    assert_eq!(shown.recipients[0].status, "deferred");
    assert_eq!(shown.recipients[0].last_reply, one.recipients[0].last_reply);
    let (status, body) = request(&config, "GET", "/queue/0000000000000A")
        .await
        .unwrap();
    assert_eq!(status, 404, "{body}");

    // The CLI prints the same, mailq style.
    let cli = cli_config(&s);
    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "list"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&first) && stdout.contains("ola@partner.test"),
        "{stdout}"
    );
    assert!(stdout.contains("deferred, 1 attempt,"), "{stdout}");
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
    // Who acted: the CLI ran as this test's user, identified by SO_PEERCRED.
    let me = nix::unistd::geteuid().as_raw();
    assert!(
        text.contains(&format!("\"client\":\"uid {me} (")),
        "the caller's uid is audited: {text}"
    );
    assert!(text.contains("\"event\":\"started\""), "{text}");
    assert!(text.contains("\"event\":\"dsn_sent\""), "{text}");
    let (ok, stdout, stderr) = tlsgate(&cli, &["audit", "verify"]).await;
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("audit log ok"), "{stdout}");
}

/// A TCP admin listener answers only with the token, and the audit log names the token.
#[tokio::test]
async fn a_token_protects_the_tcp_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("ops.token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let s = setup(
        "retry_schedule = [\"1h\"]",
        &format!(
            "[admin]\nsocket = \"\"\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"",
            token.display()
        ),
    )
    .await;
    assert!(s.relay.running().admin_socket().is_none());
    let mut config = s.relay.config.clone();
    config.admin.as_mut().unwrap().bind = s.relay.running().admin_addr();
    let (status, _) = request(&config, "GET", "/queue").await.unwrap();
    assert_eq!(status, 200, "the right token is accepted");
    let (status, body) = request(&config, "POST", "/domains/reload").await.unwrap();
    assert_eq!(status, 200, "{body}");
    config.admin.as_mut().unwrap().token_file = None;
    let (status, _) = request(&config, "GET", "/queue").await.unwrap();
    assert_eq!(status, 401, "no token, no access");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !audit_text(&s).contains("bad or missing token from 127.0.0.1:") {
        assert!(tokio::time::Instant::now() < deadline, "refusal audited");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let audit = audit_text(&s);
    assert!(
        audit.contains("\"client\":\"token ops from 127.0.0.1:"),
        "{audit}"
    );
}

/// Loopback is no protection: every local user can reach it (issue 10 item 0b).
#[test]
fn a_tcp_admin_bind_needs_a_token_even_on_loopback() {
    for bind in ["0.0.0.0:9465", "127.0.0.1:9465", "[::1]:9465"] {
        let text = format!("[server]\ndata_dir = \"/tmp/x\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nrole = \"outbound\"\n[outbound]\nrelay_networks = [\"10.0.0.0/8\"]\n[admin]\nbind = \"{bind}\"\n");
        let err = tlsgate::config::Config::from_toml(&text, "t.toml").unwrap_err();
        assert!(err.to_string().contains("admin.bind"), "{err}");
        assert!(err.to_string().contains("token_file"), "{err}");
    }
    let text = "[server]\ndata_dir = \"/tmp/x\"\n[[listener]]\nbind = \"127.0.0.1:0\"\nrole = \"outbound\"\n[outbound]\nrelay_networks = [\"10.0.0.0/8\"]\n[admin]\nsocket_mode = \"0666\"\n";
    let err = tlsgate::config::Config::from_toml(text, "t.toml").unwrap_err();
    assert!(err.to_string().contains("admin.socket_mode"), "{err}");
}

fn audit_text(s: &Setup) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(&s.relay.config.audit.dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            text.push_str(&std::fs::read_to_string(path).unwrap());
        }
    }
    text
}

/// Runs the copied tlsgate as `nobody` (uid/gid 65534) with `args` and `--config config`.
///
/// ETXTBSY ("Text file busy") is retried, boundedly: while the copy was being written, another
/// test thread may have forked, and its child holds the write descriptor until it execs; exec of
/// the copy fails until then (a race of the test harness, not of tlsgate).
async fn run_as_nobody(args: &[&str], config: &std::path::Path) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let binary = binary_for_nobody(config);
    let mut last = None;
    for _ in 0..50 {
        let mut cmd = std::process::Command::new(&binary);
        cmd.args(args)
            .arg("--config")
            .arg(config)
            .uid(65534)
            .gid(65534);
        let run = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .expect("tlsgate finished in time")
        {
            Ok(out) => return out,
            Err(e) if e.raw_os_error() == Some(nix::libc::ETXTBSY) => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("tlsgate did not run: {e}"),
        }
    }
    panic!("tlsgate copy still busy after 50 tries: {last:?}");
}

/// Runs `tlsgate queue list` as another user (uid/gid 65534, `nobody`/`nogroup`).
async fn queue_list_as_nobody(config: &std::path::Path) -> (bool, String) {
    let out = run_as_nobody(&["queue", "list"], config).await;
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A copy of the tlsgate binary that `nobody` can run: the build directory may sit in a folder
/// other users cannot enter (a checkout in a `mktemp -d` folder is 0700). The copy goes next to
/// `config`, in the test's directory that [`open_directories`] opened.
fn binary_for_nobody(config: &std::path::Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let copy = config.with_file_name("tlsgate");
    if !copy.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_tlsgate"), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    copy
}

/// Opens the test's directories to everyone, so that only the socket's own protection is
/// tested (a production data_dir is 0700 and hides the socket anyway).
fn open_directories(s: &Setup) {
    use std::os::unix::fs::PermissionsExt;
    let open = std::fs::Permissions::from_mode(0o755);
    std::fs::set_permissions(s.relay.dir.path(), open.clone()).unwrap();
    std::fs::set_permissions(&s.relay.config.server.data_dir, open).unwrap();
    let config = cli_config(s);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Another local user cannot use the admin socket: the file mode (0660) refuses the connect,
/// and when the socket has been opened to everyone by mistake, the SO_PEERCRED check still
/// answers 403 (issue 10 item 0b; S1). Needs root to run a process as another uid.
#[tokio::test]
async fn another_local_user_is_refused_on_the_admin_socket() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to run a client as another uid (CI runs as root)");
        return;
    }
    let s = setup("retry_schedule = [\"1h\"]", "").await;
    let socket = s.relay.running().admin_socket().unwrap().to_path_buf();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    assert_eq!(
        meta.uid(),
        nix::unistd::geteuid().as_raw(),
        "owned by the service user"
    );
    open_directories(&s);

    let (ok, out) = queue_list_as_nobody(&cli_config(&s)).await;
    assert!(!ok, "nobody must not list the queue: {out}");
    assert!(out.contains("Permission denied"), "{out}");

    // A mistake opens the socket to everyone: the per-request check still refuses.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, out) = queue_list_as_nobody(&cli_config(&s)).await;
    assert!(!ok, "nobody must not list the queue: {out}");
    assert!(out.contains("403") && out.contains("uid 65534"), "{out}");
    // The refusal is audited (S1): who tried what.
    let deadline = tokio::time::Instant::now() + WAIT;
    while !audit_text(&s).contains(
        "\"event\":\"admin_refused\",\"request\":\"GET /queue\",\"client\":\"uid 65534 (nobody)\"",
    ) {
        assert!(tokio::time::Instant::now() < deadline, "{}", audit_text(&s));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Members of `admin.socket_group` may use the socket, and the audit log names them.
#[tokio::test]
async fn a_member_of_the_socket_group_is_allowed_and_audited() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root to run a client as another uid (CI runs as root)");
        return;
    }
    let s = setup(
        "retry_schedule = [\"1h\"]",
        "[admin]\nsocket_group = \"nogroup\"",
    )
    .await;
    let socket = s.relay.running().admin_socket().unwrap().to_path_buf();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&socket).unwrap().gid(), 65534);
    open_directories(&s);
    let (ok, out) = queue_list_as_nobody(&cli_config(&s)).await;
    assert!(ok, "{out}");
    assert!(out.contains("Mail queue is empty"), "{out}");

    // A state-changing call by the group member is audited with its uid.
    let out = run_as_nobody(&["domains", "reload"], &cli_config(&s)).await;
    assert!(out.status.success(), "{out:?}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let audit = audit_text(&s);
        if audit.contains("\"client\":\"uid 65534 (nobody)\"") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{audit}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every message in the queue has a deferred recipient (its first attempt done).
async fn wait_all_deferred(config: &tlsgate::config::Config, count: usize) -> Vec<QueueEntry> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let entries = list(config).await;
        if entries.len() == count
            && entries
                .iter()
                .all(|e| e.recipients.iter().all(|r| r.status == "deferred"))
        {
            return entries;
        }
        assert!(tokio::time::Instant::now() < deadline, "{entries:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 14 item 2: `queue hold` keeps a message from delivery (Postfix's `postsuper -h`),
/// even when retried and across a restart (the hold is in the stored recipient states);
/// `queue release` makes it due at once and it is delivered.
#[tokio::test]
async fn a_held_message_is_not_delivered_until_released() {
    let mut s = setup("retry_schedule = [\"1h\"]", "").await;
    let mx = s.single_mx(always("450 4.2.1 mailbox busy")).await;
    let id = s
        .submit("kari@example.no", &["ola@partner.test"], "held")
        .await;
    let config = s.relay.config.clone();
    wait_all_deferred(&config, 1).await;
    let cli = cli_config(&s);

    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "hold", &id]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("hold: 1 message"), "{stdout}");
    // The MX accepts now, and a retry asks for delivery: a held message still stays put, and
    // the retry says it was not done.
    mx.set_behaviour(Behaviour::default());
    let (ok, _, stderr) = tlsgate(&cli, &["queue", "retry", &id]).await;
    assert!(!ok, "a retry of a held message succeeded");
    assert!(
        stderr.contains("the message is held: release it first"),
        "{stderr}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(mx.messages().is_empty(), "a held message was delivered");
    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "list", "--status", "held"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&id) && stdout.contains("(held, 1 attempt)"),
        "{stdout}"
    );

    // Durable: after a restart it is still held and still not delivered.
    s.restart().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(mx.messages().is_empty(), "delivered after a restart");
    let entries = list(&config).await;
    assert_eq!(entries[0].recipients[0].status, "held", "{entries:?}");

    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "release", &id]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("release: 1 message"), "{stdout}");
    mx.wait_for_messages(1, WAIT).await;
    s.wait_queue_empty().await;
    let audit = audit_text(&s);
    for action in ["queue hold", "queue release"] {
        assert!(audit.contains(action), "{action} audited: {audit}");
    }
}

/// Two messages from example.no to partner.test: their queue ids.
async fn submit_two(s: &Setup) -> (String, String) {
    let a = s
        .submit("kari@example.no", &["ola@partner.test"], "one")
        .await;
    let b = s
        .submit("per@example.no", &["kim@partner.test"], "two")
        .await;
    (a, b)
}

/// Queue actions report what was done (review finding): an id given twice is one message; a
/// retry of a held message and a release of one that is not held are not done, and said so
/// (the command fails), one by one and in bulk; the bulk JSON keeps its fields and adds
/// `held` and `not_held`.
#[tokio::test]
async fn queue_actions_report_what_was_done() {
    let s = setup("retry_schedule = [\"1h\"]", "").await;
    let _mx = s.single_mx(always("450 4.2.1 mailbox busy")).await;
    let (a, b) = submit_two(&s).await;
    let config = s.relay.config.clone();
    wait_all_deferred(&config, 2).await;
    let cli = cli_config(&s);

    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "hold", &a, &a]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("hold: 1 of 1 messages"), "{stdout}");

    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "retry", &a]).await;
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("the message is held: release it first"),
        "{stderr}"
    );
    let (status, body) = request(&config, "POST", &format!("/queue/bulk/retry?ids={a},{a}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let result: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(result["matched"], 1, "{body}");
    assert_eq!(result["done"], 0, "{body}");
    assert_eq!(result["held"], serde_json::json!([a]), "{body}");
    assert_eq!(result["not_held"], serde_json::json!([]), "{body}");
    for field in ["action", "selection", "busy", "missing", "failed"] {
        assert!(!result[field].is_null(), "{field}: {body}");
    }
    let entries = list(&config).await;
    let held = entries.iter().find(|e| e.id == a).expect("a is queued");
    assert_eq!(held.recipients[0].status, "held", "{entries:?}");

    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "release", &b]).await;
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("the message is not held"), "{stderr}");
    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "release", &a, &b]).await;
    assert!(!ok, "{stdout}");
    assert!(stdout.starts_with("release: 1 of 2 messages"), "{stdout}");
    assert!(stderr.contains(&format!("not held: {b}")), "{stderr}");
    // `b` was left as it was: still deferred, not made due by the refused release.
    let entries = list(&config).await;
    let left = entries.iter().find(|e| e.id == b).expect("b is queued");
    assert_eq!(left.recipients[0].status, "deferred", "{entries:?}");
}

/// Issue 14 item 2: `queue list` with a header row, UTC times, the enhanced status code of
/// the last reply, filters and a summary line; `queue summary` (qshape); `queue show
/// --headers` (postcat -hq, audited); bulk `delete` by `--domain` and with `--all`, and no
/// bulk action without a condition or `--all`; each bulk action audited once with its filter.
#[tokio::test]
async fn queue_tools_list_filter_summarise_show_headers_and_act_in_bulk() {
    let s = setup("retry_schedule = [\"1h\"]", "").await;
    let _mx = s.single_mx(always("450 4.2.1 mailbox busy")).await;
    s.dns.add_mx("other.test", 10, "mx1.partner.test");
    let (a, b) = submit_two(&s).await;
    let c = s
        .submit("kari@example.no", &["eva@other.test"], "three")
        .await;
    let config = s.relay.config.clone();
    wait_all_deferred(&config, 3).await;
    let cli = cli_config(&s);

    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "list"]).await;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("QUEUE ID") && lines[0].contains("ARRIVED (UTC)"),
        "{stdout}"
    );
    // Absolute times, RFC 3339 UTC, on every message line.
    let today = tlsgate::datetime::format_rfc3339(std::time::SystemTime::now());
    let message_line = lines.iter().find(|l| l.starts_with(&a)).expect("a listed");
    assert!(message_line.contains(&today[..11]), "{message_line}");
    assert!(message_line.contains('Z'), "{message_line}");
    assert!(
        stdout.contains("[4.2.1] 450 4.2.1 mailbox busy"),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .ends_with("-- 3 messages, 3 recipients, 1 KiB"),
        "{stdout}"
    );

    let (ok, stdout, _) = tlsgate(&cli, &["queue", "list", "--domain", "partner.test"]).await;
    assert!(ok);
    assert!(
        stdout.contains(&a) && stdout.contains(&b) && !stdout.contains(&c),
        "{stdout}"
    );
    let (ok, stdout, _) = tlsgate(&cli, &["queue", "list", "--from", "per@example.no"]).await;
    assert!(
        ok && stdout.contains(&b) && !stdout.contains(&a),
        "{stdout}"
    );
    let (ok, stdout, _) = tlsgate(&cli, &["queue", "list", "--to", "eva@other.test"]).await;
    assert!(
        ok && stdout.contains(&c) && !stdout.contains(&b),
        "{stdout}"
    );
    // Nothing matches: said so, not "the queue is empty" (it is not).
    let (ok, stdout, _) = tlsgate(&cli, &["queue", "list", "--older-than", "1h"]).await;
    assert!(
        ok && stdout.trim() == "no message matches (older_than=1h)",
        "{stdout}"
    );
    let (ok, stdout, _) = tlsgate(&cli, &["queue", "list", "--status", "deferred", "--json"]).await;
    assert!(ok);
    let json: Vec<QueueEntry> = serde_json::from_str(&stdout).expect("JSON listing");
    assert_eq!(json.len(), 3);
    assert!(json[0].received_at.ends_with('Z'), "{json:?}");
    assert_eq!(json[0].recipients[0].last_status.as_deref(), Some("4.2.1"));

    // qshape: all three are younger than five minutes.
    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "summary"]).await;
    assert!(ok, "{stderr}");
    let row = |name: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} row: {stdout}"));
        line.split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("TOTAL")[..2], ["3", "3"], "{stdout}");
    assert_eq!(row("partner.test")[..2], ["2", "2"], "{stdout}");
    assert_eq!(row("other.test")[..2], ["1", "1"], "{stdout}");

    // postcat -hq: the stored header section, our Received: first; audited.
    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "show", &c, "--headers"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.starts_with("Received: "), "{stdout}");
    assert!(stdout.contains("Subject: three\r\n"), "{stdout}");
    assert!(
        !stdout.contains("Hello."),
        "the body is not shown: {stdout}"
    );

    // No bulk action on everything by accident.
    let (ok, _, stderr) = tlsgate(&cli, &["queue", "delete"]).await;
    assert!(!ok && stderr.contains("without --all"), "{stderr}");
    assert_eq!(list(&config).await.len(), 3);
    // A bad id among good ones: refused before anything is done (review finding: the good ids
    // before it were deleted, and the request failed without an audit entry).
    let (ok, _, stderr) = tlsgate(&cli, &["queue", "delete", &a, "BOGUS"]).await;
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("\"BOGUS\" is not a queue id; nothing was done"),
        "{stderr}"
    );
    assert_eq!(list(&config).await.len(), 3, "nothing deleted");
    // The same id twice is one message.
    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "retry", &c, &c]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("retry: 1 of 1 messages"), "{stdout}");
    wait_all_deferred(&config, 3).await;

    // An address filter reaches the audit log with its domain only (S1: no addresses).
    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "hold", "--to", "eva@other.test"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("hold: 1 of 1 messages"), "{stdout}");
    // Release picks among held mail only: the two partner.test messages are not held.
    let (ok, stdout, stderr) =
        tlsgate(&cli, &["queue", "release", "--domain", "partner.test"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("release: 0 of 0 messages"), "{stdout}");
    let (ok, stdout, stderr) =
        tlsgate(&cli, &["queue", "delete", "--domain", "partner.test"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("delete: 2 of 2 messages"), "{stdout}");
    let left = list(&config).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, c);
    let (ok, stdout, stderr) = tlsgate(&cli, &["queue", "delete", "--all"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("delete: 1 of 1 messages (all)"), "{stdout}");
    s.wait_queue_empty().await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let audit = audit_text(&s);
    assert!(
        audit.contains("domain=partner.test (2 of 2 messages)"),
        "{audit}"
    );
    assert!(audit.contains("all (1 of 1 messages)"), "{audit}");
    assert!(
        audit.contains("to=…@other.test (1 of 1 messages)"),
        "{audit}"
    );
    assert!(!audit.contains("eva@other.test"), "{audit}");
    assert!(audit.contains("queue show --headers"), "{audit}");
    assert_eq!(
        audit.matches("\"action\":\"queue delete\"").count(),
        2,
        "one entry per bulk action: {audit}"
    );
}

/// The process log of this test binary, captured (plain text, as journald gets it).
fn captured_log() -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
                self.0
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(data);
                Ok(data.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        // The field format `serve` uses for `log.format = "text"` (src/main.rs).
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .fmt_fields(tlsgate::ops::logfmt::Logfmt)
            .with_writer(move || Sink(writer.clone()))
            .try_init();
        buffer
    })
    .clone()
}

/// Issue 14 item 3: the accepted message and each delivered recipient have one log line with
/// the queue id and the `Message-ID` header (RFC 5322 3.6.4), so that a user's complaint
/// ("my mail <…> never arrived") can be matched to a queue entry, as with Postfix's
/// `cleanup: message-id=` line.
#[tokio::test]
async fn accepted_and_delivered_log_lines_carry_the_message_id() {
    let log = captured_log();
    let s = setup("", "").await;
    let mx = s.single_mx(Behaviour::default()).await;
    s.submit_raw(
        "kari@example.no",
        "",
        "ola@partner.test",
        b"From: <kari@example.no>\r\nMessage-ID: <complaint-42@example.no>\r\nSubject: x\r\n\r\nHi.\r\n",
    )
    .await;
    mx.wait_for_messages(1, WAIT).await;
    s.wait_queue_empty().await;
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    let line = |event: &str| -> String {
        text.lines()
            .find(|l| l.contains(event) && l.contains("complaint-42"))
            .unwrap_or_else(|| panic!("no {event:?} line with the Message-ID:\n{text}"))
            .to_string()
    };
    let queued = line("message queued");
    let delivered = line(" delivered ");
    for l in [&queued, &delivered] {
        assert!(l.contains("message_id=<complaint-42@example.no>"), "{l}");
        assert!(!l.contains("Some("), "Debug formatting in {l}");
    }
    let queue_id = queued
        .split_whitespace()
        .find_map(|f| f.strip_prefix("queue_id="))
        .expect("queue_id on the accepted line");
    assert!(
        delivered.contains(&format!("queue_id={queue_id}")),
        "{delivered}"
    );
    assert!(queued.contains("nrcpt=1"), "{queued}");
    assert!(queued.contains("to=ola@partner.test"), "{queued}");
    assert!(delivered.contains("to=ola@partner.test "), "{delivered}");
    assert!(delivered.contains("relay=mx1.partner.test"), "{delivered}");
    assert!(delivered.contains("tls_level="), "{delivered}");
    // One quoting rule (logfmt): free text quoted, plain words bare.
    assert!(delivered.contains(" reply=\"250 "), "{delivered}");
}
