//! The socket of one SMTP session and its buffers. Only this type reads from or writes to the
//! client, so every read has a timeout and every byte's path is visible here.
//!
//! Replies are buffered and written when the session needs more input (RFC 2920 PIPELINING:
//! a pipelined group gets its replies in one write), or on explicit flush.

use crate::smtp::data::{DataDecoder, Feed};
use crate::tls::stream::Stream;
use bytes::{Buf, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::TlsAcceptor;

const READ_CHUNK: usize = 64 * 1024;

/// Messages embed their cause; no variant reports a `source()` (the cause would be said twice).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// The client sent nothing within the phase's timeout.
    #[error("timed out waiting for the client")]
    Timeout,
    /// The client closed the connection (or the stream is gone after a failed upgrade).
    #[error("client closed the connection")]
    Closed,
    /// Reading or writing failed.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// The STARTTLS handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

impl From<std::io::Error> for ConnError {
    fn from(e: std::io::Error) -> ConnError {
        ConnError::Io(e)
    }
}

/// One command line, or the fact that the client sent a longer one.
#[derive(Debug)]
pub enum Line {
    /// Without the line ending.
    Complete(BytesMut),
    /// A line longer than the limit whose end had already arrived: it was discarded, and the
    /// next command starts after it.
    TooLong,
    /// The limit (RFC 5321 4.5.3.1.4) was crossed before any line end arrived. Nothing after
    /// this point can be trusted to start a command, so the session must answer (4.5.3.1.9:
    /// "500 Line too long") and close instead of reading on for a line end that may never come.
    Unterminated,
}

/// The client socket of one session with its input and output buffers; the only code that
/// reads from or writes to it.
pub struct Connection {
    /// `None` only while the stream is being upgraded to TLS.
    stream: Option<Stream>,
    input: BytesMut,
    output: Vec<u8>,
}

impl Connection {
    /// A plaintext connection with empty buffers.
    pub fn new(tcp: TcpStream) -> Connection {
        Connection {
            stream: Some(Stream::Plain(tcp)),
            input: BytesMut::with_capacity(4096),
            output: Vec::with_capacity(1024),
        }
    }

    fn stream(&mut self) -> Result<&mut Stream, ConnError> {
        self.stream.as_mut().ok_or(ConnError::Closed)
    }

    /// Queues bytes for the client.
    pub fn queue(&mut self, bytes: &[u8]) {
        self.output.extend_from_slice(bytes);
    }

    /// Gives access to the output buffer, for writing replies without a copy.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    /// Writes everything queued; [`ConnError::Timeout`] when the client does not take it within
    /// `limit`.
    pub async fn flush(&mut self, limit: Duration) -> Result<(), ConnError> {
        if self.output.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.output);
        let stream = self.stream()?;
        // A client that stops reading must not hold the session forever either.
        timeout(limit, async {
            stream.write_all(&out).await?;
            stream.flush().await
        })
        .await
        .map_err(|_| ConnError::Timeout)??;
        self.output = out;
        self.output.clear();
        Ok(())
    }

    /// Is input already buffered (a pipelined command)?
    pub fn has_buffered_input(&self) -> bool {
        !self.input.is_empty()
    }

    /// Reads more input into the buffer; pending replies are sent first.
    async fn fill(&mut self, limit: Duration) -> Result<(), ConnError> {
        self.flush(limit).await?;
        self.input.reserve(READ_CHUNK);
        let stream = self.stream.as_mut().ok_or(ConnError::Closed)?;
        let n = timeout(limit, stream.read_buf(&mut self.input))
            .await
            .map_err(|_| ConnError::Timeout)??;
        if n == 0 {
            return Err(ConnError::Closed);
        }
        Ok(())
    }

    /// Reads one command line of at most `max` octets (line ending included). A longer line
    /// whose end is already buffered is discarded ([`Line::TooLong`]); once `max` octets are
    /// buffered without a line end the read stops there ([`Line::Unterminated`]): the buffer
    /// never holds more than `max` plus one read, and no more is read than that.
    pub async fn read_line(&mut self, max: usize, limit: Duration) -> Result<Line, ConnError> {
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.input) {
                let mut line = self.input.split_to(pos + 1);
                if line.len() > max {
                    return Ok(Line::TooLong);
                }
                line.truncate(pos);
                if line.last() == Some(&b'\r') {
                    line.truncate(pos - 1);
                }
                return Ok(Line::Complete(line));
            }
            if self.input.len() >= max {
                // With its line end the line would be longer than `max`.
                self.input.clear();
                return Ok(Line::Unterminated);
            }
            self.fill(limit).await?;
        }
    }

    /// Reads message data up to and including `<CRLF>.<CRLF>`, appending the decoded body to
    /// `body`. Bytes pipelined after the end of data stay buffered for the next command.
    pub async fn read_data(
        &mut self,
        decoder: &mut DataDecoder,
        body: &mut Vec<u8>,
        chunk_timeout: Duration,
        deadline: Instant,
    ) -> Result<(), ConnError> {
        loop {
            match decoder.feed(&self.input, body) {
                Feed::Done { consumed } => {
                    self.input.advance(consumed);
                    return Ok(());
                }
                Feed::NeedMore => self.input.clear(),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnError::Timeout);
            }
            self.fill(chunk_timeout.min(left)).await?;
        }
    }

    /// Switches to TLS after the `220` to STARTTLS has been queued. Returns how many buffered
    /// plaintext bytes were thrown away: anything the client sent after `STARTTLS` before the
    /// handshake is an injection attempt (CVE-2011-0411) and must never be read as a command.
    pub async fn start_tls(
        &mut self,
        acceptor: &TlsAcceptor,
        limit: Duration,
    ) -> Result<usize, ConnError> {
        self.flush(limit).await?;
        let discarded = self.input.len();
        self.input.clear();
        let tcp = match self.stream.take() {
            Some(Stream::Plain(tcp)) => tcp,
            Some(tls @ Stream::Tls(_)) => {
                self.stream = Some(tls);
                return Err(ConnError::Handshake(std::io::Error::other(
                    "TLS already active",
                )));
            }
            Some(Stream::Detached) | None => return Err(ConnError::Closed),
        };
        let tls = timeout(limit, acceptor.accept(tcp))
            .await
            .map_err(|_| ConnError::Timeout)?
            .map_err(ConnError::Handshake)?;
        self.stream = Some(Stream::Tls(Box::new(tls.into())));
        Ok(discarded)
    }

    /// The rustls state once TLS is up.
    pub fn tls_state(&self) -> Option<&rustls::CommonState> {
        self.stream.as_ref().and_then(Stream::tls_state)
    }

    /// Sends what is queued and closes the write side, ignoring errors: the session is over.
    pub async fn close(&mut self, limit: Duration) {
        let _ = self.flush(limit).await;
        if let Ok(stream) = self.stream() {
            let _ = timeout(limit, stream.shutdown()).await;
        }
    }
}
