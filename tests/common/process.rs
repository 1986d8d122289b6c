//! The real `tlsgate` binary as a child process, for tests that kill it (requirement S5: "a
//! crash or `kill -9` at any moment loses no acknowledged message"): spawn with a log file,
//! wait for the 220 banner, SIGKILL, SIGTERM with a clean exit, any other signal, a `Drop` that
//! kills, the CLI run against the same configuration, and an SMTP client whose every failure is
//! an error value (after a kill, errors are expected; only acknowledged messages count).
//!
//! Every wait here is bounded; a bound that runs out is an error value or a panic that carries
//! the end of the process log.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every client-side connect, read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the binary to greet after spawn (a debug build, on a loaded 2-core machine).
pub const START_LIMIT: Duration = Duration::from_secs(20);
/// Time for the process to exit after SIGKILL / SIGTERM.
pub const EXIT_LIMIT: Duration = Duration::from_secs(10);
/// Time for one CLI command (`tlsgate queue …`) to finish.
pub const CLI_LIMIT: Duration = Duration::from_secs(60);

/// A port on 127.0.0.1 that was free a moment ago (the probe listener is dropped before the
/// caller binds it, so a race with another process is possible but rare).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0 to find a free port")
        .local_addr()
        .expect("local address of the probe listener")
        .port()
}

/// Waits (bounded by `limit`) for `child` to exit; `None` when it is still running.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The last few KB of the log at `log`, for failure messages.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| format!("<cannot read log: {e}>"));
    let start = text.len().saturating_sub(4000);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    text[start..].to_string()
}

/// `tlsgate serve --config CONFIG` running as a child process, its stdout and stderr appended
/// to a log file; killed (SIGKILL) on drop so a failing test leaves no process behind.
pub struct Relay {
    pub child: Child,
    pub log: PathBuf,
}

impl Relay {
    /// Starts `tlsgate serve --config <config> --grace 2s`, appending its output to `log`
    /// (which survives restarts, so one file tells the whole story). `RUST_LOG` is removed so
    /// the configuration's `[log] level` applies.
    pub fn spawn(config: &Path, log: &Path) -> Relay {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .expect("open the process log");
        let err = out.try_clone().expect("clone the process log handle");
        let child = Command::new(env!("CARGO_BIN_EXE_tlsgate"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--grace")
            .arg("2s")
            .env_remove("RUST_LOG")
            .env_remove("TLSGATE_CONFIG")
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

    /// The exit status when the process has exited, `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits until `addr` greets with a `220` line, for at most `limit`. An error says why
    /// (the process exited, or the last connect/greeting problem) and carries the log's end.
    pub fn try_wait_ready(&mut self, addr: SocketAddr, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut last_error = String::from("never tried");
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Err(format!(
                    "tlsgate exited during start-up ({status}); log:\n{}",
                    log_tail(&self.log)
                ));
            }
            match banner(addr) {
                Ok(line) if line.starts_with("220 ") => return Ok(()),
                Ok(line) => last_error = format!("unexpected greeting {line:?}"),
                Err(e) => last_error = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(format!(
            "tlsgate did not greet on {addr} within {limit:?} (last: {last_error}); log:\n{}",
            log_tail(&self.log)
        ))
    }

    /// As [`Relay::try_wait_ready`] with [`START_LIMIT`]; panics when it does not greet.
    pub fn wait_ready(&mut self, addr: SocketAddr) {
        if let Err(e) = self.try_wait_ready(addr, START_LIMIT) {
            panic!("{e}");
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: plain kill(2) on our own child, which has not been reaped yet (the Child is
        // held, and only this struct waits for it).
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({signal}): {}", std::io::Error::last_os_error());
    }

    /// SIGKILL, then waits for the exit, which must say: killed by signal 9. A process that
    /// already exited by itself is a failure (with the log's end).
    pub fn kill9(&mut self) -> ExitStatus {
        if let Some(status) = self.exited() {
            panic!(
                "tlsgate had already exited ({status}) before SIGKILL; log:\n{}",
                log_tail(&self.log)
            );
        }
        self.child.kill().expect("send SIGKILL to tlsgate");
        let status = wait_exit(&mut self.child, EXIT_LIMIT).expect("tlsgate gone after SIGKILL");
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
        status
    }

    /// SIGTERM, and a clean exit (status 0) within [`EXIT_LIMIT`].
    pub fn terminate(&mut self) {
        self.signal(libc::SIGTERM);
        let status = wait_exit(&mut self.child, EXIT_LIMIT).unwrap_or_else(|| {
            panic!(
                "tlsgate did not exit within {EXIT_LIMIT:?} of SIGTERM; log:\n{}",
                log_tail(&self.log)
            )
        });
        assert!(
            status.success(),
            "tlsgate exited with {status} after SIGTERM; log:\n{}",
            log_tail(&self.log)
        );
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = wait_exit(&mut self.child, EXIT_LIMIT);
        }
    }
}

/// Connects with blocking I/O and returns the first line the server sends (then says QUIT).
pub fn banner(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = StdTcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 512];
    // A banner is one short line; a few reads are plenty.
    for _ in 0..16 {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
        if let Some(pos) = got.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&got[..pos]).into_owned();
            let _ = stream.write_all(b"QUIT\r\n");
            return Ok(line);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!(
            "no complete banner line: {:?}",
            String::from_utf8_lossy(&got)
        ),
    ))
}

/// What a CLI run printed.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status 0.
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `tlsgate ARGS --config CONFIG` (e.g. `queue list`) to completion, bounded by
/// [`CLI_LIMIT`]; the process is killed when the bound runs out.
pub async fn cli(config: &Path, args: &[&str]) -> CliOutput {
    let child = cli_spawn(config, args);
    cli_finish(child).await
}

/// Starts `tlsgate ARGS --config CONFIG` without waiting for it (to act while it runs); finish
/// it with [`cli_finish`]. Killed when dropped.
pub fn cli_spawn(config: &Path, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_tlsgate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("TLSGATE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the tlsgate CLI")
}

/// Waits (bounded by [`CLI_LIMIT`]) for a CLI process from [`cli_spawn`] and collects its
/// output; panics when it does not finish in time.
pub async fn cli_finish(child: tokio::process::Child) -> CliOutput {
    let out = tokio::time::timeout(CLI_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the tlsgate CLI did not finish within {CLI_LIMIT:?}"))
        .expect("collect the tlsgate CLI's output");
    CliOutput {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// An SMTP client whose every failure is an error value.

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"))
}

/// An error for a reply the client did not want.
pub fn protocol(what: String) -> std::io::Error {
    std::io::Error::other(what)
}

/// One plain SMTP connection; every read, write and connect is bounded by [`IO_TIMEOUT`] and
/// every failure (timeout, EOF, unexpected reply) is returned, never a panic.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`; the greeting is not read (see [`Conn::greeted`]).
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| timed_out("connect"))??;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Connects, reads the `220` greeting and says `EHLO helo`.
    pub async fn greeted(addr: SocketAddr, helo: &str) -> std::io::Result<Conn> {
        let mut c = Conn::connect(addr).await?;
        c.expect(None, 220).await?;
        c.expect(Some(&format!("EHLO {helo}")), 250).await?;
        Ok(c)
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(bytes))
            .await
            .map_err(|_| timed_out("write"))?
    }

    /// One reply line without its CRLF.
    pub async fn line(&mut self) -> std::io::Result<String> {
        // Bounded: a reply line is short; 64 reads of 4 KiB without a CRLF is a broken server.
        for _ in 0..64 {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                return Ok(String::from_utf8_lossy(&line[..pos]).into_owned());
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .map_err(|_| timed_out("read"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Err(protocol("reply line too long".into()))
    }

    /// One (possibly multi-line, RFC 5321 4.2.1) reply: its code and the text of its last line.
    pub async fn reply(&mut self) -> std::io::Result<(u16, String)> {
        for _ in 0..64 {
            let line = self.line().await?;
            let code = line
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| protocol(format!("bad reply line {line:?}")))?;
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, line.get(4..).unwrap_or("").to_string()));
            }
        }
        Err(protocol("reply with too many lines".into()))
    }

    /// Sends `line` (when given) with CRLF and reads the reply, which must have code `want`;
    /// returns its text.
    pub async fn expect(&mut self, line: Option<&str>, want: u16) -> std::io::Result<String> {
        if let Some(line) = line {
            self.send(format!("{line}\r\n").as_bytes()).await?;
        }
        let (code, text) = self.reply().await?;
        if code != want {
            return Err(protocol(format!(
                "{line:?}: got {code} {text}, want {want}"
            )));
        }
        Ok(text)
    }

    /// One transaction: MAIL, RCPT for each of `rcpts`, DATA with `body` (CRLF lines, not yet
    /// dot-stuffed). Returns the queue id from `250 2.0.0 Ok: queued as ID`; anything else is an
    /// error, so an `Ok` means the relay took responsibility for the message (RFC 5321 4.1.1.4).
    pub async fn submit(
        &mut self,
        from: &str,
        rcpts: &[&str],
        body: &[u8],
    ) -> std::io::Result<String> {
        self.expect(Some(&format!("MAIL FROM:<{from}>")), 250)
            .await?;
        for rcpt in rcpts {
            self.expect(Some(&format!("RCPT TO:<{rcpt}>")), 250).await?;
        }
        self.expect(Some("DATA"), 354).await?;
        let mut wire = dot_stuff(body);
        if !wire.ends_with(b"\r\n") {
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b".\r\n");
        self.send(&wire).await?;
        let text = self.expect(None, 250).await?;
        text.strip_prefix("2.0.0 Ok: queued as ")
            .map(str::to_string)
            .ok_or_else(|| protocol(format!("250 without a queue id: {text:?}")))
    }
}

/// RFC 5321 4.5.2 transparency: a leading dot on any line is doubled on the wire.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 64);
    for line in body.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}

/// A small seeded PRNG (SplitMix64) so that a failing random schedule can be replayed from the
/// seed the test prints.
pub struct Rng(u64);

impl Rng {
    /// The generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from `$name` when set (to replay a run), else from the clock.
    pub fn seed_from_env(name: &str) -> u64 {
        std::env::var(name)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `low..high` (`low` when the range is empty).
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.next_u64() % (high - low)
    }
}

/// Runs a system command (mount, mkfs, fsfreeze …) to completion; panics with its output when
/// it fails. Bounded by the nature of the commands tests use (they return in well under a
/// second on the small file systems the tests make).
pub fn run_command(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET path` over HTTP/1.1 on `addr` (the metrics endpoint): status code (0 when the answer
/// has none) and the whole response; every step bounded by a 2 s socket timeout, the response
/// by 1 MiB.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = StdTcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    s.take(1 << 20).read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, response))
}
