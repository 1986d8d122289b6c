//! Crash test (requirement S5, non-negotiable 1: "a crash or `kill -9` at any moment loses no
//! acknowledged message").
//!
//! The real `tlsgate` binary is started on a fixed loopback port with its own data directory.
//! Several concurrent clients submit distinct messages; every `250 2.0.0 Ok: queued as ID` is
//! recorded with the SHA-256 of the body the client meant (after dot-unstuffing). While the
//! clients are still sending, the process gets SIGKILL. It is then restarted on the same data
//! directory, must come up (220 banner), is stopped cleanly (SIGTERM, exit 0), and the queue is
//! opened directly: every acknowledged id must be there with exactly the acknowledged content.
//! This is done in several rounds on the same data directory (see [`ROUNDS`]); each round checks
//! the messages of all rounds so far.
//!
//! Note: SIGKILL loses what is still buffered inside the process (sled's write buffers, the
//! committer's pending group), not what already reached the kernel's page cache, so this test
//! proves "written out of the process before 250", not "fsynced before 250"; a power-loss test
//! would need a VM or a fault-injecting file system.

mod common;

use common::process::{free_port, log_tail, protocol, Conn, Relay};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tlsgate::config::Config;
use tlsgate::queue::QueueId;

/// Concurrent submitting clients.
const CLIENTS: usize = 8;
/// When a round kills the server.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// Once this many messages were acknowledged, while the clients are still sending.
    MidLoad(usize),
    /// Once this many messages were acknowledged, the clients finish the message they are on
    /// and stop, and the server is killed at once, idle. This catches a `250` sent while the
    /// message is still only in the process's buffers: under load, the next write usually
    /// pushes the previous one out to the kernel before the kill, hiding such a bug.
    RightAfterLastAck(usize),
}

/// The rounds: each starts the server, loads it, kills it, restarts it and checks the queue.
const ROUNDS: [KillAt; 3] = [
    KillAt::MidLoad(40),
    KillAt::MidLoad(60),
    KillAt::RightAfterLastAck(30),
];
/// A round that has not reached its acknowledgements by then is killed anyway.
const LOAD_LIMIT: Duration = Duration::from_secs(12);
/// Fewest acknowledgements a round must produce to mean anything.
const MIN_ACKS: usize = 10;
/// Messages per SMTP session before the client reconnects.
const MESSAGES_PER_SESSION: usize = 6;
/// Time for the client tasks to notice the dead server.
const CLIENT_STOP_LIMIT: Duration = Duration::from_secs(10);

const RECIPIENT: &str = "rcpt@example.no";

/// One message the relay acknowledged with 250.
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    sha256: [u8; 32],
    size: usize,
    sender: String,
    round: usize,
    client: usize,
    seq: usize,
}

fn config_text(dir: &Path, cert: &Path, key: &Path, port: u16, engine: &str) -> String {
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
bind = "127.0.0.1:{port}"
role = "inbound"

[inbound]
# No next_hop: accepted mail stays deferred in the queue, nothing is delivered or removed.
local_domains = ["example.no"]

# Sender authentication needs DNS, which this test does not serve.
[inbound.auth]
enabled = false

# Nothing listens on the discard port: no query ever leaves loopback.
[dns]
nameservers = ["127.0.0.1:9"]

[log]
level = "info"

[queue]
engine = "{engine}"
"#,
        host = common::HOSTNAME,
        data = dir.join("data").display(),
        cert = cert.display(),
        key = key.display(),
    )
}

/// The message a client means to send (CRLF lines, not dot-stuffed). Every body is distinct;
/// every fourth is a few tens of KB; some lines start with a dot to exercise (un)stuffing.
fn make_body(round: usize, client: usize, seq: usize) -> Vec<u8> {
    let mut body = format!(
        "From: <c{client}@example.org>\r\n\
         To: <{RECIPIENT}>\r\n\
         Subject: crash round {round} client {client} message {seq}\r\n\
         Message-ID: <r{round}.c{client}.s{seq}@crash.tlsgate.test>\r\n\
         \r\n\
         round {round} client {client} message {seq}\r\n\
         .a line that starts with a dot\r\n\
         .\r\n\
         ..two dots\r\n"
    );
    let lines = if seq % 4 == 3 {
        300 + (client * 37 + seq * 11) % 600
    } else {
        5 + seq % 7
    };
    for i in 0..lines {
        let fill = char::from(b'a' + ((client + seq + i) % 26) as u8);
        let fill: String = std::iter::repeat_n(fill, 40 + (i * 7 + seq) % 30).collect();
        body.push_str(&format!(
            "{round:02}-{client:02}-{seq:05}-{i:05} {fill}\r\n"
        ));
    }
    body.push_str("-- \r\nend\r\n");
    body.into_bytes()
}

struct Shared {
    addr: SocketAddr,
    round: usize,
    stop: AtomicBool,
    acked: Mutex<Vec<Acked>>,
    acked_count: AtomicUsize,
    errors: AtomicUsize,
    deadline: Instant,
}

/// One SMTP session: banner, EHLO, up to [`MESSAGES_PER_SESSION`] messages.
async fn session(shared: &Shared, client: usize, seq: &mut usize) -> std::io::Result<()> {
    let mut c = Conn::greeted(shared.addr, &format!("client{client}.example.org")).await?;
    for _ in 0..MESSAGES_PER_SESSION {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let n = *seq;
        *seq += 1;
        let round = shared.round;
        let body = make_body(round, client, n);
        let sender = format!("c{client}.r{round}.s{n}@example.org");
        let id = c.submit(&sender, &[RECIPIENT], &body).await?;
        let id = QueueId::parse(&id)
            .ok_or_else(|| protocol(format!("not a queue id: {id:?}")))?
            .to_string();
        shared.acked.lock().expect("acked list lock").push(Acked {
            id,
            sha256: Sha256::digest(&body).into(),
            size: body.len(),
            sender,
            round,
            client,
            seq: n,
        });
        shared.acked_count.fetch_add(1, Ordering::SeqCst);
    }
    c.expect(Some("QUIT"), 221).await?;
    Ok(())
}

async fn client_loop(shared: Arc<Shared>, client: usize) {
    let mut seq = 0;
    // Bounded by the stop flag, the deadline and an attempt cap.
    for _ in 0..10_000 {
        if shared.stop.load(Ordering::SeqCst) || Instant::now() >= shared.deadline {
            return;
        }
        if session(&shared, client, &mut seq).await.is_err() {
            shared.errors.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs the clients against `relay` until enough messages are acknowledged (or the time is up),
/// kills the relay with SIGKILL as `kill_at` says, and returns what was acknowledged.
fn load_and_kill(
    rt: &tokio::runtime::Runtime,
    relay: &mut Relay,
    addr: SocketAddr,
    round: usize,
    kill_at: KillAt,
) -> Vec<Acked> {
    let shared = Arc::new(Shared {
        addr,
        round,
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
        acked_count: AtomicUsize::new(0),
        errors: AtomicUsize::new(0),
        deadline: Instant::now() + LOAD_LIMIT + CLIENT_STOP_LIMIT,
    });
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| rt.spawn(client_loop(shared.clone(), client)))
        .collect();

    let want = match kill_at {
        KillAt::MidLoad(n) | KillAt::RightAfterLastAck(n) => n,
    };
    let load_deadline = Instant::now() + LOAD_LIMIT;
    while shared.acked_count.load(Ordering::SeqCst) < want && Instant::now() < load_deadline {
        if let Some(status) = relay.child.try_wait().expect("try_wait on tlsgate") {
            panic!(
                "tlsgate exited under load ({status}); log:\n{}",
                log_tail(&relay.log)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let join_clients = |tasks: Vec<tokio::task::JoinHandle<()>>| {
        rt.block_on(async {
            for task in tasks {
                tokio::time::timeout(CLIENT_STOP_LIMIT, task)
                    .await
                    .expect("client task did not stop")
                    .expect("client task panicked");
            }
        })
    };
    match kill_at {
        KillAt::MidLoad(_) => {
            // The clients are mid-transaction here: kill first, then tell them to stop.
            relay.kill9();
            shared.stop.store(true, Ordering::SeqCst);
            join_clients(tasks);
        }
        KillAt::RightAfterLastAck(_) => {
            shared.stop.store(true, Ordering::SeqCst);
            join_clients(tasks);
            relay.kill9();
        }
    }
    let acked = std::mem::take(&mut *shared.acked.lock().expect("acked list lock"));
    eprintln!(
        "round {round} ({kill_at:?}): {} acknowledged, {} client-side errors",
        acked.len(),
        shared.errors.load(Ordering::SeqCst)
    );
    assert!(
        acked.len() >= MIN_ACKS,
        "round {round}: only {} messages acknowledged within {LOAD_LIMIT:?}; log:\n{}",
        acked.len(),
        log_tail(&relay.log)
    );
    acked
}

/// Opens the queue the way tlsgate does and checks every acknowledged message: present, same
/// sender and recipient, same size and SHA-256 of the body.
fn verify_queue(config_path: &Path, acked: &[Acked]) {
    let config = Config::load(config_path).expect("load the test configuration");
    let store = tlsgate::queue::engine::open_with(&config.queue_dir(), config.queue.engine, None)
        .expect("open the queue after the restart");
    let stored: HashSet<String> = store
        .message_ids()
        .expect("list queued messages")
        .iter()
        .map(|id| id.as_str().to_string())
        .collect();

    let mut seen = HashMap::new();
    for a in acked {
        if let Some(other) = seen.insert(a.id.clone(), a) {
            panic!("queue id {} acknowledged twice: {other:?} and {a:?}", a.id);
        }
    }

    let mut problems = Vec::new();
    for a in acked {
        let what = format!(
            "{} (round {} client {} message {})",
            a.id, a.round, a.client, a.seq
        );
        if !stored.contains(&a.id) {
            problems.push(format!("{what}: acknowledged but not in the queue"));
            continue;
        }
        let id = QueueId::parse(&a.id).expect("acked ids were parsed as queue ids");
        let Some(meta) = store.message(&id).expect("read message metadata") else {
            problems.push(format!("{what}: listed but no metadata"));
            continue;
        };
        if meta.sender.as_deref() != Some(a.sender.as_str()) {
            problems.push(format!("{what}: sender {:?}", meta.sender));
        }
        let recipients: Vec<&str> = meta.recipients.iter().map(|r| r.address.as_str()).collect();
        if recipients != [RECIPIENT] {
            problems.push(format!("{what}: recipients {recipients:?}"));
        }
        if meta.size != a.size as u64 {
            problems.push(format!("{what}: size {} != sent {}", meta.size, a.size));
        }
        // The stored body is exactly the dot-unstuffed data; the Received: header is kept apart
        // in MessageMeta::received_header and prepended only at delivery.
        match store.body(&id) {
            Ok(Some(body)) => {
                let digest: [u8; 32] = Sha256::digest(&body).into();
                if digest != a.sha256 {
                    problems.push(format!("{what}: body differs ({} octets)", body.len()));
                }
            }
            Ok(None) => problems.push(format!("{what}: no body")),
            Err(e) => problems.push(format!("{what}: body unreadable: {e}")),
        }
        if !meta.received_header.starts_with("Received: ") {
            problems.push(format!(
                "{what}: odd Received header {:?}",
                meta.received_header
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} acknowledged messages are wrong after kill -9 and restart:\n{}",
        problems.len(),
        acked.len(),
        problems
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        acked.len() <= stored.len(),
        "{} acknowledged but only {} queued",
        acked.len(),
        stored.len()
    );
    eprintln!(
        "verified {} acknowledged messages; {} messages in the queue",
        acked.len(),
        stored.len()
    );
}

/// S5 with the default engine, redb (issue 16 item 2).
#[test]
fn kill_9_under_load_loses_no_acknowledged_message() {
    kill_9_under_load("redb");
}

/// S5 with sled, still selectable (`queue.engine = "sled"`).
#[test]
fn kill_9_under_load_loses_no_acknowledged_message_sled() {
    kill_9_under_load("sled");
}

fn kill_9_under_load(engine: &str) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let ca = common::TestCa::new();
    let (cert, key) = ca.write_server_files(dir.path(), &[common::HOSTNAME]);
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config_path = dir.path().join("tlsgate.toml");
    std::fs::write(
        &config_path,
        config_text(dir.path(), &cert, &key, port, engine),
    )
    .expect("write the configuration");
    let log = dir.path().join("tlsgate.log");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime for the clients");

    let mut all_acked = Vec::new();
    for (round, kill_at) in ROUNDS.into_iter().enumerate() {
        let mut relay = Relay::spawn(&config_path, &log);
        relay.wait_ready(addr);
        all_acked.extend(load_and_kill(&rt, &mut relay, addr, round, kill_at));
        drop(relay);

        // Restart on the same data directory: it must recover and greet.
        let mut relay = Relay::spawn(&config_path, &log);
        relay.wait_ready(addr);
        relay.terminate();
        drop(relay);

        verify_queue(&config_path, &all_acked);
    }
    let rounds: HashSet<usize> = all_acked.iter().map(|a| a.round).collect();
    assert_eq!(rounds.len(), ROUNDS.len());
}
