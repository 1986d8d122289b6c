//! Resource bounds of the real `tlsgate` process (issue 16 item 5), measured, not timed tests:
//! each scenario starts the release binary as a child process with a configuration written
//! here into a temporary directory, drives it over loopback, reads its memory from
//! `/proc/<pid>/status` (VmRSS, VmHWM) and its disk use from its `data_dir`, and prints the
//! figure, the bound and PASS or FAIL.
//!
//! Run all: `cargo bench --bench bounds`. One scenario: `cargo bench --bench bounds -- idle`
//! (or `TLSGATE_BOUNDS=idle`); scenarios `idle`, `limit`, `restart`, `large`, `disk`. Sizes
//! (defaults are the issue's figures): `TLSGATE_BOUNDS_IDLE` (1000 connections),
//! `TLSGATE_BOUNDS_TRIES` (200 connections past the limit), `TLSGATE_BOUNDS_QUEUED` (100,000
//! messages), `TLSGATE_BOUNDS_LARGE_MB` (50), `TLSGATE_BOUNDS_MESSAGES` (1,000,000 relayed for
//! `disk`), `TLSGATE_BOUNDS_SIZE` (4096 bytes per message in `restart` and `disk`),
//! `TLSGATE_BOUNDS_ENGINE` (`redb`, the default, or `sled`). The process exits non-zero when a
//! scenario missed its bound.
//!
//! Only 127.0.0.1 is used: the next hop is a sink in this process, or a closed local port;
//! DNS goes to the discard port. Every wait is bounded.

#[path = "../tests/common/mx_sink.rs"]
#[allow(dead_code)]
mod mx_sink;

mod common;

use common::dir_size;

use mx_sink::{Behaviour, Sink};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Every client read and write, and the process's start and exit.
const IO_LIMIT: Duration = Duration::from_secs(30);
const MB: f64 = 1024.0 * 1024.0;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A port on 127.0.0.1 that was free a moment ago.
fn free_port() -> u16 {
    mx_sink::free_port()
}

/// Prints a figure against its bound; true when within it.
fn verdict(what: &str, value: f64, bound: f64, unit: &str) -> bool {
    let pass = value < bound;
    println!(
        "  {what}: {value:.1} {unit} (bound < {bound} {unit}) {}",
        if pass { "PASS" } else { "FAIL" }
    );
    pass
}

/// VmRSS and VmHWM of `pid` in bytes (proc(5)).
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn rss_mb(pid: u32) -> f64 {
    memory(pid).0 as f64 / MB
}

/// Counts what the sink received into `delivered` until it reaches `target` (at most 600 s).
fn wait_delivered(sink: &Sink, delivered: &mut usize, target: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while *delivered < target {
        assert!(
            Instant::now() < deadline,
            "only {delivered} of {target} delivered"
        );
        std::thread::sleep(Duration::from_millis(100));
        *delivered += sink.take_count();
    }
}

/// Raises this process's open-file limit to its hard limit; children inherit it (1,000 idle
/// connections need more than the usual 1024 descriptors on both sides).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// What a scenario changes in the configuration.
struct Settings {
    max_connections: usize,
    max_per_ip: usize,
    max_message_size: usize,
    /// `inbound.next_hop`: the sink, or a closed port so that every delivery defers.
    next_hop: SocketAddr,
    retry_schedule: &'static str,
}

/// One tlsgate installation in a temporary directory: configuration, certificate, data_dir.
struct Bed {
    dir: tempfile::TempDir,
    smtp: SocketAddr,
    metrics: SocketAddr,
    config: PathBuf,
    log: PathBuf,
}

impl Bed {
    fn new(settings: &Settings) -> Bed {
        let dir = tempfile::tempdir().expect("tempdir");
        let generated =
            tlsgate::tls::generate_self_signed(&["bounds.tlsgate.test".to_string()]).expect("cert");
        let (cert, key) =
            tlsgate::tls::keys::write_cert_files(dir.path(), &generated).expect("cert files");
        let smtp = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let engine = std::env::var("TLSGATE_BOUNDS_ENGINE").unwrap_or_else(|_| "redb".into());
        let text = format!(
            r#"
[server]
hostname = "bounds.tlsgate.test"
data_dir = "{data}"
min_free_space = 0
max_message_size = {max_size}
[tls]
cert = "{cert}"
key = "{key}"
[limits]
max_connections = {max_connections}
max_connections_per_ip = {max_per_ip}
[[listener]]
bind = "{smtp}"
role = "inbound"
[inbound]
local_domains = ["example.no"]
next_hop = "{next_hop}"
next_hop_tls = "none"
# Sender authentication needs DNS, which is not served here.
[inbound.auth]
enabled = false
# Nothing listens on the discard port: no query leaves loopback.
[dns]
nameservers = ["127.0.0.1:9"]
[delivery]
retry_schedule = {retry}
connect_timeout = "2s"
max_per_destination = 10
[metrics]
bind = "{metrics}"
[queue]
engine = "{engine}"
# The audit log (S1: an entry per delivery, kept audit.retention_days) is evidence, not
# queue: kept outside data_dir here so that data_dir's size is the queue's (README, Bounds).
[audit]
dir = "{audit}"
[log]
level = "warn,tlsgate::ops::compaction=info"
"#,
            audit = dir.path().join("audit").display(),
            data = dir.path().join("data").display(),
            cert = cert.display(),
            key = key.display(),
            max_size = settings.max_message_size,
            max_connections = settings.max_connections,
            max_per_ip = settings.max_per_ip,
            next_hop = settings.next_hop,
            retry = settings.retry_schedule,
        );
        let config = dir.path().join("tlsgate.toml");
        std::fs::write(&config, text).expect("write config");
        let log = dir.path().join("tlsgate.log");
        Bed {
            dir,
            smtp,
            metrics,
            config,
            log,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// Starts `tlsgate serve`, output appended to the log file.
    fn spawn(&self) -> Proc {
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let err = out.try_clone().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_tlsgate"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(["--grace", "2s"])
            .env_remove("RUST_LOG")
            .env_remove("TLSGATE_CONFIG")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn tlsgate");
        Proc { child }
    }

    /// Waits until `/readyz` answers 200 and an SMTP session gets `250` to MAIL FROM; the
    /// time it took from `since`. Panics with the log's end after `limit`.
    fn wait_ready(&self, proc: &mut Proc, since: Instant, limit: Duration) -> Duration {
        let deadline = since + limit;
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                panic!("tlsgate exited ({status}); log:\n{}", self.log_tail());
            }
            if http_status(self.metrics, "/readyz") == Some(200) && mail_accepted(self.smtp) {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "tlsgate not ready within {limit:?}; log:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A gauge or counter summed over its label sets, from `/metrics`.
    fn metric(&self, name: &str, label: &str) -> Option<f64> {
        let text = http_get(self.metrics, "/metrics")?;
        let mut sum = None;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with(' ') || rest.starts_with('{')) || !rest.contains(label) {
                continue;
            }
            if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
                *sum.get_or_insert(0.0) += v;
            }
        }
        sum
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or_default().to_string()
    }
}

/// The child process; SIGTERM and a bounded wait on [`Proc::stop`], SIGKILL on drop.
struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and waits (bounded) for the exit.
    fn stop(&mut self) {
        // SAFETY: kill(2) on our own child, not reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + IO_LIMIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("tlsgate did not exit within {IO_LIMIT:?} of SIGTERM");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The whole response to `GET path` (HTTP/1.0, so the server closes), `None` on any error.
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(IO_LIMIT)).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut text = String::new();
    stream.take(16 << 20).read_to_string(&mut text).ok()?;
    Some(text)
}

fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A blocking SMTP client connection (bounded reads).
struct Smtp {
    reader: BufReader<TcpStream>,
}

impl Smtp {
    fn connect(addr: SocketAddr) -> std::io::Result<Smtp> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(IO_LIMIT))?;
        stream.set_write_timeout(Some(IO_LIMIT))?;
        stream.set_nodelay(true)?;
        Ok(Smtp {
            reader: BufReader::new(stream),
        })
    }

    /// One whole reply (the lines of a multi-line reply joined).
    fn reply(&mut self) -> std::io::Result<String> {
        let mut reply = String::new();
        for _ in 0..100 {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let last = line.as_bytes().get(3) != Some(&b'-');
            reply.push_str(&line);
            if last {
                return Ok(reply);
            }
        }
        Err(std::io::Error::other("reply of more than 100 lines"))
    }

    fn command(&mut self, line: &str) -> std::io::Result<String> {
        self.reader.get_mut().write_all(line.as_bytes())?;
        self.reply()
    }
}

/// True when a new session gets `220`, `250` to EHLO and `250` to MAIL FROM.
fn mail_accepted(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = Smtp::connect(addr)?;
        let ok = s.reply()?.starts_with("220")
            && s.command("EHLO bounds.test\r\n")?.starts_with("250")
            && s.command("MAIL FROM:<probe@bounds.test>\r\n")?
                .starts_with("250");
        let _ = s.command("QUIT\r\n");
        Ok(ok)
    };
    attempt().unwrap_or(false)
}

/// A message body of about `size` bytes, CRLF lines, ending in CRLF.
fn body(size: usize) -> String {
    let mut body = String::from("From: <bench@bounds.test>\r\nSubject: bounds\r\n\r\n");
    while body.len() < size {
        body.push_str("The quick brown fox jumps over the lazy dog 0123456789.\r\n");
    }
    body
}

/// Submits `total` messages over `clients` pipelined sessions (async, on `rt`); `on_progress`
/// is called with the count accepted so far about every second. Panics on any refusal.
fn submit(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    clients: usize,
    total: usize,
    size: usize,
    mut on_progress: impl FnMut(usize),
) {
    let body = Arc::new(body(size));
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for id in 0..clients {
        let (body, next, done) = (body.clone(), next.clone(), done.clone());
        tasks.push(rt.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut conn = tokio::io::BufReader::new(stream);
            async_reply(&mut conn).await;
            conn.get_mut()
                .write_all(b"EHLO bounds.test\r\n")
                .await
                .expect("write");
            async_reply(&mut conn).await;
            let mut in_session = 0;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                // A new session now and then, as real clients do.
                if in_session == 1000 {
                    conn.get_mut().write_all(b"QUIT\r\n").await.expect("write");
                    async_reply(&mut conn).await;
                    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
                    stream.set_nodelay(true).expect("nodelay");
                    conn = tokio::io::BufReader::new(stream);
                    async_reply(&mut conn).await;
                    conn.get_mut()
                        .write_all(b"EHLO bounds.test\r\n")
                        .await
                        .expect("write");
                    async_reply(&mut conn).await;
                    in_session = 0;
                }
                in_session += 1;
                let n = done.load(Ordering::Relaxed);
                let envelope = format!(
                    "MAIL FROM:<client{id}@bounds.test>\r\nRCPT TO:<rcpt{n}@example.no>\r\nDATA\r\n"
                );
                conn.get_mut()
                    .write_all(envelope.as_bytes())
                    .await
                    .expect("write");
                for _ in 0..3 {
                    async_reply(&mut conn).await;
                }
                let io = conn.get_mut();
                io.write_all(body.as_bytes()).await.expect("write");
                io.write_all(b".\r\n").await.expect("write");
                let reply = async_reply(&mut conn).await;
                assert!(reply.starts_with("250"), "not accepted: {reply}");
                done.fetch_add(1, Ordering::Relaxed);
            }
            let _ = conn.get_mut().write_all(b"QUIT\r\n").await;
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(24 * 3600);
    while tasks.iter().any(|t| !t.is_finished()) {
        assert!(Instant::now() < deadline, "submission did not finish");
        std::thread::sleep(Duration::from_secs(1));
        on_progress(done.load(Ordering::Relaxed));
    }
    for task in tasks {
        rt.block_on(task).expect("client task");
    }
}

async fn async_reply(conn: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> String {
    let mut reply = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(IO_LIMIT, conn.read_line(&mut line))
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A closed port on 127.0.0.1: a next hop there refuses every connection, so every
/// delivery defers.
fn closed_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// 1,000 idle connections (after the greeting, then after EHLO) cost under 50 MB RSS.
fn idle() -> bool {
    let n = env_or("TLSGATE_BOUNDS_IDLE", 1000);
    println!("idle: {n} connections held open");
    let bed = Bed::new(&Settings {
        max_connections: n + 100,
        max_per_ip: n + 100,
        max_message_size: 10 << 20,
        next_hop: closed_port(),
        retry_schedule: r#"["1h"]"#,
    });
    let mut proc = bed.spawn();
    bed.wait_ready(&mut proc, Instant::now(), IO_LIMIT);
    std::thread::sleep(Duration::from_secs(1));
    let before = rss_mb(proc.pid());
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = Smtp::connect(bed.smtp).expect("connect");
        let greeting = s.reply().expect("greeting");
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        conns.push(s);
    }
    std::thread::sleep(Duration::from_secs(1));
    let greeted = rss_mb(proc.pid());
    for s in &mut conns {
        let reply = s.command("EHLO bounds.test\r\n").expect("EHLO");
        assert!(reply.starts_with("250"), "EHLO: {reply}");
    }
    std::thread::sleep(Duration::from_secs(1));
    let after_ehlo = rss_mb(proc.pid());
    println!("  RSS before {before:.1} MB, after {n} greetings {greeted:.1} MB, after EHLO {after_ehlo:.1} MB");
    let a = verdict(
        "RSS growth, idle after the greeting",
        greeted - before,
        50.0,
        "MB",
    );
    let b = verdict(
        "RSS growth, idle after EHLO",
        after_ehlo - before,
        50.0,
        "MB",
    );
    drop(conns);
    proc.stop();
    a && b
}

/// Connections past `limits.max_connections` get `421` within 100 ms.
fn limit() -> bool {
    let tries = env_or("TLSGATE_BOUNDS_TRIES", 200);
    let max = 50;
    println!("limit: max_connections = {max} held open, then {tries} more connections");
    let bed = Bed::new(&Settings {
        max_connections: max,
        max_per_ip: max,
        max_message_size: 10 << 20,
        next_hop: closed_port(),
        retry_schedule: r#"["1h"]"#,
    });
    let mut proc = bed.spawn();
    bed.wait_ready(&mut proc, Instant::now(), IO_LIMIT);
    // The readiness probe's session must be gone before the slots are counted.
    std::thread::sleep(Duration::from_millis(500));
    let mut held = Vec::with_capacity(max);
    for _ in 0..max {
        let mut s = Smtp::connect(bed.smtp).expect("connect");
        let greeting = s.reply().expect("greeting");
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        held.push(s);
    }
    let mut times = Vec::with_capacity(tries);
    for _ in 0..tries {
        let started = Instant::now();
        let mut s = Smtp::connect(bed.smtp).expect("connect");
        let reply = s.reply().expect("reply past the limit");
        times.push(started.elapsed());
        assert!(reply.starts_with("421"), "past the limit: {reply}");
    }
    times.sort();
    let max_time = times.last().copied().unwrap_or_default();
    println!(
        "  connect to 421: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(max_time)
    );
    let pass = verdict("slowest 421", ms(max_time), 100.0, "ms");
    drop(held);
    proc.stop();
    pass
}

/// 100,000 queued messages: restart to ready under 5 s, RSS under 200 MB.
fn restart() -> bool {
    let n = env_or("TLSGATE_BOUNDS_QUEUED", 100_000);
    let size = env_or("TLSGATE_BOUNDS_SIZE", 4096);
    println!("restart: {n} queued messages of {size} bytes, every delivery deferred");
    let bed = Bed::new(&Settings {
        max_connections: 1000,
        max_per_ip: 100,
        max_message_size: 10 << 20,
        next_hop: closed_port(),
        retry_schedule: r#"["1h"]"#,
    });
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut proc = bed.spawn();
    bed.wait_ready(&mut proc, Instant::now(), IO_LIMIT);
    let started = Instant::now();
    let mut last = Instant::now();
    submit(&rt, bed.smtp, 16, n, size, |done| {
        if last.elapsed() >= Duration::from_secs(10) {
            last = Instant::now();
            println!(
                "  … {done} queued ({:.0}/s), RSS {:.1} MB",
                done as f64 / started.elapsed().as_secs_f64(),
                rss_mb(proc.pid())
            );
        }
    });
    println!(
        "  {n} queued in {:.1} s; RSS {:.1} MB",
        started.elapsed().as_secs_f64(),
        rss_mb(proc.pid())
    );
    // Every first attempt made (so none is due at the restart): deferrals counted.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let deferred = bed
            .metric("tlsgate_deliveries_total", "result=\"deferred\"")
            .unwrap_or(0.0);
        if deferred >= n as f64 {
            break;
        }
        if Instant::now() > deadline {
            println!("  only {deferred} of {n} first attempts made after 600 s");
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let queued = bed.metric("tlsgate_queue_messages", "").unwrap_or(0.0);
    println!(
        "  queue: {queued} messages, data_dir {:.1} MB",
        dir_size(&bed.data_dir()) as f64 / MB
    );
    proc.stop();
    drop(proc);
    let spawned = Instant::now();
    let mut proc = bed.spawn();
    let ready = bed.wait_ready(&mut proc, spawned, Duration::from_secs(120));
    let (rss_ready, _) = memory(proc.pid());
    std::thread::sleep(Duration::from_secs(5));
    let (rss_later, hwm) = memory(proc.pid());
    let queued = bed.metric("tlsgate_queue_messages", "").unwrap_or(0.0);
    println!(
        "  after restart: queue gauge {queued}, RSS at ready {:.1} MB, 5 s later {:.1} MB, peak {:.1} MB",
        rss_ready as f64 / MB,
        rss_later as f64 / MB,
        hwm as f64 / MB
    );
    let a = verdict("spawn to ready", ms(ready), 5000.0, "ms");
    let b = verdict("peak RSS after restart", hwm as f64 / MB, 200.0, "MB");
    proc.stop();
    a && b
}

/// A 50 MB message is relayed with memory bounded by a small multiple (4×) of its size.
fn large() -> bool {
    let mb = env_or("TLSGATE_BOUNDS_LARGE_MB", 50);
    let size = mb << 20;
    println!("large: one message of {mb} MiB relayed to the sink");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let behaviour = Behaviour {
        extensions: vec![
            "PIPELINING".into(),
            "8BITMIME".into(),
            "ENHANCEDSTATUSCODES".into(),
            format!("SIZE {}", size * 2),
        ],
        ..Behaviour::default()
    };
    let sink = rt.block_on(Sink::start_on_free_port(
        "127.0.0.1".parse().expect("ip"),
        behaviour,
    ));
    let bed = Bed::new(&Settings {
        max_connections: 100,
        max_per_ip: 100,
        max_message_size: size + (1 << 20),
        next_hop: sink.addr(),
        retry_schedule: r#"["1m"]"#,
    });
    let mut proc = bed.spawn();
    bed.wait_ready(&mut proc, Instant::now(), IO_LIMIT);
    // A small message first, so that the baseline includes a relayed message's working set.
    submit(&rt, bed.smtp, 1, 1, 4096, |_| {});
    rt.block_on(sink.wait_for_messages(1, IO_LIMIT));
    std::thread::sleep(Duration::from_secs(1));
    let (base, base_hwm) = memory(proc.pid());
    let started = Instant::now();
    // Like a client that does not announce SIZE (the worst case for the receive buffer).
    submit(&rt, bed.smtp, 1, 1, size, |_| {});
    let accepted = started.elapsed();
    let got = rt.block_on(sink.wait_for_messages(2, Duration::from_secs(300)));
    let relayed = started.elapsed();
    let received = got.last().map(|m| m.data.len()).unwrap_or(0);
    drop(got);
    let (after, hwm) = memory(proc.pid());
    assert!(received >= size, "the sink got {received} bytes");
    let multiple = (hwm.saturating_sub(base)) as f64 / size as f64;
    println!(
        "  accepted in {:.1} s, relayed in {:.1} s; RSS baseline {:.1} MB (peak {:.1} MB), \
         peak {:.1} MB, after {:.1} MB",
        accepted.as_secs_f64(),
        relayed.as_secs_f64(),
        base as f64 / MB,
        base_hwm as f64 / MB,
        hwm as f64 / MB,
        after as f64 / MB
    );
    let pass = verdict(
        "peak RSS minus baseline, as a multiple of the message size",
        multiple,
        4.0,
        "x",
    );
    proc.stop();
    pass
}

/// After N relayed messages with the queue empty again, `data_dir` holds under 50 MB. First a
/// backlog builds up (the sink answers `451` at RCPT) and drains, so that the queue file has
/// been large once; then N messages are relayed with the queue near empty.
fn disk() -> bool {
    let n = env_or("TLSGATE_BOUNDS_MESSAGES", 1_000_000);
    let backlog = env_or("TLSGATE_BOUNDS_BACKLOG", 20_000);
    let size = env_or("TLSGATE_BOUNDS_SIZE", 4096);
    println!(
        "disk: a backlog of {backlog} drained, then {n} messages of {size} bytes relayed, \
         then the queue empty"
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let sink = rt.block_on(Sink::start_on_free_port(
        "127.0.0.1".parse().expect("ip"),
        Behaviour::default(),
    ));
    let bed = Bed::new(&Settings {
        max_connections: 1000,
        max_per_ip: 100,
        max_message_size: 10 << 20,
        next_hop: sink.addr(),
        retry_schedule: r#"["5s"]"#,
    });
    let mut proc = bed.spawn();
    bed.wait_ready(&mut proc, Instant::now(), IO_LIMIT);
    let mut delivered = 0;
    if backlog > 0 {
        sink.set_behaviour(Behaviour {
            rcpt_reply: Arc::new(|_| "451 4.3.0 try again later".to_string()),
            ..Behaviour::default()
        });
        submit(&rt, bed.smtp, 16, backlog, size, |_| {});
        let grown = dir_size(&bed.data_dir());
        sink.set_behaviour(Behaviour::default());
        wait_delivered(&sink, &mut delivered, backlog);
        println!(
            "  backlog of {backlog} queued (data_dir {:.1} MB) and delivered",
            grown as f64 / MB
        );
    }
    let n = n + delivered;
    let before = delivered;
    let started = Instant::now();
    let mut last = Instant::now();
    submit(&rt, bed.smtp, 16, n - delivered, size, |done| {
        delivered += sink.take_count();
        if last.elapsed() >= Duration::from_secs(30) {
            last = Instant::now();
            println!(
                "  … {done} accepted, {delivered} delivered ({:.0}/s), RSS {:.1} MB, data_dir {:.1} MB",
                (delivered - before) as f64 / started.elapsed().as_secs_f64(),
                rss_mb(proc.pid()),
                dir_size(&bed.data_dir()) as f64 / MB
            );
        }
    });
    wait_delivered(&sink, &mut delivered, n);
    let took = started.elapsed();
    // The queue is empty when the gauge says so (removal follows the sink's 250).
    let deadline = Instant::now() + Duration::from_secs(120);
    while bed.metric("tlsgate_queue_messages", "").unwrap_or(1.0) > 0.0 {
        assert!(Instant::now() < deadline, "the queue did not empty");
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "  {} relayed in {:.0} s ({:.0} msg/s); queue empty",
        n - before,
        took.as_secs_f64(),
        (n - before) as f64 / took.as_secs_f64()
    );
    // Give an idle-time compaction its chance (README, Bounds).
    let mut size_now = 0;
    for _ in 0..30 {
        std::thread::sleep(Duration::from_secs(1));
        size_now = dir_size(&bed.data_dir());
    }
    let queue = dir_size(&bed.data_dir().join("queue"));
    println!(
        "  data_dir {:.1} MB (queue {:.1} MB); audit log {:.1} MB (outside data_dir)",
        size_now as f64 / MB,
        queue as f64 / MB,
        dir_size(&bed.audit_dir()) as f64 / MB
    );
    let log = std::fs::read_to_string(&bed.log).unwrap_or_default();
    let compactions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("queue compacted"))
        .collect();
    println!("  compactions: {}", compactions.len());
    for line in compactions.iter().take(5) {
        println!("    {line}");
    }
    let pass = verdict(
        "data_dir with the queue empty",
        size_now as f64 / MB,
        50.0,
        "MB",
    );
    proc.stop();
    pass
}

/// A scenario's name and its run, which says whether the bound held.
type Scenario = (&'static str, fn() -> bool);

fn main() {
    raise_nofile();
    // `cargo bench --bench bounds -- NAME` passes NAME (and cargo's own `--bench`).
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .chain(std::env::var("TLSGATE_BOUNDS").ok())
        .collect();
    let scenarios: [Scenario; 5] = [
        ("idle", idle),
        ("limit", limit),
        ("restart", restart),
        ("large", large),
        ("disk", disk),
    ];
    println!(
        "bounds: tlsgate {} on {} cores",
        env!("CARGO_BIN_EXE_tlsgate"),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut failed = Vec::new();
    for (name, run) in scenarios {
        if !chosen.is_empty() && !chosen.iter().any(|c| c == name) {
            continue;
        }
        if !run() {
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        println!("bounds missed: {}", failed.join(", "));
        std::process::exit(1);
    }
}
