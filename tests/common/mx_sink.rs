//! A scripted SMTP server standing in for remote MX hosts and the internal next hop in
//! delivery tests: real sockets on a loopback address, real rustls for STARTTLS, replies chosen
//! by the test, and a record of every command and message it received.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every read and write of the sink gives up after this long, so a confused test never hangs.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Message data beyond this closes the connection (keeps a runaway client bounded).
const MAX_DATA: usize = 64 << 20;

/// Where the sink hangs up on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectAt {
    AfterGreeting,
    AfterMail,
    DuringData,
    /// After the reply to the final dot: a `421` (RFC 5321 3.8, as an idle timeout sends it)
    /// and the connection closed.
    AfterMessage,
}

/// How the sink answers. The default accepts everything, without TLS.
#[derive(Clone)]
pub struct Behaviour {
    pub greeting: String,
    pub reply_delay: Duration,
    /// STARTTLS is advertised and performed when set (and `advertise_starttls`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub advertise_starttls: bool,
    /// Reply to STARTTLS; anything but 220 refuses it.
    pub starttls_reply: String,
    /// Bytes written together with the `220` to STARTTLS (response injection).
    pub inject_after_starttls: Option<Vec<u8>>,
    /// After the `220` to STARTTLS, answer the client's hello with bytes that are not TLS.
    pub break_handshake: bool,
    /// Close the connection right after the `220` to STARTTLS.
    pub close_after_starttls: bool,
    /// Never answer STARTTLS: read on (and throw away) until the client goes.
    pub ignore_starttls: bool,
    pub extensions: Vec<String>,
    pub ehlo_reply_override: Option<String>,
    pub mail_reply: String,
    pub rcpt_reply: Arc<dyn Fn(&str) -> String + Send + Sync>,
    pub data_reply: String,
    pub data_end_reply: String,
    pub disconnect: Option<DisconnectAt>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            greeting: "220 sink.test ESMTP".into(),
            reply_delay: Duration::ZERO,
            tls: None,
            advertise_starttls: true,
            starttls_reply: "220 2.0.0 ready".into(),
            inject_after_starttls: None,
            break_handshake: false,
            close_after_starttls: false,
            ignore_starttls: false,
            extensions: [
                "PIPELINING",
                "8BITMIME",
                "SMTPUTF8",
                "ENHANCEDSTATUSCODES",
                "SIZE 10485760",
                "DSN",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            ehlo_reply_override: None,
            mail_reply: "250 2.1.0 ok".into(),
            rcpt_reply: Arc::new(|_| "250 2.1.5 ok".to_string()),
            data_reply: "354 go ahead".into(),
            data_end_reply: "250 2.0.0 queued".into(),
            disconnect: None,
        }
    }
}

/// A message as the sink received it.
#[derive(Debug, Clone)]
pub struct SinkMessage {
    /// Everything after `MAIL FROM:`, parameters included.
    pub mail_from: String,
    /// Accepted recipients, without angle brackets.
    pub rcpts: Vec<String>,
    /// The parameters of each accepted RCPT.
    pub rcpt_params: Vec<String>,
    /// The data, dot-unstuffed, without the final `.CRLF`.
    pub data: Vec<u8>,
    /// Negotiated TLS version, e.g. "TLSv1_3", when the transaction ran over TLS.
    pub tls: Option<String>,
    /// The server name (SNI) the client sent in its TLS hello, if any.
    pub sni: Option<String>,
    /// The TLS handshake resumed an earlier session (RFC 8446 §2.2).
    pub resumed: bool,
    /// Index of the connection (0-based, in accept order) that carried it.
    pub connection: usize,
}

#[derive(Default)]
struct Record {
    connections: usize,
    commands: Vec<String>,
    messages: Vec<SinkMessage>,
}

pub struct Sink {
    addr: SocketAddr,
    behaviour: Arc<Mutex<Behaviour>>,
    record: Arc<Mutex<Record>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind :0");
    listener.local_addr().expect("local addr").port()
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl Sink {
    /// Listens on `bind` (any 127.x.y.z address works on Linux); panics when it cannot.
    pub async fn start(bind: SocketAddr, behaviour: Behaviour) -> Sink {
        Self::try_start(bind, behaviour)
            .await
            .unwrap_or_else(|e| panic!("sink cannot listen on {bind}: {e}"))
    }

    /// Listens on `ip` at a port that [`free_port`] found, trying another port a few times
    /// when that one is taken on `ip`.
    pub async fn start_on_free_port(ip: IpAddr, behaviour: Behaviour) -> Sink {
        let mut last = None;
        for _ in 0..20 {
            let bind = SocketAddr::new(ip, free_port());
            match Self::try_start(bind, behaviour.clone()).await {
                Ok(sink) => return sink,
                Err(e) => last = Some(e),
            }
        }
        panic!("no free port for a sink on {ip}: {last:?}");
    }

    /// Listens on `bind` (any 127.x.y.z address works on Linux).
    pub async fn try_start(bind: SocketAddr, behaviour: Behaviour) -> std::io::Result<Sink> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let behaviour = Arc::new(Mutex::new(behaviour));
        let record = Arc::new(Mutex::new(Record::default()));
        let (b, r) = (behaviour.clone(), record.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set, so aborting the accept task (on drop) ends them too.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                // Replies to pipelined commands are separate writes; without this, Nagle holds
                // the second one until the client's delayed ACK (40 ms on Linux).
                let _ = socket.set_nodelay(true);
                while connections.try_join_next().is_some() {}
                let index = {
                    let mut rec = r.lock().unwrap();
                    rec.connections += 1;
                    rec.connections - 1
                };
                let (b, r) = (b.clone(), r.clone());
                connections.spawn(async move {
                    let _ = serve(socket, index, b, r).await;
                });
            }
        });
        Ok(Sink {
            addr,
            behaviour,
            record,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn messages(&self) -> Vec<SinkMessage> {
        self.record.lock().unwrap().messages.clone()
    }

    pub fn connections(&self) -> usize {
        self.record.lock().unwrap().connections
    }

    pub fn commands(&self) -> Vec<String> {
        self.record.lock().unwrap().commands.clone()
    }

    /// Takes the messages (and commands) recorded so far out of the record and says how many
    /// messages there were: long benchmark runs count deliveries without keeping every message
    /// in memory (benches/bounds.rs).
    pub fn take_count(&self) -> usize {
        let mut record = self.record.lock().unwrap();
        record.commands.clear();
        std::mem::take(&mut record.messages).len()
    }

    /// Waits until at least `n` messages arrived; panics after `timeout`.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<SinkMessage> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.messages();
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sink {} got {} of {n} messages; commands: {:?}",
                self.addr,
                got.len(),
                self.commands()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Conn {
    io: Box<dyn Io>,
    buf: Vec<u8>,
}

impl Conn {
    /// One command line without its line end (CRLF, or a lone LF: commands are read leniently).
    async fn read_line(&mut self) -> Option<String> {
        let pos = self
            .fill_until(|buf| buf.iter().position(|&b| b == b'\n'))
            .await?;
        let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(String::from_utf8_lossy(&line).into_owned())
    }

    /// One line of message data, ended by CRLF only, returned with its CRLF and every other
    /// byte (bare LF, bare CR, 8-bit) exactly as received.
    async fn read_data_line(&mut self) -> Option<Vec<u8>> {
        let pos = self
            .fill_until(|buf| buf.windows(2).position(|w| w == b"\r\n"))
            .await?;
        Some(self.buf.drain(..pos + 2).collect())
    }

    /// Reads until `find` locates a line end in the buffer; `None` on EOF, error or timeout.
    async fn fill_until(&mut self, find: impl Fn(&[u8]) -> Option<usize>) -> Option<usize> {
        loop {
            if let Some(pos) = find(&self.buf) {
                return Some(pos);
            }
            if self.buf.len() > MAX_DATA {
                return None;
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(READ_TIMEOUT, self.io.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Writes `text` and CRLF after the reply delay.
    async fn write(&mut self, delay: Duration, text: &str) -> Option<()> {
        self.write_raw(delay, format!("{text}\r\n").into_bytes())
            .await
    }

    /// Writes `bytes` in one write after the reply delay.
    async fn write_raw(&mut self, delay: Duration, bytes: Vec<u8>) -> Option<()> {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let write = async {
            self.io.write_all(&bytes).await?;
            self.io.flush().await
        };
        tokio::time::timeout(READ_TIMEOUT, write).await.ok()?.ok()
    }
}

async fn serve(
    socket: TcpStream,
    index: usize,
    behaviour: Arc<Mutex<Behaviour>>,
    record: Arc<Mutex<Record>>,
) -> Option<()> {
    let now = || behaviour.lock().unwrap().clone();
    let mut conn = Conn {
        io: Box::new(socket),
        buf: Vec::new(),
    };
    let b = now();
    conn.write(b.reply_delay, &b.greeting).await?;
    if b.disconnect == Some(DisconnectAt::AfterGreeting) {
        return None;
    }
    let mut tls: Option<String> = None;
    let mut sni: Option<String> = None;
    let mut resumed = false;
    let mut mail_from: Option<String> = None;
    let mut rcpts = Vec::new();
    let mut rcpt_params = Vec::new();
    loop {
        let line = conn.read_line().await?;
        record.lock().unwrap().commands.push(line.clone());
        let b = now();
        let upper = line.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("").to_string();
        match verb.as_str() {
            "EHLO" => {
                if let Some(reply) = &b.ehlo_reply_override {
                    conn.write(b.reply_delay, reply).await?;
                    continue;
                }
                let mut lines = vec!["sink.test hello".to_string()];
                if b.tls.is_some() && b.advertise_starttls && tls.is_none() {
                    lines.push("STARTTLS".into());
                }
                lines.extend(b.extensions.iter().cloned());
                let last = lines.len() - 1;
                let text: Vec<String> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
                    .collect();
                conn.write(b.reply_delay, &text.join("\r\n")).await?;
            }
            "HELO" => conn.write(b.reply_delay, "250 sink.test").await?,
            "STARTTLS" => {
                if tls.is_some() {
                    conn.write(b.reply_delay, "503 5.5.1 TLS already active")
                        .await?;
                    continue;
                }
                let Some(config) = b.tls.clone() else {
                    conn.write(b.reply_delay, "502 5.5.1 no TLS here").await?;
                    continue;
                };
                if b.ignore_starttls {
                    while conn.read_line().await.is_some() {}
                    return None;
                }
                if !b.starttls_reply.starts_with("220") {
                    conn.write(b.reply_delay, &b.starttls_reply).await?;
                    continue;
                }
                let mut reply = format!("{}\r\n", b.starttls_reply).into_bytes();
                if let Some(extra) = &b.inject_after_starttls {
                    reply.extend_from_slice(extra);
                }
                conn.write_raw(b.reply_delay, reply).await?;
                if b.close_after_starttls {
                    return None;
                }
                // Plaintext pipelined behind STARTTLS is discarded, as a careful server does.
                conn.buf.clear();
                if b.break_handshake {
                    let mut hello = [0u8; 512];
                    let _ = tokio::time::timeout(READ_TIMEOUT, conn.io.read(&mut hello)).await;
                    conn.io.write_all(b"this is not TLS\r\n").await.ok()?;
                    return None;
                }
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                // The plaintext stream is moved into the handshake.
                let plain = std::mem::replace(&mut conn.io, Box::new(tokio::io::duplex(1).0));
                let stream = tokio::time::timeout(READ_TIMEOUT, acceptor.accept(plain))
                    .await
                    .ok()?
                    .ok()?;
                tls = stream
                    .get_ref()
                    .1
                    .protocol_version()
                    .map(|v| format!("{v:?}"));
                sni = stream.get_ref().1.server_name().map(str::to_string);
                resumed =
                    stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                conn.io = Box::new(stream);
                mail_from = None;
                rcpts.clear();
                rcpt_params.clear();
            }
            "MAIL" => {
                let arg = line.get(10..).unwrap_or("").to_string();
                conn.write(b.reply_delay, &b.mail_reply).await?;
                if b.mail_reply.starts_with('2') {
                    mail_from = Some(arg);
                }
                if b.disconnect == Some(DisconnectAt::AfterMail) {
                    return None;
                }
            }
            "RCPT" => {
                let arg = line.get(8..).unwrap_or("");
                let (addr, params) = match arg.find('>') {
                    Some(end) => (
                        arg[..end].trim_start_matches('<').to_string(),
                        arg[end + 1..].trim().to_string(),
                    ),
                    None => (arg.to_string(), String::new()),
                };
                let reply = if mail_from.is_some() {
                    (b.rcpt_reply)(&addr)
                } else {
                    "503 5.5.1 MAIL first".to_string()
                };
                conn.write(b.reply_delay, &reply).await?;
                if reply.starts_with('2') {
                    rcpts.push(addr);
                    rcpt_params.push(params);
                }
            }
            "DATA" => {
                if rcpts.is_empty() {
                    conn.write(b.reply_delay, "554 5.5.1 no valid recipients")
                        .await?;
                    continue;
                }
                conn.write(b.reply_delay, &b.data_reply).await?;
                if !b.data_reply.starts_with("354") {
                    continue;
                }
                // Data ends at CRLF.CRLF only; a bare LF (also "\n.\n") is data and is kept.
                let mut data = Vec::new();
                loop {
                    let line = conn.read_data_line().await?;
                    if b.disconnect == Some(DisconnectAt::DuringData) {
                        return None;
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
                    data.extend_from_slice(unstuffed);
                    if data.len() > MAX_DATA {
                        return None;
                    }
                }
                conn.write(b.reply_delay, &b.data_end_reply).await?;
                if b.data_end_reply.starts_with('2') {
                    record.lock().unwrap().messages.push(SinkMessage {
                        mail_from: mail_from.take().unwrap_or_default(),
                        rcpts: std::mem::take(&mut rcpts),
                        rcpt_params: std::mem::take(&mut rcpt_params),
                        data,
                        tls: tls.clone(),
                        sni: sni.clone(),
                        resumed,
                        connection: index,
                    });
                }
                mail_from = None;
                rcpts.clear();
                rcpt_params.clear();
                if b.disconnect == Some(DisconnectAt::AfterMessage) {
                    let _ = conn
                        .write(Duration::ZERO, "421 4.4.2 sink.test closing")
                        .await;
                    return None;
                }
            }
            "RSET" => {
                mail_from = None;
                rcpts.clear();
                rcpt_params.clear();
                conn.write(b.reply_delay, "250 2.0.0 reset").await?;
            }
            "NOOP" => conn.write(b.reply_delay, "250 2.0.0 ok").await?,
            "QUIT" => {
                conn.write(b.reply_delay, "221 2.0.0 bye").await?;
                return Some(());
            }
            _ => {
                conn.write(b.reply_delay, "500 5.5.2 unknown command")
                    .await?
            }
        }
    }
}
