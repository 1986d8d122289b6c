//! Issue 16 item 4: the queue on a file system that fills up (S5, RFC 5321 4.5.3.1.10,
//! RFC 3463 4.3.1). The relay's `data_dir` is a 16 MiB tmpfs mounted by the test; a filler
//! file takes the space away and gives it back while the relay runs. Asserted, with redb (the
//! default engine; sled ends the process instead of reopening, see `queue::reopen` and its
//! unit test):
//! * with the file system full, `MAIL` gets `452 4.3.1` (before DATA) and `/readyz` 503 with
//!   `tlsgate_queue_accepting 0`;
//! * deliveries continue: messages queued before are delivered while it is full, each exactly
//!   once — their results could not be written at first and are retried, not dropped (before,
//!   such recipients were delivered again);
//! * a message the commit cannot store gets `452 4.3.1` after DATA, never `250`, and the
//!   store's I/O error does not stick: once space returns, `/readyz` is 200 again and new
//!   mail is accepted and delivered without a restart;
//! * nothing queued before is damaged: every message arrives with its marker.
//!
//! Needs root (mount), as the machine and CI run. The guard unmounts on every exit path.

mod common;

use common::mx_sink::{free_port, Behaviour, Sink};
use common::{SmtpClient, TestCa, TestServer, HOSTNAME};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tlsgate::queue::QueueId;

const MIB: u64 = 1024 * 1024;
/// Long enough for the readiness watcher (1 s ticks) and the committer's reopening (1 s).
const WAIT: Duration = Duration::from_secs(20);
const SINK: &str = "127.0.0.4";

use common::process::run_command as run;

/// A size-limited tmpfs at `path`, unmounted (lazily, so that a failing test's open files do
/// not keep it) on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let size = format!("size={bytes}");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &size, "tmpfs", path.to_str().unwrap()],
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .args(["-l", self.path.to_str().unwrap_or_default()])
            .status();
    }
}

fn free_space(path: &Path) -> u64 {
    tlsgate::queue::available_space(path).expect("statvfs")
}

/// Fills the file system of `dir` with `dir/filler` until writing fails (ENOSPC); bounded by
/// the file system's size.
fn fill(dir: &Path) -> std::fs::File {
    let mut file = std::fs::File::create(dir.join("filler")).expect("filler");
    let chunk = vec![0x5au8; 64 * 1024];
    for _ in 0..(64 * MIB / chunk.len() as u64) {
        if file
            .write_all(&chunk)
            .and_then(|_| file.sync_all())
            .is_err()
        {
            break;
        }
    }
    assert!(free_space(dir) < MIB, "the file system is not full");
    file
}

/// `GET path` on the metrics endpoint: (status code, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    common::process::http_get(addr, path).expect("GET on the metrics endpoint")
}

/// Waits (bounded) until `/readyz` answers `code` and the accepting gauge says the same.
async fn wait_ready(metrics: SocketAddr, code: u16, step: &str) {
    let gauge = format!("tlsgate_queue_accepting {}", u8::from(code == 200));
    let deadline = Instant::now() + WAIT;
    loop {
        let (got, ready) = get(metrics, "/readyz");
        let (_, body) = get(metrics, "/metrics");
        if got == code && body.contains(&gauge) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{step}: /readyz still {got}, want {code} ({:?}; metrics have {:?})",
            ready.lines().last(),
            body.lines()
                .find(|l| l.starts_with("tlsgate_queue_accepting"))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn message(marker: &str, size: usize) -> String {
    let mut body = format!(
        "From: <a@example.org>\r\nTo: <user@example.no>\r\nSubject: {marker}\r\n\r\n{marker}\r\n"
    );
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    while body.len() < size {
        body.push_str(line);
    }
    body
}

/// One transaction on the inbound listener up to the reply after the final dot; returns the
/// replies to MAIL and to the end of DATA (`None` when MAIL was refused).
async fn send(
    relay: &TestServer,
    marker: &str,
    size: usize,
) -> (common::Reply, Option<common::Reply>) {
    let mut client = SmtpClient::connect_greeted(relay.inbound()).await;
    client.ehlo("sender.example.org").await;
    let mail = client.cmd("MAIL FROM:<a@example.org>").await;
    if mail.code != 250 {
        return (mail, None);
    }
    let rcpt = client.cmd("RCPT TO:<user@example.no>").await;
    assert_eq!(rcpt.code, 250, "{rcpt:?}");
    assert_eq!(client.cmd("DATA").await.code, 354);
    client.send_raw(message(marker, size).as_bytes()).await;
    client.send_raw(b".\r\n").await;
    let end = client.read_reply().await;
    (mail, Some(end))
}

fn markers_at(sink: &Sink) -> Vec<String> {
    let mut seen: Vec<String> = sink
        .messages()
        .iter()
        .filter_map(|m| {
            let text = String::from_utf8_lossy(&m.data).to_string();
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
        })
        .collect();
    seen.sort();
    seen
}

async fn wait_markers(sink: &Sink, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let deadline = Instant::now() + WAIT;
    while markers_at(sink) != want {
        assert!(
            Instant::now() < deadline,
            "sink has {:?}, want {want:?}",
            markers_at(sink)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn full_disk(engine: &str) {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test mounts a tmpfs and needs root, as CI runs"
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tlsgate=info")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _tmpfs = Tmpfs::mount(&data, 16 * MIB);
    let ca = TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &[HOSTNAME]);
    let port = free_port();
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let text = format!(
        r#"
[server]
hostname = "{HOSTNAME}"
data_dir = "{data}"
max_message_size = 10000000
min_free_space = {min_free}

[tls]
cert = "{cert}"
key = "{key}"

[[listener]]
bind = "127.0.0.1:0"
role = "inbound"

[inbound]
local_domains = ["example.no"]
next_hop = "{SINK}:{port}"
next_hop_tls = "may"

[inbound.auth]
enabled = false

[dns]
nameservers = ["127.0.0.1:9"]

[queue]
engine = "{engine}"

[metrics]
bind = "{metrics}"

[delivery]
connect_timeout = "2s"
command_timeout = "3s"
data_timeout = "5s"
retry_schedule = ["10s"]
"#,
        data = data.display(),
        min_free = 2 * MIB,
        cert = cert.display(),
        key = key.display(),
    );
    let relay = TestServer::start_with_config(dir, ca, &text).await;
    wait_ready(metrics, 200, "step 1").await;

    // Queued before the disk fills: nothing listens at the next hop yet, so they wait.
    let mut queued = Vec::new();
    for marker in ["before-1", "before-2", "before-3"] {
        let (_, end) = send(&relay, marker, 4096).await;
        let end = end.expect("MAIL accepted");
        assert_eq!(end.code, 250, "{end:?}");
        queued.push(QueueId::parse(&common::queue_id(&end)).expect("queue id"));
    }

    // Each has had its first attempt (refused connection) recorded; the next is 10 s later.
    let deadline = Instant::now() + WAIT;
    for id in &queued {
        while relay
            .running()
            .store()
            .recipient_states(id)
            .expect("states")
            .first()
            .is_none_or(|s| s.attempts == 0)
        {
            assert!(Instant::now() < deadline, "no first attempt of {id}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Full: refused before DATA, not ready.
    let filler = fill(&data);
    wait_ready(metrics, 503, "step 2").await;
    // MAIL reads the free space at most once a second (issue 16 item 7).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (mail, _) = send(&relay, "refused", 4096).await;
    assert_eq!((mail.code, mail.enhanced()), (452, "4.3.1"), "{mail:?}");

    // Deliveries continue while full (their second attempt, due 10 s after the first), each
    // message once, though recording the results may fail.
    let sink = Sink::try_start(
        SocketAddr::new(SINK.parse().unwrap(), port),
        Behaviour::default(),
    )
    .await
    .expect("sink port");
    wait_markers(&sink, &["before-1", "before-2", "before-3"]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        sink.messages().len(),
        3,
        "a delivered message was delivered again"
    );

    // Some room, but not for a 6 MB message: the commit fails after DATA (452, never 250),
    // and MAIL is refused again until room is made.
    filler.set_len(0).expect("empty the filler");
    drop(filler);
    let filler = fill(&data);
    let keep = free_space(&data);
    let filler_len = filler.metadata().expect("filler size").len();
    filler
        .set_len(filler_len.saturating_sub(3 * MIB - keep.min(3 * MIB)))
        .expect("shrink the filler");
    filler.sync_all().expect("sync");
    let free = free_space(&data);
    assert!((2 * MIB..5 * MIB).contains(&free), "free {free}");
    wait_ready(metrics, 200, "step 3").await;
    // The results retried meanwhile are recorded now: the queue empties without redelivery.
    let deadline = Instant::now() + WAIT;
    while relay.queue_len() > 0 {
        assert!(
            Instant::now() < deadline,
            "queue holds {}",
            relay.queue_len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sink.messages().len(),
        3,
        "a delivered message was delivered again"
    );

    let (mail, end) = send(&relay, "too-big", 6 * 1024 * 1024).await;
    assert_eq!(mail.code, 250, "{mail:?}");
    let end = end.expect("MAIL accepted");
    assert_eq!((end.code, end.enhanced()), (452, "4.3.1"), "{end:?}");
    let (mail, _) = send(&relay, "after-failure", 4096).await;
    assert_eq!((mail.code, mail.enhanced()), (452, "4.3.1"), "{mail:?}");
    wait_ready(metrics, 503, "step 4").await;

    // Space returns: accepted again and delivered, no restart.
    drop(filler);
    std::fs::remove_file(data.join("filler")).expect("remove the filler");
    wait_ready(metrics, 200, "step 5").await;
    let (_, end) = send(&relay, "after-1", 4096).await;
    let end = end.expect("MAIL accepted");
    assert_eq!(end.code, 250, "{end:?}");
    let (_, end) = send(&relay, "big-after", 6 * 1024 * 1024).await;
    let end = end.expect("MAIL accepted");
    assert_eq!(end.code, 250, "{end:?}");
    wait_markers(
        &sink,
        &["before-1", "before-2", "before-3", "after-1", "big-after"],
    )
    .await;
    let big = sink
        .messages()
        .into_iter()
        .find(|m| String::from_utf8_lossy(&m.data).contains("Subject: big-after"))
        .expect("the big message");
    assert!(big.data.len() >= 6 * 1024 * 1024, "{}", big.data.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_refuses_then_recovers_without_restart_redb() {
    full_disk("redb").await;
}
