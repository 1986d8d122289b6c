//! End-to-end throughput: N concurrent clients submit M messages each to a running tlsgate
//! (in this process, release build), which relays them to a local SMTP sink. Prints accepted/s,
//! delivered/s end to end, p50/p99 acceptance latency (MAIL FROM sent → `250` after the
//! final dot, which includes the durable group commit), and tlsgate's CPU time per message.
//!
//! Run: `cargo bench --bench e2e` (defaults: 16 clients × 200 messages of 4 KiB, plaintext, one
//! session per client), or set `TLSGATE_BENCH_CLIENTS`, `TLSGATE_BENCH_MESSAGES`,
//! `TLSGATE_BENCH_SIZE` (bytes; 65536 for the 64 KiB variant), `TLSGATE_BENCH_TLS=1`
//! (STARTTLS inbound, and delivery with `next_hop_tls = "encrypt"`),
//! `TLSGATE_BENCH_PER_SESSION` (messages per client connection: clients reconnect after that
//! many, so that with TLS each reconnect resumes its session or repeats the handshake),
//! `TLSGATE_BENCH_RESUME=0` (the clients never resume: every session a full handshake), and
//! `TLSGATE_BENCH_ENGINE` (`redb`, the default, or `sled`).
//!
//! CPU per message: tlsgate runs in a runtime of its own, the clients and the sink in another
//! whose threads are named `load`; the figure is the process's user+system time minus that of
//! the `load` threads and the main thread (Linux `/proc/self/task/*/stat`), divided by the
//! messages. Only loopback is used; every wait is bounded.

#[path = "../tests/common/mx_sink.rs"]
#[allow(dead_code)]
mod mx_sink;

mod common;

use common::dir_size;

use mx_sink::{Behaviour, Sink};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const STEP: Duration = Duration::from_secs(30);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A client's connection: plain TCP, or TLS after STARTTLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Reader = BufReader<Box<dyn Io>>;

async fn read_reply(reader: &mut Reader) -> String {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(STEP, reader.read_line(&mut line))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(n > 0, "connection closed");
        let last = line.as_bytes().get(3) != Some(&b'-');
        reply.push_str(&line);
        if last {
            return reply;
        }
    }
}

async fn command(conn: &mut Reader, line: &[u8]) -> String {
    conn.get_mut().write_all(line).await.expect("write");
    read_reply(conn).await
}

/// Opens a session: greeting, EHLO, and with `tls` STARTTLS and EHLO again.
async fn open(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> Reader {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut conn: Reader = BufReader::new(Box::new(stream));
    read_reply(&mut conn).await;
    command(&mut conn, b"EHLO bench.test\r\n").await;
    let Some(config) = tls else {
        return conn;
    };
    let reply = command(&mut conn, b"STARTTLS\r\n").await;
    assert!(reply.starts_with("220"), "STARTTLS refused: {reply}");
    assert!(conn.buffer().is_empty(), "bytes after the 220 to STARTTLS");
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = rustls::pki_types::ServerName::try_from("bench.tlsgate.test").expect("name");
    let stream = tokio::time::timeout(STEP, connector.connect(name, conn.into_inner()))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let mut conn: Reader = BufReader::new(Box::new(stream));
    command(&mut conn, b"EHLO bench.test\r\n").await;
    conn
}

/// One client: `messages` pipelined transactions, a new session every `per_session`;
/// returns the latencies.
async fn client(
    addr: SocketAddr,
    id: usize,
    messages: usize,
    per_session: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
    body: Arc<String>,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(messages);
    let mut conn = open(addr, tls.as_ref()).await;
    for n in 0..messages {
        if n > 0 && n % per_session == 0 {
            command(&mut conn, b"QUIT\r\n").await;
            conn = open(addr, tls.as_ref()).await;
        }
        let started = Instant::now();
        let envelope = format!(
            "MAIL FROM:<client{id}@bench.test>\r\nRCPT TO:<rcpt{n}@example.no>\r\nDATA\r\n"
        );
        let io = conn.get_mut();
        io.write_all(envelope.as_bytes()).await.expect("write");
        io.flush().await.expect("flush");
        for _ in 0..3 {
            read_reply(&mut conn).await;
        }
        let io = conn.get_mut();
        io.write_all(body.as_bytes()).await.expect("write");
        io.write_all(b".\r\n").await.expect("write");
        io.flush().await.expect("flush");
        let reply = read_reply(&mut conn).await;
        assert!(reply.starts_with("250"), "not accepted: {reply}");
        latencies.push(started.elapsed());
    }
    let _ = conn.get_mut().write_all(b"QUIT\r\n").await;
    latencies
}

/// User+system CPU seconds of the threads of this process, split into (named `load`, the
/// main thread, all others), from `/proc/self/task/*/stat` (Linux).
fn thread_cpu() -> (f64, f64, f64) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let pid = std::process::id().to_string();
    let (mut load, mut main, mut other) = (0.0, 0.0, 0.0);
    let tasks = std::fs::read_dir("/proc/self/task").expect("/proc/self/task");
    for task in tasks.flatten() {
        let path = task.path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        // Fields after the ")" that closes the command name: state is field 3, utime 14,
        // stime 15 (proc(5)).
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let cpu = fields
            .get(11)
            .and_then(|u| u.parse::<f64>().ok())
            .unwrap_or(0.0)
            + fields
                .get(12)
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
        let seconds = cpu / ticks;
        if comm.trim() == "load" {
            load += seconds;
        } else if task.file_name().to_string_lossy() == pid {
            main += seconds;
        } else {
            other += seconds;
        }
    }
    (load, main, other)
}

/// The whole process's user+system CPU seconds, ended threads included.
fn process_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let clients = env_or("TLSGATE_BENCH_CLIENTS", 16);
    let messages = env_or("TLSGATE_BENCH_MESSAGES", 200);
    let size = env_or("TLSGATE_BENCH_SIZE", 4096);
    let per_session = env_or("TLSGATE_BENCH_PER_SESSION", messages).max(1);
    let tls = env_or("TLSGATE_BENCH_TLS", 0) == 1;
    // Issue 16 item 2: the queue engine, `redb` (default) or `sled`.
    let engine = std::env::var("TLSGATE_BENCH_ENGINE").unwrap_or_else(|_| "redb".into());
    // tlsgate's runtime, as `tlsgate serve` builds it (one worker per core); the load runs in
    // its own runtime so that its CPU can be told apart. Idle blocking threads are kept so
    // that their CPU time is still readable at the end.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tlsgate")
        .thread_keep_alive(Duration::from_secs(3600))
        .build()
        .expect("runtime");
    let load = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("load")
        .thread_keep_alive(Duration::from_secs(3600))
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let generated =
        tlsgate::tls::generate_self_signed(&["bench.tlsgate.test".to_string()]).expect("cert");
    let (cert, key) =
        tlsgate::tls::keys::write_cert_files(dir.path(), &generated).expect("cert files");
    let mut behaviour = Behaviour::default();
    if tls {
        behaviour.tls = Some(tlsgate::tls::server_config(&cert, &key).expect("sink TLS"));
    }
    let sink = load.block_on(async {
        loop {
            let port = mx_sink::free_port();
            if let Ok(sink) =
                Sink::try_start(SocketAddr::from(([127, 0, 0, 1], port)), behaviour.clone()).await
            {
                break sink;
            }
        }
    });
    let text = format!(
        r#"
[server]
hostname = "bench.tlsgate.test"
data_dir = "{data}"
min_free_space = 0
[tls]
cert = "{cert}"
key = "{key}"
[limits]
max_connections_per_ip = 1000
[[listener]]
bind = "127.0.0.1:0"
role = "inbound"
[inbound]
local_domains = ["example.no"]
next_hop = "{sink}"
next_hop_tls = "{next_hop_tls}"
[inbound.auth]
enabled = false
[dns]
nameservers = ["127.0.0.1:9"]
[delivery]
max_per_destination = {per_destination}
[queue]
engine = "{engine}"
"#,
        data = dir.path().join("data").display(),
        cert = cert.display(),
        key = key.display(),
        sink = sink.addr(),
        next_hop_tls = if tls { "encrypt" } else { "none" },
        per_destination = env_or("TLSGATE_BENCH_PER_DESTINATION", 10),
        engine = engine,
    );
    let config = tlsgate::config::Config::from_toml(&text, "bench.toml").expect("config");
    let server = server_runtime
        .block_on(tlsgate::server::start(config))
        .expect("start");
    let addr = server
        .local_addr(tlsgate::config::Role::Inbound)
        .expect("inbound listener");
    // The clients accept any certificate, as smtp-source does; TLS 1.2 and 1.3.
    let client_tls = tls.then(|| {
        let shared = tlsgate::tls::client::ClientTls::new(&[])
            .expect("client TLS")
            .opportunistic;
        if env_or("TLSGATE_BENCH_RESUME", 1) == 1 {
            return shared;
        }
        let mut config = (*shared).clone();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    });

    let mut body = String::from("From: <bench@bench.test>\r\nSubject: bench\r\n\r\n");
    while body.len() < size {
        body.push_str("The quick brown fox jumps over the lazy dog 0123456789.\r\n");
    }
    let body = Arc::new(body);
    let total = clients * messages;
    println!(
        "e2e ({engine}): {clients} clients x {messages} messages of {size} bytes = {total}, {}, \
         {per_session} per session{}",
        if tls { "STARTTLS" } else { "plaintext" },
        if env_or("TLSGATE_BENCH_RESUME", 1) == 1 {
            ""
        } else {
            ", no resumption"
        }
    );
    let (load_before, main_before, _) = thread_cpu();
    let process_before = process_cpu();
    let started = Instant::now();
    let (accepted_in, delivered_in, mut latencies) = load.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for id in 0..clients {
            tasks.spawn(client(
                addr,
                id,
                messages,
                per_session,
                client_tls.clone(),
                body.clone(),
            ));
        }
        let mut latencies = Vec::with_capacity(total);
        while let Some(done) = tasks.join_next().await {
            latencies.extend(done.expect("client task"));
        }
        let accepted_in = started.elapsed();
        let deadline = Instant::now() + Duration::from_secs(300);
        while sink.messages().len() < total {
            assert!(
                Instant::now() < deadline,
                "only {} of {total} delivered",
                sink.messages().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (accepted_in, started.elapsed(), latencies)
    });
    let (load_after, main_after, _) = thread_cpu();
    let process = process_cpu() - process_before;
    let tlsgate_cpu = process - (load_after - load_before) - (main_after - main_before);
    latencies.sort();
    println!(
        "accepted:  {:>8.0} msg/s ({total} in {:.2?})",
        total as f64 / accepted_in.as_secs_f64(),
        accepted_in
    );
    println!(
        "delivered: {:>8.0} msg/s end to end ({total} in {:.2?}, {} connections to the sink)",
        total as f64 / delivered_in.as_secs_f64(),
        delivered_in,
        sink.connections()
    );
    println!(
        "acceptance latency: p50 {:.2?}  p99 {:.2?}  max {:.2?}",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "tlsgate CPU: {:.3} ms per message ({:.2} s user+system; whole process {:.2} s)",
        tlsgate_cpu * 1000.0 / total as f64,
        tlsgate_cpu,
        process
    );
    // Issue 16 item 5: what the queue keeps on disk once it is empty again.
    let queue_dir = dir.path().join("data").join("queue");
    let empty_deadline = Instant::now() + Duration::from_secs(60);
    while server
        .store()
        .message_ids()
        .map(|ids| ids.len())
        .unwrap_or(0)
        > 0
        && Instant::now() < empty_deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let stats = server.committer().stats();
    let syncs = stats.syncs.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "queue commits: {syncs} syncs for {total} messages ({:.2} per message, new messages and delivery results together)",
        syncs as f64 / total as f64
    );
    server_runtime.block_on(server.shutdown(Duration::from_secs(5)));
    println!(
        "queue directory after the queue emptied: {:.1} MB",
        dir_size(&queue_dir) as f64 / 1e6
    );
    drop(sink);
}
