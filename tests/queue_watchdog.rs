//! Issue 16 item 2, the queue watchdog, against a store that really blocks: the relay's
//! `data_dir` is on a small ext4 file system on a loop device, frozen with `fsfreeze -f` while
//! the relay runs. Within `queue.stall_timeout` (3s here) plus a margin: `/readyz` answers
//! 503, `tlsgate_queue_stalled` is 1, the log says "queue stalled", the session waiting for its
//! commit gets `451 4.3.0` (never `250`), and the process exits non-zero (75) so that systemd
//! restarts it. After the thaw and a restart, the message acknowledged before the freeze is
//! delivered (S5: nothing acknowledged is lost).
//!
//! Needs root (mount, losetup, fsfreeze), as the machine and CI run. The guard thaws and
//! unmounts on every exit path, a failing assertion included.

mod common;

use common::mx_sink::{free_port, Behaviour, Sink};
use common::relay::always;
use common::SmtpClient;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const STALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Checks run ten times per stall timeout, then the grace before the exit (2s): margin.
const MARGIN: Duration = Duration::from_secs(6);
const START_LIMIT: Duration = Duration::from_secs(30);

use common::process::run_command as run;

/// A 64 MB ext4 file system on a loop device, mounted at `mount`; thawed and unmounted on drop.
struct LoopFs {
    mount: PathBuf,
    _dir: tempfile::TempDir,
}

impl LoopFs {
    fn new() -> LoopFs {
        let dir = tempfile::tempdir().expect("temporary directory");
        let image = dir.path().join("fs.img");
        File::create(&image)
            .and_then(|f| f.set_len(64 * 1024 * 1024))
            .expect("create the image");
        let mount = dir.path().join("mnt");
        std::fs::create_dir(&mount).expect("mount point");
        run(
            "mkfs.ext4",
            &["-q", "-F", image.to_str().unwrap_or_default()],
        );
        run(
            "mount",
            &[
                "-o",
                "loop",
                image.to_str().unwrap_or_default(),
                mount.to_str().unwrap_or_default(),
            ],
        );
        LoopFs { mount, _dir: dir }
    }

    fn freeze(&self) {
        run("fsfreeze", &["-f", self.mount.to_str().unwrap_or_default()]);
    }

    /// Thaws; an already thawed file system is not an error here.
    fn thaw(&self) {
        let _ = Command::new("fsfreeze")
            .args(["-u", self.mount.to_str().unwrap_or_default()])
            .output();
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        self.thaw();
        // A process that is still exiting may hold the mount for a moment: bounded retries,
        // then a lazy unmount so nothing stays mounted.
        for _ in 0..50 {
            let done = Command::new("umount")
                .arg(&self.mount)
                .output()
                .is_ok_and(|o| o.status.success());
            if done {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.mount).output();
    }
}

/// The relay as a child process; killed on drop.
struct Relay {
    child: Child,
    log: PathBuf,
}

impl Relay {
    fn spawn(config: &Path, log: &Path) -> Relay {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the process log");
        let err = out.try_clone().expect("clone the log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_tlsgate"))
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn tlsgate serve");
        Relay {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

use common::process::http_get;

async fn wait_ready(relay: &mut Relay, metrics: SocketAddr) {
    let deadline = Instant::now() + START_LIMIT;
    while Instant::now() < deadline {
        if let Some(status) = relay.child.try_wait().expect("try_wait") {
            panic!("tlsgate exited during start ({status}):\n{}", relay.log());
        }
        if matches!(http_get(metrics, "/readyz"), Ok((200, _))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tlsgate not ready within {START_LIMIT:?}:\n{}", relay.log());
}

/// Sends one message; the reply to the end of data, bounded.
async fn send(addr: SocketAddr, to: &str, limit: Duration) -> Option<common::Reply> {
    tokio::time::timeout(limit, async {
        let mut c = SmtpClient::connect_greeted(addr).await;
        c.ehlo("client.example.org").await;
        c.send_mail(
            "sender@example.org",
            &[to],
            &format!("Subject: watchdog\r\n\r\nfor {to}\r\n"),
        )
        .await
    })
    .await
    .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_queue_turns_unready_answers_451_and_exits_then_delivers_after_restart() {
    let fs = LoopFs::new();
    let files = tempfile::tempdir().expect("temporary directory");
    let ca = common::TestCa::new();
    let (cert, key) = ca.write_server_files(files.path(), &[common::HOSTNAME]);
    // The next hop defers (RFC 5321 4.2.5) until the end, so the acknowledged message waits
    // in the queue across the freeze and the restart.
    let sink = loop {
        let port = free_port();
        if let Ok(sink) = Sink::try_start(
            SocketAddr::from(([127, 0, 0, 1], port)),
            always("451 4.3.0 try again later"),
        )
        .await
        {
            break sink;
        }
    };
    let smtp = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = files.path().join("tlsgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
hostname = "{host}"
data_dir = "{data}"
min_free_space = 0
[tls]
cert = "{cert}"
key = "{key}"
[[listener]]
bind = "{smtp}"
role = "inbound"
[inbound]
local_domains = ["example.no"]
next_hop = "{hop}"
next_hop_tls = "none"
[inbound.auth]
enabled = false
[dns]
nameservers = ["127.0.0.1:9"]
[delivery]
retry_schedule = ["1s"]
[metrics]
bind = "{metrics}"
[audit]
dir = "{audit}"
[queue]
stall_timeout = "3s"
[log]
level = "info"
"#,
            host = common::HOSTNAME,
            data = fs.mount.join("data").display(),
            cert = cert.display(),
            key = key.display(),
            hop = sink.addr(),
            audit = files.path().join("audit").display(),
        ),
    )
    .expect("write the configuration");
    let log = files.path().join("tlsgate.log");

    let mut relay = Relay::spawn(&config, &log);
    wait_ready(&mut relay, metrics).await;
    let acked = send(smtp, "acked@example.no", Duration::from_secs(20))
        .await
        .expect("a reply before the freeze");
    assert_eq!(acked.code, 250, "{acked:?}");
    assert!(
        sink.messages().is_empty(),
        "nothing delivered yet (the next hop defers)"
    );

    fs.freeze();
    let frozen_at = Instant::now();
    // A session whose commit now blocks: answered within the stall timeout plus margin,
    // and never with 250.
    let waiting = tokio::spawn(send(smtp, "frozen@example.no", STALL_TIMEOUT + MARGIN));

    let mut saw_unready = false;
    let mut saw_metric = false;
    while frozen_at.elapsed() < STALL_TIMEOUT + MARGIN && !(saw_unready && saw_metric) {
        if let Ok((code, _)) = http_get(metrics, "/readyz") {
            saw_unready |= code == 503;
        }
        if let Ok((200, body)) = http_get(metrics, "/metrics") {
            saw_metric |= body.lines().any(|l| l == "tlsgate_queue_stalled 1");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reply = waiting.await.expect("session task");
    assert!(saw_unready, "/readyz never said 503:\n{}", relay.log());
    assert!(
        saw_metric,
        "tlsgate_queue_stalled never 1:\n{}",
        relay.log()
    );
    let reply =
        reply.unwrap_or_else(|| panic!("no reply to the waiting session:\n{}", relay.log()));
    assert_eq!(
        (reply.code, reply.text().contains("4.3.0")),
        (451, true),
        "{reply:?}"
    );

    // The exit: a thread blocked in the kernel on the frozen file system can hold the process
    // until the thaw, so the thaw comes first when it has not ended by then.
    let status = match relay.wait_exit(STALL_TIMEOUT + MARGIN).await {
        Some(status) => status,
        None => {
            eprintln!("tlsgate still ending while frozen; thawing");
            fs.thaw();
            relay
                .wait_exit(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("tlsgate did not exit:\n{}", relay.log()))
        }
    };
    fs.thaw();
    assert_eq!(status.code(), Some(75), "{status}:\n{}", relay.log());
    let text = relay.log();
    assert!(text.contains("queue stalled"), "{text}");
    drop(relay);

    // Restart on the thawed file system: the acknowledged message is still there and goes out.
    sink.set_behaviour(Behaviour::default());
    let mut relay = Relay::spawn(&config, &log);
    wait_ready(&mut relay, metrics).await;
    let delivered = sink.wait_for_messages(1, Duration::from_secs(30)).await;
    assert!(
        delivered
            .iter()
            .any(|m| m.rcpts == vec!["acked@example.no".to_string()]),
        "the acknowledged message was not delivered after the restart:\n{}",
        relay.log()
    );
}
