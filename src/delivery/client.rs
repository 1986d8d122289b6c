//! The SMTP client: one connection to one peer, able to carry several transactions.
//!
//! Every read and write has a timeout. STARTTLS follows the TLS level the caller asks for:
//! `none` never starts TLS, `may` uses it when offered (unauthenticated), `encrypt` requires it
//! (unauthenticated), `verify` and stricter require it with the certificate validated against
//! the public roots and the host name (T3, T8, T9). After the server's `220` to STARTTLS any
//! buffered byte is an attack (CVE-2021-38371 style response injection): the connection is
//! dropped. After the handshake the capabilities are learnt again from a new EHLO.
//!
//! Everything from sending `STARTTLS` up to and including the reply to that new EHLO is the TLS
//! attempt (issue 12 item 4): a close, a timeout, an I/O error or a TLS alert anywhere in it is
//! a [`ClientError::Tls`] naming what happened, never a plain "connection lost". A TLS 1.3
//! server that demands a client certificate only says so at our first read after the
//! handshake, and an MX that answers `220` and hangs up has no TLS to speak of either.

use crate::policy::decision::Requirement;
use crate::queue::message::{BodyType, DsnRet, MessageMeta, Recipient};
use crate::smtp::reply::{reply_complete, reply_lines, Reply};
use crate::tls::client::{ClientTls, TlsFailure};
use crate::tls::stream::Stream;
use crate::tls::verify::{describe, PresentedChain};
use crate::tls::TlsInfo;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest reply line accepted from a server (RFC 5321 4.5.3.1.5 says 512; servers exceed it).
const MAX_REPLY_LINE: usize = 4096;
/// Largest whole (multi-line) reply accepted, so a hostile server cannot grow the buffer.
const MAX_REPLY: usize = 64 * 1024;
/// Body bytes collected before a write: large enough for few syscalls, small enough to keep
/// memory flat with many deliveries in flight.
const WRITE_CHUNK: usize = 64 * 1024;

/// Timeouts for one connection.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP connect (`delivery.connect_timeout`).
    pub connect: Duration,
    /// Each command reply (`delivery.command_timeout`).
    pub command: Duration,
    /// The reply after the final `.` (`delivery.data_timeout`).
    pub data: Duration,
}

/// Why a connection or transaction could not proceed.
///
/// Each variant's message is complete (it embeds its cause, e.g. the `io::Error`) and none
/// reports a `source()`, so an error chain printed link by link says every cause once.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made (refused, unreachable, `TimedOut`).
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: SocketAddr, error: io::Error },
    /// No answer in time; carries what was awaited (e.g. "the server to take our data").
    #[error("timeout waiting for {0}")]
    Timeout(&'static str),
    /// Reading or writing the connection failed (reset, broken pipe).
    #[error("connection lost: {0}")]
    Io(io::Error),
    /// The server closed the connection while we waited for this (a reply, the handshake).
    #[error("connection lost: closed while waiting for {0}")]
    Closed(&'static str),
    /// The server broke the protocol (malformed or missing reply, …); carries what was wrong.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered the greeting, EHLO/HELO or STARTTLS with an error.
    #[error("{stage} refused: {reply}")]
    Refused { stage: &'static str, reply: Reply },
    /// The TLS policy could not be met on this connection.
    #[error("{0}")]
    Tls(TlsFailure),
}

/// ESMTP capabilities announced in the EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The server answered EHLO (not only HELO).
    pub esmtp: bool,
    /// `STARTTLS` (RFC 3207).
    pub starttls: bool,
    /// `PIPELINING` (RFC 2920).
    pub pipelining: bool,
    /// SIZE limit; `Some(0)` means "announced without a limit".
    pub size: Option<u64>,
    /// `8BITMIME` (RFC 6152).
    pub eight_bit_mime: bool,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `DSN` (RFC 3461).
    pub dsn: bool,
    /// `REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
}

impl Capabilities {
    /// Parses the lines of an EHLO reply (the first line is the greeting text).
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "STARTTLS" => caps.starttls = true,
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "DSN" => caps.dsn = true,
                "REQUIRETLS" => caps.requiretls = true,
                _ => {}
            }
        }
        caps
    }
}

/// The step of a transaction a reply answered. A reply to `Rcpt` concerns one recipient; a
/// reply to any other step concerns the whole transaction (RFC 5321 3.3), which matters for
/// what a temporary failure means (issue 10 item 1: try the next MX, or defer one recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO` (one recipient).
    Rcpt,
    /// `DATA` (the `354` or its refusal).
    Data,
    /// The final `.` (or the last BDAT chunk).
    EndOfData,
}

impl Step {
    /// The command the reply answered, for reasons and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Mail => "MAIL FROM",
            Step::Rcpt => "RCPT TO",
            Step::Data => "DATA",
            Step::EndOfData => "end of data",
        }
    }
}

/// The result of one transaction: one reply per recipient, in the order given, with the step
/// that reply answered.
#[derive(Debug, Clone)]
pub struct TransactionResult {
    /// One `(step, reply)` per recipient, in recipient order; the step says whether the reply
    /// was that recipient's own (`Rcpt`) or the whole transaction's.
    pub replies: Vec<(Step, Reply)>,
}

/// Everything needed to connect to one peer.
pub struct ConnectParams<'a> {
    /// The address to connect to.
    pub addr: SocketAddr,
    /// The peer's host name: for logs, and the name checked in its certificate (`Verified`).
    pub host: &'a str,
    /// Our name in EHLO.
    pub helo_name: &'a str,
    /// What TLS must prove on this connection: the output of the TLS policy decision
    /// (`policy::decision::decide`), enforced here and nowhere else decided.
    pub require: &'a Requirement,
    /// Client TLS configurations and trust roots.
    pub tls: &'a ClientTls,
    /// Connect and reply timeouts.
    pub timeouts: Timeouts,
}

/// An open SMTP connection, ready for MAIL FROM.
pub struct SmtpConnection {
    stream: Stream,
    buf: Vec<u8>,
    /// What the server announced in its last EHLO reply (after STARTTLS: the second one).
    pub caps: Capabilities,
    /// The peer's address.
    pub addr: SocketAddr,
    /// The peer's host name, as in [`ConnectParams::host`].
    pub host: String,
    /// The negotiated TLS; `None` when plaintext.
    pub tls: Option<TlsInfo>,
    /// The peer's end-entity certificate, when TLS is up.
    pub peer_certificate: Option<CertificateDer<'static>>,
    /// The whole chain the peer presented (leaf first; empty without TLS): MTA-STS `testing`
    /// checks it afterwards as `enforce` would have (RFC 8461 section 5).
    pub peer_chain: Vec<CertificateDer<'static>>,
    timeouts: Timeouts,
    /// Transactions completed on this connection.
    pub transactions: u32,
    /// When the connection was opened or its last transaction ended; the pool drops it after
    /// `delivery.idle_timeout`.
    pub idle_since: Instant,
}

impl SmtpConnection {
    /// Connects, reads the greeting, says EHLO (HELO if refused) and runs STARTTLS as the TLS
    /// mode requires.
    pub async fn open(p: &ConnectParams<'_>) -> Result<SmtpConnection, ClientError> {
        Self::open_inner(p, None).await
    }

    /// As [`SmtpConnection::open`], keeping the certificates the server presents in `chain`,
    /// also when the handshake or the certificate check fails (`probe`, `domains check`: T7).
    pub async fn open_observed(
        p: &ConnectParams<'_>,
        chain: &PresentedChain,
    ) -> Result<SmtpConnection, ClientError> {
        Self::open_inner(p, Some(chain)).await
    }

    async fn open_inner(
        p: &ConnectParams<'_>,
        observer: Option<&PresentedChain>,
    ) -> Result<SmtpConnection, ClientError> {
        let tcp = tokio::time::timeout(p.timeouts.connect, TcpStream::connect(p.addr))
            .await
            .map_err(|_| ClientError::Connect {
                addr: p.addr,
                error: io::ErrorKind::TimedOut.into(),
            })?
            .map_err(|error| ClientError::Connect {
                addr: p.addr,
                error,
            })?;
        let _ = tcp.set_nodelay(true);
        let mut conn = SmtpConnection {
            stream: Stream::Plain(tcp),
            buf: Vec::with_capacity(1024),
            caps: Capabilities::default(),
            addr: p.addr,
            host: p.host.to_string(),
            tls: None,
            peer_certificate: None,
            peer_chain: Vec::new(),
            timeouts: p.timeouts,
            transactions: 0,
            idle_since: Instant::now(),
        };
        let greeting = conn.read_reply("greeting").await?;
        if greeting.code != 220 {
            return Err(ClientError::Refused {
                stage: "greeting",
                reply: greeting,
            });
        }
        conn.hello(p.helo_name).await?;
        let required = match p.require {
            Requirement::Plaintext => return Ok(conn),
            // The caller never connects for a skipped host; refusing here keeps it closed.
            Requirement::Skip { reason, .. } => {
                return Err(ClientError::Tls(TlsFailure::Handshake(reason.clone())))
            }
            other => other.tls_required(),
        };
        if !conn.caps.starttls {
            if required {
                return Err(ClientError::Tls(TlsFailure::NoStarttls));
            }
            return Ok(conn);
        }
        let limit = p.timeouts.command;
        conn.send_line("STARTTLS")
            .await
            .map_err(|e| at_starttls(e, limit))?;
        let reply = conn
            .read_reply("STARTTLS reply")
            .await
            .map_err(|e| at_starttls(e, limit))?;
        if reply.code != 220 {
            if required {
                return Err(ClientError::Tls(TlsFailure::StarttlsRefused(
                    reply.to_string(),
                )));
            }
            // Opportunistic: the server changed its mind; carry on in plaintext (RFC 3207 4.1
            // allows it, and `may` promises no more).
            return Ok(conn);
        }
        conn.start_tls(p, observer).await?;
        conn.hello(p.helo_name)
            .await
            .map_err(|e| after_handshake(e, limit))?;
        Ok(conn)
    }

    async fn hello(&mut self, helo_name: &str) -> Result<(), ClientError> {
        self.send_line(&format!("EHLO {helo_name}")).await?;
        let reply = self.read_reply("EHLO reply").await?;
        if reply.code == 250 {
            self.caps = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        if reply.code == 421 {
            return Err(ClientError::Refused {
                stage: "EHLO",
                reply,
            });
        }
        // RFC 5321 3.2: a server that does not know EHLO gets HELO.
        self.send_line(&format!("HELO {helo_name}")).await?;
        let reply = self.read_reply("HELO reply").await?;
        if reply.code != 250 {
            return Err(ClientError::Refused {
                stage: "HELO",
                reply,
            });
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn start_tls(
        &mut self,
        p: &ConnectParams<'_>,
        observer: Option<&PresentedChain>,
    ) -> Result<(), ClientError> {
        if !self.buf.is_empty() {
            return Err(ClientError::Tls(TlsFailure::ResponseInjection));
        }
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Detached) else {
            return Err(ClientError::Protocol("TLS already active".into()));
        };
        // Bytes that arrived in a later segment than the 220 are just as injected.
        let mut probe = [0u8; 1];
        match tcp.try_read(&mut probe) {
            Ok(0) => return Err(ClientError::Tls(TlsFailure::ClosedAfterStarttls)),
            Ok(_) => return Err(ClientError::Tls(TlsFailure::ResponseInjection)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => {
                return Err(ClientError::Tls(TlsFailure::Handshake(format!(
                    "connection lost: {e}"
                ))))
            }
        }
        // Delivery uses the kept configurations, whose sessions resume under the same trust
        // policy (issue 16 item 8); reports record the chain and always do a full handshake.
        let config = match (p.require, observer) {
            (Requirement::Pkix { names }, None) => p.tls.verified_for(names.clone()),
            (Requirement::Pkix { names }, Some(slot)) => {
                p.tls.verified_recording(names.clone(), slot.clone())
            }
            (
                Requirement::Dane {
                    tlsa, names, pkix, ..
                },
                None,
            ) => p.tls.dane_for(tlsa.clone(), names.clone(), *pkix),
            (
                Requirement::Dane {
                    tlsa, names, pkix, ..
                },
                Some(slot),
            ) => p
                .tls
                .dane_recording(tlsa.clone(), names.clone(), *pkix, slot.clone()),
            (_, Some(slot)) => p.tls.opportunistic_recording(slot.clone()),
            (_, None) => Ok(p.tls.opportunistic.clone()),
        }
        .map_err(ClientError::Tls)?;
        // SNI: the host's name, or with DANE the TLSA base domain (RFC 7672 section 8.1), which
        // for a CNAME'd MX host can be its expanded name.
        let sni = match p.require {
            Requirement::Dane { server_name, .. } => server_name.as_str(),
            _ => p.host,
        };
        let name = ServerName::try_from(sni.to_string()).map_err(|_| {
            ClientError::Tls(TlsFailure::Handshake(format!(
                "{sni} is not a valid TLS server name"
            )))
        })?;
        let connector = TlsConnector::from(config);
        let handshake = tokio::time::timeout(p.timeouts.command, connector.connect(name, tcp))
            .await
            .map_err(|_| ClientError::Tls(TlsFailure::HandshakeTimeout(p.timeouts.command)))?;
        let tls = handshake.map_err(|e| {
            ClientError::Tls(TlsFailure::from_handshake_error(
                &e,
                &describe(checked_names(p.require)),
            ))
        })?;
        let session = tls.get_ref().1;
        self.tls = Some(TlsInfo::from_connection(session));
        self.peer_chain = session
            .peer_certificates()
            .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        self.peer_certificate = self.peer_chain.first().cloned();
        self.stream = Stream::Tls(Box::new(tls.into()));
        Ok(())
    }

    /// Runs one transaction for `recipients` of the message. `Ok` carries one reply per
    /// recipient (a failure of MAIL or DATA is every recipient's reply); `Err` means the
    /// connection broke before a result, and the connection must not be reused.
    pub async fn send_message(
        &mut self,
        meta: &MessageMeta,
        recipients: &[&Recipient],
        body: &[u8],
    ) -> Result<TransactionResult, ClientError> {
        let size = meta.received_header.len() as u64 + body.len() as u64;
        let mut commands = Vec::with_capacity(recipients.len() + 2);
        commands.push(self.mail_command(meta, size));
        for r in recipients {
            commands.push(self.rcpt_command(r));
        }

        let mut rcpt_replies = Vec::with_capacity(recipients.len());
        let mail_reply;
        let data_reply;
        if self.caps.pipelining {
            // RFC 2920: MAIL, every RCPT and DATA in one write, then the replies in order.
            let mut batch = String::new();
            for c in &commands {
                batch.push_str(c);
                batch.push_str("\r\n");
            }
            batch.push_str("DATA\r\n");
            self.write_all(batch.as_bytes()).await?;
            mail_reply = self.read_reply("MAIL reply").await?;
            for _ in recipients {
                rcpt_replies.push(self.read_reply("RCPT reply").await?);
            }
            data_reply = Some(self.read_reply("DATA reply").await?);
        } else {
            self.send_line(&commands[0]).await?;
            mail_reply = self.read_reply("MAIL reply").await?;
            if mail_reply.code != 250 {
                return Ok(self.everyone(Step::Mail, &mail_reply, recipients.len()));
            }
            for c in &commands[1..] {
                self.send_line(c).await?;
                rcpt_replies.push(self.read_reply("RCPT reply").await?);
            }
            data_reply = if rcpt_replies.iter().any(|r| r.code / 100 == 2) {
                self.send_line("DATA").await?;
                Some(self.read_reply("DATA reply").await?)
            } else {
                None
            };
        }

        if mail_reply.code != 250 {
            self.abandon_after_data(data_reply.as_ref()).await?;
            return Ok(self.everyone(Step::Mail, &mail_reply, recipients.len()));
        }
        let accepted = rcpt_replies.iter().filter(|r| r.code / 100 == 2).count();
        if accepted == 0 {
            self.abandon_after_data(data_reply.as_ref()).await?;
            return Ok(TransactionResult {
                replies: rcpt_replies.into_iter().map(|r| (Step::Rcpt, r)).collect(),
            });
        }
        let data_reply = data_reply.ok_or_else(|| ClientError::Protocol("no DATA reply".into()))?;
        if data_reply.code != 354 {
            self.reset().await?;
            return Ok(self.merge(rcpt_replies, Step::Data, &data_reply));
        }
        self.write_body(&meta.received_header, body).await?;
        let final_reply = self
            .read_reply_within("reply to end of data", self.timeouts.data)
            .await?;
        self.transactions += 1;
        self.idle_since = Instant::now();
        Ok(self.merge(rcpt_replies, Step::EndOfData, &final_reply))
    }

    /// After a failed MAIL or when no recipient was accepted: if the server nevertheless said
    /// 354 to a pipelined DATA, the state is unclear and the connection is given up; otherwise
    /// the transaction is reset for the next one.
    async fn abandon_after_data(&mut self, data_reply: Option<&Reply>) -> Result<(), ClientError> {
        if data_reply.is_some_and(|r| r.code == 354) {
            return Err(ClientError::Protocol(
                "server accepted DATA without recipients".into(),
            ));
        }
        self.reset().await
    }

    fn everyone(&self, step: Step, reply: &Reply, n: usize) -> TransactionResult {
        TransactionResult {
            replies: vec![(step, reply.clone()); n],
        }
    }

    /// Accepted recipients get the transaction's reply; refused ones keep their RCPT reply.
    fn merge(
        &self,
        rcpt_replies: Vec<Reply>,
        step: Step,
        transaction: &Reply,
    ) -> TransactionResult {
        TransactionResult {
            replies: rcpt_replies
                .into_iter()
                .map(|r| {
                    if r.code / 100 == 2 {
                        (step, transaction.clone())
                    } else {
                        (Step::Rcpt, r)
                    }
                })
                .collect(),
        }
    }

    fn mail_command(&self, meta: &MessageMeta, size: u64) -> String {
        let mut cmd = format!("MAIL FROM:<{}>", meta.sender.as_deref().unwrap_or(""));
        if self.caps.size.is_some() {
            cmd.push_str(&format!(" SIZE={size}"));
        }
        if meta.body_type == BodyType::EightBitMime && self.caps.eight_bit_mime {
            cmd.push_str(" BODY=8BITMIME");
        }
        if meta.smtputf8 && self.caps.smtputf8 {
            cmd.push_str(" SMTPUTF8");
        }
        if meta.requiretls && self.caps.requiretls && self.tls.is_some() {
            cmd.push_str(" REQUIRETLS");
        }
        if self.caps.dsn {
            match meta.ret {
                Some(DsnRet::Full) => cmd.push_str(" RET=FULL"),
                Some(DsnRet::Headers) => cmd.push_str(" RET=HDRS"),
                None => {}
            }
            if let Some(envid) = &meta.envid {
                cmd.push_str(&format!(" ENVID={}", encode_xtext(envid)));
            }
        }
        cmd
    }

    fn rcpt_command(&self, r: &Recipient) -> String {
        let mut cmd = format!("RCPT TO:<{}>", r.address);
        if self.caps.dsn {
            let n = &r.notify;
            let notify = if n.never {
                "NEVER".to_string()
            } else {
                let mut parts = Vec::new();
                if n.success {
                    parts.push("SUCCESS");
                }
                if n.failure {
                    parts.push("FAILURE");
                }
                if n.delay {
                    parts.push("DELAY");
                }
                parts.join(",")
            };
            if !notify.is_empty() {
                cmd.push_str(&format!(" NOTIFY={notify}"));
            }
            if let Some((kind, addr)) = &r.orcpt {
                cmd.push_str(&format!(" ORCPT={kind};{}", encode_xtext(addr)));
            }
        }
        cmd
    }

    /// Sends the `Received:` header and the body, dot-stuffed (RFC 5321 4.5.2), then `.`.
    async fn write_body(&mut self, header: &str, body: &[u8]) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(WRITE_CHUNK + 1024);
        out.extend_from_slice(header.as_bytes());
        let mut at_line_start = true;
        let mut rest = body;
        while !rest.is_empty() {
            if at_line_start && rest[0] == b'.' {
                out.push(b'.');
            }
            let line_end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            out.extend_from_slice(&rest[..line_end]);
            at_line_start = rest[line_end - 1] == b'\n';
            rest = &rest[line_end..];
            if out.len() >= WRITE_CHUNK {
                self.write_all(&out).await?;
                out.clear();
            }
        }
        if !at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        self.write_all(&out).await
    }

    /// Makes a pooled connection ready for its next transaction. Every parked connection has
    /// finished its last transaction (the reply to the final dot, RFC 5321 4.1.1.4, or an
    /// RSET after an abandoned one), so the server is waiting for MAIL. When the server has
    /// sent nothing since (no `421`, no close: [`SmtpConnection::peer_silent`]), the
    /// connection is used as it is; otherwise it is probed with RSET, which fails on a
    /// closing server. Issue 16 item 7: an RSET round trip before every reused transaction was
    /// a fifth of delivery's system calls.
    pub async fn ready_for_reuse(&mut self) -> Result<(), ClientError> {
        if self.peer_silent() {
            return Ok(());
        }
        self.reset().await
    }

    /// True when no byte from the server waits, neither read ahead in our buffer nor in the
    /// socket (one non-blocking `MSG_PEEK`, which sees a close as well as data). For a TLS
    /// connection the socket holds records: any at all (an alert, a late session ticket)
    /// counts as "not silent", so the caller probes with RSET.
    fn peer_silent(&self) -> bool {
        use std::os::fd::AsRawFd;
        if !self.buf.is_empty() {
            return false;
        }
        let tcp: &TcpStream = match &self.stream {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
            // Only mid-STARTTLS; a pooled connection is never in it.
            Stream::Detached => return false,
        };
        let mut byte = [0u8; 1];
        // SAFETY: the descriptor is the open socket `tcp` owns, and `byte` is a valid buffer
        // of the length passed; MSG_PEEK leaves the data in the socket.
        let n = unsafe {
            libc::recv(
                tcp.as_raw_fd(),
                byte.as_mut_ptr().cast(),
                byte.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// RSET: makes a connection ready for the next transaction (and proves it is alive before
    /// a pooled connection is reused).
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        self.send_line("RSET").await?;
        let reply = self.read_reply("RSET reply").await?;
        if reply.code != 250 {
            return Err(ClientError::Refused {
                stage: "RSET",
                reply,
            });
        }
        Ok(())
    }

    /// Says goodbye politely; errors do not matter any more.
    pub async fn quit(mut self) {
        if self.send_line("QUIT").await.is_ok() {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), self.read_reply("QUIT reply")).await;
        }
        let _ = self.stream.shutdown().await;
    }

    async fn send_line(&mut self, line: &str) -> Result<(), ClientError> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write_all(&bytes).await
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(self.timeouts.command, write)
            .await
            .map_err(|_| ClientError::Timeout("the server to take our data"))?
            .map_err(ClientError::Io)
    }

    async fn read_reply(&mut self, what: &'static str) -> Result<Reply, ClientError> {
        self.read_reply_within(what, self.timeouts.command).await
    }

    async fn read_reply_within(
        &mut self,
        what: &'static str,
        limit: Duration,
    ) -> Result<Reply, ClientError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match reply_complete(&self.buf, MAX_REPLY_LINE) {
                Ok(Some(end)) => {
                    let reply = Reply::parse(&reply_lines(&self.buf[..end]))
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    self.buf.drain(..end);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            // Both bounds are checked after every read: a server that streams one endless
            // line, or endless continuation lines, is dropped within one read of the limit.
            if self.buf.len() > MAX_REPLY {
                return Err(ClientError::Protocol(format!(
                    "reply longer than {MAX_REPLY} octets"
                )));
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| ClientError::Timeout(what))?
                .map_err(ClientError::Io)?;
            if n == 0 {
                return Err(ClientError::Closed(what));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The names a requirement checks in the certificate (none for unauthenticated levels).
fn checked_names(require: &Requirement) -> &[crate::policy::NamePattern] {
    match require {
        Requirement::Pkix { names } | Requirement::Dane { names, .. } => names,
        _ => &[],
    }
}

/// A failure while `STARTTLS` is sent or its reply awaited is a TLS failure: the server offered
/// STARTTLS and then did not go through with it (issue 12 item 4).
fn at_starttls(error: ClientError, limit: Duration) -> ClientError {
    let failure = match error {
        ClientError::Timeout(_) => TlsFailure::StarttlsTimeout(limit),
        ClientError::Closed(_) => {
            TlsFailure::StarttlsLost("the server closed the connection instead of answering".into())
        }
        ClientError::Io(e) => TlsFailure::StarttlsLost(e.to_string()),
        ClientError::Protocol(text) => TlsFailure::StarttlsLost(format!("malformed reply: {text}")),
        other => return other,
    };
    ClientError::Tls(failure)
}

/// A failure of the first exchange over TLS (our EHLO and its reply) still belongs to the TLS
/// attempt: TLS 1.3 delivers a refusal of the client (no certificate) only here (RFC 8446
/// 4.4.2.4), and a peer that hangs up or stalls right after the handshake has not given us a
/// usable TLS session. A reply the server did send (a refusal) stays the server's reply.
fn after_handshake(error: ClientError, limit: Duration) -> ClientError {
    let failure = match error {
        ClientError::Io(e) => TlsFailure::after_handshake(&e),
        ClientError::Closed(_) => {
            TlsFailure::AfterHandshake("the server closed the connection".into())
        }
        ClientError::Timeout(_) => TlsFailure::AfterHandshake(format!(
            "no reply to EHLO within {}",
            humantime::format_duration(limit)
        )),
        other => return other,
    };
    ClientError::Tls(failure)
}

/// RFC 3461 4: xtext encoding of ENVID and ORCPT values.
pub fn encode_xtext(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_from_ehlo() {
        let reply = Reply::parse(&[
            b"250-mx.example.net hello",
            b"250-PIPELINING",
            b"250-SIZE 1000",
            b"250-8BITMIME",
            b"250-starttls",
            b"250-DSN",
            b"250 SMTPUTF8",
        ])
        .unwrap();
        let caps = Capabilities::from_ehlo(&reply);
        assert!(caps.esmtp && caps.pipelining && caps.starttls && caps.dsn);
        assert!(caps.eight_bit_mime && caps.smtputf8 && !caps.requiretls);
        assert_eq!(caps.size, Some(1000));
    }

    #[test]
    fn xtext_round_trip() {
        let encoded = encode_xtext("a+b=c d\u{e6}");
        assert_eq!(encoded, "a+2Bb+3Dc+20d+C3+A6");
        assert_eq!(
            crate::smtp::command::decode_xtext(&encoded, 100).as_deref(),
            Some("a+b=c d\u{e6}")
        );
    }

    /// The I/O cause is kept as an `io::Error` (a caller can ask its kind) and said once in the
    /// message, with no `source()` to print it a second time.
    #[test]
    fn connection_errors_keep_their_cause_and_say_it_once() {
        use std::error::Error;
        let addr: SocketAddr = "192.0.2.7:25".parse().unwrap();
        let timeout = ClientError::Connect {
            addr,
            error: io::ErrorKind::TimedOut.into(),
        };
        assert_eq!(
            timeout.to_string(),
            "cannot connect to 192.0.2.7:25: timed out"
        );
        let reset = ClientError::Io(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        ));
        assert_eq!(
            reset.to_string(),
            "connection lost: connection reset by peer"
        );
        assert!(reset.source().is_none() && timeout.source().is_none());
        let ClientError::Io(cause) = &reset else {
            unreachable!()
        };
        assert_eq!(cause.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(
            ClientError::Closed("EHLO reply").to_string(),
            "connection lost: closed while waiting for EHLO reply"
        );
    }
}
