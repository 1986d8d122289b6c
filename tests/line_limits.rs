//! Every read has a bound (non-negotiable 4), tested over real sockets on 127.0.0.1: a peer
//! that sends bytes without ever ending a line, in the command phase, during the TLS
//! handshake, or as an SMTP server answering tlsgate's client, is answered or dropped at the
//! limit instead of being read on.
//!
//! RFC 5321 4.5.3.1.4: a command line is limited (`limits.max_line_length` here); 4.5.3.1.9:
//! "500 Line too long" is the reply; 4.5.3.1.5: reply lines are limited too. The DATA phase is
//! bounded by `server.max_message_size` (see `size_limit_is_announced_and_enforced` in
//! tests/smtp_session.rs) and `limits.data_total_timeout`.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tlsgate::delivery::client::{ClientError, ConnectParams, SmtpConnection, Timeouts};
use tlsgate::policy::decision::Requirement;
use tlsgate::tls::client::ClientTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What a client streams at most: 10 MB.
const FLOOD: usize = 10 * 1024 * 1024;
const CHUNK: usize = 8 * 1024;

/// What the reading half of a flooding client saw after the point it was started at.
#[derive(Debug)]
struct Seen {
    /// The first complete line the server sent, and when it arrived.
    first_line: Option<(String, Instant)>,
    /// When the server closed the connection (EOF or reset); `None` if still open at the end
    /// of the bounded wait.
    closed_at: Option<Instant>,
}

/// Reads until the server closes the connection (or `STEP` passes), noting the first line
/// and the moment of closing. `first_line` is told as soon as a line is complete.
fn watch(mut rd: OwnedReadHalf, first_line: oneshot::Sender<()>) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen {
            first_line: None,
            closed_at: None,
        };
        let mut notify = Some(first_line);
        let mut buf = Vec::new();
        let deadline = Instant::now() + STEP;
        loop {
            let mut chunk = [0u8; 4096];
            let n = match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
                Err(_) => return seen,
                Ok(Ok(0)) | Ok(Err(_)) => {
                    seen.closed_at = Some(Instant::now());
                    return seen;
                }
                Ok(Ok(n)) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if seen.first_line.is_none() {
                if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
                    let line = String::from_utf8_lossy(&buf[..pos]).into_owned();
                    seen.first_line = Some((line, Instant::now()));
                    if let Some(tx) = notify.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    })
}

/// How a flood ended on the writing side.
#[derive(Debug)]
struct Flood {
    written: usize,
    /// When the written total first reached the limit.
    crossed_at: Option<Instant>,
}

/// Writes `chunk` repeatedly, up to [`FLOOD`] bytes, until the server answers (`answered`),
/// a write fails (the server closed), or a write blocks for `STEP`.
async fn flood(
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    chunk: &[u8],
    limit: usize,
    mut answered: oneshot::Receiver<()>,
) -> Flood {
    let mut f = Flood {
        written: 0,
        crossed_at: None,
    };
    while f.written < FLOOD {
        if answered.try_recv().is_ok() {
            break;
        }
        match tokio::time::timeout(STEP, wr.write_all(chunk)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
        f.written += chunk.len();
        if f.written >= limit && f.crossed_at.is_none() {
            f.crossed_at = Some(Instant::now());
        }
    }
    f
}

/// RFC 5321 4.5.3.1.4 and 4.5.3.1.9: 10 MB without a line end in the command phase gets
/// `500 5.5.6` within a second of crossing `limits.max_line_length`, and the connection is
/// closed, since no next command can be found after an unterminated line.
#[tokio::test]
async fn unterminated_command_line_is_refused_at_the_limit_and_closed() {
    let server = TestServer::start().await;
    let max = server.config.limits.max_line_length;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("client.example.org").await;
    let tcp = c.into_tcp();
    let (rd, mut wr) = tcp.into_split();
    let (tx, rx) = oneshot::channel();
    let reader = watch(rd, tx);

    let sent = flood(&mut wr, &[b'a'; CHUNK], max, rx).await;
    // An answer may still be on its way when the flood ran out: wait for it, bounded.
    let seen = tokio::time::timeout(STEP, reader).await.unwrap().unwrap();
    let crossed = sent.crossed_at.expect("the limit was crossed");
    let (line, answered) = seen
        .first_line
        .unwrap_or_else(|| panic!("no reply after {} bytes without a line end", sent.written));
    assert!(
        line.starts_with("500 5.5.6 Line too long"),
        "reply {line:?}"
    );
    let delay = answered.saturating_duration_since(crossed);
    assert!(
        delay < Duration::from_secs(1),
        "reply {delay:?} after crossing the limit of {max} octets"
    );
    let closed = seen
        .closed_at
        .expect("connection still open after the reply");
    assert!(
        closed.saturating_duration_since(answered) < Duration::from_secs(1),
        "closed {:?} after the reply",
        closed.saturating_duration_since(answered)
    );
    assert!(sent.written < FLOOD, "the server read all {FLOOD} bytes");
}

/// RFC 5321 4.5.3.1.4: a too-long line whose end has arrived is refused and discarded, and the
/// session goes on (its tail is never a command); only an unterminated one ends the session.
#[tokio::test]
async fn terminated_overlong_line_is_refused_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let max = server.config.limits.max_line_length;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    c.send_raw(format!("NOOP {}QUIT\r\n", "a".repeat(max)).as_bytes())
        .await;
    let r = c.read_reply().await;
    assert_eq!((r.code, r.enhanced()), (500, "5.5.6"), "{r:?}");
    assert_eq!(c.cmd("NOOP").await.code, 250);
    // The longest line allowed (CRLF included) is still a command.
    let longest = format!("NOOP {}", "a".repeat(max - "NOOP \r\n".len()));
    assert_eq!(c.cmd(&longest).await.code, 250);
}

/// RFC 3207 / RFC 8446 5.1: garbage streamed after `220` to STARTTLS is not read on: the
/// handshake fails at the first record that is not TLS (or a handshake message longer than
/// rustls allows) and the connection is closed within a second; the client cannot push its
/// 10 MB.
#[tokio::test]
async fn garbage_during_the_tls_handshake_is_bounded() {
    let server = TestServer::start().await;
    // Not a TLS record at all; and a TLS handshake record announcing a 16 MB ClientHello.
    let mut fake_hello = vec![0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0xff, 0xff, 0xff];
    fake_hello.resize(CHUNK, 0x41);
    for garbage in [vec![b'G'; CHUNK], fake_hello] {
        let mut c = SmtpClient::connect_greeted(server.inbound()).await;
        c.ehlo("c").await;
        let r = c.cmd("STARTTLS").await;
        assert_eq!(r.code, 220, "{r:?}");
        let (rd, mut wr) = c.into_tcp().into_split();
        let (tx, _rx) = oneshot::channel();
        let reader = watch(rd, tx);
        let started = Instant::now();
        let (_never, rx) = oneshot::channel();
        let sent = flood(&mut wr, &garbage, 0, rx).await;
        let seen = tokio::time::timeout(STEP, reader).await.unwrap().unwrap();
        let closed = seen.closed_at.expect("connection still open");
        assert!(
            closed.saturating_duration_since(started) < Duration::from_secs(1),
            "closed after {:?}",
            closed.saturating_duration_since(started)
        );
        assert!(sent.written < FLOOD, "the server read all {FLOOD} bytes");
    }
}

/// RFC 3207 (and `limits.tls_handshake_timeout`): a client that starts the handshake and
/// never completes it is dropped when the handshake time runs out.
#[tokio::test]
async fn stalled_tls_handshake_is_dropped_at_the_timeout() {
    let server = TestServer::start_with("[limits]\ntls_handshake_timeout = \"1s\"").await;
    let mut c = SmtpClient::connect_greeted(server.inbound()).await;
    c.ehlo("c").await;
    assert_eq!(c.cmd("STARTTLS").await.code, 220);
    let (rd, mut wr) = c.into_tcp().into_split();
    // Half a record header, then silence.
    wr.write_all(&[0x16, 0x03]).await.unwrap();
    let started = Instant::now();
    let (tx, _rx) = oneshot::channel();
    let seen = tokio::time::timeout(STEP, watch(rd, tx))
        .await
        .unwrap()
        .unwrap();
    let after = seen
        .closed_at
        .expect("connection still open")
        .saturating_duration_since(started);
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed after {after:?}"
    );
}

/// A server on 127.0.0.1 that greets with `prefix` and then streams `chunk` without end
/// (bounded by [`FLOOD`] and write errors).
async fn endless_server(prefix: &'static [u8], chunk: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok(Ok((mut socket, _))) = tokio::time::timeout(STEP, listener.accept()).await else {
            return;
        };
        let _ = socket.write_all(prefix).await;
        let mut written = 0;
        while written < FLOOD {
            match tokio::time::timeout(STEP, socket.write_all(&chunk)).await {
                Ok(Ok(())) => written += chunk.len(),
                _ => return,
            }
        }
    });
    addr
}

async fn open(addr: SocketAddr) -> Result<SmtpConnection, ClientError> {
    let tls = ClientTls::new(&[]).unwrap();
    let params = ConnectParams {
        addr,
        host: "endless.test",
        helo_name: "mx.tlsgate.test",
        require: &Requirement::Plaintext,
        tls: &tls,
        timeouts: Timeouts {
            connect: STEP,
            command: STEP,
            data: STEP,
        },
    };
    SmtpConnection::open(&params).await
}

/// RFC 5321 4.5.3.1.5: the SMTP client bounds reply lines. A server that sends one endless
/// greeting line is dropped within a second with the reason named.
#[tokio::test]
async fn client_drops_a_server_sending_an_endless_reply_line() {
    let addr = endless_server(b"220 ", vec![b'a'; CHUNK]).await;
    let started = Instant::now();
    let result = tokio::time::timeout(STEP, open(addr)).await.unwrap();
    let Err(ClientError::Protocol(reason)) = result else {
        panic!("expected a protocol error, got {:?}", result.map(|_| ()));
    };
    assert_eq!(reason, "reply line longer than 4096 octets");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

/// RFC 5321 4.2 / 4.5.3.1.5: endless continuation lines (`220-…`) are bounded too: the
/// whole reply may not exceed 64 KiB.
#[tokio::test]
async fn client_drops_a_server_sending_endless_continuation_lines() {
    let line = format!("220-{}\r\n", "b".repeat(60));
    let addr = endless_server(b"", line.repeat(CHUNK / line.len()).into_bytes()).await;
    let started = Instant::now();
    let result = tokio::time::timeout(STEP, open(addr)).await.unwrap();
    let Err(ClientError::Protocol(reason)) = result else {
        panic!("expected a protocol error, got {:?}", result.map(|_| ()));
    };
    assert_eq!(reason, "reply longer than 65536 octets");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
