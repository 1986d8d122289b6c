//! Issue 16 item 2, "no hang": the pattern that deadlocked sled 0.34.7 in this project's own
//! benchmark (removing many messages in one group; sled issue #1412), reproduced through the
//! product's own tools. Thousands of messages are queued to a destination that defers them,
//! then all of them are removed at once with `tlsgate queue delete --domain` (or failed with
//! `queue bounce --domain`, which also queues a DSN for each) through the admin API, while new
//! mail keeps arriving; several rounds. After each round the queue must still take mail
//! (`250` within a bound, S5: the committer is alive).
//!
//! Bounded: the whole scenario runs on its own thread with its own runtime, and the test
//! thread waits for it at most [`BUDGET`]; a hang fails the test with a message that says
//! where it stopped, and never holds up CI (the stuck thread is left behind when the test
//! binary exits).
//!
//! The default sizes (both engines) fit a debug build in about a minute. Heavier runs use the
//! same tests with bigger sizes:
//! `TLSGATE_HANG_MESSAGES=8000 TLSGATE_HANG_ROUNDS=5 cargo test --release --test queue_hang`.

mod common;

use common::relay::*;
use common::SmtpClient;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest the whole scenario may take before it counts as hung.
const BUDGET: Duration = Duration::from_secs(240);
/// The longest one bulk action (a CLI call) may take.
const ACTION_LIMIT: Duration = Duration::from_secs(90);
/// Concurrent SMTP sessions that fill the queue.
const SESSIONS: usize = 16;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where the scenario is, for the failure message of a hang.
#[derive(Default)]
struct Progress(Mutex<String>);

impl Progress {
    fn set(&self, s: String) {
        eprintln!("queue_hang: {s}");
        if let Ok(mut p) = self.0.lock() {
            *p = s;
        }
    }
    fn get(&self) -> String {
        self.0.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// Runs `scenario(engine, …)` on its own thread and fails if it does not end within [`BUDGET`].
fn bounded(engine: &'static str, messages: usize, rounds: usize) {
    let progress = Arc::new(Progress::default());
    let (done_tx, done_rx) = mpsc::channel();
    let p = progress.clone();
    std::thread::Builder::new()
        .name(format!("hang-{engine}"))
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rt.block_on(scenario(engine, messages, rounds, p))
            }));
            let _ = done_tx.send(result.map_err(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            }));
            // A clean end: the runtime (and the relay in it) is dropped here.
        })
        .expect("spawn the scenario thread");
    match done_rx.recv_timeout(BUDGET) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => panic!("queue_hang ({engine}): {panic}"),
        Err(_) => panic!(
            "queue_hang ({engine}): HANG — no end within {BUDGET:?}; last step: {}",
            progress.get()
        ),
    }
}

/// Sends `count` messages to `domain` over one session; returns how many got `250`.
async fn fill(addr: std::net::SocketAddr, domain: &str, first: usize, count: usize) -> usize {
    let mut client = SmtpClient::connect_greeted(addr).await;
    client.ehlo("exchange.example.no").await;
    let mut accepted = 0;
    for n in first..first + count {
        let to = format!("user{n}@{domain}");
        let body = format!("Subject: hang test {n}\r\n\r\nmessage {n}\r\n");
        let reply = client.send_mail("sender@example.no", &[&to], &body).await;
        if reply.code == 250 {
            accepted += 1;
        }
    }
    let _ = client.cmd("QUIT").await;
    accepted
}

/// Queues `total` messages to `domain` over [`SESSIONS`] sessions at once.
async fn fill_concurrently(
    addr: std::net::SocketAddr,
    domain: &'static str,
    base: usize,
    total: usize,
) -> usize {
    let per = total.div_ceil(SESSIONS);
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..SESSIONS {
        let first = base + s * per;
        let count = per.min(total.saturating_sub(s * per));
        tasks.spawn(async move { fill(addr, domain, first, count).await });
    }
    let mut accepted = 0;
    while let Some(n) = tasks.join_next().await {
        accepted += n.expect("a filling session panicked");
    }
    accepted
}

/// Runs the `tlsgate` CLI (through the admin API), bounded by [`ACTION_LIMIT`].
async fn tlsgate(config: &PathBuf, args: &[&str]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"));
    cmd.args(args)
        .arg("--config")
        .arg(config)
        .kill_on_drop(true);
    let out = tokio::time::timeout(ACTION_LIMIT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("HANG: tlsgate {args:?} did not finish within {ACTION_LIMIT:?}"))
        .expect("tlsgate ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn scenario(engine: &'static str, messages: usize, rounds: usize, progress: Arc<Progress>) {
    let extra = format!("[queue]\nengine = \"{engine}\"\n");
    // RFC 5321 4.2.5: a 4xx reply to RCPT defers; with a one-hour retry everything stays.
    let s = setup("retry_schedule = [\"1h\"]", &extra).await;
    let _mx = s.single_mx(always("451 4.3.0 try again later")).await;
    let addr = s.relay.outbound();
    let cli = s.relay.dir.path().join("tlsgate.toml");
    let started = Instant::now();
    let mut base = 0;
    for round in 0..rounds {
        progress.set(format!("round {round}: queueing {messages} messages"));
        let accepted = fill_concurrently(addr, "partner.test", base, messages).await;
        base += messages;
        assert_eq!(
            accepted, messages,
            "round {round}: not every message got 250"
        );

        // New mail keeps arriving during the bulk action (to another deferring domain, so
        // the filter leaves it alone).
        progress.set(format!("round {round}: bulk action with inbound load"));
        let stop = Arc::new(AtomicBool::new(false));
        let during = Arc::new(AtomicUsize::new(0));
        s.dns.add_mx("other.test", 10, "mx1.partner.test");
        let load = {
            let stop = stop.clone();
            let during = during.clone();
            let first = 10_000_000 + round * 100_000;
            tokio::spawn(async move {
                let mut n = first;
                while !stop.load(Ordering::SeqCst) {
                    during.fetch_add(fill(addr, "other.test", n, 5).await, Ordering::SeqCst);
                    n += 5;
                }
            })
        };
        // Delete in most rounds; bounce in every third (a DSN queued per message, too).
        let action = if round % 3 == 2 { "bounce" } else { "delete" };
        let t = Instant::now();
        let (ok, stdout, stderr) =
            tlsgate(&cli, &["queue", action, "--domain", "partner.test"]).await;
        let took = t.elapsed();
        stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(60), load)
            .await
            .unwrap_or_else(|_| {
                panic!("HANG: round {round}: inbound sessions stuck after the {action}")
            })
            .expect("load task");
        progress.set(format!(
            "round {round}: {action} took {took:.2?}: {}; {} messages accepted meanwhile",
            stdout.trim(),
            during.load(Ordering::SeqCst)
        ));
        // The count says every message (messages being delivered at that moment are named
        // and make it exit non-zero; they are retried below).
        assert!(
            stdout.contains(&format!("{action}: ")),
            "round {round}: {stdout} {stderr}"
        );
        if !ok {
            let (ok, stdout, stderr) =
                tlsgate(&cli, &["queue", action, "--domain", "partner.test"]).await;
            assert!(ok, "round {round}: second {action}: {stdout} {stderr}");
        }
        // S5: the committer still makes progress: a new message is acknowledged in time.
        progress.set(format!("round {round}: the queue still takes mail"));
        let t = Instant::now();
        let n = tokio::time::timeout(Duration::from_secs(30), fill(addr, "other.test", base, 1))
            .await
            .unwrap_or_else(|_| {
                panic!("HANG: round {round}: no 250 within 30s after the {action}")
            });
        assert_eq!(n, 1);
        assert!(t.elapsed() < Duration::from_secs(30));
        // Nothing for partner.test is left (DSNs of a bounce go to example.no).
        let (ok, stdout, stderr) =
            tlsgate(&cli, &["queue", "list", "--domain", "partner.test"]).await;
        assert!(ok, "{stderr}");
        assert!(
            stdout.trim().starts_with("no message matches")
                || stdout.contains("Mail queue is empty"),
            "round {round}: partner.test mail left after the {action}: {stdout}"
        );
    }
    progress.set(format!(
        "{rounds} rounds of {messages} messages done in {:.1?}",
        started.elapsed()
    ));
}

/// Issue 16 item 2 with the default engine, redb.
#[test]
fn bulk_delete_and_bounce_under_load_do_not_hang_redb() {
    bounded(
        "redb",
        env_or("TLSGATE_HANG_MESSAGES", 1000),
        env_or("TLSGATE_HANG_ROUNDS", 3),
    );
}

/// The same with sled 0.34, still selectable (see README, "Queue engine", for how often it
/// hung).
#[test]
fn bulk_delete_and_bounce_under_load_do_not_hang_sled() {
    bounded(
        "sled",
        env_or("TLSGATE_HANG_MESSAGES", 1000),
        env_or("TLSGATE_HANG_ROUNDS", 3),
    );
}
