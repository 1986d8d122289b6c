//! Queue encryption at rest (S3, Skatteverket K5.3; issue 16 item 1), through real SMTP
//! sessions of the relay: with `queue.encryption_key`, no file under `data_dir` holds a queued
//! message's body, header or envelope addresses; the wrong key or none refuses the start and
//! leaves the store unchanged; a plaintext queue is re-sealed at start; `gen-key` and
//! `queue rekey` work as the README says; a key file others can read is refused (S4).

mod common;

use common::mx_sink::{Behaviour, Sink};
use common::relay::{always, setup, Setup, WAIT};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// In the body, a header and both envelope addresses of every test message.
const MARKER: &str = "Zq7MarkerXv3";
const SENDER: &str = "sender-Zq7MarkerXv3@example.no";

fn recipient(n: usize) -> String {
    format!("rcpt{n}-Zq7MarkerXv3@partner.test")
}

fn data(n: usize) -> Vec<u8> {
    format!(
        "From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: message {n}\r\nX-Marker: {MARKER}\r\n\r\n\
         Body {n} carries {MARKER} in every line.\r\n{body}",
        rcpt = recipient(n),
        body = format!("{MARKER} line of the body\r\n").repeat(200 * (n + 1)),
    )
    .into_bytes()
}

/// Every file under `dir`, recursively, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// The files under `dir` holding any of `needles`.
fn files_holding(dir: &Path, needles: &[&str]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for (path, bytes) in files(dir) {
        for needle in needles {
            if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push((path.clone(), needle.to_string()));
            }
        }
    }
    found
}

fn hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    use sha2::Digest;
    files(dir)
        .into_iter()
        .map(|(p, bytes)| (p, format!("{:x}", sha2::Sha256::digest(&bytes))))
        .collect()
}

fn secrets() -> Vec<&'static str> {
    vec![MARKER, SENDER, "rcpt0-Zq7", "rcpt1-Zq7"]
}

fn new_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    tlsgate::queue::seal::write_new_key(&path).unwrap();
    path
}

// Every test runs with both queue engines (issue 16 item 2: redb, the default, and sled).
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redb() {
                super::$name("redb").await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sled() {
                super::$name("sled").await
            }
        }
    )*};
}

both_engines!(
    a_sealed_queue_leaks_nothing_to_disk_and_delivers_after_a_restart,
    wrong_missing_or_open_key_refuses_the_start_and_changes_nothing,
    a_plaintext_queue_is_resealed_at_start,
    gen_key_and_rekey
);

fn data_dir(s: &Setup) -> PathBuf {
    s.relay.config.server.data_dir.clone()
}

/// Starts the relay with `key` (or none) and a destination that defers every recipient, and
/// queues two messages through the smarthost listener; returns when both were deferred.
async fn queued_and_deferred(engine: &str, key: Option<&Path>) -> (Setup, Sink) {
    let extra = match key {
        Some(key) => format!(
            "[queue]\nengine = \"{engine}\"\nencryption_key = \"{}\"\n",
            key.display()
        ),
        None => format!("[queue]\nengine = \"{engine}\"\n"),
    };
    let s = setup("retry_schedule = [\"1s\"]", &extra).await;
    // RFC 5321 4.2.5: 4xx to RCPT is a temporary failure, so both stay queued.
    let sink = s.single_mx(always("451 4.3.0 try again later")).await;
    for n in 0..2 {
        s.submit_raw(SENDER, "", &recipient(n), &data(n)).await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let store = s.relay.running().store();
        let ids = store.message_ids().unwrap();
        let deferred = ids
            .iter()
            .filter(|id| {
                store.recipient_states(id).unwrap()[0].status
                    == tlsgate::queue::RecipientStatus::Deferred
            })
            .count();
        if ids.len() == 2 && deferred == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no deferral");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    (s, sink)
}

/// After a restart the sink accepts: both messages arrive with their exact data.
async fn delivered_after(s: &Setup, sink: &Sink) {
    sink.set_behaviour(Behaviour::default());
    let messages = sink.wait_for_messages(2, WAIT).await;
    assert_eq!(messages.len(), 2);
    for n in 0..2 {
        let m = messages
            .iter()
            .find(|m| m.rcpts == vec![recipient(n)])
            .unwrap_or_else(|| panic!("message {n} not delivered"));
        assert!(m.mail_from.contains(SENDER), "{}", m.mail_from);
        // The relay prepends its Received: header; the rest is what the client sent.
        assert!(m.data.ends_with(&data(n)), "message {n} arrived changed");
    }
    s.wait_queue_empty().await;
}

/// S3: sealed at rest — no file under data_dir holds the marker of the body or a header, nor
/// the envelope addresses — and after a restart the messages are delivered unchanged.
async fn a_sealed_queue_leaks_nothing_to_disk_and_delivers_after_a_restart(engine: &str) {
    let keys = tempfile::tempdir().unwrap();
    let key = new_key(keys.path(), "queue.key");
    let (mut s, sink) = queued_and_deferred(engine, Some(&key)).await;
    assert!(
        sink.commands().iter().any(|c| c.contains("rcpt0-Zq7")),
        "the deferral came from the sink"
    );
    s.relay.stop().await;
    assert!(data_dir(&s).join("queue").join("key-check").exists());
    assert_eq!(files_holding(&data_dir(&s), &secrets()), vec![]);
    s.restart().await;
    delivered_after(&s, &sink).await;
}

/// S3: the wrong key, no key, or a key file others may read (S4) refuses the start with a
/// message naming the key, and the store's files are byte for byte unchanged.
async fn wrong_missing_or_open_key_refuses_the_start_and_changes_nothing(engine: &str) {
    let keys = tempfile::tempdir().unwrap();
    let key = new_key(keys.path(), "queue.key");
    let (mut s, sink) = queued_and_deferred(engine, Some(&key)).await;
    s.relay.stop().await;
    let before = hashes(&data_dir(&s));

    let mut wrong = s.relay.config.clone();
    let other = new_key(keys.path(), "other.key");
    wrong.queue.encryption_key = Some(other.clone());
    // check-config (and ExecStartPre) sees it too, read-only (S3).
    let problems: Vec<String> = tlsgate::startup::every_problem(&wrong)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        problems.iter().any(|p| p.contains("another key")),
        "{problems:?}"
    );
    let mut keyless = s.relay.config.clone();
    keyless.queue.encryption_key = None;
    let problems: Vec<String> = tlsgate::startup::every_problem(&keyless)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        problems.iter().any(|p| p.contains("not set")),
        "{problems:?}"
    );
    assert_eq!(hashes(&data_dir(&s)), before, "check: the store changed");
    let err = tlsgate::server::start(wrong)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("queue.encryption_key") && err.contains(other.to_str().unwrap()),
        "{err}"
    );
    assert!(err.contains("another key"), "{err}");
    assert_eq!(
        hashes(&data_dir(&s)),
        before,
        "wrong key: the store changed"
    );

    let mut missing = s.relay.config.clone();
    missing.queue.encryption_key = None;
    let err = tlsgate::server::start(missing)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("encrypted") && err.contains("not set"),
        "{err}"
    );
    assert_eq!(hashes(&data_dir(&s)), before, "no key: the store changed");

    // S4: mode 0644 is refused before anything is opened.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = tlsgate::server::start(s.relay.config.clone())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("queue.encryption_key") && err.contains("mode 0644"),
        "{err}"
    );
    assert_eq!(
        hashes(&data_dir(&s)),
        before,
        "open key file: the store changed"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    s.restart().await;
    delivered_after(&s, &sink).await;
}

/// S3 on an existing queue: a plaintext queue (the marker visible in its files) is re-sealed
/// when a key is configured; afterwards no file holds the marker, and the mail is delivered.
async fn a_plaintext_queue_is_resealed_at_start(engine: &str) {
    let keys = tempfile::tempdir().unwrap();
    let (mut s, sink) = queued_and_deferred(engine, None).await;
    s.relay.stop().await;
    assert!(
        !files_holding(&data_dir(&s), &[MARKER]).is_empty(),
        "the plaintext queue shows the marker (else this test proves nothing)"
    );
    s.relay.config.queue.encryption_key = Some(new_key(keys.path(), "queue.key"));
    s.restart().await;
    assert_eq!(s.relay.queue_len(), 2);
    assert_eq!(files_holding(&data_dir(&s), &secrets()), vec![]);
    let siblings: Vec<_> = std::fs::read_dir(data_dir(&s))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("queue."))
        .collect();
    assert_eq!(
        siblings,
        Vec::<String>::new(),
        "queue.new / queue.old left behind"
    );
    delivered_after(&s, &sink).await;
}

fn tlsgate(args: &[&str]) -> std::process::Output {
    tlsgate_in(Path::new("."), args)
}

/// `tlsgate ARGS` run in `dir` (relative paths in ARGS are read from there).
fn tlsgate_in(dir: &Path, args: &[&str]) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "tlsgate {args:?} hangs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `tlsgate gen-key` writes a 0600 key that works and never overwrites one; `tlsgate queue
/// rekey` (offline: refused while the relay runs) moves the queue to the new key, after which
/// the old key no longer opens it and the new one does.
async fn gen_key_and_rekey(engine: &str) {
    let keys = tempfile::tempdir().unwrap();
    let old = keys.path().join("old.key");
    let run = tlsgate(&["gen-key", "--out", old.to_str().unwrap()]);
    assert!(run.status.success(), "{run:?}");
    let mode = std::fs::metadata(&old).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let content = std::fs::read(&old).unwrap();
    let run = tlsgate(&["gen-key", "--out", old.to_str().unwrap()]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read(&old).unwrap(),
        content,
        "gen-key overwrote a key"
    );

    let (mut s, sink) = queued_and_deferred(engine, Some(&old)).await;
    let config_file = s.relay.dir.path().join("tlsgate.toml");
    let new = keys.path().join("new.key");
    assert!(tlsgate(&["gen-key", "--out", new.to_str().unwrap()])
        .status
        .success());
    // The new key named relative to where the command runs, as an operator in /etc/tlsgate
    // would.
    let rekey = [
        "queue",
        "rekey",
        "--config",
        config_file.to_str().unwrap(),
        "--new-key",
        "new.key",
    ];
    // While the relay runs, the engine's file lock refuses the rewrite.
    let run = tlsgate_in(keys.path(), &rekey);
    assert!(!run.status.success(), "{run:?}");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("in use by a running relay: stop it first"),
        "{run:?}"
    );
    // What to do, not Rust's debug output of the lock error.
    assert!(!stderr.contains("Os {"), "{run:?}");
    s.relay.stop().await;
    let run = tlsgate_in(keys.path(), &rekey);
    assert!(run.status.success(), "{run:?}");
    // Messages counted as messages; records are what the engine wrote for them.
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.starts_with("re-sealed 2 messages ("), "{stdout}");
    // The key path to copy into the config is absolute: a relative one would be read from
    // the config file's directory.
    let absolute = new.canonicalize().unwrap();
    assert!(
        stdout.contains(&format!(
            "Now set queue.encryption_key = \"{}\" in ",
            absolute.display()
        )),
        "{stdout}"
    );
    assert_eq!(files_holding(&data_dir(&s), &secrets()), vec![]);

    // `queue migrate` (issue 16 item 2) to the other engine, as the README says: the config
    // names the new key (as the rekey told), set queue.engine, run it offline; a second run
    // finds nothing to do.
    let (other, other_engine) = match engine {
        "redb" => ("sled", tlsgate::queue::QueueEngine::Sled),
        _ => ("redb", tlsgate::queue::QueueEngine::Redb),
    };
    let text = std::fs::read_to_string(&config_file).unwrap();
    let switched = text
        .replace(
            &format!("engine = \"{engine}\""),
            &format!("engine = \"{other}\""),
        )
        .replace(old.to_str().unwrap(), new.to_str().unwrap());
    assert_ne!(text, switched, "the config names the engine");
    std::fs::write(&config_file, switched).unwrap();
    let migrate = [
        "queue",
        "migrate",
        "--config",
        config_file.to_str().unwrap(),
    ];
    let run = tlsgate(&migrate);
    assert!(run.status.success(), "{run:?}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.starts_with("moved 2 messages ("), "{stdout}");
    let run = tlsgate(&migrate);
    assert!(run.status.success(), "{run:?}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains(&format!("the queue is already {other}")),
        "{stdout}"
    );
    s.relay.config.queue.engine = other_engine;

    let err = tlsgate::server::start(s.relay.config.clone())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("another key"),
        "the old key still opens: {err}"
    );
    s.relay.config.queue.encryption_key = Some(new);
    s.restart().await;
    assert_eq!(s.relay.queue_len(), 2);
    delivered_after(&s, &sink).await;
}
