//! End-to-end throughput: N concurrent clients submit M messages each to a running tlsgate
//! (in this process, release build), which relays them to a local SMTP sink. Prints accepted/s,
//! delivered/s end to end, and p50/p99 acceptance latency (MAIL FROM sent → `250` after the
//! final dot, which includes the durable group commit).
//!
//! Run: `cargo bench --bench e2e` (defaults: 16 clients × 200 messages of 4 KiB), or set
//! `TLSGATE_BENCH_CLIENTS`, `TLSGATE_BENCH_MESSAGES`, `TLSGATE_BENCH_SIZE`.
//! Only loopback is used; every wait is bounded.

#[path = "../tests/common/mx_sink.rs"]
#[allow(dead_code)]
mod mx_sink;

use mx_sink::{Behaviour, Sink};
use std::net::SocketAddr;
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

async fn read_reply(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
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

/// One client: EHLO once, then `messages` pipelined transactions; returns the latencies.
async fn client(addr: SocketAddr, id: usize, messages: usize, body: String) -> Vec<Duration> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    read_reply(&mut reader).await;
    write
        .write_all(b"EHLO bench.test\r\n")
        .await
        .expect("write");
    read_reply(&mut reader).await;
    let mut latencies = Vec::with_capacity(messages);
    for n in 0..messages {
        let started = Instant::now();
        let envelope = format!(
            "MAIL FROM:<client{id}@bench.test>\r\nRCPT TO:<rcpt{n}@example.no>\r\nDATA\r\n"
        );
        write.write_all(envelope.as_bytes()).await.expect("write");
        for _ in 0..3 {
            read_reply(&mut reader).await;
        }
        write.write_all(body.as_bytes()).await.expect("write");
        write.write_all(b".\r\n").await.expect("write");
        let reply = read_reply(&mut reader).await;
        assert!(reply.starts_with("250"), "not accepted: {reply}");
        latencies.push(started.elapsed());
    }
    let _ = write.write_all(b"QUIT\r\n").await;
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Bytes of the files under `dir` (allocated size, so sparse files count what they use).
fn dir_size(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.blocks() * 512,
                Err(_) => {}
            }
        }
    }
    total
}

fn main() {
    let clients = env_or("TLSGATE_BENCH_CLIENTS", 16);
    let messages = env_or("TLSGATE_BENCH_MESSAGES", 200);
    let size = env_or("TLSGATE_BENCH_SIZE", 4096);
    // Issue 16 item 2: the queue engine, `redb` (default) or `sled`.
    let engine = std::env::var("TLSGATE_BENCH_ENGINE").unwrap_or_else(|_| "redb".into());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let generated =
            tlsgate::tls::generate_self_signed(&["bench.tlsgate.test".to_string()]).expect("cert");
        let (cert, key) =
            tlsgate::tls::keys::write_cert_files(dir.path(), &generated).expect("cert files");
        let sink = loop {
            let port = mx_sink::free_port();
            if let Ok(sink) = Sink::try_start(
                SocketAddr::from(([127, 0, 0, 1], port)),
                Behaviour::default(),
            )
            .await
            {
                break sink;
            }
        };
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
next_hop_tls = "none"
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
            per_destination = env_or("TLSGATE_BENCH_PER_DESTINATION", 10),
            engine = engine,
        );
        let config = tlsgate::config::Config::from_toml(&text, "bench.toml").expect("config");
        let server = tlsgate::server::start(config).await.expect("start");
        let addr = server
            .local_addr(tlsgate::config::Role::Inbound)
            .expect("inbound listener");

        let mut body = String::from("From: <bench@bench.test>\r\nSubject: bench\r\n\r\n");
        while body.len() < size {
            body.push_str("The quick brown fox jumps over the lazy dog 0123456789.\r\n");
        }
        let total = clients * messages;
        println!(
            "e2e ({engine}): {clients} clients x {messages} messages of {size} bytes = {total}"
        );
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for id in 0..clients {
            tasks.spawn(client(addr, id, messages, body.clone()));
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
        let delivered_in = started.elapsed();
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
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server.shutdown(Duration::from_secs(5)).await;
        println!(
            "queue directory after the queue emptied: {:.1} MB",
            dir_size(&queue_dir) as f64 / 1e6
        );
    });
}
