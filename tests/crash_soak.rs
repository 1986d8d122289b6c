//! Crash soak (requirement S5, issue 16 item 3): the real `tlsgate` binary is killed with
//! SIGKILL at random moments while it works, and restarted; every message it acknowledged with
//! `250` (RFC 5321 4.1.1.4: from then on the relay is responsible for it) must reach the next
//! hop at least once. Duplicates are allowed (at-least-once is the promise) but counted and kept
//! rare. Besides the load soak, kills land during a bulk delete, during the re-sealing of a
//! plaintext queue when `queue.encryption_key` is first set (issue 16 item 1, S3) and during a
//! domain list reload (T10).
//!
//! The queue store is never opened directly (the tests hold for any engine behind the `Store`
//! trait): what counts is what the in-process sink received and what the CLI / admin API say.
//! Random schedules come from a seeded PRNG; the seed is printed and `SOAK_SEED=<seed>`
//! replays it.
//!
//! Note: SIGKILL loses what is still inside the process, not what reached the kernel's page
//! cache; these tests prove "out of the process before 250", not "fsynced before 250" (see
//! tests/crash.rs).

mod common;

use common::mx_sink::{Behaviour, Sink};
use common::process::{cli, cli_finish, cli_spawn, free_port, log_tail, Conn, Relay, Rng};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tlsgate::admin::QueueEntry;

/// The header that carries each message's unique marker; the sink side finds it in the data.
const MARKER_HEADER: &str = "X-Soak-Marker: ";
/// Delivered after the load stopped, at the latest (the retry schedule is short).
const DRAIN_LIMIT: Duration = Duration::from_secs(90);
/// Bound for the client tasks to notice the stop flag.
const CLIENT_STOP_LIMIT: Duration = Duration::from_secs(15);

/// A relay on its own data directory, with a configuration file, a log file and an in-process
/// sink as `inbound.next_hop`.
struct Bed {
    dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    sink: Sink,
    cert: PathBuf,
    key: PathBuf,
}

impl Bed {
    /// Writes the configuration: one inbound listener on a fixed loopback port (the same after
    /// every restart), mail for example.no and hold.example.no relayed to the sink without
    /// DNS, `retry_schedule` as given, and `extra` appended (more sections).
    async fn new(retry_schedule: &str, extra: &str) -> Bed {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = common::TestCa::new();
        let (cert, key) = ca.write_server_files(dir.path(), &[common::HOSTNAME]);
        let sink =
            Sink::start_on_free_port("127.0.0.1".parse().expect("ip"), Behaviour::default()).await;
        let port = free_port();
        let bed = Bed {
            config: dir.path().join("tlsgate.toml"),
            log: dir.path().join("tlsgate.log"),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            sink,
            cert,
            key,
        };
        bed.write_config(retry_schedule, extra);
        bed
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn write_config(&self, retry_schedule: &str, extra: &str) {
        let text = format!(
            r#"
[server]
hostname = "{host}"
data_dir = "{data}"
min_free_space = 0
max_message_size = 1000000

[tls]
cert = "{cert}"
key = "{key}"

[[listener]]
bind = "{addr}"
role = "inbound"

[inbound]
local_domains = ["example.no", "hold.example.no"]
# Everything goes to the test's sink; no DNS is needed for it.
next_hop = "{sink}"
next_hop_tls = "may"

# Sender authentication needs DNS, which these tests do not serve.
[inbound.auth]
enabled = false

# Nothing listens on the discard port: no query ever leaves loopback.
[dns]
nameservers = ["127.0.0.1:9"]

[delivery]
retry_schedule = {retry_schedule}
connect_timeout = "2s"
command_timeout = "3s"
data_timeout = "5s"
idle_timeout = "1s"

[log]
level = "info"
{extra}
"#,
            host = common::HOSTNAME,
            data = self.data_dir().display(),
            cert = self.cert.display(),
            key = self.key.display(),
            addr = self.addr,
            sink = self.sink.addr(),
        );
        std::fs::write(&self.config, text).expect("write the configuration");
    }

    fn spawn(&self) -> Relay {
        Relay::spawn(&self.config, &self.log)
    }

    /// Spawns the relay and waits for its banner.
    fn start(&self) -> Relay {
        let mut relay = self.spawn();
        relay.wait_ready(self.addr);
        relay
    }

    /// `tlsgate ARGS --config …` against this relay; panics (with the relay's log) on failure.
    async fn cli_ok(&self, args: &[&str]) -> String {
        let out = cli(&self.config, args).await;
        assert!(
            out.ok,
            "tlsgate {args:?} failed: {}{}\nrelay log:\n{}",
            out.stdout,
            out.stderr,
            log_tail(&self.log)
        );
        out.stdout
    }

    /// `queue list --json` with `filter` (e.g. `["--status", "deferred"]`).
    async fn list(&self, filter: &[&str]) -> Vec<QueueEntry> {
        let mut args = vec!["queue", "list", "--json"];
        args.extend_from_slice(filter);
        let out = self.cli_ok(&args).await;
        // With nothing to list the CLI says so in words (tests/admin.rs), not as JSON.
        if out.starts_with("no message matches") || out.trim() == "the queue is empty" {
            return Vec::new();
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("queue list --json: {e}: {out}"))
    }

    /// Waits (bounded) until `queue list --json FILTER` lists `n` messages.
    async fn wait_listed(&self, filter: &[&str], n: usize, limit: Duration) -> Vec<QueueEntry> {
        let deadline = Instant::now() + limit;
        loop {
            let entries = self.list(filter).await;
            if entries.len() == n {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} messages listed with {filter:?} after {limit:?}",
                entries.len()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A message with the unique `marker` in a header (and in the body); a few lines start with a
/// dot (RFC 5321 4.5.2) and every fifth message is some tens of KB, so that DATA takes a while.
fn body(marker: &str, n: usize) -> Vec<u8> {
    let mut text = format!(
        "From: <soak@example.org>\r\nTo: <soak@example.no>\r\nSubject: soak {marker}\r\n\
         {MARKER_HEADER}{marker}\r\n\r\nmessage {marker}\r\n.a line with a leading dot\r\n"
    );
    let lines = if n % 5 == 4 { 400 } else { 4 + n % 9 };
    for i in 0..lines {
        text.push_str(&format!(
            "{marker} line {i:05} {}\r\n",
            "x".repeat(40 + i % 30)
        ));
    }
    text.into_bytes()
}

/// The marker a sink message carries, if any.
fn marker_of(data: &[u8]) -> Option<String> {
    let at = data
        .windows(MARKER_HEADER.len())
        .position(|w| w == MARKER_HEADER.as_bytes())?;
    let rest = &data[at + MARKER_HEADER.len()..];
    let end = rest.windows(2).position(|w| w == b"\r\n")?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// How often the sink received each marker.
fn received_counts(sink: &Sink) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for m in sink.messages() {
        if let Some(marker) = marker_of(&m.data) {
            *counts.entry(marker).or_insert(0) += 1;
        }
    }
    counts
}

/// Waits (bounded by `limit`) until the sink received every marker in `acked`; panics naming
/// the missing ones (lost messages: S5 broken).
async fn wait_all_delivered(
    bed: &Bed,
    acked: &[String],
    limit: Duration,
) -> HashMap<String, usize> {
    let deadline = Instant::now() + limit;
    loop {
        let counts = received_counts(&bed.sink);
        let missing: Vec<&String> = acked.iter().filter(|m| !counts.contains_key(*m)).collect();
        if missing.is_empty() {
            return counts;
        }
        if Instant::now() >= deadline {
            panic!(
                "S5: {} of {} acknowledged messages never reached the sink within {limit:?}, \
                 e.g. {:?}; relay log:\n{}",
                missing.len(),
                acked.len(),
                missing.iter().take(10).collect::<Vec<_>>(),
                log_tail(&bed.log)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Continuous load: client tasks submitting distinct messages until told to stop.

struct Load {
    addr: SocketAddr,
    stop: AtomicBool,
    /// Markers of the messages that got `250`.
    acked: Mutex<Vec<String>>,
    acked_count: AtomicUsize,
    errors: AtomicUsize,
}

/// One client: sessions of up to five messages, reconnecting after any error (the relay may be
/// dead or starting); bounded by the stop flag and an attempt cap.
async fn load_client(load: Arc<Load>, client: usize) {
    let mut seq = 0usize;
    for _ in 0..100_000 {
        if load.stop.load(Ordering::SeqCst) {
            return;
        }
        let session = async {
            let mut c = Conn::greeted(load.addr, &format!("client{client}.example.org")).await?;
            for _ in 0..5 {
                if load.stop.load(Ordering::SeqCst) {
                    break;
                }
                let marker = format!("soak-c{client}-s{seq}");
                let data = body(&marker, seq);
                seq += 1;
                c.submit(
                    &format!("c{client}@example.org"),
                    &["soak@example.no"],
                    &data,
                )
                .await?;
                load.acked.lock().expect("acked lock").push(marker);
                load.acked_count.fetch_add(1, Ordering::SeqCst);
            }
            c.expect(Some("QUIT"), 221).await.map(|_| ())
        };
        if session.await.is_err() {
            load.errors.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts `clients` load tasks against `addr`.
fn start_load(addr: SocketAddr, clients: usize) -> (Arc<Load>, Vec<tokio::task::JoinHandle<()>>) {
    let load = Arc::new(Load {
        addr,
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
        acked_count: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
    });
    let tasks = (0..clients)
        .map(|c| tokio::spawn(load_client(load.clone(), c)))
        .collect();
    (load, tasks)
}

/// Stops the load, waits (bounded) for the tasks, and returns the acknowledged markers.
async fn stop_load(load: &Load, tasks: Vec<tokio::task::JoinHandle<()>>) -> Vec<String> {
    load.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        tokio::time::timeout(CLIENT_STOP_LIMIT, task)
            .await
            .expect("a load client did not stop")
            .expect("a load client panicked");
    }
    load.acked.lock().expect("acked lock").clone()
}

/// S5 soak: under continuous inbound load and deliveries to the sink at the same time, the
/// relay is SIGKILLed 20 times at random moments (so kills land mid-DATA, mid-commit and
/// mid-delivery) and restarted each time. At the end every acknowledged message reached the
/// sink at least once; duplicates (delivered, killed before the result was recorded) are
/// counted and must stay under 5 % of the acknowledged messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_under_load_lose_no_acknowledged_message() {
    const KILLS: usize = 20;
    let seed = Rng::seed_from_env("SOAK_SEED");
    eprintln!("soak seed {seed} (replay with SOAK_SEED={seed})");
    let mut rng = Rng::new(seed);
    let bed = Bed::new(r#"["1s"]"#, "").await;
    let mut relay = bed.start();
    let (load, tasks) = start_load(bed.addr, 6);
    let started = Instant::now();
    for kill in 0..KILLS {
        // 100–900 ms of work after the banner: sessions and deliveries are in flight.
        let delay = Duration::from_millis(rng.range(100, 900));
        tokio::time::sleep(delay).await;
        let before = load.acked_count.load(Ordering::SeqCst);
        relay.kill9();
        drop(relay);
        relay = bed.start();
        eprintln!(
            "kill {kill} after {delay:?}: {before} acknowledged so far, {} delivered",
            bed.sink.messages().len()
        );
    }
    // A last stretch of load on the relay that stays up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = stop_load(&load, tasks).await;
    eprintln!(
        "load stopped after {:?}: {} acknowledged, {} client-side errors",
        started.elapsed(),
        acked.len(),
        load.errors.load(Ordering::SeqCst)
    );
    assert!(
        acked.len() >= 100,
        "too little load to mean anything: {} acknowledged; log:\n{}",
        acked.len(),
        log_tail(&bed.log)
    );
    let unique: HashSet<&String> = acked.iter().collect();
    assert_eq!(unique.len(), acked.len(), "markers are unique");

    let counts = wait_all_delivered(&bed, &acked, DRAIN_LIMIT).await;
    let duplicates: Vec<(&String, usize)> = counts
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(m, &n)| (m, n))
        .collect();
    let extra: usize = duplicates.iter().map(|(_, n)| n - 1).sum();
    // Delivered but never acknowledged: the kill came between commit and `250` (allowed).
    let unacked = counts.keys().filter(|m| !unique.contains(m)).count();
    eprintln!(
        "soak: {} acknowledged, all delivered; {extra} duplicate deliveries of {} messages \
         {:?}; {unacked} delivered without an acknowledgement",
        acked.len(),
        duplicates.len(),
        duplicates.iter().take(20).collect::<Vec<_>>()
    );
    assert!(
        extra * 100 < acked.len() * 5,
        "duplicates are not rare: {extra} for {} acknowledged",
        acked.len()
    );
    relay.terminate();
}

/// S5 during a bulk delete (issue 16 items 2 and 3): thousands of deferred messages are
/// removed with `tlsgate queue delete --all --domain` and the relay is SIGKILLed while that
/// runs. After the restart the queue is consistent: it lists and summarises, every remaining
/// message can be shown through the admin API, a second bulk delete finishes, and every
/// acknowledged message for the domain that accepts is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_a_bulk_delete_leaves_a_consistent_queue() {
    const HOLD: usize = 2000;
    const GO: usize = 100;
    const CLIENTS: usize = 8;
    let seed = Rng::seed_from_env("SOAK_SEED");
    eprintln!("bulk delete seed {seed} (replay with SOAK_SEED={seed})");
    let mut rng = Rng::new(seed);
    let bed = Bed::new(r#"["1h"]"#, "").await;
    // RFC 5321 4.2.5: 451 to RCPT is a temporary failure; hold.example.no stays queued.
    bed.sink.set_behaviour(Behaviour {
        rcpt_reply: Arc::new(|rcpt| {
            if rcpt.ends_with("@hold.example.no") {
                "451 4.3.0 try again later".to_string()
            } else {
                "250 2.1.5 ok".to_string()
            }
        }),
        ..Behaviour::default()
    });
    let mut relay = bed.start();

    // Queue HOLD + GO messages from CLIENTS sessions at once; here no kill: all must be taken.
    let queued = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let addr = bed.addr;
        tasks.push(tokio::spawn(async move {
            let mut go = Vec::new();
            let mut c = Conn::greeted(addr, "bulk.example.org").await?;
            let mut n = client;
            while n < HOLD + GO {
                let marker = format!("bulk-{n}");
                // Every 21st message goes to the domain that accepts.
                let rcpt = if n % 21 == 0 && go.len() < GO {
                    go.push(marker.clone());
                    "go@example.no"
                } else {
                    "stuck@hold.example.no"
                };
                c.submit("bulk@example.org", &[rcpt], &body(&marker, 0))
                    .await?;
                n += CLIENTS;
            }
            c.expect(Some("QUIT"), 221).await?;
            Ok::<_, std::io::Error>(go)
        }));
    }
    let mut go_acked = Vec::new();
    for task in tasks {
        let go = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("queueing finished in time")
            .expect("queueing task")
            .unwrap_or_else(|e| panic!("queueing failed: {e}; log:\n{}", log_tail(&bed.log)));
        go_acked.extend(go);
    }
    let hold = HOLD + GO - go_acked.len();
    eprintln!(
        "queued {hold} deferring + {} delivering messages in {:?}",
        go_acked.len(),
        queued.elapsed()
    );
    bed.wait_listed(
        &["--domain", "hold.example.no", "--status", "deferred"],
        hold,
        Duration::from_secs(60),
    )
    .await;

    eprintln!("{:?}: all deferred", queued.elapsed());

    // The bulk delete, and SIGKILL while it runs: once the admin API lists fewer messages
    // (removal under way; the selection before it takes a while for thousands), plus a random
    // delay.
    let config = tlsgate::config::Config::load(&bed.config).expect("load the configuration");
    let delete = cli_spawn(
        &bed.config,
        &["queue", "delete", "--all", "--domain", "hold.example.no"],
    );
    let began = Instant::now();
    let mut seen = hold;
    while seen == hold && began.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (status, text) =
            tlsgate::admin::request(&config, "GET", "/queue?domain=hold.example.no")
                .await
                .expect("GET /queue during the delete");
        assert_eq!(status, 200, "{text}");
        seen = serde_json::from_str::<Vec<QueueEntry>>(&text)
            .expect("GET /queue JSON")
            .len();
    }
    let delay = Duration::from_millis(rng.range(0, 200));
    tokio::time::sleep(delay).await;
    relay.kill9();
    drop(relay);
    let out = cli_finish(delete).await;
    eprintln!(
        "delete under way after {:?} ({seen} listed), killed {delay:?} later: ok={} {}{}",
        began.elapsed() - delay,
        out.ok,
        out.stdout.trim(),
        out.stderr.trim()
    );

    let relay = bed.start();
    eprintln!("{:?}: restarted", queued.elapsed());
    let summary = bed.cli_ok(&["queue", "summary"]).await;
    let remaining = bed.list(&["--domain", "hold.example.no"]).await;
    eprintln!(
        "after the restart {} of {hold} deferring messages remain; summary:\n{summary}",
        remaining.len()
    );
    assert!(
        !out.ok,
        "the delete finished before the kill (nothing tested): {}",
        out.stdout
    );
    // Every remaining message can be shown: the listing above read each one's envelope and
    // recipient states back; a sample also one by one through `GET /queue/{id}`.
    for entry in &remaining {
        assert_eq!(entry.recipients.len(), 1, "{entry:?}");
        assert_eq!(entry.recipients[0].address, "stuck@hold.example.no");
        assert_eq!(entry.recipients[0].status, "deferred", "{entry:?}");
    }
    let step = (remaining.len() / 20).max(1);
    for entry in remaining.iter().step_by(step) {
        let (status, text) =
            tlsgate::admin::request(&config, "GET", &format!("/queue/{}", entry.id))
                .await
                .unwrap_or_else(|e| panic!("GET /queue/{}: {e}", entry.id));
        assert_eq!(status, 200, "GET /queue/{}: {text}", entry.id);
        let shown: tlsgate::admin::QueueEntry =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(shown.recipients[0].status, "deferred", "{text}");
    }
    eprintln!("{:?}: every remaining message shown", queued.elapsed());
    // One of them through the CLI too, as an administrator would.
    if let Some(entry) = remaining.first() {
        let shown = bed.cli_ok(&["queue", "show", &entry.id]).await;
        assert!(shown.contains(&entry.id), "{shown}");
    }
    // A second bulk delete finishes and removes exactly what was left.
    let second = bed
        .cli_ok(&["queue", "delete", "--all", "--domain", "hold.example.no"])
        .await;
    let n = remaining.len();
    assert!(
        second.contains(&format!("delete: {n} of {n} messages")),
        "{second}"
    );
    assert!(bed.list(&["--domain", "hold.example.no"]).await.is_empty());

    eprintln!("{:?}: second delete done", queued.elapsed());

    // Nothing acknowledged for the accepting domain was lost on the way.
    wait_all_delivered(&bed, &go_acked, Duration::from_secs(60)).await;
    let mut relay = relay;
    relay.terminate();
}

/// Every file under `dir`, recursively, that holds `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    // Bounded by the tree the test wrote.
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(path);
                }
            }
        }
    }
    found
}

/// S5 during re-sealing (issue 16 item 1, S3): a plaintext queue of deferred messages; the
/// relay is started with `queue.encryption_key` set and SIGKILLed during its start-up, several
/// times with different delays (before, during and after the rewrite of the store). Then it
/// starts normally: every message is there, no file under data_dir holds a marker in
/// plaintext, and all are delivered once the sink accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_resealing_keeps_every_message_and_seals_them() {
    const N: usize = 1000;
    const CLIENTS: usize = 8;
    const SECRET: &str = "Rs9SealMarkerQ4";
    let seed = Rng::seed_from_env("SOAK_SEED");
    eprintln!("reseal seed {seed} (replay with SOAK_SEED={seed})");
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let bed = Bed::new(r#"["1h"]"#, "").await;
    // RFC 5321 4.2.5: every recipient deferred, so all N stay queued.
    bed.sink.set_behaviour(Behaviour {
        rcpt_reply: Arc::new(|_| "451 4.3.0 try again later".to_string()),
        ..Behaviour::default()
    });
    let mut relay = bed.start();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let addr = bed.addr;
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut c = Conn::greeted(addr, "seal.example.org").await?;
            let mut n = client;
            while n < N {
                // The secret is in the body, a header and the recipient address.
                let marker = format!("{SECRET}-{n}");
                let rcpt = format!("r{n}-{SECRET}@example.no");
                let id = c
                    .submit("seal@example.org", &[&rcpt], &body(&marker, n))
                    .await?;
                ids.push((id, marker));
                n += CLIENTS;
            }
            c.expect(Some("QUIT"), 221).await?;
            Ok::<_, std::io::Error>(ids)
        }));
    }
    let mut acked: HashMap<String, String> = HashMap::new();
    for task in tasks {
        let ids = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("queueing finished in time")
            .expect("queueing task")
            .unwrap_or_else(|e| panic!("queueing failed: {e}; log:\n{}", log_tail(&bed.log)));
        acked.extend(ids);
    }
    assert_eq!(acked.len(), N);
    bed.wait_listed(&["--status", "deferred"], N, Duration::from_secs(60))
        .await;
    eprintln!("{:?}: {N} queued and deferred", t0.elapsed());
    relay.terminate();
    drop(relay);
    assert!(
        !files_holding(&bed.data_dir(), SECRET).is_empty(),
        "the plaintext queue holds the secret (else this test proves nothing)"
    );

    let keys = tempfile::tempdir().expect("key directory");
    let key = keys.path().join("queue.key");
    tlsgate::queue::seal::write_new_key(&key).expect("write a queue key");
    bed.write_config(
        r#"["1h"]"#,
        &format!("[queue]\nencryption_key = \"{}\"\n", key.display()),
    );

    // Kills during start-up. Each restart either finds the plaintext store (re-sealing starts
    // over), an unfinished copy beside it, or the swapped store (at_rest.rs, module doc).
    let sealed_line = "queue encryption enabled";
    let queue_dir = bed.data_dir().join("queue");
    let mut kills = Vec::new();
    for round in 0..8 {
        let log = std::fs::read_to_string(&bed.log).unwrap_or_default();
        if log.contains(sealed_line) {
            break;
        }
        let delay = Duration::from_millis(rng.range(20, 150) + 150 * round);
        let mut relay = bed.spawn();
        tokio::time::sleep(delay).await;
        if let Some(status) = relay.exited() {
            panic!(
                "tlsgate exited by itself during re-sealing ({status}); log:\n{}",
                log_tail(&bed.log)
            );
        }
        relay.kill9();
        let copy_left = queue_dir.with_file_name("queue.new").exists();
        let old_left = queue_dir.with_file_name("queue.old").exists();
        kills.push(format!(
            "{delay:?} (queue.new {copy_left}, queue.old {old_left}, queue {})",
            queue_dir.exists()
        ));
    }
    eprintln!("killed during start-up: {}", kills.join("; "));

    let relay = bed.start();
    let listed = bed.wait_listed(&[], N, Duration::from_secs(30)).await;
    eprintln!("{:?}: started with the key, {N} listed", t0.elapsed());
    let ids: HashSet<&str> = listed.iter().map(|e| e.id.as_str()).collect();
    for id in acked.keys() {
        assert!(ids.contains(id.as_str()), "{id} lost during re-sealing");
    }
    // S3: sealed at rest, including what a killed rewrite left behind.
    let leaks = files_holding(&bed.data_dir(), SECRET);
    assert!(leaks.is_empty(), "plaintext secret in {leaks:?}");

    // All deliverable once the sink accepts (they wait an hour otherwise: retry them now).
    bed.sink.set_behaviour(Behaviour::default());
    bed.cli_ok(&["queue", "retry", "--all"]).await;
    let markers: Vec<String> = acked.values().cloned().collect();
    wait_all_delivered(&bed, &markers, Duration::from_secs(90)).await;
    eprintln!("{:?}: all delivered", t0.elapsed());
    let mut relay = relay;
    relay.terminate();
}

/// The domains `tlsgate domains list --json` prints (it reads the file as the relay would at
/// start), checked against the list in force in the running relay (admin API `GET /domains`);
/// sorted.
async fn listed_domains(bed: &Bed) -> Vec<String> {
    let out = bed.cli_ok(&["domains", "list", "--json"]).await;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("domains list --json: {e}: {out}"));
    let mut domains: Vec<String> = rows
        .iter()
        .filter_map(|r| r["domain"].as_str().map(str::to_string))
        .collect();
    domains.sort();
    let config = tlsgate::config::Config::load(&bed.config).expect("load the configuration");
    let (status, text) = tlsgate::admin::request(&config, "GET", "/domains")
        .await
        .expect("GET /domains");
    assert_eq!(status, 200, "{text}");
    let mut in_force: Vec<String> =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET /domains: {e}: {text}"));
    in_force.sort();
    assert_eq!(in_force, domains, "the running relay's list vs the file's");
    domains
}

/// S5 during a domain list reload (T10): under load, the list file is rewritten and a reload
/// asked for (SIGHUP, or `tlsgate domains reload`), and the relay is SIGKILLed right after.
/// It restarts, the new list is in force, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_during_a_domain_list_reload_restarts_with_the_new_list() {
    let seed = Rng::seed_from_env("SOAK_SEED");
    eprintln!("domain list seed {seed} (replay with SOAK_SEED={seed})");
    let mut rng = Rng::new(seed);
    let lists = tempfile::tempdir().expect("list directory");
    let list = lists.path().join("tvungen-tls.csv");
    std::fs::write(&list, "alpha.test\nbeta.test\n").expect("write the domain list");
    let bed = Bed::new(
        r#"["1s"]"#,
        &format!("[domain_list]\npath = \"{}\"\n", list.display()),
    )
    .await;
    let mut relay = bed.start();
    assert_eq!(listed_domains(&bed).await, ["alpha.test", "beta.test"]);
    let (load, tasks) = start_load(bed.addr, 4);

    let rounds: [&[&str]; 3] = [
        &["gamma.test", "delta.test"],
        &["epsilon.test", "zeta.test", "eta.test"],
        &["theta.test"],
    ];
    for (round, domains) in rounds.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(rng.range(200, 600))).await;
        let text: String = domains.iter().map(|d| format!("{d}\n")).collect();
        std::fs::write(&list, text).expect("rewrite the domain list");
        let by_cli = round == 1;
        let reload = if by_cli {
            Some(cli_spawn(&bed.config, &["domains", "reload"]))
        } else {
            relay.signal(libc::SIGHUP);
            None
        };
        tokio::time::sleep(Duration::from_millis(rng.range(0, 40))).await;
        relay.kill9();
        drop(relay);
        if let Some(reload) = reload {
            let out = cli_finish(reload).await;
            eprintln!(
                "domains reload killed: ok={} {}{}",
                out.ok, out.stdout, out.stderr
            );
        }
        relay = bed.start();
        let mut want: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
        want.sort();
        assert_eq!(listed_domains(&bed).await, want, "round {round}");
    }
    let acked = stop_load(&load, tasks).await;
    eprintln!(
        "domain list: {} acknowledged, {} client-side errors",
        acked.len(),
        load.errors.load(Ordering::SeqCst)
    );
    assert!(!acked.is_empty(), "no load reached the relay");
    wait_all_delivered(&bed, &acked, DRAIN_LIMIT).await;
    relay.terminate();
}
